//! The registry's network glue: the TCP listener and one task per session.
//!
//! This module owns sockets, timers and tasks, and nothing else: each session task reads
//! frames, hands them to the pure [`ServerSession`], and carries out the [`Step`] it returns
//! (wait for durability, write, close, or hold a GetCluster until the cluster changes). It
//! enforces the operational limits: a maximum number of concurrent connections (a client
//! over the limit is closed at once), a handshake timeout, an idle timeout per session and a
//! maximum frame size. Shutdown stops accepting, lets sessions in flight finish within a
//! grace period, then flushes the store. The opt-in xlReg 1.9 listener
//! ([`crate::legacy::server`]) is served by the same accept loop, under the same limits, and
//! shares `deliver` (the durability rule) and `log_session` with the xlReg/2 sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::connection::{Connection, ConnectionError};
use crate::handlers::Context;
use crate::id::Id;
use crate::legacy::server::LegacyListener;
use crate::protocol::{Outcome, ServerSession, SessionReport, Step};
use crate::registry::Registry;

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

/// Runs `f` with a handler context over `registry`'s store, the current time and the
/// system's random id source.
pub fn with_context<T>(registry: &Registry, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
    let mut fresh_id = || Id::random(&mut rand::rng());
    let mut ctx = Context {
        store: &registry.store,
        now_ms: now_ms(),
        fresh_id: &mut fresh_id,
    };
    f(&mut ctx)
}

/// A bound xlReg/2 listener (and, if added, the xlReg 1.9 one), ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    registry: Arc<Registry>,
    config: ServerConfig,
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
            legacy: None,
        })
    }

    /// Also serves xlReg 1.9 clients on `legacy`, under the same connection limit, timeouts
    /// and shutdown as the xlReg/2 listener.
    pub fn with_legacy(mut self, legacy: LegacyListener) -> Server {
        self.legacy = Some(legacy);
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address the xlReg 1.9 listener is bound to, if there is one.
    pub fn legacy_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.legacy.as_ref().map(LegacyListener::local_addr)
    }

    /// Serves until `shutdown` completes, then stops accepting, gives sessions in flight up
    /// to the grace period, and flushes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        let legacy_version = self
            .legacy
            .as_ref()
            .map(LegacyListener::version)
            .unwrap_or_default();
        tokio::pin!(shutdown);
        loop {
            let (accepted, wire) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => (accepted, Wire::V2),
                accepted = crate::legacy::server::accept(self.legacy.as_ref()) => (accepted, Wire::Legacy),
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually out of file descriptors: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = self.config.max_connections, "connection refused: too many connections");
                drop(stream);
                continue;
            };
            let registry = self.registry.clone();
            let config = self.config.clone();
            let stop = stop_rx.clone();
            sessions.spawn(async move {
                match wire {
                    Wire::V2 => serve_connection(registry, stream, peer, config, stop).await,
                    Wire::Legacy => {
                        crate::legacy::server::serve_connection(
                            registry,
                            stream,
                            peer,
                            config,
                            legacy_version,
                            stop,
                        )
                        .await
                    }
                }
                drop(permit);
            });
        }
        drop(self.listener);
        drop(self.legacy);
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

/// Serves one xlReg/2 connection to its end, logging one line about it.
pub async fn serve_connection(
    registry: Arc<Registry>,
    stream: TcpStream,
    peer: SocketAddr,
    config: ServerConfig,
    stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let mut conn = Connection::new(stream, config.max_frame);
    let mut session = ServerSession::new(registry.decryptor.clone());
    let ended = run_session(&registry, &mut conn, &mut session, &config, stop).await;
    conn.shutdown().await;
    log_session("xlReg/2", peer, session.report(), &ended, started);
}

/// Logs the one line that ends every session, on either wire: who, what, how it ended and
/// how long it took.
pub(crate) fn log_session(
    wire: &str,
    peer: SocketAddr,
    report: &SessionReport,
    ended: &Result<(), ConnectionError>,
    started: Instant,
) {
    let node = report.node().map(Id::to_hex).unwrap_or_default();
    let cluster = report.cluster().map(Id::to_hex).unwrap_or_default();
    let result = match (ended, report.outcome) {
        (Err(error), _) => format!("error: {error}"),
        (Ok(()), Outcome::Bye) => "bye".to_string(),
        (Ok(()), Outcome::Refused(code)) => format!("refused: {}", code.as_str_name()),
        (Ok(()), Outcome::Dropped) => "dropped: failed authentication or malformed".to_string(),
        (Ok(()), Outcome::Open) => "peer closed".to_string(),
    };
    tracing::info!(
        wire,
        %peer,
        node,
        cluster,
        ops = report.requests,
        result,
        duration_ms = started.elapsed().as_millis() as u64,
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

async fn run_session(
    registry: &Registry,
    conn: &mut Connection<TcpStream>,
    session: &mut ServerSession,
    config: &ServerConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    loop {
        let timeout = if session.is_established() {
            config.idle_timeout
        } else {
            config.handshake_timeout
        };
        let frame = tokio::select! {
            read = conn.read_frame(timeout) => match read? {
                Some(frame) => frame,
                None => return Ok(()),
            },
            // Between requests, a shutdown ends the session at once.
            _ = stop.wait_for(|stopping| *stopping) => return Ok(()),
        };
        let mut step = with_context(registry, |ctx| session.on_frame(&frame, ctx));
        let mut deadline = None;
        loop {
            match step {
                Step::Close => return Ok(()),
                Step::Send {
                    frame,
                    durable,
                    close,
                    joined,
                } => {
                    let write = conn.write_frame(&frame, config.write_timeout);
                    if !deliver(registry, durable, joined.as_ref(), write).await? || close {
                        return Ok(());
                    }
                    break;
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
                        // sends now, or its hanging up, ends the session.
                        _ = conn.read_frame(Duration::from_millis(wait.wait_ms.into()) + config.idle_timeout) => return Ok(()),
                    };
                }
            }
        }
    }
}
