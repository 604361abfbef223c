//! Full sessions against a real `xlreg serve` process over loopback: every message path.

mod common;

use std::time::Duration;

use common::{node, Server};
use xlreg::store::ClusterRef;

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
    let by_name = client
        .get_cluster(Some(&ClusterRef::Name("pair".into())), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(by_name, view);
    client.bye().await.unwrap();
}
