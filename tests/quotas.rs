//! Registry-wide caps (`serve --max-clusters`, `--max-nodes`) and rate quotas
//! (`--quota-clusters-per-ip`, `--quota-clusters-per-node`, `--quota-registrations-per-ip`)
//! against a real `xlreg serve`: a create or a registration beyond a cap or a quota is
//! refused with a clear error and changes nothing; the rest is served, and a quota admits
//! again once it has refilled.

mod common;

use std::time::Duration;

use common::legacy_client::{create_msg, expect, expect_error, LegacyClient, LegacyMember};
use common::{metric, node, stderr, store_contents, wait_for_metric, xlreg, Server};
use xlreg::client::ClientError;
use xlreg::proto::{ErrCode, Tag};
use xlreg::regcred::RegCred;

#[tokio::test]
async fn creates_beyond_max_clusters_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-clusters", "2", "--max-nodes", "2"],
    );
    let mut client = server.client().await;
    client.register(&node(0, "a", 1)).await.unwrap();
    client.create("one", 3, 1).await.unwrap();
    client.create("two", 3, 1).await.unwrap();
    match client.create("three", 3, 1).await {
        Err(ClientError::Refused {
            code, description, ..
        }) => {
            assert_eq!(code, Some(ErrCode::Unavailable));
            assert_eq!(
                description,
                "the registry holds its maximum of 2 clusters; ask its operator"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Finding an existing cluster is still served.
    let mut again = server.client().await;
    again.register(&node(1, "b", 1)).await.unwrap();
    again.create("one", 3, 1).await.unwrap();
    again.bye().await.unwrap();
    // The node cap: a third node is refused.
    let mut third = server.client().await;
    match third.register(&node(2, "c", 1)).await {
        Err(ClientError::Refused { description, .. }) => {
            assert!(description.contains("maximum of 2 nodes"), "{description}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(server.stop(), Some(0));
}

/// The description of a refusal, checking that it is sent as Unavailable and, for a quota,
/// that its RetryAfterMs is the wait its text names (the text rounds up to whole seconds).
fn unavailable(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Refused {
            code,
            description,
            retry_after,
        }) => {
            assert_eq!(code, Some(ErrCode::Unavailable), "{description}");
            if description.starts_with("quota:") {
                let after = retry_after.expect("a quota refusal carries RetryAfterMs");
                let named = retry_after_text(&description);
                assert!(
                    after <= named && named < after + Duration::from_secs(1),
                    "RetryAfterMs {after:?} against the text's {named:?}"
                );
            } else {
                assert_eq!(retry_after, None, "{description}");
            }
            description
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The wait a quota refusal names: "... try again in N s".
fn retry_after_text(description: &str) -> Duration {
    let seconds = description
        .rsplit_once("try again in ")
        .and_then(|(_, rest)| rest.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {description:?}"));
    Duration::from_secs(seconds)
}

#[tokio::test]
async fn creates_past_the_address_quota_are_refused_until_it_refills() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--quota-clusters-per-ip",
            "3/3s",
            "--quota-clusters-per-node",
            "off",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_addr();
    let mut client = server.client().await;
    client.register(&node(0, "a", 1)).await.unwrap();
    // Finding a cluster takes nothing from the quota: after c0 and two more finds of it,
    // c1 and c2 still fit in the burst of 3.
    for name in ["c0", "c0", "c0", "c1", "c2"] {
        client.create(name, 3, 1).await.unwrap();
    }
    let refused = unavailable(client.create("c3", 3, 1).await);
    assert!(
        refused.starts_with(
            "quota: new clusters from this address are limited to 3/3s \
             (serve --quota-clusters-per-ip); try again in "
        ),
        "{refused}"
    );
    let wait = retry_after_text(&refused);
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_secs(3),
        "{refused}"
    );
    // Finding an existing cluster creates nothing and is served, quota or not.
    let mut again = server.client().await;
    again.register(&node(1, "b", 1)).await.unwrap();
    again.create("c0", 3, 1).await.unwrap();
    again.bye().await.unwrap();
    wait_for_metric(
        &metrics,
        r#"xlreg_quota_refusals_total{quota="clusters_per_ip"}"#,
        1.0,
    );
    // After the wait the refusal named, the address may create one more.
    tokio::time::sleep(wait).await;
    let mut later = server.client().await;
    later.register(&node(2, "c", 1)).await.unwrap();
    later.create("c3", 3, 1).await.unwrap();
    later.bye().await.unwrap();
    assert_eq!(server.stop(), Some(0));
    let mut names: Vec<String> = store_contents(&data)
        .clusters
        .into_iter()
        .map(|c| c.name)
        .collect();
    names.sort();
    assert_eq!(names, ["c0", "c1", "c2", "c3"]);
}

#[tokio::test]
async fn a_node_past_its_quota_is_refused_while_another_node_creates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--quota-clusters-per-node", "2/1h"],
    );
    let mut busy_node = node(0, "busy", 1);
    let mut busy = server.client().await;
    busy_node.id = Some(busy.register(&busy_node).await.unwrap());
    busy.create("b0", 3, 1).await.unwrap();
    busy.create("b1", 3, 1).await.unwrap();
    let refused = unavailable(busy.create("b2", 3, 1).await);
    assert!(
        refused.starts_with(
            "quota: new clusters by this node are limited to 2/1h \
             (serve --quota-clusters-per-node); try again in "
        ),
        "{refused}"
    );
    // Another node from the same address is not held back.
    let mut other = server.client().await;
    other.register(&node(1, "other", 1)).await.unwrap();
    other.create("o0", 3, 1).await.unwrap();
    other.bye().await.unwrap();
    // The busy node's quota stays used up in a new session.
    let mut busy_again = server.client().await;
    busy_again.register(&busy_node).await.unwrap();
    let refused = unavailable(busy_again.create("b2", 3, 1).await);
    assert!(refused.contains("by this node"), "{refused}");
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test]
async fn registrations_past_the_address_quota_are_refused_but_known_nodes_register_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--quota-registrations-per-ip",
            "2/1h",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_addr();
    let mut first = node(0, "first", 1);
    first.id = Some(server.client().await.register(&first).await.unwrap());
    // Registering a known node again takes nothing from the quota: the second new node
    // still fits in the burst of 2.
    server.client().await.register(&first).await.unwrap();
    server
        .client()
        .await
        .register(&node(1, "second", 1))
        .await
        .unwrap();
    let refused = unavailable(server.client().await.register(&node(2, "third", 1)).await);
    assert!(
        refused.starts_with(
            "quota: new nodes registered from this address are limited to 2/1h \
             (serve --quota-registrations-per-ip); try again in "
        ),
        "{refused}"
    );
    // A new node that brings its own id is new all the same.
    let mut self_named = node(2, "third", 1);
    self_named.id = Some(xlreg::id::Id::from_bytes(&[7u8; 32]).unwrap());
    unavailable(server.client().await.register(&self_named).await);
    // A known node registering again (a restart, a retry) is not counted.
    for _ in 0..3 {
        let again = server.client().await.register(&first).await.unwrap();
        assert_eq!(Some(again), first.id);
    }
    let text = wait_for_metric(
        &metrics,
        r#"xlreg_quota_refusals_total{quota="registrations_per_ip"}"#,
        2.0,
    );
    assert_eq!(
        metric(&text, r#"xlreg_errors_total{kind="Unavailable"}"#),
        Some(2.0)
    );
    assert_eq!(server.stop(), Some(0));
    let names: Vec<String> = store_contents(&data)
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&"third".to_string()), "{names:?}");
}

#[tokio::test]
async fn a_client_looping_over_a_used_up_quota_writes_one_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--quota-registrations-per-ip", "1/1h"],
    );
    server
        .client()
        .await
        .register(&node(0, "only", 1))
        .await
        .unwrap();
    for i in 0..20 {
        let name = format!("n{i}");
        unavailable(server.client().await.register(&node(1, &name, 1)).await);
    }
    // The first refusal is logged as its session line, with the reason; the other 19 are
    // counted for the summary line of the next interval (60 s), not logged one by one.
    let log = server.wait_for_log("the refused session's line", |log| {
        log.contains("quota: new nodes registered")
    });
    assert_eq!(
        log.matches("quota: new nodes registered").count(),
        1,
        "{log}"
    );
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test]
async fn legacy_clients_meet_the_same_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--legacy-listen",
            "127.0.0.1:0",
            "--quota-registrations-per-ip",
            "1/1h",
            "--quota-clusters-per-ip",
            "1/1h",
        ],
    );
    let cred = RegCred::read(data.join("legacy").join("regCred.dat")).unwrap();
    let alpha = LegacyMember::new(0, "alpha");
    let mut a = LegacyClient::connect(&cred).await;
    a.member(&alpha).await;
    expect(a.call(&create_msg("one", 3)).await, Tag::CreateReply);
    a.bye().await;
    // A second 1.9 node (its own new 20-byte id) is over the address's registration quota.
    let mut b = LegacyClient::connect(&cred).await;
    let reply = b.call(&LegacyMember::new(1, "beta").member_msg()).await;
    expect_error(
        &mut b,
        reply,
        "quota: new nodes registered from this address",
    )
    .await;
    // The known node registers again and finds its cluster, but may not create another.
    let mut a = LegacyClient::connect(&cred).await;
    a.member(&alpha).await;
    expect(a.call(&create_msg("one", 3)).await, Tag::CreateReply);
    a.bye().await;
    let mut a = LegacyClient::connect(&cred).await;
    a.member(&alpha).await;
    let reply = a.call(&create_msg("two", 3)).await;
    expect_error(&mut a, reply, "quota: new clusters from this address").await;
    // xlReg/2 sessions from the same address share the quotas.
    let refused = unavailable(server.client().await.register(&node(2, "gamma", 1)).await);
    assert!(refused.starts_with("quota: new nodes"), "{refused}");
    assert_eq!(server.stop(), Some(0));
    let contents = store_contents(&data);
    assert_eq!(contents.nodes.len(), 1);
    assert_eq!(contents.clusters.len(), 1);
}

#[tokio::test]
async fn the_cli_says_which_quota_and_when_to_try_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--quota-clusters-per-ip", "1/1h"],
    );
    let regcred = server.regcred_path.to_str().unwrap().to_string();
    let create = |name: &str| {
        xlreg(&[
            "cluster",
            "create",
            name,
            "--open",
            "--size",
            "3",
            "--regcred",
            &regcred,
            "--retry-for",
            "0",
        ])
    };
    assert_eq!(create("first").status.code(), Some(0));
    let refused = create("second");
    // Unavailable: exit 6, as for every "try again later" answer.
    assert_eq!(refused.status.code(), Some(6), "{}", stderr(&refused));
    let text = stderr(&refused);
    assert!(
        text.contains(
            "quota: new clusters from this address are limited to 1/1h \
             (serve --quota-clusters-per-ip); try again in "
        ),
        "{text}"
    );
    // The refusal says when a retry can succeed (RetryAfterMs, about an hour): a CLI allowed
    // to retry for a minute gives up at once instead of retrying for the minute in vain.
    let began = std::time::Instant::now();
    let patient = xlreg(&[
        "cluster",
        "create",
        "third",
        "--open",
        "--size",
        "3",
        "--regcred",
        &regcred,
        "--retry-for",
        "60",
    ]);
    assert_eq!(patient.status.code(), Some(6), "{}", stderr(&patient));
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "retried for {:?} against a quota that refills in an hour",
        began.elapsed()
    );
    // Creating the existing cluster again is served.
    assert_eq!(create("first").status.code(), Some(0));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_malformed_quota_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = xlreg(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--quota-clusters-per-ip",
        "lots",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"lots\" is not a quota like 1000/10m, 50/1s or off"),
        "{}",
        stderr(&out)
    );
    assert!(!data.exists(), "nothing is created on a usage error");
}

#[tokio::test]
async fn by_default_one_node_creating_clusters_in_a_loop_is_stopped_after_100() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let mut looping = node(0, "looping", 1);
    let mut client = server.client().await;
    looping.id = Some(client.register(&looping).await.unwrap());
    // The session that once created 2,000 clusters in 1.2 s: now a burst of 100, and one
    // more per 0.6 s the loop takes.
    let began = std::time::Instant::now();
    let mut created = 0u128;
    let refused = loop {
        match client.create(&format!("loop{created}"), 3, 1).await {
            Ok(_) => created += 1,
            Err(error) => break unavailable(Err::<(), _>(error)),
        }
        assert!(created <= 2_000, "2,000 creates and no refusal");
    };
    let refills = began.elapsed().as_millis() / 600;
    assert!(
        (100..=101 + refills).contains(&created),
        "{created} created in {:?}",
        began.elapsed()
    );
    assert!(
        refused.starts_with(
            "quota: new clusters by this node are limited to 100/1m \
             (serve --quota-clusters-per-node); try again in 1 s"
        ),
        "{refused}"
    );
    assert_eq!(server.stop(), Some(0));
    let stored = store_contents(&data).clusters.len();
    assert_eq!(stored as u128, created);
}
