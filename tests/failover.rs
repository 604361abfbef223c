//! Clients find every server: a regCred.dat listing several endpoints, tried in a shuffled
//! order, the next one dialled when one is unreachable, and a session cut short finished on
//! the next endpoint (docs/ha.md). Real `xlreg serve` processes on loopback; the "server that
//! closes mid-session" is a real relay in front of the real registry that drops the
//! connection right after the registry answered a Join, so the join is applied and its reply
//! is lost: the ambiguous case a failover must survive without applying anything twice.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{init_node, stderr, stdout, xlreg, Server};
use xlreg::client::{Client, ClientError, EndpointOrder, RegistryKeys, DEFAULT_TIMEOUT};
use xlreg::regcred::RegCred;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An endpoint where nothing listens: a port bound and released again.
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// The server's regCred.dat with its endpoints replaced by `endpoints`, written to `path`.
fn regcred_listing(server: &Server, endpoints: &[String], path: &Path) -> RegCred {
    let mut cred = server.regcred.clone();
    cred.endpoints = endpoints.to_vec();
    cred.write(path).unwrap();
    cred
}

#[tokio::test]
async fn a_dead_first_endpoint_hands_over_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let dead = dead_endpoint();
    let alive = server.endpoint();
    let keys = RegistryKeys::of(&server.regcred);

    // Pinned order: the dead endpoint is dialled first, and the session is made with the
    // live one.
    let order = EndpointOrder::as_listed(&[dead.clone(), alive.clone()]);
    let client = Client::connect_any(&order, keys, Duration::from_secs(2), DEFAULT_TIMEOUT)
        .await
        .expect("the second endpoint answers");
    assert_eq!(client.endpoint(), alive);
    client.bye().await.unwrap();
    // The next attempt starts where the last one succeeded.
    assert_eq!(order.next_attempt(), vec![alive.clone(), dead.clone()]);

    // Every endpoint dead: one error that names each of them, and says nothing listens.
    let other_dead = dead_endpoint();
    let order = EndpointOrder::as_listed(&[dead.clone(), other_dead.clone()]);
    let error = Client::connect_any(&order, keys, Duration::from_secs(2), DEFAULT_TIMEOUT)
        .await
        .expect_err("nothing listens anywhere");
    assert!(
        matches!(error, ClientError::NoEndpointAnswered(ref f) if f.len() == 2),
        "{error:?}"
    );
    assert!(error.nothing_listens());
    let text = error.to_string();
    assert!(text.contains(&dead) && text.contains(&other_dead), "{text}");

    // The CLI, with the order shuffled: whichever comes first, the ping is answered by the
    // live endpoint, and names it.
    let listing = dir.path().join("two.dat");
    regcred_listing(&server, &[dead.clone(), alive.clone()], &listing);
    for _ in 0..4 {
        let ping = xlreg(&["ping", "--json", "--regcred", s(&listing)]);
        assert!(ping.status.success(), "{}", stderr(&ping));
        let json: serde_json::Value = serde_json::from_str(&stdout(&ping)).unwrap();
        assert_eq!(json["endpoint"], alive.as_str());
    }
}

#[test]
fn the_endpoint_order_is_shuffled() {
    let endpoints: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", 4000 + i)).collect();
    let firsts: std::collections::HashSet<String> = (0..200)
        .map(|_| EndpointOrder::shuffled(&endpoints).next_attempt()[0].clone())
        .collect();
    // 200 shuffles of 4 endpoints all starting with the same one has probability 4^-199.
    assert!(firsts.len() > 1, "never shuffled: {firsts:?}");
    // A shuffle is a permutation: every endpoint once.
    let mut order = EndpointOrder::shuffled(&endpoints).next_attempt();
    order.sort();
    assert_eq!(order, endpoints);
}

/// A relay on two loopback ports in front of one registry. The first session (on either
/// port) that sends a Join (its third frame: hello, Member, Join) is cut right after the
/// registry answered it; every other session is relayed whole. It records which port each
/// session came in on.
struct CuttingRelay {
    endpoints: Vec<String>,
    /// For each session relayed: the relay endpoint it came in on, and whether it was cut.
    sessions: Arc<Mutex<Vec<(String, bool)>>>,
}

impl CuttingRelay {
    fn start(registry: &str) -> CuttingRelay {
        let cut_done = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let mut endpoints = Vec::new();
        for _ in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoint = listener.local_addr().unwrap().to_string();
            endpoints.push(endpoint.clone());
            let (registry, cut_done, sessions) =
                (registry.to_string(), cut_done.clone(), sessions.clone());
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let (registry, cut_done, sessions, endpoint) = (
                        registry.clone(),
                        cut_done.clone(),
                        sessions.clone(),
                        endpoint.clone(),
                    );
                    std::thread::spawn(move || {
                        relay(client, &registry, &cut_done, &sessions, &endpoint)
                    });
                }
            });
        }
        CuttingRelay {
            endpoints,
            sessions,
        }
    }
}

/// Reads one length-prefixed frame (u32 big-endian length, then the body), whole.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame).ok()?;
    let mut whole = len.to_vec();
    whole.extend_from_slice(&frame);
    Some(whole)
}

/// Relays one session frame by frame in lock-step (the protocol is request/reply).
fn relay(
    mut client: TcpStream,
    registry: &str,
    cut_done: &AtomicBool,
    sessions: &Mutex<Vec<(String, bool)>>,
    endpoint: &str,
) {
    let Ok(mut server) = TcpStream::connect(registry) else {
        return;
    };
    let mut frames = 0;
    let mut cut = false;
    while let Some(request) = read_frame(&mut client) {
        frames += 1;
        if server.write_all(&request).is_err() {
            break;
        }
        let Some(reply) = read_frame(&mut server) else {
            break;
        };
        if frames == 3 && !cut_done.swap(true, Ordering::SeqCst) {
            // The registry has answered the Join: drop its reply and the connection.
            cut = true;
            break;
        }
        if client.write_all(&reply).is_err() {
            break;
        }
    }
    if frames > 0 {
        sessions.lock().unwrap().push((endpoint.to_string(), cut));
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_join_cut_short_after_it_was_applied_finishes_on_the_next_endpoint_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let relay = CuttingRelay::start(&server.endpoint());
    let listing = dir.path().join("relayed.dat");
    regcred_listing(&server, &relay.endpoints, &listing);

    let created = xlreg(&[
        "cluster",
        "create",
        "pair",
        "--size",
        "2",
        "--open",
        "--regcred",
        s(&server.regcred_path),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let node = dir.path().join("node");
    init_node(&node, "node-a", 9100);

    let joined = xlreg(&[
        "cluster",
        "join",
        "pair",
        "--node",
        s(&node),
        "--wait",
        "0",
        "--json",
        "--regcred",
        s(&listing),
    ]);
    assert!(joined.status.success(), "{}", stderr(&joined));
    // The cut was seen and retried.
    assert!(stderr(&joined).contains("retrying"), "{}", stderr(&joined));

    // The first session was cut; the one that finished came in on the other endpoint.
    let sessions = relay.sessions.lock().unwrap().clone();
    let cut: Vec<_> = sessions.iter().filter(|(_, cut)| *cut).collect();
    assert_eq!(cut.len(), 1, "{sessions:?}");
    let finished: Vec<_> = sessions.iter().filter(|(_, cut)| !*cut).collect();
    assert_eq!(finished.len(), 1, "{sessions:?}");
    assert_ne!(
        cut[0].0, finished[0].0,
        "retried the cut endpoint: {sessions:?}"
    );

    // Applied once: the node holds one slot, the first, and the cluster has one member.
    let members = xlreg(&[
        "cluster",
        "members",
        "pair",
        "--json",
        "--regcred",
        s(&server.regcred_path),
    ]);
    assert!(members.status.success(), "{}", stderr(&members));
    let json: serde_json::Value = serde_json::from_str(&stdout(&members)).unwrap();
    let listed = json["members"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{json}");
    assert_eq!(listed[0]["name"], "node-a");
    assert_eq!(listed[0]["slot"], 0);
}
