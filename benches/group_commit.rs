//! Acknowledged joins per second at the store layer, with concurrent joiners: the
//! group-commit and durability-cost benchmark behind docs/performance.md and
//! docs/reliability.md.
//!
//! For 1 and 64 concurrent joiners it measures five ways of acknowledging a join:
//! - `Memory`: one transaction per join, no durability;
//! - `FlushPerJoin`: one transaction per join, then the joiner flushes and fdatasyncs for its
//!   own join, one at a time (what a store without group commit does);
//! - `TxThenDurable`: one transaction per join, then `Store::durable()`, whose flushes
//!   concurrent joiners share (group commit of flushes only);
//! - `BatchFlushOnly`: `Store::write()` on a store that only flushes (survives process death,
//!   not power loss): shows what the fdatasync costs;
//! - `Batch`: `Store::write()` as `xlreg serve` runs it: the writer thread applies the joins
//!   queued meanwhile in one transaction, flushes and fdatasyncs once, then answers each.
//!
//! Each line gives joins/s and the latency of one join from its transaction to its
//! acknowledgement (p50, p99). Run: `cargo bench --bench group_commit` (`-- --quick` for a
//! short run). Each case uses a fresh data directory under the system temp dir.

use std::sync::Arc;
use std::time::{Duration, Instant};

use xlreg::bench::stats::LatencySummary;
use xlreg::id::Id;
use xlreg::store::{ClusterRef, Durability, NewCluster, NewNode, NodeRecord, Store, Write};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Memory,
    FlushPerJoin,
    TxThenDurable,
    BatchFlushOnly,
    Batch,
}

fn setup(store: &Store, joiners: usize, rounds: usize) -> (Vec<NodeRecord>, Vec<Id>) {
    let nodes = (0..joiners)
        .map(|i| {
            let new = NewNode {
                id: None,
                name: format!("joiner-{i}"),
                attrs: 0,
                comms_key: vec![0x30; 294],
                sig_key: vec![0x31; 294],
                endpoints: vec![format!("10.0.0.{}:9000", i % 250)],
            };
            store.register_node(new, 1).unwrap().node
        })
        .collect();
    let clusters = (0..rounds)
        .map(|r| {
            let new = NewCluster {
                admission: Default::default(),
                name: format!("round-{r}"),
                attrs: 0,
                max_size: 64,
                endpoint_count: 1,
            };
            store.create_cluster(new, 1).unwrap().0.id
        })
        .collect();
    store.flush_blocking().unwrap();
    (nodes, clusters)
}

/// Runs `joiners` tasks; each joins every cluster once. Returns acknowledged joins per
/// second and the latency of each join.
fn measure(mode: Mode, joiners: usize, rounds: usize) -> (f64, LatencySummary) {
    let dir = tempfile::tempdir().unwrap();
    let durability = match mode {
        Mode::BatchFlushOnly => Durability::ProcessCrash,
        _ => Durability::PowerLoss,
    };
    let store = Store::open_with(dir.path(), durability).unwrap();
    let (nodes, clusters) = setup(&store, joiners, rounds);
    let clusters = Arc::new(clusters);
    let flush_lock = Arc::new(std::sync::Mutex::new(()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let latencies = runtime.block_on(async {
        let tasks: Vec<_> = nodes
            .into_iter()
            .map(|node| {
                let (store, clusters, flush_lock) =
                    (store.clone(), clusters.clone(), flush_lock.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(clusters.len());
                    for cluster in clusters.iter() {
                        let began = Instant::now();
                        let cluster = ClusterRef::Id(cluster.clone());
                        if let Mode::Batch | Mode::BatchFlushOnly = mode {
                            let write = Write::Join {
                                token: None,
                                cluster,
                                node: node.id.clone(),
                                now_ms: 2,
                            };
                            store.write(write).await.unwrap();
                            latencies.push(began.elapsed());
                            continue;
                        }
                        store.join(&cluster, &node, 2).unwrap();
                        match mode {
                            Mode::Memory | Mode::Batch | Mode::BatchFlushOnly => {}
                            Mode::TxThenDurable => store.durable().await.unwrap(),
                            Mode::FlushPerJoin => {
                                let (store, lock) = (store.clone(), flush_lock.clone());
                                tokio::task::spawn_blocking(move || {
                                    let _one_at_a_time = lock.lock().unwrap();
                                    store.flush_blocking().unwrap()
                                })
                                .await
                                .unwrap()
                            }
                        }
                        latencies.push(began.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(store.counts().unwrap().members as usize, joiners * rounds);
    (rate, LatencySummary::of(latencies))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    println!(
        "acknowledged joins/s at the store layer (real data dir, {} per case)",
        if quick { "quick" } else { "~2 s" }
    );
    for joiners in [1usize, 64] {
        for mode in [
            Mode::Memory,
            Mode::FlushPerJoin,
            Mode::TxThenDurable,
            Mode::BatchFlushOnly,
            Mode::Batch,
        ] {
            // Calibrate the number of rounds to the time budget with a short first run.
            let (probe, _) = measure(mode, joiners, 4);
            let rounds =
                ((probe * budget.as_secs_f64()) / joiners as f64).clamp(4.0, 2_000.0) as usize;
            let (rate, latency) = measure(mode, joiners, rounds);
            println!(
                "{joiners:>3} joiners  {:<15} {rate:>8.0} joins/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} joins)",
                format!("{mode:?}"),
                latency.p50,
                latency.p99,
                joiners * rounds
            );
        }
    }
}
