//! `xlreg bench` against a real registry: it completes every session, finds the registry's
//! process and reports its CPU time, on xlReg/2 and (`--legacy`) on the 1.9 wire of
//! `xlreg serve --legacy-listen`; and the 1.9 client library the generator uses, against the
//! legacy listener and beside the test suite's own 1.9 client.

mod common;

use std::time::Duration;

use common::legacy_client::{self as oracle, join_by_name, LegacyMember};
use common::{key_pair, node, stderr, xlreg, Server};
use xlreg::client::ClientError;
use xlreg::id::Id;
use xlreg::legacy::client::LegacyClient;
use xlreg::legacy::wire::Version;
use xlreg::proto::Tag;
use xlreg::regcred::RegCred;
use xlreg::store::ClusterRef;

/// Runs `xlreg bench ARGS` for 12 sessions of 6 clients in clusters of 3 and checks the
/// JSON report says they all completed, without errors, at a positive rate.
fn bench_12_sessions(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--json", "--clients", "6", "--sessions", "12"];
    all.extend(["--cluster-size", "3", "--identities", "2"]);
    all.extend(args);
    let output = xlreg(&all);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["completed"], 12, "{report}");
    assert_eq!(report["errors"].as_object().unwrap().len(), 0, "{report}");
    assert!(report["sessions_per_s"].as_f64().unwrap() > 0.0);
    report
}

#[test]
fn bench_runs_complete_sessions_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = server.regcred_path.to_str().unwrap();
    // By default the highest version the regCred.dat allows; --protocol picks one.
    let report = bench_12_sessions(&["--regcred", regcred]);
    assert_eq!(report["wire"], "xlReg/3");
    let v2 = bench_12_sessions(&["--regcred", regcred, "--protocol", "2"]);
    assert_eq!(v2["wire"], "xlReg/2");
    let v3 = bench_12_sessions(&["--regcred", regcred, "--protocol", "3"]);
    assert_eq!(v3["wire"], "xlReg/3");
    assert!(
        report["latency_ms"]["max"].as_f64().unwrap()
            >= report["latency_ms"]["p50"].as_f64().unwrap()
    );
    assert!(
        report["server_pid"].as_u64().is_some(),
        "the local registry is found: {report}"
    );
    assert_eq!(
        report["server_pids"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert!(report["server_cpu_ms_per_session"].as_f64().unwrap() > 0.0);
    assert!(report["generator_cpu_ms_per_session"].as_f64().unwrap() > 0.0);
    // Where the registry's CPU went, by thread group: the runtime's worker serves the
    // sessions and the store's writer commits their writes; each is woken every session or
    // round, so each has switches even when its CPU is below a clock tick.
    let threads = report["server_threads"].as_array().unwrap();
    for group in ["tokio-rt-worker", "xlreg-store-wri"] {
        let share = threads
            .iter()
            .find(|share| share["threads"] == group)
            .unwrap_or_else(|| panic!("no {group} in {report}"));
        assert!(
            share["switches_per_session"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}

#[test]
fn bench_refuses_parameters_that_cannot_complete_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = server.regcred_path.to_str().unwrap();
    for (args, expected) in [
        (
            ["--clients", "2", "--sessions", "8", "--cluster-size", "4"],
            "must be at least --cluster-size",
        ),
        (
            ["--clients", "8", "--sessions", "6", "--cluster-size", "4"],
            "multiple of --cluster-size",
        ),
    ] {
        let mut all = vec!["bench", "--regcred", regcred, "--identities", "1"];
        all.extend(args);
        let output = xlreg(&all);
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
    // --protocol 3 with an xlReg/2-only regCred.dat, and a version that does not exist.
    let mut old = server.regcred.clone();
    old.handshake = None;
    let old_path = dir.path().join("old-regCred.dat");
    old.write(&old_path).unwrap();
    let old_path = old_path.to_str().unwrap();
    for (args, expected) in [
        (
            ["--regcred", old_path, "--protocol", "3"],
            "needs a regCred.dat with handshake keys",
        ),
        (["--regcred", regcred, "--protocol", "4"], "4"),
    ] {
        let mut all = vec!["bench", "--identities", "1"];
        all.extend(args);
        let output = xlreg(&all);
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
}

/// How long the library client waits for any one reply in these tests (the machine is
/// shared and loaded).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a registry with the legacy listener and returns it with its Go-format
/// credentials (the file a 1.9 client, and `xlreg bench --legacy`, reads).
fn start_legacy(data: &std::path::Path) -> (Server, std::path::PathBuf, RegCred) {
    let server = Server::start(data, &["--legacy-listen", "127.0.0.1:0"]);
    let path = data.join("legacy").join("regCred.dat");
    let cred = RegCred::read(&path).unwrap();
    assert_ne!(cred.endpoint(), server.endpoint());
    (server, path, cred)
}

/// The rows of `xlreg admin WHAT --json` on the registry in `data`.
fn admin_json(data: &std::path::Path, what: &str) -> Vec<serde_json::Value> {
    let output = xlreg(&[
        "admin",
        what,
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    rows.as_array().unwrap().clone()
}

#[test]
fn bench_legacy_runs_complete_1_9_sessions_against_the_legacy_listener() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, legacy_regcred, _) = start_legacy(&data);
    let report = bench_12_sessions(&["--legacy", "--regcred", legacy_regcred.to_str().unwrap()]);
    assert_eq!(report["wire"], "xlReg/1.9");
    // The process found through the legacy port is this registry.
    let pid = report["server_pid"]
        .as_u64()
        .expect("the registry is found");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains("serve") && cmdline.contains(data.to_str().unwrap()),
        "{cmdline}"
    );
    assert!(report["server_cpu_ms_per_session"].as_f64().unwrap() > 0.0);
    assert!(report["generator_cpu_ms_per_session"].as_f64().unwrap() > 0.0);

    // The registry saw twelve 1.9 sessions, each ended by Bye, and none on xlReg/2.
    let log = server.wait_for_log("twelve 1.9 sessions ended by Bye", |log| {
        log.lines()
            .filter(|line| line.contains("wire=\"xlReg/1.9\"") && line.contains("result=\"bye\""))
            .count()
            >= 12
    });
    assert!(!log.contains("wire=\"xlReg/2\""), "{log}");
    // Every member registered with the 20-byte ID it chose itself, as Go clients do, and
    // the four clusters are full.
    let nodes = admin_json(&data, "nodes");
    assert_eq!(nodes.len(), 12);
    for node in &nodes {
        assert_eq!(node["id"].as_str().unwrap().len(), 40, "{node}");
        assert_eq!(node["attrs"], 1, "the Go client's ATTR_EPHEMERAL: {node}");
    }
    let clusters = admin_json(&data, "clusters");
    assert_eq!(clusters.len(), 4, "{clusters:?}");
    for cluster in &clusters {
        assert_eq!(
            (&cluster["member_count"], &cluster["max_size"]),
            (&3.into(), &3.into())
        );
    }
}

#[tokio::test]
async fn the_1_9_client_library_runs_sessions_and_reports_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_server, _, cred) = start_legacy(&data);

    // A member with its own 20-byte ID creates and joins a cluster of three.
    let mut first = node(0, "first", 1);
    let first_id = Id::random_legacy(&mut rand::rng());
    first.id = Some(first_id.clone());
    let mut a = LegacyClient::connect(&cred, REPLY_TIMEOUT).await.unwrap();
    assert_eq!(a.registry_version(), Version::GO_REGISTRY);
    assert_eq!(a.register(&first).await.unwrap(), first_id);
    let created = a.create("lib", 3, 1).await.unwrap();
    assert_eq!((created.name.as_str(), created.max_size), ("lib", 3));
    let joined = a.join(None).await.unwrap();
    assert_eq!(joined.id, created.id);
    let view = a.get_cluster(None).await.unwrap();
    assert!(!view.is_complete());
    assert_eq!(view.cluster.max_size, 3, "remembered from the JoinReply");
    assert_eq!(view.which, 0b1);
    assert_eq!(view.members[0].id, first_id);

    // The test suite's own 1.9 client joins by name; a library member without an ID gets
    // one from the registry and joins by name too.
    let second = LegacyMember::new(1, "second");
    let mut b = oracle::LegacyClient::connect(&cred).await;
    b.member(&second).await;
    oracle::expect(b.call(&join_by_name("lib")).await, Tag::JoinReply);
    let third = node(2, "third", 1);
    let mut c = LegacyClient::connect(&cred, REPLY_TIMEOUT).await.unwrap();
    let third_id = c.register(&third).await.unwrap();
    assert_eq!(third_id.as_bytes().len(), 32, "issued by the registry");
    c.join(Some(&ClusterRef::Name("lib".into()))).await.unwrap();

    // Polling sees the cluster complete, members in join order.
    let view = a.wait_until_complete(REPLY_TIMEOUT).await.unwrap();
    assert!(view.is_complete());
    assert_eq!(view.which, 0b111);
    assert_eq!(view.cluster.size, 3);
    let ids: Vec<&[u8]> = view.members.iter().map(|m| m.id.as_bytes()).collect();
    assert_eq!(
        ids,
        [first_id.as_bytes(), &second.id[..], third_id.as_bytes()]
    );
    assert_eq!(view.members[1].endpoints, second.endpoints);
    a.bye().await.unwrap();
    b.bye().await;
    c.bye().await.unwrap();

    // Refusals arrive as Refused without a code (1.9 has none) and with the ErrDesc.
    let refused = |result: Result<(), ClientError>, text: &str| match result {
        Err(ClientError::Refused {
            code: None,
            description,
            ..
        }) => assert!(description.contains(text), "{description:?} lacks {text:?}"),
        other => panic!("expected a refusal containing {text:?}, got {other:?}"),
    };
    let mut d = LegacyClient::connect(&cred, REPLY_TIMEOUT).await.unwrap();
    d.register(&node(3, "fourth", 1)).await.unwrap();
    refused(
        d.join(Some(&ClusterRef::Name("nope".into())))
            .await
            .map(|_| ()),
        "no such cluster",
    );
    let mut e = LegacyClient::connect(&cred, REPLY_TIMEOUT).await.unwrap();
    e.register(&node(3, "fifth", 1)).await.unwrap();
    refused(
        e.get_cluster(None).await.map(|_| ()),
        "invalid msg type for current state",
    );
    let mut f = LegacyClient::connect(&cred, REPLY_TIMEOUT).await.unwrap();
    f.register(&node(3, "sixth", 1)).await.unwrap();
    refused(
        f.join(Some(&ClusterRef::Name("lib".into())))
            .await
            .map(|_| ()),
        "is full",
    );
    // A hello under another key is dropped without a word.
    let stranger = key_pair(4).0;
    match LegacyClient::connect_to(cred.endpoint(), stranger.public_key(), REPLY_TIMEOUT).await {
        Err(ClientError::Closed) => {}
        other => panic!("expected the registry to close, got {other:?}"),
    }
}
