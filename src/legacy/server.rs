//! The network glue of the opt-in xlReg 1.9 listener: sockets and timers only.
//!
//! Connections are accepted by [`crate::server::Server`]'s accept loop (same connection
//! limit, timeouts and shutdown as xlReg/2) and served here: each read's bytes go to the pure
//! [`LegacySession`], and each [`Step`] it returns is carried out through
//! `crate::server::deliver` (a reply that may report a change is written only once the
//! store is durable, then waiters on the joined cluster are woken). Every wait for the peer
//! has a deadline: the handshake timeout for the hello, the idle timeout for each message
//! (all of its pieces must arrive within it). One log line ends every session, as for
//! xlReg/2, with `wire="xlReg/1.9"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::connection::ConnectionError;
use crate::legacy::session::{LegacySession, Step};
use crate::legacy::wire::Version;
use crate::metrics::Metrics;
use crate::protocol::Outcome;
use crate::registry::Registry;
use crate::server::{
    deliver, describe_end, log_session, request_result, with_context, Ending, ServerConfig,
};

/// Size of each read from a 1.9 peer (the Go peers read 16 KiB at a time too).
const READ_CHUNK: usize = 16 * 1024;

/// A bound xlReg 1.9 listener and the version it announces.
#[derive(Debug)]
pub struct LegacyListener {
    listener: TcpListener,
    version: Version,
}

impl LegacyListener {
    /// Binds `addr`; hello replies will announce `version`.
    pub async fn bind(addr: SocketAddr, version: Version) -> std::io::Result<LegacyListener> {
        Ok(LegacyListener {
            listener: TcpListener::bind(addr).await?,
            version,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The version announced in hello replies.
    pub fn version(&self) -> Version {
        self.version
    }
}

/// Accepts the next connection on `listener`; never completes if there is none (so the
/// accept loop can always wait on it).
pub(crate) async fn accept(
    listener: Option<&LegacyListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(legacy) => legacy.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one xlReg 1.9 connection to its end, logging one line about it.
pub async fn serve_connection(
    registry: Arc<Registry>,
    mut stream: TcpStream,
    peer: SocketAddr,
    config: ServerConfig,
    version: Version,
    stop: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) {
    let started = Instant::now();
    let _open = metrics.as_ref().map(|m| m.connection_opened());
    // Each reply must leave in one segment train, at once: Go peers read it in one read().
    let _ = stream.set_nodelay(true);
    let mut session = LegacySession::new(registry.decryptor.clone(), version, config.max_frame);
    let ended = run_session(
        &registry,
        &mut stream,
        &mut session,
        &config,
        stop,
        metrics.as_deref(),
    )
    .await;
    // The peer may already be gone; there is nothing useful to do about that.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    let duration = started.elapsed();
    let report = session.report();
    let ended = ended.map(|()| match report.outcome {
        Outcome::Open => Ending::PeerClosed,
        _ => Ending::Protocol,
    });
    let (end, mut result) = describe_end(&ended, session.is_established(), report.outcome);
    if let Some(text) = session.refusal() {
        // The Go client code never shows an Error reply: the log is where it can be read.
        result = format!("{result}: {text}");
    }
    if let Some(metrics) = &metrics {
        metrics.session_ended(end, duration);
    }
    log_session("xlReg/1.9", peer, report, &result, duration);
}

async fn run_session(
    registry: &Registry,
    stream: &mut TcpStream,
    session: &mut LegacySession,
    config: &ServerConfig,
    mut stop: watch::Receiver<bool>,
    metrics: Option<&Metrics>,
) -> Result<(), ConnectionError> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut glue = Glue {
        registry,
        config,
        metrics,
        answered: 0,
    };
    loop {
        // Answer whatever the bytes received so far hold.
        while let Some(step) = with_context(registry, |ctx| session.next_step(ctx)) {
            if !glue.perform(stream, session, step).await? {
                return Ok(());
            }
        }
        let timeout = if session.is_established() {
            config.idle_timeout
        } else {
            config.handshake_timeout
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // Read until the bytes form a message, all within one deadline.
        loop {
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)) => read,
                // Between messages, a shutdown ends the session at once.
                _ = stop.wait_for(|stopping| *stopping), if session.buffered() == 0 => return Ok(()),
            };
            match read {
                Err(_elapsed) => {
                    let step = session.on_stall();
                    let answered = matches!(step, Step::Send { .. });
                    glue.perform(stream, session, step).await?;
                    return if answered {
                        Ok(())
                    } else {
                        Err(ConnectionError::ReadTimeout(timeout))
                    };
                }
                Ok(Err(error)) => return Err(error.into()),
                Ok(Ok(0)) if session.buffered() == 0 => return Ok(()),
                Ok(Ok(0)) => return Err(ConnectionError::Truncated),
                Ok(Ok(read)) => session.push(&chunk[..read]),
            }
            if let Some(step) = with_context(registry, |ctx| session.next_step(ctx)) {
                if !glue.perform(stream, session, step).await? {
                    return Ok(());
                }
                break;
            }
        }
    }
}

/// What carrying out a session's steps needs besides the session and its socket.
struct Glue<'a> {
    registry: &'a Registry,
    config: &'a ServerConfig,
    metrics: Option<&'a Metrics>,
    /// How many of the session's requests have been answered (and counted in the metrics).
    answered: u32,
}

impl Glue<'_> {
    /// Carries out one step (and, after a write, the step its result leads to), counting a
    /// reply to a request in the metrics. Returns whether the session goes on.
    async fn perform(
        &mut self,
        stream: &mut TcpStream,
        session: &mut LegacySession,
        mut step: Step,
    ) -> Result<bool, ConnectionError> {
        if let Step::Write(write) = step {
            let result = self.registry.store.write(write).await;
            step = session.on_written(result);
        }
        match step {
            Step::Close => Ok(false),
            // A write's result is a reply or a refusal, never another write.
            Step::Write(_) => Ok(false),
            Step::Send {
                bytes,
                durable,
                close,
                joined,
            } => {
                let write = write_message(stream, &bytes, self.config.write_timeout);
                let sent = deliver(self.registry, durable, joined.as_ref(), write).await?;
                let report = session.report();
                if report.requests > self.answered {
                    self.answered = report.requests;
                    if let Some(metrics) = self.metrics {
                        metrics.request(report.last_op, request_result(report, sent));
                    }
                }
                Ok(sent && !close)
            }
        }
    }
}

/// Writes one whole message in one write call (the 1.9 wire's only framing).
async fn write_message(
    stream: &mut TcpStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ConnectionError> {
    tokio::time::timeout(timeout, stream.write_all(bytes))
        .await
        .map_err(|_| ConnectionError::WriteTimeout(timeout))??;
    Ok(())
}
