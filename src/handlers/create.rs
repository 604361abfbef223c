//! Create: make a named cluster, or find the existing one of that name.
//!
//! The name must be a valid cluster name; the requested size is clamped to 2..=64 and the
//! size the cluster got is reported; the endpoint count must be 1..=8 (default 1). Creating
//! an existing name returns that cluster unchanged, as the Go registry did, so every member
//! of a fleet may race to create its cluster and all of them learn the same ID, but only to
//! its own creator (docs/protocol.md section 14.5).
//!
//! With an OwnerKey the cluster gets an owner (who proves holding the credential with
//! OwnerSig), a policy (admission-controlled unless Open) and optionally a first join token;
//! without one it is open and ownerless, as every cluster was before admission. The 1.9 wire
//! has no session binding: its Creates always make open clusters.

use super::{new_token, owner_proof, HandlerError, SessionState};
use crate::model::admission::VERIFIER_LEN;
use crate::model::{NewAdmission, NewCluster, Write};
use crate::proto::XlRegMsg;
use crate::validate;

/// The admission part of a Create: its owner, policy and first token.
fn admission(state: &SessionState, msg: &XlRegMsg) -> Result<NewAdmission, HandlerError> {
    let Some(owner_key) = msg.owner_key.as_ref().filter(|_| !state.binding.is_empty()) else {
        if !state.binding.is_empty()
            && (msg.owner_sig.is_some() || msg.new_token.is_some() || msg.open == Some(false))
        {
            return Err(HandlerError::BadRequest(
                "a Create without OwnerKey makes an open cluster without owner: \
                 OwnerSig, NewToken and Open = false need an OwnerKey"
                    .to_string(),
            ));
        }
        return Ok(NewAdmission::default());
    };
    if owner_key.len() != VERIFIER_LEN {
        return Err(HandlerError::BadRequest(format!(
            "OwnerKey must be {VERIFIER_LEN} bytes, not {}",
            owner_key.len()
        )));
    }
    let proof = owner_proof(state, msg)?;
    let first_token = msg.new_token.as_ref().map(new_token).transpose()?;
    Ok(NewAdmission {
        owner: Some((owner_key.clone(), proof)),
        open: msg.open.unwrap_or(false),
        first_token,
    })
}

/// Checks the request and returns the cluster to create (or find); the reply is built by
/// [`finish`](super::finish) from what the store did.
pub fn prepare(state: &SessionState, msg: &XlRegMsg, now_ms: u64) -> Result<Write, HandlerError> {
    let name = msg
        .cluster_name
        .as_deref()
        .ok_or_else(|| HandlerError::BadRequest("Create needs a ClusterName".to_string()))?;
    validate::cluster_name(name)?;
    let requested = msg
        .cluster_max_size
        .ok_or_else(|| HandlerError::BadRequest("Create needs a ClusterMaxSize".to_string()))?;
    let max_size = validate::clamp_cluster_size(requested);
    let endpoint_count = validate::endpoint_count(msg.end_point_count.unwrap_or(1))?;
    let admission = admission(state, msg)?;
    Ok(Write::CreateCluster {
        cluster: NewCluster {
            admission,
            name: name.to_string(),
            attrs: msg.cluster_attrs.unwrap_or(0),
            max_size,
            endpoint_count,
        },
        now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{apply, NOW};
    use crate::handlers::{Reply, SessionState};
    use crate::proto::Tag;
    use crate::store::{AdminStore, MemoryStore};

    fn create(
        store: &MemoryStore,
        name: &str,
        size: u32,
        endpoints: Option<u32>,
    ) -> Result<Reply, HandlerError> {
        let msg = XlRegMsg {
            op: Some(Tag::Create as i32),
            cluster_name: Some(name.to_string()),
            cluster_max_size: Some(size),
            end_point_count: endpoints,
            ..XlRegMsg::default()
        };
        apply(
            store,
            &mut SessionState::default(),
            prepare(&SessionState::default(), &msg, NOW),
        )
    }

    #[test]
    fn sizes_are_clamped_and_reported() {
        let store = MemoryStore::new();
        for (i, (asked, got)) in [(0, 2), (1, 2), (5, 5), (65, 64), (u32::MAX, 64)]
            .into_iter()
            .enumerate()
        {
            let reply = create(&store, &format!("c{i}"), asked, None).unwrap();
            assert!(reply.changed);
            assert_eq!(reply.msg.cluster_max_size, Some(got), "asked {asked}");
            assert_eq!(reply.msg.end_point_count, Some(1));
            assert_eq!(reply.msg.cluster_id.unwrap().len(), 32);
        }
    }

    #[test]
    fn an_existing_name_returns_the_existing_cluster_unchanged() {
        let store = MemoryStore::new();
        let first = create(&store, "web", 3, Some(2)).unwrap();
        let second = create(&store, "web", 9, Some(1)).unwrap();
        assert!(!second.changed);
        assert_eq!(first.msg.cluster_id, second.msg.cluster_id);
        assert_eq!(second.msg.cluster_max_size, Some(3));
        assert_eq!(second.msg.end_point_count, Some(2));
    }

    #[test]
    fn bad_names_and_endpoint_counts_are_refused() {
        let store = MemoryStore::new();
        assert!(create(&store, "9x", 3, None)
            .unwrap_err()
            .to_string()
            .contains("must start"));
        assert!(create(&store, "x", 3, Some(0))
            .unwrap_err()
            .to_string()
            .contains("endpoint count 0"));
        assert!(create(&store, "x", 3, Some(9))
            .unwrap_err()
            .to_string()
            .contains("endpoint count 9"));
        assert_eq!(store.counts().unwrap().clusters, 0);
    }
}
