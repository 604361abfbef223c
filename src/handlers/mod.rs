//! The request handlers: what each request does to the registry, independent of the wire.
//!
//! One file per request (member, create, join, get_cluster, bye; and for admission,
//! docs/protocol.md section 14: tokens (MintToken, RevokeToken), evict, close, delete,
//! leave), after mini-redis's `cmd/`. A handler checks the decoded message against the
//! session's small [`SessionState`] and says what to do: the [`Write`](crate::store::Write)
//! to apply (the reply is built by [`finish`] from what the store did) or the cluster to read
//! (get_cluster, and ListTokens through it; the reply is built from what was read), or a
//! [`HandlerError`] that the session core turns into an Error message. This module also owns
//! reading the admission fields every request shares: the owner proof, a token proof, a new
//! token's spec, each bound to the session's binding. Handlers own no store handle, no clock (the time comes in as an argument)
//! and no state of their own, so both wire protocols (xlReg/2 and the 1.9 legacy wire) share
//! them, and they are testable without sockets, stores or clocks.

pub mod bye;
pub mod close;
pub mod create;
pub mod delete;
pub mod evict;
pub mod get_cluster;
pub mod join;
pub mod leave;
pub mod member;
pub mod tokens;

use crate::id::Id;
use crate::model::admission::{check_token_id, PROOF_LEN, VERIFIER_LEN};
use crate::model::{
    ClusterRecord, ClusterRef, MemberRecord, NewToken, NodeRecord, Proof, Refusal,
    RegistrationOutcome, StorageError, StoreError, TokenClaim, TokenRecord, Written, USAGE_JOIN,
    USAGE_LIST,
};
use crate::proto::{ErrCode, JoinToken, Tag, XlRegMsg, XlRegToken};
use crate::validate::Invalid;

/// What one session has established so far. Small and per-connection; nothing here outlives
/// the connection.
#[derive(Debug, Default, Clone)]
pub struct SessionState {
    /// The node this session registered as (after Member).
    pub node: Option<NodeRecord>,
    /// The cluster created or found by the last Create.
    pub created: Option<Id>,
    /// The cluster joined by the last Join.
    pub joined: Option<Id>,
    /// What admission proofs in this session are bound to (docs/protocol.md section 14.2):
    /// the registry's salt (xlReg/2) or the handshake hash (xlReg/3). Empty on the 1.9
    /// wire, which has no binding and therefore takes no proofs.
    pub binding: Vec<u8>,
}

/// A reply, and whether the request changed the store (then the reply may be sent only
/// once the change is durable).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The reply message.
    pub msg: XlRegMsg,
    /// True if the request wrote to the store.
    pub changed: bool,
}

/// Why a request was refused. Each variant maps to an error class on the wire
/// ([`HandlerError::code`]) and its text is sent to the client as the error description.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A field is missing, malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The token's signature does not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// The registry's rules refused the request (full cluster, name taken, unknown cluster,
    /// a full registry, ...).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed: the request may or may not have been applied.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> HandlerError {
        match error {
            StoreError::Refused(refusal) => HandlerError::Refused(refusal),
            StoreError::Storage(failure) => HandlerError::Storage(failure),
        }
    }
}

impl From<Invalid> for HandlerError {
    fn from(invalid: Invalid) -> HandlerError {
        HandlerError::BadRequest(invalid.0)
    }
}

impl HandlerError {
    /// The error class sent with the description. Every refusal is mapped here, by name:
    /// a new refusal does not compile until it is given its class.
    pub fn code(&self) -> ErrCode {
        match self {
            HandlerError::BadRequest(_) => ErrCode::BadRequest,
            HandlerError::Unauthorized(_) => ErrCode::Unauthorized,
            HandlerError::Refused(refusal) => match refusal {
                Refusal::NoSuchCluster(_)
                | Refusal::NoSuchNode(_)
                | Refusal::NoSuchToken { .. }
                | Refusal::NotAMember { .. } => ErrCode::NotFound,
                Refusal::ClusterFull { .. } => ErrCode::ClusterFull,
                Refusal::MemberNameTaken { .. }
                | Refusal::NodeKeyMismatch { .. }
                | Refusal::NameTaken(_)
                | Refusal::TokenIdTaken { .. } => ErrCode::Conflict,
                Refusal::BadProof { .. } => ErrCode::Unauthorized,
                Refusal::TokenRefused { .. }
                | Refusal::ClusterClosed(_)
                | Refusal::TooManyTokens(_) => ErrCode::Forbidden,
                Refusal::TooFewEndpoints { .. } => ErrCode::BadRequest,
                // The protocol has no class for it: Unavailable says "not now", and the
                // text says why (an operator may raise the cap or delete clusters).
                Refusal::RegistryFull { .. } => ErrCode::Unavailable,
                // Temporary: retry later, as the text says when.
                Refusal::OverQuota { .. } => ErrCode::Unavailable,
            },
            HandlerError::Storage(_) => ErrCode::Unavailable,
        }
    }

    /// The description sent to the client. Storage failures are described generically: the
    /// details go to the registry's log, not to the network.
    pub fn description(&self) -> String {
        match self {
            HandlerError::Storage(StorageError::Failed(_)) => {
                "registry storage has failed; the registry is restarting, try again shortly"
                    .to_string()
            }
            HandlerError::Storage(_) => {
                "registry storage is unavailable; try again later".to_string()
            }
            _ => self.to_string(),
        }
    }

    /// How long the client should wait before a retry can succeed, when the registry knows
    /// (sent as the Error's RetryAfterMs): only for a used-up quota.
    pub fn retry_after_ms(&self) -> Option<u32> {
        match self {
            HandlerError::Refused(Refusal::OverQuota { retry_after_ms, .. }) => {
                Some(u32::try_from(*retry_after_ms).unwrap_or(u32::MAX))
            }
            _ => None,
        }
    }

    /// The class and description an Error reply carries, logging the details of a storage
    /// failure (which the client does not get; a failed storage was logged once already,
    /// when it failed). Both wires refuse requests through this.
    pub fn refusal(&self) -> (ErrCode, String) {
        if let HandlerError::Storage(failure) = self {
            if !matches!(failure, StorageError::Failed(_)) {
                tracing::error!(error = %failure, "request failed in the store");
            }
        }
        (self.code(), self.description())
    }
}

/// Builds the reply to a Member, Create or Join from what the store did with its [`Write`](crate::store::Write),
/// and records in `state` what the session now is (its node, the cluster it created or
/// joined).
pub fn finish(state: &mut SessionState, written: Written) -> Reply {
    match written {
        Written::Node(registration) => {
            let node = registration.node;
            let msg = XlRegMsg {
                op: Some(Tag::MemberOk as i32),
                member_id: Some(node.id.as_bytes().to_vec()),
                member_attrs: Some(node.attrs),
                ..XlRegMsg::default()
            };
            state.node = Some(node);
            Reply {
                msg,
                changed: registration.outcome != RegistrationOutcome::Unchanged,
            }
        }
        Written::Cluster(cluster, created) => {
            state.created = Some(cluster.id.clone());
            Reply {
                msg: with_cluster(Tag::CreateReply, &cluster),
                changed: created,
            }
        }
        Written::Joined(outcome) => {
            let mut msg = with_cluster(Tag::JoinReply, &outcome.cluster);
            msg.slot = Some(outcome.slot);
            state.joined = Some(outcome.cluster.id);
            Reply { msg, changed: true }
        }
        Written::Token(cluster, token) => {
            let mut msg = with_cluster(Tag::TokenList, &cluster);
            msg.token_infos = vec![token_info(&token)];
            Reply { msg, changed: true }
        }
        Written::Changed(cluster) => Reply {
            msg: with_cluster(Tag::Done, &cluster),
            changed: true,
        },
    }
}

/// A token as listed: never its secret, nor its verifier.
pub(crate) fn token_info(token: &TokenRecord) -> JoinToken {
    JoinToken {
        id: Some(token.id.clone()),
        usages: Some(token.usages),
        expires_at_ms: Some(token.expires_at_ms),
        created_at_ms: Some(token.created_at_ms),
        uses_left: token.uses_left,
        revoked: Some(token.revoked),
        ..JoinToken::default()
    }
}

/// An Error message with a description and class.
pub fn error_message(code: ErrCode, description: impl Into<String>) -> XlRegMsg {
    XlRegMsg {
        op: Some(Tag::Error as i32),
        err_desc: Some(description.into()),
        err_kind: Some(code as i32),
        ..XlRegMsg::default()
    }
}

/// The cluster a request names: by ID, else by name, else the session's default.
pub(crate) fn cluster_ref(
    msg: &XlRegMsg,
    default: Option<&Id>,
    what: &str,
) -> Result<ClusterRef, HandlerError> {
    if let Some(bytes) = &msg.cluster_id {
        let id = Id::from_bytes(bytes)
            .map_err(|e| HandlerError::BadRequest(format!("ClusterID: {e}")))?;
        return Ok(ClusterRef::Id(id));
    }
    if let Some(name) = &msg.cluster_name {
        crate::validate::cluster_name(name)?;
        return Ok(ClusterRef::Name(name.clone()));
    }
    default.map(|id| ClusterRef::Id(id.clone())).ok_or_else(|| {
        HandlerError::BadRequest(format!(
            "{what} names no cluster (ClusterID or ClusterName)"
        ))
    })
}

/// The owner proof a request carries (OwnerSig), bound to this session.
pub(crate) fn owner_proof(state: &SessionState, msg: &XlRegMsg) -> Result<Proof, HandlerError> {
    let signature = msg
        .owner_sig
        .as_ref()
        .ok_or_else(|| HandlerError::BadRequest("this request needs an OwnerSig".to_string()))?;
    proof_of(state, signature, "OwnerSig")
}

fn proof_of(state: &SessionState, signature: &[u8], what: &str) -> Result<Proof, HandlerError> {
    if signature.len() != PROOF_LEN {
        return Err(HandlerError::BadRequest(format!(
            "{what} must be {PROOF_LEN} bytes, not {}",
            signature.len()
        )));
    }
    if state.binding.is_empty() {
        return Err(HandlerError::BadRequest(format!(
            "{what}: this wire has no session binding to prove anything over"
        )));
    }
    Ok(Proof {
        binding: state.binding.clone(),
        signature: signature.to_vec(),
    })
}

/// The token proof a Join or GetCluster carries (TokenId and TokenProof, both or neither),
/// bound to this session. The 1.9 wire has no binding: it never presents a token.
pub(crate) fn token_claim(
    state: &SessionState,
    msg: &XlRegMsg,
) -> Result<Option<TokenClaim>, HandlerError> {
    if state.binding.is_empty() {
        return Ok(None);
    }
    match (&msg.token_id, &msg.token_proof) {
        (None, None) => Ok(None),
        (Some(id), Some(proof)) => {
            check_token_id(id).map_err(|e| HandlerError::BadRequest(format!("TokenId: {e}")))?;
            Ok(Some(TokenClaim {
                id: id.clone(),
                proof: proof_of(state, proof, "TokenProof")?,
            }))
        }
        _ => Err(HandlerError::BadRequest(
            "TokenId and TokenProof go together".to_string(),
        )),
    }
}

/// The token a Create or MintToken asks to store, checked.
pub(crate) fn new_token(spec: &JoinToken) -> Result<NewToken, HandlerError> {
    let bad = |text: String| HandlerError::BadRequest(format!("NewToken: {text}"));
    let id = spec
        .id
        .as_deref()
        .ok_or_else(|| bad("needs an Id".to_string()))?;
    check_token_id(id).map_err(|e| bad(e.to_string()))?;
    let verifier = spec
        .verifier_key
        .as_ref()
        .filter(|k| k.len() == VERIFIER_LEN)
        .ok_or_else(|| bad(format!("needs a VerifierKey of {VERIFIER_LEN} bytes")))?;
    let usages = spec.usages.unwrap_or(USAGE_JOIN);
    if usages == 0 || usages & !(USAGE_JOIN | USAGE_LIST) != 0 {
        return Err(bad(format!(
            "Usages {usages} is not 1 (join), 2 (list) or 3 (both)"
        )));
    }
    let ttl_ms = spec.ttl_ms.unwrap_or(DEFAULT_TOKEN_TTL_MS);
    if ttl_ms > MAX_TOKEN_TTL_MS {
        return Err(bad(format!(
            "TtlMs {ttl_ms} is beyond the longest lifetime, 366 days"
        )));
    }
    Ok(NewToken {
        id: id.to_string(),
        verifier: verifier.clone(),
        usages,
        ttl_ms,
        uses: spec.uses.filter(|uses| *uses > 0),
    })
}

/// A token's lifetime when the request names none: 24 hours.
pub const DEFAULT_TOKEN_TTL_MS: u64 = 24 * 3600 * 1000;
/// The longest token lifetime: 366 days.
pub const MAX_TOKEN_TTL_MS: u64 = 366 * 24 * 3600 * 1000;

/// The token describing one member in a member list: no signature (the registry vouches).
pub(crate) fn member_token(
    member: &MemberRecord,
    node: &NodeRecord,
    endpoint_count: u32,
) -> XlRegToken {
    // A node whose address changed sends Member with its new endpoints: its clusters list
    // those at once, without a Join per cluster. Unless it now offers fewer than the cluster
    // needs: then the ones it joined with, so a listing never breaks the cluster's rule.
    let current = u32::try_from(node.endpoints.len()).unwrap_or(u32::MAX) >= endpoint_count;
    XlRegToken {
        name: Some(member.name.clone()),
        attrs: Some(member.attrs),
        id: Some(member.node_id.as_bytes().to_vec()),
        comms_key: Some(node.comms_key.clone()),
        sig_key: Some(node.sig_key.clone()),
        my_ends: if current {
            node.endpoints.clone()
        } else {
            member.endpoints.clone()
        },
        dig_sig: None,
    }
}

/// The cluster description fields shared by CreateReply, JoinReply and ClusterMembers.
pub(crate) fn with_cluster(op: Tag, cluster: &ClusterRecord) -> XlRegMsg {
    XlRegMsg {
        op: Some(op as i32),
        cluster_id: Some(cluster.id.as_bytes().to_vec()),
        cluster_name: Some(cluster.name.clone()),
        cluster_max_size: Some(cluster.max_size),
        cluster_attrs: Some(cluster.attrs),
        end_point_count: Some(cluster.endpoint_count),
        cluster_size: Some(cluster.member_count()),
        open: Some(cluster.admission.open),
        closed: Some(cluster.admission.closed),
        ..XlRegMsg::default()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared fixtures for the handler tests: a temporary store and signed member tokens.

    use super::*;
    use crate::crypto::RsaKeyPair;
    use crate::model::Write;
    use crate::store::AdminStore;
    use crate::test_support::fixture_key;
    use crate::token::{self, TokenFields};
    use std::sync::OnceLock;

    /// Three key pairs shared by all handler tests: the committed test-only fixtures
    /// (key generation is slow).
    pub fn keys() -> &'static [(RsaKeyPair, RsaKeyPair); 3] {
        static KEYS: OnceLock<[(RsaKeyPair, RsaKeyPair); 3]> = OnceLock::new();
        KEYS.get_or_init(|| {
            let pair = |n: usize| (fixture_key(2 * n), fixture_key(2 * n + 1));
            [pair(0), pair(1), pair(2)]
        })
    }

    pub const SALT: [u8; 16] = [9u8; 16];

    /// A signed Member message for key set `which`, for the session salted with [`SALT`].
    pub fn member_msg(which: usize, name: &str, id: Option<&Id>, endpoints: &[&str]) -> XlRegMsg {
        member_msg_for(&SALT, which, name, id, endpoints)
    }

    /// A signed Member message for key set `which`, for the session salted with `salt`.
    pub fn member_msg_for(
        salt: &[u8],
        which: usize,
        name: &str,
        id: Option<&Id>,
        endpoints: &[&str],
    ) -> XlRegMsg {
        let (comms, sig) = &keys()[which];
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
        let fields = TokenFields {
            id: id.map(Id::as_bytes),
            name,
            attrs: 0,
            comms_key: comms.public_key().to_spki_der(),
            sig_key: sig.public_key().to_spki_der(),
            endpoints: &endpoints,
        };
        XlRegMsg {
            op: Some(Tag::Member as i32),
            member_specs: Some(token::sign_v2(&fields, sig, salt).unwrap()),
            ..XlRegMsg::default()
        }
    }

    /// The time the handler tests run at.
    pub const NOW: u64 = 1_000;

    /// Applies a prepared write to `store` at once (its own transaction) and finishes it,
    /// as a session would.
    pub fn apply(
        store: &dyn AdminStore,
        state: &mut SessionState,
        write: Result<Write, HandlerError>,
    ) -> Result<Reply, HandlerError> {
        let written = store.apply_now(&write?)?;
        Ok(finish(state, written))
    }

    /// Answers a GetCluster from what `store` holds now, as a session would.
    pub fn get(
        store: &dyn AdminStore,
        state: &SessionState,
        msg: &XlRegMsg,
        expired: bool,
    ) -> Result<get_cluster::GetOutcome, HandlerError> {
        let request = get_cluster::request(state, msg, NOW)?;
        let view = store.cluster_view(&request.target)?;
        get_cluster::answer(&request, view, expired)
    }
}
