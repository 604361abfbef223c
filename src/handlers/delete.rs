//! DeleteCluster: the owner deletes the cluster with its members and tokens; the name is free
//! again (docs/protocol.md section 14.6).

use super::{cluster_ref, owner_proof, HandlerError, SessionState};
use crate::model::{OwnerChange, Write};
use crate::proto::XlRegMsg;

/// Checks a DeleteCluster and returns the change to store.
pub fn prepare(state: &SessionState, msg: &XlRegMsg, now_ms: u64) -> Result<Write, HandlerError> {
    Ok(Write::Owner {
        proof: owner_proof(state, msg)?,
        cluster: cluster_ref(msg, None, "DeleteCluster")?,
        change: OwnerChange::Delete,
        now_ms,
    })
}
