//! The one session driver: runs a [`SessionCore`] of either wire over a TCP connection.
//!
//! `serve` and its loop own everything a session does outside its pure core, identically
//! for xlReg/2 and xlReg 1.9: reading the socket into the core and writing its replies
//! (with a write timeout), carrying out the store reads and writes it asks for, making the
//! store durable before any reply that may report a change (`deliver`), waking the
//! sessions that watch a cluster once a join to it is durable and sent, firing the core's
//! deadlines from its [`SessionCore::poll_timeout`], shutdown (a session between requests
//! is closed at once; one whose request has started arriving, is being answered or is held
//! gets its reply first), the metrics, the one log line per session, and the classification
//! of how a session ended (`describe_end`).
//!
//! The driver is also the only place a session touches the store: `read` (a cluster with
//! its members), `write` (batched and durable), durability in `deliver`, and the cluster
//! watch ([`Step::Watch`]).
//! [`poll_applying`] runs a core synchronously against a store, without sockets or
//! timers: the one harness the tests, benches and fuzz targets drive both cores with.
//!
//! The driver also keeps the registry's rate quotas ([`crate::quota`]): it knows the peer's
//! address and the session's node, so before a write that may create a cluster or a node it
//! takes one from the quotas, gives it back if the write created nothing, and refuses a write
//! that would create something once a quota is used up (`write_within_quota`). It keeps the
//! throttle on failed admission proofs the same way ([`crate::quota::ProofThrottle`],
//! docs/protocol.md 14.9): a write or read carrying a proof is refused before the store sees
//! it while the peer's or the cluster's bucket is empty (`throttled`), and a failed proof
//! charges both (`count_admission`, which also counts the admission metrics).
//!
//! Dependencies: the driver depends on the cores (through [`crate::session`]), the store and
//! the registry's shared state; the cores do not depend on it, and neither listener module
//! depends on the other.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::{StdRng, SysRng};
use rand::SeedableRng as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::connection::ConnectionError;
use crate::frame::FrameError;
use crate::id::Id;
use crate::metrics::{Metrics, SessionEnd};
use crate::model::{ClusterRef, Refusal, Registration, RegistrationOutcome, Write, Written};
use crate::proto::ErrCode;
use crate::quota::{Charge, ProofThrottle, QuotaConfig, QuotaKind, Quotas};
use crate::registry::Registry;
use crate::session::{
    Millis, Outcome, Read, ReadResult, SessionCore, SessionReport, Step, Timeouts,
};
use crate::store::{AdminStore, SessionStore, StorageError, StoreError};

/// Size of each read from a peer (the Go 1.9 peers read 16 KiB at a time too).
const READ_CHUNK: usize = 16 * 1024;

/// Operational limits and timeouts of a running registry.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// Most connections one peer address may hold; more are closed on arrival.
    pub max_connections_per_ip: usize,
    /// How long a new connection has to complete its hello.
    pub handshake_timeout: Duration,
    /// How long an established session may stay silent between requests.
    pub idle_timeout: Duration,
    /// How long a peer may take to accept a reply.
    pub write_timeout: Duration,
    /// Largest frame accepted from a client.
    pub max_frame: usize,
    /// How long sessions in flight may run on after shutdown begins.
    pub shutdown_grace: Duration,
    /// The rate quotas on new clusters and new nodes.
    pub quotas: QuotaConfig,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_connections: 1024,
            max_connections_per_ip: crate::admission::DEFAULT_MAX_CONNECTIONS_PER_IP,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_frame: 64 * 1024,
            shutdown_grace: Duration::from_secs(10),
            quotas: QuotaConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The peer's deadlines, for a session core.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            handshake_ms: self.handshake_timeout.as_millis() as Millis,
            idle_ms: self.idle_timeout.as_millis() as Millis,
        }
    }
}

/// A session's clock: the Unix time in milliseconds when the session began, advanced by a
/// monotonic clock, so a session's deadlines never jump with the wall clock and its records
/// are stamped with (about) the Unix time.
#[derive(Debug, Clone, Copy)]
pub struct SessionClock {
    start_ms: Millis,
    start: Instant,
    start_tokio: tokio::time::Instant,
}

impl SessionClock {
    /// A clock reading `unix_ms` now.
    pub fn start(unix_ms: Millis) -> SessionClock {
        SessionClock {
            start_ms: unix_ms,
            start: Instant::now(),
            start_tokio: tokio::time::Instant::now(),
        }
    }

    /// The time now.
    pub fn now(&self) -> Millis {
        self.start_ms + self.start.elapsed().as_millis() as Millis
    }

    /// How long since the clock started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The timer instant at which this clock reads `at`.
    fn instant(&self, at: Millis) -> tokio::time::Instant {
        self.start_tokio + Duration::from_millis(at.saturating_sub(self.start_ms))
    }
}

/// A session's own random number generator, seeded from the operating system (falling back
/// to the thread's generator, itself seeded from the operating system, should that fail).
pub fn session_rng() -> StdRng {
    StdRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| StdRng::from_rng(&mut rand::rng()))
}

/// Why a session's loop stopped, beside what the core's [`Outcome`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The core ended it (Bye, a refusal, a dropped message, a deadline): its outcome says
    /// which.
    Protocol,
    /// The client hung up between requests.
    PeerClosed,
    /// Shutdown closed it between requests.
    Shutdown,
    /// The store could not make a change durable; the reply was withheld.
    StoreFailed,
}

/// What every session of a running server shares: the registry, the limits and timeouts,
/// the metrics and the shutdown signal.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    /// The registry (store, identity, cluster watches).
    pub(crate) registry: Arc<Registry>,
    /// The limits and timeouts.
    pub(crate) config: ServerConfig,
    /// Where connections, requests and sessions are counted, if anywhere.
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// Becomes true when shutdown begins.
    pub(crate) stop: watch::Receiver<bool>,
    /// The registry's rate quotas.
    pub(crate) quotas: Arc<QuotaGate>,
}

/// The registry's rate quotas ([`Quotas`]), kept by a monotonic clock of their own: a
/// session's clock follows the wall clock it started from, and a step of the wall clock
/// must not make an address look as if it had been charged an hour ahead.
#[derive(Debug)]
pub(crate) struct QuotaGate {
    quotas: Quotas,
    /// The throttle on failed admission proofs (docs/protocol.md 14.9).
    proofs: ProofThrottle,
    epoch: Instant,
}

impl QuotaGate {
    /// The quotas `config` sets, their clock starting now.
    pub(crate) fn new(config: &QuotaConfig) -> QuotaGate {
        QuotaGate {
            quotas: Quotas::new(config),
            proofs: ProofThrottle::default(),
            epoch: Instant::now(),
        }
    }

    /// The quotas' time now.
    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }
}

/// Serves one connection with `core` to its end, logging one line about it (`wire` names
/// the wire in it).
pub(crate) async fn serve<C: SessionCore>(
    wire: &'static str,
    mut core: C,
    clock: SessionClock,
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let metrics = shared.metrics.as_deref();
    let _open = metrics.map(Metrics::connection_opened);
    // Each reply must leave at once, in one segment train: Go 1.9 peers read it in one read.
    let _ = stream.set_nodelay(true);
    let mut over_quota = false;
    let ended = drive(
        &mut core,
        &clock,
        shared,
        &mut stream,
        peer.ip(),
        &mut over_quota,
    )
    .await;
    // The peer may already be gone; there is nothing useful to do about that.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    let duration = clock.elapsed();
    let (end, result) = describe_end(&ended, core.report().outcome);
    if let Some(metrics) = metrics {
        metrics.session_ended(end, duration);
    }
    log_session(wire, peer, core.report(), &result, duration, over_quota);
}

/// The `result` of a session line for a session closed by the shutdown.
const SHUTDOWN_RESULT: &str = "closed: shutting down";

/// The session loop: carries out the core's steps, then waits for bytes, a change to the
/// watched cluster, the core's next deadline or shutdown. `peer` is the session's address,
/// for the quotas; `over_quota` is set if a write was refused over one.
async fn drive<C: SessionCore>(
    core: &mut C,
    clock: &SessionClock,
    shared: &Shared,
    stream: &mut TcpStream,
    peer: IpAddr,
    over_quota: &mut bool,
) -> Result<Ending, ConnectionError> {
    let registry = &*shared.registry;
    let config = &shared.config;
    let metrics = shared.metrics.as_deref();
    let mut stop = shared.stop.clone();
    let mut chunk = vec![0u8; READ_CHUNK];
    // How many of the session's requests have been answered (and counted in the metrics).
    let mut answered = 0u32;
    // When the first bytes of the request being received arrived, for its latency.
    let mut request_began: Option<Instant> = None;
    let mut changes: Option<watch::Receiver<()>> = None;
    let mut stopping = false;
    loop {
        stopping = stopping || is_stopping(&stop);
        if stopping {
            core.on_shutdown();
        }
        while let Some(step) = core.poll(clock.now()) {
            match step {
                Step::Close => return Ok(Ending::Protocol),
                Step::Send {
                    bytes,
                    durable,
                    close,
                } => {
                    let write = write_all(stream, &bytes, config.write_timeout);
                    let sent = deliver(registry, durable, write).await?;
                    // A reply ends any wait.
                    changes = None;
                    let report = core.report();
                    if report.requests > answered {
                        answered = report.requests;
                        if let Some(metrics) = metrics {
                            let took = request_began.map(|at| at.elapsed()).unwrap_or_default();
                            let result = request_result(report, sent);
                            metrics.request_took(report.last_op, result, took);
                        }
                        request_began = None;
                    }
                    if !sent {
                        return Ok(Ending::StoreFailed);
                    }
                    if close {
                        return Ok(Ending::Protocol);
                    }
                }
                Step::Write(request) => {
                    let node = core.report().node().cloned();
                    let proved = request.proof_target().cloned();
                    let result = match throttled(shared, peer, proved.as_ref()) {
                        Some(refusal) => Err(NotWritten::from(StoreError::Refused(refusal))),
                        None => write_within_quota(shared, peer, node.as_ref(), request).await,
                    };
                    if let Err(refused) = &result {
                        if let Some(kind) = refused.quota {
                            *over_quota = true;
                            if let Some(metrics) = metrics {
                                metrics.quota_refused(kind);
                            }
                        }
                    }
                    core.on_written(result.map_err(|refused| refused.error), clock.now());
                    count_admission(shared, core.report(), peer, proved.as_ref());
                }
                Step::Read(request) => {
                    let proved = match &request {
                        Read::ClusterWithProof(target) => Some(target.clone()),
                        Read::Cluster(_) => None,
                    };
                    let result = match throttled(shared, peer, proved.as_ref()) {
                        Some(refusal) => Err(StoreError::Refused(refusal)),
                        None => read(&*registry.store, request).await,
                    };
                    core.on_read(result, clock.now());
                    count_admission(shared, core.report(), peer, proved.as_ref());
                }
                Step::Watch(cluster) => changes = Some(registry.store.watch_cluster(&cluster)),
            }
        }
        // Shutdown closes a session between requests; a request that has started arriving
        // is read to its end and answered.
        if stopping && core.is_idle() {
            return Ok(Ending::Shutdown);
        }
        let deadline = core.poll_timeout().map(|at| clock.instant(at));
        tokio::select! {
            biased;
            read = stream.read(&mut chunk) => match read? {
                0 if core.buffered() == 0 => return Ok(Ending::PeerClosed),
                0 => return Err(ConnectionError::Truncated),
                n => {
                    request_began.get_or_insert_with(Instant::now);
                    core.on_bytes(&chunk[..n]);
                }
            },
            Some(()) = next_change(&mut changes) => core.on_changed(),
            () = sleep_until(deadline) => core.on_timeout(clock.now()),
            _ = stop.wait_for(|stopping| *stopping), if !stopping => {}
        }
    }
}

/// Completes when the watched cluster changes; `None` if the watch is gone.
async fn next_change(changes: &mut Option<watch::Receiver<()>>) -> Option<()> {
    match changes {
        Some(changes) => changes.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Completes at `deadline`, never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes `bytes` in one go, waiting at most `timeout`.
async fn write_all(
    stream: &mut TcpStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ConnectionError> {
    tokio::time::timeout(timeout, stream.write_all(bytes))
        .await
        .map_err(|_| ConnectionError::WriteTimeout(timeout))??;
    Ok(())
}

/// True once shutdown has begun (or the server that would announce it is gone).
fn is_stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Reads what a core asked for through the store's session port: the one read path of
/// every session.
async fn read(store: &dyn SessionStore, request: Read) -> ReadResult {
    match request {
        Read::Cluster(target) | Read::ClusterWithProof(target) => {
            Ok(store.read_cluster(target).await?)
        }
    }
}

/// The refusal of a request from `peer` carrying a proof about `proved`, while failed
/// proofs from that address or about that cluster are throttled (counted in the metrics).
fn throttled(shared: &Shared, peer: IpAddr, proved: Option<&ClusterRef>) -> Option<Refusal> {
    let gate = &*shared.quotas;
    let refusal = gate.proofs.check(peer, proved?, gate.now()).err()?;
    if let Some(metrics) = shared.metrics.as_deref() {
        metrics.admission_failed("throttled");
    }
    Some(refusal)
}

/// Counts an admission refusal the session just got (its metric; a failed proof about
/// `proved` also charges the throttle). A refusal ends the session, so this counts once.
fn count_admission(
    shared: &Shared,
    report: &SessionReport,
    peer: IpAddr,
    proved: Option<&ClusterRef>,
) {
    let Some((reason, failed_proof)) = report.admission_failure else {
        return;
    };
    if let Some(metrics) = shared.metrics.as_deref() {
        metrics.admission_failed(reason);
    }
    if let (true, Some(cluster)) = (failed_proof, proved) {
        let gate = &*shared.quotas;
        gate.proofs.failed(peer, cluster, gate.now());
    }
}

/// Hands a core's write to the store's session port, which applies it atomically with
/// concurrent ones and answers once it is durable: the one write path of every served
/// session.
async fn write(store: &dyn SessionStore, request: Write) -> Result<Written, StoreError> {
    let answers = store.apply(vec![request]).await?;
    match answers.into_iter().next() {
        Some(answer) => answer.map_err(StoreError::Refused),
        None => Err(StoreError::Storage(crate::store::StorageError::Io(
            std::io::Error::other("the store answered no write"),
        ))),
    }
}

/// A write that was not done: why, and which quota refused it, if one did.
struct NotWritten {
    error: StoreError,
    quota: Option<QuotaKind>,
}

impl From<StoreError> for NotWritten {
    fn from(error: StoreError) -> NotWritten {
        NotWritten { error, quota: None }
    }
}

/// [`write`] within the registry's quotas, for a session from `peer` registered as `node`.
/// A write that may create a cluster or a node takes one from the quotas it counts against
/// first, and gives it back if it created nothing (found an existing cluster, re-registered
/// a known node, was refused or failed): so only new clusters and new nodes are counted,
/// and sessions racing from one address cannot overshoot a quota. Once a quota is used up,
/// the store is asked whether the write would create anything: one that would is refused
/// ([`crate::model::Refusal::OverQuota`]) and changes nothing; one that would not (a
/// retried Create, a known node registering again) is served free.
async fn write_within_quota(
    shared: &Shared,
    peer: IpAddr,
    node: Option<&Id>,
    request: Write,
) -> Result<Written, NotWritten> {
    let store: &dyn SessionStore = &*shared.registry.store;
    let gate = &*shared.quotas;
    let Some(charge) = Charge::of(&request, node) else {
        return Ok(write(store, request).await?);
    };
    match gate.quotas.reserve(&charge, peer, gate.now()) {
        Ok(reservation) => {
            let result = write(store, request).await;
            if !created(&result) {
                gate.quotas.give_back(reservation);
            }
            Ok(result?)
        }
        Err(exceeded) => {
            if would_create(store, &request)
                .await
                .map_err(StoreError::from)?
            {
                return Err(NotWritten {
                    error: StoreError::Refused(exceeded.into()),
                    quota: Some(exceeded.kind),
                });
            }
            let result = write(store, request).await;
            // Deleted in between (by an operator or expiry): counted after all.
            if created(&result) {
                gate.quotas.charge_anyway(&charge, peer, gate.now());
            }
            Ok(result?)
        }
    }
}

/// True if a write created a cluster or a node.
fn created(result: &Result<Written, StoreError>) -> bool {
    matches!(
        result,
        Ok(Written::Cluster(_, true))
            | Ok(Written::Node(Registration {
                outcome: RegistrationOutcome::Created,
                ..
            }))
    )
}

/// Whether `request` would create a cluster or a node if it were applied now.
async fn would_create(store: &dyn SessionStore, request: &Write) -> Result<bool, StorageError> {
    Ok(match request {
        Write::CreateCluster { cluster, .. } => store
            .read_cluster(ClusterRef::Name(cluster.name.clone()))
            .await?
            .is_none(),
        Write::RegisterNode { node, .. } => match &node.id {
            None => true,
            Some(id) => store.read_node(id.clone()).await?.is_none(),
        },
        Write::Join { .. } | Write::Owner { .. } | Write::Leave { .. } => false,
    })
}

/// Polls `core` at `now`, carrying out every store read and write it asks for at once
/// against `store`'s admin port (committed at once, not yet durable), until it has something else: a reply, a watch
/// or a close (returned), or nothing until more input or time (`None`). The synchronous
/// harness for tests, benches, fuzzing and tools: no sockets, no timers.
pub fn poll_applying<C: SessionCore + ?Sized>(
    core: &mut C,
    store: &dyn AdminStore,
    now: Millis,
) -> Option<Step> {
    loop {
        match core.poll(now)? {
            Step::Read(Read::Cluster(target) | Read::ClusterWithProof(target)) => {
                core.on_read(store.cluster_view(&target).map_err(StoreError::from), now)
            }
            Step::Write(request) => core.on_written(store.apply_now(&request), now),
            step => return Some(step),
        }
    }
}

/// Writes a reply under the durability rule: a reply that may report a change (`durable`)
/// is written only once every store change is on disk (the sessions watching a joined
/// cluster are told by the store itself, once the join is durable). Returns false, having
/// written nothing, if the store could not be flushed: the session must then close.
pub(crate) async fn deliver(
    registry: &Registry,
    durable: bool,
    write: impl Future<Output = Result<(), ConnectionError>>,
) -> Result<bool, ConnectionError> {
    if durable {
        let store: &dyn SessionStore = &*registry.store;
        if let Err(error) = store.durable().await {
            // A failed storage was logged once, when it failed (fail-stop).
            if !matches!(error, StorageError::Failed(_)) {
                tracing::error!(%error, "store flush failed; dropping the reply");
            }
            return Ok(false);
        }
    }
    write.await?;
    Ok(true)
}

/// How a session ended: the metrics label and the log's `result` text.
pub(crate) fn describe_end(
    ended: &Result<Ending, ConnectionError>,
    outcome: Outcome,
) -> (SessionEnd, String) {
    match ended {
        Err(error) => (SessionEnd::ConnectionError, format!("error: {error}")),
        Ok(Ending::PeerClosed) => (SessionEnd::PeerClosed, "peer closed".to_string()),
        Ok(Ending::Shutdown) => (SessionEnd::Shutdown, SHUTDOWN_RESULT.to_string()),
        Ok(Ending::StoreFailed) => (
            SessionEnd::StoreFailed,
            "store flush failed: reply withheld".to_string(),
        ),
        Ok(Ending::Protocol) => match outcome {
            Outcome::Bye => (SessionEnd::Bye, "bye".to_string()),
            Outcome::CredentialsSent => (SessionEnd::Bye, "regcred sent".to_string()),
            Outcome::Refused(code) => (
                SessionEnd::Refused,
                format!("refused: {}", code.as_str_name()),
            ),
            Outcome::Dropped => (
                SessionEnd::Dropped,
                "dropped: failed authentication or malformed".to_string(),
            ),
            Outcome::TimedOut {
                established,
                after_ms,
            } => {
                let end = if established {
                    SessionEnd::IdleTimeout
                } else {
                    SessionEnd::HandshakeTimeout
                };
                let timeout = ConnectionError::ReadTimeout(Duration::from_millis(after_ms));
                (end, format!("error: {timeout}"))
            }
            Outcome::FrameTooLarge { len, max } => {
                let error = FrameError::TooLarge { len, max };
                (SessionEnd::FrameTooLarge, format!("error: {error}"))
            }
            Outcome::Open => (SessionEnd::Dropped, "closed by the registry".to_string()),
        },
    }
}

/// Logs the one line that ends every session, on either wire: who, what, how it ended and
/// how long it took. Sessions refused over a quota (`over_quota`) are logged like
/// unauthenticated ones: the first of each interval, then one summary line.
pub(crate) fn log_session(
    wire: &str,
    peer: SocketAddr,
    report: &SessionReport,
    result: &str,
    duration: Duration,
    over_quota: bool,
) {
    // A client looping over a used-up quota must not flood the log either.
    if over_quota && !crate::admission::OVER_QUOTA.note(Some(peer.ip())) {
        return;
    }
    // admission: a flood of bogus hellos must not flood the log (a shutdown is no flood).
    if report.node().is_none()
        && report.requests == 0
        && result != SHUTDOWN_RESULT
        && !crate::admission::UNAUTHENTICATED.note(Some(peer.ip()))
    {
        return;
    }
    let node = report.node().map(Id::to_hex).unwrap_or_default();
    let cluster = report.cluster().map(Id::to_hex).unwrap_or_default();
    // One listener serves xlReg/2 and xlReg/3: the line names the version the session spoke.
    let wire = match report.version {
        Some(3) => "xlReg/3",
        _ => wire,
    };
    tracing::info!(
        wire,
        %peer,
        node,
        cluster,
        ops = report.requests,
        result,
        duration_ms = duration.as_millis() as u64,
        // The refusal's text: sent to the client too, and the only place an operator
        // sees it (the Go client code never shows an Error reply).
        reason = report.refusal.as_deref(),
        "session"
    );
}

/// The result a request was answered with, for the metrics: `Unavailable` if the reply was
/// withheld (`sent` false: the store could not be flushed), else a refusal's error kind, or
/// success.
pub(crate) fn request_result(report: &SessionReport, sent: bool) -> Result<(), ErrCode> {
    match report.outcome {
        _ if !sent => Err(ErrCode::Unavailable),
        Outcome::Refused(code) => Err(code),
        _ => Ok(()),
    }
}
