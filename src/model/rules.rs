//! The registry's rules, as pure functions over records: registering a node, creating a
//! cluster, joining one, and when a cluster has expired.
//!
//! Each function is given the records as they are (read by the store inside its
//! transaction) and returns the records to store, or the [`Refusal`]; it never reads or
//! writes anything itself, so every backend applies exactly the same rules, and a refusal
//! is decided before anything is written (a refused write changes nothing).

use std::time::Duration;

use super::admission::{self, JoiningNode, OwnerOp};
use super::{
    Admission, ClusterRecord, JoinOutcome, MemberRecord, MismatchedKeys, NewAdmission, NewCluster,
    NewNode, NewToken, NodeRecord, OwnerChange, Proof, ProofKind, Refusal, Registration,
    RegistrationOutcome, TokenClaim, TokenProblem, TokenRecord, MAX_TOKENS_PER_CLUSTER, USAGE_JOIN,
    USAGE_LIST,
};
use crate::id::Id;

/// Registers `new` under `id`: `existing` is the node stored under that id, if any.
///
/// Without an existing record the node is created (first use of an id wins). With one, the
/// keys must match ([`Refusal::NodeKeyMismatch`] otherwise); a changed name, attributes or
/// endpoints are updated (the registration time is kept), and identical details change
/// nothing ([`RegistrationOutcome::Unchanged`]: nothing needs to be stored).
pub fn register(
    new: &NewNode,
    id: Id,
    existing: Option<NodeRecord>,
    now_ms: u64,
) -> Result<Registration, Refusal> {
    let Some(mut old) = existing else {
        let node = NodeRecord {
            id,
            name: new.name.clone(),
            attrs: new.attrs,
            comms_key: new.comms_key.clone(),
            sig_key: new.sig_key.clone(),
            endpoints: new.endpoints.clone(),
            registered_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        return Ok(Registration {
            node,
            outcome: RegistrationOutcome::Created,
        });
    };
    let keys = match (old.sig_key != new.sig_key, old.comms_key != new.comms_key) {
        (false, false) => None,
        (true, false) => Some(MismatchedKeys::Signing),
        (false, true) => Some(MismatchedKeys::Comms),
        (true, true) => Some(MismatchedKeys::Both),
    };
    if let Some(keys) = keys {
        return Err(Refusal::NodeKeyMismatch { id, keys });
    }
    if old.name == new.name && old.attrs == new.attrs && old.endpoints == new.endpoints {
        return Ok(Registration {
            node: old,
            outcome: RegistrationOutcome::Unchanged,
        });
    }
    old.name = new.name.clone();
    old.attrs = new.attrs;
    old.endpoints = new.endpoints.clone();
    old.updated_at_ms = now_ms;
    Ok(Registration {
        node: old,
        outcome: RegistrationOutcome::Updated,
    })
}

/// Checks the owner proof a Create carries (before anything is read): it must verify under
/// the owner key the Create itself presents ([`Refusal::BadProof`] otherwise).
pub fn check_creator(new: &NewCluster) -> Result<(), Refusal> {
    let Some((owner_key, proof)) = &new.admission.owner else {
        return Ok(());
    };
    let first = new
        .admission
        .first_token
        .as_ref()
        .map_or(&[][..], |t| t.id.as_bytes());
    let input = admission::owner_proof_input(
        &proof.binding,
        OwnerOp::Create,
        new.name.as_bytes(),
        owner_key,
        first,
    );
    if admission::verify(owner_key, &input, &proof.signature) {
        Ok(())
    } else {
        Err(Refusal::BadProof {
            kind: ProofKind::Owner,
            cluster: new.name.clone(),
            tid: String::new(),
        })
    }
}

/// The token record a new token becomes at `now_ms`.
pub fn token_record(new: &NewToken, now_ms: u64) -> TokenRecord {
    TokenRecord {
        id: new.id.clone(),
        verifier: new.verifier.clone(),
        usages: new.usages,
        created_at_ms: now_ms,
        expires_at_ms: if new.ttl_ms == 0 {
            0
        } else {
            now_ms.saturating_add(new.ttl_ms)
        },
        uses_left: new.uses,
        revoked: false,
    }
}

fn admission_of(new: &NewAdmission, now_ms: u64) -> Admission {
    match &new.owner {
        None => Admission::open(),
        Some((owner_key, _)) => Admission {
            owner_key: owner_key.clone(),
            open: new.open,
            closed: false,
            tokens: new
                .first_token
                .iter()
                .map(|t| token_record(t, now_ms))
                .collect(),
        },
    }
}

/// Creates the cluster `new` with id `id`, unless a cluster of that name exists
/// (`existing`): then that one is the answer, unchanged, so concurrent creates of one name
/// all get the same cluster, but only for its own creator (no owner on either side, or the
/// same owner key, whose proof [`check_creator`] has verified); anyone else is refused
/// ([`Refusal::NameTaken`]). Returns the cluster and whether it is new (to be stored).
///
/// `id` is only called when a cluster is created: drawing an unused id needs the store.
pub fn create<E>(
    new: &NewCluster,
    existing: Option<ClusterRecord>,
    now_ms: u64,
    id: impl FnOnce() -> Result<Id, E>,
) -> Result<Result<(ClusterRecord, bool), Refusal>, E> {
    if let Some(existing) = existing {
        let requested = new
            .admission
            .owner
            .as_ref()
            .map_or(&[][..], |(key, _)| key.as_slice());
        if existing.admission.owner_key == requested {
            return Ok(Ok((existing, false)));
        }
        return Ok(Err(Refusal::NameTaken(existing.name)));
    }
    let record = ClusterRecord {
        id: id()?,
        name: new.name.clone(),
        attrs: new.attrs,
        max_size: new.max_size,
        endpoint_count: new.endpoint_count,
        created_at_ms: now_ms,
        touched_at_ms: now_ms,
        members: Vec::new(),
        admission: admission_of(&new.admission, now_ms),
    };
    Ok(Ok((record, true)))
}

/// Checks a token proof against `cluster`'s tokens: the token with `claim.id` must exist and
/// the proof verify over `input` (else [`Refusal::BadProof`], named as `named`), and the
/// token must be live and carry `usage`.
fn check_token<'a>(
    cluster: &'a ClusterRecord,
    claim: &TokenClaim,
    input: &[u8],
    kind: ProofKind,
    named: &str,
    now_ms: u64,
) -> Result<&'a TokenRecord, Refusal> {
    let token = cluster
        .admission
        .token(&claim.id)
        .filter(|t| admission::verify(&t.verifier, input, &claim.proof.signature))
        .ok_or_else(|| Refusal::BadProof {
            kind,
            cluster: named.to_string(),
            tid: claim.id.clone(),
        })?;
    let refused = |problem| Refusal::TokenRefused {
        tid: claim.id.clone(),
        problem,
    };
    if token.revoked {
        return Err(refused(TokenProblem::Revoked));
    }
    if token.is_expired(now_ms) {
        return Err(refused(TokenProblem::Expired));
    }
    let (usage, lacking) = match kind {
        ProofKind::List => (USAGE_LIST, TokenProblem::NoList),
        _ => (USAGE_JOIN, TokenProblem::NoJoin),
    };
    if token.usages & usage == 0 {
        return Err(refused(lacking));
    }
    Ok(token)
}

/// The answer to a join proof for a cluster that does not exist: the same as for a proof
/// that does not verify (docs/protocol.md section 14.7, step 1).
pub fn no_cluster_for(token: Option<&TokenClaim>, named: &str) -> Refusal {
    match token {
        Some(claim) => Refusal::BadProof {
            kind: ProofKind::Join,
            cluster: named.to_string(),
            tid: claim.id.clone(),
        },
        None => Refusal::NoSuchCluster(named.to_string()),
    }
}

/// Joins `node` to `cluster` under the cluster's admission (docs/protocol.md section 14.7):
/// a member rejoins without a token; an admission-controlled cluster needs a valid join
/// proof, which uses one of the token's uses in the same record; a closed cluster takes no
/// new member. `named` is the cluster as the request named it (for answers to strangers).
pub fn join_admitted(
    cluster: ClusterRecord,
    node: &NodeRecord,
    token: Option<&TokenClaim>,
    named: &str,
    now_ms: u64,
) -> Result<JoinOutcome, Refusal> {
    if cluster.member_by_node(&node.id).is_some() {
        return join(cluster, node, now_ms);
    }
    let mut used = None;
    if !cluster.admission.open {
        let Some(claim) = token else {
            return Err(Refusal::NoSuchCluster(named.to_string()));
        };
        let joining = JoiningNode {
            id: node.id.as_bytes(),
            comms_key: &node.comms_key,
            sig_key: &node.sig_key,
            endpoints: &node.endpoints,
        };
        let input = admission::join_proof_input(
            &claim.proof.binding,
            cluster.id.as_bytes(),
            &claim.id,
            &joining,
        );
        let record = check_token(&cluster, claim, &input, ProofKind::Join, named, now_ms)?;
        if record.uses_left == Some(0) {
            return Err(Refusal::TokenRefused {
                tid: claim.id.clone(),
                problem: TokenProblem::UsedUp,
            });
        }
        used = Some(claim.id.clone());
    }
    if cluster.admission.closed {
        return Err(Refusal::ClusterClosed(cluster.name.clone()));
    }
    let mut joined = join(cluster, node, now_ms)?;
    if let Some(tid) = used {
        let tokens = &mut joined.cluster.admission.tokens;
        if let Some(uses) = tokens
            .iter_mut()
            .find(|t| t.id == tid)
            .and_then(|t| t.uses_left.as_mut())
        {
            *uses = uses.saturating_sub(1);
        }
    }
    Ok(joined)
}

/// Who asks to see a cluster (GetCluster, ListTokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asker {
    /// A registered node (a member, or not), or a session without one (`None`).
    Node(Option<Id>),
    /// A list-token holder, with its proof.
    Token(TokenClaim),
    /// The owner, with its proof for this operation (`Get` or `ListTokens`).
    Owner(Proof, OwnerOp),
}

/// Whether `asker` may see `cluster` (`None`: there is none) as a member list
/// (docs/protocol.md section 14.8): the answer to a stranger is the one for a cluster that
/// does not exist.
pub fn may_see(
    cluster: Option<&ClusterRecord>,
    asker: &Asker,
    named: &str,
    now_ms: u64,
) -> Result<(), Refusal> {
    match asker {
        Asker::Node(node) => match cluster {
            Some(c) if c.admission.open => Ok(()),
            Some(c) if node.as_ref().is_some_and(|n| c.member_by_node(n).is_some()) => Ok(()),
            _ => Err(Refusal::NoSuchCluster(named.to_string())),
        },
        Asker::Token(claim) => {
            let bad = || Refusal::BadProof {
                kind: ProofKind::List,
                cluster: named.to_string(),
                tid: claim.id.clone(),
            };
            let c = cluster.ok_or_else(bad)?;
            let input =
                admission::list_proof_input(&claim.proof.binding, c.id.as_bytes(), &claim.id);
            check_token(c, claim, &input, ProofKind::List, named, now_ms).map(|_| ())
        }
        Asker::Owner(proof, op) => check_owner(cluster, proof, *op, &[], &[], named),
    }
}

/// Checks an owner proof for `op` on `cluster` (`None`: there is none): the same refusal
/// for a missing cluster, a cluster without owner and a proof that does not verify.
pub fn check_owner(
    cluster: Option<&ClusterRecord>,
    proof: &Proof,
    op: OwnerOp,
    a: &[u8],
    b: &[u8],
    named: &str,
) -> Result<(), Refusal> {
    let verified = cluster.is_some_and(|c| {
        let input = admission::owner_proof_input(&proof.binding, op, c.id.as_bytes(), a, b);
        c.admission.has_owner()
            && admission::verify(&c.admission.owner_key, &input, &proof.signature)
    });
    if verified {
        Ok(())
    } else {
        Err(Refusal::BadProof {
            kind: ProofKind::Owner,
            cluster: named.to_string(),
            tid: String::new(),
        })
    }
}

/// What an owner change did: the cluster to store (`None`: delete it) and the write's
/// answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerOutcome {
    /// The cluster as it is to be stored; `None` if it is to be deleted.
    pub store: Option<ClusterRecord>,
    /// The cluster to answer with (as stored, or as it was before a delete).
    pub cluster: ClusterRecord,
    /// The token minted or revoked.
    pub token: Option<TokenRecord>,
}

/// Applies an owner's change to `cluster` (`None`: there is none) after checking the owner
/// proof (docs/protocol.md section 14.6).
pub fn owner_change(
    cluster: Option<ClusterRecord>,
    proof: &Proof,
    change: &OwnerChange,
    named: &str,
    now_ms: u64,
) -> Result<OwnerOutcome, Refusal> {
    let (op, a, b): (OwnerOp, &[u8], &[u8]) = match change {
        OwnerChange::Mint(t) => (OwnerOp::Mint, t.id.as_bytes(), &t.verifier),
        OwnerChange::Revoke(tid) => (OwnerOp::Revoke, tid.as_bytes(), &[]),
        OwnerChange::Evict(node) => (OwnerOp::Evict, node.as_bytes(), &[]),
        OwnerChange::Close => (OwnerOp::Close, &[], &[]),
        OwnerChange::Delete => (OwnerOp::Delete, &[], &[]),
    };
    check_owner(cluster.as_ref(), proof, op, a, b, named)?;
    let Some(mut c) = cluster else {
        // check_owner refuses a missing cluster.
        return Err(Refusal::NoSuchCluster(named.to_string()));
    };
    let mut token = None;
    match change {
        OwnerChange::Mint(new) => {
            c.admission.tokens.retain(|t| !t.is_dead(now_ms));
            if c.admission.token(&new.id).is_some() {
                return Err(Refusal::TokenIdTaken {
                    cluster: c.name.clone(),
                    tid: new.id.clone(),
                });
            }
            if c.admission.tokens.len() >= MAX_TOKENS_PER_CLUSTER {
                return Err(Refusal::TooManyTokens(c.name.clone()));
            }
            let record = token_record(new, now_ms);
            c.admission.tokens.push(record.clone());
            token = Some(record);
        }
        OwnerChange::Revoke(tid) => {
            let Some(t) = c.admission.tokens.iter_mut().find(|t| &t.id == tid) else {
                return Err(Refusal::NoSuchToken {
                    cluster: c.name.clone(),
                    tid: tid.clone(),
                });
            };
            t.revoked = true;
            token = Some(t.clone());
        }
        OwnerChange::Evict(node) => {
            remove_member(&mut c, node)?;
        }
        OwnerChange::Close => c.admission.closed = true,
        OwnerChange::Delete => {
            return Ok(OwnerOutcome {
                store: None,
                cluster: c,
                token: None,
            })
        }
    }
    Ok(OwnerOutcome {
        store: Some(c.clone()),
        cluster: c,
        token,
    })
}

fn remove_member(cluster: &mut ClusterRecord, node: &Id) -> Result<(), Refusal> {
    let before = cluster.members.len();
    cluster.members.retain(|m| &m.node_id != node);
    if cluster.members.len() == before {
        return Err(Refusal::NotAMember {
            cluster: cluster.name.clone(),
            node: node.clone(),
        });
    }
    Ok(())
}

/// The member `node` leaves `cluster` (`None`: there is none); its slot is free. A node that
/// is not a member gets the stranger's answer unless the cluster is open.
pub fn leave(
    cluster: Option<ClusterRecord>,
    node: &Id,
    named: &str,
) -> Result<ClusterRecord, Refusal> {
    let Some(mut c) = cluster else {
        return Err(Refusal::NoSuchCluster(named.to_string()));
    };
    if c.member_by_node(node).is_none() && !c.admission.open {
        return Err(Refusal::NoSuchCluster(named.to_string()));
    }
    remove_member(&mut c, node)?;
    Ok(c)
}

/// Joins `node` to `cluster`: returns the cluster as it is to be stored, with the node's
/// slot.
///
/// A member gets its old slot back with its name, attributes and endpoints refreshed from
/// the node record, even if the cluster is full. A new member takes the next slot, unless
/// another member has its name ([`Refusal::MemberNameTaken`]), the cluster is full
/// ([`Refusal::ClusterFull`]) or the node offers fewer endpoints than the cluster requires
/// ([`Refusal::TooFewEndpoints`]; a rejoining member must offer them too).
pub fn join(
    cluster: ClusterRecord,
    node: &NodeRecord,
    now_ms: u64,
) -> Result<JoinOutcome, Refusal> {
    let name_taken = cluster
        .members
        .iter()
        .any(|m| m.name == node.name && m.node_id != node.id);
    if name_taken {
        return Err(Refusal::MemberNameTaken {
            cluster: cluster.name.clone(),
            name: node.name.clone(),
        });
    }
    let offered = u32::try_from(node.endpoints.len()).unwrap_or(u32::MAX);
    let too_few = |c: &ClusterRecord| Refusal::TooFewEndpoints {
        cluster: c.name.clone(),
        needed: c.endpoint_count,
        offered,
    };
    let mut c = cluster;
    let (slot, rejoined) = match c.members.iter().position(|m| m.node_id == node.id) {
        Some(pos) => {
            if offered < c.endpoint_count {
                return Err(too_few(&c));
            }
            let m = &mut c.members[pos];
            m.name = node.name.clone();
            m.attrs = node.attrs;
            m.endpoints = node.endpoints.clone();
            (m.slot, true)
        }
        None => {
            if c.is_full() {
                return Err(Refusal::ClusterFull {
                    name: c.name.clone(),
                    members: c.member_count(),
                    max: c.max_size,
                });
            }
            if offered < c.endpoint_count {
                return Err(too_few(&c));
            }
            let slot = c.next_slot();
            // Members stay in slot order (a freed slot may be below the others).
            let at = c.members.partition_point(|m| m.slot < slot);
            c.members.insert(
                at,
                MemberRecord {
                    slot,
                    node_id: node.id.clone(),
                    name: node.name.clone(),
                    attrs: node.attrs,
                    endpoints: node.endpoints.clone(),
                    joined_at_ms: now_ms,
                },
            );
            (slot, false)
        }
    };
    c.touched_at_ms = now_ms;
    Ok(JoinOutcome {
        cluster: c,
        slot,
        rejoined,
    })
}

/// Whether `cluster` has gone untouched for at least `ttl` at time `now_ms` (ms since the
/// Unix epoch). A touch time in the future (a clock stepped back) never expires.
pub fn is_expired(cluster: &ClusterRecord, now_ms: u64, ttl: Duration) -> bool {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(cluster.touched_at_ms) >= ttl_ms && now_ms >= cluster.touched_at_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> Id {
        Id::from_bytes(&[b; 32]).unwrap()
    }

    fn new_node(name: &str, endpoints: usize) -> NewNode {
        NewNode {
            id: None,
            name: name.into(),
            attrs: 0,
            comms_key: b"comms".to_vec(),
            sig_key: b"sig".to_vec(),
            endpoints: (0..endpoints).map(|i| format!("10.0.0.{i}:1")).collect(),
        }
    }

    fn registered(name: &str, byte: u8, endpoints: usize) -> NodeRecord {
        register(&new_node(name, endpoints), id(byte), None, 1)
            .unwrap()
            .node
    }

    fn cluster(max_size: u32, endpoint_count: u32) -> ClusterRecord {
        let new = NewCluster {
            admission: Default::default(),
            name: "c".into(),
            attrs: 0,
            max_size,
            endpoint_count,
        };
        create::<()>(&new, None, 1, || Ok(id(99)))
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn register_creates_updates_keeps_and_refuses_other_keys() {
        let first = register(&new_node("a", 1), id(1), None, 5).unwrap();
        assert_eq!(first.outcome, RegistrationOutcome::Created);
        assert_eq!(first.node.registered_at_ms, 5);
        let same = register(&new_node("a", 1), id(1), Some(first.node.clone()), 6).unwrap();
        assert_eq!(same.outcome, RegistrationOutcome::Unchanged);
        assert_eq!(same.node, first.node);
        let moved = register(&new_node("a", 2), id(1), Some(first.node.clone()), 7).unwrap();
        assert_eq!(moved.outcome, RegistrationOutcome::Updated);
        assert_eq!(
            (moved.node.registered_at_ms, moved.node.updated_at_ms),
            (5, 7)
        );
        let mut other = new_node("a", 1);
        other.comms_key = b"other".to_vec();
        assert_eq!(
            register(&other, id(1), Some(first.node), 8),
            Err(Refusal::NodeKeyMismatch {
                id: id(1),
                keys: MismatchedKeys::Comms
            })
        );
    }

    #[test]
    fn create_draws_an_id_only_for_a_new_cluster() {
        let existing = cluster(3, 1);
        let new = NewCluster {
            admission: Default::default(),
            name: "c".into(),
            attrs: 1,
            max_size: 9,
            endpoint_count: 2,
        };
        let found = create::<()>(&new, Some(existing.clone()), 2, || panic!("no id needed"));
        assert_eq!(found, Ok(Ok((existing, false))));
        let made = create(&new, None, 2, || Ok::<_, ()>(id(5)))
            .unwrap()
            .unwrap();
        assert!(made.1);
        assert_eq!((made.0.id, made.0.max_size), (id(5), 9));
    }

    #[test]
    fn join_takes_slots_in_order_and_refuses_what_the_rules_forbid() {
        let mut c = cluster(2, 1);
        let a = registered("a", 1, 1);
        let b = registered("b", 2, 1);
        c = join(c, &a, 10).unwrap().cluster;
        let out = join(c, &b, 11).unwrap();
        assert_eq!(
            (out.slot, out.rejoined, out.cluster.touched_at_ms),
            (1, false, 11)
        );
        c = out.cluster;
        // Full, but a member gets its slot back.
        let again = join(c.clone(), &a, 12).unwrap();
        assert_eq!((again.slot, again.rejoined), (0, true));
        assert_eq!(again.cluster.members[0].joined_at_ms, 10);
        let d = registered("d", 3, 1);
        assert!(matches!(
            join(c.clone(), &d, 13),
            Err(Refusal::ClusterFull { .. })
        ));
        let twin = registered("a", 4, 1);
        assert!(matches!(
            join(c.clone(), &twin, 13),
            Err(Refusal::MemberNameTaken { .. })
        ));
        let thin = registered("thin", 5, 0);
        let roomy = cluster(3, 1);
        assert!(matches!(
            join(roomy, &thin, 13),
            Err(Refusal::TooFewEndpoints {
                needed: 1,
                offered: 0,
                ..
            })
        ));
    }

    #[test]
    fn expiry_counts_from_the_last_touch_and_ignores_future_touches() {
        let mut c = cluster(2, 1);
        c.touched_at_ms = 1_000;
        let ttl = Duration::from_millis(500);
        assert!(!is_expired(&c, 1_499, ttl));
        assert!(is_expired(&c, 1_500, ttl));
        assert!(!is_expired(&c, 900, ttl));
    }
}
