//! Staying reachable under floods (docs/reliability.md): a normal session completes while
//! 2,000 idle connections are held and re-opened as fast as they are closed, and while 8
//! senders flood the registry with bogus hellos; the log stays short and the registry's
//! memory bounded. Floods come from other loopback addresses (127.0.0.2 ..), probes from
//! 127.0.0.1 (`xlreg::bench::flood`). Every loop is bounded by a deadline; the probes' p99 is
//! asserted loosely, a functional check: the measured numbers come from `benches/floods.rs`
//! (docs/performance.md).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{node, Server};
use xlreg::bench::flood::{probes_for, raise_open_file_limit, Flood, FloodKind};
use xlreg::bench::stats::LatencySummary;

/// How long probes run through each flood.
const FLOOD_FOR: Duration = Duration::from_secs(8);

/// The loose bound on the probes' p99, in milliseconds.
const P99_BOUND_MS: f64 = 5_000.0;

/// Flooding addresses.
const SENDERS: u8 = 8;

/// Runs probes through `kind` on a fresh registry started with `extra`, and checks that they
/// complete, that the log stays short and the memory bounded.
async fn reachable_during(flood_name: &str, kind: FloodKind, extra: &[&str]) {
    raise_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), extra);
    let to: SocketAddr = server.endpoint().parse().unwrap();
    let flood = Flood::start(kind, to, SENDERS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = probes_for(
        &server.regcred,
        &node(1, "probe", 1),
        FLOOD_FOR,
        Duration::from_millis(100),
    )
    .await
    .expect("every probe completes during the flood");
    let rss = server.rss_kib();
    let flooded = flood.stop().await;
    let probes = took.len();
    let latency = LatencySummary::of(took);
    let lines = server.log_text().lines().count();
    eprintln!(
        "{flood_name}: {probes} probes, p50 {:.1} ms, p99 {:.1} ms; {flooded} flood connections; \
         {lines} log lines; registry RSS {} MiB",
        latency.p50,
        latency.p99,
        rss / 1024
    );
    assert!(probes >= 3, "{flood_name}: only {probes} probes ran");
    assert!(
        flooded > 100,
        "{flood_name}: the flood opened only {flooded} connections"
    );
    assert!(
        latency.p99 < P99_BOUND_MS,
        "{flood_name}: probe p99 {} ms",
        latency.p99
    );
    // The probes' own session lines and a few summaries: not one per flood connection.
    assert!(
        lines < probes + 60,
        "{flood_name}: {lines} log lines for {flooded} flood connections"
    );
    assert!(
        rss < 256 * 1024,
        "{flood_name}: registry RSS {} MiB",
        rss / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_completes_during_a_flood_of_2000_idle_connections() {
    reachable_during(
        "2,000 idle connections",
        FloodKind::Idle { connections: 2000 },
        &["--handshake-timeout", "2"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_completes_during_a_bogus_hello_flood_from_8_senders() {
    reachable_during("bogus hellos from 8 senders", FloodKind::BogusHello, &[]).await;
}
