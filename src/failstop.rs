//! Fail-stop storage: the registry's storage health, and what happens once it fails.
//!
//! This module owns [`Health`], the one shared, cheap-to-read state that says whether the
//! store may still be trusted (every backend holds one: `crate::store::Backend::health`),
//! and [`supervise`], the daemon's watchdog thread. Nothing here knows which backend runs.
//!
//! # Why fail-stop
//!
//! On Linux a failed `fsync`/`fdatasync`/`sync_file_range` may drop the dirty pages it could
//! not write and report success on the next call ("fsyncgate"): a later successful sync
//! proves nothing about earlier writes. sled, once one of its I/O threads has failed,
//! refuses every later operation or blocks in `flush`. So after the first failed write,
//! flush or sync nothing the process holds in memory can be trusted to match the disk, and
//! retrying can only turn an unknown state into a false acknowledgement. The backend (the
//! sled store's writer) therefore calls [`Health::fail`] at the first failure; from then on:
//!
//! - the store answers every read and write with `StorageError::Failed` ([`Health::check`];
//!   clients see Error Unavailable), including the requests already waiting for a round
//!   (never left hanging);
//! - `/health` answers 503 with the reason;
//! - exactly one ERROR line is logged (by [`Health::fail`]), not one per request;
//! - [`supervise`] exits the process with [`EXIT_STORAGE_FAILED`] after a short grace
//!   (for the Unavailable replies to go out), so a supervisor restarts it, and the restarted
//!   registry recovers from what is durable.
//!
//! A networked backend (etcd) has a second, temporary state besides: *unavailable*
//! ([`Health::set_unavailable`]) while no quorum answers. Then `/health` answers 503 and
//! requests are answered Unavailable by the backend itself, but nothing is failed for good:
//! once the store answers again ([`Health::set_available`]) the registry serves again.
//! Nothing in memory can be stale there (the truth is in etcd), so waiting is safe.
//!
//! A store operation that does not finish within the store timeout (a hung disk, a sled
//! flush blocked forever) is treated the same way: [`Health::begin`] marks an operation as
//! running, and [`supervise`]'s watchdog fails the store when one runs too long.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::model::StorageError;

/// The exit code of a registry stopped because its storage failed (sysexits' `EX_IOERR`).
/// Any non-zero code makes systemd's `Restart=on-failure` restart the daemon.
pub const EXIT_STORAGE_FAILED: u8 = 74;

/// The default of `serve --store-timeout`: how long one store operation (a batch's
/// transaction, a flush and its syncs) may run before the storage is declared failed.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failed registry keeps running before it exits, so that the requests waiting
/// on the store get their Unavailable replies and `/health` can be read.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How often the watchdog looks at the running store operation.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// Whether the registry's storage can still be trusted. Cloning is cheap; clones share the
/// state. Once failed, it stays failed for the life of the process.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    /// Set once, at the first failure; read on every store operation.
    failed: AtomicBool,
    /// Why the storage failed (set before `failed`).
    reason: OnceLock<String>,
    /// When it failed.
    failed_at: OnceLock<Instant>,
    /// Wakes the tasks waiting for a failure ([`Health::failed`]).
    notify: watch::Sender<bool>,
    /// The store operation running now, if any: what it is and since when.
    running: Mutex<Option<(&'static str, Instant)>>,
    /// Why the store cannot be reached now, while it cannot (temporary; see the module doc).
    unavailable: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    /// A healthy state.
    pub fn new() -> Health {
        Health {
            inner: Arc::new(HealthInner {
                failed: AtomicBool::new(false),
                reason: OnceLock::new(),
                failed_at: OnceLock::new(),
                notify: watch::Sender::new(false),
                running: Mutex::new(None),
                unavailable: Mutex::new(None),
            }),
        }
    }

    /// Declares the storage failed because of `reason`. The first call logs the one ERROR
    /// line and wakes every waiter; later calls change nothing. Returns true for the first.
    pub fn fail(&self, reason: impl std::fmt::Display) -> bool {
        let reason = reason.to_string();
        let mut first = false;
        self.inner.reason.get_or_init(|| {
            first = true;
            reason.clone()
        });
        if !first {
            return false;
        }
        let _ = self.inner.failed_at.set(Instant::now());
        self.inner.failed.store(true, Ordering::SeqCst);
        self.inner.notify.send_replace(true);
        tracing::error!(
            reason = %reason,
            "storage failed: the registry acknowledges nothing more and exits (code {EXIT_STORAGE_FAILED}) for a restart"
        );
        true
    }

    /// True once the storage has failed.
    pub fn is_failed(&self) -> bool {
        self.inner.failed.load(Ordering::SeqCst)
    }

    /// Why the storage failed, once it has.
    pub fn reason(&self) -> Option<&str> {
        if self.is_failed() {
            self.inner.reason.get().map(String::as_str)
        } else {
            None
        }
    }

    /// [`StorageError::Failed`] with the reason once the storage has failed: what a backend
    /// answers every read and write with from then on.
    pub fn check(&self) -> Result<(), StorageError> {
        match self.reason() {
            Some(reason) => Err(StorageError::Failed(reason.to_string())),
            None => Ok(()),
        }
    }

    /// Completes once the storage has failed (at once if it already has).
    pub async fn failed(&self) {
        let mut rx = self.inner.notify.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|failed| *failed).await;
    }

    /// Records that the store cannot be reached now, and why (a networked backend, while no
    /// quorum answers). Temporary: [`Health::set_available`] ends it. Logs one WARN line
    /// when the state begins, not one per failed request.
    pub fn set_unavailable(&self, reason: impl std::fmt::Display) {
        let mut slot = self.unavailable_slot();
        if slot.is_none() {
            tracing::warn!(reason = %reason, "storage unavailable: answering Unavailable until it is back");
        }
        *slot = Some(reason.to_string());
    }

    /// Records that the store answers again.
    pub fn set_available(&self) {
        if self.unavailable_slot().take().is_some() {
            tracing::info!("storage available again");
        }
    }

    /// Why the store cannot be reached now, while it cannot.
    pub fn unavailable(&self) -> Option<String> {
        self.unavailable_slot().clone()
    }

    fn unavailable_slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Only plain assignments happen under this lock: a poisoned one is still consistent.
        self.inner
            .unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a store operation `what` as running until the returned guard is dropped; the
    /// watchdog of [`supervise`] fails the storage if it runs longer than the store timeout.
    /// One operation at a time (the store writer's): a second `begin` replaces the first.
    pub fn begin(&self, what: &'static str) -> Running<'_> {
        *self.running() = Some((what, Instant::now()));
        Running { health: self }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<(&'static str, Instant)>> {
        // Only plain assignments happen under this lock: a poisoned one is still consistent.
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the storage if the running operation started more than `timeout` ago.
    /// Returns true if it did.
    pub fn check_running(&self, timeout: Duration) -> bool {
        let overdue = self
            .running()
            .filter(|(_, since)| since.elapsed() > timeout)
            .map(|(what, _)| what);
        match overdue {
            Some(what) => self.fail(format!(
                "a store operation ({what}) did not finish within {} s",
                timeout.as_secs_f64()
            )),
            None => false,
        }
    }
}

/// A running store operation (see [`Health::begin`]).
#[derive(Debug)]
pub struct Running<'a> {
    health: &'a Health,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.health.running() = None;
    }
}

/// Starts the daemon's watchdog thread: it fails `health` when a store operation runs
/// longer than `store_timeout`, and once `health` has failed (for any reason) it waits
/// [`EXIT_GRACE`] and exits the process with [`EXIT_STORAGE_FAILED`]. It exits with
/// `std::process::exit`, without unwinding or flushing anything: the store must not be
/// touched again, and a thread blocked in a hung flush cannot be joined anyway.
pub fn supervise(health: Health, store_timeout: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("xlreg-watchdog".into())
        .spawn(move || loop {
            health.check_running(store_timeout);
            if let Some(at) = health.inner.failed_at.get() {
                if at.elapsed() >= EXIT_GRACE {
                    // The one ERROR line said why; this is the last word. Not eprintln!,
                    // which panics when stderr is on the full disk.
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr(),
                        "xlreg: storage failed; exiting with code {EXIT_STORAGE_FAILED}"
                    );
                    std::process::exit(i32::from(EXIT_STORAGE_FAILED));
                }
            }
            std::thread::sleep(WATCHDOG_TICK);
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_sticks_and_later_ones_change_nothing() {
        let health = Health::new();
        assert!(!health.is_failed());
        assert_eq!(health.reason(), None);
        assert!(health.fail("fdatasync: EIO"));
        assert!(!health.fail("something later"));
        assert!(health.is_failed());
        assert_eq!(health.reason(), Some("fdatasync: EIO"));
        // Clones share the state.
        assert_eq!(health.clone().reason(), Some("fdatasync: EIO"));
    }

    #[test]
    fn unavailability_is_temporary_and_never_a_failure() {
        let health = Health::new();
        health.set_unavailable("no etcd quorum");
        assert_eq!(health.unavailable().as_deref(), Some("no etcd quorum"));
        assert!(!health.is_failed());
        assert!(health.check().is_ok());
        health.set_available();
        assert_eq!(health.unavailable(), None);
    }

    #[test]
    fn an_operation_running_past_the_timeout_fails_the_storage() {
        let health = Health::new();
        {
            let _op = health.begin("flushing");
            assert!(!health.check_running(Duration::from_secs(60)));
        }
        // A finished operation is never overdue.
        assert!(!health.check_running(Duration::ZERO));
        let _op = health.begin("flushing");
        std::thread::sleep(Duration::from_millis(5));
        assert!(health.check_running(Duration::from_millis(1)));
        assert!(health.reason().unwrap().contains("flushing"));
    }

    #[test]
    fn waiters_wake_when_the_storage_fails() {
        let health = Health::new();
        let rt = crate::test_support::runtime();
        let waiter = {
            let health = health.clone();
            rt.spawn(async move { health.failed().await })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        health.fail("disk gone");
        rt.block_on(waiter).unwrap();
        // And a late waiter returns at once.
        rt.block_on(health.failed());
    }
}
