//! The registry keeps everything across restarts, and concurrent joins never overfill a
//! cluster, before or after a restart.

mod common;

use std::time::Duration;

use common::{node, xlreg, Server};
use xlreg::client::ClientError;
use xlreg::proto::ErrCode;
use xlreg::store::{ClusterRef, Store};

fn name(text: &str) -> ClusterRef {
    ClusterRef::Name(text.to_string())
}

#[tokio::test]
async fn a_restart_keeps_identity_nodes_clusters_and_memberships() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--name", "reg-under-test"]);
    let first_cred = server.regcred.clone();
    let mut ids = Vec::new();
    for i in 0..2 {
        let mut client = server.client().await;
        ids.push(
            client
                .register(&node(i, &format!("m{i}"), 1))
                .await
                .unwrap(),
        );
        client.create("kept", 3, 1).await.unwrap();
        client.join(None).await.unwrap();
        client.bye().await.unwrap();
    }
    assert_eq!(server.stop(), Some(0));

    let server = Server::start(&data, &[]);
    // Same registry: same ID, name and keys (so old regCred files stay valid).
    assert_eq!(server.regcred.id, first_cred.id);
    assert_eq!(server.regcred.name, "reg-under-test");
    assert_eq!(server.regcred.comms_key, first_cred.comms_key);
    let mut client = server.client().await;
    let mut returning = node(1, "m1", 1);
    returning.id = Some(ids[1].clone());
    assert_eq!(client.register(&returning).await.unwrap(), ids[1]);
    // A member that restarts rejoins into its own slot.
    let (cluster, slot) = client.join(Some(&name("kept"))).await.unwrap();
    assert_eq!((slot, cluster.size, cluster.max_size), (1, 2, 3));
    let view = client
        .get_cluster(None, None, Duration::ZERO)
        .await
        .unwrap();
    let listed: Vec<_> = view.members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(listed, ids);
    client.bye().await.unwrap();
    assert_eq!(server.stop(), Some(0));

    let store = Store::open(&data).unwrap();
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    let counts = store.counts().unwrap();
    assert_eq!((counts.nodes, counts.clusters, counts.members), (2, 1, 2));
}

async fn join_concurrently(
    server: &Server,
    cluster: &str,
    first_key: usize,
    count: usize,
) -> (usize, usize) {
    let mut tasks = Vec::new();
    for i in first_key..first_key + count {
        let regcred = server.regcred.clone();
        let cluster = cluster.to_string();
        let identity = node(i, &format!("racer{i}"), 1);
        tasks.push(tokio::spawn(async move {
            let mut client =
                xlreg::client::Client::connect(&regcred, xlreg::client::DEFAULT_TIMEOUT)
                    .await
                    .unwrap();
            client.register(&identity).await.unwrap();
            client.join(Some(&ClusterRef::Name(cluster))).await
        }));
    }
    let (mut joined, mut full) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => joined += 1,
            Err(ClientError::Refused {
                code: Some(ErrCode::ClusterFull),
                description,
                ..
            }) => {
                assert!(description.ends_with("is full (5/5)"), "{description}");
                full += 1;
            }
            Err(other) => panic!("unexpected join result: {other}"),
        }
    }
    (joined, full)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_joins_fill_five_slots_also_after_a_restart() {
    // Make the keys first so the joins really race.
    let keys: Vec<_> = (0..25).map(common::key_pair).collect();
    drop(keys);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let mut creator = server.client().await;
    creator.register(&node(30, "creator", 1)).await.unwrap();
    creator.create("five", 5, 1).await.unwrap();
    creator.bye().await.unwrap();

    assert_eq!(join_concurrently(&server, "five", 0, 20).await, (5, 15));
    server.kill();

    let server = Server::start(&data, &[]);
    // After a crash and restart, the cluster is still exactly full.
    assert_eq!(join_concurrently(&server, "five", 20, 5).await, (0, 5));
    let mut client = server.client().await;
    client.register(&node(30, "creator", 1)).await.unwrap();
    let view = client
        .get_cluster(Some(&name("five")), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.members.len(), 5);
    assert!(view.members.iter().all(|m| m.name.starts_with("racer")));
    drop(server);
    let store = Store::open(&data).unwrap();
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn a_second_server_on_the_same_data_dir_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &[]);
    let output = xlreg(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    let stderr = common::stderr(&output);
    assert!(
        stderr.contains("is in use by another xlreg process"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
}
