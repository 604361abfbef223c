//! What durability costs: joins per second through the store, with each join made durable
//! by flush + fdatasync (what the registry does), by sled's flush only (survives process
//! death, not power loss), or not waited for at all, with 1 and 64 concurrent joiners.
//!
//! Run: `cargo run --example durability_cost -- [DIR]`. DIR (default
//! `target/durability-bench`) must be on the disk you want to measure: a tmpfs makes
//! fdatasync free. Each configuration runs three times on a fresh store; the median is
//! printed with the p50 and p99 latency of one join + durable().

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xlreg::id::Id;
use xlreg::store::{ClusterRef, Durability, NewCluster, NewNode, NodeRecord, Store};

/// How a join is made durable before it counts as done.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `durable()` with flush + fdatasync (the registry's behaviour).
    FlushAndSync,
    /// `durable()` with sled's flush only.
    FlushOnly,
    /// No `durable()` call at all.
    NoFlush,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::FlushAndSync => "flush + fdatasync",
            Mode::FlushOnly => "flush only",
            Mode::NoFlush => "no flush",
        }
    }
}

/// One measured run.
struct Run {
    joins_per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn fresh_id() -> Id {
    Id::random(&mut rand::rng())
}

/// Opens a fresh store in `dir` with `joins` registered nodes and enough 64-slot clusters.
fn prepare(dir: &Path, mode: Mode, joins: usize) -> (Store, Vec<NodeRecord>, Vec<ClusterRef>) {
    let _ = std::fs::remove_dir_all(dir);
    let durability = match mode {
        Mode::FlushAndSync => Durability::PowerLoss,
        Mode::FlushOnly | Mode::NoFlush => Durability::ProcessCrash,
    };
    let store = Store::open_with(dir, durability).expect("open the store");
    let nodes = (0..joins)
        .map(|i| {
            let node = NewNode {
                id: None,
                name: format!("node-{i}"),
                attrs: 0,
                // Real keys are 294-byte DER; their content does not matter to the store.
                comms_key: vec![1; 294],
                sig_key: vec![2; 294],
                endpoints: vec![format!("10.0.{}.{}:5000", i / 250, i % 250)],
            };
            store
                .register_node(node, &mut fresh_id, 1)
                .expect("register")
                .node
        })
        .collect();
    let clusters = (0..joins.div_ceil(64))
        .map(|k| {
            let cluster = NewCluster {
                name: format!("cluster-{k}"),
                attrs: 0,
                max_size: 64,
                endpoint_count: 1,
            };
            let (record, _) = store
                .create_cluster(cluster, &mut fresh_id, 1)
                .expect("create");
            ClusterRef::Id(record.id)
        })
        .collect();
    store.flush_blocking().expect("flush the setup");
    (store, nodes, clusters)
}

async fn run(dir: &Path, mode: Mode, joiners: usize, joins: usize) -> Run {
    let (store, nodes, clusters) = prepare(dir, mode, joins);
    let nodes = Arc::new(nodes);
    let clusters = Arc::new(clusters);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..joiners)
        .map(|_| {
            let (store, nodes, clusters, next) =
                (store.clone(), nodes.clone(), clusters.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= nodes.len() {
                        return latencies;
                    }
                    let one = Instant::now();
                    store.join(&clusters[i / 64], &nodes[i], 2).expect("join");
                    if !matches!(mode, Mode::NoFlush) {
                        store.durable().await.expect("durable");
                    }
                    latencies.push(one.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(joins);
    for task in tasks {
        latencies.extend(task.await.expect("joiner"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let problems = store.verify().expect("verify");
    assert!(problems.is_empty(), "{problems:?}");
    Run {
        joins_per_second: joins as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn main() {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/durability-bench"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("store in {}", dir.display());
    println!("| durability | joiners | joins/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for joiners in [1, 64] {
        for mode in [Mode::FlushAndSync, Mode::FlushOnly, Mode::NoFlush] {
            let joins = match (mode, joiners) {
                (Mode::NoFlush, _) => 20_000,
                (_, 1) => 500,
                _ => 5_000,
            };
            let mut runs: Vec<Run> = (0..3)
                .map(|_| runtime.block_on(run(&dir, mode, joiners, joins)))
                .collect();
            runs.sort_by(|a, b| a.joins_per_second.total_cmp(&b.joins_per_second));
            let median = &runs[1];
            println!(
                "| {} | {joiners} | {:.0} | {:.2} ms | {:.2} ms |",
                mode.label(),
                median.joins_per_second,
                median.p50.as_secs_f64() * 1e3,
                median.p99.as_secs_f64() * 1e3,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
