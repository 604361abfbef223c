//! The scale benchmark: a registry holding 100,000 clusters with 500,000 members.
//!
//! It builds such a data directory through the store API (members are real nodes with real
//! 2048-bit public keys, shared, as the keys' contents do not matter to the store), then runs
//! the real `xlreg serve` on it and measures:
//! - restart to serving: from process start to the first answered GetCluster;
//! - the server's resident memory (VmRSS) after start and after serving lookups;
//! - GetCluster latency (p50/p99 of sequential requests in one session) on the full registry,
//!   against the same measurement on a registry holding a single cluster;
//! - an online `xlreg admin export` and `xlreg admin backup` of the full registry: the
//!   daemon's resident memory at rest, its peak while each runs (sampled every 5 ms) and after,
//!   and the client's peak (its `ru_maxrss`) and time.
//!
//! Run: `cargo bench --bench scale` (environment: `XLREG_SCALE_CLUSTERS`, default 100000;
//! `XLREG_SCALE_MEMBERS`, members per cluster, default 5; `XLREG_SCALE_DIR`, where to build the
//! data directory, default a temporary directory; `XLREG_SCALE_ONLY_ADMIN=1`, measure only
//! the online export and backup). Building the directory takes a minute or two.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xlreg::bench::stats::LatencySummary;
use xlreg::client::{Client, DEFAULT_TIMEOUT};
use xlreg::crypto::{RsaKeyPair, RSA_BITS};
use xlreg::node::NodeIdentity;
use xlreg::regcred::RegCred;
use xlreg::store::{ClusterRef, NewCluster, NewNode, Store};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn populate(dir: &Path, clusters: usize, members: usize) {
    let store = Store::open(dir).unwrap();
    let key = RsaKeyPair::generate(RSA_BITS).unwrap();
    let der = key.public_key().to_spki_der().to_vec();
    let started = Instant::now();
    for c in 0..clusters {
        let new = NewCluster {
            admission: Default::default(),
            name: format!("cluster-{c}"),
            attrs: 0,
            max_size: members as u32,
            endpoint_count: 1,
        };
        let cluster = store.create_cluster(new, 1).unwrap().0.id;
        for m in 0..members {
            let node = NewNode {
                id: None,
                name: format!("node-{c}-{m}"),
                attrs: 0,
                comms_key: der.clone(),
                sig_key: der.clone(),
                endpoints: vec![format!(
                    "10.{}.{}.{}:9000",
                    c / 65536 % 256,
                    c / 256 % 256,
                    c % 256
                )],
            };
            let node = store.register_node(node, 1).unwrap().node;
            store
                .join(&ClusterRef::Id(cluster.clone()), &node, 1)
                .unwrap();
        }
        if c % 10_000 == 9_999 {
            store.flush_blocking().unwrap();
            eprintln!(
                "  {} clusters, {:.0} s",
                c + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.flush_blocking().unwrap();
    let counts = store.counts().unwrap();
    eprintln!(
        "built {} nodes, {} clusters, {} members in {:.1} s; {:.0} MiB on disk",
        counts.nodes,
        counts.clusters,
        counts.members,
        started.elapsed().as_secs_f64(),
        store.size_on_disk().unwrap() as f64 / (1 << 20) as f64
    );
}

/// A memory figure of `pid` from /proc/PID/status, in MiB (`VmRSS`, `RssAnon`, ...).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Starts the real `xlreg serve` on `dir` and waits (at most 120 s) until it has written its
/// regCred.dat.
// The caller stops and waits for the child it is handed.
#[allow(clippy::zombie_processes)]
fn serve(dir: &Path) -> (Child, RegCred) {
    let regcred_path = dir.join("regCred.dat");
    let _ = std::fs::remove_file(&regcred_path);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xlreg"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Ok(cred) = RegCred::read(&regcred_path) {
            return (child, cred);
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Measured {
    start_s: f64,
    rss_start: f64,
    rss_after: f64,
    latency: LatencySummary,
}

fn serve_and_measure(dir: &Path, clusters: usize, lookups: usize) -> Measured {
    let (comms, sig) = (
        RsaKeyPair::generate(RSA_BITS).unwrap(),
        RsaKeyPair::generate(RSA_BITS).unwrap(),
    );
    let identity = NodeIdentity {
        name: "prober".into(),
        endpoints: vec!["127.0.0.1:1".into()],
        id: None,
        comms,
        sig,
    };
    let started = Instant::now();
    let (mut child, regcred) = serve(dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (start_s, rss_start, latency) = runtime.block_on(async {
        let mut client = Client::connect(&regcred, DEFAULT_TIMEOUT).await.unwrap();
        client.register(&identity).await.unwrap();
        client
            .get_cluster(
                Some(&ClusterRef::Name("cluster-0".into())),
                None,
                Duration::ZERO,
            )
            .await
            .unwrap();
        let start_s = started.elapsed().as_secs_f64();
        let rss_start = status_mib(child.id(), "VmRSS");
        let mut samples = Vec::with_capacity(lookups);
        for i in 0..lookups {
            let name = format!("cluster-{}", (i * 7919) % clusters);
            let t = Instant::now();
            let view = client
                .get_cluster(Some(&ClusterRef::Name(name)), None, Duration::ZERO)
                .await
                .unwrap();
            samples.push(t.elapsed());
            assert!(!view.members.is_empty());
        }
        client.bye().await.unwrap();
        (start_s, rss_start, LatencySummary::of(samples))
    });
    let rss_after = status_mib(child.id(), "VmRSS");
    eprintln!(
        "  after lookups: RssAnon {:.1} MiB, RssFile {:.1} MiB, threads {}",
        status_mib(child.id(), "RssAnon"),
        status_mib(child.id(), "RssFile"),
        std::fs::read_dir(format!("/proc/{}/task", child.id())).map_or(0, |d| d.count())
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    Measured {
        start_s,
        rss_start,
        rss_after,
        latency,
    }
}

/// Runs `xlreg admin ARGS --data-dir DIR`, which must succeed, sampling every 5 ms the
/// resident memory of the daemon `daemon` and of the command itself. Returns the command's
/// time in seconds, the daemon's peak VmRSS and the command's peak (its VmHWM, which starts
/// afresh at exec, unlike `ru_maxrss`, which counts the forking parent), in MiB.
fn admin_measured(dir: &Path, args: &[&str], daemon: u32) -> (f64, f64, f64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xlreg"))
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (mut daemon_peak, mut client_peak) = (0.0f64, 0.0f64);
    let status = loop {
        daemon_peak = daemon_peak.max(status_mib(daemon, "VmRSS"));
        client_peak = client_peak.max(status_mib(child.id(), "VmHWM"));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "xlreg admin {args:?} failed");
    (started.elapsed().as_secs_f64(), daemon_peak, client_peak)
}

/// Serves `dir` and measures an online export and an online backup of it: the daemon's
/// resident memory at rest, at its peak during each and after each, and the client's.
fn measure_online_admin(dir: &Path, out: &Path) {
    let (mut child, _) = serve(dir);
    std::thread::sleep(Duration::from_secs(3));
    let pid = child.id();
    let rest = status_mib(pid, "VmRSS");
    println!("online admin: daemon RSS at rest {rest:.1} MiB");
    let export = out.join("online-export.json");
    let snapshot = out.join("online-backup.snap");
    for (what, args, file) in [
        (
            "export",
            ["export", "-o", export.to_str().unwrap()],
            &export,
        ),
        (
            "backup",
            ["backup", "-o", snapshot.to_str().unwrap()],
            &snapshot,
        ),
    ] {
        let (seconds, peak, client) = admin_measured(dir, &args, pid);
        std::thread::sleep(Duration::from_secs(3));
        let after = status_mib(pid, "VmRSS");
        let size = std::fs::metadata(file).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64;
        println!(
            "online {what}: {size:.0} MiB in {seconds:.1} s; daemon RSS peak {peak:.1} MiB \
             (+{:.1} over rest), after {after:.1} MiB; client peak {client:.1} MiB",
            peak - rest
        );
        let _ = std::fs::remove_file(file);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn main() {
    let clusters = env_or("XLREG_SCALE_CLUSTERS", 100_000);
    let members = env_or("XLREG_SCALE_MEMBERS", 5);
    let temp = tempfile::tempdir().unwrap();
    let base = std::env::var("XLREG_SCALE_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| temp.path().to_path_buf());
    let (small, large) = (base.join("small"), base.join("large"));
    if !small.join("db").exists() {
        eprintln!("building the single-cluster registry");
        populate(&small, 1, members);
    }
    if !large.join("db").exists() {
        eprintln!("building the large registry: {clusters} clusters x {members} members");
        populate(&large, clusters, members);
    }
    if std::env::var("XLREG_SCALE_ONLY_ADMIN").is_ok_and(|v| v == "1") {
        measure_online_admin(&large, &base);
        return;
    }
    let lookups = 2_000;
    let empty = serve_and_measure(&small, 1, lookups);
    let full = serve_and_measure(&large, clusters, lookups);
    for (label, m) in [
        ("1 cluster", &empty),
        (&*format!("{clusters} clusters"), &full),
    ] {
        println!(
            "{label:>16}: serving after {:.2} s; RSS {:.1} MiB at start, {:.1} MiB after {lookups} lookups; GetCluster ms p50 {:.3} p99 {:.3} max {:.3}",
            m.start_s, m.rss_start, m.rss_after, m.latency.p50, m.latency.p99, m.latency.max
        );
    }
    measure_online_admin(&large, &base);
}
