//! The registry's durable state, as a port: the traits a storage backend implements, and
//! the two backends xlreg has.
//!
//! This module owns the port and what it speaks besides the records of [`crate::model`]:
//! - [`SessionStore`], what a protocol session needs: read a cluster with its members' node
//!   records ([`ClusterView`]), apply a batch of [`Write`]s atomically and durably with one
//!   answer per write, watch a cluster for changes, draw a fresh id. Its methods return
//!   futures ([`StoreFuture`]), so a networked backend (etcd) fits; it is object-safe, so the
//!   driver and the handlers hold an `Arc<dyn SessionStore>` and are not generic.
//! - [`AdminStore`], what operators and tools need: iterate nodes and clusters, delete a
//!   cluster if a condition holds, delete a node that is no member ([`NodeDeletion`]), registry meta, counts and size, [`Snapshot`]s and restore
//!   as records, point-in-time [`StoreView`]s read lazily (online export and backup), and
//!   applying a write at once. Its methods block: admin work runs on blocking
//!   threads or in the command-line tool.
//! - [`StorageError`]: the store failed (I/O, the database, a corrupt record; after a
//!   failed write, flush or sync the sled store is failed for good, [`StorageError::Failed`],
//!   fail-stop: see `crate::failstop`). It is never a
//!   [`Refusal`] (the registry's rules turned a write down): a refusal is the answer to a
//!   request, a storage failure means nothing more may be acknowledged. [`StoreError`] is
//!   the one or the other, for the convenience methods that may return either.
//! - [`Caps`]: the registry-wide caps on clusters and nodes, enforced by the shared write
//!   logic for both backends (a new cluster or node past a cap is
//!   [`Refusal::RegistryFull`]).
//! - [`Backend`]: both ports and the store's fail-stop [`Health`], what a running registry
//!   holds (`Arc<dyn Backend>`); and [`BackendChoice`], the one place that opens a concrete
//!   backend (the daemon and the admin commands open through it and otherwise speak only
//!   the ports).
//! - The one source of fresh ids ([`IdSource`], owned by each store and used by its writer),
//!   and [`ClusterEvents`], which wakes whoever watches a cluster.
//!
//! Backends: [`Store`] (sled, in `store/sled/`: the registry's durable store, with group
//! commit) and [`MemoryStore`] (`store/memory.rs`: in memory, for `xlreg serve --ephemeral`
//! and the core's unit and property tests). Both apply every write through the same
//! function (`apply`), which reads records through a small transaction interface and calls
//! the rules of [`crate::model::rules`]; the conformance tests (`store/conformance.rs`) run
//! the same suite against both. docs/architecture.md describes how to add a backend.

mod apply;
mod caps;
mod changes;
mod choice;
#[cfg(test)]
mod conformance;
pub mod etcd;
mod ids;
pub mod memory;
mod sled;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use tokio::sync::watch;

pub use self::sled::{
    Durability, SledView, Snapshot, SnapshotRecords, Store, Verification, SCHEMA_VERSION,
};
pub use caps::{Caps, DEFAULT_MAX_CLUSTERS, DEFAULT_MAX_NODES};
pub use changes::ClusterEvents;
pub use choice::BackendChoice;
pub use ids::IdSource;
pub use memory::MemoryStore;

pub use crate::model::{
    ClusterRecord, ClusterRef, ClusterView, Counts, JoinOutcome, MemberRecord, NewCluster, NewNode,
    NodeRecord, Refusal, Registration, RegistrationOutcome, RegistryMeta, StorageError, StoreError,
    Write, Written,
};

use crate::failstop::Health;
use crate::id::Id;

/// A future returned by a port method: boxed, so the traits stay object-safe, and `Send`,
/// so it can be awaited on any runtime thread.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Every record of one kind, in id order, read lazily.
pub type Records<'a, T> = Box<dyn Iterator<Item = Result<T, StorageError>> + Send + 'a>;

/// One tree's raw entries (key, value), in key order, read lazily.
pub type RawEntries<'a> =
    Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + Send + 'a>;

/// A consistent point-in-time view of every tree of a store, read lazily: what
/// [`AdminStore::view`] returns, and what an online export or backup streams from.
///
/// Every entry is as it was when the view opened, however long reading it takes and
/// whatever is written meanwhile; reading it holds no more memory than the changes made while
/// it is open (for the sled store: the first pre-image of each key changed since, see
/// `store/sled/view.rs`). A [`Snapshot`] is a view too (a copy in memory). The records are
/// decoded by `registry_meta`, `nodes` and `clusters` on `dyn StoreView`.
pub trait StoreView: Send {
    /// The names of the store's trees, in order (sled's unused default tree left out).
    fn tree_names(&self) -> Vec<Vec<u8>>;

    /// The raw entries of the named tree, in key order (none for a tree it does not have).
    fn entries(&self, tree: &[u8]) -> RawEntries<'_>;
}

/// The answer to one write of a batch: what it did, or why the rules refused it.
pub type WriteAnswer = Result<Written, Refusal>;

/// What a protocol session needs from a store.
///
/// Guarantees every backend gives:
/// - [`apply`](SessionStore::apply) applies the batch's writes in order, atomically (all of
///   them or, on a [`StorageError`], none) and answers only once they are durable: a reply
///   built from an answer may be sent at once. Each write gets the answer it would have had
///   alone in that order; a refused write changes nothing and does not affect the others.
/// - Fresh ids (a node registering without one, a new cluster) come from the store's own
///   [`IdSource`] and are used by no node and no cluster.
/// - A watcher of a cluster ([`watch_cluster`](SessionStore::watch_cluster)) is woken by
///   every change to it made after the watch began, once that change is durable.
/// - After a [`StorageError`] the caller acknowledges nothing more from this batch.
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// The cluster, with the current record of each member's node; `None` if there is no
    /// such cluster.
    fn read_cluster(
        &self,
        cluster: ClusterRef,
    ) -> StoreFuture<'_, Result<Option<ClusterView>, StorageError>>;

    /// The node with this id, if registered (the driver asks, once an address has used up
    /// its registration quota, whether a registration is a known node's).
    fn read_node(&self, id: Id) -> StoreFuture<'_, Result<Option<NodeRecord>, StorageError>>;

    /// Applies `writes` in order, atomically and durably, and answers each.
    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, Result<Vec<WriteAnswer>, StorageError>>;

    /// A receiver woken by every change to `cluster` from now on. Watch first, then read:
    /// a change between the read and the wait is then never missed.
    fn watch_cluster(&self, cluster: &Id) -> watch::Receiver<()>;

    /// An id no node and no cluster has now, from the store's id source.
    fn fresh_id(&self) -> StoreFuture<'_, Result<Id, StorageError>>;

    /// Completes once every change this store has applied so far, by any session, is
    /// durable: a reply that reports what another session changed (a Create that found a
    /// cluster still being written, a GetCluster listing a fresh member) waits for it. A
    /// backend whose every visible change is already durable answers at once.
    fn durable(&self) -> StoreFuture<'_, Result<(), StorageError>>;
}

/// What operators, tools and the registry's own housekeeping need from a store. These
/// methods block; call them from blocking threads.
pub trait AdminStore: Send + Sync + std::fmt::Debug {
    /// The registry's own facts, if they have been set.
    fn registry_meta(&self) -> Result<Option<RegistryMeta>, StorageError>;

    /// Stores the registry's own facts (committed; durable after [`AdminStore::flush_blocking`]).
    fn set_registry_meta(&self, meta: &RegistryMeta) -> Result<(), StorageError>;

    /// The node with this id, if registered.
    fn node(&self, id: &Id) -> Result<Option<NodeRecord>, StorageError>;

    /// The cluster with this id or name, if any.
    fn cluster(&self, cluster: &ClusterRef) -> Result<Option<ClusterRecord>, StorageError>;

    /// The cluster with its members' node records, if any.
    fn cluster_view(&self, cluster: &ClusterRef) -> Result<Option<ClusterView>, StorageError>;

    /// Every registered node, in id order.
    fn nodes(&self) -> Records<'_, NodeRecord>;

    /// Every cluster, in id order.
    fn clusters(&self) -> Records<'_, ClusterRecord>;

    /// Deletes the cluster and its name (its member nodes stay registered) if `condition`
    /// holds for the cluster as it is inside the deleting transaction, so a join that lands
    /// after the caller looked is never lost. Returns the deleted cluster. Committed; durable
    /// after [`AdminStore::flush_blocking`]. Watchers of the cluster are woken.
    fn delete_cluster_if(
        &self,
        cluster: &ClusterRef,
        condition: &dyn Fn(&ClusterRecord) -> bool,
    ) -> Result<Option<ClusterRecord>, StorageError>;

    /// Deletes a registered node, unless it is a member of a cluster (then nothing changes
    /// and the clusters are named, [`NodeDeletion::Member`]). No join can make the node a
    /// member between the check and the removal. Committed; durable after
    /// [`AdminStore::flush_blocking`].
    fn delete_node(&self, id: &Id) -> Result<NodeDeletion, StorageError>;

    /// Sets the registry-wide caps ([`Caps`]; `serve --max-clusters`, `--max-nodes`): from
    /// now on a new cluster or node that would pass one is refused with
    /// [`Refusal::RegistryFull`], in [`SessionStore::apply`] and [`AdminStore::apply_now`]
    /// alike. Without a call, nothing is capped.
    fn set_caps(&self, caps: Caps) -> Result<(), StorageError>;

    /// Applies one write now, in its own transaction, committed but not yet durable (see
    /// [`AdminStore::flush_blocking`]): for tools and tests. Ids are drawn as for
    /// [`SessionStore::apply`].
    fn apply_now(&self, write: &Write) -> Result<Written, StoreError>;

    /// How many nodes, clusters and memberships the store holds.
    fn counts(&self) -> Result<Counts, StorageError>;

    /// The space the store takes, in bytes (on disk, or in memory for a memory store).
    fn size_on_disk(&self) -> Result<u64, StorageError>;

    /// The schema version of the stored data.
    fn schema_version(&self) -> Result<Option<u32>, StorageError>;

    /// A consistent point-in-time copy of every record.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;

    /// A consistent point-in-time view of every tree, read lazily: unlike
    /// [`AdminStore::snapshot`] it does not copy the store, and writers go on while it is read.
    /// Dropping it releases what it holds.
    fn view(&self) -> Result<Box<dyn StoreView + '_>, StorageError>;

    /// Loads every record of `snapshot` into this store, which must hold no nodes and no
    /// clusters; durable when it returns.
    fn restore(&self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// Makes every committed change durable, blocking.
    fn flush_blocking(&self) -> Result<(), StorageError>;

    /// The data directory, or `None` for a store kept in memory.
    fn data_dir(&self) -> Option<&Path>;
}

/// A backend a registry runs on: both ports, and the fail-stop state the daemon watches.
///
/// The registry's shared state holds an `Arc<dyn Backend>` ([`crate::registry::Registry`]),
/// opened by [`BackendChoice::open`]; the driver, the admin requests, the control socket,
/// the expiry sweeper, the metrics endpoint and the daemon's shutdown see nothing else. A
/// trait object coerces to `&dyn SessionStore` or `&dyn AdminStore` wherever only one port
/// is wanted. At shutdown the daemon makes everything durable with
/// [`AdminStore::flush_blocking`].
pub trait Backend: SessionStore + AdminStore {
    /// Whether the storage can still be trusted (fail-stop: see `crate::failstop`). The
    /// backend fails it at its first failed write, flush or sync, and refuses every read and
    /// write with [`StorageError::Failed`] from then on; it marks each store operation that
    /// could hang with [`Health::begin`], so the daemon's watchdog can fail a store whose
    /// operation runs past the store timeout. The daemon answers `/health` from it and exits
    /// for a restart once it has failed.
    fn health(&self) -> &Health;
}

/// What [`AdminStore::delete_node`] (and [`Store::delete_node`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeDeletion {
    /// The node was deleted; this was its record.
    Deleted(NodeRecord),
    /// No node has that ID.
    NoSuchNode,
    /// The node is a member of these clusters (by name), so it was kept.
    Member(Vec<String>),
}
