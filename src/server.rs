//! The registry's network glue: the TCP listener and one task per session.
//!
//! This module owns sockets, timers and tasks, and nothing else: each session task reads
//! frames, hands them to the pure [`ServerSession`], and carries out the [`Step`] it returns
//! (hand a write to the store's writer and return its durable result to the session; wait
//! for durability, send, close, or hold a GetCluster until the cluster changes). It
//! enforces the operational limits: a maximum number of concurrent connections (a client
//! over the limit is closed at once), a handshake timeout, an idle timeout per session and a
//! maximum frame size. Shutdown stops accepting, lets sessions in flight finish within a
//! grace period, then flushes the store: a session waiting for its next request is closed at
//! once, one whose request has started arriving or is being answered gets its reply first.
//! Given a [`Metrics`], it records connections, requests and session outcomes into it.
//! The opt-in xlReg 1.9 listener ([`crate::legacy::server`]) is served by the same accept
//! loop, under the same limits, and shares `deliver` (the durability rule), `describe_end`
//! and `log_session` with the xlReg/2 sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::connection::{Connection, ConnectionError};
use crate::frame::FrameError;
use crate::handlers::Context;
use crate::id::Id;
use crate::legacy::server::LegacyListener;
use crate::metrics::{Metrics, SessionEnd};
use crate::proto::{ErrCode, Tag};
use crate::protocol::{Outcome, ServerSession, SessionReport, Step};
use crate::registry::Registry;

/// Least time between two log lines about connections refused over the limit.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// File descriptors kept for other than client connections: the store's files, the
/// listeners, the log.
const RESERVED_FDS: libc::rlim_t = 64;

/// Operational limits and timeouts of a running registry.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most connections served at once; more are closed on arrival.
    pub max_connections: usize,
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
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_frame: 64 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Milliseconds since the Unix epoch: the only clock the handlers see.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `f` with a handler context over `registry`'s store and the current time.
pub fn with_context<T>(registry: &Registry, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
    let mut ctx = Context {
        store: &registry.store,
        now_ms: now_ms(),
    };
    f(&mut ctx)
}

/// A bound xlReg/2 listener, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    registry: Arc<Registry>,
    config: ServerConfig,
    metrics: Option<Arc<Metrics>>,
    legacy: Option<LegacyListener>,
}

/// Which wire an accepted connection speaks.
enum Wire {
    V2,
    Legacy,
}

impl Server {
    /// Binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        registry: Arc<Registry>,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            registry,
            config,
            metrics: None,
            legacy: None,
        })
    }

    /// Also serves xlReg 1.9 clients on `legacy`, under the same connection limit, timeouts
    /// and shutdown as the xlReg/2 listener.
    pub fn with_legacy(mut self, legacy: LegacyListener) -> Server {
        self.legacy = Some(legacy);
        self
    }

    /// The address the xlReg 1.9 listener is bound to, if there is one.
    pub fn legacy_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.legacy.as_ref().map(LegacyListener::local_addr)
    }

    /// Records connections, requests and sessions into `metrics` while serving.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Server {
        self.metrics = Some(metrics);
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, gives sessions in flight up
    /// to the grace period, and flushes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        let mut refusals = RefusalLog::new("xlreg");
        if let Some(metrics) = &self.metrics {
            metrics.set_connection_limit(self.config.max_connections);
        }
        let legacy_version = self
            .legacy
            .as_ref()
            .map(LegacyListener::version)
            .unwrap_or_default();
        tokio::pin!(shutdown);
        loop {
            let (admission, wire) = tokio::select! {
                _ = &mut shutdown => break,
                admission = admit(self.listener.accept(), &limit) => (admission, Wire::V2),
                admission = admit(crate::legacy::server::accept(self.legacy.as_ref()), &limit) => (admission, Wire::Legacy),
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            let (stream, peer, permit) = match admission {
                Admission::Admitted {
                    stream,
                    peer,
                    permit,
                } => (stream, peer, permit),
                Admission::OverLimit(peer) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.connection_refused();
                    }
                    refusals.refused(peer, self.config.max_connections);
                    continue;
                }
                Admission::Failed => continue,
            };
            let registry = self.registry.clone();
            let config = self.config.clone();
            let stop = stop_rx.clone();
            let metrics = self.metrics.clone();
            sessions.spawn(async move {
                match wire {
                    Wire::V2 => {
                        serve_connection(registry, stream, peer, config, stop, metrics).await
                    }
                    Wire::Legacy => {
                        crate::legacy::server::serve_connection(
                            registry,
                            stream,
                            peer,
                            config,
                            legacy_version,
                            stop,
                            metrics,
                        )
                        .await
                    }
                }
                drop(permit);
            });
        }
        drop(self.listener);
        drop(self.legacy);
        if let Some(metrics) = &self.metrics {
            metrics.begin_shutdown();
        }
        let in_flight = sessions.len();
        tracing::info!(in_flight, "shutting down: no longer accepting connections");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = sessions.len(),
                "grace period over: closing sessions still open"
            );
            sessions.abort_all();
        }
        if let Err(error) = self.registry.store.flush_blocking() {
            tracing::error!(%error, "final flush failed");
        }
    }
}

/// What came of accepting one connection under a connection limit.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The connection is in, holding `permit` for as long as it is served.
    Admitted {
        /// The connection.
        stream: TcpStream,
        /// Its peer.
        peer: SocketAddr,
        /// Its place under the limit.
        permit: OwnedSemaphorePermit,
    },
    /// The limit was reached: the connection from this peer has been closed.
    OverLimit(SocketAddr),
    /// Accepting failed (logged, after a short back-off).
    Failed,
}

/// Takes the next connection `accepted` yields if `limit` has room for it, and closes it
/// at once otherwise.
pub(crate) async fn admit(
    accepted: impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>>,
    limit: &Arc<Semaphore>,
) -> Admission {
    let (stream, peer) = match accepted.await {
        Ok(pair) => pair,
        Err(error) => {
            // Usually out of file descriptors: back off briefly.
            tracing::warn!(%error, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Admission::Failed;
        }
    };
    match limit.clone().try_acquire_owned() {
        Ok(permit) => Admission::Admitted {
            stream,
            peer,
            permit,
        },
        Err(_) => Admission::OverLimit(peer),
    }
}

/// Logs connections refused over a limit: the first at once, then at most one line per
/// [`REFUSAL_LOG_INTERVAL`] counting the refusals since the previous line, so a flood of
/// connections cannot flood the log (the metrics count every one).
#[derive(Debug)]
pub(crate) struct RefusalLog {
    endpoint: &'static str,
    last_line: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// A log of refusals on `endpoint` (named in each line).
    pub(crate) fn new(endpoint: &'static str) -> RefusalLog {
        RefusalLog {
            endpoint,
            last_line: None,
            unlogged: 0,
        }
    }

    /// Notes one connection from `peer` refused over `limit`.
    pub(crate) fn refused(&mut self, peer: SocketAddr, limit: usize) {
        self.unlogged += 1;
        if self
            .last_line
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            endpoint = self.endpoint,
            %peer,
            limit,
            refused = self.unlogged,
            "connection refused: too many connections"
        );
        self.unlogged = 0;
        self.last_line = Some(Instant::now());
    }
}

/// Why a session task stopped, beside what the protocol's [`Outcome`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The protocol ended it (Bye, a refusal, a dropped frame): the outcome says which.
    Protocol,
    /// The client hung up between requests.
    PeerClosed,
    /// Shutdown closed it between requests.
    Shutdown,
    /// The store could not make a change durable; the reply was withheld.
    StoreFailed,
}

/// Serves one xlReg/2 connection to its end, logging one line about it.
pub async fn serve_connection(
    registry: Arc<Registry>,
    stream: TcpStream,
    peer: SocketAddr,
    config: ServerConfig,
    stop: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) {
    let started = Instant::now();
    let _open = metrics.as_ref().map(|m| m.connection_opened());
    let _ = stream.set_nodelay(true);
    let mut conn = Connection::new(stream, config.max_frame);
    let mut session = ServerSession::new(registry.decryptor.clone());
    let ended = run_session(
        &registry,
        &mut conn,
        &mut session,
        &config,
        stop,
        metrics.as_deref(),
    )
    .await;
    conn.shutdown().await;
    let duration = started.elapsed();
    let (end, result) = describe_end(&ended, session.is_established(), session.report().outcome);
    if let Some(metrics) = &metrics {
        metrics.session_ended(end, duration);
    }
    log_session("xlReg/2", peer, session.report(), &result, duration);
}

/// Logs the one line that ends every session, on either wire: who, what, how it ended and
/// how long it took.
pub(crate) fn log_session(
    wire: &str,
    peer: SocketAddr,
    report: &SessionReport,
    result: &str,
    duration: Duration,
) {
    let node = report.node().map(Id::to_hex).unwrap_or_default();
    let cluster = report.cluster().map(Id::to_hex).unwrap_or_default();
    tracing::info!(
        wire,
        %peer,
        node,
        cluster,
        ops = report.requests,
        result,
        duration_ms = duration.as_millis() as u64,
        "session"
    );
}

/// Writes a reply under the durability rule: a reply that may report a change (`durable`)
/// is written only once every store change is on disk; after the write, sessions waiting on
/// the `joined` cluster are woken. Returns false, having written nothing, if the store could
/// not be flushed: the session must then close.
pub(crate) async fn deliver(
    registry: &Registry,
    durable: bool,
    joined: Option<&Id>,
    write: impl Future<Output = Result<(), ConnectionError>>,
) -> Result<bool, ConnectionError> {
    if durable {
        if let Err(error) = registry.store.durable().await {
            tracing::error!(%error, "store flush failed; dropping the reply");
            return Ok(false);
        }
    }
    write.await?;
    if let Some(cluster) = joined {
        registry.events.notify(cluster);
    }
    Ok(true)
}

/// How a session ended: the metrics label and the log's `result` text.
pub(crate) fn describe_end(
    ended: &Result<Ending, ConnectionError>,
    established: bool,
    outcome: Outcome,
) -> (SessionEnd, String) {
    match ended {
        Err(error) => {
            let end = match error {
                ConnectionError::ReadTimeout(_) if established => SessionEnd::IdleTimeout,
                ConnectionError::ReadTimeout(_) => SessionEnd::HandshakeTimeout,
                ConnectionError::Frame(FrameError::TooLarge { .. }) => SessionEnd::FrameTooLarge,
                ConnectionError::Io(_)
                | ConnectionError::WriteTimeout(_)
                | ConnectionError::Truncated => SessionEnd::ConnectionError,
            };
            (end, format!("error: {error}"))
        }
        Ok(Ending::PeerClosed) => (SessionEnd::PeerClosed, "peer closed".to_string()),
        Ok(Ending::Shutdown) => (SessionEnd::Shutdown, "closed: shutting down".to_string()),
        Ok(Ending::StoreFailed) => (
            SessionEnd::StoreFailed,
            "store flush failed: reply withheld".to_string(),
        ),
        Ok(Ending::Protocol) => match outcome {
            Outcome::Bye => (SessionEnd::Bye, "bye".to_string()),
            Outcome::Refused(code) => (
                SessionEnd::Refused,
                format!("refused: {}", code.as_str_name()),
            ),
            Outcome::Dropped => (
                SessionEnd::Dropped,
                "dropped: failed authentication or malformed".to_string(),
            ),
            Outcome::Open => (SessionEnd::Dropped, "closed by the registry".to_string()),
        },
    }
}

/// True once shutdown has begun (or the server that would announce it is gone).
fn is_stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// The result a request was answered with, for the metrics: `Unavailable` if the reply was
/// withheld (`sent` false: the store could not be flushed), else a refusal's error kind, or
/// success. Both wires count their requests through this.
pub(crate) fn request_result(report: &SessionReport, sent: bool) -> Result<(), ErrCode> {
    match report.outcome {
        _ if !sent => Err(ErrCode::Unavailable),
        Outcome::Refused(code) => Err(code),
        _ => Ok(()),
    }
}

async fn run_session(
    registry: &Registry,
    conn: &mut Connection<TcpStream>,
    session: &mut ServerSession,
    config: &ServerConfig,
    mut stop: watch::Receiver<bool>,
    metrics: Option<&Metrics>,
) -> Result<Ending, ConnectionError> {
    loop {
        let timeout = if session.is_established() {
            config.idle_timeout
        } else {
            config.handshake_timeout
        };
        // Shutdown closes a session waiting for its next request, but a request that has
        // started arriving is read to its end and answered.
        let stopping = is_stopping(&stop);
        if stopping && !conn.has_pending_input() {
            return Ok(Ending::Shutdown);
        }
        let read = if stopping {
            conn.read_frame(timeout).await
        } else {
            tokio::select! {
                biased;
                read = conn.read_frame(timeout) => read,
                _ = stop.wait_for(|stopping| *stopping) => continue,
            }
        };
        let Some(frame) = read? else {
            return Ok(Ending::PeerClosed);
        };
        let requests_before = session.report().requests;
        let mut step = with_context(registry, |ctx| session.on_frame(&frame, ctx));
        // The op of the request being answered, if the frame was one (not the hello).
        let mut answering: Option<Option<Tag>> =
            (session.report().requests != requests_before).then(|| session.report().last_op);
        let mut deadline = None;
        loop {
            match step {
                Step::Close => return Ok(Ending::Protocol),
                Step::Send {
                    frame,
                    durable,
                    close,
                    joined,
                } => {
                    let write = conn.write_frame(&frame, config.write_timeout);
                    let sent = deliver(registry, durable, joined.as_ref(), write).await?;
                    if let (Some(metrics), Some(op)) = (metrics, answering.take()) {
                        metrics.request(op, request_result(session.report(), sent));
                    }
                    if !sent {
                        return Ok(Ending::StoreFailed);
                    }
                    if close {
                        return Ok(Ending::Protocol);
                    }
                    break;
                }
                Step::Write(write) => {
                    let result = registry.store.write(write).await;
                    step = session.on_written(result);
                }
                Step::Wait(wait) => {
                    let deadline = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + Duration::from_millis(wait.wait_ms.into())
                    });
                    let mut changes = registry.events.subscribe(&wait.cluster);
                    // Re-read after subscribing: a join between the first read and the
                    // subscription must not be missed.
                    step = with_context(registry, |ctx| session.resume(ctx, false));
                    if !matches!(step, Step::Wait(_)) {
                        continue;
                    }
                    step = tokio::select! {
                        _ = changes.changed() => with_context(registry, |ctx| session.resume(ctx, false)),
                        _ = tokio::time::sleep_until(deadline) => with_context(registry, |ctx| session.resume(ctx, true)),
                        _ = stop.wait_for(|stopping| *stopping) => with_context(registry, |ctx| session.resume(ctx, true)),
                        // In lock-step the client says nothing while it waits: anything it
                        // sends now breaks the session (the protocol drops it), and so does
                        // its hanging up.
                        read = conn.read_frame(Duration::from_millis(wait.wait_ms.into()) + config.idle_timeout) => match read? {
                            Some(frame) => with_context(registry, |ctx| session.on_frame(&frame, ctx)),
                            None => return Ok(Ending::PeerClosed),
                        },
                    };
                }
            }
        }
    }
}

/// How many malloc arenas the registry's process uses (glibc). glibc's default, 8 per core,
/// lets every thread that touches sled's page cache keep its own arena of freed pages: on a
/// registry of 100,000 clusters every run with the default ended at 103-107 MiB resident
/// after 2,000 lookups, and most runs with two arenas at 92-94 MiB, with no measurable
/// change in throughput (docs/performance.md).
const MALLOC_ARENAS: i32 = 2;

/// Limits glibc's malloc to [`MALLOC_ARENAS`] arenas, unless the operator chose otherwise
/// with `MALLOC_ARENA_MAX`. Call before starting threads. A no-op on other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any count.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Hands memory the allocator holds but no longer uses back to the operating system
/// (glibc's `malloc_trim`; a no-op on other C libraries). glibc keeps freed memory for reuse,
/// so after one admin request that built a snapshot of a large registry (an export of
/// 100,000 clusters peaks at 2.3 GiB) the daemon would otherwise stay that large for the
/// rest of its life. Blocking: it walks every arena.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; any pad is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises this process's soft limit on open files so that `max_connections` clients fit
/// (as far as the hard limit allows), making `--max-connections`, not the descriptor limit,
/// what refuses clients; warns if they still do not fit.
pub fn make_room_for_connections(max_connections: usize) {
    let wanted = (max_connections as libc::rlim_t).saturating_add(RESERVED_FDS);
    match raise_open_file_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is too low for --max-connections; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}

/// Raises the soft RLIMIT_NOFILE to `wanted`, capped at the hard limit; returns the soft
/// limit in force afterwards.
fn raise_open_file_limit(wanted: libc::rlim_t) -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we hand it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: setrlimit only reads the struct we hand it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}
