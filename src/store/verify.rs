//! Consistency checks over a whole store: the invariants every transaction maintains.
//!
//! This module owns [`Store::verify`], used by operators (`xlreg admin verify`) and by the
//! crash and race tests: after any crash or any interleaving, every one of these must hold.

use std::collections::{HashMap, HashSet};

use super::records::{decode, ClusterRecord};
use super::schema::{stored_version, SCHEMA_VERSION};
use super::{Store, StoreError};
use crate::id::Id;

impl Store {
    /// Checks every invariant and returns a description of each violation (empty: all
    /// hold). Fails only if the store cannot be read at all.
    ///
    /// Checked: the schema version is known; every record decodes and sits under its own
    /// id; the name index and the clusters agree both ways; no cluster is over its maximum
    /// or outside 2..=64; slots are strictly increasing and below the next slot; member
    /// names and nodes are unique within a cluster; every member is a registered node; no
    /// id is both a node's and a cluster's.
    pub fn verify(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let inner = &self.inner;
        match stored_version(&inner.db)? {
            Some(SCHEMA_VERSION) => {}
            other => problems.push(format!(
                "schema version is {other:?}, expected {SCHEMA_VERSION}"
            )),
        }

        let mut node_ids = HashSet::new();
        for entry in inner.nodes.iter() {
            let (key, value) = entry?;
            match decode::<super::NodeRecord>("node", &key, &value) {
                Ok(node) if node.id.as_bytes() == key.as_ref() => {
                    node_ids.insert(node.id);
                }
                Ok(node) => problems.push(format!(
                    "node record under {} carries id {}",
                    hex::encode(&key),
                    node.id
                )),
                Err(error) => problems.push(error.to_string()),
            }
        }

        let mut clusters: HashMap<Id, ClusterRecord> = HashMap::new();
        for entry in inner.clusters.iter() {
            let (key, value) = entry?;
            match decode::<ClusterRecord>("cluster", &key, &value) {
                Ok(cluster) if cluster.id.as_bytes() == key.as_ref() => {
                    clusters.insert(cluster.id.clone(), cluster);
                }
                Ok(cluster) => problems.push(format!(
                    "cluster record under {} carries id {}",
                    hex::encode(&key),
                    cluster.id
                )),
                Err(error) => problems.push(error.to_string()),
            }
        }

        for entry in inner.cluster_names.iter() {
            let (name, id) = entry?;
            let name = String::from_utf8_lossy(&name);
            match Id::from_bytes(&id).ok().and_then(|id| clusters.get(&id)) {
                Some(cluster) if cluster.name == name => {}
                Some(cluster) => problems.push(format!(
                    "name index maps {name} to cluster {} which is named {}",
                    cluster.id, cluster.name
                )),
                None => problems.push(format!(
                    "name index maps {name} to a cluster that does not exist ({})",
                    hex::encode(&id)
                )),
            }
        }

        for cluster in clusters.values() {
            let label = format!("cluster {} ({})", cluster.name, cluster.id);
            match inner.cluster_names.get(cluster.name.as_bytes())? {
                Some(id) if id.as_ref() == cluster.id.as_bytes() => {}
                _ => problems.push(format!("{label} is missing from the name index")),
            }
            if node_ids.contains(&cluster.id) {
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
            let mut names = HashSet::new();
            let mut members = HashSet::new();
            let mut previous_slot = None;
            for member in &cluster.members {
                if previous_slot.is_some_and(|p| member.slot <= p) {
                    problems.push(format!("{label}: slot {} is out of order", member.slot));
                }
                previous_slot = Some(member.slot);
                if !names.insert(&member.name) {
                    problems.push(format!(
                        "{label}: member name {} appears twice",
                        member.name
                    ));
                }
                if !members.insert(&member.node_id) {
                    problems.push(format!("{label}: node {} holds two slots", member.node_id));
                }
                if !node_ids.contains(&member.node_id) {
                    problems.push(format!(
                        "{label}: member {} (node {}) is not a registered node",
                        member.name, member.node_id
                    ));
                }
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, node};
    use crate::store::{ClusterRef, Store};

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
}
