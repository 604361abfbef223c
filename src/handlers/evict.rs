//! Evict: the owner removes a member (named by its node ID, MemberID); its slot is free for
//! the next new member (docs/protocol.md section 14.6).

use super::{cluster_ref, owner_proof, HandlerError, SessionState};
use crate::id::Id;
use crate::model::{OwnerChange, Write};
use crate::proto::XlRegMsg;

/// Checks an Evict and returns the change to store.
pub fn prepare(state: &SessionState, msg: &XlRegMsg, now_ms: u64) -> Result<Write, HandlerError> {
    let proof = owner_proof(state, msg)?;
    let member = msg
        .member_id
        .as_deref()
        .ok_or_else(|| HandlerError::BadRequest("Evict needs a MemberID".to_string()))?;
    let member =
        Id::from_bytes(member).map_err(|e| HandlerError::BadRequest(format!("MemberID: {e}")))?;
    Ok(Write::Owner {
        cluster: cluster_ref(msg, None, "Evict")?,
        proof,
        change: OwnerChange::Evict(member),
        now_ms,
    })
}
