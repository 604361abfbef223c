//! Consistency checks over a whole store: the invariants every transaction maintains.
//!
//! This module owns the invariant check (`check_invariants`, on any point-in-time
//! [`StoreView`]), [`Store::verify`] and [`Snapshot::verify`], used by operators
//! (`xlreg admin verify`, online through a view of the running store), by restore and import,
//! and by the crash and race tests: after any crash or any interleaving, every one of these
//! must hold. The checks run on a point-in-time view, so a store that is changing while it is
//! checked gives no false alarms; they read each tree once, in key order, and keep only ids
//! and names, never the records, so checking a running registry does not copy it into memory.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::records::decode;
use super::schema::SCHEMA_VERSION;
use super::snapshot::Snapshot;
use super::{Store, REGISTRY_KEY};
use crate::id::{Id, ID_LEN};
use crate::model::{ClusterRecord, NodeRecord, RegistryMeta};
use crate::store::{StorageError, StoreView};

/// An id as a set key that needs no allocation of its own: its length and its bytes, zero
/// padded. The checks keep one for every node of the registry. Ids are 20 or 32 bytes, so
/// two valid ids have equal keys only if they are equal; a damaged id of another length
/// keeps its own length, so it never matches a valid one.
type IdKey = (u8, [u8; ID_LEN]);

fn id_key(id: &[u8]) -> IdKey {
    let mut bytes = [0u8; ID_LEN];
    let kept = id.len().min(ID_LEN);
    bytes[..kept].copy_from_slice(&id[..kept]);
    (u8::try_from(id.len()).unwrap_or(u8::MAX), bytes)
}

/// What an invariant check found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    /// A description of each violation (empty: every invariant holds).
    pub problems: Vec<String>,
    /// Node records checked (every entry of the `nodes` tree).
    pub nodes: u64,
    /// Cluster records checked (every entry of the `clusters` tree).
    pub clusters: u64,
}

impl Store {
    /// Checks every invariant on a point-in-time view of the store and returns a description
    /// of each violation (empty: all hold). Fails only if the store cannot be read.
    pub fn verify(&self) -> Result<Vec<String>, StorageError> {
        let view = self.view()?;
        Ok((&view as &dyn StoreView).check_invariants()?.problems)
    }
}

impl Snapshot {
    /// Checks every invariant and returns a description of each violation (empty: all
    /// hold). `check_invariants` on [`StoreView`] says what is checked.
    pub fn verify(&self) -> Vec<String> {
        // A snapshot is in memory: reading it cannot fail.
        (self as &dyn StoreView)
            .check_invariants()
            .map_or_else(|error| vec![error.to_string()], |found| found.problems)
    }
}

impl dyn StoreView + '_ {
    /// Checks every invariant of the records this view holds, reading each tree once, and
    /// returns what it found. Fails only if the view cannot be read.
    ///
    /// Checked: the schema version is known and the registry's facts decode; every record
    /// decodes and sits under its own id; the name index and the clusters agree both ways;
    /// no cluster is over its maximum or outside 2..=64; members are stored in slot order,
    /// each slot below the cluster's maximum (members leave and are evicted, so slots may
    /// have gaps: docs/protocol.md section 14.7); member names and nodes are unique within a
    /// cluster; every member is a registered node and offers the endpoints its cluster
    /// requires; no id is both a node's and a cluster's.
    ///
    /// What it holds while it reads: the nodes' ids, the name index, and each cluster's id
    /// and name; one record at a time.
    pub fn check_invariants(&self) -> Result<Verification, StorageError> {
        let mut found = Verification::default();
        let problems = &mut found.problems;

        match self.schema_version() {
            Ok(Some(SCHEMA_VERSION)) => {}
            Ok(other) => problems.push(format!(
                "schema version is {other:?}, expected {SCHEMA_VERSION}"
            )),
            Err(error) => problems.push(error.to_string()),
        }
        if let Some(bytes) = self.meta_value(REGISTRY_KEY)? {
            if let Err(error) = decode::<RegistryMeta>("registry meta", REGISTRY_KEY, &bytes) {
                problems.push(error.to_string());
            }
        }

        let mut node_ids = HashSet::new();
        for entry in self.entries(b"nodes") {
            let (key, value) = entry?;
            found.nodes += 1;
            match decode::<NodeRecord>("node", &key, &value) {
                Ok(node) if node.id.as_bytes() == key.as_slice() => {
                    node_ids.insert(id_key(&key));
                }
                Ok(node) => problems.push(format!(
                    "node record under {} carries id {}",
                    hex::encode(&key),
                    node.id
                )),
                Err(error) => problems.push(error.to_string()),
            }
        }

        let mut names = BTreeMap::new();
        for entry in self.entries(b"cluster_names") {
            let (name, id) = entry?;
            names.insert(name, id);
        }

        // Each cluster is checked as it is read (in id order); only its id and name stay,
        // for the name index's check below.
        let mut cluster_names: HashMap<IdKey, String> = HashMap::new();
        for entry in self.entries(b"clusters") {
            let (key, value) = entry?;
            found.clusters += 1;
            match decode::<ClusterRecord>("cluster", &key, &value) {
                Ok(cluster) if cluster.id.as_bytes() == key.as_slice() => {
                    check_cluster(&cluster, &names, &node_ids, problems);
                    cluster_names.insert(id_key(&key), cluster.name);
                }
                Ok(cluster) => problems.push(format!(
                    "cluster record under {} carries id {}",
                    hex::encode(&key),
                    cluster.id
                )),
                Err(error) => problems.push(error.to_string()),
            }
        }

        for (name, id) in &names {
            let name = String::from_utf8_lossy(name);
            let id_and_name = Id::from_bytes(id).ok().and_then(|id| {
                cluster_names
                    .get(&id_key(id.as_bytes()))
                    .map(|named| (id, named))
            });
            match id_and_name {
                Some((_, named)) if *named == name => {}
                Some((id, named)) => problems.push(format!(
                    "name index maps {name} to cluster {id} which is named {named}"
                )),
                None => problems.push(format!(
                    "name index maps {name} to a cluster that does not exist ({})",
                    hex::encode(id)
                )),
            }
        }
        Ok(found)
    }
}

/// The invariants of one cluster record: its place in the name index, its id, its size, its
/// members' slots, names, nodes and endpoints.
fn check_cluster(
    cluster: &ClusterRecord,
    names: &BTreeMap<Vec<u8>, Vec<u8>>,
    node_ids: &HashSet<IdKey>,
    problems: &mut Vec<String>,
) {
    let label = format!("cluster {} ({})", cluster.name, cluster.id);
    match names.get(cluster.name.as_bytes()) {
        Some(id) if id.as_slice() == cluster.id.as_bytes() => {}
        _ => problems.push(format!("{label} is missing from the name index")),
    }
    if node_ids.contains(&id_key(cluster.id.as_bytes())) {
        problems.push(format!("{label} shares its id with a node"));
    }
    if !(2..=64).contains(&cluster.max_size) {
        problems.push(format!("{label} has max size {}", cluster.max_size));
    }
    if cluster.member_count() > cluster.max_size {
        problems.push(format!(
            "{label} is over its maximum ({}/{})",
            cluster.member_count(),
            cluster.max_size
        ));
    }
    let mut member_names = HashSet::new();
    let mut members = HashSet::new();
    let mut previous_slot = None;
    for member in &cluster.members {
        if member.slot >= cluster.max_size {
            problems.push(format!(
                "{label}: member {} holds slot {}, beyond its maximum size {}",
                member.name, member.slot, cluster.max_size
            ));
        }
        if previous_slot.is_some_and(|previous| member.slot <= previous) {
            problems.push(format!(
                "{label}: member {} holds slot {} out of slot order",
                member.name, member.slot
            ));
        }
        previous_slot = Some(member.slot);
        if !member_names.insert(&member.name) {
            problems.push(format!(
                "{label}: member name {} appears twice",
                member.name
            ));
        }
        if !members.insert(&member.node_id) {
            problems.push(format!("{label}: node {} holds two slots", member.node_id));
        }
        if !node_ids.contains(&id_key(member.node_id.as_bytes())) {
            problems.push(format!(
                "{label}: member {} (node {}) is not a registered node",
                member.name, member.node_id
            ));
        }
        if member.endpoints.len() < cluster.endpoint_count as usize {
            problems.push(format!(
                "{label}: member {} has {} endpoints, the cluster requires {}",
                member.name,
                member.endpoints.len(),
                cluster.endpoint_count
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, node};
    use super::*;
    use crate::store::{ClusterRef, MemberRecord};

    #[test]
    fn id_keys_are_equal_only_for_equal_ids() {
        let long = [7u8; 32];
        assert_eq!(id_key(&long), id_key(&[7u8; 32]));
        assert_ne!(
            id_key(&long[..20]),
            id_key(&long),
            "a 1.9 id and its 32-byte extension"
        );
        assert_ne!(id_key(&[7u8; 40]), id_key(&long), "a damaged 40-byte id");
        assert_ne!(id_key(&[0u8; 20]), id_key(&[0u8; 32]));
    }

    #[test]
    fn a_store_built_through_its_api_verifies_clean() {
        let store = Store::temporary().unwrap();
        let c = cluster(&store, "web", 3, 1);
        for name in ["a", "b", "c"] {
            let n = node(&store, name, 1);
            store.join(&ClusterRef::Id(c.id.clone()), &n, 2).unwrap();
        }
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn damage_is_reported() {
        let store = Store::temporary().unwrap();
        let c = cluster(&store, "web", 2, 1);
        let n = node(&store, "a", 1);
        store.join(&ClusterRef::Id(c.id.clone()), &n, 2).unwrap();
        // Simulate damage no transaction can cause: a dangling member and a stray name.
        store.inner.nodes.remove(n.id.as_bytes()).unwrap();
        store
            .inner
            .cluster_names
            .insert(b"ghost", &[7u8; 32][..])
            .unwrap();
        let problems = store.verify().unwrap();
        assert!(
            problems.iter().any(|p| p.contains("not a registered node")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("ghost")), "{problems:?}");
    }

    fn record(name: &str, byte: u8, members: Vec<MemberRecord>) -> ClusterRecord {
        ClusterRecord {
            admission: crate::model::Admission::open(),
            id: Id::from_bytes(&[byte; 32]).unwrap(),
            name: name.into(),
            attrs: 0,
            max_size: 2,
            endpoint_count: 1,
            created_at_ms: 0,
            touched_at_ms: 0,
            members,
        }
    }

    fn member(slot: u32, node: &NodeRecord, endpoints: usize) -> MemberRecord {
        MemberRecord {
            slot,
            node_id: node.id.clone(),
            name: node.name.clone(),
            attrs: 0,
            endpoints: vec!["127.0.0.1:1".into(); endpoints],
            joined_at_ms: 0,
        }
    }

    #[test]
    fn each_invariant_has_its_own_report() {
        let store = Store::temporary().unwrap();
        let a = node(&store, "a", 1);
        let b = node(&store, "b", 1);
        let d = node(&store, "d", 1);
        let nodes = vec![a.clone(), b.clone(), d.clone()];
        let check = |clusters: Vec<ClusterRecord>, expected: &str| {
            let snap = Snapshot::from_records(None, &nodes, &clusters).unwrap();
            let problems = snap.verify();
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "expected {expected:?} in {problems:?}"
            );
        };
        let clean = record("ok", 1, vec![member(0, &a, 1), member(1, &b, 1)]);
        let snap = Snapshot::from_records(None, &nodes, std::slice::from_ref(&clean)).unwrap();
        assert_eq!(snap.verify(), Vec::<String>::new());

        check(
            vec![record(
                "over",
                1,
                vec![member(0, &a, 1), member(1, &b, 1), member(2, &d, 1)],
            )],
            "is over its maximum (3/2)",
        );
        // A gap (a member left) is fine; a slot beyond the size or out of order is not.
        let gap = record("gap", 1, vec![member(1, &a, 1)]);
        let snap = Snapshot::from_records(None, &nodes, std::slice::from_ref(&gap)).unwrap();
        assert_eq!(snap.verify(), Vec::<String>::new());
        check(
            vec![record(
                "beyond",
                1,
                vec![member(0, &a, 1), member(2, &b, 1)],
            )],
            "holds slot 2, beyond its maximum size 2",
        );
        check(
            vec![record("order", 1, vec![member(1, &a, 1), member(0, &b, 1)])],
            "holds slot 0 out of slot order",
        );
        check(
            vec![record("twice", 1, vec![member(0, &a, 1), member(1, &a, 1)])],
            "holds two slots",
        );
        check(
            vec![record("thin", 1, vec![member(0, &a, 0)])],
            "has 0 endpoints, the cluster requires 1",
        );
        let mut ghost = a.clone();
        ghost.id = Id::from_bytes(&[9u8; 32]).unwrap();
        check(
            vec![record("ghost", 1, vec![member(0, &ghost, 1)])],
            "is not a registered node",
        );
        check(
            vec![record("dup", 1, vec![]), record("dup", 2, vec![])],
            "is missing from the name index",
        );
        let mut shared = record("shared", 1, vec![]);
        shared.id = a.id.clone();
        check(vec![shared], "shares its id with a node");

        // The name index, both ways: a name for a cluster named otherwise, a name for none.
        let mut aliased =
            Snapshot::from_records(None, &nodes, std::slice::from_ref(&clean)).unwrap();
        let names = aliased.trees.get_mut(&b"cluster_names"[..]).unwrap();
        names.insert(b"alias".to_vec(), clean.id.as_bytes().to_vec());
        names.insert(b"gone".to_vec(), vec![5u8; 32]);
        let problems = aliased.verify();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("maps alias to cluster") && p.contains("which is named ok")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("maps gone to a cluster that does not exist")),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");

        let mut bad_meta = Snapshot::from_records(None, &nodes, &[]).unwrap();
        let meta_tree = bad_meta.trees.get_mut(&b"meta"[..]).unwrap();
        meta_tree.insert(REGISTRY_KEY.to_vec(), vec![1, 2]);
        meta_tree.insert(b"schema_version".to_vec(), 7u32.to_be_bytes().to_vec());
        let problems = bad_meta.verify();
        assert!(
            problems.iter().any(|p| p.contains("registry meta")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("schema version is Some(7)")),
            "{problems:?}"
        );
    }
}
