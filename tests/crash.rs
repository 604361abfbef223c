//! Crash consistency: many clients register, create and join against a real `xlreg serve`
//! while it is killed with SIGKILL at random moments, round after round on the same data
//! directory. After every crash the data directory must hold every change whose reply a
//! client received, pass `Store::verify` (nothing half-written: every record decodes, the name
//! index and the clusters agree, every member is a registered node), and have no cluster over
//! its maximum. While running, a create of an existing name must return the ID acknowledged
//! before, and a member rejoining must get its acknowledged slot back.
//!
//! The kill moments and the workload are drawn from a seed, printed at the start: by default
//! the fixed [`DEFAULT_SEED`], so CI runs the same rounds every time; set `XLREG_CRASH_SEED`
//! to a number to replay another run, or to `random` for a fresh seed from the clock (thread
//! scheduling is not replayed either way). `XLREG_CRASH_ROUNDS` sets the number of crashes
//! (default 16).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{key_pair, Server};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use xlreg::client::{Client, ClientError};
use xlreg::id::Id;
use xlreg::node::NodeIdentity;
use xlreg::proto::ErrCode;
use xlreg::regcred::RegCred;
use xlreg::store::{ClusterRef, Store};

/// Concurrent clients per round.
const WORKERS: usize = 16;
/// Sessions each client runs at most per round (the crash usually ends them sooner).
const SESSIONS_PER_WORKER: usize = 40;
/// Key pairs the nodes share (a node is its name and ID; keys may repeat across nodes).
const KEY_PAIRS: usize = 6;
/// New clusters per round; clients join clusters of every round so far.
const CLUSTERS_PER_ROUND: usize = 5;
/// How long a client waits for the registry before giving up on a session.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The seed of a run without `XLREG_CRASH_SEED`.
const DEFAULT_SEED: u64 = 0x00c0_ffee_d15c_0001;

/// The seed `XLREG_CRASH_SEED` asks for: unset, the fixed default; `random`, one from the
/// clock; otherwise the number it holds.
fn crash_seed(setting: Option<&str>) -> u64 {
    common::seed_setting("XLREG_CRASH_SEED", setting, DEFAULT_SEED)
}

#[test]
fn the_crash_seed_is_fixed_unless_the_environment_says_otherwise() {
    assert_eq!(crash_seed(None), DEFAULT_SEED);
    assert_eq!(crash_seed(Some("")), DEFAULT_SEED);
    assert_eq!(crash_seed(Some("42")), 42);
    assert_ne!(crash_seed(Some("random")), DEFAULT_SEED);
}

/// A node some registry acknowledged.
#[derive(Debug, Clone)]
struct AckedNode {
    keys: usize,
    name: String,
    endpoints: usize,
}

/// Everything a client was told, i.e. everything that must survive any crash.
#[derive(Debug, Default)]
struct Acked {
    nodes: HashMap<Id, AckedNode>,
    /// Cluster name -> (ID, maximum size).
    clusters: HashMap<String, (Id, u32)>,
    /// (cluster ID, node ID) -> slot.
    joins: HashMap<(Id, Id), u32>,
}

type Shared = Arc<Mutex<Acked>>;

fn cluster_name(round: usize, k: usize) -> String {
    format!("r{round}-c{k}")
}

/// The size every create of a cluster asks for (always the same for one name).
fn cluster_size(round: usize, k: usize) -> u32 {
    2 + ((round * 7 + k * 5) % 14) as u32
}

fn identity(node: &AckedNode, id: Option<Id>) -> NodeIdentity {
    let (comms, sig) = key_pair(node.keys);
    NodeIdentity {
        name: node.name.clone(),
        endpoints: (0..node.endpoints)
            .map(|i| format!("127.0.0.1:{}", 30_000 + i))
            .collect(),
        id,
        comms,
        sig,
    }
}

/// Ends the worker's round if the registry is gone; any other failure is a bug.
fn expect_crash(error: ClientError, what: &str) {
    assert!(
        error.is_retryable(),
        "{what} failed with a non-retryable error: {error}"
    );
}

/// One client's sessions for a round, until the registry dies or the sessions run out.
async fn worker(round: usize, worker: usize, seed: u64, regcred: RegCred, acked: Shared) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((round as u64) << 32) ^ worker as u64);
    for session in 0..SESSIONS_PER_WORKER {
        let mut client = match Client::connect(&regcred, CLIENT_TIMEOUT).await {
            Ok(client) => client,
            Err(error) => return expect_crash(error, "connect"),
        };
        // A known node rejoining a cluster it was acknowledged in, or a new node.
        let known = {
            let acked = acked.lock().unwrap();
            let joins: Vec<_> = acked.joins.iter().collect();
            if !joins.is_empty() && rng.random_bool(0.3) {
                let ((cluster, node), slot) = joins[rng.random_range(0..joins.len())];
                let name = acked
                    .clusters
                    .iter()
                    .find(|(_, (id, _))| id == cluster)
                    .map(|(name, _)| name.clone())
                    .expect("an acknowledged join names an acknowledged cluster");
                Some((node.clone(), acked.nodes[node].clone(), name, *slot))
            } else {
                None
            }
        };
        let (node, node_id, target, expected_slot) = match known {
            Some((id, node, cluster, slot)) => (node, Some(id), cluster, Some(slot)),
            None => {
                let node = AckedNode {
                    keys: rng.random_range(0..KEY_PAIRS),
                    name: format!("n{round}-{worker}-{session}"),
                    endpoints: rng.random_range(1..=2),
                };
                let k = rng.random_range(0..CLUSTERS_PER_ROUND);
                let r = rng.random_range(0..=round);
                (node, None, cluster_name(r, k), None)
            }
        };
        let id = match client.register(&identity(&node, node_id.clone())).await {
            Ok(id) => id,
            Err(error) => return expect_crash(error, "register"),
        };
        if let Some(known) = &node_id {
            assert_eq!(&id, known, "a registered node came back with another ID");
        }
        acked.lock().unwrap().nodes.insert(id.clone(), node.clone());

        // Create (or find) the cluster: its ID must never change once acknowledged.
        let (round_of, k) = parse_cluster_name(&target);
        let size = cluster_size(round_of, k);
        let info = match client.create(&target, size, 1).await {
            Ok(info) => info,
            Err(error) => return expect_crash(error, "create"),
        };
        {
            let mut acked = acked.lock().unwrap();
            let (known_id, known_size) = acked
                .clusters
                .entry(target.clone())
                .or_insert((info.id.clone(), info.max_size));
            assert_eq!(
                (&info.id, info.max_size),
                (&*known_id, *known_size),
                "cluster {target} changed after a crash"
            );
        }

        match client.join(Some(&ClusterRef::Name(target.clone()))).await {
            Ok((joined, slot)) => {
                assert_eq!(joined.id, info.id);
                assert!(joined.size <= joined.max_size, "{target} reported overfull");
                if let Some(expected) = expected_slot {
                    assert_eq!(
                        slot, expected,
                        "{} rejoined {target} in another slot",
                        node.name
                    );
                }
                let mut acked = acked.lock().unwrap();
                let previous = acked.joins.insert((info.id.clone(), id.clone()), slot);
                assert!(previous.is_none_or(|p| p == slot));
            }
            Err(ClientError::Refused {
                code: Some(ErrCode::ClusterFull),
                ..
            }) => {}
            Err(error) => return expect_crash(error, "join"),
        }
        if let Err(error) = client.bye().await {
            return expect_crash(error, "bye");
        }
    }
}

fn parse_cluster_name(name: &str) -> (usize, usize) {
    let (round, k) = name
        .strip_prefix('r')
        .and_then(|rest| rest.split_once("-c"))
        .expect("a cluster name of this test");
    (round.parse().unwrap(), k.parse().unwrap())
}

/// Checks the dead registry's data directory against everything acknowledged so far.
fn check_after_crash(dir: &Path, acked: &Acked, round: usize) {
    let store = Store::open(dir).expect("the data directory opens after a crash");
    let problems = store.verify().unwrap();
    assert!(
        problems.is_empty(),
        "round {round}: verify found {problems:#?}"
    );
    for (id, node) in &acked.nodes {
        let stored = store.node(id).unwrap();
        let stored = stored.unwrap_or_else(|| {
            panic!(
                "round {round}: acknowledged node {} ({id}) is lost",
                node.name
            )
        });
        assert_eq!(stored.name, node.name);
    }
    for (name, (id, max_size)) in &acked.clusters {
        let stored = store.cluster(&ClusterRef::Name(name.clone())).unwrap();
        let stored =
            stored.unwrap_or_else(|| panic!("round {round}: acknowledged cluster {name} is lost"));
        assert_eq!((&stored.id, stored.max_size), (id, *max_size), "{name}");
    }
    for ((cluster, node), slot) in &acked.joins {
        let stored = store
            .cluster(&ClusterRef::Id(cluster.clone()))
            .unwrap()
            .unwrap();
        let member = stored.member_by_node(node).unwrap_or_else(|| {
            panic!(
                "round {round}: acknowledged join of {} to {} is lost",
                acked.nodes[node].name, stored.name
            )
        });
        assert_eq!(member.slot, *slot, "{} in {}", member.name, stored.name);
    }
    for cluster in store.clusters() {
        let cluster = cluster.unwrap();
        assert!(
            cluster.member_count() <= cluster.max_size,
            "{} is over its maximum",
            cluster.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    let seed = crash_seed(std::env::var("XLREG_CRASH_SEED").ok().as_deref());
    let rounds: usize = std::env::var("XLREG_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    println!("crash test seed {seed} (replay with XLREG_CRASH_SEED={seed})");
    // Make the shared keys before the clock starts.
    for keys in 0..KEY_PAIRS {
        key_pair(keys);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let acked: Shared = Arc::default();

    for round in 0..rounds {
        let server = Server::start(&dir, &[]);
        let kill_after = Duration::from_millis(rng.random_range(150..1500));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    round,
                    w,
                    seed,
                    server.regcred.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        server.kill();
        for worker in workers {
            worker.await.expect("a client task failed");
        }
        let acked = acked.lock().unwrap();
        check_after_crash(&dir, &acked, round);
        println!(
            "round {round}: killed after {kill_after:?}; {} nodes, {} clusters, {} joins acknowledged so far",
            acked.nodes.len(),
            acked.clusters.len(),
            acked.joins.len()
        );
    }

    // Finally, through the network: a restarted registry lists every acknowledged member.
    let server = Server::start(&dir, &[]);
    let mut client = server.client().await;
    client
        .register(&common::node(0, "checker", 1))
        .await
        .unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        !acked.joins.is_empty(),
        "no join was acknowledged: the test proved nothing"
    );
    for (name, (id, _)) in &acked.clusters {
        let view = client
            .get_cluster(Some(&ClusterRef::Id(id.clone())), None, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(&view.cluster.name, name);
        for ((cluster, node), slot) in &acked.joins {
            if cluster == id {
                assert!(
                    view.members
                        .iter()
                        .any(|m| &m.id == node && m.slot == *slot),
                    "{name} does not list {} at slot {slot}",
                    acked.nodes[node].name
                );
            }
        }
    }
    client.bye().await.unwrap();
    assert_eq!(server.stop(), Some(0));
}
