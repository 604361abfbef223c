//! Durable joins per second at the store layer, with concurrent joiners: the group-commit
//! benchmark behind docs/performance.md.
//!
//! For 1 and 64 concurrent joiners it measures three ways of acknowledging a join:
//! - `memory`: the transaction only, no durability (an upper bound);
//! - `flush-per-join`: each joiner flushes and fdatasyncs for its own join, serialised (what
//!   a store without group commit does);
//! - `group-commit`: `Store::durable()`, where concurrent joiners share flushes.
//!
//! Run: `cargo bench --bench group_commit` (add `-- --quick` for a short run). It prints one
//! line per case. Each case uses a fresh data directory under the system temp dir.

use std::sync::Arc;
use std::time::{Duration, Instant};

use xlreg::id::Id;
use xlreg::store::{ClusterRef, NewCluster, NewNode, NodeRecord, Store};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Memory,
    FlushPerJoin,
    GroupCommit,
}

fn fresh() -> Id {
    Id::random(&mut rand::rng())
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
            store.register_node(new, &mut fresh, 1).unwrap().node
        })
        .collect();
    let clusters = (0..rounds)
        .map(|r| {
            let new = NewCluster {
                name: format!("round-{r}"),
                attrs: 0,
                max_size: 64,
                endpoint_count: 1,
            };
            store.create_cluster(new, &mut fresh, 1).unwrap().0.id
        })
        .collect();
    store.flush_blocking().unwrap();
    (nodes, clusters)
}

/// Runs `joiners` tasks; each joins every cluster once. Returns durable joins per second.
fn measure(mode: Mode, joiners: usize, rounds: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (nodes, clusters) = setup(&store, joiners, rounds);
    let clusters = Arc::new(clusters);
    let flush_lock = Arc::new(std::sync::Mutex::new(()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = nodes
            .into_iter()
            .map(|node| {
                let (store, clusters, flush_lock) =
                    (store.clone(), clusters.clone(), flush_lock.clone());
                tokio::spawn(async move {
                    for cluster in clusters.iter() {
                        store
                            .join(&ClusterRef::Id(cluster.clone()), &node, 2)
                            .unwrap();
                        match mode {
                            Mode::Memory => {}
                            Mode::GroupCommit => store.durable().await.unwrap(),
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
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let joins = (joiners * rounds) as f64;
    assert_eq!(store.counts().unwrap().members as f64, joins);
    joins / started.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    println!(
        "durable joins/s at the store layer (real data dir, {} per case)",
        if quick { "quick" } else { "~2 s" }
    );
    for joiners in [1usize, 64] {
        for mode in [Mode::Memory, Mode::FlushPerJoin, Mode::GroupCommit] {
            // Calibrate the number of rounds to the time budget with a short first run.
            let probe_rounds = 4;
            let probe = measure(mode, joiners, probe_rounds);
            let rounds =
                ((probe * budget.as_secs_f64()) / joiners as f64).clamp(4.0, 2_000.0) as usize;
            let rate = measure(mode, joiners, rounds);
            println!(
                "{joiners:>3} joiners  {:<15} {rate:>10.0} joins/s  ({} joins)",
                format!("{mode:?}"),
                joiners * rounds
            );
        }
    }
}
