//! The etcd backend: the registry's records in an etcd cluster, so that several stateless
//! `xlreg serve --etcd` processes serve one registry.
//!
//! This module owns [`EtcdStore`], the third implementation of the store's ports. Its
//! submodules own the client (`client`: timeouts, failover, the `xlreg_etcd_*` counters),
//! the generated API (`pb`), the key layout (`keys`), one optimistic attempt at a batch of
//! writes (`tx`), and resumable prefix watches (`watch`).
//!
//! # Writes
//!
//! Every write goes through the same `apply::apply_write` as the other backends, over an
//! optimistic `tx::Attempt`: reads come from values fetched from etcd with their
//! `mod_revision`, writes are buffered, and the commit is ONE etcd transaction comparing
//! the revision of every key read (`create_revision == 0` for a key read absent). A lost
//! compare (another server got there first) refreshes the values read and runs the batch
//! again, at most [`MAX_LOST_COMPARES`] times with a jittered pause. So a join reads the
//! cluster and the node, and commits only if neither changed: a cluster is never
//! overfilled, however many servers race, and nothing is put-then-checked. All the writes of
//! one `apply` call go into one transaction (a key written twice is written once, with its
//! last value), so a batch is atomic. The batches that this server's sessions hand in while a
//! transaction is in flight are then committed together, up to [`MAX_COMBINED_WRITES`]
//! writes in one transaction, each batch keeping its own answers (so concurrent joins to one
//! cluster cost one transaction, not one lost compare each; docs/performance.md). One
//! `apply` of more than about 40 writes could pass etcd's default `--max-txn-ops` (128) and
//! be refused as a storage error; the protocol's sessions hand in one write at a time.
//!
//! # Ambiguous commits
//!
//! A transaction whose answer is lost (timeout, connection lost, leader change) may or may
//! not have been applied. Each transaction therefore also creates an operation key,
//! `<prefix>/ops/<random id>` (compare `create_revision == 0`, under a lease of
//! [`OP_LEASE_TTL`]). After an ambiguous failure the store runs a *fence*: `If` the
//! operation key does not exist `Then` create it marked abandoned `Else` read it. If the fence
//! created it, the original transaction can never apply any more (its own compare on the key
//! fails), so it is safe to run the batch again; if the key says applied, the original
//! did apply, and its answers are the ones computed before sending it (the transaction
//! applied only because every key read still had the value those answers were computed
//! from). The answers are kept by the caller, not in the key. If the fence itself cannot
//! reach etcd, the batch fails with [`StorageError::Unavailable`] and nothing is
//! acknowledged.
//!
//! # Caps
//!
//! With `--max-nodes`/`--max-clusters` set, a write that creates a node or a cluster counts
//! the tree's keys (at revision R) and its transaction also compares that no key of the tree
//! was created after R (a `create_revision < R + 1` compare over the tree's range). Any
//! concurrent creation makes one of two racing creators retry, so the cap holds exactly; the
//! cost is contention between creators (docs/performance.md), paid only when a cap is set.
//!
//! # Waiting
//!
//! One watch stream per store on `<prefix>/clusters/`, from the revision read when the store
//! opened, wakes the [`ClusterEvents`] waiter of every changed cluster, whichever server
//! changed it. The stream resumes from the last revision seen + 1 when lost; after a
//! compaction every waiter is woken (they re-read anyway). A store's own joins wake its
//! waiters at once too, before the answer is sent.
//!
//! # Availability
//!
//! Every etcd request has a timeout ([`EtcdConfig::request_timeout`]). While no etcd member
//! answers (no quorum), requests fail with [`StorageError::Unavailable`] and the store's
//! [`Health`] is marked unavailable (`/health` answers 503); a probe once a second marks it
//! available again when etcd answers. Unlike a sled write failure this is not fail-stop:
//! nothing in memory can be stale, so the registry serves again as soon as etcd does.
//!
//! # Admin
//!
//! Views, snapshots, exports and counts read at ONE etcd revision (MVCC range reads at
//! revision R), so they are consistent without stopping anyone (as long as etcd does not
//! compact R away meanwhile: then the read fails). Restore writes into an empty prefix
//! only. `size_on_disk` is the sum of the sizes of the keys and values under the prefix
//! (etcd's own database size covers every prefix and the history, so it would not say
//! what this registry takes).

pub mod client;
pub mod keys;
pub mod pb;
pub mod testing;
mod tx;
pub mod watch;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch as tokio_watch;

use client::{compare_revision, counters, delete_op, put_op, range_op, range_values};
pub use client::{EtcdClient, EtcdConfig, EtcdError, EtcdTls, EtcdUser};
pub use keys::Keys;
use pb::etcdserverpb::{compare, RangeRequest, TxnRequest};
use tx::{likely_reads, Attempt, Cache, Miss};

use super::apply;
use super::caps::Caps;
use super::sled::records::{decode, encode};
use super::sled::schema::{decode_version, VERSION_KEY};
use super::sled::REGISTRY_KEY;
use super::{
    AdminStore, Backend, ClusterEvents, ClusterView, IdSource, NodeDeletion, RawEntries, Records,
    SessionStore, Snapshot, StorageError, StoreError, StoreFuture, StoreView, WriteAnswer,
    SCHEMA_VERSION,
};
use crate::failstop::Health;
use crate::id::Id;
use crate::model::{ClusterRecord, ClusterRef, Counts, NodeRecord, RegistryMeta, Write, Written};

/// The value of an operation key whose transaction applied.
pub(crate) const OP_APPLIED: &[u8] = b"applied";
/// The value of an operation key created by a fence: its transaction never applied.
const OP_ABANDONED: &[u8] = b"abandoned";
/// How long an operation key lives (its lease): long past any retry of its transaction.
pub const OP_LEASE_TTL: Duration = Duration::from_secs(300);
/// How long one operation lease is used for new operation keys before a new one is granted
/// (so every key lives at least `OP_LEASE_TTL` minus this).
const OP_LEASE_REUSE: Duration = Duration::from_secs(60);
/// How many times a batch is run again after losing its compares before the store gives up
/// (answered Unavailable: "try again").
pub const MAX_LOST_COMPARES: u32 = 64;
/// Most writes committed in one transaction when batches are combined: each write reads
/// (and so compares) up to three keys, and etcd allows 128 compares by default.
pub const MAX_COMBINED_WRITES: usize = 32;
/// How many commits of one batch may be lost on the way (and abandoned by their fence)
/// before the store answers Unavailable: each is tried on the next endpoint.
const MAX_ABANDONED: u32 = 8;
/// How many rounds of fetching one batch may need (each write reads at most a few keys).
const MAX_FETCH_ROUNDS: u32 = 64;
/// How often the health probe asks etcd.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Keys per page of a lazy read, and writes per restore transaction (etcd's default
/// `--max-txn-ops` is 128).
const PAGE: i64 = 256;
const RESTORE_CHUNK: usize = 100;

/// A registry store kept in etcd under one key prefix.
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// The runtime the client's connections, the watch and the probe run on (its own, so
    /// the blocking admin methods can wait for etcd from any thread).
    runtime: Option<tokio::runtime::Runtime>,
    /// The daemon's data directory for its local files (keys, regCred.dat, the control
    /// socket), if it has one: what [`AdminStore::data_dir`] answers.
    data_dir: Option<std::path::PathBuf>,
}

struct Inner {
    client: EtcdClient,
    keys: Keys,
    prefix: String,
    ids: Arc<IdSource>,
    events: ClusterEvents,
    health: Health,
    caps: Mutex<Option<Caps>>,
    /// The lease operation keys are created under, and when it was granted.
    op_lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
    /// Batches waiting to be committed together (see [`Inner::apply_combined`]).
    pending: Mutex<Vec<Pending>>,
    /// Held by the one task committing the pending batches.
    committer: tokio::sync::Mutex<()>,
}

/// A batch waiting for the committer, and where its answers go.
type Pending = (
    Vec<Write>,
    tokio::sync::oneshot::Sender<Result<Vec<WriteAnswer>, StorageError>>,
);

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("client", &self.inner.client)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a runtime thread must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How a commit went.
enum Commit {
    /// The transaction applied.
    Applied,
    /// Its compares failed; the failure branch read these keys back.
    Lost(Vec<Vec<u8>>, Vec<pb::etcdserverpb::ResponseOp>),
    /// It did not apply (resolved after an ambiguous failure): run the batch again.
    NotApplied,
}

impl EtcdStore {
    /// Opens the registry under `config.prefix` in etcd, drawing ids from the operating
    /// system's RNG: checks the schema version (writing it into an empty prefix), starts the
    /// cluster watch and the health probe. Fails if etcd does not answer.
    pub fn open(config: &EtcdConfig) -> Result<EtcdStore, StorageError> {
        EtcdStore::open_with_ids(config, IdSource::from_os())
    }

    /// As [`EtcdStore::open`], drawing ids from `ids` (seeded in tests).
    pub fn open_with_ids(config: &EtcdConfig, ids: IdSource) -> Result<EtcdStore, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("xlreg-etcd")
            .enable_all()
            .build()?;
        let client = {
            let _entered = runtime.enter();
            EtcdClient::connect(config).map_err(|e| StorageError::Backend(Box::new(e)))?
        };
        let inner = Arc::new(Inner {
            client,
            keys: Keys::new(&config.prefix),
            prefix: config.prefix.clone(),
            ids: Arc::new(ids),
            events: ClusterEvents::default(),
            health: Health::new(),
            caps: Mutex::new(None),
            op_lease: tokio::sync::Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            committer: tokio::sync::Mutex::new(()),
        });
        let store = EtcdStore {
            inner: Arc::clone(&inner),
            runtime: Some(runtime),
            data_dir: None,
        };
        let revision = store.block(inner.prepare())?;
        let handle = store.handle().clone();
        handle.spawn(Arc::clone(&inner).watch_clusters(revision + 1));
        handle.spawn(Arc::clone(&inner).probe());
        Ok(store)
    }

    /// Names the data directory of the daemon this store serves: its local files (keys,
    /// regCred.dat, the control socket) live there, and backups take the key files from it.
    pub fn with_data_dir(mut self, dir: &Path) -> EtcdStore {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// The client, for what else lives in etcd beside the records (the registry's sealed
    /// identity, server announcements, elections): leases, put-if-absent transactions,
    /// prefix reads and watches. Its futures may be awaited on any runtime; to spawn a
    /// [`watch::watch_prefix`], enter [`EtcdStore::handle`] first.
    pub fn client(&self) -> &EtcdClient {
        &self.inner.client
    }

    /// The runtime the client's connections run on.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        // Set in `open_with_ids` and taken only by `drop`.
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the store")
            .handle()
    }

    /// The key layout of this registry's prefix.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Runs `future` to completion on this thread, with the store's runtime entered (its
    /// threads drive the connections). For the blocking admin port: it blocks the calling
    /// thread, never a thread of the store's runtime.
    fn block<F: Future>(&self, future: F) -> F::Output {
        let _entered = self.handle().enter();
        park::block_on(future)
    }
}

/// A minimal executor for the blocking admin methods: polls one future on the calling
/// thread, parking between wake-ups. (tokio's own `block_on` refuses to run inside another
/// runtime's context, and the admin port is called from there too, e.g. while a daemon
/// starts.)
mod park {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::Thread;

    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    pub(super) fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::park();
        }
    }
}

/// Draws ids for the attempts of one batch: every attempt after the first gets the same
/// ids in the same order, so a batch run again (after fetching a key) draws no more ids
/// than one run would.
struct ReplayIds {
    drawn: Arc<Mutex<(Vec<Id>, usize)>>,
    source: IdSource,
}

impl ReplayIds {
    fn new(real: Arc<IdSource>) -> ReplayIds {
        let drawn = Arc::new(Mutex::new((Vec::<Id>::new(), 0usize)));
        let replay = Arc::clone(&drawn);
        let source = IdSource::from_fn(move || {
            let mut state = replay.lock().unwrap_or_else(|p| p.into_inner());
            let (ids, next) = &mut *state;
            let id = match ids.get(*next) {
                Some(id) => id.clone(),
                None => {
                    let id = real.draw();
                    ids.push(id.clone());
                    id
                }
            };
            *next += 1;
            id
        });
        ReplayIds { drawn, source }
    }

    fn rewind(&self) {
        self.drawn.lock().unwrap_or_else(|p| p.into_inner()).1 = 0;
    }
}

impl Inner {
    /// A storage error for an etcd failure; marks the store unavailable when etcd is.
    fn storage_error(&self, error: EtcdError) -> StorageError {
        match error {
            EtcdError::Unavailable(why) | EtcdError::Ambiguous(why) => {
                self.health.set_unavailable(&why);
                StorageError::Unavailable(why)
            }
            other => StorageError::Backend(Box::new(other)),
        }
    }

    /// Checks (or, in an empty prefix, writes) the schema version; returns the revision.
    async fn prepare(&self) -> Result<i64, StorageError> {
        let key = self.keys.key(Keys::META, VERSION_KEY);
        let version = SCHEMA_VERSION.to_be_bytes().to_vec();
        let request = TxnRequest {
            compare: vec![compare_revision(
                key.clone(),
                Vec::new(),
                compare::CompareTarget::Create,
                compare::CompareResult::Equal,
                0,
            )],
            success: vec![put_op(key.clone(), version, 0)],
            failure: vec![range_op(key.clone(), 0)],
        };
        // Put-if-absent: running it twice is running it once.
        let answer = self
            .client
            .txn_idempotent(request)
            .await
            .map_err(|e| self.storage_error(e))?;
        if !answer.succeeded {
            if let Some(stored) = range_values(answer.responses).pop().flatten() {
                let found = decode_version(&stored.value)?;
                if found > SCHEMA_VERSION {
                    return Err(StorageError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(answer.header.map_or(0, |h| h.revision))
    }

    /// Wakes the waiters of every cluster changed in etcd, by any server.
    async fn watch_clusters(self: Arc<Self>, from: i64) {
        let prefix = self.keys.tree(Keys::CLUSTERS);
        let mut updates = watch::watch_prefix(&self.client, prefix, from);
        while let Some(update) = updates.recv().await {
            match update {
                watch::WatchUpdate::Events(events) => {
                    for event in events {
                        let Some(kv) = event.kv else { continue };
                        let id = self
                            .keys
                            .strip(Keys::CLUSTERS, &kv.key)
                            .and_then(|raw| Id::from_bytes(raw).ok());
                        if let Some(id) = id {
                            self.events.notify(&id);
                        }
                    }
                }
                watch::WatchUpdate::Compacted => self.events.notify_all(),
                watch::WatchUpdate::Resuming => {}
            }
        }
    }

    /// Marks the store available or unavailable by asking etcd once a second
    /// (linearizable: answered only with a quorum).
    async fn probe(self: Arc<Self>) {
        let key = self.keys.key(Keys::META, VERSION_KEY);
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            match self.client.probe(&key).await {
                Ok(_) => self.health.set_available(),
                Err(EtcdError::Unavailable(why)) => self.health.set_unavailable(why),
                Err(_) => {}
            }
        }
    }

    /// Fetches `keys` into `cache`, in one round trip.
    async fn fetch(&self, cache: &mut Cache, keys: Vec<Vec<u8>>) -> Result<(), StorageError> {
        let mut keys = keys;
        keys.sort_unstable();
        keys.dedup();
        let (values, _) = self
            .client
            .read(&keys, 0)
            .await
            .map_err(|e| self.storage_error(e))?;
        for (key, value) in keys.into_iter().zip(values) {
            cache.insert(key, value);
        }
        Ok(())
    }

    /// The lease for new operation keys.
    async fn op_lease(&self) -> Result<i64, StorageError> {
        let mut lease = self.op_lease.lock().await;
        if let Some((id, granted)) = *lease {
            if granted.elapsed() < OP_LEASE_REUSE {
                return Ok(id);
            }
        }
        let id = self
            .client
            .lease_grant(OP_LEASE_TTL)
            .await
            .map_err(|e| self.storage_error(e))?;
        *lease = Some((id, Instant::now()));
        Ok(id)
    }

    /// A new operation key.
    fn op_key(&self) -> Vec<u8> {
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        self.keys.key(Keys::OPS, hex::encode(id).as_bytes())
    }

    /// Commits an attempt in one transaction (see the module doc).
    async fn commit(&self, attempt: Attempt<'_>) -> Result<Commit, StorageError> {
        let lease = self.op_lease().await?;
        let op = self.op_key();
        let (compare, success, read_back) = attempt.into_txn(op.clone(), lease);
        let failure = read_back.iter().map(|k| range_op(k.clone(), 0)).collect();
        let request = TxnRequest {
            compare,
            success,
            failure,
        };
        match self.client.txn(request).await {
            Ok(answer) if answer.succeeded => Ok(Commit::Applied),
            Ok(answer) => Ok(Commit::Lost(read_back, answer.responses)),
            Err(EtcdError::Ambiguous(why)) => {
                counters()
                    .ambiguous
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%why, "etcd transaction outcome unknown; fencing its operation key");
                self.resolve(op).await
            }
            Err(EtcdError::Refused { message, .. }) if message.contains("lease not found") => {
                // The lease expired under us (etcd checks it before applying anything).
                *self.op_lease.lock().await = None;
                Ok(Commit::NotApplied)
            }
            Err(other) => Err(self.storage_error(other)),
        }
    }

    /// Learns whether the transaction of operation key `op` applied, making sure that if
    /// it did not, it never will.
    async fn resolve(&self, op: Vec<u8>) -> Result<Commit, StorageError> {
        let lease = self.op_lease().await?;
        let fence = TxnRequest {
            compare: vec![compare_revision(
                op.clone(),
                Vec::new(),
                compare::CompareTarget::Create,
                compare::CompareResult::Equal,
                0,
            )],
            success: vec![put_op(op.clone(), OP_ABANDONED.to_vec(), lease)],
            failure: vec![range_op(op, 0)],
        };
        // Safe to repeat: a second fence finds the key the first one created.
        let answer = self
            .client
            .txn_idempotent(fence)
            .await
            .map_err(|e| self.storage_error(e))?;
        if answer.succeeded {
            return Ok(Commit::NotApplied);
        }
        match range_values(answer.responses).pop().flatten() {
            Some(kv) if kv.value == OP_APPLIED => Ok(Commit::Applied),
            _ => Ok(Commit::NotApplied),
        }
    }

    /// Runs `run` over optimistic attempts until one commits (or changes nothing), fetching
    /// what it misses; `prefetch` is read before the first attempt.
    async fn optimistic<T>(
        &self,
        prefetch: Vec<Vec<u8>>,
        mut run: impl FnMut(&mut Attempt<'_>, &IdSource) -> Result<T, Miss>,
    ) -> Result<T, StorageError> {
        self.health.check()?;
        let ids = ReplayIds::new(Arc::clone(&self.ids));
        let mut cache = Cache::default();
        let mut keys = prefetch;
        let mut trees: Vec<&'static str> = Vec::new();
        let mut fetches = 0;
        let mut lost = 0;
        let mut abandoned = 0;
        loop {
            if !keys.is_empty() {
                fetches += 1;
                if fetches > MAX_FETCH_ROUNDS {
                    return Err(StorageError::Corrupt(
                        "a write kept reading new keys; giving up".into(),
                    ));
                }
                self.fetch(&mut cache, std::mem::take(&mut keys)).await?;
            }
            for tree in std::mem::take(&mut trees) {
                let (count, revision) = self
                    .client
                    .count_prefix(&self.keys.tree(tree))
                    .await
                    .map_err(|e| self.storage_error(e))?;
                cache.insert_count(tree, count, revision);
            }
            ids.rewind();
            let caps = *self.caps.lock().unwrap_or_else(|p| p.into_inner());
            let mut attempt = Attempt::new(&self.keys, &cache, caps);
            let output = match run(&mut attempt, &ids.source) {
                Ok(output) => output,
                Err(Miss::Keys(missing)) => {
                    keys = missing;
                    continue;
                }
                Err(Miss::Counts(missing)) => {
                    trees = missing;
                    continue;
                }
                Err(Miss::Failed(error)) => return Err(error),
            };
            if attempt.writes_nothing() {
                return Ok(output);
            }
            match self.commit(attempt).await? {
                Commit::Applied => return Ok(output),
                Commit::Lost(read_back, responses) => {
                    counters()
                        .lost_compares
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    lost += 1;
                    if lost > MAX_LOST_COMPARES {
                        return Err(StorageError::Unavailable(format!(
                            "lost {MAX_LOST_COMPARES} races for the same records in a row; try again"
                        )));
                    }
                    counters()
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    cache.refresh(&read_back, responses);
                    // Racers that lost together should not all come back together.
                    let pause = rand::random_range(0..=(2u64 << lost.min(5)));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Commit::NotApplied => {
                    abandoned += 1;
                    if abandoned > MAX_ABANDONED {
                        return Err(self.storage_error(EtcdError::Unavailable(format!(
                            "{MAX_ABANDONED} commits in a row were lost on the way to etcd"
                        ))));
                    }
                    // The cached values may be stale: a stale one loses its compare and is
                    // refreshed then.
                    counters()
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Applies a batch of writes, committed together with the batches other sessions of
    /// this server hand in meanwhile: one task at a time commits everything pending (up to
    /// [`MAX_COMBINED_WRITES`] writes) in one transaction, and answers each batch. Concurrent
    /// joins to one cluster then cost one transaction, not one lost compare each. Each
    /// batch keeps its own answers, as if applied alone in that order; a storage failure
    /// fails every batch of the transaction (none of them applied).
    async fn apply_combined(&self, writes: Vec<Write>) -> Result<Vec<WriteAnswer>, StorageError> {
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((writes, answer));
        loop {
            use tokio::sync::oneshot::error::TryRecvError;
            match answered.try_recv() {
                Ok(result) => return result,
                Err(TryRecvError::Closed) => {
                    return Err(StorageError::Unavailable(
                        "the batch's committer stopped".into(),
                    ))
                }
                Err(TryRecvError::Empty) => {}
            }
            // A committer answers before it gives up its turn: once this task has the turn,
            // its batch is either answered or still pending (and taken now).
            let _turn = self.committer.lock().await;
            match answered.try_recv() {
                // Answered while waiting for the turn: pass it on at once.
                Ok(result) => return result,
                Err(TryRecvError::Closed) => continue,
                Err(TryRecvError::Empty) => {}
            }
            let batches = self.take_pending();
            if batches.is_empty() {
                continue;
            }
            let all: Vec<Write> = batches
                .iter()
                .flat_map(|(w, _)| w.iter().cloned())
                .collect();
            match self.apply_batch(&all).await {
                Ok(answers) => {
                    let mut answers = answers.into_iter();
                    for (writes, to) in batches {
                        let _ = to.send(Ok(answers.by_ref().take(writes.len()).collect()));
                    }
                }
                Err(error) => {
                    for (_, to) in batches {
                        let _ = to.send(Err(duplicate(&error)));
                    }
                }
            }
        }
    }

    /// Takes whole pending batches, up to [`MAX_COMBINED_WRITES`] writes (at least one).
    fn take_pending(&self) -> Vec<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut writes = 0;
        let mut take = 0;
        for (batch, _) in pending.iter() {
            if take > 0 && writes + batch.len() > MAX_COMBINED_WRITES {
                break;
            }
            writes += batch.len();
            take += 1;
        }
        pending.drain(..take).collect()
    }

    /// Applies a batch of writes in one transaction.
    async fn apply_batch(&self, writes: &[Write]) -> Result<Vec<WriteAnswer>, StorageError> {
        let prefetch = writes
            .iter()
            .flat_map(|write| likely_reads(&self.keys, write))
            .collect();
        let answers = self
            .optimistic(prefetch, |attempt, ids| {
                let mut answers = Vec::with_capacity(writes.len());
                for (k, write) in writes.iter().enumerate() {
                    match apply::apply_write(attempt, write, ids) {
                        Ok(answer) => answers.push(answer),
                        Err(Miss::Keys(mut missing)) => {
                            // Learn what the later writes miss too (each alone, on what is
                            // fetched so far), so one round trip fetches for all of them.
                            for later in &writes[k + 1..] {
                                let mut alone = attempt.fresh();
                                if let Err(Miss::Keys(more)) =
                                    apply::apply_write(&mut alone, later, ids)
                                {
                                    missing.extend(more);
                                }
                            }
                            return Err(Miss::Keys(missing));
                        }
                        Err(other) => return Err(other),
                    }
                }
                Ok(answers)
            })
            .await?;
        self.events.notify_joins(&answers);
        Ok(answers)
    }

    /// Reads one key of a tree at `revision` (0: now): its value, and the revision read at.
    async fn get(
        &self,
        tree: &str,
        key: &[u8],
        revision: i64,
    ) -> Result<(Option<Vec<u8>>, i64), StorageError> {
        let (mut values, at) = self
            .client
            .read(&[self.keys.key(tree, key)], revision)
            .await
            .map_err(|e| self.storage_error(e))?;
        Ok((values.pop().flatten().map(|kv| kv.value), at))
    }

    /// The cluster by id or name at `revision` (0: now), and the revision read at.
    async fn cluster_at(
        &self,
        cluster: &ClusterRef,
        revision: i64,
    ) -> Result<(Option<ClusterRecord>, i64), StorageError> {
        let (id, at) = match cluster {
            ClusterRef::Id(id) => (id.as_bytes().to_vec(), revision),
            ClusterRef::Name(name) => match self.get(Keys::NAMES, name.as_bytes(), revision).await?
            {
                (Some(id), at) => (id, at),
                (None, at) => return Ok((None, at)),
            },
        };
        let (value, at) = self.get(Keys::CLUSTERS, &id, at).await?;
        match value {
            Some(bytes) => Ok((Some(decode("cluster", &id, &bytes)?), at)),
            None if matches!(cluster, ClusterRef::Name(_)) => Err(StorageError::Corrupt(format!(
                "cluster name {cluster} points at cluster {} which does not exist",
                hex::encode(&id)
            ))),
            None => Ok((None, at)),
        }
    }

    /// The cluster with its members' node records, all read at one revision.
    async fn cluster_view(
        &self,
        cluster: &ClusterRef,
    ) -> Result<Option<ClusterView>, StorageError> {
        self.health.check()?;
        let (Some(record), at) = self.cluster_at(cluster, 0).await? else {
            return Ok(None);
        };
        let keys: Vec<Vec<u8>> = record
            .members
            .iter()
            .map(|m| self.keys.key(Keys::NODES, m.node_id.as_bytes()))
            .collect();
        let mut nodes = HashMap::new();
        if !keys.is_empty() {
            let (values, _) = self
                .client
                .read(&keys, at)
                .await
                .map_err(|e| self.storage_error(e))?;
            for (member, value) in record.members.iter().zip(values) {
                if let Some(kv) = value {
                    let node: NodeRecord = decode("node", member.node_id.as_bytes(), &kv.value)?;
                    nodes.insert(member.node_id.clone(), node);
                }
            }
        }
        ClusterView::build(record, |id| Ok(nodes.get(id).cloned())).map(Some)
    }

    async fn node(&self, id: &Id) -> Result<Option<NodeRecord>, StorageError> {
        self.health.check()?;
        match self.get(Keys::NODES, id.as_bytes(), 0).await?.0 {
            Some(bytes) => decode("node", id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The current revision (a linearizable read).
    async fn revision(&self) -> Result<i64, StorageError> {
        let (_, at) = self
            .client
            .count_prefix(&self.keys.tree(Keys::META))
            .await
            .map_err(|e| self.storage_error(e))?;
        Ok(at)
    }

    /// One page of a tree at `revision`, from `from` on.
    async fn page(
        &self,
        tree: &str,
        from: &[u8],
        revision: i64,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), StorageError> {
        let (_, end) = self.keys.tree_range(tree);
        let (kvs, _, more) = self
            .client
            .page(from, &end, revision, PAGE)
            .await
            .map_err(|e| self.storage_error(e))?;
        let entries = kvs
            .into_iter()
            .filter_map(|kv| {
                self.keys
                    .strip(tree, &kv.key)
                    .map(|key| (key.to_vec(), kv.value))
            })
            .collect();
        Ok((entries, more))
    }

    /// Every entry of a tree at `revision`.
    async fn tree_entries(
        &self,
        tree: &str,
        revision: i64,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let mut from = self.keys.tree(tree);
        let mut all = Vec::new();
        loop {
            let (entries, more) = self.page(tree, &from, revision).await?;
            if let Some((last, _)) = entries.last() {
                from = self.keys.key(tree, last);
                from.push(0);
            }
            all.extend(entries);
            if !more {
                return Ok(all);
            }
        }
    }
}

/// The same storage error again, for every batch of a failed combined transaction.
fn duplicate(error: &StorageError) -> StorageError {
    match error {
        StorageError::Failed(reason) => StorageError::Failed(reason.clone()),
        StorageError::Unavailable(reason) => StorageError::Unavailable(reason.clone()),
        StorageError::Corrupt(what) => StorageError::Corrupt(what.clone()),
        StorageError::NoFreshId { tries } => StorageError::NoFreshId { tries: *tries },
        other => StorageError::Backend(other.to_string().into()),
    }
}

impl EtcdStore {
    /// The current etcd revision: what a view opened now reads at.
    fn revision(&self) -> Result<i64, StorageError> {
        self.block(self.inner.revision())
    }

    /// Every record of `tree`, decoded, read lazily at one revision.
    fn records<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        tree: &'static str,
        what: &'static str,
    ) -> Records<'_, T> {
        let revision = match self.inner.health.check().and_then(|()| self.revision()) {
            Ok(revision) => revision,
            Err(error) => return Box::new(std::iter::once(Err(error))),
        };
        Box::new(self.entries_at(tree, revision).map(move |entry| {
            let (key, value) = entry?;
            decode(what, &key, &value)
        }))
    }

    /// The raw entries of `tree` at `revision`, read a page at a time.
    fn entries_at(&self, tree: &'static str, revision: i64) -> Pages<'_> {
        Pages {
            store: self,
            tree,
            revision,
            from: Some(self.inner.keys.tree(tree)),
            buffered: VecDeque::new(),
        }
    }

    /// A snapshot of every tree at `revision`.
    fn snapshot_at(&self, revision: i64) -> Result<Snapshot, StorageError> {
        let mut snapshot = Snapshot::default();
        for tree in Keys::TREES {
            let entries = self.block(self.inner.tree_entries(tree, revision))?;
            snapshot
                .trees
                .insert(tree.as_bytes().to_vec(), entries.into_iter().collect());
        }
        Ok(snapshot)
    }
}

/// The entries of one tree at one revision, fetched a page at a time.
struct Pages<'a> {
    store: &'a EtcdStore,
    tree: &'static str,
    revision: i64,
    /// The key to read the next page from; `None` once the last page was read.
    from: Option<Vec<u8>>,
    buffered: VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl Iterator for Pages<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.buffered.pop_front() {
            return Some(Ok(entry));
        }
        let from = self.from.take()?;
        let inner = &self.store.inner;
        match self
            .store
            .block(inner.page(self.tree, &from, self.revision))
        {
            Ok((entries, more)) => {
                if more {
                    if let Some((last, _)) = entries.last() {
                        let mut next = inner.keys.key(self.tree, last);
                        next.push(0);
                        self.from = Some(next);
                    }
                }
                self.buffered.extend(entries);
                self.buffered.pop_front().map(Ok)
            }
            Err(error) => Some(Err(error)),
        }
    }
}

/// A point-in-time view of an etcd store: every tree as it was at one revision.
struct EtcdView<'a> {
    store: &'a EtcdStore,
    revision: i64,
}

impl StoreView for EtcdView<'_> {
    fn tree_names(&self) -> Vec<Vec<u8>> {
        Keys::TREES.iter().map(|t| t.as_bytes().to_vec()).collect()
    }

    fn entries(&self, tree: &[u8]) -> RawEntries<'_> {
        match Keys::TREES.iter().find(|t| t.as_bytes() == tree) {
            Some(tree) => Box::new(self.store.entries_at(tree, self.revision)),
            None => Box::new(std::iter::empty()),
        }
    }
}

impl SessionStore for EtcdStore {
    fn read_cluster(
        &self,
        cluster: ClusterRef,
    ) -> StoreFuture<'_, Result<Option<ClusterView>, StorageError>> {
        Box::pin(async move { self.inner.cluster_view(&cluster).await })
    }

    fn read_node(&self, id: Id) -> StoreFuture<'_, Result<Option<NodeRecord>, StorageError>> {
        Box::pin(async move { self.inner.node(&id).await })
    }

    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, Result<Vec<WriteAnswer>, StorageError>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            self.inner.apply_combined(writes).await
        })
    }

    fn watch_cluster(&self, cluster: &Id) -> tokio_watch::Receiver<()> {
        self.inner.events.subscribe(cluster)
    }

    fn fresh_id(&self) -> StoreFuture<'_, Result<Id, StorageError>> {
        Box::pin(async move {
            self.inner
                .optimistic(Vec::new(), |attempt, ids| {
                    apply::draw_unused_id(attempt, ids)
                })
                .await
        })
    }

    fn durable(&self) -> StoreFuture<'_, Result<(), StorageError>> {
        // etcd acknowledges a transaction once a quorum has it on disk.
        Box::pin(async { self.inner.health.check() })
    }
}

impl AdminStore for EtcdStore {
    fn registry_meta(&self) -> Result<Option<RegistryMeta>, StorageError> {
        self.inner.health.check()?;
        match self.block(self.inner.get(Keys::META, REGISTRY_KEY, 0))?.0 {
            Some(bytes) => decode("registry", REGISTRY_KEY, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn set_registry_meta(&self, meta: &RegistryMeta) -> Result<(), StorageError> {
        self.inner.health.check()?;
        let bytes = encode("registry", meta)?;
        let key = self.inner.keys.key(Keys::META, REGISTRY_KEY);
        self.block(self.inner.client.put(&key, &bytes, 0))
            .map_err(|e| self.inner.storage_error(e))?;
        Ok(())
    }

    fn node(&self, id: &Id) -> Result<Option<NodeRecord>, StorageError> {
        self.block(self.inner.node(id))
    }

    fn cluster(&self, cluster: &ClusterRef) -> Result<Option<ClusterRecord>, StorageError> {
        self.inner.health.check()?;
        Ok(self.block(self.inner.cluster_at(cluster, 0))?.0)
    }

    fn cluster_view(&self, cluster: &ClusterRef) -> Result<Option<ClusterView>, StorageError> {
        self.block(self.inner.cluster_view(cluster))
    }

    fn nodes(&self) -> Records<'_, NodeRecord> {
        self.records(Keys::NODES, "node")
    }

    fn clusters(&self) -> Records<'_, ClusterRecord> {
        self.records(Keys::CLUSTERS, "cluster")
    }

    fn delete_cluster_if(
        &self,
        cluster: &ClusterRef,
        condition: &dyn Fn(&ClusterRecord) -> bool,
    ) -> Result<Option<ClusterRecord>, StorageError> {
        let deleted = self.block(self.inner.optimistic(Vec::new(), |attempt, _| {
            apply::delete_cluster_if(attempt, cluster, condition)
        }))?;
        if let Some(cluster) = &deleted {
            self.inner.events.notify(&cluster.id);
        }
        Ok(deleted)
    }

    fn delete_node(&self, id: &Id) -> Result<NodeDeletion, StorageError> {
        self.inner.health.check()?;
        let inner = &self.inner;
        for _ in 0..MAX_LOST_COMPARES {
            let revision = self.revision()?;
            let node_key = inner.keys.key(Keys::NODES, id.as_bytes());
            let (value, _) = self.block(inner.get(Keys::NODES, id.as_bytes(), revision))?;
            let Some(bytes) = value else {
                return Ok(NodeDeletion::NoSuchNode);
            };
            let node: NodeRecord = decode("node", id.as_bytes(), &bytes)?;
            let mut memberships = Vec::new();
            for entry in self.entries_at(Keys::CLUSTERS, revision) {
                let (key, value) = entry?;
                let cluster: ClusterRecord = decode("cluster", &key, &value)?;
                if cluster.members.iter().any(|m| &m.node_id == id) {
                    memberships.push(cluster.name);
                }
            }
            if !memberships.is_empty() {
                return Ok(NodeDeletion::Member(memberships));
            }
            // No join may have happened since: no cluster modified after `revision`, and
            // the node unchanged.
            let (start, end) = inner.keys.tree_range(Keys::CLUSTERS);
            let request = TxnRequest {
                compare: vec![
                    compare_revision(
                        node_key.clone(),
                        Vec::new(),
                        compare::CompareTarget::Mod,
                        compare::CompareResult::Less,
                        revision + 1,
                    ),
                    compare_revision(
                        start,
                        end,
                        compare::CompareTarget::Mod,
                        compare::CompareResult::Less,
                        revision + 1,
                    ),
                ],
                success: vec![delete_op(node_key)],
                failure: Vec::new(),
            };
            // Safe to repeat: deleting a deleted key changes nothing.
            let answer = self
                .block(inner.client.txn_idempotent(request))
                .map_err(|e| inner.storage_error(e))?;
            if answer.succeeded {
                return Ok(NodeDeletion::Deleted(node));
            }
            counters()
                .lost_compares
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(StorageError::Unavailable(
            "clusters kept changing while deleting the node; try again".into(),
        ))
    }

    fn set_caps(&self, caps: Caps) -> Result<(), StorageError> {
        *self.inner.caps.lock().unwrap_or_else(|p| p.into_inner()) = Some(caps);
        Ok(())
    }

    fn apply_now(&self, write: &Write) -> Result<Written, StoreError> {
        let mut answers = self.block(self.inner.apply_batch(std::slice::from_ref(write)))?;
        match answers.pop() {
            Some(answer) => Ok(answer?),
            None => Err(StoreError::Storage(StorageError::Corrupt(
                "a write got no answer".into(),
            ))),
        }
    }

    fn counts(&self) -> Result<Counts, StorageError> {
        self.inner.health.check()?;
        let revision = self.revision()?;
        let nodes = self.entries_at(Keys::NODES, revision).count() as u64;
        let mut clusters = 0;
        let mut members = 0;
        for entry in self.entries_at(Keys::CLUSTERS, revision) {
            let (key, value) = entry?;
            let cluster: ClusterRecord = decode("cluster", &key, &value)?;
            clusters += 1;
            members += u64::from(cluster.member_count());
        }
        Ok(Counts {
            nodes,
            clusters,
            members,
        })
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        // The registry's keys and values (see the module doc for why not etcd's db size).
        Ok(AdminStore::snapshot(self)?.encoded_len() as u64)
    }

    fn schema_version(&self) -> Result<Option<u32>, StorageError> {
        self.inner.health.check()?;
        match self.block(self.inner.get(Keys::META, VERSION_KEY, 0))?.0 {
            Some(bytes) => decode_version(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.inner.health.check()?;
        let revision = self.revision()?;
        self.snapshot_at(revision)
    }

    fn view(&self) -> Result<Box<dyn StoreView + '_>, StorageError> {
        self.inner.health.check()?;
        let revision = self.revision()?;
        Ok(Box::new(EtcdView {
            store: self,
            revision,
        }))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.inner.health.check()?;
        // Refuses a snapshot of another schema before anything is written.
        snapshot.decode_all()?;
        let inner = &self.inner;
        let not_empty = || StorageError::NotEmpty {
            dir: self.inner.prefix.clone().into(),
        };
        let mut guards = Vec::new();
        for tree in [Keys::NODES, Keys::CLUSTERS, Keys::NAMES] {
            let (count, _) = self
                .block(inner.client.count_prefix(&inner.keys.tree(tree)))
                .map_err(|e| inner.storage_error(e))?;
            if count > 0 {
                return Err(not_empty());
            }
            let (start, end) = inner.keys.tree_range(tree);
            // Still empty when the first chunk is written: no key in the range at all.
            guards.push(compare_revision(
                start,
                end,
                compare::CompareTarget::Create,
                compare::CompareResult::Equal,
                0,
            ));
        }
        let mut puts = Vec::new();
        for tree in [Keys::NODES, Keys::CLUSTERS, Keys::NAMES] {
            if let Some(entries) = snapshot.trees.get(tree.as_bytes()) {
                for (key, value) in entries {
                    puts.push(put_op(inner.keys.key(tree, key), value.clone(), 0));
                }
            }
        }
        if let Some(meta) = snapshot
            .trees
            .get(Keys::META.as_bytes())
            .and_then(|t| t.get(REGISTRY_KEY))
        {
            puts.push(put_op(
                inner.keys.key(Keys::META, REGISTRY_KEY),
                meta.clone(),
                0,
            ));
        }
        let mut first = true;
        for chunk in puts.chunks(RESTORE_CHUNK) {
            let request = TxnRequest {
                compare: if first { guards.clone() } else { Vec::new() },
                success: chunk.to_vec(),
                failure: Vec::new(),
            };
            // Safe to repeat: the same values under the same keys; the first chunk's
            // guard then fails only because it applied, which the next chunk checks.
            let answer = self
                .block(inner.client.txn_idempotent(request))
                .map_err(|e| inner.storage_error(e))?;
            if first && !answer.succeeded {
                // Either another writer got there first, or a retried first chunk had
                // applied: tell them apart by whether our first record is there as sent.
                let first_put = &chunk[0];
                if !self.holds(first_put)? {
                    return Err(not_empty());
                }
            }
            first = false;
        }
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), StorageError> {
        // Acknowledged by etcd is durable.
        self.inner.health.check()
    }

    fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }
}

impl EtcdStore {
    /// Whether the put `op` describes is in etcd as described.
    fn holds(&self, op: &pb::etcdserverpb::RequestOp) -> Result<bool, StorageError> {
        let Some(pb::etcdserverpb::request_op::Request::RequestPut(put)) = &op.request else {
            return Ok(false);
        };
        let answer = self
            .block(self.inner.client.range(RangeRequest {
                key: put.key.clone(),
                ..Default::default()
            }))
            .map_err(|e| self.inner.storage_error(e))?;
        Ok(answer.kvs.first().is_some_and(|kv| kv.value == put.value))
    }
}

impl Backend for EtcdStore {
    fn health(&self) -> &Health {
        &self.inner.health
    }
}

#[cfg(test)]
pub(crate) mod tests;
