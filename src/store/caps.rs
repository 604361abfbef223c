//! Registry-wide caps: the most clusters and nodes the store holds (`serve --max-clusters`,
//! `--max-nodes`), so that no client, however many sessions it runs, can grow the registry
//! without bound.
//!
//! This module owns [`Caps`] and the running counts behind them. The cap check itself is in
//! the shared write logic (`store::apply`, through `RecordTx::admit_node` and
//! `admit_cluster`), so every backend refuses alike, with [`Refusal::RegistryFull`]. The sled
//! backend keeps the counts here: read from the trees once, when caps are set
//! ([`Store::set_caps`](super::Store::set_caps)), and kept up to date by every transaction
//! that creates a cluster or a node and every deletion; inside a transaction, [`TxCount`]
//! adds what the transaction itself has created so far, so a batch of creates cannot
//! overshoot a cap. The memory backend counts its maps
//! ([`MemoryStore::set_caps`](super::MemoryStore::set_caps)).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::Refusal;

/// The default of `serve --max-clusters`: generous for a fleet, finite.
pub const DEFAULT_MAX_CLUSTERS: u64 = 1_000_000;

/// The default of `serve --max-nodes`.
pub const DEFAULT_MAX_NODES: u64 = 5_000_000;

/// The most clusters and nodes a registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most clusters.
    pub max_clusters: u64,
    /// Most registered nodes.
    pub max_nodes: u64,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            max_clusters: DEFAULT_MAX_CLUSTERS,
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

/// The caps in force and the counts they bound. Without caps set (a store used by the
/// admin tools, tests), nothing is counted or refused.
#[derive(Debug, Default)]
pub(crate) struct Held {
    max_clusters: AtomicU64,
    max_nodes: AtomicU64,
    clusters: AtomicU64,
    nodes: AtomicU64,
}

impl Held {
    /// Sets the caps, with the counts the store holds now.
    pub(crate) fn set(&self, caps: Caps, clusters: u64, nodes: u64) {
        self.clusters.store(clusters, Ordering::SeqCst);
        self.nodes.store(nodes, Ordering::SeqCst);
        self.max_clusters.store(caps.max_clusters, Ordering::SeqCst);
        self.max_nodes.store(caps.max_nodes, Ordering::SeqCst);
    }

    /// Records what a committed transaction created and deleted.
    pub(crate) fn commit(&self, tx: &TxCount) {
        self.clusters.fetch_add(tx.clusters.get(), Ordering::SeqCst);
        self.nodes.fetch_add(tx.nodes.get(), Ordering::SeqCst);
    }

    /// Records a deleted cluster.
    pub(crate) fn cluster_deleted(&self) {
        let _ = self
            .clusters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Records a deleted node.
    pub(crate) fn node_deleted(&self) {
        let _ = self
            .nodes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Refuses one more of `what` if the store holds `held` of them and the cap is `max`
/// (0: uncapped).
pub(crate) fn admit(what: &'static str, held: u64, max: u64) -> Result<(), Refusal> {
    if max != 0 && held >= max {
        return Err(Refusal::RegistryFull { what, max });
    }
    Ok(())
}

/// What one transaction attempt has created so far (reset when sled reruns it).
#[derive(Debug, Default)]
pub(crate) struct TxCount {
    clusters: Cell<u64>,
    nodes: Cell<u64>,
}

impl TxCount {
    /// Counts one more cluster, or refuses it if that would pass the cap.
    pub(crate) fn new_cluster(&self, held: &Held) -> Result<(), Refusal> {
        let max = held.max_clusters.load(Ordering::SeqCst);
        let now = held.clusters.load(Ordering::SeqCst) + self.clusters.get();
        if max != 0 && now >= max {
            return Err(Refusal::RegistryFull {
                what: "clusters",
                max,
            });
        }
        self.clusters.set(self.clusters.get() + 1);
        Ok(())
    }

    /// Counts one more node, or refuses it if that would pass the cap.
    pub(crate) fn new_node(&self, held: &Held) -> Result<(), Refusal> {
        let max = held.max_nodes.load(Ordering::SeqCst);
        let now = held.nodes.load(Ordering::SeqCst) + self.nodes.get();
        if max != 0 && now >= max {
            return Err(Refusal::RegistryFull { what: "nodes", max });
        }
        self.nodes.set(self.nodes.get() + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ClusterRef, NewCluster, Store, StoreError, Write, Written};
    use super::*;

    fn create(name: &str) -> Write {
        Write::CreateCluster {
            cluster: NewCluster {
                admission: Default::default(),
                name: name.into(),
                attrs: 0,
                max_size: 3,
                endpoint_count: 1,
            },
            now_ms: 1,
        }
    }

    #[test]
    fn a_batch_of_creates_stops_at_the_cap_and_a_deletion_makes_room() {
        let store = Store::temporary().unwrap();
        store.apply(&create("old")).unwrap();
        store
            .set_caps(Caps {
                max_clusters: 3,
                max_nodes: 10,
            })
            .unwrap();
        let writes: Vec<Write> = ["a", "b", "c", "old"].iter().map(|n| create(n)).collect();
        let refs: Vec<&Write> = writes.iter().collect();
        let results = store.apply_batch(&refs).unwrap();
        assert!(matches!(results[0], Ok(Written::Cluster(_, true))));
        assert!(matches!(results[1], Ok(Written::Cluster(_, true))));
        // The cap counts what the batch itself created.
        let e = results[2].as_ref().unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::RegistryFull {
                    what: "clusters",
                    max: 3
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "the registry holds its maximum of 3 clusters; ask its operator"
        );
        // Finding an existing cluster is no creation.
        assert!(matches!(results[3], Ok(Written::Cluster(_, false))));
        store.delete_cluster(&ClusterRef::Name("a".into())).unwrap();
        assert!(matches!(
            store.apply(&create("c")),
            Ok(Written::Cluster(_, true))
        ));
        assert!(store.apply(&create("d")).is_err());
    }

    #[test]
    fn new_nodes_stop_at_the_cap_and_known_ones_still_re_register() {
        let store = Store::temporary().unwrap();
        let known = crate::store::conformance::new_node("known", 1);
        let Written::Node(first) = store
            .apply(&Write::RegisterNode {
                node: known.clone(),
                now_ms: 1,
            })
            .unwrap()
        else {
            panic!("not a registration")
        };
        store
            .set_caps(Caps {
                max_clusters: 10,
                max_nodes: 1,
            })
            .unwrap();
        let again = crate::store::NewNode {
            id: Some(first.node.id.clone()),
            ..known
        };
        assert!(store
            .apply(&Write::RegisterNode {
                node: again,
                now_ms: 2
            })
            .is_ok());
        let other = crate::store::conformance::new_node("other", 2);
        let e = store
            .apply(&Write::RegisterNode {
                node: other,
                now_ms: 2,
            })
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Refused(Refusal::RegistryFull {
                    what: "nodes",
                    max: 1
                })
            ),
            "{e}"
        );
    }
}
