//! The store conformance suite: one set of tests every backend must pass, run against the
//! sled backend and the memory backend (the `conformance!` invocations at the end), and a
//! property test that the same random writes give the same answers and the same records on
//! both.
//!
//! A new backend adds one `conformance!(name, constructor)` line.

use std::sync::{Arc, Barrier};

use proptest::prelude::*;

use super::{
    AdminStore, Backend, Caps, IdSource, MemoryStore, NodeDeletion, Snapshot, StorageError, Store,
    StoreError,
};
use crate::id::Id;
use crate::model::{
    ClusterRecord, ClusterRef, Counts, JoinOutcome, MismatchedKeys, NewCluster, NewNode,
    NodeRecord, Refusal, RegistrationOutcome, RegistryMeta, Write, Written,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(super) fn new_node(name: &str, endpoints: usize) -> NewNode {
    NewNode {
        id: None,
        name: name.into(),
        attrs: 0,
        comms_key: format!("comms-{name}").into_bytes(),
        sig_key: format!("sig-{name}").into_bytes(),
        endpoints: (0..endpoints)
            .map(|i| format!("10.0.0.{i}:55555"))
            .collect(),
    }
}

fn register(store: &dyn AdminStore, new: NewNode, now_ms: u64) -> Result<Written, StoreError> {
    store.apply_now(&Write::RegisterNode { node: new, now_ms })
}

fn registered(written: Result<Written, StoreError>) -> (NodeRecord, RegistrationOutcome) {
    match written {
        Ok(Written::Node(r)) => (r.node, r.outcome),
        other => panic!("not a registration: {other:?}"),
    }
}

/// Registers a node named `name` with `endpoints` endpoints.
fn node(store: &dyn AdminStore, name: &str, endpoints: usize) -> NodeRecord {
    registered(register(store, new_node(name, endpoints), 1)).0
}

fn create_write(name: &str, max_size: u32, endpoint_count: u32) -> Write {
    Write::CreateCluster {
        cluster: NewCluster {
            admission: Default::default(),
            name: name.into(),
            attrs: 0,
            max_size,
            endpoint_count,
        },
        now_ms: 1,
    }
}

/// Creates (or finds) a cluster; returns it and whether it was created.
fn create(store: &dyn AdminStore, name: &str, max: u32, endpoints: u32) -> (ClusterRecord, bool) {
    match store.apply_now(&create_write(name, max, endpoints)) {
        Ok(Written::Cluster(c, created)) => (c, created),
        other => panic!("not a cluster: {other:?}"),
    }
}

fn cluster(store: &dyn AdminStore, name: &str, max: u32, endpoints: u32) -> ClusterRecord {
    create(store, name, max, endpoints).0
}

fn join(
    store: &dyn AdminStore,
    cluster: &ClusterRef,
    node: &NodeRecord,
    now_ms: u64,
) -> Result<JoinOutcome, StoreError> {
    match store.apply_now(&Write::Join {
        token: None,
        cluster: cluster.clone(),
        node: node.id.clone(),
        now_ms,
    })? {
        Written::Joined(joined) => Ok(joined),
        other => panic!("not a join: {other:?}"),
    }
}

fn refusal<T: std::fmt::Debug>(result: Result<T, StoreError>) -> Refusal {
    match result {
        Err(StoreError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn name(n: &str) -> ClusterRef {
    ClusterRef::Name(n.into())
}

// The suite. Each test takes a constructor: the store's ids come from the source given.

pub(super) fn register_new_node_gets_32_byte_id<S: Backend + 'static>(make: fn(IdSource) -> S) {
    let store = make(IdSource::from_os());
    let (node, outcome) = registered(register(&store, new_node("a", 1), 10));
    assert_eq!(outcome, RegistrationOutcome::Created);
    assert_eq!(node.id.as_bytes().len(), 32);
    assert_eq!(node.registered_at_ms, 10);
    assert_eq!(AdminStore::node(&store, &node.id).unwrap(), Some(node));
}

pub(super) fn reregister_same_keys_is_unchanged_or_updated<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let first = node(&store, "a", 1);
    let mut again = new_node("a", 1);
    again.id = Some(first.id.clone());
    let (same, outcome) = registered(register(&store, again.clone(), 20));
    assert_eq!(outcome, RegistrationOutcome::Unchanged);
    assert_eq!(same, first);

    again.name = "renamed".into();
    again.endpoints.push("10.9.9.9:1".into());
    let (updated, outcome) = registered(register(&store, again, 30));
    assert_eq!(outcome, RegistrationOutcome::Updated);
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.endpoints.len(), 2);
    assert_eq!(updated.registered_at_ms, first.registered_at_ms);
    assert_eq!(updated.updated_at_ms, 30);
    assert_eq!(AdminStore::node(&store, &first.id).unwrap(), Some(updated));
}

pub(super) fn reregister_with_other_key_is_refused_and_changes_nothing<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let first = node(&store, "a", 1);
    let mut evil = new_node("evil", 3);
    evil.id = Some(first.id.clone());
    evil.comms_key = first.comms_key.clone();
    evil.sig_key = b"other".to_vec();
    let e = refusal(register(&store, evil.clone(), 5));
    assert_eq!(
        e,
        Refusal::NodeKeyMismatch {
            id: first.id.clone(),
            keys: MismatchedKeys::Signing,
        }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "node {} is registered with a different signing key",
            first.id
        )
    );
    evil.sig_key = first.sig_key.clone();
    evil.comms_key = b"other".to_vec();
    // The text names the key that differs.
    assert_eq!(
        refusal(register(&store, evil.clone(), 5)).to_string(),
        format!("node {} is registered with a different comms key", first.id)
    );
    evil.sig_key = b"other".to_vec();
    assert_eq!(
        refusal(register(&store, evil, 5)).to_string(),
        format!(
            "node {} is registered with a different signing key and comms key",
            first.id
        )
    );
    assert_eq!(AdminStore::node(&store, &first.id).unwrap(), Some(first));
    assert_eq!(AdminStore::counts(&store).unwrap().nodes, 1);
}

pub(super) fn unknown_legacy_id_is_accepted<S: Backend + 'static>(make: fn(IdSource) -> S) {
    let store = make(IdSource::from_fn(|| -> Id { panic!("no fresh id needed") }));
    let legacy = Id::from_bytes(&[7u8; 20]).unwrap();
    let mut n = new_node("old", 1);
    n.id = Some(legacy.clone());
    let (node, outcome) = registered(register(&store, n, 1));
    assert_eq!(outcome, RegistrationOutcome::Created);
    assert_eq!(node.id, legacy);
    assert!(AdminStore::node(&store, &legacy).unwrap().is_some());
}

pub(super) fn fresh_ids_avoid_used_ones_and_give_up_eventually<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let taken = Id::from_bytes(&[1u8; 32]).unwrap();
    let c = Id::from_bytes(&[2u8; 32]).unwrap();
    let other = Id::from_bytes(&[9u8; 32]).unwrap();
    // The source hands out `taken`, `c`, `other`, then `taken` for ever.
    let script = vec![
        taken.clone(),
        c.clone(),
        taken.clone(),
        c.clone(),
        other.clone(),
    ];
    let mut next = script.into_iter();
    let store = make(IdSource::from_fn(move || {
        next.next()
            .unwrap_or_else(|| Id::from_bytes(&[1u8; 32]).unwrap())
    }));
    assert_eq!(node(&store, "a", 0).id, taken);
    assert_eq!(cluster(&store, "c", 2, 0).id, c);
    // Both used: the third draw skips them.
    assert_eq!(node(&store, "b", 0).id, other);
    let e = register(&store, new_node("x", 0), 1).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Storage(StorageError::NoFreshId { tries: 16 })
        ),
        "{e}"
    );
    let fresh = runtime().block_on(store.fresh_id()).unwrap_err();
    assert!(matches!(fresh, StorageError::NoFreshId { .. }), "{fresh}");
}

pub(super) fn create_is_idempotent_by_name<S: Backend + 'static>(make: fn(IdSource) -> S) {
    let store = make(IdSource::from_os());
    let (a, created) = create(&store, "c", 4, 1);
    assert!(created);
    assert_eq!(a.id.as_bytes().len(), 32);
    let (b, created) = create(&store, "c", 9, 3);
    assert!(!created);
    assert_eq!(a, b);
    assert_eq!(
        AdminStore::cluster(&store, &name("c")).unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        AdminStore::cluster(&store, &ClusterRef::Id(a.id.clone())).unwrap(),
        Some(a)
    );
    assert_eq!(AdminStore::counts(&store).unwrap().clusters, 1);
}

pub(super) fn join_assigns_slots_in_order_and_rejoin_keeps_slot<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    cluster(&store, "c", 3, 1);
    let nodes: Vec<_> = ["a", "b", "d"].iter().map(|n| node(&store, n, 1)).collect();
    for (i, n) in nodes.iter().enumerate() {
        let out = join(&store, &name("c"), n, 100 + i as u64).unwrap();
        assert_eq!(out.slot, i as u32);
        assert!(!out.rejoined);
        assert_eq!(out.cluster.touched_at_ms, 100 + i as u64);
    }
    // Full now, but a member may rejoin; its record is refreshed from the node record.
    let mut again = new_node("b", 2);
    again.id = Some(nodes[1].id.clone());
    again.name = "b2".into();
    let (b2, _) = registered(register(&store, again, 5));
    let out = join(&store, &name("c"), &nodes[1], 200).unwrap();
    assert_eq!(out.slot, 1);
    assert!(out.rejoined);
    assert_eq!(out.cluster.members.len(), 3);
    let m = out.cluster.member_by_node(&b2.id).unwrap();
    assert_eq!(m.name, "b2");
    assert_eq!(m.endpoints, b2.endpoints);
    assert_eq!(m.joined_at_ms, 101);
    assert_eq!(out.cluster.touched_at_ms, 200);
    assert_eq!(
        AdminStore::cluster(&store, &name("c")).unwrap(),
        Some(out.cluster.clone())
    );

    let view = AdminStore::cluster_view(&store, &name("c"))
        .unwrap()
        .unwrap();
    assert_eq!(view.cluster, out.cluster);
    assert_eq!(view.nodes.len(), 3);
    assert_eq!(view.nodes[1], b2);
    let read = runtime().block_on(store.read_cluster(name("c"))).unwrap();
    assert_eq!(read, Some(view));
    assert_eq!(
        AdminStore::counts(&store).unwrap(),
        Counts {
            nodes: 3,
            clusters: 1,
            members: 3
        }
    );
}

pub(super) fn join_refusals<S: Backend + 'static>(make: fn(IdSource) -> S) {
    let store = make(IdSource::from_os());
    let c = cluster(&store, "c", 2, 2);
    let a = node(&store, "a", 2);
    join(&store, &name("c"), &a, 1).unwrap();

    // Same name, different node.
    let a_twin = node(&store, "a", 2);
    let e = refusal(join(&store, &name("c"), &a_twin, 1));
    assert!(matches!(&e, Refusal::MemberNameTaken { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "cluster c already has a different member named a"
    );

    // Too few endpoints.
    let thin = node(&store, "thin", 1);
    let e = refusal(join(&store, &name("c"), &thin, 1));
    assert!(
        matches!(
            e,
            Refusal::TooFewEndpoints {
                needed: 2,
                offered: 1,
                ..
            }
        ),
        "{e}"
    );

    // Full.
    join(&store, &name("c"), &node(&store, "b", 2), 1).unwrap();
    let e = refusal(join(
        &store,
        &ClusterRef::Id(c.id.clone()),
        &node(&store, "z", 2),
        1,
    ));
    assert!(matches!(
        e,
        Refusal::ClusterFull {
            members: 2,
            max: 2,
            ..
        }
    ));
    assert_eq!(e.to_string(), "cluster c is full (2/2)");

    // Unknown cluster, by name and by id.
    let e = refusal(join(&store, &name("nope"), &a, 1));
    assert_eq!(e, Refusal::NoSuchCluster("nope".into()));
    let unknown = Id::from_bytes(&[1u8; 32]).unwrap();
    let e = refusal(join(&store, &ClusterRef::Id(unknown.clone()), &a, 1));
    assert_eq!(e, Refusal::NoSuchCluster(unknown.to_hex()));

    // Unregistered node.
    let ghost = NodeRecord {
        id: Id::from_bytes(&[2u8; 32]).unwrap(),
        ..a.clone()
    };
    assert!(matches!(
        refusal(join(&store, &name("c"), &ghost, 1)),
        Refusal::NoSuchNode(_)
    ));

    // None of this changed the cluster.
    let now = AdminStore::cluster(&store, &name("c")).unwrap().unwrap();
    assert_eq!(now.members.len(), 2);
}

pub(super) fn a_refusal_inside_a_batch_leaves_the_other_writes_alone<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let c = cluster(&store, "pair", 2, 1);
    let nodes: Vec<_> = (0..3).map(|i| node(&store, &format!("n{i}"), 1)).collect();
    let join = |cluster: ClusterRef, n: &NodeRecord| Write::Join {
        token: None,
        cluster,
        node: n.id.clone(),
        now_ms: 1,
    };
    let by_id = ClusterRef::Id(c.id.clone());
    let writes = vec![
        join(by_id.clone(), &nodes[0]),
        join(name("nope"), &nodes[1]),
        join(by_id.clone(), &nodes[1]),
        join(by_id.clone(), &nodes[2]),
        create_write("pair", 9, 1),
    ];
    let answers = runtime().block_on(store.apply(writes)).unwrap();
    assert!(matches!(&answers[0], Ok(Written::Joined(j)) if j.slot == 0));
    assert!(matches!(&answers[1], Err(Refusal::NoSuchCluster(_))));
    assert!(matches!(&answers[2], Ok(Written::Joined(j)) if j.slot == 1));
    assert!(matches!(&answers[3], Err(Refusal::ClusterFull { .. })));
    // A later write in the batch sees the earlier ones.
    assert!(matches!(&answers[4], Ok(Written::Cluster(c, false)) if c.members.len() == 2));
    let stored = AdminStore::cluster(&store, &by_id).unwrap().unwrap();
    assert_eq!(stored.members.len(), 2);
    assert_eq!(runtime().block_on(store.apply(Vec::new())).unwrap(), vec![]);
}

pub(super) fn concurrent_joins_never_overfill<S: Backend + 'static>(make: fn(IdSource) -> S) {
    let store = Arc::new(make(IdSource::from_os()));
    let c = cluster(&*store, "c", 5, 1);
    let nodes: Vec<_> = (0..20)
        .map(|i| node(&*store, &format!("n{i}"), 1))
        .collect();
    let answers = runtime().block_on(async {
        let tasks: Vec<_> = nodes
            .iter()
            .map(|n| {
                let store = Arc::clone(&store);
                let write = Write::Join {
                    token: None,
                    cluster: ClusterRef::Id(c.id.clone()),
                    node: n.id.clone(),
                    now_ms: 1,
                };
                tokio::spawn(async move { store.apply(vec![write]).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.extend(t.await.unwrap().unwrap());
        }
        answers
    });
    assert_eq!(joined_slots(&answers), vec![0, 1, 2, 3, 4]);
    let full = answers
        .iter()
        .filter(|a| matches!(a, Err(Refusal::ClusterFull { .. })))
        .count();
    assert_eq!(full, 15);
    let c = AdminStore::cluster(&*store, &name("c")).unwrap().unwrap();
    assert_eq!(c.members.len(), 5);
}

pub(super) fn concurrent_creates_of_one_name_make_one_cluster<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = Arc::new(make(IdSource::from_os()));
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                create(&*store, "same", 4 + i, 1)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    let id = &results[0].0.id;
    assert!(results.iter().all(|(c, _)| &c.id == id));
    assert_eq!(AdminStore::clusters(&*store).count(), 1);
}

pub(super) fn delete_if_keeps_nodes_frees_the_name_and_respects_the_condition<
    S: Backend + 'static,
>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    cluster(&store, "c", 2, 0);
    let a = node(&store, "a", 0);
    join(&store, &name("c"), &a, 1).unwrap();
    // The condition sees the cluster as it is now: one member.
    let kept = store
        .delete_cluster_if(&name("c"), &|c: &ClusterRecord| c.members.is_empty())
        .unwrap();
    assert_eq!(kept, None);
    assert!(AdminStore::cluster(&store, &name("c")).unwrap().is_some());
    let gone = store
        .delete_cluster_if(&name("c"), &|c: &ClusterRecord| c.members.len() == 1)
        .unwrap()
        .unwrap();
    assert_eq!(gone.members.len(), 1);
    assert_eq!(AdminStore::cluster(&store, &name("c")).unwrap(), None);
    assert_eq!(
        AdminStore::cluster(&store, &ClusterRef::Id(gone.id)).unwrap(),
        None
    );
    assert_eq!(
        store.delete_cluster_if(&name("c"), &|_| true).unwrap(),
        None
    );
    assert_eq!(AdminStore::node(&store, &a.id).unwrap(), Some(a));
    assert_eq!(AdminStore::nodes(&store).count(), 1);
    assert_eq!(AdminStore::clusters(&store).count(), 0);
    assert!(create(&store, "c", 2, 0).1);
}

pub(super) fn delete_node_refuses_a_member_and_removes_a_free_node<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let member = node(&store, "member", 1);
    let free = node(&store, "free", 1);
    cluster(&store, "c", 2, 1);
    join(&store, &name("c"), &member, 2).unwrap();
    assert_eq!(
        store.delete_node(&member.id).unwrap(),
        NodeDeletion::Member(vec!["c".into()])
    );
    assert!(AdminStore::node(&store, &member.id).unwrap().is_some());
    assert_eq!(
        store.delete_node(&free.id).unwrap(),
        NodeDeletion::Deleted(free.clone())
    );
    assert!(AdminStore::node(&store, &free.id).unwrap().is_none());
    assert_eq!(
        store.delete_node(&free.id).unwrap(),
        NodeDeletion::NoSuchNode
    );
    assert_eq!(store.counts().unwrap().nodes, 1);
}

pub(super) fn caps_refuse_new_clusters_and_nodes_but_not_known_ones<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let known = node(&store, "known", 1);
    cluster(&store, "old", 3, 1);
    store
        .set_caps(Caps {
            max_clusters: 2,
            max_nodes: 2,
        })
        .unwrap();
    // A batch counts what it created itself.
    let answers = runtime()
        .block_on(store.apply(vec![
            create_write("a", 3, 1),
            create_write("b", 3, 1),
            create_write("old", 3, 1),
        ]))
        .unwrap();
    assert!(matches!(answers[0], Ok(Written::Cluster(_, true))));
    assert_eq!(
        answers[1],
        Err(Refusal::RegistryFull {
            what: "clusters",
            max: 2
        })
    );
    // Finding an existing cluster is no creation.
    assert!(matches!(answers[2], Ok(Written::Cluster(_, false))));
    assert_eq!(
        answers[1].as_ref().unwrap_err().to_string(),
        "the registry holds its maximum of 2 clusters; ask its operator"
    );
    // Deleting a cluster makes room.
    store.delete_cluster_if(&name("a"), &|_| true).unwrap();
    assert!(create(&store, "b", 3, 1).1);
    // Nodes: one more fits, then only known nodes re-register.
    let second = node(&store, "second", 1);
    assert_eq!(
        refusal(register(&store, new_node("third", 1), 2)),
        Refusal::RegistryFull {
            what: "nodes",
            max: 2
        }
    );
    let mut again = new_node("known", 2);
    again.id = Some(known.id.clone());
    assert_eq!(
        registered(register(&store, again, 3)).1,
        RegistrationOutcome::Updated
    );
    // Joining is not capped; deleting a node makes room.
    join(&store, &name("b"), &second, 4).unwrap();
    assert!(matches!(
        store.delete_node(&known.id).unwrap(),
        NodeDeletion::Deleted(_)
    ));
    node(&store, "third", 1);
}

pub(super) fn snapshot_restores_into_an_empty_store_record_for_record<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let meta = named(&store);
    cluster(&store, "web", 4, 1);
    cluster(&store, "db", 2, 0);
    for n in ["a", "b"] {
        let n = node(&store, n, 1);
        join(&store, &name("web"), &n, 7).unwrap();
    }
    let snap = AdminStore::snapshot(&store).unwrap();
    assert_eq!(snap.verify(), Vec::<String>::new());
    assert_eq!(snap.registry_meta().unwrap(), Some(meta));
    assert_eq!((snap.node_count(), snap.cluster_count()), (2, 2));

    let copy = make(IdSource::from_os());
    copy.restore(&snap).unwrap();
    assert_eq!(AdminStore::snapshot(&copy).unwrap(), snap);
    assert_eq!(
        AdminStore::counts(&copy).unwrap(),
        AdminStore::counts(&store).unwrap()
    );
    // Into a store that holds data: refused, nothing changed.
    let e = copy.restore(&snap).unwrap_err();
    assert!(matches!(e, StorageError::NotEmpty { .. }), "{e}");
    assert_eq!(AdminStore::snapshot(&copy).unwrap(), snap);
    // A snapshot of a newer schema is refused.
    let mut newer = snap.clone();
    newer
        .trees
        .get_mut(&b"meta"[..])
        .unwrap()
        .insert(b"schema_version".to_vec(), 99u32.to_be_bytes().to_vec());
    let e = make(IdSource::from_os()).restore(&newer).unwrap_err();
    assert!(
        matches!(e, StorageError::SchemaTooNew { found: 99, .. }),
        "{e}"
    );
}

/// Sets the registry's facts of a test store, and returns them.
fn named(store: &dyn AdminStore) -> RegistryMeta {
    let meta = RegistryMeta {
        name: "reg".into(),
        id: Id::from_bytes(&[4u8; 32]).unwrap(),
        created_at_ms: 3,
    };
    store.set_registry_meta(&meta).unwrap();
    meta
}

/// Every tree of a view, read to the end.
fn read_view(view: &dyn super::StoreView) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for name in view.tree_names() {
        let entries = view
            .entries(&name)
            .collect::<Result<_, _>>()
            .expect("a view reads");
        snapshot.trees.insert(name, entries);
    }
    snapshot
}

pub(super) fn a_view_shows_the_store_as_it_was_when_it_opened<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let meta = named(&store);
    let web = cluster(&store, "web", 4, 1);
    cluster(&store, "db", 2, 0);
    let a = node(&store, "a", 1);
    let free = node(&store, "free", 1);
    join(&store, &name("web"), &a, 7).unwrap();
    let before = AdminStore::snapshot(&store).unwrap();

    let view = store.view().unwrap();
    // Every kind of change after it opened: a new cluster, a join, a deleted cluster, a
    // deleted node, new registry facts.
    cluster(&store, "new", 2, 0);
    let b = node(&store, "b", 1);
    join(&store, &ClusterRef::Id(web.id.clone()), &b, 8).unwrap();
    store.delete_cluster_if(&name("db"), &|_| true).unwrap();
    assert!(matches!(
        store.delete_node(&free.id).unwrap(),
        NodeDeletion::Deleted(_)
    ));
    store
        .set_registry_meta(&RegistryMeta {
            name: "renamed".into(),
            ..meta.clone()
        })
        .unwrap();

    assert_eq!(read_view(&*view), before);
    assert_eq!(view.registry_meta().unwrap(), Some(meta));
    assert_eq!(view.clusters().count(), 2);
    assert_eq!(
        view.nodes().collect::<Result<Vec<_>, _>>().unwrap(),
        before.nodes().collect::<Result<Vec<_>, _>>().unwrap()
    );
    drop(view);
    // A view opened now sees the changes.
    let after = store.view().unwrap();
    assert_eq!(read_view(&*after), AdminStore::snapshot(&store).unwrap());
}

pub(super) fn a_join_wakes_a_watcher_and_only_after_the_watch_began<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = Arc::new(make(IdSource::from_os()));
    let c = cluster(&*store, "c", 3, 1);
    let other = cluster(&*store, "other", 3, 1);
    let a = node(&*store, "a", 1);
    // A change before the watch began does not count.
    join(&*store, &name("c"), &a, 1).unwrap();
    let mut watch = store.watch_cluster(&c.id);
    assert!(!watch.has_changed().unwrap());
    let b = node(&*store, "b", 1);
    runtime().block_on(async {
        // A join to another cluster does not wake this one.
        let to_other = Write::Join {
            token: None,
            cluster: ClusterRef::Id(other.id.clone()),
            node: b.id.clone(),
            now_ms: 2,
        };
        store.apply(vec![to_other]).await.unwrap();
        assert!(!watch.has_changed().unwrap());
        let to_c = Write::Join {
            token: None,
            cluster: ClusterRef::Id(c.id.clone()),
            node: b.id.clone(),
            now_ms: 2,
        };
        let answers = store.apply(vec![to_c]).await.unwrap();
        assert!(matches!(&answers[0], Ok(Written::Joined(j)) if j.slot == 1));
        // Woken by the time the answer arrives: the waiter re-reads and sees the join.
        assert!(watch.has_changed().unwrap());
        watch.changed().await.unwrap();
        let view = store
            .read_cluster(ClusterRef::Id(c.id.clone()))
            .await
            .unwrap();
        assert_eq!(view.unwrap().nodes.len(), 2);
    });
    // Deleting the cluster wakes it too.
    store.delete_cluster_if(&name("c"), &|_| true).unwrap();
    assert!(watch.has_changed().unwrap());
}

pub(super) fn fresh_ids_are_unused_and_come_from_the_stores_source<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let (first, second) = (make(IdSource::seeded(5)), make(IdSource::seeded(5)));
    let rt = runtime();
    let a = rt.block_on(first.fresh_id()).unwrap();
    assert_eq!(a, rt.block_on(second.fresh_id()).unwrap());
    // Registered under the next id of the same source.
    let n = node(&first, "a", 0);
    let same_source = IdSource::seeded(5);
    assert_eq!(same_source.draw(), a);
    assert_eq!(n.id, same_source.draw());
}

pub(super) fn a_failed_store_refuses_reads_and_writes_from_then_on<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    let a = node(&store, "a", 1);
    cluster(&store, "c", 2, 1);
    assert!(!store.health().is_failed());
    assert!(store.health().fail("disk gone (test)"));
    let failed = |e: &StorageError| matches!(e, StorageError::Failed(r) if r.contains("disk gone"));
    assert!(failed(&store.node(&a.id).unwrap_err()));
    assert!(failed(&store.cluster(&name("c")).unwrap_err()));
    assert!(failed(&store.registry_meta().unwrap_err()));
    assert!(failed(&AdminStore::snapshot(&store).unwrap_err()));
    assert!(failed(&store.flush_blocking().unwrap_err()));
    assert!(failed(&store.delete_node(&a.id).unwrap_err()));
    assert!(matches!(
        register(&store, new_node("b", 1), 2),
        Err(StoreError::Storage(StorageError::Failed(_)))
    ));
    let rt = runtime();
    let read = rt.block_on(store.read_cluster(name("c")));
    assert!(failed(&read.unwrap_err()));
    let write = Write::RegisterNode {
        node: new_node("b", 1),
        now_ms: 2,
    };
    let answers = rt.block_on(store.apply(vec![write]));
    assert!(failed(&answers.unwrap_err()));
    assert!(failed(&rt.block_on(store.durable()).unwrap_err()));
}

// Admission (docs/protocol.md section 14): the rules of crate::model::rules through each
// backend's transactions.

const BINDING: [u8; 16] = [0x44; 16];

fn owner_secret() -> crate::model::admission::OwnerSecret {
    crate::model::admission::OwnerSecret::parse("abcdefghijklmnopqrstuvwxyz234567").unwrap()
}

fn token_secret(tid: &str) -> crate::model::admission::JoinTokenSecret {
    crate::model::admission::JoinTokenSecret::parse(&format!("{tid}.abcdefghijklmnopqrstuvwxyz"))
        .unwrap()
}

fn new_token(tid: &str, uses: Option<u32>, ttl_ms: u64) -> crate::model::NewToken {
    crate::model::NewToken {
        id: tid.into(),
        verifier: token_secret(tid).key().verifier().to_vec(),
        usages: crate::model::USAGE_JOIN,
        ttl_ms,
        uses,
    }
}

/// Creates the admission-controlled cluster `name` of `max` slots owned by
/// [`owner_secret`], whose first token is `first`.
fn owned_cluster(
    store: &dyn AdminStore,
    name: &str,
    max: u32,
    first: crate::model::NewToken,
) -> ClusterRecord {
    use crate::model::admission::{owner_proof_input, OwnerOp};
    let key = owner_secret().key();
    let input = owner_proof_input(
        &BINDING,
        OwnerOp::Create,
        name.as_bytes(),
        &key.verifier(),
        first.id.as_bytes(),
    );
    let write = Write::CreateCluster {
        cluster: NewCluster {
            admission: crate::model::NewAdmission {
                owner: Some((
                    key.verifier().to_vec(),
                    crate::model::Proof {
                        binding: BINDING.to_vec(),
                        signature: key.sign(&input).to_vec(),
                    },
                )),
                open: false,
                first_token: Some(first),
            },
            name: name.into(),
            attrs: 0,
            max_size: max,
            endpoint_count: 1,
        },
        now_ms: 1,
    };
    match store.apply_now(&write) {
        Ok(Written::Cluster(c, true)) => c,
        other => panic!("not a new cluster: {other:?}"),
    }
}

/// A join of `node` to `cluster` with a proof by the token `tid`.
fn token_join(cluster: &ClusterRecord, node: &NodeRecord, tid: &str, now_ms: u64) -> Write {
    use crate::model::admission::{join_proof_input, JoiningNode};
    let joining = JoiningNode {
        id: node.id.as_bytes(),
        comms_key: &node.comms_key,
        sig_key: &node.sig_key,
        endpoints: &node.endpoints,
    };
    let input = join_proof_input(&BINDING, cluster.id.as_bytes(), tid, &joining);
    Write::Join {
        cluster: ClusterRef::Id(cluster.id.clone()),
        node: node.id.clone(),
        token: Some(crate::model::TokenClaim {
            id: tid.into(),
            proof: crate::model::Proof {
                binding: BINDING.to_vec(),
                signature: token_secret(tid).key().sign(&input).to_vec(),
            },
        }),
        now_ms,
    }
}

/// An owner change of `cluster`, proved with [`owner_secret`].
fn owner_write(cluster: &ClusterRecord, change: crate::model::OwnerChange) -> Write {
    use crate::model::admission::{owner_proof_input, OwnerOp};
    use crate::model::OwnerChange;
    let (op, a, b): (OwnerOp, Vec<u8>, Vec<u8>) = match &change {
        OwnerChange::Mint(t) => (OwnerOp::Mint, t.id.clone().into_bytes(), t.verifier.clone()),
        OwnerChange::Revoke(tid) => (OwnerOp::Revoke, tid.clone().into_bytes(), vec![]),
        OwnerChange::Evict(node) => (OwnerOp::Evict, node.as_bytes().to_vec(), vec![]),
        OwnerChange::Close => (OwnerOp::Close, vec![], vec![]),
        OwnerChange::Delete => (OwnerOp::Delete, vec![], vec![]),
    };
    let input = owner_proof_input(&BINDING, op, cluster.id.as_bytes(), &a, &b);
    Write::Owner {
        cluster: ClusterRef::Id(cluster.id.clone()),
        proof: crate::model::Proof {
            binding: BINDING.to_vec(),
            signature: owner_secret().key().sign(&input).to_vec(),
        },
        change,
        now_ms: 2,
    }
}

pub(super) fn twenty_racers_with_a_five_use_token_on_ten_slots_five_join<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = Arc::new(make(IdSource::from_os()));
    let c = owned_cluster(&*store, "c", 10, new_token("five00", Some(5), 0));
    let nodes: Vec<_> = (0..20)
        .map(|i| node(&*store, &format!("n{i}"), 1))
        .collect();
    let answers = runtime().block_on(async {
        let tasks: Vec<_> = nodes
            .iter()
            .map(|n| {
                let store = Arc::clone(&store);
                let write = token_join(&c, n, "five00", 2);
                tokio::spawn(async move { store.apply(vec![write]).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.extend(t.await.unwrap().unwrap());
        }
        answers
    });
    assert_eq!(joined_slots(&answers), vec![0, 1, 2, 3, 4]);
    let used_up = answers
        .iter()
        .filter(|a| {
            matches!(
                a,
                Err(Refusal::TokenRefused {
                    problem: crate::model::TokenProblem::UsedUp,
                    ..
                })
            )
        })
        .count();
    assert_eq!(used_up, 15);
    let c = AdminStore::cluster(&*store, &name("c")).unwrap().unwrap();
    assert_eq!(c.members.len(), 5);
    assert_eq!(c.admission.tokens[0].uses_left, Some(0));
}

pub(super) fn admission_refuses_strangers_and_bad_tokens_and_changes_nothing<
    S: Backend + 'static,
>(
    make: fn(IdSource) -> S,
) {
    use crate::model::TokenProblem;
    let store = make(IdSource::from_os());
    let c = owned_cluster(&store, "c", 4, new_token("good00", None, 0));
    let a = node(&store, "a", 1);
    let before = AdminStore::cluster(&store, &name("c")).unwrap().unwrap();
    // No token: the answer for a cluster that does not exist.
    assert_eq!(
        refusal(join(&store, &name("c"), &a, 2)),
        Refusal::NoSuchCluster("c".into())
    );
    // A token the cluster does not have, and a proof from another session.
    assert!(matches!(
        refusal(store.apply_now(&token_join(&c, &a, "nope00", 2))),
        Refusal::BadProof { .. }
    ));
    let mut replayed = token_join(&c, &a, "good00", 2);
    if let Write::Join {
        token: Some(claim), ..
    } = &mut replayed
    {
        claim.proof.binding = vec![0x45; 16];
    }
    assert!(matches!(
        refusal(store.apply_now(&replayed)),
        Refusal::BadProof { .. }
    ));
    assert_eq!(
        AdminStore::cluster(&store, &name("c")).unwrap().unwrap(),
        before
    );
    // An expired token (1 ms, minted at 2).
    store
        .apply_now(&owner_write(
            &c,
            crate::model::OwnerChange::Mint(new_token("short0", None, 1)),
        ))
        .unwrap();
    assert!(matches!(
        refusal(store.apply_now(&token_join(&c, &a, "short0", 3))),
        Refusal::TokenRefused {
            problem: TokenProblem::Expired,
            ..
        }
    ));
    // The good token joins; the member rejoins without it.
    let joined = store.apply_now(&token_join(&c, &a, "good00", 3)).unwrap();
    assert!(matches!(joined, Written::Joined(ref j) if j.slot == 0));
    assert_eq!(join(&store, &name("c"), &a, 4).unwrap().slot, 0);
}

pub(super) fn owner_changes_need_the_owner_and_free_slots<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    use crate::model::OwnerChange;
    let store = make(IdSource::from_os());
    let c = owned_cluster(&store, "c", 2, new_token("good00", None, 0));
    let a = node(&store, "a", 1);
    let b = node(&store, "b", 1);
    let d = node(&store, "d", 1);
    store.apply_now(&token_join(&c, &a, "good00", 2)).unwrap();
    store.apply_now(&token_join(&c, &b, "good00", 2)).unwrap();
    // A proof by another key is refused as for a missing cluster.
    let mut forged = owner_write(&c, OwnerChange::Delete);
    if let Write::Owner { proof, .. } = &mut forged {
        proof.signature[0] ^= 1;
    }
    assert!(matches!(
        refusal(store.apply_now(&forged)),
        Refusal::BadProof { .. }
    ));
    // Evict a: slot 0 is free for d.
    let evicted = store
        .apply_now(&owner_write(&c, OwnerChange::Evict(a.id.clone())))
        .unwrap();
    assert!(matches!(evicted, Written::Changed(ref c) if c.members.len() == 1));
    let joined = store.apply_now(&token_join(&c, &d, "good00", 3)).unwrap();
    assert!(matches!(joined, Written::Joined(ref j) if j.slot == 0));
    // b leaves: slot 1 is free; close: a new member is refused.
    store
        .apply_now(&Write::Leave {
            cluster: name("c"),
            node: b.id.clone(),
        })
        .unwrap();
    store
        .apply_now(&owner_write(&c, OwnerChange::Close))
        .unwrap();
    assert_eq!(
        refusal(store.apply_now(&token_join(&c, &a, "good00", 4))),
        Refusal::ClusterClosed("c".into())
    );
    // Revoke, then a mint of the same id after the revoked one is dropped.
    store
        .apply_now(&owner_write(&c, OwnerChange::Revoke("good00".into())))
        .unwrap();
    store
        .apply_now(&owner_write(
            &c,
            OwnerChange::Mint(new_token("good00", None, 0)),
        ))
        .unwrap();
    assert!(matches!(
        refusal(store.apply_now(&owner_write(
            &c,
            OwnerChange::Mint(new_token("good00", None, 0))
        ))),
        Refusal::TokenIdTaken { .. }
    ));
    // Delete: the cluster is gone, its name free.
    store
        .apply_now(&owner_write(&c, OwnerChange::Delete))
        .unwrap();
    assert_eq!(AdminStore::cluster(&store, &name("c")).unwrap(), None);
    assert!(create(&store, "c", 2, 1).1);
}

pub(super) fn a_name_is_returned_only_to_its_creator<S: Backend + 'static>(
    make: fn(IdSource) -> S,
) {
    let store = make(IdSource::from_os());
    owned_cluster(&store, "owned", 2, new_token("good00", None, 0));
    cluster(&store, "open", 2, 1);
    assert_eq!(
        refusal(store.apply_now(&create_write("owned", 2, 1))),
        Refusal::NameTaken("owned".into())
    );
    assert!(!create(&store, "open", 2, 1).1);
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        conformance!($backend, $make, |_test: &str| true);
    };
    ($backend:ident, $make:expr, $available:expr) => {
        mod $backend {
            use super::*;

            fn make(ids: IdSource) -> impl Backend + 'static {
                ($make)(ids)
            }

            /// Whether the backend can run here (the etcd tests need etcd: they say loudly
            /// when they are skipped).
            fn available(test: &str) -> bool {
                ($available)(test)
            }

            conformance!(@tests
                register_new_node_gets_32_byte_id,
                reregister_same_keys_is_unchanged_or_updated,
                reregister_with_other_key_is_refused_and_changes_nothing,
                unknown_legacy_id_is_accepted,
                fresh_ids_avoid_used_ones_and_give_up_eventually,
                create_is_idempotent_by_name,
                join_assigns_slots_in_order_and_rejoin_keeps_slot,
                join_refusals,
                a_refusal_inside_a_batch_leaves_the_other_writes_alone,
                concurrent_joins_never_overfill,
                concurrent_creates_of_one_name_make_one_cluster,
                delete_if_keeps_nodes_frees_the_name_and_respects_the_condition,
                delete_node_refuses_a_member_and_removes_a_free_node,
                caps_refuse_new_clusters_and_nodes_but_not_known_ones,
                snapshot_restores_into_an_empty_store_record_for_record,
                a_view_shows_the_store_as_it_was_when_it_opened,
                a_join_wakes_a_watcher_and_only_after_the_watch_began,
                fresh_ids_are_unused_and_come_from_the_stores_source,
                a_failed_store_refuses_reads_and_writes_from_then_on,
                twenty_racers_with_a_five_use_token_on_ten_slots_five_join,
                admission_refuses_strangers_and_bad_tokens_and_changes_nothing,
                owner_changes_need_the_owner_and_free_slots,
                a_name_is_returned_only_to_its_creator,
            );
        }
    };
    (@tests $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                if available(stringify!($test)) {
                    super::$test(make);
                }
            }
        )*
    };
}

conformance!(sled, |ids| Store::temporary_with_ids(ids).unwrap());
conformance!(memory, MemoryStore::with_ids);
conformance!(
    etcd,
    crate::store::etcd::tests::store_on_shared_cluster,
    crate::store::etcd::tests::shared_cluster_running
);

/// One step of a random workload: indices into small pools of names and registered nodes,
/// so that writes collide (same names, same clusters, full clusters) often.
#[derive(Debug, Clone)]
enum Op {
    Register {
        name: u8,
        keys: u8,
        endpoints: u8,
        /// Re-register the n-th node registered so far (if any) instead of a new one.
        again: Option<u8>,
    },
    Create {
        name: u8,
        max_size: u32,
        endpoint_count: u32,
    },
    Join {
        cluster: u8,
        /// The n-th node registered so far (an unknown id if none).
        node: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4u8, 0..2u8, 0..3u8, proptest::option::of(0..6u8)).prop_map(
            |(name, keys, endpoints, again)| Op::Register {
                name,
                keys,
                endpoints,
                again
            }
        ),
        (0..3u8, 2..4u32, 0..3u32).prop_map(|(name, max_size, endpoint_count)| Op::Create {
            name,
            max_size,
            endpoint_count
        }),
        (0..3u8, 0..8u8).prop_map(|(cluster, node)| Op::Join { cluster, node }),
    ]
}

/// The write an op stands for, given the node ids registered so far.
fn write_of(op: &Op, registered: &[Id], now_ms: u64) -> Write {
    let pick = |n: u8| {
        registered
            .get(usize::from(n) % registered.len().max(1))
            .cloned()
    };
    match op {
        Op::Register {
            name,
            keys,
            endpoints,
            again,
        } => {
            let mut node = new_node(&format!("n{name}"), usize::from(*endpoints));
            node.sig_key = vec![*keys; 4];
            node.id = again.and_then(pick);
            Write::RegisterNode { node, now_ms }
        }
        Op::Create {
            name,
            max_size,
            endpoint_count,
        } => {
            let Write::CreateCluster { cluster, .. } =
                create_write(&format!("c{name}"), *max_size, *endpoint_count)
            else {
                unreachable!("create_write makes a CreateCluster")
            };
            Write::CreateCluster { cluster, now_ms }
        }
        Op::Join { cluster, node } => Write::Join {
            token: None,
            cluster: ClusterRef::Name(format!("c{cluster}")),
            node: pick(*node).unwrap_or_else(|| Id::from_bytes(&[0xee; 32]).unwrap()),
            now_ms,
        },
    }
}

/// Runs batches of ops through a store's session port; returns every answer and the final
/// snapshot.
fn run_workload(
    store: &dyn Backend,
    batches: &[Vec<Op>],
) -> (Vec<Result<Written, Refusal>>, Snapshot) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut registered = Vec::new();
    let mut answers = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let writes = batch
            .iter()
            .map(|op| write_of(op, &registered, i as u64))
            .collect();
        for answer in rt.block_on(store.apply(writes)).unwrap() {
            if let Ok(Written::Node(r)) = &answer {
                if !registered.contains(&r.node.id) {
                    registered.push(r.node.id.clone());
                }
            }
            answers.push(answer);
        }
    }
    (answers, AdminStore::snapshot(store).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The same writes, in the same batches, from the same id seed: the memory and sled
    /// backends give the same answers and end with the same records.
    #[test]
    fn memory_and_sled_agree_on_any_sequence_of_writes(
        batches in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..16),
        seed in any::<u64>(),
    ) {
        let memory = MemoryStore::with_ids(IdSource::seeded(seed));
        let sled = Store::temporary_with_ids(IdSource::seeded(seed)).unwrap();
        let (memory_answers, memory_snapshot) = run_workload(&memory, &batches);
        let (sled_answers, sled_snapshot) = run_workload(&sled, &batches);
        prop_assert_eq!(memory_answers, sled_answers);
        prop_assert_eq!(memory_snapshot.verify(), Vec::<String>::new());
        prop_assert_eq!(memory_snapshot, sled_snapshot);
    }
}

/// The slots that `answers` report joined, in order: what a race test compares.
pub(crate) fn joined_slots<'a, E: 'a>(
    answers: impl IntoIterator<Item = &'a Result<Written, E>>,
) -> Vec<u32> {
    let mut slots: Vec<u32> = answers
        .into_iter()
        .filter_map(|answer| match answer {
            Ok(Written::Joined(joined)) => Some(joined.slot),
            _ => None,
        })
        .collect();
    slots.sort_unstable();
    slots
}
