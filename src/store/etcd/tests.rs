//! Tests of what is particular to the etcd backend, on real 3-member etcd clusters (the
//! port's conformance suite runs on it too: `store/conformance.rs`).

use crate::store::conformance::joined_slots;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::testing::{CutProxy, EtcdCluster};
use super::*;
use crate::model::{NewCluster, NewNode, RegistrationOutcome};

/// One cluster for the conformance suite: each store gets its own prefix.
fn shared() -> Option<&'static EtcdCluster> {
    static SHARED: OnceLock<Option<EtcdCluster>> = OnceLock::new();
    SHARED
        .get_or_init(|| EtcdCluster::start_or_skip("the etcd store tests"))
        .as_ref()
}

/// Whether the shared cluster runs (false, after a loud SKIPPED line, without etcd).
pub(crate) fn shared_cluster_running(test: &str) -> bool {
    let running = shared().is_some();
    if !running {
        eprintln!("SKIPPED: etcd not installed: {test}");
    }
    running
}

/// A config for a fresh prefix on `cluster`.
fn fresh_prefix(cluster: &EtcdCluster) -> EtcdConfig {
    let mut config = EtcdConfig::new(
        cluster.endpoints(),
        format!("/test-{:016x}", rand::random::<u64>()),
    );
    config.request_timeout = Duration::from_secs(2);
    config
}

/// A store on a fresh prefix of the shared cluster.
pub(crate) fn store_on_shared_cluster(ids: IdSource) -> EtcdStore {
    let cluster = shared().expect("checked by shared_cluster_running");
    EtcdStore::open_with_ids(&fresh_prefix(cluster), ids).expect("open an etcd store")
}

fn new_node(name: &str) -> NewNode {
    NewNode {
        id: None,
        name: name.into(),
        attrs: 0,
        comms_key: format!("comms-{name}").into_bytes(),
        sig_key: format!("sig-{name}").into_bytes(),
        endpoints: vec!["127.0.0.1:1".into()],
    }
}

fn register(store: &EtcdStore, name: &str) -> Result<Written, StoreError> {
    store.apply_now(&Write::RegisterNode {
        node: new_node(name),
        now_ms: 1,
    })
}

fn create(store: &EtcdStore, name: &str, max_size: u32) -> ClusterRecord {
    match store.apply_now(&Write::CreateCluster {
        cluster: NewCluster {
            name: name.into(),
            attrs: 0,
            max_size,
            endpoint_count: 1,
            admission: Default::default(),
        },
        now_ms: 1,
    }) {
        Ok(Written::Cluster(cluster, _)) => cluster,
        other => panic!("not a cluster: {other:?}"),
    }
}

fn join(store: &EtcdStore, cluster: &ClusterRecord, node: &Id) -> Result<Written, StoreError> {
    store.apply_now(&Write::Join {
        cluster: ClusterRef::Id(cluster.id.clone()),
        node: node.clone(),
        token: None,
        now_ms: 2,
    })
}

fn node_id(written: Result<Written, StoreError>) -> Id {
    match written {
        Ok(Written::Node(r)) => r.node.id,
        other => panic!("not a registration: {other:?}"),
    }
}

#[test]
fn an_answer_lost_after_the_commit_is_learned_from_the_operation_key() {
    if !shared_cluster_running("an_answer_lost_after_the_commit_is_learned_from_the_operation_key")
    {
        return;
    }
    let store = store_on_shared_cluster(IdSource::from_os());
    let before = counters().ambiguous.load(Ordering::Relaxed);
    // etcd applies the registration, and the answer is lost on the way back.
    store
        .client()
        .faults()
        .lose_answer
        .store(1, Ordering::SeqCst);
    let written = register(&store, "a").unwrap();
    let Written::Node(registration) = written else {
        panic!("not a registration");
    };
    assert_eq!(registration.outcome, RegistrationOutcome::Created);
    assert!(counters().ambiguous.load(Ordering::Relaxed) > before);
    // Applied once: one node, the one answered.
    let nodes: Vec<NodeRecord> = store.nodes().collect::<Result<_, _>>().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].id, registration.node.id);
}

#[test]
fn a_request_lost_before_it_was_sent_is_fenced_and_applied_exactly_once() {
    if !shared_cluster_running(
        "a_request_lost_before_it_was_sent_is_fenced_and_applied_exactly_once",
    ) {
        return;
    }
    let store = store_on_shared_cluster(IdSource::from_os());
    store
        .client()
        .faults()
        .lose_request
        .store(1, Ordering::SeqCst);
    let id = node_id(register(&store, "a"));
    let nodes: Vec<NodeRecord> = store.nodes().collect::<Result<_, _>>().unwrap();
    assert_eq!(nodes.iter().map(|n| &n.id).collect::<Vec<_>>(), vec![&id]);
}

#[test]
fn a_fenced_transaction_never_applies_afterwards() {
    if !shared_cluster_running("a_fenced_transaction_never_applies_afterwards") {
        return;
    }
    let store = store_on_shared_cluster(IdSource::from_os());
    let inner = &store.inner;
    let op = inner.op_key();
    let target = inner.keys.key(Keys::META, b"fence-test");
    // The fence runs first (as after an ambiguous failure whose request is still in
    // flight): it finds no operation key and abandons the operation.
    assert!(matches!(
        store.block(inner.resolve(op.clone())).unwrap(),
        Commit::NotApplied
    ));
    // The original transaction arriving late then fails its operation-key compare.
    let request = TxnRequest {
        compare: vec![compare_revision(
            op.clone(),
            Vec::new(),
            compare::CompareTarget::Create,
            compare::CompareResult::Equal,
            0,
        )],
        success: vec![
            put_op(target.clone(), b"late".to_vec(), 0),
            put_op(op.clone(), OP_APPLIED.to_vec(), 0),
        ],
        failure: Vec::new(),
    };
    let answer = store.block(inner.client.txn(request)).unwrap();
    assert!(!answer.succeeded);
    assert_eq!(store.block(inner.client.get(&target)).unwrap(), None);
    // Resolving again still says it did not apply.
    assert!(matches!(
        store.block(inner.resolve(op)).unwrap(),
        Commit::NotApplied
    ));
}

#[test]
fn racing_joins_through_two_stores_fill_the_cluster_exactly() {
    if !shared_cluster_running("racing_joins_through_two_stores_fill_the_cluster_exactly") {
        return;
    }
    let cluster = shared().unwrap();
    let config = fresh_prefix(cluster);
    let stores = [
        Arc::new(EtcdStore::open(&config).unwrap()),
        Arc::new(EtcdStore::open(&config).unwrap()),
    ];
    let c = create(&stores[0], "race", 5);
    let nodes: Vec<Id> = (0..20)
        .map(|i| node_id(register(&stores[i % 2], &format!("n{i}"))))
        .collect();
    let threads: Vec<_> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            let store = Arc::clone(&stores[i % 2]);
            let c = c.clone();
            std::thread::spawn(move || join(&store, &c, &node))
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(joined_slots(&answers), vec![0, 1, 2, 3, 4]);
    let full = answers
        .iter()
        .filter(|a| {
            matches!(
                a,
                Err(StoreError::Refused(
                    crate::model::Refusal::ClusterFull { .. }
                ))
            )
        })
        .count();
    assert_eq!(full, 15, "{answers:?}");
}

#[test]
fn a_waiter_is_woken_by_a_join_through_another_store() {
    if !shared_cluster_running("a_waiter_is_woken_by_a_join_through_another_store") {
        return;
    }
    let cluster = shared().unwrap();
    let config = fresh_prefix(cluster);
    let (a, b) = (
        EtcdStore::open(&config).unwrap(),
        EtcdStore::open(&config).unwrap(),
    );
    let c = create(&a, "c", 3);
    let n = node_id(register(&b, "n"));
    let mut waiter = a.watch_cluster(&c.id);
    // Only what comes after the cluster's creation counts.
    std::thread::sleep(Duration::from_secs(1));
    waiter.borrow_and_update();
    join(&b, &c, &n).unwrap();
    wait_woken(&mut waiter, Duration::from_secs(10), "woken within 10 s");
    let view = a
        .cluster_view(&ClusterRef::Id(c.id.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(view.nodes.len(), 1);
}

#[test]
fn writes_and_watches_survive_the_loss_of_the_member_they_use() {
    let Some(mut cluster) =
        EtcdCluster::start_or_skip("writes_and_watches_survive_the_loss_of_the_member_they_use")
    else {
        return;
    };
    let config = fresh_prefix(&cluster);
    let (a, b) = (
        EtcdStore::open(&config).unwrap(),
        EtcdStore::open(&config).unwrap(),
    );
    let c = create(&a, "c", 8);
    let first = node_id(register(&b, "first"));
    let mut waiter = a.watch_cluster(&c.id);
    // Only what comes after the cluster's creation counts.
    std::thread::sleep(Duration::from_secs(1));
    waiter.borrow_and_update();
    // The member both stores' streams and requests go to first, and the leader too.
    let (used, _) = a.client().channel();
    cluster.kill(used);
    if let Some(leader) = cluster.leader() {
        if leader != used {
            cluster.kill(leader);
            cluster.restart(used);
        }
    }
    // A write through the survivors: retried on another member, applied once.
    join(&b, &c, &first).unwrap();
    let second = node_id(register(&b, "second"));
    join(&b, &c, &second).unwrap();
    // A's watch resumed on another member and saw the joins.
    wait_woken(&mut waiter, Duration::from_secs(15), "woken within 15 s");
    let view = a
        .cluster_view(&ClusterRef::Id(c.id.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(view.nodes.len(), 2);
    assert_eq!(a.counts().unwrap().nodes, 2);
}

#[test]
fn without_a_quorum_requests_are_unavailable_and_the_store_recovers() {
    let Some(mut cluster) = EtcdCluster::start_or_skip(
        "without_a_quorum_requests_are_unavailable_and_the_store_recovers",
    ) else {
        return;
    };
    let mut config = fresh_prefix(&cluster);
    config.request_timeout = Duration::from_millis(500);
    let store = EtcdStore::open(&config).unwrap();
    node_id(register(&store, "before"));
    cluster.pause(0);
    cluster.pause(1);
    let refused = register(&store, "during").unwrap_err();
    assert!(
        matches!(refused, StoreError::Storage(StorageError::Unavailable(_))),
        "{refused}"
    );
    assert!(store.health().unavailable().is_some());
    assert!(!store.health().is_failed());
    cluster.resume(0);
    cluster.resume(1);
    cluster.wait_ready();
    // Serves again, and the probe clears the state within a few seconds.
    node_id(register(&store, "after"));
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while store.health().unavailable().is_some() {
        assert!(
            std::time::Instant::now() < until,
            "still marked unavailable"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // "during" may or may not exist: its outcome was never acknowledged either way.
    let names: Vec<String> = store.nodes().map(|n| n.unwrap().name).collect();
    assert!(names.contains(&"before".to_string()) && names.contains(&"after".to_string()));
}

#[test]
fn a_wait_survives_the_store_losing_its_etcd_connections_and_sees_what_happened_meanwhile() {
    let Some(cluster) = EtcdCluster::start_or_skip(
        "a_wait_survives_the_store_losing_its_etcd_connections_and_sees_what_happened_meanwhile",
    ) else {
        return;
    };
    let proxies: Vec<CutProxy> = cluster
        .endpoints()
        .iter()
        .map(|e| CutProxy::start(e))
        .collect();
    let mut through_proxies = fresh_prefix(&cluster);
    through_proxies.endpoints = proxies.iter().map(CutProxy::endpoint).collect();
    through_proxies.request_timeout = Duration::from_millis(500);
    let mut direct = through_proxies.clone();
    direct.endpoints = cluster.endpoints();
    let a = EtcdStore::open(&through_proxies).unwrap();
    let b = EtcdStore::open(&direct).unwrap();
    let c = create(&b, "c", 2);
    let n = node_id(register(&b, "n"));
    let mut waiter = a.watch_cluster(&c.id);
    // The cluster's creation may still be on its way through A's watch: let it arrive, and
    // count only what comes after.
    std::thread::sleep(Duration::from_secs(1));
    waiter.borrow_and_update();
    // A loses every connection to etcd; the join happens through B meanwhile.
    for proxy in &proxies {
        proxy.cut();
    }
    join(&b, &c, &n).unwrap();
    let cut_off = a.node(&n).unwrap_err();
    assert!(matches!(cut_off, StorageError::Unavailable(_)), "{cut_off}");
    assert!(!waiter.has_changed().unwrap());
    for proxy in &proxies {
        proxy.restore();
    }
    // A's watch resumes from the last revision it saw + 1: the join is delivered.
    wait_woken(
        &mut waiter,
        Duration::from_secs(15),
        "woken within 15 s of the connections coming back",
    );
    let view = a
        .cluster_view(&ClusterRef::Id(c.id.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(view.nodes.len(), 1);
}

#[test]
fn registrations_go_on_through_a_leader_sigkill_and_each_applies_once() {
    let Some(mut cluster) = EtcdCluster::start_or_skip(
        "registrations_go_on_through_a_leader_sigkill_and_each_applies_once",
    ) else {
        return;
    };
    let store = EtcdStore::open(&fresh_prefix(&cluster)).unwrap();
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    for i in 0..60 {
        if i == 20 {
            let leader = cluster.leader().expect("a leader");
            cluster.kill(leader);
        }
        match register(&store, &format!("n{i}")) {
            Ok(Written::Node(r)) => acknowledged.push(r.node.id),
            Err(StoreError::Storage(StorageError::Unavailable(_))) => unavailable += 1,
            other => panic!("registration {i}: {other:?}"),
        }
    }
    // Retried on the survivors: most got through, and no acknowledged one is lost.
    assert!(
        acknowledged.len() >= 50,
        "{} acknowledged",
        acknowledged.len()
    );
    let stored: Vec<Id> = store.nodes().map(|n| n.unwrap().id).collect();
    for id in &acknowledged {
        assert_eq!(stored.iter().filter(|s| *s == id).count(), 1, "{id}");
    }
    // Nothing applied twice: beyond the acknowledged, at most the unanswered ones.
    assert!(stored.len() <= acknowledged.len() + unavailable);
}

#[test]
fn a_store_speaks_tls_to_etcd_with_a_client_certificate() {
    let test = "a_store_speaks_tls_to_etcd_with_a_client_certificate";
    if !super::testing::skip_without(test, "etcd", super::testing::etcd_installed()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = super::testing::make_test_certs(dir.path());
    if !super::testing::skip_without(test, "openssl", certs.is_some()) {
        return;
    }
    let certs = certs.unwrap();
    let cluster = EtcdCluster::start_with_tls(1, certs.clone());
    let mut config = EtcdConfig::new(cluster.tls_endpoints(), "/tls");
    config.tls = Some(EtcdTls {
        ca: Some(certs.ca.clone()),
        identity: Some(certs.client.clone()),
    });
    let store = EtcdStore::open(&config).unwrap();
    let id = node_id(register(&store, "over-tls"));
    assert!(store.node(&id).unwrap().is_some());
    // etcd requires a client certificate: without one nothing is read or written.
    let mut anonymous = config.clone();
    anonymous.tls = Some(EtcdTls {
        ca: Some(certs.ca),
        identity: None,
    });
    anonymous.request_timeout = Duration::from_millis(500);
    assert!(EtcdStore::open(&anonymous).is_err());
}

#[test]
fn with_etcd_authentication_on_a_store_logs_in_and_one_without_credentials_is_refused() {
    use super::pb::etcdserverpb::{
        auth_client::AuthClient, AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest,
    };
    let Some(cluster) = EtcdCluster::start_or_skip(
        "with_etcd_authentication_on_a_store_logs_in_and_one_without_credentials_is_refused",
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut auth = AuthClient::connect(cluster.endpoint(0)).await.unwrap();
        auth.role_add(AuthRoleAddRequest {
            name: "root".into(),
        })
        .await
        .unwrap();
        auth.user_add(AuthUserAddRequest {
            name: "root".into(),
            password: "s3cret-for-the-test".into(),
            options: None,
        })
        .await
        .unwrap();
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .unwrap();
        auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret-for-the-test\n").unwrap();
    let mut config = fresh_prefix(&cluster);
    config.user = Some(EtcdUser {
        name: "root".into(),
        password_file,
    });
    let store = EtcdStore::open(&config).unwrap();
    let id = node_id(register(&store, "authenticated"));
    assert!(store.node(&id).unwrap().is_some());
    let mut anonymous = config.clone();
    anonymous.user = None;
    let refused = EtcdStore::open(&anonymous).unwrap_err();
    assert!(matches!(refused, StorageError::Backend(_)), "{refused}");
}

/// Blocks until `waiter` sees a change, at most `within`; fails the test saying `what`.
fn wait_woken(waiter: &mut tokio::sync::watch::Receiver<()>, within: Duration, what: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(async { tokio::time::timeout(within, waiter.changed()).await })
        .expect(what)
        .unwrap();
}
