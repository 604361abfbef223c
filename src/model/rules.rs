//! The registry's rules, as pure functions over records: registering a node, creating a
//! cluster, joining one, and when a cluster has expired.
//!
//! Each function is given the records as they are (read by the store inside its
//! transaction) and returns the records to store, or the [`Refusal`]; it never reads or
//! writes anything itself, so every backend applies exactly the same rules, and a refusal
//! is decided before anything is written (a refused write changes nothing).

use std::time::Duration;

use super::{
    ClusterRecord, JoinOutcome, MemberRecord, MismatchedKeys, NewCluster, NewNode, NodeRecord,
    Refusal, Registration, RegistrationOutcome,
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

/// Creates the cluster `new` with id `id`, unless a cluster of that name exists
/// (`existing`): then that one is the answer, unchanged, so concurrent creates of one name
/// all get the same cluster. Returns the cluster and whether it is new (to be stored).
///
/// `id` is only called when a cluster is created: drawing an unused id needs the store.
pub fn create<E>(
    new: &NewCluster,
    existing: Option<ClusterRecord>,
    now_ms: u64,
    id: impl FnOnce() -> Result<Id, E>,
) -> Result<(ClusterRecord, bool), E> {
    if let Some(existing) = existing {
        return Ok((existing, false));
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
    };
    Ok((record, true))
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
            c.members.push(MemberRecord {
                slot,
                node_id: node.id.clone(),
                name: node.name.clone(),
                attrs: node.attrs,
                endpoints: node.endpoints.clone(),
                joined_at_ms: now_ms,
            });
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
            name: "c".into(),
            attrs: 0,
            max_size,
            endpoint_count,
        };
        create::<()>(&new, None, 1, || Ok(id(99))).unwrap().0
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
            name: "c".into(),
            attrs: 1,
            max_size: 9,
            endpoint_count: 2,
        };
        let found = create::<()>(&new, Some(existing.clone()), 2, || panic!("no id needed"));
        assert_eq!(found, Ok((existing, false)));
        let made = create(&new, None, 2, || Ok::<_, ()>(id(5))).unwrap();
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
