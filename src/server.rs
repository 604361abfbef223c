//! The registry's listener glue: the TCP accept loop and one task per session.
//!
//! This module owns the listeners, the connection limit (a client over the limit is closed
//! at once) and shutdown (stop accepting, let sessions in flight finish within a grace
//! period, then flush the store). Each accepted connection gets its wire's pure session
//! core — [`ServerSession`] for xlReg/2 here, the opt-in xlReg 1.9 listener's from
//! [`crate::legacy::server`] — run by the one session driver ([`crate::driver`]), which
//! owns everything a session does (reads, writes, the store, deadlines, metrics, the log
//! line). Given a [`Metrics`], connections and refusals over the limit are recorded into it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::admission::PerPeerLimit;
use crate::clock::now_ms;
pub use crate::driver::ServerConfig;
use crate::driver::{self, QuotaGate, SessionClock, Shared};
use crate::legacy::server::LegacyListener;
use crate::metrics::Metrics;
use crate::protocol::ServerSession;
use crate::registry::Registry;

/// Least time between two log lines about connections refused over a limit.
const REFUSAL_LOG_INTERVAL: Duration = crate::admission::SUMMARY_INTERVAL;

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
        let listener = crate::admission::listen(addr)?;
        Ok(Server::new(listener, registry, config))
    }

    /// Serves on `listener`, bound beforehand (the daemon binds every address before it
    /// creates anything).
    pub fn new(listener: TcpListener, registry: Arc<Registry>, config: ServerConfig) -> Server {
        Server {
            listener,
            registry,
            config,
            metrics: None,
            legacy: None,
        }
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
    ///
    /// The accept loop runs as a task of the runtime, not on the caller's thread: a caller
    /// that is the thread of `Runtime::block_on` would otherwise be woken to accept every
    /// connection and to reap every session, handing each to a worker thread and back (two
    /// thread switches per session, docs/performance.md). The caller only waits for
    /// `shutdown` and for the loop to end.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut serving = tokio::spawn(self.accept_until(async {
            // A dropped sender (the caller gone) stops the loop as well.
            let _ = stopped.await;
        }));
        tokio::pin!(shutdown);
        let ended = tokio::select! {
            ended = &mut serving => ended,
            () = &mut shutdown => {
                let _ = stop.send(());
                serving.await
            }
        };
        if let Err(error) = ended {
            if error.is_panic() {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }

    /// [`Server::run`]'s accept loop, on whichever thread polls it.
    async fn accept_until(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        let mut refusals = RefusalLog::new("xlreg");
        let mut refusals_per_ip = RefusalLog::new("xlreg, per address");
        let per_peer = PerPeerLimit::new(self.config.max_connections_per_ip);
        let quotas = Arc::new(QuotaGate::new(&self.config.quotas));
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
                Admission::Failed => {
                    if let Some(metrics) = &self.metrics {
                        metrics.accept_failed();
                    }
                    continue;
                }
            };
            // One address may not take the whole budget (see crate::admission).
            let Some(peer_slot) = per_peer.try_admit(peer.ip()) else {
                drop((stream, permit));
                if let Some(metrics) = &self.metrics {
                    metrics.connection_refused_per_ip();
                }
                refusals_per_ip.refused(peer, per_peer.max());
                continue;
            };
            let shared = Shared {
                registry: self.registry.clone(),
                config: self.config.clone(),
                metrics: self.metrics.clone(),
                stop: stop_rx.clone(),
                quotas: quotas.clone(),
            };
            sessions.spawn(async move {
                let clock = SessionClock::start(now_ms());
                match wire {
                    Wire::V2 => {
                        // The key sets served when the session starts: a rotation or the
                        // end of an overlap affects later sessions only.
                        let key_sets = shared.registry.identity.handshake.sets();
                        let mut core = ServerSession::new(
                            shared.registry.decryptor.clone(),
                            driver::session_rng(),
                            shared.config.max_frame,
                            shared.config.timeouts(),
                            clock.now(),
                        )
                        .with_v3(key_sets.current.keys.clone());
                        if let Some(previous) = key_sets.previous_at(now_ms()) {
                            core = core.with_previous_v3(previous.keys.clone());
                        }
                        if let Some(text) = shared.registry.identity.handshake.published_text() {
                            core = core.with_regcred(text);
                        }
                        driver::serve("xlReg/2", core, clock, &shared, stream, peer).await
                    }
                    Wire::Legacy => {
                        let serve = crate::legacy::server::serve_connection;
                        serve(&shared, stream, peer, legacy_version, clock).await
                    }
                }
                drop((permit, peer_slot));
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
        // A failed store was reported once when it failed, and is not to be touched again.
        if !self.registry.store.health().is_failed() {
            if let Err(error) = self.registry.store.flush_blocking() {
                tracing::error!(%error, "final flush failed");
            }
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
            // Usually out of file descriptors: back off briefly. Logged once per interval
            // (with a count in the next interval's line); the metrics count every one.
            if crate::admission::ACCEPT_FAILURES.note(None) {
                tracing::warn!(%error, "accept failed");
            }
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
