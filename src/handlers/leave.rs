//! Leave: the session's node leaves a cluster it is a member of; its slot is free, and
//! waiters on the cluster are woken by the store (docs/protocol.md section 14.8).
//!
//! A member acts as itself: its Member in this session was signed by its RSA key over the
//! session binding, so Leave needs no other proof.

use super::{cluster_ref, HandlerError, SessionState};
use crate::model::Write;
use crate::proto::XlRegMsg;

/// Checks a Leave and returns the change to store.
pub fn prepare(state: &SessionState, msg: &XlRegMsg) -> Result<Write, HandlerError> {
    let node = state
        .node
        .as_ref()
        .ok_or_else(|| HandlerError::BadRequest("Leave before Member".to_string()))?;
    Ok(Write::Leave {
        cluster: cluster_ref(msg, state.joined.as_ref(), "Leave")?,
        node: node.id.clone(),
    })
}
