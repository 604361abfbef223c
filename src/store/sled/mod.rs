//! The sled backend: the registry's durable store, nodes, clusters and their members kept
//! in a sled database.
//!
//! This module owns [`Store`], the backend `xlreg serve` runs on, and its transactions: every
//! write goes through the shared `store::apply` inside one sled transaction over the
//! cluster and node trees, so the registry's rules (a cluster is never overfilled, member
//! names are unique within a cluster, a node id stays bound to the keys it first registered
//! with) hold under any interleaving. Submodules own the record encoding (`records`), the
//! sled error mapping (`error`), schema versions and migrations (`schema`), group commit
//! (`commit`), syncing sled's files (`disk`), point-in-time snapshots and the gate every
//! mutation passes (`snapshot`), point-in-time views read lazily, in memory bounded by the
//! changes made while they are open (`view`), and the consistency checks (`verify`).
//! [`Store`] implements both ports, [`SessionStore`](crate::store::SessionStore) and
//! [`AdminStore`](crate::store::AdminStore) (`port`).
//!
//! # On-disk layout (schema 2: schema 1 with the admission state inside each cluster record)
//!
//! The data directory is a sled 0.34.7 database with these trees; values are
//! `bincode::serialize`-encoded (bincode 1.3.3) records of [`crate::model`]:
//!
//! | tree            | key                              | value                                   |
//! |-----------------|----------------------------------|-----------------------------------------|
//! | `meta`          | `b"schema_version"`              | u32, big-endian ([`SCHEMA_VERSION`])    |
//! | `meta`          | `b"registry"`                    | [`RegistryMeta`]                        |
//! | `nodes`         | node id bytes (32, or 20 legacy) | [`NodeRecord`]                          |
//! | `clusters`      | cluster id bytes                 | [`ClusterRecord`], members inline (≤ 64) |
//! | `cluster_names` | cluster name, UTF-8 bytes        | cluster id bytes                        |
//!
//! Node and cluster ids are drawn so that no id is used by both a node and a cluster.
//! Migrations between layouts live in the crate's `migrations/` directory (see `schema`).
//!
//! # Durability
//!
//! The protocol's changes go through [`Store::write`] (and the port's `apply`): one writer
//! thread applies concurrent writes in one transaction, flushes once, syncs every file
//! sled's flush leaves unsynced (`disk` lists them) and only then answers, so an
//! acknowledged change survives power loss (group commit, `commit`). The synchronous
//! mutating methods commit in memory and return; a caller that must not acknowledge a
//! change before it is on disk then awaits [`Store::durable`].
//!
//! # Fail-stop
//!
//! The store holds a [`Health`] ([`Store::health`]; see `crate::failstop` for why): the
//! first failed transaction, flush or sync of the writer, a writer panic, or a store
//! operation the watchdog finds hung fails it for good, and from then on every read and
//! write is refused with [`StorageError::Failed`]. sled's own periodic flusher is off (the
//! writer flushes, and treats a failure as fatal); a panic of sled while opening is
//! [`StorageError::OpenFailed`]; the data directory is created 0700.

mod commit;
pub(super) mod disk;
mod error;
mod port;
pub(super) mod records;
pub(super) mod schema;
mod snapshot;
mod verify;
mod view;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

pub use disk::Durability;
pub(crate) use error::log_panics;
pub use schema::SCHEMA_VERSION;
pub use snapshot::{Snapshot, SnapshotRecords};
pub use verify::Verification;
pub use view::SledView;

use super::apply::{self, RecordTx};
use super::caps::{self, Caps};
use super::{
    ClusterEvents, ClusterView, IdSource, NodeDeletion, StorageError, StoreError, WriteAnswer,
};
use crate::failstop::Health;
use crate::id::Id;
use crate::model::{
    ClusterRecord, ClusterRef, Counts, JoinOutcome, MemberRecord, NewCluster, NewNode, NodeRecord,
    Refusal, Registration, RegistryMeta, Write, Written,
};
use commit::GroupCommit;
use disk::DiskFiles;
use records::{decode, encode};
use snapshot::Gate;
use view::{OpenViews, Views};

/// sled's page cache size. sled's default (1 GiB) would let a large registry's resident
/// memory grow far beyond what a registry needs: the hot data (clusters being formed) is
/// small, and everything else is read rarely.
const CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// Key of the registry facts in the `meta` tree.
pub(crate) const REGISTRY_KEY: &[u8] = b"registry";

/// The registry's store: a handle on an open sled database. Cloning is cheap and clones share
/// the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    meta: sled::Tree,
    nodes: sled::Tree,
    clusters: sled::Tree,
    cluster_names: sled::Tree,
    /// The data directory, `None` for a temporary store.
    dir: Option<PathBuf>,
    /// sled's files, kept to sync them after each flush; `None` for a temporary store.
    disk: Option<DiskFiles>,
    commit: GroupCommit,
    /// Every mutation passes this gate; a snapshot closes it while it copies the trees, a
    /// view while it registers.
    gate: Gate,
    /// The point-in-time views open now, which every mutation records pre-images for.
    views: Views,
    /// The one source of fresh ids of this store.
    ids: IdSource,
    /// Wakes watchers of a cluster once a change to it is durable.
    events: ClusterEvents,
    /// Whether the storage can still be trusted (fail-stop: see `crate::failstop`).
    health: Health,
    /// The registry-wide caps and the counts they bound (`store::caps`).
    held: caps::Held,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// The trees a registry write touches, inside one sled transaction.
struct SledTx<'a> {
    names: &'a TransactionalTree,
    clusters: &'a TransactionalTree,
    nodes: &'a TransactionalTree,
    /// The registry-wide caps, and what this transaction attempt has created so far.
    held: &'a caps::Held,
    created: &'a caps::TxCount,
    /// The open views: each key is recorded before it changes (`view`).
    views: &'a OpenViews,
}

/// Names of the trees a transaction writes, as the views record them.
const NODES_TREE: &[u8] = b"nodes";
const CLUSTERS_TREE: &[u8] = b"clusters";
const NAMES_TREE: &[u8] = b"cluster_names";

/// A failure inside a sled transaction: a conflict (sled reruns the closure), a storage
/// failure, or one found while applying (an abort).
type TxError = ConflictableTransactionError<StorageError>;

/// Turns a decoding or encoding failure inside a transaction into an abort.
fn tx<T>(r: Result<T, StorageError>) -> Result<T, TxError> {
    r.map_err(ConflictableTransactionError::Abort)
}

impl RecordTx for SledTx<'_> {
    type Error = TxError;

    fn fail(error: StorageError) -> TxError {
        ConflictableTransactionError::Abort(error)
    }

    fn node(&mut self, id: &Id) -> Result<Option<NodeRecord>, TxError> {
        match self.nodes.get(id.as_bytes())? {
            Some(v) => Ok(Some(tx(decode("node", id.as_bytes(), &v))?)),
            None => Ok(None),
        }
    }

    fn has_node(&mut self, id: &Id) -> Result<bool, TxError> {
        Ok(self.nodes.get(id.as_bytes())?.is_some())
    }

    fn cluster(&mut self, id: &[u8]) -> Result<Option<ClusterRecord>, TxError> {
        match self.clusters.get(id)? {
            Some(v) => Ok(Some(tx(decode("cluster", id, &v))?)),
            None => Ok(None),
        }
    }

    fn has_cluster(&mut self, id: &Id) -> Result<bool, TxError> {
        Ok(self.clusters.get(id.as_bytes())?.is_some())
    }

    fn cluster_id_named(&mut self, name: &str) -> Result<Option<Vec<u8>>, TxError> {
        Ok(self.names.get(name.as_bytes())?.map(|id| id.to_vec()))
    }

    fn put_node(&mut self, node: &NodeRecord) -> Result<(), TxError> {
        let key = node.id.as_bytes();
        let before = self.nodes.insert(key, tx(encode("node", node))?)?;
        self.views.record(NODES_TREE, key, before.as_ref());
        Ok(())
    }

    fn put_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), TxError> {
        let key = cluster.id.as_bytes();
        let before = self.clusters.insert(key, tx(encode("cluster", cluster))?)?;
        self.views.record(CLUSTERS_TREE, key, before.as_ref());
        Ok(())
    }

    fn put_name(&mut self, name: &str, id: &Id) -> Result<(), TxError> {
        let before = self.names.insert(name.as_bytes(), id.as_bytes())?;
        self.views
            .record(NAMES_TREE, name.as_bytes(), before.as_ref());
        Ok(())
    }

    fn remove_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), TxError> {
        let key = cluster.id.as_bytes();
        let before = self.clusters.remove(key)?;
        self.views.record(CLUSTERS_TREE, key, before.as_ref());
        if let Some(id) = self.names.get(cluster.name.as_bytes())? {
            if id.as_ref() == cluster.id.as_bytes() {
                let before = self.names.remove(cluster.name.as_bytes())?;
                self.views
                    .record(NAMES_TREE, cluster.name.as_bytes(), before.as_ref());
            }
        }
        Ok(())
    }

    fn admit_node(&mut self) -> Result<Result<(), Refusal>, TxError> {
        Ok(self.created.new_node(self.held))
    }

    fn admit_cluster(&mut self) -> Result<Result<(), Refusal>, TxError> {
        Ok(self.created.new_cluster(self.held))
    }
}

impl Store {
    /// Opens (creating if missing) the store in `dir`, bringing its schema up to date.
    /// Acknowledged changes survive power loss ([`Durability::PowerLoss`]).
    ///
    /// Fails with [`StorageError::Locked`] if another store holds the directory, with
    /// [`StorageError::SchemaTooNew`] if a newer xlreg wrote it, and with
    /// [`StorageError::OpenFailed`] if sled panicked while opening it (sled 0.34.7 does on
    /// some I/O failures while it recovers). The directory is created 0700 (narrowed to 0700
    /// if it exists).
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        Store::open_with(dir, Durability::PowerLoss)
    }

    /// Opens the store in `dir` with an explicit [`Durability`] (the durability benchmark
    /// compares them; the registry always uses [`Store::open`]).
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Store, StorageError> {
        // sled 0.34.7 panics on some I/O failures while it recovers (a failed fsync, say):
        // that is a storage error naming the directory, not a crash with a backtrace.
        let opened = std::panic::catch_unwind(|| {
            let db = open_db(dir)?;
            schema::migrate(&db)?;
            // After sled's own start-up writes (conf, snapshot) and the migration.
            let disk = DiskFiles::open(dir, durability)?;
            Ok::<_, StorageError>((db, disk))
        });
        let (db, disk) = opened.map_err(|panic| error::open_panicked(dir, panic.as_ref()))??;
        Store::from_db(db, Some(dir.to_path_buf()), Some(disk), IdSource::from_os())
    }

    /// Makes a store of a sled database just opened on `dir`: brings its schema up to
    /// date and syncs what sled wrote while opening.
    fn from_open_db(
        db: sled::Db,
        dir: &Path,
        durability: Durability,
    ) -> Result<Store, StorageError> {
        schema::migrate(&db)?;
        // After sled's own start-up writes (conf, snapshot) and the migration.
        let disk = DiskFiles::open(dir, durability)?;
        Store::from_db(db, Some(dir.to_path_buf()), Some(disk), IdSource::from_os())
    }

    /// Opens `dir` in a test that has just dropped another `Store` on it. sled's background
    /// threads may still finish that store's last writes for a moment after the drop, and
    /// until they do the directory stays locked; this waits (at most 10 s) for the lock.
    #[cfg(test)]
    pub(crate) fn reopen(dir: &Path) -> Result<Store, StorageError> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Err(StorageError::Locked { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    /// A store held in memory only and deleted when dropped, for tests and `--ephemeral`.
    pub fn temporary() -> Result<Store, StorageError> {
        Store::temporary_with_ids(IdSource::from_os())
    }

    /// A temporary store drawing its fresh ids from `ids` (a seeded source, in tests).
    pub fn temporary_with_ids(ids: IdSource) -> Result<Store, StorageError> {
        let db = sled::Config::new().temporary(true).open()?;
        schema::migrate(&db)?;
        Store::from_db(db, None, None, ids)
    }

    fn from_db(
        db: sled::Db,
        dir: Option<PathBuf>,
        disk: Option<DiskFiles>,
        ids: IdSource,
    ) -> Result<Store, StorageError> {
        Ok(Store {
            inner: Arc::new(Inner {
                meta: db.open_tree("meta")?,
                nodes: db.open_tree("nodes")?,
                clusters: db.open_tree("clusters")?,
                cluster_names: db.open_tree("cluster_names")?,
                db,
                dir,
                disk,
                commit: GroupCommit::new(),
                gate: Gate::default(),
                views: Views::default(),
                ids,
                events: ClusterEvents::default(),
                health: Health::new(),
                held: caps::Held::default(),
            }),
        })
    }

    /// Sets the registry-wide caps (`serve --max-clusters`, `--max-nodes`): from now on a
    /// create or registration that would pass one is refused with
    /// [`Refusal::RegistryFull`]. Counts the clusters and nodes held now (reads every key
    /// once). Without a call, nothing is capped.
    pub fn set_caps(&self, caps: Caps) -> Result<(), StorageError> {
        self.check_health()?;
        let clusters = self.inner.clusters.len() as u64;
        let nodes = self.inner.nodes.len() as u64;
        self.inner.held.set(caps, clusters, nodes);
        Ok(())
    }

    /// The data directory, or `None` for a temporary store.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The registry's own facts, if they have been set.
    pub fn registry_meta(&self) -> Result<Option<RegistryMeta>, StorageError> {
        self.check_health()?;
        match self.inner.meta.get(REGISTRY_KEY)? {
            Some(v) => Ok(Some(decode("registry meta", REGISTRY_KEY, &v)?)),
            None => Ok(None),
        }
    }

    /// Stores the registry's own facts.
    pub fn set_registry_meta(&self, meta: &RegistryMeta) -> Result<(), StorageError> {
        self.check_health()?;
        let value = encode("registry meta", meta)?;
        let _gate = self.inner.gate.pass();
        self.inner.views.open().record_current(
            &self.inner.meta,
            schema::META_TREE.as_bytes(),
            REGISTRY_KEY,
        )?;
        self.inner.meta.insert(REGISTRY_KEY, value)?;
        self.inner.commit.bump();
        Ok(())
    }

    /// Registers a node, or re-registers a known one ([`crate::model::rules::register`]).
    /// Without an id, the node gets a fresh one from the store's id source, used by no node
    /// and no cluster. Committed, not yet durable (see [`Store::durable`]).
    pub fn register_node(&self, new: NewNode, now_ms: u64) -> Result<Registration, StoreError> {
        let ids = &self.inner.ids;
        StoreError::flatten(self.transact(|t| apply::register(t, &new, now_ms, ids)))
    }

    /// The node with this id, if registered.
    pub fn node(&self, id: &Id) -> Result<Option<NodeRecord>, StorageError> {
        self.check_health()?;
        match self.inner.nodes.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode("node", id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Creates a cluster, or returns the existing one of that name
    /// ([`crate::model::rules::create`]); returns the cluster and whether it was created.
    /// A new cluster past the registry's cap is refused ([`Refusal::RegistryFull`]).
    /// Committed, not yet durable.
    pub fn create_cluster(
        &self,
        new: NewCluster,
        now_ms: u64,
    ) -> Result<(ClusterRecord, bool), StoreError> {
        let ids = &self.inner.ids;
        StoreError::flatten(self.transact(|t| apply::create(t, &new, now_ms, ids)))
    }

    /// Adds a node to a cluster, or gives a member its slot back
    /// ([`crate::model::rules::join`]). The node's current record is re-read inside the
    /// transaction. Joins are serialised, so a cluster can never be overfilled. Committed,
    /// not yet durable.
    pub fn join(
        &self,
        cluster: &ClusterRef,
        node: &NodeRecord,
        now_ms: u64,
    ) -> Result<JoinOutcome, StoreError> {
        StoreError::flatten(self.transact(|t| apply::join(t, cluster, &node.id, None, now_ms)))
    }

    /// Applies one [`Write`] in its own transaction. The change is committed, not yet durable:
    /// see [`Store::durable`], or use [`Store::write`], which batches and waits for both.
    pub fn apply(&self, write: &Write) -> Result<Written, StoreError> {
        let ids = &self.inner.ids;
        StoreError::flatten(self.transact(|t| apply::apply_write(t, write, ids)))
    }

    /// Applies `writes` in order in one transaction, each with the answer it would have had
    /// alone in that order: a refused write (a full cluster, say) changes nothing and does not
    /// affect the others. Fails as a whole only if the transaction itself fails.
    pub(crate) fn apply_batch(&self, writes: &[&Write]) -> Result<Vec<WriteAnswer>, StorageError> {
        let ids = &self.inner.ids;
        self.transact(|t| {
            writes
                .iter()
                .map(|write| apply::apply_write(t, write, ids))
                .collect()
        })
    }

    /// Runs `f` in one transaction over the cluster and node trees, past the snapshot gate,
    /// counts what it created against the caps, and counts the commit for group commit.
    /// Refused with [`StorageError::Failed`] once the storage has failed.
    fn transact<T>(
        &self,
        f: impl Fn(&mut SledTx<'_>) -> Result<T, TxError>,
    ) -> Result<T, StorageError> {
        self.check_health()?;
        let i = &self.inner;
        let _gate = i.gate.pass();
        // Stable while the gate is passed: no view opens meanwhile.
        let views = i.views.open();
        // What the last attempt created: the committed one, once the transaction returns.
        let created = std::cell::RefCell::new(caps::TxCount::default());
        let out =
            (&i.cluster_names, &i.clusters, &i.nodes).transaction(|(names, clusters, nodes)| {
                *created.borrow_mut() = caps::TxCount::default();
                f(&mut SledTx {
                    names,
                    clusters,
                    nodes,
                    held: &i.held,
                    created: &created.borrow(),
                    views: &views,
                })
            })?;
        i.held.commit(&created.borrow());
        i.commit.bump();
        Ok(out)
    }

    /// The cluster with this id or name, if any.
    pub fn cluster(&self, r: &ClusterRef) -> Result<Option<ClusterRecord>, StorageError> {
        self.check_health()?;
        let i = &self.inner;
        let id_bytes = match r {
            ClusterRef::Id(id) => id.as_bytes().to_vec(),
            ClusterRef::Name(name) => match i.cluster_names.get(name.as_bytes())? {
                Some(b) => b.to_vec(),
                None => return Ok(None),
            },
        };
        match i.clusters.get(&id_bytes)? {
            Some(v) => Ok(Some(decode("cluster", &id_bytes, &v)?)),
            None => Ok(None),
        }
    }

    /// The cluster with its members' current node records (which carry the keys).
    pub fn cluster_view(&self, r: &ClusterRef) -> Result<Option<ClusterView>, StorageError> {
        self.cluster(r)?
            .map(|cluster| ClusterView::build(cluster, |id| self.node(id)))
            .transpose()
    }

    /// The cluster's members, each with its node's current record (which carries the keys).
    pub fn members_with_nodes(
        &self,
        cluster: &ClusterRecord,
    ) -> Result<Vec<(MemberRecord, NodeRecord)>, StorageError> {
        let view = ClusterView::build(cluster.clone(), |id| self.node(id))?;
        Ok(view
            .members()
            .map(|(m, n)| (m.clone(), n.clone()))
            .collect())
    }

    /// Every registered node, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = Result<NodeRecord, StorageError>> + Send {
        self.inner.nodes.iter().map(|kv| {
            let (k, v) = kv?;
            decode("node", &k, &v)
        })
    }

    /// Every cluster, in id order.
    pub fn clusters(&self) -> impl Iterator<Item = Result<ClusterRecord, StorageError>> + Send {
        self.inner.clusters.iter().map(|kv| {
            let (k, v) = kv?;
            decode("cluster", &k, &v)
        })
    }

    /// Deletes a cluster and its name entry (its member nodes stay registered). Returns the
    /// deleted cluster, or `None` if there was none.
    pub fn delete_cluster(&self, r: &ClusterRef) -> Result<Option<ClusterRecord>, StorageError> {
        self.delete_cluster_if(r, |_| true)
    }

    /// Deletes a cluster as [`Store::delete_cluster`] does, but only if `condition` holds for
    /// the cluster as it is inside the deleting transaction (so a join that lands after the
    /// caller looked cannot be lost to a decision made on the old record). Returns the
    /// deleted cluster, or `None` if there was none or the condition did not hold.
    pub fn delete_cluster_if(
        &self,
        r: &ClusterRef,
        condition: impl Fn(&ClusterRecord) -> bool,
    ) -> Result<Option<ClusterRecord>, StorageError> {
        let deleted = self.transact(|t| apply::delete_cluster_if(t, r, &condition))?;
        if let Some(cluster) = &deleted {
            self.inner.held.cluster_deleted();
            self.inner.events.notify(&cluster.id);
        }
        Ok(deleted)
    }

    /// How many nodes, clusters and memberships the store holds.
    pub fn counts(&self) -> Result<Counts, StorageError> {
        let mut counts = Counts {
            nodes: self.inner.nodes.len() as u64,
            ..Counts::default()
        };
        for c in self.clusters() {
            counts.clusters += 1;
            counts.members += u64::from(c?.member_count());
        }
        Ok(counts)
    }

    /// The schema version stored in the data directory (`None` only for a database that was
    /// never opened by xlreg, which [`Store::open`] never returns).
    pub fn schema_version(&self) -> Result<Option<u32>, StorageError> {
        schema::stored_version(&self.inner.db)
    }

    /// Overwrites one raw value in the named tree, bypassing every check: for tests of how
    /// corrupt data is reported.
    #[cfg(test)]
    pub(crate) fn corrupt_for_test(&self, tree: &str, key: &[u8], value: &[u8]) {
        self.inner
            .db
            .open_tree(tree)
            .and_then(|t| t.insert(key, value))
            .expect("a raw write to a temporary store");
    }

    /// The space the database takes on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// Deletes a registered node, unless it is a member of a cluster (then nothing changes
    /// and the clusters are named). The gate is closed for the scan and the removal, so no
    /// join can make the node a member in between; that stalls writes for one pass over the
    /// clusters, which an admin command may. The change is committed, not yet durable.
    pub fn delete_node(&self, id: &Id) -> Result<NodeDeletion, StorageError> {
        self.check_health()?;
        let _closed = self.inner.gate.close();
        let Some(node) = self.node(id)? else {
            return Ok(NodeDeletion::NoSuchNode);
        };
        let mut memberships = Vec::new();
        for cluster in self.clusters() {
            let cluster = cluster?;
            if cluster.members.iter().any(|m| &m.node_id == id) {
                memberships.push(cluster.name);
            }
        }
        if !memberships.is_empty() {
            return Ok(NodeDeletion::Member(memberships));
        }
        self.inner
            .views
            .open()
            .record_current(&self.inner.nodes, NODES_TREE, id.as_bytes())?;
        self.inner.nodes.remove(id.as_bytes())?;
        self.inner.held.node_deleted();
        self.inner.commit.bump();
        Ok(NodeDeletion::Deleted(node))
    }
}

#[cfg(test)]
thread_local! {
    /// How many times this thread opened a data directory (tests count reopenings).
    static OPENS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has opened a data directory's database.
#[cfg(test)]
fn opens_on_this_thread() -> u64 {
    OPENS.with(std::cell::Cell::get)
}

/// Opens the sled database in `dir` (creating the directory), with the registry's cache
/// size. Every sled database on a directory is opened here.
fn open_db(dir: &Path) -> Result<sled::Db, StorageError> {
    #[cfg(test)]
    OPENS.with(|opens| opens.set(opens.get() + 1));
    disk::create_private_dir(dir)?;
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY_BYTES)
        // The store writer flushes and syncs itself, and treats a failure as fatal; sled's
        // own periodic flusher would only log its failures.
        .flush_every_ms(None)
        .open()
        .map_err(|e| error::open_error(dir, e))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    pub(in crate::store) use crate::store::conformance::new_node;

    /// Registers a node named `name` with `endpoints` endpoints.
    pub(in crate::store) fn node(store: &Store, name: &str, endpoints: usize) -> NodeRecord {
        store
            .register_node(new_node(name, endpoints), 1)
            .unwrap()
            .node
    }

    /// Creates a cluster.
    pub(in crate::store) fn cluster(
        store: &Store,
        name: &str,
        max_size: u32,
        endpoint_count: u32,
    ) -> ClusterRecord {
        store
            .create_cluster(
                NewCluster {
                    admission: Default::default(),
                    name: name.into(),
                    attrs: 0,
                    max_size,
                    endpoint_count,
                },
                1,
            )
            .unwrap()
            .0
    }

    fn name(n: &str) -> ClusterRef {
        ClusterRef::Name(n.into())
    }

    #[test]
    fn store_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Store>();
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RegistryMeta {
            name: "reg".into(),
            id: Id::from_bytes(&[3u8; 32]).unwrap(),
            created_at_ms: 9,
        };
        let (a, c) = {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.data_dir(), Some(dir.path()));
            assert_eq!(store.registry_meta().unwrap(), None);
            store.set_registry_meta(&meta).unwrap();
            cluster(&store, "c", 3, 1);
            let a = node(&store, "a", 1);
            let c = store.join(&name("c"), &a, 1).unwrap().cluster;
            store.flush_blocking().unwrap();
            assert!(store.size_on_disk().unwrap() > 0);
            (a, c)
        };
        let store = Store::reopen(dir.path()).unwrap();
        assert_eq!(store.registry_meta().unwrap(), Some(meta));
        assert_eq!(store.node(&a.id).unwrap(), Some(a));
        assert_eq!(store.cluster(&name("c")).unwrap(), Some(c));
    }

    #[test]
    fn second_open_of_a_held_dir_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(&e, StorageError::Locked { dir: d } if d == dir.path()),
            "{e}"
        );
        assert!(e.to_string().contains("is in use by another xlreg process"));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .inner
                .meta
                .insert(b"schema_version", &99u32.to_be_bytes()[..])
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let e = Store::reopen(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                StorageError::SchemaTooNew {
                    found: 99,
                    supported: SCHEMA_VERSION
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn delete_node_refuses_a_member_and_removes_a_free_node() {
        let store = Store::temporary().unwrap();
        let member = node(&store, "member", 1);
        let free = node(&store, "free", 1);
        let c = cluster(&store, "c", 2, 1);
        store
            .join(&ClusterRef::Id(c.id.clone()), &member, 2)
            .unwrap();
        assert_eq!(
            store.delete_node(&member.id).unwrap(),
            NodeDeletion::Member(vec!["c".into()])
        );
        assert!(store.node(&member.id).unwrap().is_some());
        assert_eq!(
            store.delete_node(&free.id).unwrap(),
            NodeDeletion::Deleted(free.clone())
        );
        assert!(store.node(&free.id).unwrap().is_none());
        assert_eq!(
            store.delete_node(&free.id).unwrap(),
            NodeDeletion::NoSuchNode
        );
        assert_eq!(store.counts().unwrap().nodes, 1);
    }

    #[test]
    fn the_data_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        drop(Store::open(&dir).unwrap());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let store = Store::temporary().unwrap();
        let a = node(&store, "a", 0);
        store
            .inner
            .nodes
            .insert(a.id.as_bytes(), &b"\xff\xff"[..])
            .unwrap();
        assert!(matches!(store.node(&a.id), Err(StorageError::Corrupt(_))));
        assert!(matches!(
            store.nodes().next(),
            Some(Err(StorageError::Corrupt(_)))
        ));
        let mut again = new_node("a", 0);
        again.id = Some(a.id.clone());
        assert!(matches!(
            store.register_node(again, 1),
            Err(StoreError::Storage(StorageError::Corrupt(_)))
        ));
        // A name entry pointing at a missing cluster.
        store
            .inner
            .cluster_names
            .insert(b"dangling", &[5u8; 32][..])
            .unwrap();
        assert!(matches!(
            store.join(&name("dangling"), &a, 1),
            Err(StoreError::Storage(StorageError::Corrupt(_)))
        ));
    }
}
