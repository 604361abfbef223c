//! The registry's durable state: nodes, clusters and their members, kept in sled.
//!
//! This module owns [`Store`], the only way the rest of xlreg reads or changes registry state,
//! and the transactions that enforce the registry's rules (a cluster is never overfilled,
//! member names are unique within a cluster, a node id stays bound to the keys it first
//! registered with). Submodules own the records ([`records`]), the error type (`error`),
//! schema versions and migrations (`schema`), group commit (`commit`), syncing sled's
//! files (`disk`), point-in-time snapshots and the gate every mutation passes (`snapshot`)
//! and the consistency checks (`verify`).
//!
//! # On-disk layout (schema 1)
//!
//! The data directory is a sled 0.34.7 database with these trees; values are
//! `bincode::serialize`-encoded (bincode 1.3.3) records:
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
//! The protocol's changes go through [`Store::write`]: one writer thread applies concurrent
//! writes in one transaction, flushes once, syncs every file sled's flush leaves unsynced
//! (`disk` lists them) and only then answers, so an acknowledged change survives power loss
//! (group commit, `commit`). The synchronous mutating methods commit in memory and return; a
//! caller that must not acknowledge a change before it is on disk then awaits
//! [`Store::durable`].

mod commit;
mod disk;
mod error;
pub mod records;
mod schema;
mod snapshot;
mod verify;

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sled::transaction::{
    abort, ConflictableTransactionError, ConflictableTransactionResult, TransactionalTree,
};
use sled::Transactional;

pub use disk::Durability;
pub use error::StoreError;
pub use records::{ClusterRecord, MemberRecord, NodeRecord, RegistryMeta};
pub use schema::SCHEMA_VERSION;
pub use snapshot::Snapshot;

use crate::id::Id;
use commit::GroupCommit;
use disk::DiskFiles;
use records::{decode, encode};
use snapshot::Gate;

/// sled's page cache size. sled's default (1 GiB) would let a large registry's resident
/// memory grow far beyond what a registry needs: the hot data (clusters being formed) is
/// small, and everything else is read rarely.
const CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// How many fresh ids are drawn before giving up on finding an unused one.
const MAX_ID_TRIES: u32 = 16;

/// Key of the registry facts in the `meta` tree.
const REGISTRY_KEY: &[u8] = b"registry";

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
    /// Every mutation passes this gate; a snapshot closes it while it copies the trees.
    gate: Gate,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// A node's registration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    /// The id the node already has, or `None` to be issued a fresh one.
    pub id: Option<Id>,
    /// The node's name.
    pub name: String,
    /// The node's attribute bits.
    pub attrs: u64,
    /// The node's communications public key, DER SubjectPublicKeyInfo.
    pub comms_key: Vec<u8>,
    /// The node's signing public key, DER SubjectPublicKeyInfo.
    pub sig_key: Vec<u8>,
    /// The node's endpoints.
    pub endpoints: Vec<String>,
}

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// A new node record was stored.
    Created,
    /// The node was known; its name, attributes or endpoints were changed.
    Updated,
    /// The node was known with exactly these details; nothing changed.
    Unchanged,
}

/// The result of registering a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The node record as stored after the registration.
    pub node: NodeRecord,
    /// What the registration did.
    pub outcome: RegistrationOutcome,
}

/// A request to create a cluster. The store stores what it is given: callers validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCluster {
    /// The cluster's unique name.
    pub name: String,
    /// The cluster's attribute bits.
    pub attrs: u64,
    /// The most members the cluster may have.
    pub max_size: u32,
    /// How many endpoints each member must offer.
    pub endpoint_count: u32,
}

/// Names a cluster by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRef {
    /// The cluster with this id.
    Id(Id),
    /// The cluster with this name.
    Name(String),
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterRef::Id(id) => f.write_str(&id.to_hex()),
            ClusterRef::Name(name) => f.write_str(name),
        }
    }
}

/// The result of a successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The cluster as stored after the join.
    pub cluster: ClusterRecord,
    /// The node's slot in the cluster.
    pub slot: u32,
    /// Whether the node was already a member (and got its old slot back).
    pub rejoined: bool,
}

/// How much the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Registered nodes.
    pub nodes: u64,
    /// Clusters.
    pub clusters: u64,
    /// Memberships, summed over all clusters.
    pub members: u64,
}

/// Turns a store error inside a transaction into an abort.
fn tx<T>(r: Result<T, StoreError>) -> Result<T, ConflictableTransactionError<StoreError>> {
    r.map_err(ConflictableTransactionError::Abort)
}

/// Draws ids from `fresh` until one is used by no node and no cluster.
fn draw_unused_id(
    fresh: &FreshIds<'_>,
    nodes: &TransactionalTree,
    clusters: &TransactionalTree,
) -> ConflictableTransactionResult<Id, StoreError> {
    for _ in 0..MAX_ID_TRIES {
        let id = {
            let mut f = fresh.borrow_mut();
            (*f)()
        };
        if nodes.get(id.as_bytes())?.is_none() && clusters.get(id.as_bytes())?.is_none() {
            return Ok(id);
        }
    }
    abort(StoreError::NoFreshId {
        tries: MAX_ID_TRIES,
    })
}

/// Looks a cluster up inside a transaction.
fn resolve_in_tx(
    names: &TransactionalTree,
    clusters: &TransactionalTree,
    r: &ClusterRef,
) -> ConflictableTransactionResult<Option<ClusterRecord>, StoreError> {
    let id_bytes = match r {
        ClusterRef::Id(id) => id.as_bytes().to_vec(),
        ClusterRef::Name(name) => match names.get(name.as_bytes())? {
            Some(b) => b.to_vec(),
            None => return Ok(None),
        },
    };
    match clusters.get(&id_bytes)? {
        Some(v) => Ok(Some(tx(decode("cluster", &id_bytes, &v))?)),
        None => match r {
            ClusterRef::Id(_) => Ok(None),
            ClusterRef::Name(name) => abort(StoreError::Corrupt(format!(
                "cluster name {name:?} points at cluster {} which does not exist",
                hex::encode(&id_bytes)
            ))),
        },
    }
}

/// The trees a registry write touches, inside one transaction.
struct Trees<'a> {
    names: &'a TransactionalTree,
    clusters: &'a TransactionalTree,
    nodes: &'a TransactionalTree,
}

/// The source of fresh ids inside a transaction (a closure re-run on conflict).
type FreshIds<'a> = RefCell<&'a mut dyn FnMut() -> Id>;

/// A change to the registry: what the Member, Create and Join requests do to the store.
/// [`Store::write`] applies it batched with concurrent ones and returns once it is durable;
/// [`Store::apply`] applies it alone, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Register or re-register a node, as [`Store::register_node`].
    RegisterNode {
        /// The node.
        node: NewNode,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Create a cluster or find the existing one of that name, as [`Store::create_cluster`].
    CreateCluster {
        /// The cluster.
        cluster: NewCluster,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Add a registered node to a cluster or give it its slot back, as [`Store::join`].
    Join {
        /// The cluster.
        cluster: ClusterRef,
        /// The node's id.
        node: Id,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
}

/// What a [`Write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The result of [`Write::RegisterNode`].
    Node(Registration),
    /// The result of [`Write::CreateCluster`]: the cluster, and whether it was created.
    Cluster(ClusterRecord, bool),
    /// The result of [`Write::Join`].
    Joined(JoinOutcome),
}

impl Write {
    fn apply_in(
        &self,
        t: &Trees<'_>,
        fresh: &FreshIds<'_>,
    ) -> ConflictableTransactionResult<Written, StoreError> {
        match self {
            Write::RegisterNode { node, now_ms } => {
                register_in_tx(t, node, fresh, *now_ms).map(Written::Node)
            }
            Write::CreateCluster { cluster, now_ms } => {
                let (record, created) = create_in_tx(t, cluster, fresh, *now_ms)?;
                Ok(Written::Cluster(record, created))
            }
            Write::Join {
                cluster,
                node,
                now_ms,
            } => join_in_tx(t, cluster, node, *now_ms).map(Written::Joined),
        }
    }
}

// The three writes below each check everything before they write anything, so that a
// refusal (an abort) inside a batch leaves the batch's transaction as it found it.

fn register_in_tx(
    t: &Trees<'_>,
    new: &NewNode,
    fresh: &FreshIds<'_>,
    now_ms: u64,
) -> ConflictableTransactionResult<Registration, StoreError> {
    let created = |id: Id| NodeRecord {
        id,
        name: new.name.clone(),
        attrs: new.attrs,
        comms_key: new.comms_key.clone(),
        sig_key: new.sig_key.clone(),
        endpoints: new.endpoints.clone(),
        registered_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    let (node, outcome) = match &new.id {
        None => {
            let id = draw_unused_id(fresh, t.nodes, t.clusters)?;
            (created(id), RegistrationOutcome::Created)
        }
        Some(id) => match t.nodes.get(id.as_bytes())? {
            None => (created(id.clone()), RegistrationOutcome::Created),
            Some(v) => {
                let mut old: NodeRecord = tx(decode("node", id.as_bytes(), &v))?;
                if old.sig_key != new.sig_key || old.comms_key != new.comms_key {
                    return abort(StoreError::NodeKeyMismatch { id: id.clone() });
                }
                if old.name == new.name && old.attrs == new.attrs && old.endpoints == new.endpoints
                {
                    return Ok(Registration {
                        node: old,
                        outcome: RegistrationOutcome::Unchanged,
                    });
                }
                old.name = new.name.clone();
                old.attrs = new.attrs;
                old.endpoints = new.endpoints.clone();
                old.updated_at_ms = now_ms;
                (old, RegistrationOutcome::Updated)
            }
        },
    };
    t.nodes
        .insert(node.id.as_bytes(), tx(encode("node", &node))?)?;
    Ok(Registration { node, outcome })
}

fn create_in_tx(
    t: &Trees<'_>,
    new: &NewCluster,
    fresh: &FreshIds<'_>,
    now_ms: u64,
) -> ConflictableTransactionResult<(ClusterRecord, bool), StoreError> {
    let by_name = ClusterRef::Name(new.name.clone());
    if let Some(existing) = resolve_in_tx(t.names, t.clusters, &by_name)? {
        return Ok((existing, false));
    }
    let id = draw_unused_id(fresh, t.nodes, t.clusters)?;
    let record = ClusterRecord {
        id,
        name: new.name.clone(),
        attrs: new.attrs,
        max_size: new.max_size,
        endpoint_count: new.endpoint_count,
        created_at_ms: now_ms,
        touched_at_ms: now_ms,
        members: Vec::new(),
    };
    let value = tx(encode("cluster", &record))?;
    t.clusters.insert(record.id.as_bytes(), value)?;
    t.names.insert(new.name.as_bytes(), record.id.as_bytes())?;
    Ok((record, true))
}

fn join_in_tx(
    t: &Trees<'_>,
    cluster: &ClusterRef,
    node: &Id,
    now_ms: u64,
) -> ConflictableTransactionResult<JoinOutcome, StoreError> {
    let Some(mut c) = resolve_in_tx(t.names, t.clusters, cluster)? else {
        return abort(StoreError::NoSuchCluster(cluster.to_string()));
    };
    let Some(v) = t.nodes.get(node.as_bytes())? else {
        return abort(StoreError::NoSuchNode(node.clone()));
    };
    let n: NodeRecord = tx(decode("node", node.as_bytes(), &v))?;
    let name_taken = c
        .members
        .iter()
        .any(|m| m.name == n.name && m.node_id != n.id);
    if name_taken {
        return abort(StoreError::MemberNameTaken {
            cluster: c.name.clone(),
            name: n.name.clone(),
        });
    }
    let offered = u32::try_from(n.endpoints.len()).unwrap_or(u32::MAX);
    let too_few = || StoreError::TooFewEndpoints {
        cluster: c.name.clone(),
        needed: c.endpoint_count,
        offered,
    };
    let (slot, rejoined) = match c.members.iter().position(|m| m.node_id == n.id) {
        Some(pos) => {
            if offered < c.endpoint_count {
                return abort(too_few());
            }
            let m = &mut c.members[pos];
            m.name = n.name.clone();
            m.attrs = n.attrs;
            m.endpoints = n.endpoints.clone();
            (m.slot, true)
        }
        None => {
            if c.is_full() {
                return abort(StoreError::ClusterFull {
                    name: c.name.clone(),
                    members: c.member_count(),
                    max: c.max_size,
                });
            }
            if offered < c.endpoint_count {
                return abort(too_few());
            }
            let slot = c.next_slot();
            c.members.push(MemberRecord {
                slot,
                node_id: n.id.clone(),
                name: n.name.clone(),
                attrs: n.attrs,
                endpoints: n.endpoints.clone(),
                joined_at_ms: now_ms,
            });
            (slot, false)
        }
    };
    c.touched_at_ms = now_ms;
    t.clusters
        .insert(c.id.as_bytes(), tx(encode("cluster", &c))?)?;
    Ok(JoinOutcome {
        cluster: c,
        slot,
        rejoined,
    })
}

impl Store {
    /// Opens (creating if missing) the store in `dir`, bringing its schema up to date.
    /// Acknowledged changes survive power loss ([`Durability::PowerLoss`]).
    ///
    /// Fails with [`StoreError::Locked`] if another store holds the directory, and with
    /// [`StoreError::SchemaTooNew`] if a newer xlreg wrote it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Durability::PowerLoss)
    }

    /// Opens the store in `dir` with an explicit [`Durability`] (the durability benchmark
    /// compares them; the registry always uses [`Store::open`]).
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .map_err(|e| error::open_error(dir, e))?;
        schema::migrate(&db)?;
        // After sled's own start-up writes (conf, snapshot) and the migration.
        let disk = DiskFiles::open(dir, durability)?;
        Store::from_db(db, Some(dir.to_path_buf()), Some(disk))
    }

    /// Opens `dir` in a test that has just dropped another `Store` on it. sled's background
    /// threads may still finish that store's last writes for a moment after the drop, and
    /// until they do the directory stays locked; this waits (at most 10 s) for the lock.
    #[cfg(test)]
    pub(crate) fn reopen(dir: &Path) -> Result<Store, StoreError> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    /// A store held in memory only and deleted when dropped, for tests and `--ephemeral`.
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        schema::migrate(&db)?;
        Store::from_db(db, None, None)
    }

    fn from_db(
        db: sled::Db,
        dir: Option<PathBuf>,
        disk: Option<DiskFiles>,
    ) -> Result<Store, StoreError> {
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
            }),
        })
    }

    /// The data directory, or `None` for a temporary store.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The registry's own facts, if they have been set.
    pub fn registry_meta(&self) -> Result<Option<RegistryMeta>, StoreError> {
        match self.inner.meta.get(REGISTRY_KEY)? {
            Some(v) => Ok(Some(decode("registry meta", REGISTRY_KEY, &v)?)),
            None => Ok(None),
        }
    }

    /// Stores the registry's own facts.
    pub fn set_registry_meta(&self, meta: &RegistryMeta) -> Result<(), StoreError> {
        let value = encode("registry meta", meta)?;
        let _gate = self.inner.gate.pass();
        self.inner.meta.insert(REGISTRY_KEY, value)?;
        self.inner.commit.bump();
        Ok(())
    }

    /// Registers a node, or re-registers a known one.
    ///
    /// Without an id, ids are drawn from `fresh_id` until one is used by no node and no
    /// cluster. With an unknown id, the node is stored under it (first use wins). With a known
    /// id the keys must match the stored ones ([`StoreError::NodeKeyMismatch`] otherwise);
    /// a changed name, attributes or endpoints are updated.
    pub fn register_node(
        &self,
        new: NewNode,
        fresh_id: &mut dyn FnMut() -> Id,
        now_ms: u64,
    ) -> Result<Registration, StoreError> {
        self.transact(fresh_id, |t, fresh| register_in_tx(t, &new, fresh, now_ms))
    }

    /// The node with this id, if registered.
    pub fn node(&self, id: &Id) -> Result<Option<NodeRecord>, StoreError> {
        match self.inner.nodes.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode("node", id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Creates a cluster, or returns the existing one of that name.
    ///
    /// Returns the cluster and whether it was created. If the name is taken the existing
    /// cluster is returned unchanged (and `false`), so concurrent creates of one name all get
    /// the same cluster.
    pub fn create_cluster(
        &self,
        new: NewCluster,
        fresh_id: &mut dyn FnMut() -> Id,
        now_ms: u64,
    ) -> Result<(ClusterRecord, bool), StoreError> {
        self.transact(fresh_id, |t, fresh| create_in_tx(t, &new, fresh, now_ms))
    }

    /// Adds a node to a cluster, or gives a member its slot back.
    ///
    /// The node's current record is re-read inside the transaction
    /// ([`StoreError::NoSuchNode`] if it is not registered). A member gets its old slot back
    /// with its name, attributes and endpoints refreshed, even if the cluster is full. A new
    /// member takes the next slot, unless another member has its name
    /// ([`StoreError::MemberNameTaken`]), the cluster is full ([`StoreError::ClusterFull`]) or
    /// it offers too few endpoints ([`StoreError::TooFewEndpoints`]). Joins are serialised, so
    /// a cluster can never be overfilled.
    pub fn join(
        &self,
        cluster: &ClusterRef,
        node: &NodeRecord,
        now_ms: u64,
    ) -> Result<JoinOutcome, StoreError> {
        // A join draws no ids.
        self.transact(&mut || Id::random(&mut rand::rng()), |t, _| {
            join_in_tx(t, cluster, &node.id, now_ms)
        })
    }

    /// Applies one [`Write`] in its own transaction. The change is committed, not yet durable:
    /// see [`Store::durable`], or use [`Store::write`], which batches and waits for both.
    pub fn apply(
        &self,
        write: &Write,
        fresh_id: &mut dyn FnMut() -> Id,
    ) -> Result<Written, StoreError> {
        self.transact(fresh_id, |t, fresh| write.apply_in(t, fresh))
    }

    /// Applies `writes` in order in one transaction, each with the result it would have had
    /// alone in that order: a refused write (a full cluster, say) changes nothing and does not
    /// affect the others. Fails as a whole only if the transaction itself fails.
    pub(crate) fn apply_batch(
        &self,
        writes: &[&Write],
        fresh_id: &mut dyn FnMut() -> Id,
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        self.transact(fresh_id, |t, fresh| {
            let mut results = Vec::with_capacity(writes.len());
            for write in writes {
                match write.apply_in(t, fresh) {
                    Ok(written) => results.push(Ok(written)),
                    // Every write checks before it writes, so a refused one changed nothing.
                    Err(ConflictableTransactionError::Abort(refusal)) => results.push(Err(refusal)),
                    // A conflict (sled reruns the whole batch) or a storage failure.
                    Err(other) => return Err(other),
                }
            }
            Ok(results)
        })
    }

    /// Runs `f` in one transaction over the cluster and node trees, past the snapshot gate,
    /// and counts the commit for group commit.
    fn transact<T>(
        &self,
        fresh_id: &mut dyn FnMut() -> Id,
        f: impl Fn(&Trees<'_>, &FreshIds<'_>) -> ConflictableTransactionResult<T, StoreError>,
    ) -> Result<T, StoreError> {
        let fresh = RefCell::new(fresh_id);
        let i = &self.inner;
        let _gate = i.gate.pass();
        let out =
            (&i.cluster_names, &i.clusters, &i.nodes).transaction(|(names, clusters, nodes)| {
                f(
                    &Trees {
                        names,
                        clusters,
                        nodes,
                    },
                    &fresh,
                )
            })?;
        i.commit.bump();
        Ok(out)
    }

    /// The cluster with this id or name, if any.
    pub fn cluster(&self, r: &ClusterRef) -> Result<Option<ClusterRecord>, StoreError> {
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

    /// The cluster's members, each with its node's current record (which carries the keys).
    pub fn members_with_nodes(
        &self,
        cluster: &ClusterRecord,
    ) -> Result<Vec<(MemberRecord, NodeRecord)>, StoreError> {
        cluster
            .members
            .iter()
            .map(|m| match self.node(&m.node_id)? {
                Some(n) => Ok((m.clone(), n)),
                None => Err(StoreError::Corrupt(format!(
                    "cluster {} lists member node {} which is not registered",
                    cluster.name, m.node_id
                ))),
            })
            .collect()
    }

    /// Every registered node, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = Result<NodeRecord, StoreError>> {
        self.inner.nodes.iter().map(|kv| {
            let (k, v) = kv?;
            decode("node", &k, &v)
        })
    }

    /// Every cluster, in id order.
    pub fn clusters(&self) -> impl Iterator<Item = Result<ClusterRecord, StoreError>> {
        self.inner.clusters.iter().map(|kv| {
            let (k, v) = kv?;
            decode("cluster", &k, &v)
        })
    }

    /// Deletes a cluster and its name entry (its member nodes stay registered). Returns the
    /// deleted cluster, or `None` if there was none.
    pub fn delete_cluster(&self, r: &ClusterRef) -> Result<Option<ClusterRecord>, StoreError> {
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
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let i = &self.inner;
        let _gate = i.gate.pass();
        let out = (&i.cluster_names, &i.clusters).transaction(|(names, clusters)| {
            let Some(c) = resolve_in_tx(names, clusters, r)? else {
                return Ok(None);
            };
            if !condition(&c) {
                return Ok(None);
            }
            clusters.remove(c.id.as_bytes())?;
            if let Some(b) = names.get(c.name.as_bytes())? {
                if b.as_ref() == c.id.as_bytes() {
                    names.remove(c.name.as_bytes())?;
                }
            }
            Ok(Some(c))
        })?;
        i.commit.bump();
        Ok(out)
    }

    /// How many nodes, clusters and memberships the store holds.
    pub fn counts(&self) -> Result<Counts, StoreError> {
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
    pub fn schema_version(&self) -> Result<Option<u32>, StoreError> {
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
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Barrier;

    fn fresh() -> impl FnMut() -> Id {
        let mut rng = rand::rng();
        move || Id::random(&mut rng)
    }

    pub(in crate::store) fn new_node(name: &str, endpoints: usize) -> NewNode {
        NewNode {
            id: None,
            name: name.into(),
            attrs: 0,
            comms_key: format!("comms-{name}").into_bytes(),
            sig_key: format!("sig-{name}").into_bytes(),
            endpoints: (0..endpoints)
                .map(|i| format!("10.0.0.{i}:55555"))
                .collect(),
        }
    }

    /// Registers a node named `name` with `endpoints` endpoints.
    pub(in crate::store) fn node(store: &Store, name: &str, endpoints: usize) -> NodeRecord {
        store
            .register_node(new_node(name, endpoints), &mut fresh(), 1)
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
                    name: name.into(),
                    attrs: 0,
                    max_size,
                    endpoint_count,
                },
                &mut fresh(),
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
    fn register_new_node_gets_32_byte_id() {
        let store = Store::temporary().unwrap();
        let r = store
            .register_node(new_node("a", 1), &mut fresh(), 10)
            .unwrap();
        assert_eq!(r.outcome, RegistrationOutcome::Created);
        assert_eq!(r.node.id.as_bytes().len(), 32);
        assert_eq!(r.node.registered_at_ms, 10);
        assert_eq!(store.node(&r.node.id).unwrap(), Some(r.node));
    }

    #[test]
    fn reregister_same_keys_is_unchanged_or_updated() {
        let store = Store::temporary().unwrap();
        let first = node(&store, "a", 1);
        let mut again = new_node("a", 1);
        again.id = Some(first.id.clone());
        let r = store
            .register_node(again.clone(), &mut fresh(), 20)
            .unwrap();
        assert_eq!(r.outcome, RegistrationOutcome::Unchanged);
        assert_eq!(r.node, first);

        again.name = "renamed".into();
        again.endpoints.push("10.9.9.9:1".into());
        let r = store.register_node(again, &mut fresh(), 30).unwrap();
        assert_eq!(r.outcome, RegistrationOutcome::Updated);
        assert_eq!(r.node.name, "renamed");
        assert_eq!(r.node.endpoints.len(), 2);
        assert_eq!(r.node.registered_at_ms, first.registered_at_ms);
        assert_eq!(r.node.updated_at_ms, 30);
        assert_eq!(store.node(&first.id).unwrap(), Some(r.node));
    }

    #[test]
    fn reregister_with_other_key_is_refused_and_changes_nothing() {
        let store = Store::temporary().unwrap();
        let first = node(&store, "a", 1);
        let mut evil = new_node("evil", 3);
        evil.id = Some(first.id.clone());
        evil.sig_key = b"other".to_vec();
        let e = store
            .register_node(evil.clone(), &mut fresh(), 5)
            .unwrap_err();
        assert!(matches!(&e, StoreError::NodeKeyMismatch { id } if *id == first.id));
        assert_eq!(
            e.to_string(),
            format!(
                "node {} is registered with a different signing key",
                first.id
            )
        );
        evil.sig_key = first.sig_key.clone();
        evil.comms_key = b"other".to_vec();
        assert!(matches!(
            store.register_node(evil, &mut fresh(), 5),
            Err(StoreError::NodeKeyMismatch { .. })
        ));
        assert_eq!(store.node(&first.id).unwrap(), Some(first));
        assert_eq!(store.counts().unwrap().nodes, 1);
    }

    #[test]
    fn unknown_legacy_id_is_accepted() {
        let store = Store::temporary().unwrap();
        let legacy = Id::from_bytes(&[7u8; 20]).unwrap();
        let mut n = new_node("old", 1);
        n.id = Some(legacy.clone());
        let r = store
            .register_node(n, &mut || panic!("no fresh id needed"), 1)
            .unwrap();
        assert_eq!(r.outcome, RegistrationOutcome::Created);
        assert_eq!(r.node.id, legacy);
        assert!(store.node(&legacy).unwrap().is_some());
    }

    #[test]
    fn fresh_ids_avoid_used_ones_and_give_up_eventually() {
        let store = Store::temporary().unwrap();
        let taken = node(&store, "a", 0).id;
        let c = cluster(&store, "c", 2, 0).id;
        let other = Id::from_bytes(&[9u8; 32]).unwrap();
        let mut seq = vec![taken.clone(), c.clone(), other.clone()].into_iter();
        let r = store
            .register_node(new_node("b", 0), &mut || seq.next().unwrap(), 1)
            .unwrap();
        assert_eq!(r.node.id, other);
        let e = store
            .register_node(new_node("x", 0), &mut || taken.clone(), 1)
            .unwrap_err();
        assert!(matches!(e, StoreError::NoFreshId { tries: 16 }));
    }

    #[test]
    fn create_existing_name_returns_same_record() {
        let store = Store::temporary().unwrap();
        let new = NewCluster {
            name: "c".into(),
            attrs: 3,
            max_size: 4,
            endpoint_count: 1,
        };
        let (a, created) = store.create_cluster(new.clone(), &mut fresh(), 1).unwrap();
        assert!(created);
        assert_eq!(a.id.as_bytes().len(), 32);
        let mut other = new;
        other.max_size = 9;
        let (b, created) = store.create_cluster(other, &mut fresh(), 2).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_eq!(store.cluster(&name("c")).unwrap(), Some(a.clone()));
        assert_eq!(
            store.cluster(&ClusterRef::Id(a.id.clone())).unwrap(),
            Some(a)
        );
        assert_eq!(store.counts().unwrap().clusters, 1);
    }

    #[test]
    fn join_assigns_slots_in_order_and_rejoin_keeps_slot() {
        let store = Store::temporary().unwrap();
        cluster(&store, "c", 3, 1);
        let nodes: Vec<_> = ["a", "b", "d"].iter().map(|n| node(&store, n, 1)).collect();
        for (i, n) in nodes.iter().enumerate() {
            let out = store.join(&name("c"), n, 100 + i as u64).unwrap();
            assert_eq!(out.slot, i as u32);
            assert!(!out.rejoined);
            assert_eq!(out.cluster.touched_at_ms, 100 + i as u64);
        }
        // Full now, but a member may rejoin; its record is refreshed from the node record.
        let mut again = new_node("b", 2);
        again.id = Some(nodes[1].id.clone());
        again.name = "b2".into();
        let b2 = store.register_node(again, &mut fresh(), 5).unwrap().node;
        let out = store.join(&name("c"), &nodes[1], 200).unwrap();
        assert_eq!(out.slot, 1);
        assert!(out.rejoined);
        assert_eq!(out.cluster.members.len(), 3);
        let m = out.cluster.member_by_node(&b2.id).unwrap();
        assert_eq!(m.name, "b2");
        assert_eq!(m.endpoints, b2.endpoints);
        assert_eq!(m.joined_at_ms, 101);
        assert_eq!(out.cluster.touched_at_ms, 200);
        assert_eq!(
            store.cluster(&name("c")).unwrap(),
            Some(out.cluster.clone())
        );

        let with_nodes = store.members_with_nodes(&out.cluster).unwrap();
        assert_eq!(with_nodes.len(), 3);
        assert_eq!(with_nodes[1].1, b2);
        assert_eq!(
            store.counts().unwrap(),
            Counts {
                nodes: 3,
                clusters: 1,
                members: 3
            }
        );
    }

    #[test]
    fn join_refusals() {
        let store = Store::temporary().unwrap();
        let c = cluster(&store, "c", 2, 2);
        let a = node(&store, "a", 2);
        store.join(&name("c"), &a, 1).unwrap();

        // Same name, different node.
        let a_twin = node(&store, "a", 2);
        let e = store.join(&name("c"), &a_twin, 1).unwrap_err();
        assert!(matches!(&e, StoreError::MemberNameTaken { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "cluster c already has a different member named a"
        );

        // Too few endpoints.
        let thin = node(&store, "thin", 1);
        let e = store.join(&name("c"), &thin, 1).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::TooFewEndpoints {
                    needed: 2,
                    offered: 1,
                    ..
                }
            ),
            "{e}"
        );

        // Full.
        store.join(&name("c"), &node(&store, "b", 2), 1).unwrap();
        let e = store
            .join(&ClusterRef::Id(c.id.clone()), &node(&store, "z", 2), 1)
            .unwrap_err();
        assert!(matches!(
            e,
            StoreError::ClusterFull {
                members: 2,
                max: 2,
                ..
            }
        ));
        assert_eq!(e.to_string(), "cluster c is full (2/2)");

        // Unknown cluster, by name and by id.
        let e = store.join(&name("nope"), &a, 1).unwrap_err();
        assert!(matches!(&e, StoreError::NoSuchCluster(n) if n == "nope"));
        let unknown = Id::from_bytes(&[1u8; 32]).unwrap();
        let e = store
            .join(&ClusterRef::Id(unknown.clone()), &a, 1)
            .unwrap_err();
        assert!(matches!(&e, StoreError::NoSuchCluster(n) if *n == unknown.to_hex()));

        // Unregistered node.
        let ghost = NodeRecord {
            id: Id::from_bytes(&[2u8; 32]).unwrap(),
            ..a.clone()
        };
        let e = store.join(&name("c"), &ghost, 1).unwrap_err();
        assert!(matches!(e, StoreError::NoSuchNode(_)));

        // None of this changed the cluster.
        let now = store.cluster(&name("c")).unwrap().unwrap();
        assert_eq!(now.members.len(), 2);
    }

    #[test]
    fn delete_cluster_keeps_nodes_and_frees_name() {
        let store = Store::temporary().unwrap();
        cluster(&store, "c", 2, 0);
        let a = node(&store, "a", 0);
        store.join(&name("c"), &a, 1).unwrap();
        let gone = store.delete_cluster(&name("c")).unwrap().unwrap();
        assert_eq!(gone.members.len(), 1);
        assert_eq!(store.cluster(&name("c")).unwrap(), None);
        assert_eq!(store.cluster(&ClusterRef::Id(gone.id)).unwrap(), None);
        assert_eq!(store.delete_cluster(&name("c")).unwrap(), None);
        assert_eq!(store.node(&a.id).unwrap(), Some(a));
        assert_eq!(store.nodes().count(), 1);
        assert_eq!(store.clusters().count(), 0);
        let (_, created) = store
            .create_cluster(
                NewCluster {
                    name: "c".into(),
                    attrs: 0,
                    max_size: 2,
                    endpoint_count: 0,
                },
                &mut fresh(),
                2,
            )
            .unwrap();
        assert!(created);
    }

    #[test]
    fn concurrent_joins_never_overfill() {
        let store = Store::temporary().unwrap();
        cluster(&store, "c", 5, 1);
        let nodes: Vec<_> = (0..20).map(|i| node(&store, &format!("n{i}"), 1)).collect();
        let barrier = Arc::new(Barrier::new(nodes.len()));
        let handles: Vec<_> = nodes
            .into_iter()
            .map(|n| {
                let store = store.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    store.join(&name("c"), &n, 1)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut slots: Vec<u32> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|o| o.slot))
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, vec![0, 1, 2, 3, 4]);
        let full = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::ClusterFull { .. })))
            .count();
        assert_eq!(full, 15);
        let c = store.cluster(&name("c")).unwrap().unwrap();
        assert_eq!(c.members.len(), 5);
    }

    #[test]
    fn concurrent_creates_of_one_name_make_one_cluster() {
        let store = Store::temporary().unwrap();
        let barrier = Arc::new(Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    store.create_cluster(
                        NewCluster {
                            name: "same".into(),
                            attrs: i,
                            max_size: 4,
                            endpoint_count: 1,
                        },
                        &mut fresh(),
                        i,
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
        let id = &results[0].0.id;
        assert!(results.iter().all(|(c, _)| &c.id == id));
        assert_eq!(store.clusters().count(), 1);
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
            matches!(&e, StoreError::Locked { dir: d } if d == dir.path()),
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
                StoreError::SchemaTooNew {
                    found: 99,
                    supported: SCHEMA_VERSION
                }
            ),
            "{e}"
        );
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
        assert!(matches!(store.node(&a.id), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            store.nodes().next(),
            Some(Err(StoreError::Corrupt(_)))
        ));
        let mut again = new_node("a", 0);
        again.id = Some(a.id.clone());
        assert!(matches!(
            store.register_node(again, &mut fresh(), 1),
            Err(StoreError::Corrupt(_))
        ));
        // A name entry pointing at a missing cluster.
        store
            .inner
            .cluster_names
            .insert(b"dangling", &[5u8; 32][..])
            .unwrap();
        assert!(matches!(
            store.join(&name("dangling"), &a, 1),
            Err(StoreError::Corrupt(_))
        ));
    }
}
