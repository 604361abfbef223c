//! Criterion benchmarks of the store and the message layer: one join transaction, with and
//! without waiting for it to be durable, and encoding the member list of a full 64-member
//! cluster.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use prost::Message as _;
use std::hint::black_box;
use xlreg::handlers::{get_cluster, SessionState};
use xlreg::id::Id;
use xlreg::model::{ClusterRef, NewCluster, NewNode, NodeRecord};
use xlreg::proto::XlRegMsg;
use xlreg::store::Store;

fn node(store: &Store, i: usize) -> NodeRecord {
    let new = NewNode {
        id: None,
        name: format!("node-{i}"),
        attrs: 0,
        comms_key: vec![0x30; 294],
        sig_key: vec![0x31; 294],
        endpoints: vec![format!("10.0.{}.{}:9000", i / 250, i % 250)],
    };
    store.register_node(new, 1).unwrap().node
}

fn cluster(store: &Store, name: &str, size: u32) -> Id {
    let new = NewCluster {
        admission: Default::default(),
        name: name.into(),
        attrs: 0,
        max_size: size,
        endpoint_count: 1,
    };
    store.create_cluster(new, 1).unwrap().0.id
}

fn join(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut group = c.benchmark_group("join transaction (real data dir)");
    for durable in [false, true] {
        let label = if durable {
            "join + durable (flush + fdatasync)"
        } else {
            "join, in memory only"
        };
        let mut n = 0usize;
        group.bench_function(label, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    (
                        cluster(&store, &format!("c{durable}{n}"), 2),
                        node(&store, n),
                    )
                },
                |(id, member)| {
                    store.join(&ClusterRef::Id(id), &member, 2).unwrap();
                    if durable {
                        runtime.block_on(store.durable()).unwrap();
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn member_list(c: &mut Criterion) {
    let store = Store::temporary().unwrap();
    let id = cluster(&store, "full", 64);
    for i in 0..64 {
        let member = node(&store, i);
        store.join(&ClusterRef::Id(id.clone()), &member, 2).unwrap();
    }
    let state = SessionState {
        joined: Some(id),
        ..SessionState::default()
    };
    let request = XlRegMsg::default();
    c.bench_function(
        "GetCluster of a 64-member cluster: read, build and encode",
        |b| {
            b.iter(|| {
                let get = get_cluster::request(&state, black_box(&request), 0).unwrap();
                let view = store.cluster_view(&get.target).unwrap();
                match get_cluster::answer(&get, view, false).unwrap() {
                    get_cluster::GetOutcome::Ready(reply) => reply.encode_to_vec(),
                    get_cluster::GetOutcome::Wait(_) => unreachable!("no wait was asked"),
                }
            })
        },
    );
}

criterion_group!(benches, join, member_list);
criterion_main!(benches);
