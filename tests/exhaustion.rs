//! Resource exhaustion against a real `xlreg serve`: more connections than
//! `--max-connections`, clients that connect and never speak, clients that stop reading in
//! the middle of a reply, and a flood of hellos. The registry must refuse or close them (and
//! log it), keep serving well-behaved clients, and keep its memory bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{node, RawConn, RawSession, Server};
use tokio::sync::Semaphore;
use xlreg::client::{Client, DEFAULT_TIMEOUT};
use xlreg::crypto::random_array;
use xlreg::frame;
use xlreg::node::NodeIdentity;
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::session_crypto::ClientHandshake;
use xlreg::store::ClusterRef;

/// Growth of the registry's resident memory that counts as unbounded: far above what the
/// tests' connections need (a few MiB), far below what a leak per connection would reach.
const RSS_GROWTH_LIMIT_KIB: u64 = 96 * 1024;

/// A full well-behaved session: register `identity`, create and join `cluster`, list it.
async fn normal_session(server: &Server, identity: &NodeIdentity, cluster: &str) {
    let mut client = server.client().await;
    client.register(identity).await.unwrap();
    client.create(cluster, 64, 1).await.unwrap();
    client.join(None).await.unwrap();
    let view = client
        .get_cluster(None, None, Duration::ZERO)
        .await
        .unwrap();
    assert!(view.members.iter().any(|m| m.name == identity.name));
    client.bye().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_the_rest_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        &["--max-connections", "8", "--handshake-timeout", "120"],
    );
    let identity = node(0, "steady", 1);

    // Seven silent connections and one real session fill the limit (accepted in order).
    let mut holders = Vec::new();
    for _ in 0..7 {
        holders.push(RawConn::connect(&server.endpoint()).await);
    }
    let mut steady = server.client().await;
    steady.register(&identity).await.unwrap();

    // Every connection beyond the limit is closed without a word.
    for i in 0..12 {
        let mut extra = RawConn::connect(&server.endpoint()).await;
        let (_, hello) = ClientHandshake::start(&server.regcred.comms_key).unwrap();
        // The registry may have closed already: the send may fail.
        let _ = extra.send_frame(&hello).await;
        extra
            .expect_silent_close(&format!("connection {} over the limit", 9 + i))
            .await;
    }
    // Refusals are logged at most once a second, with a count, so a flood cannot flood the
    // log: at least the first is there.
    server.wait_for_log_lines("connection refused: too many connections", 1);

    // The session that got in is unaffected.
    steady.create("steady", 4, 1).await.unwrap();
    steady.join(None).await.unwrap();
    steady.bye().await.unwrap();

    // Once the silent ones leave, new sessions get in again. Their sessions end as the
    // registry notices, so poll (bounded) until a new client is admitted.
    drop(holders);
    let mut admitted = false;
    for _ in 0..200 {
        match Client::connect(&server.regcred, DEFAULT_TIMEOUT).await {
            Ok(client) => {
                drop(client);
                admitted = true;
                break;
            }
            Err(error) => assert!(error.is_retryable(), "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "no connection was admitted after the limit freed");
    normal_session(&server, &node(1, "later", 1), "steady").await;
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test]
async fn clients_that_never_speak_are_closed_after_the_timeouts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        &["--handshake-timeout", "2", "--idle-timeout", "3"],
    );
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(RawConn::connect(&server.endpoint()).await);
    }
    // Half a hello, then nothing.
    let (_, hello) = ClientHandshake::start(&server.regcred.comms_key).unwrap();
    let wire = frame::encode(&hello);
    for _ in 0..2 {
        let mut conn = RawConn::connect(&server.endpoint()).await;
        conn.send_raw(&wire[..wire.len() / 2]).await.unwrap();
        silent.push(conn);
    }
    // A completed handshake, then nothing (the idle timeout).
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(RawSession::open(&server).await);
    }
    // Meanwhile, the registry serves others.
    normal_session(&server, &node(0, "meanwhile", 1), "busy").await;

    for (i, conn) in silent.iter_mut().enumerate() {
        conn.expect_silent_close(&format!("silent connection {i}"))
            .await;
    }
    for (i, session) in idle.iter_mut().enumerate() {
        session
            .conn
            .expect_silent_close(&format!("idle session {i}"))
            .await;
    }
    // The first session that ended before authenticating is logged in full; the others of
    // the same minute are only counted, for a summary line (xlreg::admission), so that a
    // flood of them cannot flood the log.
    server.wait_for_log_lines("error: peer sent nothing for 2s", 1);
    assert_eq!(server.log_count("error: peer sent nothing for"), 1);
    normal_session(&server, &node(1, "after", 1), "busy").await;
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_mid_reply_is_cut_off_without_blocking_others() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        &["--write-timeout", "2", "--idle-timeout", "120"],
    );

    // A full 64-member cluster whose member list is a large reply (~90 KB).
    let slots = Arc::new(Semaphore::new(8));
    let mut joins = Vec::new();
    for i in 0..64 {
        let regcred = server.regcred.clone();
        let slots = slots.clone();
        joins.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            let mut identity = node(i % 4, &format!("member-{i:02}-{}", "m".repeat(100)), 8);
            for (p, endpoint) in identity.endpoints.iter_mut().enumerate() {
                *endpoint = format!("node-{i}.{}.example:{}", "e".repeat(40), 1000 + p);
            }
            let mut client = Client::connect(&regcred, DEFAULT_TIMEOUT).await.unwrap();
            client.register(&identity).await.unwrap();
            client.create("big", 64, 8).await.unwrap();
            client.join(None).await.unwrap();
            client.bye().await.unwrap();
        }));
    }
    for join in joins {
        join.await.unwrap();
    }
    let rss_before = server.rss_kib();

    // The slow reader: a tiny receive window, 200 GetClusters sent at once, nothing read.
    let mut slow = RawConn::connect_with_receive_buffer(&server.endpoint(), 4096)
        .await
        .handshake(&server.regcred)
        .await;
    slow.register(&node(0, "slow", 1)).await;
    let get = XlRegMsg {
        op: Some(Tag::GetCluster as i32),
        cluster_name: Some("big".into()),
        ..XlRegMsg::default()
    };
    let mut burst = Vec::new();
    for _ in 0..200 {
        burst.extend(frame::encode(
            &slow.seal(&prost::Message::encode_to_vec(&get)),
        ));
    }
    slow.conn.send_raw(&burst).await.unwrap();

    // While the registry's writes to it are stuck, everyone else is served.
    for i in 0..5 {
        let mut client = server.client().await;
        client
            .register(&node(1, &format!("reader{i}"), 1))
            .await
            .unwrap();
        let view = client
            .get_cluster(Some(&ClusterRef::Name("big".into())), None, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(view.members.len(), 64);
        client.bye().await.unwrap();
    }

    // The stuck session is closed once its write times out, and the registry says why.
    server.wait_for_log_lines("error: peer did not accept data for 2s", 1);
    let received = slow.conn.drain_until_closed().await;
    assert!(
        received < 200 * 90_000,
        "the slow reader got every reply ({received} bytes): nothing was stuck"
    );
    let rss_after = server.rss_kib();
    println!("slow reader: got {received} bytes; registry RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    normal_session(&server, &node(2, "after", 1), "other").await;
    assert_eq!(server.stop(), Some(0));
}

/// What one flooding connection saw.
#[derive(Debug, PartialEq, Eq)]
enum FloodOutcome {
    /// The registry answered the hello.
    Answered,
    /// The registry closed the connection without a word.
    Closed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hellos_leaves_memory_bounded_and_others_served() {
    const FLOOD: usize = 600;
    const CONCURRENCY: usize = 48;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        // The default connection limit (1024): the flood stays below it, so every valid
        // hello is answered (the limit itself is tested above). Flood and steady clients
        // share 127.0.0.1, so the per-address limit is lifted (tests/floods.rs tests it).
        &[
            "--handshake-timeout",
            "5",
            "--max-connections-per-ip",
            "1024",
        ],
    );
    normal_session(&server, &node(0, "warmup", 1), "steady").await;
    let rss_before = server.rss_kib();

    // Half valid hellos (answered, then abandoned), half garbage (closed unanswered).
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let (endpoint, key, limit) = (
            server.endpoint(),
            server.regcred.comms_key.clone(),
            limit.clone(),
        );
        flood.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let mut conn = RawConn::connect(&endpoint).await;
            let valid = i % 2 == 0;
            let hello = if valid {
                ClientHandshake::start(&key).unwrap().1
            } else {
                random_array::<256>().to_vec()
            };
            conn.send_frame(&hello).await.unwrap();
            let heard = match conn.hear().await {
                common::Heard::Frame(_) => FloodOutcome::Answered,
                common::Heard::Closed => FloodOutcome::Closed,
                common::Heard::Silence => panic!("hello {i} was neither answered nor refused"),
            };
            (valid, heard)
        }));
    }
    // Well-behaved clients are served throughout.
    for i in 0..10 {
        normal_session(
            &server,
            &node(1 + i % 2, &format!("steady{i}"), 1),
            "steady",
        )
        .await;
    }
    for task in flood {
        let (valid, heard) = task.await.unwrap();
        let expected = if valid {
            FloodOutcome::Answered
        } else {
            FloodOutcome::Closed
        };
        assert_eq!(heard, expected, "valid hello: {valid}");
    }
    // Sessions that never authenticated: the first is logged, the rest of the minute only
    // counted (xlreg::admission): the flood leaves one line, not one per hello.
    server.wait_for_log_lines("ops=0", 1);
    assert_eq!(server.log_count("ops=0"), 1);
    let rss_after = server.rss_kib();
    println!("hello flood of {FLOOD}: registry RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    normal_session(&server, &node(3, "after", 1), "steady").await;
    assert_eq!(server.stop(), Some(0));
}
