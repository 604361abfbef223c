//! Registry-wide caps (`serve --max-clusters`, `--max-nodes`): a create or a registration
//! beyond a cap is refused with a clear error and changes nothing; the rest is served.

mod common;

use common::{node, Server};
use xlreg::client::ClientError;
use xlreg::proto::ErrCode;

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
        Err(ClientError::Refused { code, description }) => {
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
