//! Group commit: applying the registry's changes in batches and making them durable, with
//! concurrent callers sharing transactions, flushes and syncs.
//!
//! This module owns [`Store::write`], [`Store::durable`] and [`Store::flush_blocking`], and
//! the store's writer thread behind the first two.
//!
//! # Why one writer, and batches
//!
//! Read from sled 0.34.7's source, three costs dominate a small write:
//! - every transaction first rolls sled's I/O buffer (`PageCache::pin_log`): what is buffered
//!   is written and `sync_file_range`d by one of sled's I/O threads, so a transaction per
//!   request costs a disk write and two thread hand-offs per request;
//! - transactions are serialised behind one global lock;
//! - `flush()` holds that lock (read side) while it writes, so no transaction can commit
//!   while a flush runs.
//!
//! So the writer thread takes every [`Write`] queued since its last round, applies them in
//! order in *one* transaction (a refused write changes nothing and leaves the others alone;
//! see [`Store::apply_batch`]), then flushes and syncs once, and only then answers each
//! caller: a reply is never sent before its change is durable. While a round's flush runs,
//! the next round's writes queue up, so the batch grows with the load. Under concurrent load
//! (the last round held more than one write) the writer also waits [`GATHER`] before taking
//! a batch, trading that much latency for fewer, larger rounds; a lone client never waits.
//!
//! # Durability of other changes
//!
//! Changes made outside the writer (admin commands, expiry, [`Store::apply`]) bump the
//! `written` sequence number after their transaction commits. [`Store::durable`] notes that
//! number, asks the writer for a round, and waits until a flush that started after it was
//! read has finished. Every round flushes if anything was written since the last flush.
//!
//! Flushing is `disk`'s job: sled's flush uses `sync_file_range`, which flushes neither the
//! disk's write cache nor the file-size metadata and never syncs blob files, so the round
//! also syncs those. sled's `flush_async` is never used: concurrent `flush_async` calls
//! deadlock in sled 0.34.7 (sled#1308).
//!
//! # Fail-stop
//!
//! A failed transaction, flush or sync is never retried: it fails the store's
//! [`Health`] (see `crate::failstop` for why), every write of the
//! round and every later one gets [`StorageError::Failed`], and so does every caller waiting in
//! [`Store::write`] or [`Store::durable`], at once (they also watch the health, so a round
//! that hangs does not hold them). A round whose flush finishes after the watchdog declared
//! it overdue acknowledges nothing either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::{Inner, StorageError, Store, StoreError, Write, WriteAnswer, Written};
use crate::failstop::Health;

/// Under concurrent load, how long the writer lets writes gather before taking a batch.
const GATHER: Duration = Duration::from_millis(1);

/// The most batches one round applies (a session's write is a batch of one; one
/// transaction, and sled holds its writes in memory).
const MAX_BATCH: usize = 1024;

/// How long a flush hangs in tests that simulate a hung disk.
#[cfg(test)]
const TEST_HANG: Duration = Duration::from_secs(3);

/// What the writer has made durable so far.
#[derive(Debug, Default)]
struct Progress {
    /// Every change with a sequence number up to this one is on disk.
    flushed: u64,
    /// How many flushes have failed so far.
    failures: u64,
    /// The target of the last failed flush, and its error.
    last_failure: Option<(u64, Arc<StorageError>)>,
}

/// A batch of writes waiting for the writer, with where their answers go.
struct Pending {
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<Vec<WriteAnswer>, StorageError>>,
}

/// The writer's inbox.
#[derive(Default)]
struct Queue {
    writes: Vec<Pending>,
    /// A caller of `durable()` wants a flush.
    flush_wanted: bool,
    /// The writer thread has been started.
    started: bool,
    /// The writer is waiting on `work` for something to do: only then does handing it
    /// work signal the condition variable (a signal is a futex system call even when
    /// nobody waits, and under load the writer is mostly busy with a round).
    writer_waiting: bool,
    /// The store is gone: no more rounds.
    closed: bool,
}

/// The state shared by a store and its writer thread. The writer holds it strongly and the
/// store itself weakly, so that dropping the last `Store` closes the database.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the queue gets work or is closed.
    work: Condvar,
    /// Sequence number of committed changes; bumped after every committed transaction.
    written: AtomicU64,
    /// The writer's progress, for waiters.
    progress: watch::Sender<Progress>,
    /// Tests set this to make the next flush fail.
    #[cfg(test)]
    fail_next_flush: std::sync::atomic::AtomicBool,
    /// Tests set this to make the next flush take [`TEST_HANG`] (a hung disk).
    #[cfg(test)]
    hang_next_flush: std::sync::atomic::AtomicBool,
    /// Tests set this to make the writer panic in its next round.
    #[cfg(test)]
    panic_next_round: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the queue consistent (pushes and drains
        // only), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a successful flush of everything up to `target`.
    fn publish_ok(&self, target: u64) {
        self.progress
            .send_modify(|p| p.flushed = p.flushed.max(target));
    }

    /// Publishes a failed flush whose target was `target`.
    fn publish_err(&self, target: u64, error: Arc<StorageError>) {
        self.progress.send_modify(|p| {
            p.failures += 1;
            p.last_failure = Some((target, error));
        });
    }

    /// Waits for work and takes the next round's writes (empty for a flush-only round).
    /// `gather`: wait [`GATHER`] first, letting concurrent writes join the batch. Returns
    /// `None` once the store is closed.
    fn next_round(&self, gather: bool) -> Option<Vec<Pending>> {
        let mut queue = self.lock();
        loop {
            if !queue.writes.is_empty() || queue.flush_wanted {
                break;
            }
            if queue.closed {
                return None;
            }
            queue.writer_waiting = true;
            queue = self.work.wait(queue).unwrap_or_else(|p| p.into_inner());
            queue.writer_waiting = false;
        }
        if gather && !queue.writes.is_empty() && queue.writes.len() < MAX_BATCH {
            drop(queue);
            std::thread::sleep(GATHER);
            queue = self.lock();
        }
        queue.flush_wanted = false;
        let n = queue.writes.len().min(MAX_BATCH);
        Some(queue.writes.drain(..n).collect())
    }
}

/// The group-commit state of one store.
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("written", &self.shared.written)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// A fresh state: nothing written, nothing flushed, no writer yet.
    pub(super) fn new() -> GroupCommit {
        GroupCommit {
            shared: Arc::new(Shared::default()),
        }
    }

    /// Records that a transaction has committed.
    pub(super) fn bump(&self) {
        self.shared.written.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for GroupCommit {
    /// The store is going away: the writer finishes its round and stops.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

/// Fails the store if the writer thread unwinds (a panic inside sled, say): what the round
/// in progress left on disk is unknown, so nothing more may be acknowledged. The writes of
/// that round (their reply senders are dropped by the unwinding), the queued ones and every
/// later one get [`StorageError::Failed`].
struct WriterGuard {
    shared: Arc<Shared>,
    health: Health,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.health.fail("the store writer panicked");
        // Dropping the reply senders fails their receivers.
        drop(std::mem::take(&mut self.shared.lock().writes));
    }
}

/// Fails the store if dropped while its thread unwinds.
struct FailOnPanic<'a>(&'a Health);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the store writer panicked");
        }
    }
}

/// Starts a writer thread for `shared`.
fn spawn_writer(shared: &Arc<Shared>, store: &Weak<Inner>, health: &Health) -> std::io::Result<()> {
    let guard = WriterGuard {
        shared: Arc::clone(shared),
        health: health.clone(),
    };
    let store = Weak::clone(store);
    std::thread::Builder::new()
        .name("xlreg-store-writer".into())
        .spawn(move || run_writer(guard, store))
        .map(drop)
}

/// The writer thread's loop.
fn run_writer(guard: WriterGuard, store: Weak<Inner>) {
    let shared = Arc::clone(&guard.shared);
    let mut last_round = 0;
    while let Some(batch) = shared.next_round(last_round > 1) {
        let Some(inner) = store.upgrade() else {
            // Unreachable while writes are queued (each caller holds the store), but a
            // flush request may outlive it.
            return;
        };
        last_round = batch.len();
        Store { inner }.round(&shared, batch);
    }
    drop(guard);
}

impl Store {
    /// The health of this store's storage (fail-stop: see `crate::failstop`).
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// [`StorageError::Failed`] once the storage has failed.
    pub(super) fn check_health(&self) -> Result<(), StorageError> {
        self.inner.health.check()
    }

    /// One writer round: applies `batch` in one transaction, flushes, answers each write.
    /// Once the storage has failed, a round only answers [`StorageError::Failed`].
    fn round(&self, shared: &Shared, batch: Vec<Pending>) {
        // Dropped before `batch` while unwinding, so the writes' callers find the store
        // failed when their reply senders go.
        let _fails_on_panic = FailOnPanic(&self.inner.health);
        #[cfg(test)]
        if shared.panic_next_round.swap(false, Ordering::SeqCst) {
            panic!("a store writer panic (test)");
        }
        let applied = if batch.is_empty() {
            Ok(Vec::new())
        } else {
            let writes: Vec<&Write> = batch.iter().flat_map(|p| &p.writes).collect();
            let _running = self.inner.health.begin("a batch's transaction");
            self.apply_batch(&writes)
        };
        if let Err(error) = &applied {
            if !matches!(error, StorageError::Failed(_)) {
                self.inner
                    .health
                    .fail(format!("a batch of store writes failed: {error}"));
            }
        }
        let target = shared.written.load(Ordering::SeqCst);
        let flush = if applied.is_err() || shared.progress.borrow().flushed >= target {
            Ok(())
        } else {
            match self.flush_to_disk(shared) {
                Ok(()) => {
                    shared.publish_ok(target);
                    Ok(())
                }
                Err(error) => {
                    shared.publish_err(target, Arc::new(error));
                    Err(())
                }
            }
        };
        // Checked after the flush: a flush the watchdog found overdue acknowledges nothing,
        // even if it finished in the end.
        let failed = self.check_health().and(applied);
        match (failed, flush) {
            (Ok(results), Ok(())) => {
                let mut results = results.into_iter();
                for pending in batch {
                    let answers = results.by_ref().take(pending.writes.len()).collect();
                    // The caller may have gone (its connection closed): nothing to do.
                    let _ = pending.reply.send(Ok(answers));
                }
            }
            _ => {
                // Not durable, so not to be reported; a refusal may rest on changes that
                // are not durable either.
                let reason = self.inner.health.reason().unwrap_or("").to_string();
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(StorageError::Failed(reason.clone())));
                }
            }
        }
    }

    /// Syncs new blob files, flushes sled's log and syncs it (for a directory-backed store),
    /// under the watchdog. A failure fails the store's health (and is returned).
    fn flush_to_disk(&self, _shared: &Shared) -> Result<(), StorageError> {
        self.check_health()?;
        let health = &self.inner.health;
        let _running = health.begin("flushing the store to disk");
        let flushed = (|| {
            #[cfg(test)]
            if _shared.fail_next_flush.swap(false, Ordering::SeqCst) {
                return Err(StorageError::Corrupt("disk on fire (test)".into()));
            }
            #[cfg(test)]
            if _shared.hang_next_flush.swap(false, Ordering::SeqCst) {
                std::thread::sleep(TEST_HANG);
            }
            if let Some(disk) = &self.inner.disk {
                disk.sync_blobs()?;
            }
            self.inner.db.flush()?;
            if let Some(disk) = &self.inner.disk {
                disk.sync_log()?;
            }
            Ok(())
        })();
        if let Err(error) = &flushed {
            health.fail(format!("flushing the store to disk failed: {error}"));
        }
        flushed
    }

    /// Hands the writer work (`add` edits its queue), starting it on first use.
    fn to_writer(&self, add: impl FnOnce(&mut Queue)) -> Result<(), StorageError> {
        self.check_health()?;
        let shared = &self.inner.commit.shared;
        let mut queue = shared.lock();
        if queue.closed {
            return Err(StorageError::Io(std::io::Error::other(
                "the store's writer has stopped",
            )));
        }
        add(&mut queue);
        if !queue.started {
            spawn_writer(shared, &Arc::downgrade(&self.inner), &self.inner.health)?;
            queue.started = true;
        }
        // Read under the lock the writer sets it under: a writer not waiting yet will find
        // this work when it next looks at the queue, before it waits.
        let wake = queue.writer_waiting;
        drop(queue);
        if wake {
            shared.work.notify_one();
        }
        Ok(())
    }

    /// Applies `write`, batched with concurrent writes in one transaction, and returns its
    /// result once the change is durable (survives power loss, for a directory-backed store).
    ///
    /// A refusal (a full cluster, a name taken, ...) is [`StoreError::Refused`]. If the
    /// round's transaction or flush fails, or the storage has failed before or while the
    /// write waits, it gets [`StorageError::Failed`] at once.
    pub async fn write(&self, write: Write) -> Result<Written, StoreError> {
        match self.write_batch(vec![write]).await?.pop() {
            Some(answer) => Ok(answer?),
            None => Err(StoreError::Storage(StorageError::Io(
                std::io::Error::other("the store's writer answered no write"),
            ))),
        }
    }

    /// Applies `writes` in order in one transaction (of the writer's next round, with
    /// concurrent writes), and answers each once all are durable; watchers of every cluster
    /// joined are woken then. The sled backend's [`SessionStore::apply`](crate::store::SessionStore::apply).
    pub async fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<WriteAnswer>, StorageError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, result) = oneshot::channel();
        self.to_writer(|queue| queue.writes.push(Pending { writes, reply }))?;
        let answers = tokio::select! {
            biased;
            result = result => match result {
                Ok(result) => result,
                Err(_) => Err(self.check_health().err().unwrap_or_else(|| {
                    StorageError::Io(std::io::Error::other(
                        "the store's writer stopped before answering",
                    ))
                })),
            },
            () = self.inner.health.failed() => Err(self.failed()),
        }?;
        self.inner.events.notify_joins(&answers);
        Ok(answers)
    }

    /// The [`StorageError::Failed`] of a store whose storage has failed.
    fn failed(&self) -> StorageError {
        StorageError::Failed(self.inner.health.reason().unwrap_or("").to_string())
    }

    /// Returns once every change committed before the call is on disk (and survives power
    /// loss, for a directory-backed store). Concurrent callers share flushes; if nothing was
    /// written since the last completed flush it returns at once.
    ///
    /// If the flush covering this call's changes fails, or the storage has failed before or
    /// while the call waits, every caller waiting gets [`StorageError::Failed`].
    pub async fn durable(&self) -> Result<(), StorageError> {
        self.check_health()?;
        let shared = &self.inner.commit.shared;
        let target = shared.written.load(Ordering::SeqCst);
        let mut rx = shared.progress.subscribe();
        let seen_failures = {
            let p = rx.borrow_and_update();
            if p.flushed >= target {
                return Ok(());
            }
            p.failures
        };
        self.to_writer(|queue| queue.flush_wanted = true)?;
        let flushed = tokio::select! {
            p = rx.wait_for(|p| {
                p.flushed >= target
                    || (p.failures > seen_failures
                        && p.last_failure.as_ref().is_some_and(|(t, _)| *t >= target))
            }) => p
                .map(|p| p.flushed >= target)
                .map_err(|_| StorageError::Io(std::io::Error::other("the store's writer went away")))?,
            () = self.inner.health.failed() => false,
        };
        if flushed {
            Ok(())
        } else {
            Err(self.failed())
        }
    }

    /// Flushes every committed change to disk now, blocking the calling thread (for shutdown
    /// and command-line use).
    pub fn flush_blocking(&self) -> Result<(), StorageError> {
        let shared = &self.inner.commit.shared;
        let target = shared.written.load(Ordering::SeqCst);
        self.flush_to_disk(shared)?;
        shared.publish_ok(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, node};
    use super::*;
    use crate::store::{ClusterRef, NewCluster, Refusal};

    use crate::test_support::runtime;

    fn flushed_everything(store: &Store) -> bool {
        let shared = &store.inner.commit.shared;
        shared.progress.borrow().flushed >= shared.written.load(Ordering::SeqCst)
    }

    fn join(cluster: &ClusterRecord, node: &crate::store::NodeRecord) -> Write {
        Write::Join {
            token: None,
            cluster: ClusterRef::Id(cluster.id.clone()),
            node: node.id.clone(),
            now_ms: 1,
        }
    }

    use crate::store::ClusterRecord;

    #[test]
    fn durable_with_nothing_written_returns_at_once_without_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            store.durable().await.unwrap();
            store.durable().await.unwrap();
        });
        assert!(!store.inner.commit.shared.lock().started);
    }

    #[test]
    fn concurrent_writes_are_batched_durable_and_never_overfill() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = cluster(&store, "big", 60, 1);
        let nodes: Vec<_> = (0..64).map(|i| node(&store, &format!("n{i}"), 1)).collect();
        let outcomes = runtime().block_on(async {
            let tasks: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let store = store.clone();
                    let write = join(&c, n);
                    tokio::spawn(async move { store.write(write).await })
                })
                .collect();
            let mut outcomes = Vec::new();
            for t in tasks {
                outcomes.push(t.await.unwrap());
            }
            outcomes
        });
        let mut slots: Vec<u32> = outcomes
            .iter()
            .filter_map(|o| match o {
                Ok(Written::Joined(j)) => Some(j.slot),
                _ => None,
            })
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..60).collect::<Vec<_>>());
        let full = outcomes
            .iter()
            .filter(|o| matches!(o, Err(StoreError::Refused(Refusal::ClusterFull { .. }))))
            .count();
        assert_eq!(full, 4);
        // Every answer came after its change was on disk.
        assert!(flushed_everything(&store));
    }

    #[test]
    fn durable_on_temporary_store_and_flush_blocking() {
        let store = Store::temporary().unwrap();
        node(&store, "a", 0);
        runtime().block_on(async { store.durable().await.unwrap() });
        node(&store, "b", 0);
        store.flush_blocking().unwrap();
        let shared = &store.inner.commit.shared;
        assert_eq!(
            shared.progress.borrow().flushed,
            shared.written.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn the_writer_needs_no_runtime_features() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // No I/O or timer driver, no blocking pool: the writer is a plain thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let n = rt.block_on(async {
            let new = crate::store::sled::tests::new_node("a", 1);
            store
                .write(Write::RegisterNode {
                    node: new,
                    now_ms: 1,
                })
                .await
        });
        assert!(matches!(n, Ok(Written::Node(_))));
        node(&store, "b", 0);
        rt.block_on(async { store.durable().await.unwrap() });
        assert!(flushed_everything(&store));
    }

    #[test]
    fn a_failed_flush_fails_the_store_and_nothing_is_acknowledged_after_it() {
        let store = Store::temporary().unwrap();
        let c = cluster(&store, "c", 8, 1);
        let nodes: Vec<_> = (0..3).map(|i| node(&store, &format!("n{i}"), 1)).collect();
        store
            .inner
            .commit
            .shared
            .fail_next_flush
            .store(true, Ordering::SeqCst);
        runtime().block_on(async {
            let e = store.write(join(&c, &nodes[0])).await.unwrap_err();
            assert!(
                matches!(e, StoreError::Storage(StorageError::Failed(_))),
                "{e}"
            );
            assert!(e.to_string().contains("disk on fire"), "{e}");
            // Never retried: the next write, a durable() and a read are refused too, although
            // the next flush would succeed.
            let e = store.write(join(&c, &nodes[1])).await.unwrap_err();
            assert!(
                matches!(e, StoreError::Storage(StorageError::Failed(_))),
                "{e}"
            );
            assert!(matches!(
                store.durable().await,
                Err(StorageError::Failed(_))
            ));
        });
        assert!(matches!(
            store.cluster(&ClusterRef::Id(c.id.clone())),
            Err(StorageError::Failed(_))
        ));
        assert!(store.health().is_failed());
    }

    #[test]
    fn a_write_waiting_on_a_hung_flush_is_refused_when_the_watchdog_fires() {
        let store = Store::temporary().unwrap();
        let c = cluster(&store, "c", 8, 1);
        let n = node(&store, "n", 1);
        let health = store.health().clone();
        let watchdog = std::thread::spawn(move || {
            while !health.check_running(Duration::from_millis(200)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        store
            .inner
            .commit
            .shared
            .hang_next_flush
            .store(true, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let e = runtime().block_on(store.write(join(&c, &n))).unwrap_err();
        // Answered when the watchdog fired, not when the flush came back.
        assert!(started.elapsed() < TEST_HANG, "{:?}", started.elapsed());
        assert!(
            matches!(e, StoreError::Storage(StorageError::Failed(_))),
            "{e}"
        );
        assert!(e.to_string().contains("did not finish within"), "{e}");
        watchdog.join().unwrap();
        // The flush comes back in the end: its round still acknowledges nothing.
        std::thread::sleep(TEST_HANG);
        let e = runtime().block_on(store.durable()).unwrap_err();
        assert!(matches!(e, StorageError::Failed(_)), "{e}");
    }

    #[test]
    fn a_writer_that_panics_fails_the_store() {
        let store = Store::temporary().unwrap();
        let c = cluster(&store, "c", 8, 1);
        let nodes: Vec<_> = (0..2).map(|i| node(&store, &format!("n{i}"), 1)).collect();
        let shared = &store.inner.commit.shared;
        runtime().block_on(async {
            // Start the writer, then make its next round panic.
            store.durable().await.unwrap();
            shared.panic_next_round.store(true, Ordering::SeqCst);
            let e = store.write(join(&c, &nodes[0])).await.unwrap_err();
            assert!(e.to_string().contains("writer panicked"), "{e}");
            // What the round left on disk is unknown: nothing more is acknowledged.
            let e = store.write(join(&c, &nodes[1])).await.unwrap_err();
            assert!(
                matches!(e, StoreError::Storage(StorageError::Failed(_))),
                "{e}"
            );
        });
    }

    #[test]
    fn dropping_the_store_stops_the_writer_and_releases_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = runtime().block_on(async {
            store
                .write(Write::CreateCluster {
                    cluster: NewCluster {
                        admission: Default::default(),
                        name: "kept".into(),
                        attrs: 0,
                        max_size: 3,
                        endpoint_count: 1,
                    },
                    now_ms: 1,
                })
                .await
                .unwrap()
        });
        assert!(store.inner.commit.shared.lock().started);
        drop(store);
        // The writer held the store only weakly: the directory is free again.
        let store = Store::reopen(dir.path()).unwrap();
        let Written::Cluster(c, true) = c else {
            panic!("not created: {c:?}")
        };
        assert!(store.cluster(&ClusterRef::Id(c.id)).unwrap().is_some());
    }
}
