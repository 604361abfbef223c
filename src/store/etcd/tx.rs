//! One optimistic attempt at a batch of writes on etcd: the [`RecordTx`] the shared
//! `apply` runs on, and the transaction it turns into.
//!
//! This module owns [`Attempt`] and [`Cache`]. An attempt reads records from a cache of
//! values fetched from etcd (each with the `mod_revision` it had, or absent), records every
//! key it read, and buffers every write. A key not in the cache stops the attempt with
//! [`Miss`]: the store fetches it (one round trip for all the keys named) and runs the
//! writes again from the start, which is cheap (the rules are pure) and gives the same
//! answers for what was already read. Once the attempt ran through, its commit is one etcd
//! transaction: `If` every key read still has the revision read (`create_revision == 0`
//! for a key read absent), and every range counted for a cap has had no key created since,
//! `Then` every buffered write. A lost compare means another writer got there first: the
//! store refreshes the cache and runs the attempt again.
//!
//! Records are read and written by tree and key ([`Attempt::get`], [`Attempt::put`],
//! [`Attempt::delete`]), the trees and keys of the sled backend, so a new record kind is a
//! few lines on top of those.

use std::collections::{BTreeMap, HashMap};

use serde::{de::DeserializeOwned, Serialize};

use super::client::{compare_revision, delete_op, put_op, range_values};
use super::keys::Keys;
use super::pb::etcdserverpb::{compare, Compare, RequestOp};
use super::pb::mvccpb::KeyValue;
use crate::id::Id;
use crate::model::{ClusterRecord, ClusterRef, NodeRecord, Refusal};
use crate::store::apply::RecordTx;
use crate::store::caps::{self, Caps};
use crate::store::sled::records::{decode, encode};
use crate::store::{StorageError, Write};

/// What stops an attempt before it can be committed.
#[derive(Debug)]
pub(super) enum Miss {
    /// These keys must be fetched first.
    Keys(Vec<Vec<u8>>),
    /// The number of keys in these trees must be counted first (for a cap).
    Counts(Vec<&'static str>),
    /// The store failed (a corrupt record, no fresh id).
    Failed(StorageError),
}

/// A fetched key: its value and `mod_revision`, or `None` if it was absent.
pub(super) type Fetched = Option<(Vec<u8>, i64)>;

/// What the store has read from etcd for the attempts of one batch.
#[derive(Debug, Default)]
pub(super) struct Cache {
    values: HashMap<Vec<u8>, Fetched>,
    /// Per tree counted for a cap: how many keys it held, and the revision counted at.
    counts: HashMap<&'static str, (u64, i64)>,
}

impl Cache {
    /// Records fetched key-values (`None` for a key found absent).
    pub(super) fn insert(&mut self, key: Vec<u8>, value: Option<KeyValue>) {
        self.values
            .insert(key, value.map(|kv| (kv.value, kv.mod_revision)));
    }

    /// Records a tree's count.
    pub(super) fn insert_count(&mut self, tree: &'static str, count: u64, revision: i64) {
        self.counts.insert(tree, (count, revision));
    }

    /// Refreshes the keys a lost transaction's failure branch read back (in read order).
    pub(super) fn refresh(
        &mut self,
        keys: &[Vec<u8>],
        responses: Vec<super::pb::etcdserverpb::ResponseOp>,
    ) {
        self.values.clear();
        self.counts.clear();
        for (key, value) in keys.iter().zip(range_values(responses)) {
            self.insert(key.clone(), value);
        }
    }
}

/// One run of a batch's writes over the cache.
pub(super) struct Attempt<'a> {
    keys: &'a Keys,
    cache: &'a Cache,
    caps: Option<Caps>,
    /// Every key read from the cache: its `mod_revision`, 0 if it was absent.
    reads: BTreeMap<Vec<u8>, i64>,
    /// Every key written: its new value, or `None` to delete it.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Trees counted for a cap: the revision counted at (no key may be created since).
    guards: BTreeMap<&'static str, i64>,
    /// Nodes and clusters this attempt created so far (counted against the caps).
    created_nodes: u64,
    created_clusters: u64,
}

impl<'a> Attempt<'a> {
    /// A fresh attempt over `cache`, refusing past `caps`.
    pub(super) fn new(keys: &'a Keys, cache: &'a Cache, caps: Option<Caps>) -> Attempt<'a> {
        Attempt {
            keys,
            cache,
            caps,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            guards: BTreeMap::new(),
            created_nodes: 0,
            created_clusters: 0,
        }
    }

    /// A new, empty attempt over the same cache and caps (to learn what a write would read).
    pub(super) fn fresh(&self) -> Attempt<'a> {
        Attempt::new(self.keys, self.cache, self.caps)
    }

    /// True if the attempt writes nothing (every write was refused or changed nothing).
    pub(super) fn writes_nothing(&self) -> bool {
        self.writes.is_empty()
    }

    /// The raw value of `key` in `tree`, as this attempt sees it.
    pub(super) fn get_raw(&mut self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Miss> {
        self.get_full(self.keys.key(tree, key), Vec::new())
    }

    /// The value of a full key; a miss fetches it together with `also`.
    fn get_full(&mut self, full: Vec<u8>, also: Vec<Vec<u8>>) -> Result<Option<Vec<u8>>, Miss> {
        if let Some(written) = self.writes.get(&full) {
            return Ok(written.clone());
        }
        match self.cache.values.get(&full) {
            Some(fetched) => {
                let revision = fetched.as_ref().map_or(0, |(_, r)| *r);
                self.reads.insert(full, revision);
                Ok(fetched.as_ref().map(|(v, _)| v.clone()))
            }
            None => {
                let mut keys = vec![full];
                keys.extend(
                    also.into_iter()
                        .filter(|k| !self.cache.values.contains_key(k)),
                );
                Err(Miss::Keys(keys))
            }
        }
    }

    /// The record stored under `key` in `tree`, decoded.
    pub(super) fn get<T: DeserializeOwned>(
        &mut self,
        tree: &str,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, Miss> {
        match self.get_raw(tree, key)? {
            Some(bytes) => decode(what, key, &bytes).map(Some).map_err(Miss::Failed),
            None => Ok(None),
        }
    }

    /// Stores a raw value under `key` in `tree`.
    pub(super) fn put_raw(&mut self, tree: &str, key: &[u8], value: Vec<u8>) {
        self.writes.insert(self.keys.key(tree, key), Some(value));
    }

    /// Stores a record under `key` in `tree`.
    pub(super) fn put<T: Serialize>(
        &mut self,
        tree: &str,
        key: &[u8],
        what: &str,
        value: &T,
    ) -> Result<(), Miss> {
        let bytes = encode(what, value).map_err(Miss::Failed)?;
        self.put_raw(tree, key, bytes);
        Ok(())
    }

    /// Deletes `key` in `tree`.
    pub(super) fn delete(&mut self, tree: &str, key: &[u8]) {
        self.writes.insert(self.keys.key(tree, key), None);
    }

    /// Whether a node or a cluster has this id; a miss fetches both keys at once.
    fn id_used_by(&mut self, tree: &'static str, id: &Id) -> Result<bool, Miss> {
        let node = self.keys.key(Keys::NODES, id.as_bytes());
        let cluster = self.keys.key(Keys::CLUSTERS, id.as_bytes());
        let (full, also) = if tree == Keys::NODES {
            (node, cluster)
        } else {
            (cluster, node)
        };
        Ok(self.get_full(full, vec![also])?.is_some())
    }

    /// Counts one more key of `tree` against `max`, reading the tree's count first.
    fn admit(
        &mut self,
        tree: &'static str,
        what: &'static str,
        created: u64,
        max: u64,
    ) -> Result<Result<(), Refusal>, Miss> {
        let Some(&(count, revision)) = self.cache.counts.get(tree) else {
            return Err(Miss::Counts(vec![tree]));
        };
        self.guards.insert(tree, revision);
        Ok(caps::admit(what, count + created, max))
    }

    /// The transaction that commits this attempt: its compares, its writes, and the keys
    /// its failure branch reads back (to refresh the cache after a lost compare). The
    /// operation key `op` (created with `lease`) marks that it applied.
    pub(super) fn into_txn(
        self,
        op: Vec<u8>,
        lease: i64,
    ) -> (Vec<Compare>, Vec<RequestOp>, Vec<Vec<u8>>) {
        use compare::{CompareResult, CompareTarget};
        let mut compares = Vec::new();
        for (key, revision) in &self.reads {
            compares.push(if *revision == 0 {
                compare_revision(
                    key.clone(),
                    Vec::new(),
                    CompareTarget::Create,
                    CompareResult::Equal,
                    0,
                )
            } else {
                compare_revision(
                    key.clone(),
                    Vec::new(),
                    CompareTarget::Mod,
                    CompareResult::Equal,
                    *revision,
                )
            });
        }
        for (tree, revision) in &self.guards {
            // No key of the tree created after the count: every key's create_revision is
            // below revision + 1 (an empty range compares as one key at revision 0).
            let (start, end) = self.keys.tree_range(tree);
            compares.push(compare_revision(
                start,
                end,
                CompareTarget::Create,
                CompareResult::Less,
                revision + 1,
            ));
        }
        compares.push(compare_revision(
            op.clone(),
            Vec::new(),
            CompareTarget::Create,
            CompareResult::Equal,
            0,
        ));
        let mut success: Vec<RequestOp> = self
            .writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => put_op(key, value, 0),
                None => delete_op(key),
            })
            .collect();
        success.push(put_op(op, super::OP_APPLIED.to_vec(), lease));
        let read_back = self.reads.into_keys().collect();
        (compares, success, read_back)
    }
}

impl RecordTx for Attempt<'_> {
    type Error = Miss;

    fn fail(error: StorageError) -> Miss {
        Miss::Failed(error)
    }

    fn node(&mut self, id: &Id) -> Result<Option<NodeRecord>, Miss> {
        self.get(Keys::NODES, id.as_bytes(), "node")
    }

    fn has_node(&mut self, id: &Id) -> Result<bool, Miss> {
        self.id_used_by(Keys::NODES, id)
    }

    fn cluster(&mut self, id: &[u8]) -> Result<Option<ClusterRecord>, Miss> {
        self.get(Keys::CLUSTERS, id, "cluster")
    }

    fn has_cluster(&mut self, id: &Id) -> Result<bool, Miss> {
        self.id_used_by(Keys::CLUSTERS, id)
    }

    fn cluster_id_named(&mut self, name: &str) -> Result<Option<Vec<u8>>, Miss> {
        self.get_raw(Keys::NAMES, name.as_bytes())
    }

    fn put_node(&mut self, node: &NodeRecord) -> Result<(), Miss> {
        self.put(Keys::NODES, node.id.as_bytes(), "node", node)
    }

    fn put_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), Miss> {
        self.put(Keys::CLUSTERS, cluster.id.as_bytes(), "cluster", cluster)
    }

    fn put_name(&mut self, name: &str, id: &Id) -> Result<(), Miss> {
        self.put_raw(Keys::NAMES, name.as_bytes(), id.as_bytes().to_vec());
        Ok(())
    }

    fn remove_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), Miss> {
        self.delete(Keys::CLUSTERS, cluster.id.as_bytes());
        if self
            .get_raw(Keys::NAMES, cluster.name.as_bytes())?
            .as_deref()
            == Some(cluster.id.as_bytes())
        {
            self.delete(Keys::NAMES, cluster.name.as_bytes());
        }
        Ok(())
    }

    fn admit_node(&mut self) -> Result<Result<(), Refusal>, Miss> {
        let Some(max) = self.caps.map(|c| c.max_nodes) else {
            return Ok(Ok(()));
        };
        let admitted = self.admit(Keys::NODES, "nodes", self.created_nodes, max)?;
        if admitted.is_ok() {
            self.created_nodes += 1;
        }
        Ok(admitted)
    }

    fn admit_cluster(&mut self) -> Result<Result<(), Refusal>, Miss> {
        let Some(max) = self.caps.map(|c| c.max_clusters) else {
            return Ok(Ok(()));
        };
        let admitted = self.admit(Keys::CLUSTERS, "clusters", self.created_clusters, max)?;
        if admitted.is_ok() {
            self.created_clusters += 1;
        }
        Ok(admitted)
    }
}

/// The keys a write will surely read: fetched before its first attempt, so most writes
/// need one round trip of reads rather than one per record.
pub(super) fn likely_reads(keys: &Keys, write: &Write) -> Vec<Vec<u8>> {
    let cluster_keys = |cluster: &ClusterRef| match cluster {
        ClusterRef::Id(id) => keys.key(Keys::CLUSTERS, id.as_bytes()),
        ClusterRef::Name(name) => keys.key(Keys::NAMES, name.as_bytes()),
    };
    match write {
        Write::RegisterNode { node, .. } => match &node.id {
            Some(id) => vec![keys.key(Keys::NODES, id.as_bytes())],
            None => Vec::new(),
        },
        Write::CreateCluster { cluster, .. } => {
            vec![keys.key(Keys::NAMES, cluster.name.as_bytes())]
        }
        Write::Join { cluster, node, .. } => {
            vec![
                cluster_keys(cluster),
                keys.key(Keys::NODES, node.as_bytes()),
            ]
        }
    }
}
