//! GetCluster: list a cluster's members.
//!
//! The request names the cluster (by ID or name; default: the one this session joined, else
//! created) and the slots wanted as a bitmap `Which` (default: all). Bits beyond the
//! cluster's size are ignored. The reply lists the present members among those slots in slot
//! order, with `Which` set to the bits actually returned. With `WaitMs` the reply may be held
//! until every requested slot is filled or the wait ends: [`answer`] then says
//! [`GetOutcome::Wait`], and the session core reads the cluster again when it changes or the
//! time is up. The handler reads nothing itself: [`request`] says what to read, [`answer`]
//! takes what was read, so no store and no clock live here.

use super::{
    cluster_ref, member_token, owner_proof, token_claim, token_info, with_cluster, HandlerError,
    SessionState,
};
use crate::id::Id;
use crate::model::admission::OwnerOp;
use crate::model::rules::{self, Asker};
use crate::model::ClusterView;
use crate::model::{ClusterRef, Refusal};
use crate::proto::{Tag, XlRegMsg};

/// The longest a client may ask the registry to hold a GetCluster reply.
pub const MAX_WAIT_MS: u32 = 600_000;

/// A GetCluster, checked: which cluster to read and what to answer from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    /// The cluster to read.
    pub target: ClusterRef,
    /// The slots requested (bits beyond the cluster's size are ignored when answering).
    pub which: u64,
    /// How long the client asked to wait, in milliseconds (at most [`MAX_WAIT_MS`]).
    pub wait_ms: u32,
    /// Who asks (docs/protocol.md section 14.8): checked against the cluster on every read.
    pub asker: Asker,
    /// A ListTokens (the owner's token list) rather than a member list.
    pub list_tokens: bool,
    /// The time of the request, ms since the Unix epoch (for token expiry).
    pub now_ms: u64,
}

/// A GetCluster reply held until the cluster fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// The cluster awaited.
    pub cluster: Id,
    /// The slots requested, already limited to the cluster's size.
    pub which: u64,
    /// How long the client asked to wait, in milliseconds (at most [`MAX_WAIT_MS`]).
    pub wait_ms: u32,
    /// Who asks.
    pub asker: Asker,
    /// The time of the request.
    pub now_ms: u64,
}

impl Wait {
    /// The request that reads the awaited cluster again.
    pub fn request(&self) -> GetRequest {
        GetRequest {
            target: ClusterRef::Id(self.cluster.clone()),
            which: self.which,
            wait_ms: self.wait_ms,
            asker: self.asker.clone(),
            list_tokens: false,
            now_ms: self.now_ms,
        }
    }
}

/// What a GetCluster produces now.
#[derive(Debug, Clone, PartialEq)]
pub enum GetOutcome {
    /// The ClusterMembers reply.
    Ready(Box<XlRegMsg>),
    /// Not every requested slot is filled and the client asked to wait.
    Wait(Wait),
}

/// The bitmap of every slot a cluster of `max_size` can have.
fn all_slots(max_size: u32) -> u64 {
    if max_size >= 64 {
        u64::MAX
    } else {
        (1u64 << max_size) - 1
    }
}

/// Whether a GetCluster carries a proof (a list-token's or the owner's): then it is allowed
/// before Member (docs/protocol.md section 14.4).
pub fn has_proof(msg: &XlRegMsg) -> bool {
    msg.token_proof.is_some() || msg.owner_sig.is_some()
}

/// Who a GetCluster comes from: the owner (OwnerSig), a token holder (TokenId and
/// TokenProof), or the session's node.
fn asker(state: &SessionState, msg: &XlRegMsg) -> Result<Asker, HandlerError> {
    if msg.owner_sig.is_some() {
        return Ok(Asker::Owner(owner_proof(state, msg)?, OwnerOp::Get));
    }
    Ok(match token_claim(state, msg)? {
        Some(claim) => Asker::Token(claim),
        None => Asker::Node(state.node.as_ref().map(|n| n.id.clone())),
    })
}

/// Checks a GetCluster and says which cluster to read.
pub fn request(
    state: &SessionState,
    msg: &XlRegMsg,
    now_ms: u64,
) -> Result<GetRequest, HandlerError> {
    let target = cluster_ref(
        msg,
        state.joined.as_ref().or(state.created.as_ref()),
        "GetCluster",
    )?;
    Ok(GetRequest {
        target,
        which: msg.which.unwrap_or(u64::MAX),
        wait_ms: msg.wait_ms.unwrap_or(0).min(MAX_WAIT_MS),
        asker: asker(state, msg)?,
        list_tokens: false,
        now_ms,
    })
}

/// Checks a ListTokens (the owner's) and says which cluster to read.
pub fn list_tokens(
    state: &SessionState,
    msg: &XlRegMsg,
    now_ms: u64,
) -> Result<GetRequest, HandlerError> {
    let proof = owner_proof(state, msg)?;
    Ok(GetRequest {
        target: cluster_ref(msg, None, "ListTokens")?,
        which: 0,
        wait_ms: 0,
        asker: Asker::Owner(proof, OwnerOp::ListTokens),
        list_tokens: true,
        now_ms,
    })
}

/// Answers `request` from the cluster read for it (`None`: there is no such cluster). Holds
/// the reply ([`GetOutcome::Wait`]) if a requested slot is empty and the client asked to
/// wait, unless the wait is over (`expired`: reply with what is there).
pub fn answer(
    request: &GetRequest,
    view: Option<ClusterView>,
    expired: bool,
) -> Result<GetOutcome, HandlerError> {
    let named = request.target.to_string();
    rules::may_see(
        view.as_ref().map(|v| &v.cluster),
        &request.asker,
        &named,
        request.now_ms,
    )?;
    let view = view.ok_or(Refusal::NoSuchCluster(named))?;
    let cluster = &view.cluster;
    if request.list_tokens {
        let mut reply = with_cluster(Tag::TokenList, cluster);
        reply.token_infos = cluster.admission.tokens.iter().map(token_info).collect();
        return Ok(GetOutcome::Ready(Box::new(reply)));
    }
    let which = request.which & all_slots(cluster.max_size);
    let present = cluster
        .members
        .iter()
        .filter(|m| m.slot < 64)
        .fold(0u64, |bits, m| bits | (1u64 << m.slot));
    let returned = which & present;
    if returned != which && request.wait_ms > 0 && !expired {
        return Ok(GetOutcome::Wait(Wait {
            cluster: cluster.id.clone(),
            which,
            wait_ms: request.wait_ms,
            asker: request.asker.clone(),
            now_ms: request.now_ms,
        }));
    }
    let mut reply = with_cluster(Tag::ClusterMembers, cluster);
    reply.which = Some(returned);
    for (member, node) in view.members() {
        if member.slot < 64 && returned & (1u64 << member.slot) != 0 {
            reply
                .tokens
                .push(member_token(member, node, cluster.endpoint_count));
        }
    }
    Ok(GetOutcome::Ready(Box::new(reply)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{apply, get as read_and_answer, member_msg, NOW, SALT};
    use crate::handlers::{create, join, member};
    use crate::store::MemoryStore;
    use crate::token::Scheme;

    fn member_in(
        store: &MemoryStore,
        keys: usize,
        name: &str,
        cluster: &str,
        size: u32,
    ) -> SessionState {
        let mut state = SessionState::default();
        let msg = member_msg(keys, name, None, &["127.0.0.1:1", "127.0.0.1:2"]);
        let scheme = Scheme::V2 { server_salt: &SALT };
        apply(store, &mut state, member::prepare(&msg, scheme, NOW)).unwrap();
        {
            let create_msg = XlRegMsg {
                cluster_name: Some(cluster.into()),
                cluster_max_size: Some(size),
                ..XlRegMsg::default()
            };
            apply(
                store,
                &mut state,
                create::prepare(&SessionState::default(), &create_msg, NOW),
            )
            .unwrap();
            let join = join::prepare(&state, &XlRegMsg::default(), NOW);
            apply(store, &mut state, join).unwrap();
        }
        state
    }

    fn get(
        store: &MemoryStore,
        state: &SessionState,
        which: Option<u64>,
        wait_ms: Option<u32>,
    ) -> GetOutcome {
        let msg = XlRegMsg {
            which,
            wait_ms,
            ..XlRegMsg::default()
        };
        read_and_answer(store, state, &msg, false).unwrap()
    }

    #[test]
    fn lists_members_in_slot_order_with_the_returned_bitmap() {
        let store = MemoryStore::new();
        let a = member_in(&store, 0, "a", "trio", 3);
        let _b = member_in(&store, 1, "b", "trio", 3);
        let GetOutcome::Ready(reply) = get(&store, &a, None, None) else {
            panic!("no wait was asked")
        };
        assert_eq!(reply.which, Some(0b011));
        assert_eq!(reply.cluster_size, Some(2));
        let names: Vec<_> = reply
            .tokens
            .iter()
            .map(|t| t.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(reply.tokens[0].my_ends.len(), 2);
        assert!(reply.tokens[0].dig_sig.is_none());
        // Bits beyond the cluster's size are ignored; absent slots are simply not returned.
        let GetOutcome::Ready(reply) = get(&store, &a, Some(u64::MAX << 1), None) else {
            panic!()
        };
        assert_eq!(reply.which, Some(0b010));
    }

    #[test]
    fn a_member_that_registers_new_endpoints_is_listed_at_them_where_they_suffice() {
        let store = MemoryStore::new();
        let mut a = member_in(&store, 0, "a", "web", 3);
        // A second cluster that needs two endpoints per member, joined with the two.
        let two = XlRegMsg {
            cluster_name: Some("two".into()),
            cluster_max_size: Some(3),
            end_point_count: Some(2),
            ..XlRegMsg::default()
        };
        apply(
            &store,
            &mut a,
            create::prepare(&SessionState::default(), &two, NOW),
        )
        .unwrap();
        let join_two = join::prepare(&a, &XlRegMsg::default(), NOW);
        apply(&store, &mut a, join_two).unwrap();
        // The node moves: it registers again, under its ID, with one new endpoint.
        let id = a.node.as_ref().unwrap().id.clone();
        let moved = member_msg(0, "a", Some(&id), &["10.0.0.9:7"]);
        let scheme = Scheme::V2 { server_salt: &SALT };
        apply(&store, &mut a, member::prepare(&moved, scheme, NOW)).unwrap();
        let listed = |cluster: &str| {
            let msg = XlRegMsg {
                cluster_name: Some(cluster.into()),
                ..XlRegMsg::default()
            };
            let GetOutcome::Ready(reply) = read_and_answer(&store, &a, &msg, false).unwrap() else {
                panic!("no wait was asked")
            };
            reply.tokens[0].my_ends.clone()
        };
        assert_eq!(listed("web"), ["10.0.0.9:7"]);
        // One endpoint is too few for "two": it lists the two the node joined with.
        assert_eq!(listed("two"), ["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[test]
    fn a_wait_holds_until_the_cluster_is_complete_or_the_time_is_up() {
        let store = MemoryStore::new();
        let a = member_in(&store, 0, "a", "pair", 2);
        let GetOutcome::Wait(wait) = get(&store, &a, None, Some(5_000)) else {
            panic!("slot 1 is empty: the reply must be held")
        };
        assert_eq!(wait.which, 0b11);
        let again = XlRegMsg {
            cluster_id: Some(wait.cluster.as_bytes().to_vec()),
            which: Some(wait.which),
            wait_ms: Some(wait.wait_ms),
            ..XlRegMsg::default()
        };
        let expired = read_and_answer(&store, &a, &again, true).unwrap();
        assert!(matches!(expired, GetOutcome::Ready(ref m) if m.which == Some(0b01)));
        let _b = member_in(&store, 1, "b", "pair", 2);
        let filled = read_and_answer(&store, &a, &again, false).unwrap();
        assert!(matches!(filled, GetOutcome::Ready(ref m) if m.which == Some(0b11)));
    }
}
