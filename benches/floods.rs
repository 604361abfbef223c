//! Probe latency under floods: a full session (hello, Member, Create, Bye) from 127.0.0.1,
//! one after another, while nothing, 2,000 idle connections, or 8 bogus-hello senders flood
//! a real `xlreg serve` (this build's binary) on loopback. Prints p50/p99 per case for
//! docs/performance.md. `cargo bench --bench floods`; `FLOOD_SECONDS` (default 15) sets
//! how long each case runs.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xlreg::bench::flood::{probes_for, raise_open_file_limit, Flood, FloodKind};
use xlreg::bench::stats::LatencySummary;
use xlreg::crypto::{RsaKeyPair, RSA_BITS};
use xlreg::node::NodeIdentity;
use xlreg::regcred::RegCred;

fn main() {
    let seconds: u64 = std::env::var("FLOOD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    // Room for the idle flood's 2,000 sockets.
    raise_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Command::new(env!("CARGO_BIN_EXE_xlreg"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--handshake-timeout", "2"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start xlreg serve");
    let regcred_path = data.join("regCred.dat");
    let started = Instant::now();
    let regcred = loop {
        if let Ok(cred) = RegCred::read(&regcred_path) {
            break cred;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no regCred.dat"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let to: SocketAddr = regcred.endpoint().parse().unwrap();
    let node = NodeIdentity {
        name: "probe".into(),
        endpoints: vec!["127.0.0.1:9".into()],
        id: None,
        comms: RsaKeyPair::generate(RSA_BITS).unwrap(),
        sig: RsaKeyPair::generate(RSA_BITS).unwrap(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cases: [(&str, Option<FloodKind>); 3] = [
        ("no flood", None),
        (
            "2,000 idle connections from 8 addresses",
            Some(FloodKind::Idle { connections: 2000 }),
        ),
        ("bogus hellos from 8 senders", Some(FloodKind::BogusHello)),
    ];
    println!("| flood | probes | p50 ms | p99 ms | max ms | flood connections |");
    println!("|---|---|---|---|---|---|");
    for (name, kind) in cases {
        runtime.block_on(async {
            let flood = kind.map(|kind| Flood::start(kind, to, 8));
            tokio::time::sleep(Duration::from_millis(500)).await;
            let took = probes_for(
                &regcred,
                &node,
                Duration::from_secs(seconds),
                Duration::from_millis(50),
            )
            .await
            .expect("probes complete");
            let flooded = match flood {
                Some(flood) => flood.stop().await,
                None => 0,
            };
            let probes = took.len();
            let l = LatencySummary::of(took);
            println!(
                "| {name} | {probes} | {:.1} | {:.1} | {:.1} | {flooded} |",
                l.p50, l.p99, l.max
            );
        });
        // Let the registry close what the flood left open.
        std::thread::sleep(Duration::from_secs(3));
    }
    let _ = server.kill();
    let _ = server.wait();
}
