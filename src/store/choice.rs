//! Choosing and opening a backend: the one place outside the backends themselves that names
//! a concrete one.
//!
//! This module owns [`BackendChoice`]. The daemon opens its store with
//! [`BackendChoice::open`] and the admin commands theirs with
//! [`BackendChoice::open_existing`] and [`BackendChoice::create_from_snapshot`]; all of them
//! get an `Arc<dyn Backend>` and from then on speak only the ports. What is particular to a
//! backend (sled's data file, its directory lock, its panics while opening, writing a
//! snapshot's raw trees) stays behind these functions and the backend's own module.

use std::path::Path;
use std::sync::Arc;

use super::etcd::{EtcdConfig, EtcdStore};
use super::{AdminStore, Backend, MemoryStore, Snapshot, StorageError, Store};

/// The file every sled data directory holds once a registry has used it.
const SLED_DATA_FILE: &str = "db";

/// Which backend keeps a registry's records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// A sled database in the registry's data directory: durable (an acknowledged change
    /// survives power loss), what `xlreg serve` runs on unless told otherwise, and what the
    /// admin commands open when the registry is stopped.
    #[default]
    Sled,
    /// Maps in memory (`xlreg serve --ephemeral`, tests): nothing survives the process. The
    /// daemon then keeps the registry's keys in memory too and opens no control socket.
    Memory,
    /// An etcd cluster (`xlreg serve --etcd`): the records live under a key prefix in etcd,
    /// and several registry servers may share them (`store/etcd/`). The data directory then
    /// holds only local files (keys, regCred.dat, the control socket).
    Etcd(EtcdConfig),
}

impl BackendChoice {
    /// True if nothing of the registry survives the process: its keys are then not written
    /// into the data directory, and there is no control socket.
    pub fn is_ephemeral(&self) -> bool {
        match self {
            BackendChoice::Sled | BackendChoice::Etcd(_) => false,
            BackendChoice::Memory => true,
        }
    }

    /// Opens the store of a registry whose data directory is `data_dir`, for the daemon,
    /// creating it on the first start.
    ///
    /// Sled: the store in `data_dir` (created 0700; [`StorageError::Locked`] while another
    /// process holds it, [`StorageError::SchemaTooNew`] if a newer xlreg wrote it), and from
    /// the first call on, a panic inside sled is one ERROR log line instead of a backtrace
    /// (the failure itself comes back as an error, or fails the store).
    /// Memory: an empty store; `data_dir` is not touched.
    /// Etcd: the registry under the configured prefix (its schema version written on the
    /// first start); fails if etcd does not answer. `data_dir` is created (0700) for the
    /// daemon's local files.
    pub fn open(&self, data_dir: &Path) -> Result<Arc<dyn Backend>, StorageError> {
        match self {
            BackendChoice::Sled => {
                super::sled::log_panics();
                Ok(Arc::new(Store::open(data_dir)?))
            }
            BackendChoice::Memory => Ok(Arc::new(MemoryStore::new())),
            BackendChoice::Etcd(config) => {
                // The data directory holds the daemon's local files (keys, regCred.dat, the
                // control socket), private as with sled.
                super::sled::disk::create_private_dir(data_dir)?;
                Ok(Arc::new(EtcdStore::open(config)?.with_data_dir(data_dir)))
            }
        }
    }

    /// True if `data_dir` holds a store of this backend, that is, a registry has run there.
    /// A memory store is never found in a directory; an etcd store is never in one, but
    /// always "held" (it is opened to find out what it holds).
    pub fn holds_store(&self, data_dir: &Path) -> bool {
        match self {
            BackendChoice::Sled => data_dir.join(SLED_DATA_FILE).is_file(),
            BackendChoice::Memory => false,
            BackendChoice::Etcd(_) => true,
        }
    }

    /// Opens the store of a stopped registry in `data_dir` for an admin command, which
    /// checked [`holds_store`](BackendChoice::holds_store) first. As
    /// [`open`](BackendChoice::open), but it leaves the process's panic hook alone (the
    /// command reports the error itself). [`StorageError::Locked`] says a daemon holds the
    /// directory.
    pub fn open_existing(&self, data_dir: &Path) -> Result<Arc<dyn Backend>, StorageError> {
        match self {
            BackendChoice::Sled => Ok(Arc::new(Store::open(data_dir)?)),
            BackendChoice::Memory => Ok(Arc::new(MemoryStore::new())),
            BackendChoice::Etcd(config) => {
                Ok(Arc::new(EtcdStore::open(config)?.with_data_dir(data_dir)))
            }
        }
    }

    /// Creates the store of a new registry in `data_dir` from `snapshot` (`admin restore`,
    /// `admin import`), durable when it returns. `data_dir` must not hold a store with data
    /// yet ([`StorageError::NotEmpty`]); a snapshot from a newer schema is refused before
    /// anything is written ([`StorageError::SchemaTooNew`]).
    pub fn create_from_snapshot(
        &self,
        data_dir: &Path,
        snapshot: &Snapshot,
    ) -> Result<Arc<dyn Backend>, StorageError> {
        match self {
            BackendChoice::Sled => Ok(Arc::new(Store::create_from_snapshot(data_dir, snapshot)?)),
            BackendChoice::Memory => {
                let store = MemoryStore::new();
                store.restore(snapshot)?;
                Ok(Arc::new(store))
            }
            BackendChoice::Etcd(config) => {
                let store = EtcdStore::open(config)?.with_data_dir(data_dir);
                store.restore(snapshot)?;
                Ok(Arc::new(store))
            }
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendChoice::Sled => f.write_str("sled"),
            BackendChoice::Memory => f.write_str("memory"),
            BackendChoice::Etcd(config) => {
                write!(
                    f,
                    "etcd {} under {}",
                    config.endpoints.join(","),
                    config.prefix
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RegistryMeta, Write};
    use crate::store::conformance::new_node;

    fn meta() -> RegistryMeta {
        RegistryMeta {
            name: "reg".into(),
            id: crate::id::Id::from_bytes(&[7u8; 32]).unwrap(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn a_sled_store_is_found_and_reopened_in_its_data_directory() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let choice = BackendChoice::Sled;
        assert!(!choice.holds_store(&dir));
        {
            let store = choice.open(&dir).unwrap();
            assert_eq!(store.data_dir(), Some(dir.as_path()));
            store.set_registry_meta(&meta()).unwrap();
            store.flush_blocking().unwrap();
            assert!(choice.holds_store(&dir));
            // The open store holds the directory: an admin command is told so.
            let held = choice.open_existing(&dir).unwrap_err();
            assert!(matches!(held, StorageError::Locked { .. }), "{held}");
        }
        // sled's threads may hold the lock for a moment after the drop (at most 10 s).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let reopened = loop {
            match choice.open_existing(&dir) {
                Err(StorageError::Locked { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(reopened.registry_meta().unwrap(), Some(meta()));
    }

    #[test]
    fn a_memory_store_touches_no_directory_and_keeps_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let choice = BackendChoice::Memory;
        assert!(choice.is_ephemeral() && !BackendChoice::Sled.is_ephemeral());
        let store = choice.open(&dir).unwrap();
        assert_eq!(store.data_dir(), None);
        store
            .apply_now(&Write::RegisterNode {
                node: new_node("a", 1),
                now_ms: 1,
            })
            .unwrap();
        assert_eq!(store.counts().unwrap().nodes, 1);
        assert!(!dir.exists());
        assert!(!choice.holds_store(&dir));
        // A second open is a new, empty store.
        assert_eq!(choice.open(&dir).unwrap().counts().unwrap().nodes, 0);
    }

    #[test]
    fn both_backends_are_created_from_a_snapshot_record_for_record() {
        let source = MemoryStore::new();
        source.set_registry_meta(&meta()).unwrap();
        source
            .apply_now(&Write::RegisterNode {
                node: new_node("a", 1),
                now_ms: 1,
            })
            .unwrap();
        let snapshot = source.snapshot().unwrap();
        let parent = tempfile::tempdir().unwrap();
        for choice in [BackendChoice::Sled, BackendChoice::Memory] {
            let dir = parent.path().join(choice.to_string());
            let store = choice.create_from_snapshot(&dir, &snapshot).unwrap();
            assert_eq!(store.snapshot().unwrap(), snapshot, "{choice}");
            assert_eq!(store.snapshot().unwrap().verify(), Vec::<String>::new());
        }
    }
}
