//! Making sled's files durable: which files a sled 0.34.7 database keeps, and syncing them.
//!
//! This module owns [`DiskFiles`] and the [`Durability`] choice. sled's `flush()` writes its
//! log with `sync_file_range`, which neither flushes the disk's write cache nor the file's size,
//! and sled never syncs some of its files at all. Read from sled 0.34.7's source
//! (`config.rs`, `pagecache/{iobuf,blob_io,snapshot}.rs`), a data directory holds:
//!
//! | file | written | synced by sled | synced here |
//! |------|---------|----------------|-------------|
//! | `db` | the log: every page, always | `sync_file_range` only | `fdatasync` after every flush |
//! | `blobs/<lsn>` | any page over ~128 KiB (a large cluster record, or a leaf of 16 big ones) | never, nor their directory entries | each new one, then `blobs/`, before every flush |
//! | `conf` | once, when the directory is created | never | at open |
//! | `snap.<lsn>` | at open (recovery), then renamed into place | the file, not the rename | the directory, at open |
//! | the directory and its parent | new entries at creation | never | at open |
//!
//! So after [`DiskFiles::sync_blobs`], sled's flush and [`DiskFiles::sync_log`], every
//! change committed before the first of them is on stable storage, provided the disk
//! honours cache flushes (FLUSH/FUA).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How far a change must get before [`Store::durable`](super::Store::durable) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// sled's flush, then `fdatasync` of the data file and of every new blob file: a
    /// change survives process death and power loss (on a disk that honours cache
    /// flushes). What the registry uses.
    #[default]
    PowerLoss,
    /// sled's flush only: a change survives the death of the process but may be lost
    /// with power. Only for measuring what the fdatasync costs.
    ProcessCrash,
}

/// The files of a directory-backed store that must be synced after sled's flush.
#[derive(Debug)]
pub(super) struct DiskFiles {
    durability: Durability,
    /// sled's log, `DIR/db`, kept open to fdatasync it.
    data_file: File,
    /// `DIR/blobs`.
    blob_dir: PathBuf,
    /// Blob files known to be synced (those present at the last sync).
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DiskFiles {
    /// Syncs what sled created or left unsynced while opening `dir` (its files, their
    /// directory entries, the directory's own entry) and keeps the data file open.
    pub(super) fn open(dir: &Path, durability: Durability) -> std::io::Result<DiskFiles> {
        let data_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))?;
        let disk = DiskFiles {
            durability,
            data_file,
            blob_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        };
        if durability == Durability::ProcessCrash {
            return Ok(disk);
        }
        disk.data_file.sync_data()?;
        match File::open(dir.join("conf")) {
            Ok(conf) => conf.sync_all()?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        disk.sync_new_blobs()?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(disk)
    }

    /// Syncs the blob files written so far (call before sled's flush: a change's blob file
    /// is written while its transaction commits, so this covers every committed change,
    /// and the log entries the flush writes do not reach the disk before their blobs).
    pub(super) fn sync_blobs(&self) -> std::io::Result<()> {
        if self.durability == Durability::ProcessCrash {
            return Ok(());
        }
        self.sync_new_blobs()
    }

    /// Syncs the log (call after sled's flush).
    pub(super) fn sync_log(&self) -> std::io::Result<()> {
        if self.durability == Durability::ProcessCrash {
            return Ok(());
        }
        self.data_file.sync_data()
    }

    /// Syncs the blob files that appeared since the last call, then the blob directory.
    fn sync_new_blobs(&self) -> std::io::Result<()> {
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = HashSet::with_capacity(synced.len());
        let mut new_files = 0usize;
        for entry in std::fs::read_dir(&self.blob_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_data()?,
                    // sled removed it meanwhile (the page was rewritten): nothing to keep.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_files += 1;
            }
            present.insert(name);
        }
        if new_files > 0 {
            sync_dir(&self.blob_dir)?;
        }
        *synced = present;
        Ok(())
    }

    /// How many blob files are known to be synced (for tests).
    #[cfg(test)]
    pub(super) fn synced_blob_count(&self) -> usize {
        self.synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// Creates the data directory (and any missing parent) with mode 0700 whatever the umask,
/// and narrows an existing one to 0700: the registry's files are nobody else's business.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// fsyncs a directory, making the entries created or renamed in it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::{ClusterRef, NewCluster, NewNode, Store};

    /// The largest cluster record the registry accepts: 64 members with 255-byte names and
    /// eight 255-byte endpoints each.
    fn fill_largest_cluster(store: &Store) -> ClusterRef {
        let (cluster, _) = store
            .create_cluster(
                NewCluster {
                    name: "big".into(),
                    attrs: 0,
                    max_size: 64,
                    endpoint_count: 8,
                },
                1,
            )
            .unwrap();
        let cluster = ClusterRef::Id(cluster.id);
        for i in 0..64 {
            let host = format!("{i:0>249}");
            let node = store
                .register_node(
                    NewNode {
                        id: None,
                        name: format!("{i:x>255}"),
                        attrs: 0,
                        comms_key: vec![1; 294],
                        sig_key: vec![2; 294],
                        endpoints: (0..8).map(|p| format!("{host}:{}", 10_000 + p)).collect(),
                    },
                    1,
                )
                .unwrap()
                .node;
            store.join(&cluster, &node, 2).unwrap();
        }
        cluster
    }

    #[test]
    fn large_records_spill_into_blob_files_and_every_one_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = {
            let store = Store::open(dir.path()).unwrap();
            let cluster = fill_largest_cluster(&store);
            store.flush_blocking().unwrap();
            let on_disk = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
            // The premise: sled writes such a record to a blob file it never syncs itself.
            assert!(on_disk > 0, "a ~150 KiB record should live in a blob file");
            let disk = store.inner.disk.as_ref().unwrap();
            assert_eq!(disk.synced_blob_count(), on_disk);
            cluster
        };
        let store = Store::reopen(dir.path()).unwrap();
        assert_eq!(store.cluster(&cluster).unwrap().unwrap().members.len(), 64);
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    }
}
