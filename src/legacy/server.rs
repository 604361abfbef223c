//! The opt-in xlReg 1.9 listener: its socket, and the session core each connection gets.
//!
//! Connections are accepted by [`crate::server::Server`]'s accept loop (same connection
//! limit, timeouts and shutdown as xlReg/2) and served by the same driver
//! ([`crate::driver`]) as xlReg/2, with a [`LegacySession`] as the core: the same
//! durability rule, deadlines, metrics and log line (with `wire="xlReg/1.9"`).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::driver::{self, SessionClock, Shared};
use crate::legacy::session::LegacySession;
use crate::legacy::wire::Version;

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

/// Serves one xlReg 1.9 connection to its end with a [`LegacySession`] announcing
/// `version`, run by the one session driver.
pub(crate) async fn serve_connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    version: Version,
    clock: SessionClock,
) {
    let core = LegacySession::new(
        shared.registry.decryptor.clone(),
        version,
        driver::session_rng(),
        shared.config.max_frame,
        shared.config.timeouts(),
        clock.now(),
    );
    driver::serve("xlReg/1.9", core, clock, shared, stream, peer).await;
}
