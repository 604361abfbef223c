//! What the snapshot gate costs: how long `Store::snapshot` keeps mutations waiting for
//! registries of a few sizes, what a mutation pays to pass the gate, and how much longer a
//! mutation takes while snapshots are being taken back to back; and the same for
//! point-in-time views (`Store::view`, what an online export or backup reads): how long
//! opening one closes the gate, and a mutation's latency while views are opened and read to
//! the end back to back.
//!
//! Run with `cargo bench --bench admin_snapshot`. Prints one line per measurement; the
//! numbers quoted in docs/operations.md come from here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use xlreg::store::{ClusterRef, NewCluster, NewNode, Store};

/// Size of an RSA-2048 SubjectPublicKeyInfo in DER, as stored for each node key.
const KEY_LEN: usize = 294;

fn new_node(i: usize) -> NewNode {
    NewNode {
        id: None,
        name: format!("node-{i}"),
        attrs: 0,
        comms_key: vec![(i % 251) as u8; KEY_LEN],
        sig_key: vec![(i % 241) as u8; KEY_LEN],
        endpoints: vec![format!("10.0.{}.{}:55555", i / 250, i % 250)],
    }
}

/// A registry of `nodes` nodes in clusters of 8.
fn populate(store: &Store, nodes: usize) {
    let mut cluster = None;
    for i in 0..nodes {
        if i % 8 == 0 {
            let (c, _) = store
                .create_cluster(
                    NewCluster {
                        admission: Default::default(),
                        name: format!("cluster-{}", i / 8),
                        attrs: 0,
                        max_size: 8,
                        endpoint_count: 1,
                    },
                    1,
                )
                .unwrap();
            cluster = Some(ClusterRef::Id(c.id));
        }
        let node = store.register_node(new_node(i), 1).unwrap().node;
        store.join(cluster.as_ref().unwrap(), &node, 1).unwrap();
    }
    store.flush_blocking().unwrap();
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();

    // 1. The gate itself: an uncontended RwLock read, as every mutation takes it.
    let lock = RwLock::new(());
    let rounds = 10_000_000u32;
    let start = Instant::now();
    for _ in 0..rounds {
        drop(std::hint::black_box(lock.read().unwrap()));
    }
    println!(
        "gate pass (uncontended RwLock read + release): {:.1} ns",
        start.elapsed().as_nanos() as f64 / f64::from(rounds)
    );

    for nodes in [1_000, 10_000, 50_000] {
        let store = Store::open(&dir.path().join(format!("n{nodes}"))).unwrap();
        populate(&store, nodes);
        let samples: Vec<Duration> = (0..7)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(store.snapshot().unwrap());
                start.elapsed()
            })
            .collect();
        let bytes: usize = store
            .snapshot()
            .unwrap()
            .trees
            .values()
            .flat_map(|t| t.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum();
        println!(
            "snapshot of {nodes} nodes / {} clusters ({:.1} MiB of records): gate closed {:?} (median of 7)",
            nodes / 8,
            bytes as f64 / (1 << 20) as f64,
            median(samples)
        );
        let samples: Vec<Duration> = (0..7)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(store.view().unwrap());
                start.elapsed()
            })
            .collect();
        println!(
            "view of {nodes} nodes: opened (gate closed) in {:?} (median of 7)",
            median(samples)
        );
    }

    // 2. A mutation's latency alone and while snapshots run back to back (worst case).
    let store = Store::open(&dir.path().join("busy")).unwrap();
    populate(&store, 10_000);
    let mutate = |n: usize| {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let start = Instant::now();
            store.register_node(new_node(1_000_000 + i), 2).unwrap();
            samples.push(start.elapsed());
        }
        samples.sort_unstable();
        (samples[n / 2], samples[n * 99 / 100], samples[n - 1])
    };
    let (p50, p99, max) = mutate(2_000);
    println!("register (10000-node store, no snapshots): p50 {p50:?}, p99 {p99:?}, max {max:?}");
    let (taken, (p50, p99, max)) = while_running(
        || {
            std::hint::black_box(store.snapshot().unwrap());
        },
        || mutate(2_000),
    );
    println!(
        "register while {taken} snapshots ran back to back: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );

    // 3. The same while views are opened and read to the end back to back: each mutation
    // also records its pre-images for the open view.
    let (read, (p50, p99, max)) = while_running(
        || {
            use xlreg::store::StoreView as _;
            let view = store.view().unwrap();
            for tree in view.tree_names() {
                for entry in view.entries(&tree) {
                    std::hint::black_box(entry.unwrap());
                }
            }
        },
        || mutate(2_000),
    );
    println!(
        "register while {read} views were read back to back: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
}

/// Runs `measure` while another thread runs `round` back to back; returns how many rounds
/// it finished and what `measure` gave.
fn while_running<T>(round: impl Fn() + Sync, measure: impl FnOnce() -> T) -> (u32, T) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Relaxed) {
                round();
                rounds += 1;
            }
            rounds
        });
        let out = measure();
        stop.store(true, Ordering::Relaxed);
        (background.join().unwrap(), out)
    })
}
