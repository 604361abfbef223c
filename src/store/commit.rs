//! Group commit: making committed changes durable, with concurrent callers sharing flushes.
//!
//! This module owns [`Store::durable`] and [`Store::flush_blocking`] and the state behind them.
//! Every mutating store method bumps a `written` sequence number after its transaction commits.
//! `durable()` notes that number as its target and waits until a flush that started after it
//! was read has finished. At most one flusher runs (on a blocking thread); it loops: read
//! `written`, sync any new blob files, `db.flush()`, fdatasync the data file `DIR/db` (see
//! `disk` for why both), publish the flushed number through a
//! `tokio::sync::watch` channel, and stop once nothing new was written meanwhile.
//!
//! The syncing matters: sled 0.34.7's flush uses `sync_file_range`, which flushes neither
//! the disk's write cache nor the file-size metadata, and never syncs blob files, so without
//! it an acknowledged change can be lost on power failure. sled's `flush_async` is never used: concurrent `flush_async`
//! calls deadlock in sled 0.34.7 (sled#1308).
//!
//! Publishing a result and deciding whether the flusher stops happen under one mutex, and a
//! waiter checks the published state and starts a flusher if none runs under the same mutex,
//! so no waiter is ever left without a flusher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Store, StoreError};

/// A flush starts once no commit has landed for this long (see `GroupCommit::gather`).
const GATHER_QUIET: Duration = Duration::from_micros(100);
/// ...or once it has waited this long for a burst of commits to end.
const GATHER_MAX: Duration = Duration::from_millis(2);

/// How long the flusher pauses after a failed flush before retrying for newer writes.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the flusher has achieved so far.
#[derive(Debug, Default)]
struct Progress {
    /// Every change with a sequence number up to this one is on disk.
    flushed: u64,
    /// How many flush rounds have failed so far.
    failures: u64,
    /// The target of the last failed round, and its error.
    last_failure: Option<(u64, Arc<StoreError>)>,
}

/// The group-commit state of one store.
#[derive(Debug)]
pub(super) struct GroupCommit {
    /// Sequence number of committed changes; bumped after every committed transaction.
    written: AtomicU64,
    /// Whether a flusher is running.
    running: Mutex<bool>,
    /// How many commits the last flush covered.
    last_batch: AtomicU64,
    /// The flusher's progress, for waiters.
    progress: watch::Sender<Progress>,
}

impl GroupCommit {
    /// A fresh state: nothing written, nothing flushed.
    pub(super) fn new() -> GroupCommit {
        GroupCommit {
            written: AtomicU64::new(0),
            running: Mutex::new(false),
            last_batch: AtomicU64::new(0),
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Records that a transaction has committed.
    pub(super) fn bump(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Lets a burst of commits land before a flush starts. sled's `flush()` holds sled's
    /// concurrency-control lock in read mode while it writes, and every transaction needs it
    /// in write mode, so no join can commit while a flush runs: a flush started on the first
    /// commit of a burst would cover that one commit and stall the rest of the burst behind
    /// it. Waiting until commits stop arriving for [`GATHER_QUIET`] (at most
    /// [`GATHER_MAX`]) makes one flush cover the burst. A lone commit pays one quiet period.
    /// Gathering only pays when commits come concurrently, so it is skipped while the last
    /// flush covered a single commit (a lone client pays nothing).
    fn gather(&self) {
        if self.last_batch.load(Ordering::Relaxed) <= 1 {
            return;
        }
        let started = Instant::now();
        let mut seen = self.written.load(Ordering::SeqCst);
        loop {
            std::thread::sleep(GATHER_QUIET);
            let now = self.written.load(Ordering::SeqCst);
            if now == seen || started.elapsed() >= GATHER_MAX {
                return;
            }
            seen = now;
        }
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.running
            .lock()
            .expect("group-commit mutex poisoned: a flusher panicked while publishing")
    }

    /// Publishes a successful flush of everything up to `target`.
    fn publish_ok(&self, target: u64) {
        self.progress.send_modify(|p| {
            self.last_batch
                .store(target.saturating_sub(p.flushed), Ordering::Relaxed);
            p.flushed = p.flushed.max(target);
        });
    }

    /// Publishes a failed flush round whose target was `target`.
    fn publish_err(&self, target: u64, error: StoreError) {
        self.progress.send_modify(|p| {
            p.failures += 1;
            p.last_failure = Some((target, Arc::new(error)));
        });
    }
}

/// Owns the flusher's claim to be running. If the flusher ends without clearing `running`
/// itself (it panicked, or its blocking task was dropped unrun because the runtime shut
/// down), dropping the guard clears it and fails the waiters, so none waits forever.
struct FlusherGuard {
    store: Store,
    finished: bool,
}

impl Drop for FlusherGuard {
    fn drop(&mut self) {
        if !self.finished {
            let gc = &self.store.inner.commit;
            let mut running = gc.running.lock().unwrap_or_else(|p| p.into_inner());
            tracing::error!("the store flusher stopped unexpectedly");
            gc.publish_err(
                u64::MAX,
                StoreError::Io(std::io::Error::other(
                    "the store flusher stopped unexpectedly",
                )),
            );
            *running = false;
        }
    }
}

impl Store {
    /// Syncs new blob files, flushes sled's log and syncs it (for a directory-backed store).
    fn flush_to_disk(&self) -> Result<(), StoreError> {
        if let Some(disk) = &self.inner.disk {
            disk.sync_blobs()?;
        }
        self.inner.db.flush()?;
        if let Some(disk) = &self.inner.disk {
            disk.sync_log()?;
        }
        Ok(())
    }

    /// The flusher loop; runs on a blocking thread.
    fn run_flusher(mut guard: FlusherGuard) {
        let store = guard.store.clone();
        let gc = &store.inner.commit;
        loop {
            gc.gather();
            let target = gc.written.load(Ordering::SeqCst);
            let result = store.flush_to_disk();
            let failed = result.is_err();
            {
                let mut running = gc.lock();
                match result {
                    Ok(()) => gc.publish_ok(target),
                    Err(e) => {
                        tracing::error!(error = %e, "flushing the store to disk failed");
                        gc.publish_err(target, e);
                    }
                }
                if gc.written.load(Ordering::SeqCst) == target {
                    *running = false;
                    guard.finished = true;
                    return;
                }
            }
            if failed {
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }

    /// Returns once every change committed before the call is on disk (and survives power
    /// loss, for a directory-backed store). Concurrent callers share flushes; if nothing was
    /// written since the last completed flush it returns at once.
    ///
    /// If the flush covering this call's changes fails, every caller waiting on it gets
    /// [`StoreError::FlushFailed`].
    pub async fn durable(&self) -> Result<(), StoreError> {
        let gc = &self.inner.commit;
        let target = gc.written.load(Ordering::SeqCst);
        let mut rx = gc.progress.subscribe();
        if rx.borrow().flushed >= target {
            return Ok(());
        }
        let (seen_failures, start) = {
            let mut running = gc.lock();
            let seen = {
                let p = rx.borrow_and_update();
                if p.flushed >= target {
                    return Ok(());
                }
                p.failures
            };
            let start = !*running;
            *running = true;
            (seen, start)
        };
        if start {
            // Outside the mutex: a flusher that fails to start takes it to release waiters.
            self.start_flusher();
        }
        let p = rx
            .wait_for(|p| {
                p.flushed >= target
                    || (p.failures > seen_failures
                        && p.last_failure.as_ref().is_some_and(|(t, _)| *t >= target))
            })
            .await
            .map_err(|_| StoreError::Io(std::io::Error::other("the store's flusher went away")))?;
        if p.flushed >= target {
            return Ok(());
        }
        match &p.last_failure {
            Some((_, e)) => Err(StoreError::FlushFailed(Arc::clone(e))),
            None => Ok(()),
        }
    }

    /// Starts the flusher on a blocking thread. The caller has set `running` and must not
    /// hold the mutex.
    fn start_flusher(&self) {
        let guard = FlusherGuard {
            store: self.clone(),
            finished: false,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || Store::run_flusher(guard));
            }
            Err(_) => {
                // Not on a tokio runtime: use a plain thread. If it cannot be started, the
                // dropped guard releases the waiters with an error.
                let spawned = std::thread::Builder::new()
                    .name("xlreg-store-flush".into())
                    .spawn(move || Store::run_flusher(guard));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "could not start the store flusher");
                }
            }
        }
    }

    /// Flushes every committed change to disk now, blocking the calling thread (for shutdown
    /// and command-line use).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let gc = &self.inner.commit;
        let target = gc.written.load(Ordering::SeqCst);
        self.flush_to_disk()?;
        let _running = gc.lock();
        gc.publish_ok(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, node};
    use super::*;
    use crate::store::ClusterRef;

    #[test]
    fn durable_with_nothing_written_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // No runtime features (no blocking pool use, no timers): it must not need a flusher.
        rt.block_on(async {
            let start = std::time::Instant::now();
            store.durable().await.unwrap();
            store.durable().await.unwrap();
            assert!(start.elapsed() < Duration::from_secs(1));
        });
        assert!(!*store.inner.commit.lock());
    }

    #[test]
    fn concurrent_joins_then_durable_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = cluster(&store, "big", 64, 1);
        let nodes: Vec<_> = (0..64).map(|i| node(&store, &format!("n{i}"), 1)).collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for n in nodes {
                let store = store.clone();
                let r = ClusterRef::Id(c.id.clone());
                tasks.push(tokio::spawn(async move {
                    let out = store.join(&r, &n, 1)?;
                    store.durable().await?;
                    Ok::<_, StoreError>(out.slot)
                }));
            }
            let mut slots = Vec::new();
            for t in tasks {
                slots.push(t.await.unwrap().unwrap());
            }
            slots.sort_unstable();
            assert_eq!(slots, (0..64).collect::<Vec<_>>());
            // Everything is flushed now; another call returns at once.
            store.durable().await.unwrap();
        });
        let gc = &store.inner.commit;
        assert!(gc.progress.borrow().flushed >= gc.written.load(Ordering::SeqCst));
    }

    #[test]
    fn durable_on_temporary_store_and_flush_blocking() {
        let store = Store::temporary().unwrap();
        node(&store, "a", 0);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async { store.durable().await.unwrap() });
        node(&store, "b", 0);
        store.flush_blocking().unwrap();
        let gc = &store.inner.commit;
        assert_eq!(
            gc.progress.borrow().flushed,
            gc.written.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn flusher_runs_without_a_tokio_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        node(&store, "a", 0);
        let gc = &store.inner.commit;
        *gc.lock() = true;
        store.start_flusher();
        let start = std::time::Instant::now();
        while gc.progress.borrow().flushed < gc.written.load(Ordering::SeqCst) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "flusher never finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_failed_round_reaches_its_waiters() {
        let store = Store::temporary().unwrap();
        node(&store, "a", 0);
        let gc = &store.inner.commit;
        // Pretend a flusher is running, so the waiters do not start a real one.
        *gc.lock() = true;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let s = store.clone();
                    tokio::spawn(async move { s.durable().await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            {
                let mut running = gc.lock();
                let target = gc.written.load(Ordering::SeqCst);
                gc.publish_err(target, StoreError::Corrupt("disk on fire".into()));
                *running = false;
            }
            for w in waiters {
                let e = w.await.unwrap().unwrap_err();
                assert!(matches!(e, StoreError::FlushFailed(_)), "{e}");
                assert!(e.to_string().contains("disk on fire"), "{e}");
            }
            // A later call retries with a real flusher and succeeds.
            store.durable().await.unwrap();
        });
    }

    #[test]
    fn a_flusher_that_never_ran_releases_its_waiters() {
        let store = Store::temporary().unwrap();
        node(&store, "a", 0);
        let gc = &store.inner.commit;
        *gc.lock() = true;
        drop(FlusherGuard {
            store: store.clone(),
            finished: false,
        });
        assert!(!*gc.lock());
        let p = gc.progress.borrow();
        assert_eq!(p.failures, 1);
        assert!(matches!(&p.last_failure, Some((u64::MAX, _))));
    }
}
