//! Full xlReg/2 sessions against a real `xlreg serve` process over loopback: every message
//! path and every error path a well-formed client can reach.

mod common;

use std::time::Duration;

use common::{node, Server};
use xlreg::client::{Client, ClientError, DEFAULT_TIMEOUT};
use xlreg::id::Id;
use xlreg::proto::ErrCode;
use xlreg::store::ClusterRef;

fn refused(result: Result<impl std::fmt::Debug, ClientError>) -> (Option<ErrCode>, String) {
    match result {
        Err(ClientError::Refused {
            code, description, ..
        }) => (code, description),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn name(text: &str) -> ClusterRef {
    ClusterRef::Name(text.to_string())
}

#[tokio::test]
async fn a_member_registers_creates_joins_lists_and_says_bye() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut client = server.client().await;
    let id = client.register(&node(0, "alpha", 1)).await.unwrap();
    assert_eq!(id.as_bytes().len(), 32);
    let cluster = client.create("pair", 2, 1).await.unwrap();
    assert_eq!(
        (cluster.max_size, cluster.endpoint_count, cluster.size),
        (2, 1, 0)
    );
    let (joined, slot) = client.join(None).await.unwrap();
    assert_eq!(
        (joined.id.clone(), slot, joined.size),
        (cluster.id.clone(), 0, 1)
    );
    let view = client
        .get_cluster(None, None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.which, 0b1);
    assert_eq!(view.members[0].name, "alpha");
    assert_eq!(view.members[0].id, id);
    let (comms, sig) = common::key_pair(0);
    assert_eq!(view.members[0].comms_key, comms.public_key().to_spki_der());
    assert_eq!(view.members[0].sig_key, sig.public_key().to_spki_der());
    assert_eq!(view.members[0].endpoints, node(0, "alpha", 1).endpoints);
    let by_name = client
        .get_cluster(Some(&name("pair")), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(by_name, view);
    let by_id = client
        .get_cluster(
            Some(&ClusterRef::Id(cluster.id.clone())),
            None,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(by_id, view);
    client.bye().await.unwrap();
}

#[tokio::test]
async fn every_member_sees_every_other_members_keys_and_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut client = server.client().await;
        ids.push(
            client
                .register(&node(i, &format!("n{i}"), 2))
                .await
                .unwrap(),
        );
        client.create("trio", 3, 2).await.unwrap();
        let (_, slot) = client.join(Some(&name("trio"))).await.unwrap();
        assert_eq!(slot, i as u32);
        client.bye().await.unwrap();
    }
    let mut client = server.client().await;
    client.register(&node(0, "n0", 2)).await.unwrap();
    let view = client
        .get_cluster(Some(&name("trio")), None, Duration::ZERO)
        .await
        .unwrap();
    assert!(view.is_complete());
    assert_eq!(view.which, 0b111);
    for (i, member) in view.members.iter().enumerate() {
        assert_eq!(member.slot, i as u32);
        assert_eq!(member.id, ids[i]);
        assert_eq!(member.endpoints.len(), 2);
        assert_eq!(
            member.sig_key,
            common::key_pair(i).1.public_key().to_spki_der()
        );
    }
    // Which selects slots; the reply says which it returned.
    let some = client.get_cluster(None, Some(0b101), Duration::ZERO).await;
    // No cluster joined in this session and none named: a clear refusal.
    let (code, text) = refused(some);
    assert_eq!(code, Some(ErrCode::BadRequest));
    assert!(text.contains("names no cluster"), "{text}");
    let mut client = server.client().await;
    client.register(&node(0, "n0", 2)).await.unwrap();
    let view = client
        .get_cluster(Some(&name("trio")), Some(0b101), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.which, 0b101);
    let names: Vec<_> = view.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["n0", "n2"]);
}

#[tokio::test]
async fn joins_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);

    let mut a = server.client().await;
    a.register(&node(0, "a", 1)).await.unwrap();
    a.create("pair", 2, 2).await.unwrap();
    // The cluster needs two endpoints per member; this node has one.
    let (code, text) = refused(a.join(None).await);
    assert_eq!(code, Some(ErrCode::BadRequest));
    assert!(text.contains("needs 2 endpoints"), "{text}");

    let mut a = server.client().await;
    a.register(&node(0, "a", 2)).await.unwrap();
    a.join(Some(&name("pair"))).await.unwrap();
    let mut b = server.client().await;
    b.register(&node(1, "a", 2)).await.unwrap();
    let (code, text) = refused(b.join(Some(&name("pair"))).await);
    assert_eq!(code, Some(ErrCode::Conflict));
    assert!(text.contains("different member named a"), "{text}");

    let mut b = server.client().await;
    b.register(&node(1, "b", 2)).await.unwrap();
    b.join(Some(&name("pair"))).await.unwrap();
    let mut c = server.client().await;
    c.register(&node(2, "c", 2)).await.unwrap();
    let (code, text) = refused(c.join(Some(&name("pair"))).await);
    assert_eq!(code, Some(ErrCode::ClusterFull));
    assert_eq!(text, "cluster pair is full (2/2)");

    let mut c = server.client().await;
    c.register(&node(2, "c", 2)).await.unwrap();
    let (code, text) = refused(c.join(Some(&name("nosuch"))).await);
    assert_eq!(code, Some(ErrCode::NotFound));
    assert!(text.contains("nosuch"), "{text}");
    let mut c = server.client().await;
    c.register(&node(2, "c", 2)).await.unwrap();
    let unknown = Id::from_bytes(&[0x5a; 32]).unwrap();
    let (code, _) = refused(c.join(Some(&ClusterRef::Id(unknown))).await);
    assert_eq!(code, Some(ErrCode::NotFound));
}

#[tokio::test]
async fn requests_out_of_order_and_foreign_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut client = server.client().await;
    let (code, text) = refused(client.create("early", 2, 1).await);
    assert_eq!(code, Some(ErrCode::InvalidState));
    assert!(text.contains("send Member first"), "{text}");

    // A registered ID presented with other keys is refused.
    let mut client = server.client().await;
    let id = client.register(&node(0, "owner", 1)).await.unwrap();
    let mut impostor = node(1, "owner", 1);
    impostor.id = Some(id.clone());
    let mut client = server.client().await;
    let (code, text) = refused(client.register(&impostor).await);
    assert_eq!(code, Some(ErrCode::Conflict));
    assert!(text.contains("different signing key"), "{text}");
    // The rightful owner still gets its ID back.
    let mut owner = node(0, "owner", 1);
    owner.id = Some(id.clone());
    let mut client = server.client().await;
    assert_eq!(client.register(&owner).await.unwrap(), id);
}

#[tokio::test]
async fn a_registry_that_does_not_hold_the_key_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    // A test-only fixture key that is not the template registry's.
    let wrong = common::key_pair(15).0;
    let result = Client::connect_to(&server.endpoint(), wrong.public_key(), DEFAULT_TIMEOUT).await;
    // It closes the hello unanswered while it goes on serving: the client names the cause.
    assert!(
        matches!(result, Err(ClientError::KeyNotAccepted { .. })),
        "{result:?}"
    );
    // The registry carries on serving.
    let mut client = server.client().await;
    client.register(&node(0, "after", 1)).await.unwrap();
}

#[tokio::test]
async fn a_wait_returns_when_the_cluster_fills() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut first = server.client().await;
    first.register(&node(0, "first", 1)).await.unwrap();
    first.create("pair", 2, 1).await.unwrap();
    first.join(None).await.unwrap();

    // An expired wait returns what is there.
    let partial = first
        .get_cluster(None, None, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(partial.which, 0b01);
    assert!(!partial.is_complete());

    let waiter = tokio::spawn(async move {
        let view = first
            .get_cluster(None, None, Duration::from_secs(60))
            .await
            .unwrap();
        first.bye().await.unwrap();
        view
    });
    let mut second = server.client().await;
    second.register(&node(1, "second", 1)).await.unwrap();
    second.join(Some(&name("pair"))).await.unwrap();
    let view = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(view.is_complete());
    assert_eq!(view.which, 0b11);
}
