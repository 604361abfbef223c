//! The in-memory backend: the store's ports over plain maps, for `xlreg serve --ephemeral`
//! and the core's unit and property tests, and the proof that a backend can be added
//! without touching handlers, the driver or admin (a whole daemon runs on it: tests/daemon.rs).
//!
//! This module owns [`MemoryStore`]. It applies every write through the same `apply` as the
//! sled backend, under one mutex, so a batch is atomic and every write sees the ones before
//! it. "Durable" means applied: the memory store keeps nothing across processes. Its ids
//! come from its own [`IdSource`], seedable, so tests are deterministic. It holds a
//! [`Health`] like every [`Backend`]: nothing in memory fails by itself, but once the health
//! is failed (the daemon's watchdog, a test) it refuses every read and write.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use super::apply::{self, RecordTx};
use super::caps::{self, Caps};
use super::{
    AdminStore, Backend, ClusterEvents, ClusterView, IdSource, NodeDeletion, Records, SessionStore,
    Snapshot, StorageError, StoreError, StoreFuture, StoreView, WriteAnswer,
};
use crate::failstop::Health;
use crate::id::Id;
use crate::model::{
    ClusterRecord, ClusterRef, Counts, NodeRecord, Refusal, RegistryMeta, Write, Written,
};

/// The records of a memory store, keyed as the sled backend keys them (so both iterate in
/// the same order).
#[derive(Debug, Clone, Default)]
struct State {
    meta: Option<RegistryMeta>,
    nodes: BTreeMap<Vec<u8>, NodeRecord>,
    clusters: BTreeMap<Vec<u8>, ClusterRecord>,
    names: BTreeMap<String, Vec<u8>>,
    /// The registry-wide caps, if set; the maps themselves are the counts.
    caps: Option<Caps>,
}

impl RecordTx for State {
    type Error = StorageError;

    fn fail(error: StorageError) -> StorageError {
        error
    }

    fn node(&mut self, id: &Id) -> Result<Option<NodeRecord>, StorageError> {
        Ok(self.nodes.get(id.as_bytes()).cloned())
    }

    fn has_node(&mut self, id: &Id) -> Result<bool, StorageError> {
        Ok(self.nodes.contains_key(id.as_bytes()))
    }

    fn cluster(&mut self, id: &[u8]) -> Result<Option<ClusterRecord>, StorageError> {
        Ok(self.clusters.get(id).cloned())
    }

    fn has_cluster(&mut self, id: &Id) -> Result<bool, StorageError> {
        Ok(self.clusters.contains_key(id.as_bytes()))
    }

    fn cluster_id_named(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.names.get(name).cloned())
    }

    fn put_node(&mut self, node: &NodeRecord) -> Result<(), StorageError> {
        self.nodes.insert(node.id.as_bytes().to_vec(), node.clone());
        Ok(())
    }

    fn put_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), StorageError> {
        self.clusters
            .insert(cluster.id.as_bytes().to_vec(), cluster.clone());
        Ok(())
    }

    fn put_name(&mut self, name: &str, id: &Id) -> Result<(), StorageError> {
        self.names.insert(name.to_string(), id.as_bytes().to_vec());
        Ok(())
    }

    fn remove_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), StorageError> {
        self.clusters.remove(cluster.id.as_bytes());
        if self.names.get(&cluster.name).map(Vec::as_slice) == Some(cluster.id.as_bytes()) {
            self.names.remove(&cluster.name);
        }
        Ok(())
    }

    fn admit_node(&mut self) -> Result<Result<(), Refusal>, StorageError> {
        Ok(match self.caps {
            Some(c) => caps::admit("nodes", self.nodes.len() as u64, c.max_nodes),
            None => Ok(()),
        })
    }

    fn admit_cluster(&mut self) -> Result<Result<(), Refusal>, StorageError> {
        Ok(match self.caps {
            Some(c) => caps::admit("clusters", self.clusters.len() as u64, c.max_clusters),
            None => Ok(()),
        })
    }
}

/// A store kept in memory: nothing survives the process.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    ids: IdSource,
    events: ClusterEvents,
    health: Health,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store drawing ids from an RNG seeded by the operating system.
    pub fn new() -> MemoryStore {
        MemoryStore::with_ids(IdSource::from_os())
    }

    /// An empty store drawing ids from `ids` (seeded in tests).
    pub fn with_ids(ids: IdSource) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            ids,
            events: ClusterEvents::default(),
            health: Health::new(),
        }
    }

    /// Sets the registry-wide caps, as [`Store::set_caps`](super::Store::set_caps) does:
    /// from now on a new cluster or node past one is refused with
    /// [`Refusal::RegistryFull`].
    pub fn set_caps(&self, caps: Caps) -> Result<(), StorageError> {
        self.state()?.caps = Some(caps);
        Ok(())
    }

    /// The records, or [`StorageError::Failed`] once the store's health has failed.
    fn state(&self) -> Result<MutexGuard<'_, State>, StorageError> {
        self.health.check()?;
        // Every change is made on a copy or decided before it is made, so a panic elsewhere
        // cannot leave the maps half-changed.
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every record of one kind, copied out under the lock (an error once failed).
    fn records<T: Clone + Send + 'static>(
        &self,
        of: impl FnOnce(&State) -> Vec<T>,
    ) -> Records<'_, T> {
        match self.state() {
            Ok(state) => Box::new(of(&state).into_iter().map(Ok)),
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    }

    /// Applies `writes` in order, all or (on a failure) none.
    fn apply_all(&self, writes: &[Write]) -> Result<Vec<WriteAnswer>, StorageError> {
        let mut state = self.state()?;
        // A write fails (rather than being refused) only before it changes anything, but
        // earlier writes of the batch would stay: keep a copy to put back.
        let before = (writes.len() > 1).then(|| state.clone());
        let answers: Result<Vec<_>, _> = writes
            .iter()
            .map(|write| apply::apply_write(&mut *state, write, &self.ids))
            .collect();
        if answers.is_err() {
            if let Some(before) = before {
                *state = before;
            }
        }
        answers
    }
}

impl SessionStore for MemoryStore {
    fn read_cluster(
        &self,
        cluster: ClusterRef,
    ) -> StoreFuture<'_, Result<Option<ClusterView>, StorageError>> {
        Box::pin(async move { AdminStore::cluster_view(self, &cluster) })
    }

    fn read_node(&self, id: Id) -> StoreFuture<'_, Result<Option<NodeRecord>, StorageError>> {
        Box::pin(async move { AdminStore::node(self, &id) })
    }

    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, Result<Vec<WriteAnswer>, StorageError>> {
        Box::pin(async move {
            let answers = self.apply_all(&writes)?;
            self.events.notify_joins(&answers);
            Ok(answers)
        })
    }

    fn watch_cluster(&self, cluster: &Id) -> watch::Receiver<()> {
        self.events.subscribe(cluster)
    }

    fn fresh_id(&self) -> StoreFuture<'_, Result<Id, StorageError>> {
        Box::pin(async move { apply::draw_unused_id(&mut *self.state()?, &self.ids) })
    }

    fn durable(&self) -> StoreFuture<'_, Result<(), StorageError>> {
        // Nothing here outlives the process: every applied change is as durable as it gets.
        Box::pin(async { self.health.check() })
    }
}

impl AdminStore for MemoryStore {
    fn registry_meta(&self) -> Result<Option<RegistryMeta>, StorageError> {
        Ok(self.state()?.meta.clone())
    }

    fn set_registry_meta(&self, meta: &RegistryMeta) -> Result<(), StorageError> {
        self.state()?.meta = Some(meta.clone());
        Ok(())
    }

    fn node(&self, id: &Id) -> Result<Option<NodeRecord>, StorageError> {
        self.state()?.node(id)
    }

    fn cluster(&self, cluster: &ClusterRef) -> Result<Option<ClusterRecord>, StorageError> {
        apply::resolve(&mut *self.state()?, cluster)
    }

    fn cluster_view(&self, cluster: &ClusterRef) -> Result<Option<ClusterView>, StorageError> {
        let mut state = self.state()?;
        apply::resolve(&mut *state, cluster)?
            .map(|record| ClusterView::build(record, |id| state.node(id)))
            .transpose()
    }

    fn nodes(&self) -> Records<'_, NodeRecord> {
        self.records(|state| state.nodes.values().cloned().collect())
    }

    fn clusters(&self) -> Records<'_, ClusterRecord> {
        self.records(|state| state.clusters.values().cloned().collect())
    }

    fn delete_cluster_if(
        &self,
        cluster: &ClusterRef,
        condition: &dyn Fn(&ClusterRecord) -> bool,
    ) -> Result<Option<ClusterRecord>, StorageError> {
        let deleted = apply::delete_cluster_if(&mut *self.state()?, cluster, condition)?;
        if let Some(cluster) = &deleted {
            self.events.notify(&cluster.id);
        }
        Ok(deleted)
    }

    fn delete_node(&self, id: &Id) -> Result<NodeDeletion, StorageError> {
        let mut state = self.state()?;
        let Some(node) = state.nodes.get(id.as_bytes()).cloned() else {
            return Ok(NodeDeletion::NoSuchNode);
        };
        let memberships: Vec<String> = state
            .clusters
            .values()
            .filter(|c| c.members.iter().any(|m| &m.node_id == id))
            .map(|c| c.name.clone())
            .collect();
        if !memberships.is_empty() {
            return Ok(NodeDeletion::Member(memberships));
        }
        state.nodes.remove(id.as_bytes());
        Ok(NodeDeletion::Deleted(node))
    }

    fn set_caps(&self, caps: Caps) -> Result<(), StorageError> {
        MemoryStore::set_caps(self, caps)
    }

    fn apply_now(&self, write: &Write) -> Result<Written, StoreError> {
        Ok(apply::apply_write(&mut *self.state()?, write, &self.ids)??)
    }

    fn counts(&self) -> Result<Counts, StorageError> {
        let state = self.state()?;
        Ok(Counts {
            nodes: state.nodes.len() as u64,
            clusters: state.clusters.len() as u64,
            members: state
                .clusters
                .values()
                .map(|c| u64::from(c.member_count()))
                .sum(),
        })
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        // What the records would take encoded: the snapshot's size.
        Ok(AdminStore::snapshot(self)?.encoded_len() as u64)
    }

    fn schema_version(&self) -> Result<Option<u32>, StorageError> {
        Ok(Some(super::SCHEMA_VERSION))
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let state = self.state()?;
        let nodes: Vec<NodeRecord> = state.nodes.values().cloned().collect();
        let clusters: Vec<ClusterRecord> = state.clusters.values().cloned().collect();
        Snapshot::from_records(state.meta.as_ref(), &nodes, &clusters)
    }

    fn view(&self) -> Result<Box<dyn StoreView + '_>, StorageError> {
        // A copy taken under the store's lock: the memory store holds everything in memory
        // anyway, and serves tests, not registries of a size where the copy matters.
        Ok(Box::new(AdminStore::snapshot(self)?))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let records = snapshot.decode_all()?;
        let mut state = self.state()?;
        if !state.nodes.is_empty() || !state.clusters.is_empty() {
            return Err(StorageError::NotEmpty {
                dir: Default::default(),
            });
        }
        apply::load(&mut *state, &records)?;
        if records.meta.is_some() {
            state.meta = records.meta;
        }
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), StorageError> {
        // Applied is as durable as a memory store gets.
        self.health.check()
    }

    fn data_dir(&self) -> Option<&Path> {
        None
    }
}

impl Backend for MemoryStore {
    fn health(&self) -> &Health {
        &self.health
    }
}
