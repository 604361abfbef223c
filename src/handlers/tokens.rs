//! MintToken and RevokeToken: the owner adds a join token to its cluster, or revokes one
//! (docs/protocol.md section 14.6). ListTokens is a read: `get_cluster::list_tokens`.
//!
//! The handler checks the fields; the store checks the owner proof against the cluster's
//! owner key inside the transaction that changes the tokens.

use super::{cluster_ref, new_token, owner_proof, HandlerError, SessionState};
use crate::model::admission::check_token_id;
use crate::model::{OwnerChange, Write};
use crate::proto::XlRegMsg;

/// Checks a MintToken and returns the change to store.
pub fn mint(state: &SessionState, msg: &XlRegMsg, now_ms: u64) -> Result<Write, HandlerError> {
    let proof = owner_proof(state, msg)?;
    let spec = msg
        .new_token
        .as_ref()
        .ok_or_else(|| HandlerError::BadRequest("MintToken needs a NewToken".to_string()))?;
    Ok(Write::Owner {
        cluster: cluster_ref(msg, None, "MintToken")?,
        proof,
        change: OwnerChange::Mint(new_token(spec)?),
        now_ms,
    })
}

/// Checks a RevokeToken and returns the change to store.
pub fn revoke(state: &SessionState, msg: &XlRegMsg, now_ms: u64) -> Result<Write, HandlerError> {
    let proof = owner_proof(state, msg)?;
    let tid = msg
        .token_id
        .as_deref()
        .ok_or_else(|| HandlerError::BadRequest("RevokeToken needs a TokenId".to_string()))?;
    check_token_id(tid).map_err(|e| HandlerError::BadRequest(format!("TokenId: {e}")))?;
    Ok(Write::Owner {
        cluster: cluster_ref(msg, None, "RevokeToken")?,
        proof,
        change: OwnerChange::Revoke(tid.to_string()),
        now_ms,
    })
}
