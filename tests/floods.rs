//! Staying reachable under floods (docs/reliability.md): a normal session completes while
//! 2,000 idle connections are held and re-opened as fast as they are closed, and while 8
//! senders flood the registry with bogus hellos; the log stays short and the registry's
//! memory bounded. Floods come from other loopback addresses (127.0.0.2 ..), probes from
//! 127.0.0.1. Every loop is bounded by a deadline; the probes' p99 is asserted loosely (a
//! functional check: `xlreg bench`-style numbers are in docs/performance.md).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{node, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use xlreg::client::{Client, DEFAULT_TIMEOUT};
use xlreg::regcred::RegCred;

/// How long each flood runs while probes go through it.
const FLOOD_FOR: Duration = Duration::from_secs(8);

/// The loose bound on the probes' p99.
const P99_BOUND: Duration = Duration::from_secs(5);

/// Flooding addresses.
const SENDERS: u8 = 8;

/// Raises this process's open-file limit to its hard limit (the idle flood needs ~2,100).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// A TCP connection to `to` from the loopback address 127.0.0.`from`.
async fn connect_from(from: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, from], 0)))?;
    socket.connect(to).await
}

/// One full session from 127.0.0.1: connect, register, create, bye. Its duration.
async fn probe(regcred: &RegCred, i: usize) -> Duration {
    let started = Instant::now();
    let mut client = Client::connect(regcred, DEFAULT_TIMEOUT)
        .await
        .expect("a probe connects during the flood");
    client
        .register(&node(1, "probe", 1))
        .await
        .expect("probe registers");
    client
        .create(&format!("probe-{i}"), 3, 1)
        .await
        .expect("probe creates");
    client.bye().await.expect("probe says bye");
    started.elapsed()
}

/// Runs probes one after another until `until`; returns their durations, sorted.
async fn probes_until(regcred: &RegCred, until: Instant) -> Vec<Duration> {
    let mut took = Vec::new();
    while Instant::now() < until {
        took.push(probe(regcred, took.len()).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took.sort();
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Checks the probes, the log and the memory after a flood, and prints the numbers.
fn assert_reachable(flood: &str, server: &Server, took: &[Duration], flooded: u64, rss: u64) {
    assert!(took.len() >= 3, "{flood}: only {} probes ran", took.len());
    let (p50, p99) = (percentile(took, 0.5), percentile(took, 0.99));
    let lines = server.log_text().lines().count();
    eprintln!(
        "{flood}: {} probes, p50 {p50:?}, p99 {p99:?}; {flooded} flood connections; \
         {lines} log lines; registry RSS {} MiB",
        took.len(),
        rss / 1024
    );
    assert!(p99 < P99_BOUND, "{flood}: probe p99 {p99:?}");
    // The probes' own session lines and a few summaries: not one per flood connection.
    assert!(
        lines < took.len() + 60,
        "{flood}: {lines} log lines for {flooded} flood connections"
    );
    assert!(rss < 256 * 1024, "{flood}: registry RSS {} MiB", rss / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_completes_during_a_flood_of_2000_idle_connections() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--handshake-timeout", "2"]);
    let to: SocketAddr = server.endpoint().parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    // 2,000 holders from 8 addresses: each opens a connection, says nothing, and opens a
    // new one as soon as the registry closes it.
    let mut holders = Vec::new();
    for i in 0..2000u32 {
        let (stop, opened) = (stop.clone(), opened.clone());
        let from = 2 + (i % u32::from(SENDERS)) as u8;
        holders.push(tokio::spawn(async move {
            let mut byte = [0u8; 1];
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut conn) = connect_from(from, to).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                // Held until the registry closes it, or the flood ends.
                let _ = tokio::time::timeout(FLOOD_FOR, conn.read(&mut byte)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let took = probes_until(&server.regcred, Instant::now() + FLOOD_FOR).await;
    let rss = server.rss_kib();
    stop.store(true, Ordering::Relaxed);
    for holder in holders {
        holder.abort();
    }
    assert_reachable(
        "2,000 idle connections",
        &server,
        &took,
        opened.load(Ordering::Relaxed),
        rss,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_completes_during_a_bogus_hello_flood_from_8_senders() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let to: SocketAddr = server.endpoint().parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let (stop, sent) = (stop.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            // A well-framed hello of the right size that decrypts to nothing.
            let mut bogus = 300u32.to_be_bytes().to_vec();
            bogus.extend((0..300u32).map(|b| (b * 7 + u32::from(i)) as u8));
            let mut sink = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut conn) = connect_from(2 + i, to).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if conn.write_all(&bogus).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), conn.read(&mut sink)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = probes_until(&server.regcred, Instant::now() + FLOOD_FOR).await;
    let rss = server.rss_kib();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.abort();
    }
    let flooded = sent.load(Ordering::Relaxed);
    assert!(flooded > 100, "the flood sent only {flooded} hellos");
    assert_reachable("bogus hellos from 8 senders", &server, &took, flooded, rss);
}
