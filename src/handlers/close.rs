//! CloseCluster: the owner closes the cluster to new members; members stay and may rejoin
//! (docs/protocol.md section 14.6).

use super::{cluster_ref, owner_proof, HandlerError, SessionState};
use crate::model::{OwnerChange, Write};
use crate::proto::XlRegMsg;

/// Checks a CloseCluster and returns the change to store.
pub fn prepare(state: &SessionState, msg: &XlRegMsg, now_ms: u64) -> Result<Write, HandlerError> {
    Ok(Write::Owner {
        proof: owner_proof(state, msg)?,
        cluster: cluster_ref(msg, None, "CloseCluster")?,
        change: OwnerChange::Close,
        now_ms,
    })
}
