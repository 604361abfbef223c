//! Join: the session's node takes a slot in a cluster.
//!
//! The cluster is named by ID, by name, or (neither) is the one the session last created.
//! The store decides inside one transaction: a node already in the cluster gets its slot
//! back (a restarted node rejoins), a different node with the same name is refused, a full
//! cluster is refused, a node with fewer endpoints than the cluster requires is refused.
//! An admission-controlled cluster admits a new member only with a join proof (TokenId and
//! TokenProof, docs/protocol.md section 14.7), checked and counted in the same transaction.

use super::{cluster_ref, token_claim, HandlerError, SessionState};
use crate::model::Write;
use crate::proto::XlRegMsg;

/// Checks the request and returns the join to store; the reply is built by
/// [`finish`](super::finish) from what the store did.
pub fn prepare(state: &SessionState, msg: &XlRegMsg, now_ms: u64) -> Result<Write, HandlerError> {
    let node = state
        .node
        .as_ref()
        .ok_or_else(|| HandlerError::BadRequest("Join before Member".to_string()))?;
    let cluster = cluster_ref(msg, state.created.as_ref(), "Join")?;
    let token = token_claim(state, msg)?;
    Ok(Write::Join {
        token,
        cluster,
        node: node.id.clone(),
        now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{apply, member_msg, NOW, SALT};
    use crate::handlers::{create, member, Reply};
    use crate::proto::Tag;
    use crate::store::MemoryStore;
    use crate::token::Scheme;

    fn session(store: &MemoryStore, keys: usize, name: &str) -> SessionState {
        let mut state = SessionState::default();
        let msg = member_msg(keys, name, None, &["127.0.0.1:1"]);
        let scheme = Scheme::V2 { server_salt: &SALT };
        apply(store, &mut state, member::prepare(&msg, scheme, NOW)).unwrap();
        state
    }

    fn join_by_name(
        store: &MemoryStore,
        state: &mut SessionState,
        cluster: &str,
    ) -> Result<Reply, HandlerError> {
        let msg = XlRegMsg {
            op: Some(Tag::Join as i32),
            cluster_name: Some(cluster.to_string()),
            ..XlRegMsg::default()
        };
        let join = prepare(state, &msg, NOW);
        apply(store, state, join)
    }

    #[test]
    fn members_take_slots_in_order_and_a_full_cluster_refuses() {
        let store = MemoryStore::new();
        let mut a = session(&store, 0, "a");
        let create_msg = XlRegMsg {
            op: Some(Tag::Create as i32),
            cluster_name: Some("pair".into()),
            cluster_max_size: Some(2),
            ..XlRegMsg::default()
        };
        apply(
            &store,
            &mut a,
            create::prepare(&SessionState::default(), &create_msg, NOW),
        )
        .unwrap();
        // Neither ID nor name: the cluster this session created.
        let join = prepare(&a, &XlRegMsg::default(), NOW);
        let joined = apply(&store, &mut a, join).unwrap();
        assert_eq!(joined.msg.slot, Some(0));
        let mut b = session(&store, 1, "b");
        assert_eq!(
            join_by_name(&store, &mut b, "pair").unwrap().msg.slot,
            Some(1)
        );
        // Rejoining gives the same slot back, even though the cluster is full.
        assert_eq!(
            join_by_name(&store, &mut b, "pair").unwrap().msg.slot,
            Some(1)
        );
        let mut c = session(&store, 2, "c");
        let err = join_by_name(&store, &mut c, "pair").unwrap_err();
        assert_eq!(err.to_string(), "cluster pair is full (2/2)");
        assert_eq!(err.code(), crate::proto::ErrCode::ClusterFull);
    }

    #[test]
    fn unknown_clusters_and_missing_names_are_refused() {
        let store = MemoryStore::new();
        let mut a = session(&store, 0, "a");
        assert!(join_by_name(&store, &mut a, "nope")
            .unwrap_err()
            .to_string()
            .contains("nope"));
        let by_id = XlRegMsg {
            cluster_id: Some(vec![1u8; 32]),
            ..XlRegMsg::default()
        };
        let join = prepare(&a, &by_id, NOW);
        let err = apply(&store, &mut a, join).unwrap_err();
        assert_eq!(err.code(), crate::proto::ErrCode::NotFound);
        let err = prepare(&a, &XlRegMsg::default(), NOW).unwrap_err();
        assert!(err.to_string().contains("names no cluster"), "{err}");
    }
}
