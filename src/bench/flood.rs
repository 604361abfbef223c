//! Flood generators and the probe that measures a registry under them: for the flood tests
//! (`tests/floods.rs`) and the flood benchmark (`benches/floods.rs`).
//!
//! A flood comes from the loopback addresses 127.0.0.2 .. 127.0.0.(1 + `senders`), so the
//! registry sees `senders` distinct peers (every 127.x.y.z address is loopback on Linux);
//! probes come from 127.0.0.1. Flood tasks run until [`Flood::stop`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::client::{Client, ClientError, DEFAULT_TIMEOUT};
use crate::node::NodeIdentity;
use crate::regcred::RegCred;

/// What a flood does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// `connections` connections that say nothing, each re-opened as soon as the registry
    /// closes it.
    Idle {
        /// How many connections are held at once.
        connections: usize,
    },
    /// One task per sender that sends a well-framed bogus hello on a new connection, waits
    /// for the registry to close it, and starts again.
    BogusHello,
}

/// A running flood.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

/// Raises this process's soft open-file limit to its hard limit: a flood of 2,000
/// connections and the probes need more than the usual 1,024.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A TCP connection to `to` from the loopback address 127.0.0.`from`.
async fn connect_from(from: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, from], 0)))?;
    socket.connect(to).await
}

impl Flood {
    /// Starts a flood of `kind` on `to` from `senders` addresses (at most 250), on the
    /// current tokio runtime.
    pub fn start(kind: FloodKind, to: SocketAddr, senders: u8) -> Flood {
        let senders = senders.clamp(1, 250);
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let tasks_per_sender = match kind {
            FloodKind::Idle { connections } => connections.div_ceil(usize::from(senders)),
            FloodKind::BogusHello => 1,
        };
        for sender in 0..senders {
            for _ in 0..tasks_per_sender {
                let (stop, opened) = (stop.clone(), opened.clone());
                let from = 2 + sender;
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(conn) = connect_from(from, to).await else {
                            // Out of ports or descriptors: back off a little.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        opened.fetch_add(1, Ordering::Relaxed);
                        match kind {
                            FloodKind::Idle { .. } => hold(conn).await,
                            FloodKind::BogusHello => bogus_hello(conn, from).await,
                        }
                    }
                });
            }
        }
        Flood {
            stop,
            opened,
            tasks,
        }
    }

    /// How many connections the flood has opened so far.
    pub fn connections(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Stops the flood and closes its connections; returns how many it opened.
    pub async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.connections()
    }
}

/// Holds `conn` without a word until the registry closes it.
async fn hold(mut conn: TcpStream) {
    let mut byte = [0u8; 1];
    let _ = conn.read(&mut byte).await;
}

/// Sends a framed 300-byte hello that decrypts to nothing, then waits (at most 2 s) for
/// the registry to close the connection.
async fn bogus_hello(mut conn: TcpStream, seed: u8) {
    let mut bogus = 300u32.to_be_bytes().to_vec();
    bogus.extend((0..300u32).map(|b| (b.wrapping_mul(7) as u8) ^ seed));
    if conn.write_all(&bogus).await.is_ok() {
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut sink)).await;
    }
}

/// One probe from 127.0.0.1: a full session (connect, hello, Member as `node`, Create of
/// `cluster`, Bye). Returns how long it took.
pub async fn probe(
    regcred: &RegCred,
    node: &NodeIdentity,
    cluster: &str,
) -> Result<Duration, ClientError> {
    let started = Instant::now();
    let mut client = Client::connect(regcred, DEFAULT_TIMEOUT).await?;
    client.register(node).await?;
    client.create(cluster, 3, 1).await?;
    client.bye().await?;
    Ok(started.elapsed())
}

/// Runs probes one after another, `pause` apart, for `length`; returns their durations.
pub async fn probes_for(
    regcred: &RegCred,
    node: &NodeIdentity,
    length: Duration,
    pause: Duration,
) -> Result<Vec<Duration>, ClientError> {
    let until = Instant::now() + length;
    let mut took = Vec::new();
    while Instant::now() < until {
        took.push(probe(regcred, node, &format!("probe-{}", took.len())).await?);
        tokio::time::sleep(pause).await;
    }
    Ok(took)
}
