//! Races against a real `xlreg serve`: many clients released at once (a barrier after their
//! registration) for the last slots of many clusters, the same member joining twice at
//! once, and many creates of one name. The registry must never overfill a cluster, must
//! give exactly as many slots as were free, and must make exactly one cluster per name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{node, store_contents, Server};
use tokio::sync::Barrier;
use xlreg::client::{Client, ClientError, ClusterInfo};
use xlreg::id::Id;
use xlreg::node::NodeIdentity;
use xlreg::proto::ErrCode;
use xlreg::store::ClusterRef;

/// Key pairs shared by the nodes of these tests.
const KEY_PAIRS: usize = 4;

fn by_name(name: &str) -> ClusterRef {
    ClusterRef::Name(name.to_string())
}

/// Connects and registers `identity`, then waits at `barrier` with every other racer.
async fn registered_at_barrier(
    server_regcred: &xlreg::regcred::RegCred,
    identity: &NodeIdentity,
    barrier: &Barrier,
) -> (Client, Id) {
    let mut client = Client::connect(server_regcred, Duration::from_secs(60))
        .await
        .expect("connect");
    let id = client.register(identity).await.expect("register");
    barrier.wait().await;
    (client, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_slots_of_many_clusters_go_to_exactly_as_many_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);
    const FREE: u32 = 2;
    const RACERS_PER_CLUSTER: usize = 8;
    let sizes: Vec<u32> = vec![3, 4, 5, 6, 8, 12];

    // Fill every cluster but its last two slots.
    for (k, &size) in sizes.iter().enumerate() {
        let name = format!("race{k}");
        for i in 0..size - FREE {
            let mut client = server.client().await;
            client
                .register(&node(i as usize % KEY_PAIRS, &format!("early{k}-{i}"), 1))
                .await
                .unwrap();
            client.create(&name, size, 1).await.unwrap();
            let (_, slot) = client.join(Some(&by_name(&name))).await.unwrap();
            assert_eq!(slot, i);
            client.bye().await.unwrap();
        }
    }

    let racers = sizes.len() * RACERS_PER_CLUSTER;
    let barrier = Arc::new(Barrier::new(racers));
    let mut tasks = Vec::new();
    for (k, _) in sizes.iter().enumerate() {
        for j in 0..RACERS_PER_CLUSTER {
            let regcred = server.regcred.clone();
            let barrier = barrier.clone();
            let identity = node(j % KEY_PAIRS, &format!("racer{k}-{j}"), 1);
            tasks.push(tokio::spawn(async move {
                let (mut client, _) = registered_at_barrier(&regcred, &identity, &barrier).await;
                let result = client.join(Some(&by_name(&format!("race{k}")))).await;
                (k, result)
            }));
        }
    }
    let mut slots: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    let mut refused: BTreeMap<usize, usize> = BTreeMap::new();
    for task in tasks {
        let (k, result) = task.await.unwrap();
        match result {
            Ok((cluster, slot)) => {
                assert!(cluster.size <= cluster.max_size);
                slots.entry(k).or_default().push(slot);
            }
            Err(ClientError::Refused {
                code: Some(ErrCode::ClusterFull),
                description,
                ..
            }) => {
                let size = sizes[k];
                assert_eq!(
                    description,
                    format!("cluster race{k} is full ({size}/{size})")
                );
                *refused.entry(k).or_default() += 1;
            }
            Err(other) => panic!("race{k}: unexpected failure {other}"),
        }
    }
    for (k, &size) in sizes.iter().enumerate() {
        let mut won = slots.remove(&k).unwrap_or_default();
        won.sort_unstable();
        assert_eq!(won, vec![size - 2, size - 1], "race{k}: slots won");
        assert_eq!(
            refused.get(&k).copied().unwrap_or(0),
            RACERS_PER_CLUSTER - FREE as usize,
            "race{k}: refusals"
        );
    }

    // What a member sees, and what is on disk.
    let mut client = server.client().await;
    client.register(&node(0, "observer", 1)).await.unwrap();
    for (k, &size) in sizes.iter().enumerate() {
        let view = client
            .get_cluster(Some(&by_name(&format!("race{k}"))), None, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(view.cluster.size, size);
        assert_eq!(view.members.len() as u32, size);
        assert!(view.is_complete());
    }
    client.bye().await.unwrap();
    assert_eq!(server.stop(), Some(0));
    let contents = store_contents(&dir);
    for (k, &size) in sizes.iter().enumerate() {
        let cluster = contents
            .clusters
            .iter()
            .find(|c| c.name == format!("race{k}"))
            .unwrap();
        assert_eq!(cluster.members.len() as u32, size);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_member_joining_twice_at_once_holds_one_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);

    // Four known nodes, each joining "twins" (4 slots) from two sessions at once.
    let mut client = server.client().await;
    client.register(&node(0, "creator", 1)).await.unwrap();
    client.create("twins", 4, 1).await.unwrap();
    client.create("pair", 2, 1).await.unwrap();
    client.bye().await.unwrap();
    let mut members = Vec::new();
    for i in 0..4 {
        let mut identity = node(i, &format!("twin{i}"), 1);
        let mut client = server.client().await;
        identity.id = Some(client.register(&identity).await.unwrap());
        client.bye().await.unwrap();
        members.push(identity);
    }
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for identity in members.iter().chain(members.iter()) {
        let (regcred, barrier, identity) =
            (server.regcred.clone(), barrier.clone(), identity.clone());
        tasks.push(tokio::spawn(async move {
            let (mut client, id) = registered_at_barrier(&regcred, &identity, &barrier).await;
            let (_, slot) = client.join(Some(&by_name("twins"))).await.unwrap();
            (id, slot)
        }));
    }
    let mut slot_of: BTreeMap<Id, BTreeSet<u32>> = BTreeMap::new();
    for task in tasks {
        let (id, slot) = task.await.unwrap();
        slot_of.entry(id).or_default().insert(slot);
    }
    assert_eq!(slot_of.len(), 4);
    let mut all: Vec<u32> = Vec::new();
    for (id, slots) in &slot_of {
        assert_eq!(slots.len(), 1, "node {id} got two slots: {slots:?}");
        all.extend(slots);
    }
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3]);

    // One node twice and two others, for two slots: the node holds one slot, and exactly
    // one of the others gets the second.
    let barrier = Arc::new(Barrier::new(4));
    let racers = [
        members[0].clone(),
        members[0].clone(),
        members[1].clone(),
        members[2].clone(),
    ];
    let mut tasks = Vec::new();
    for identity in racers {
        let (regcred, barrier) = (server.regcred.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let (mut client, id) = registered_at_barrier(&regcred, &identity, &barrier).await;
            (id, client.join(Some(&by_name("pair"))).await)
        }));
    }
    let mut winners: BTreeMap<Id, BTreeSet<u32>> = BTreeMap::new();
    let mut full = 0;
    for task in tasks {
        match task.await.unwrap() {
            (id, Ok((_, slot))) => {
                winners.entry(id).or_default().insert(slot);
            }
            (
                _,
                Err(ClientError::Refused {
                    code, description, ..
                }),
            ) => {
                assert_eq!(code, Some(ErrCode::ClusterFull), "{description}");
                assert_eq!(description, "cluster pair is full (2/2)");
                full += 1;
            }
            (_, Err(other)) => panic!("unexpected failure {other}"),
        }
    }
    // Either the twin got in (both its sessions succeed, one slot) with one other node, or
    // the two others took both slots first and the twin was refused twice.
    let twin = members[0].id.clone().unwrap();
    let slots_held: usize = winners.values().map(BTreeSet::len).sum();
    assert_eq!(slots_held, 2, "{winners:?}");
    assert!(winners.values().all(|s| s.len() == 1), "{winners:?}");
    let expected_full = if winners.contains_key(&twin) { 1 } else { 2 };
    assert_eq!(full, expected_full, "{winners:?}");

    assert_eq!(server.stop(), Some(0));
    let contents = store_contents(&dir);
    for (name, size) in [("twins", 4), ("pair", 2)] {
        let cluster = contents.clusters.iter().find(|c| c.name == name).unwrap();
        assert_eq!(cluster.members.len(), size, "{name}");
        let nodes: BTreeSet<_> = cluster.members.iter().map(|m| &m.node_id).collect();
        assert_eq!(nodes.len(), size, "{name}: a node holds two slots");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_of_one_name_from_many_clients_make_one_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);
    const CLIENTS: usize = 24;

    for name in ["shared", "again", "third"] {
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let (regcred, barrier) = (server.regcred.clone(), barrier.clone());
            let identity = node(i % KEY_PAIRS, &format!("{name}{i}"), 1);
            tasks.push(tokio::spawn(async move {
                let (mut client, _) = registered_at_barrier(&regcred, &identity, &barrier).await;
                // Everyone asks for a different size: only the winner's is used.
                let info = client.create(name, 2 + i as u32, 1).await.unwrap();
                let joined = client.join(Some(&ClusterRef::Id(info.id.clone()))).await;
                (info, joined)
            }));
        }
        let mut infos: Vec<ClusterInfo> = Vec::new();
        let mut joined = 0;
        let mut full = 0;
        for task in tasks {
            let (info, result) = task.await.unwrap();
            match result {
                Ok(_) => joined += 1,
                Err(ClientError::Refused {
                    code: Some(ErrCode::ClusterFull),
                    ..
                }) => full += 1,
                Err(other) => panic!("{name}: unexpected failure {other}"),
            }
            infos.push(info);
        }
        let first = &infos[0];
        assert!(
            infos
                .iter()
                .all(|i| i.id == first.id && i.max_size == first.max_size),
            "{name}: clients were told of different clusters"
        );
        let max = first.max_size as usize;
        assert_eq!(joined, max.min(CLIENTS), "{name}: joins");
        assert_eq!(full, CLIENTS - max.min(CLIENTS), "{name}: refusals");
    }

    assert_eq!(server.stop(), Some(0));
    let contents = store_contents(&dir);
    let mut names: Vec<_> = contents.clusters.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["again", "shared", "third"]);
}
