//! Acknowledged writes per second at the store layer on a real 3-member etcd cluster
//! (started by the bench on loopback ports): the etcd backend's numbers in
//! docs/performance.md.
//!
//! Cases, each with the etcd round trips and lost compares per write:
//! - `join, one cluster`: N joiners join the same 64-slot cluster each round, one write per
//!   `apply` (every join of a round contends for the one cluster key);
//! - `join, one, 3 servers`: the same, the joiners spread over three stores on the same
//!   prefix (three `xlreg serve` processes): each store combines its own joiners, and the
//!   three race each other for the cluster key (lost compares);
//! - `join, own cluster`: N joiners each join a cluster of their own (no contention: what one
//!   round trip per write allows);
//! - `join, batch of 16`: joins handed to the store 16 at a time (one `apply`, one Txn);
//! - `register, no cap` / `register, caps set`: N concurrent new registrations, without and
//!   with `--max-nodes` (the cap's range guard makes concurrent creators contend).
//!
//! Run: `cargo bench --bench etcd` (`-- --quick` for a short run). Without etcd installed it
//! says so and measures nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xlreg::bench::stats::LatencySummary;
use xlreg::id::Id;
use xlreg::store::etcd::client::counters;
use xlreg::store::etcd::testing::{etcd_installed, EtcdCluster};
use xlreg::store::etcd::{EtcdConfig, EtcdStore};
use xlreg::store::{
    AdminStore, Caps, ClusterRef, NewCluster, NewNode, SessionStore, Write, Written,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    JoinOneCluster,
    JoinOneClusterThreeStores,
    JoinOwnCluster,
    JoinBatch16,
    RegisterNoCap,
    RegisterCapped,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::JoinOneCluster => "join, one cluster",
            Case::JoinOneClusterThreeStores => "join, one, 3 servers",
            Case::JoinOwnCluster => "join, own cluster",
            Case::JoinBatch16 => "join, batch of 16",
            Case::RegisterNoCap => "register, no cap",
            Case::RegisterCapped => "register, caps set",
        }
    }
}

fn new_node(name: String) -> NewNode {
    NewNode {
        id: None,
        name,
        attrs: 0,
        comms_key: vec![0x30; 294],
        sig_key: vec![0x31; 294],
        endpoints: vec!["10.0.0.1:9000".into()],
    }
}

fn register(store: &EtcdStore, name: String) -> Id {
    match store.apply_now(&Write::RegisterNode {
        node: new_node(name),
        now_ms: 1,
    }) {
        Ok(Written::Node(r)) => r.node.id,
        other => panic!("not a registration: {other:?}"),
    }
}

fn create(store: &EtcdStore, name: String) -> Id {
    let write = Write::CreateCluster {
        cluster: NewCluster {
            name,
            attrs: 0,
            max_size: 64,
            endpoint_count: 1,
        },
        now_ms: 1,
    };
    match store.apply_now(&write) {
        Ok(Written::Cluster(c, _)) => c.id,
        other => panic!("not a cluster: {other:?}"),
    }
}

/// Runs `case` with `writers` concurrent writers for `rounds` rounds on a fresh prefix:
/// writes/s, their latency, and round trips and lost compares per write.
fn measure(
    etcd: &EtcdCluster,
    case: Case,
    writers: usize,
    rounds: usize,
) -> (f64, LatencySummary, f64, f64) {
    let config = EtcdConfig::new(
        etcd.endpoints(),
        format!("/bench-{:016x}", rand::random::<u64>()),
    );
    let store = Arc::new(EtcdStore::open(&config).unwrap());
    if case == Case::RegisterCapped {
        store
            .set_caps(Caps {
                max_clusters: 1_000_000,
                max_nodes: 1_000_000,
            })
            .unwrap();
    }
    let joins = matches!(
        case,
        Case::JoinOneCluster
            | Case::JoinOneClusterThreeStores
            | Case::JoinOwnCluster
            | Case::JoinBatch16
    );
    let stores: Vec<Arc<EtcdStore>> = if case == Case::JoinOneClusterThreeStores {
        vec![
            Arc::clone(&store),
            Arc::new(EtcdStore::open(&config).unwrap()),
            Arc::new(EtcdStore::open(&config).unwrap()),
        ]
    } else {
        vec![Arc::clone(&store)]
    };
    let nodes: Vec<Id> = if joins {
        (0..writers)
            .map(|i| register(&store, format!("n{i}")))
            .collect()
    } else {
        Vec::new()
    };
    // Per round, the cluster every writer joins; or per writer and round, its own.
    let clusters: Vec<Vec<Id>> = match case {
        Case::JoinOneCluster | Case::JoinOneClusterThreeStores | Case::JoinBatch16 => {
            let per_round: Vec<Id> = (0..rounds)
                .map(|r| create(&store, format!("r{r}")))
                .collect();
            (0..writers).map(|_| per_round.clone()).collect()
        }
        Case::JoinOwnCluster => (0..writers)
            .map(|w| {
                (0..rounds)
                    .map(|r| create(&store, format!("w{w}r{r}")))
                    .collect()
            })
            .collect(),
        _ => Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (trips, lost) = (
        counters().round_trips.load(Ordering::Relaxed),
        counters().lost_compares.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let (latencies, writes) = runtime.block_on(async {
        let tasks: Vec<_> = match case {
            Case::JoinBatch16 => (0..rounds)
                .flat_map(|r| {
                    let cluster = clusters[0][r].clone();
                    nodes
                        .chunks(16)
                        .map(|chunk| {
                            let writes: Vec<Write> = chunk
                                .iter()
                                .map(|node| Write::Join {
                                    cluster: ClusterRef::Id(cluster.clone()),
                                    node: node.clone(),
                                    now_ms: 2,
                                })
                                .collect();
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                let began = Instant::now();
                                let n = writes.len();
                                let answers = store.apply(writes).await.unwrap();
                                assert!(answers.iter().all(Result::is_ok));
                                (vec![began.elapsed()], n)
                            })
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
            _ => (0..writers)
                .map(|w| {
                    let store = Arc::clone(&stores[w % stores.len()]);
                    let node = nodes.get(w).cloned();
                    let mine = clusters.get(w).cloned().unwrap_or_default();
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(rounds);
                        for r in 0..rounds {
                            let write = match &node {
                                Some(node) => Write::Join {
                                    cluster: ClusterRef::Id(
                                        mine.get(r).cloned().expect("a cluster per round"),
                                    ),
                                    node: node.clone(),
                                    now_ms: 2,
                                },
                                None => Write::RegisterNode {
                                    node: new_node(format!("w{w}r{r}")),
                                    now_ms: 1,
                                },
                            };
                            let began = Instant::now();
                            let answers = store.apply(vec![write]).await.unwrap();
                            assert!(answers[0].is_ok(), "{answers:?}");
                            latencies.push(began.elapsed());
                        }
                        (latencies, rounds)
                    })
                })
                .collect(),
        };
        let mut all = Vec::new();
        let mut writes = 0;
        for task in tasks {
            let (latencies, n) = task.await.unwrap();
            all.extend(latencies);
            writes += n;
        }
        (all, writes)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let per_write = |now: u64, before: u64| (now - before) as f64 / writes as f64;
    (
        writes as f64 / elapsed,
        LatencySummary::of(latencies),
        per_write(counters().round_trips.load(Ordering::Relaxed), trips),
        per_write(counters().lost_compares.load(Ordering::Relaxed), lost),
    )
}

fn main() {
    if !etcd_installed() {
        println!("SKIPPED: etcd not installed: the etcd bench measured nothing");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    let etcd = EtcdCluster::start(3);
    println!(
        "acknowledged writes/s at the store layer on a 3-member etcd 3.4 on this machine ({} per case)",
        if quick { "quick" } else { "~3 s" }
    );
    for writers in [1usize, 64] {
        for case in [
            Case::JoinOneCluster,
            Case::JoinOneClusterThreeStores,
            Case::JoinOwnCluster,
            Case::JoinBatch16,
            Case::RegisterNoCap,
            Case::RegisterCapped,
        ] {
            if matches!(case, Case::JoinBatch16 | Case::JoinOneClusterThreeStores) && writers < 16 {
                continue;
            }
            let (probe, ..) = measure(&etcd, case, writers, 2);
            let rounds =
                ((probe * budget.as_secs_f64()) / writers as f64).clamp(2.0, 500.0) as usize;
            let (rate, latency, trips, lost) = measure(&etcd, case, writers, rounds);
            println!(
                "{writers:>3} writers  {:<20} {rate:>7.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {trips:>5.2} round trips/write  {lost:>5.2} lost compares/write",
                case.label(),
                latency.p50,
                latency.p99,
            );
        }
    }
}
