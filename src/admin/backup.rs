//! `admin backup` and `admin restore`: point-in-time snapshots of a registry, keys included.
//!
//! This module owns the snapshot file format and the two operations. A snapshot holds a
//! consistent copy of every store tree ([`Store::snapshot`]) and the registry's key files,
//! so a restored registry keeps its identity and its regCred.dat stays valid. Like etcd's
//! snapshot files it ends with a SHA-256 checksum:
//!
//! ```text
//! "XLREGSNP" | format version (u32, big-endian) | body | SHA-256 of everything before it
//! ```
//!
//! The body is bincode (fixed-width integers, little-endian) of `SnapshotBody`. Restore
//! checks the magic, the checksum and the format version before it decodes anything, takes
//! only the two known key file names from it, writes into a new or empty directory only,
//! and verifies the result. Snapshot files hold private keys: they are written with mode
//! 0600, and the buffers holding them are wiped after use.

use std::path::{Path, PathBuf};

use bincode::Options as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::target::NewDataDir;
use super::AdminError;
use crate::crypto::{sha256, HandshakeKeyPair, RsaKeyPair};
use crate::regcred::write_atomic;
use crate::registry::{COMMS_KEY_FILE, HANDSHAKE_KEY_FILE, SIG_KEY_FILE};
use crate::store::{AdminStore, Snapshot, Store};

/// The first bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"XLREGSNP";
/// The snapshot format version this xlreg writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// The largest snapshot `restore` reads.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Mode of snapshot files: they hold the registry's private keys.
pub const SNAPSHOT_MODE: u32 = 0o600;
/// The files of the data directory a snapshot carries besides the store. The xlReg/3
/// handshake keys are carried when present (a registry from before xlReg/3 has none until
/// its next start, and makes them then).
const KEY_FILES: [&str; 3] = [COMMS_KEY_FILE, SIG_KEY_FILE, HANDSHAKE_KEY_FILE];
const CHECKSUM_LEN: usize = 32;
const HEADER_LEN: usize = SNAPSHOT_MAGIC.len() + 4;

/// What a snapshot file carries after its header.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    /// When the snapshot was taken, ms since the Unix epoch.
    created_at_ms: u64,
    /// The xlreg version that took it.
    xlreg_version: String,
    /// Every store tree.
    store: Snapshot,
    /// The registry's key files: name and contents (PEM).
    key_files: Vec<(String, Vec<u8>)>,
}

impl Drop for SnapshotBody {
    fn drop(&mut self) {
        for (_, contents) in &mut self.key_files {
            zeroize::Zeroize::zeroize(contents);
        }
    }
}

/// What a snapshot holds, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// When it was taken, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The xlreg version that took it.
    pub xlreg_version: String,
    /// The registry's name and ID, if it had been started.
    pub registry: Option<(String, String)>,
    /// Nodes in it.
    pub nodes: usize,
    /// Clusters in it.
    pub clusters: usize,
    /// Memberships in it.
    pub members: usize,
    /// The snapshot's size in bytes.
    pub bytes: usize,
    /// Its checksum (the file's last 32 bytes), hex.
    pub sha256: String,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// What the snapshot held.
    pub snapshot: SnapshotSummary,
    /// What `verify` says of the restored directory (empty: all is well).
    pub problems: Vec<String>,
}

fn bincode_options(limit: u64) -> impl bincode::Options {
    bincode::options()
        .with_fixint_encoding()
        .with_limit(limit)
        .reject_trailing_bytes()
}

/// Takes a snapshot of `store` and the key files in its data directory, and returns the
/// snapshot file's bytes.
pub fn take(store: &dyn AdminStore, now_ms: u64) -> Result<Zeroizing<Vec<u8>>, AdminError> {
    let dir = store.data_dir().ok_or(AdminError::Ephemeral)?;
    let snapshot = store.snapshot()?;
    let has_identity = snapshot.registry_meta()?.is_some();
    let mut key_files = Vec::new();
    for file in KEY_FILES {
        let path = dir.join(file);
        match std::fs::read(&path) {
            Ok(contents) => key_files.push((file.to_string(), contents)),
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && (!has_identity || file == HANDSHAKE_KEY_FILE) => {}
            Err(source) => return Err(AdminError::File { path, source }),
        }
    }
    let body = SnapshotBody {
        created_at_ms: now_ms,
        xlreg_version: crate::registry::VERSION.to_string(),
        store: snapshot,
        key_files,
    };
    let encoded = Zeroizing::new(
        bincode_options(u64::MAX)
            .serialize(&body)
            .map_err(|e| AdminError::Unreadable(format!("could not encode the snapshot: {e}")))?,
    );
    let mut out = Zeroizing::new(Vec::with_capacity(
        HEADER_LEN + encoded.len() + CHECKSUM_LEN,
    ));
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&encoded);
    let checksum = sha256(&out);
    out.extend_from_slice(&checksum);
    Ok(out)
}

/// Checks a snapshot file's magic, checksum and version and decodes it; `path` is for
/// messages.
fn decode(bytes: &[u8], path: &Path) -> Result<SnapshotBody, AdminError> {
    let bad = |reason: String| AdminError::BadSnapshot {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN || !bytes.starts_with(SNAPSHOT_MAGIC) {
        return Err(bad("not an xlreg snapshot".into()));
    }
    let (content, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if sha256(content) != checksum {
        return Err(bad(
            "checksum mismatch: the snapshot is damaged or incomplete; nothing restored".into(),
        ));
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&content[SNAPSHOT_MAGIC.len()..HEADER_LEN]);
    let version = u32::from_be_bytes(version);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(bad(format!(
            "snapshot format version {version} is not supported; this xlreg reads version \
             {SNAPSHOT_FORMAT_VERSION}"
        )));
    }
    let body = &content[HEADER_LEN..];
    let decoded: SnapshotBody = bincode_options(body.len() as u64)
        .deserialize(body)
        .map_err(|e| bad(format!("the snapshot does not decode: {e}")))?;
    for (name, contents) in &decoded.key_files {
        if !KEY_FILES.contains(&name.as_str()) {
            return Err(bad(format!(
                "the snapshot carries an unknown file {name:?}"
            )));
        }
        if name == HANDSHAKE_KEY_FILE {
            HandshakeKeyPair::from_file_bytes(contents)
                .map_err(|e| bad(format!("key file {name}: {e}")))?;
            continue;
        }
        let pem = std::str::from_utf8(contents)
            .map_err(|_| bad(format!("key file {name} is not text")))?;
        RsaKeyPair::from_pem(pem).map_err(|e| bad(format!("key file {name}: {e}")))?;
    }
    Ok(decoded)
}

fn summarize(body: &SnapshotBody, bytes: &[u8]) -> Result<SnapshotSummary, AdminError> {
    let clusters = body.store.clusters().collect::<Result<Vec<_>, _>>()?;
    Ok(SnapshotSummary {
        created_at_ms: body.created_at_ms,
        xlreg_version: body.xlreg_version.clone(),
        registry: body
            .store
            .registry_meta()?
            .map(|meta| (meta.name, meta.id.to_hex())),
        nodes: body.store.nodes().count(),
        clusters: clusters.len(),
        members: clusters.iter().map(|c| c.members.len()).sum(),
        bytes: bytes.len(),
        sha256: hex::encode(&bytes[bytes.len().saturating_sub(CHECKSUM_LEN)..]),
    })
}

/// Checks a snapshot (as restore would) and says what it holds.
pub fn inspect(bytes: &[u8], path: &Path) -> Result<SnapshotSummary, AdminError> {
    let body = decode(bytes, path)?;
    summarize(&body, bytes)
}

/// Checks a snapshot received from a daemon and writes it to `path` (mode 0600).
pub fn save(bytes: &[u8], path: &Path) -> Result<SnapshotSummary, AdminError> {
    let summary = inspect(bytes, path)?;
    write_atomic(path, bytes, SNAPSHOT_MODE).map_err(AdminError::file(path))?;
    Ok(summary)
}

/// Restores the snapshot file `snapshot_path` into `dir`, which must be new or empty.
/// Nothing is written unless the snapshot checks out; if writing fails, what was written is
/// removed. The restored directory is verified; any problem is reported in the summary (the
/// directory then holds exactly what the snapshot held).
pub fn restore(snapshot_path: &Path, dir: &Path) -> Result<RestoreSummary, AdminError> {
    let bytes = Zeroizing::new(super::read_bounded(snapshot_path, MAX_SNAPSHOT_BYTES)?);
    let body = decode(&bytes, snapshot_path)?;
    let summary = summarize(&body, &bytes)?;
    let target = NewDataDir::create(dir)?;
    for (name, contents) in &body.key_files {
        let path: PathBuf = dir.join(name);
        write_atomic(&path, contents, SNAPSHOT_MODE).map_err(AdminError::file(&path))?;
    }
    let problems = {
        let store = Store::create_from_snapshot(dir, &body.store)?;
        store.verify()?
    };
    target.keep();
    Ok(RestoreSummary {
        snapshot: summary,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryIdentity;

    fn registry_dir(root: &Path) -> (PathBuf, Store) {
        let dir = root.join("data");
        let store = Store::open(&dir).unwrap();
        RegistryIdentity::load_or_create(&store, Some(&dir), Some("snap"), 1).unwrap();
        (dir, store)
    }

    #[test]
    fn take_save_restore_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let (dir, store) = registry_dir(root.path());
        let bytes = take(&store, 42).unwrap();
        let file = root.path().join("s.snap");
        let summary = save(&bytes, &file).unwrap();
        assert_eq!(summary.registry.as_ref().unwrap().0, "snap");
        assert_eq!(summary.created_at_ms, 42);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let target = root.path().join("restored");
        let restored = restore(&file, &target).unwrap();
        assert_eq!(restored.problems, Vec::<String>::new());
        assert_eq!(restored.snapshot, summary);
        for name in KEY_FILES {
            assert_eq!(
                std::fs::read(target.join(name)).unwrap(),
                std::fs::read(dir.join(name)).unwrap()
            );
            let mode = std::fs::metadata(target.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let copy = Store::reopen(&target).unwrap();
        assert_eq!(copy.snapshot().unwrap(), store.snapshot().unwrap());
        drop(copy);

        // Never into a directory that holds anything.
        let e = restore(&file, &target).unwrap_err();
        assert!(matches!(e, AdminError::TargetNotEmpty(_)), "{e}");
    }

    #[test]
    fn damaged_and_foreign_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let (_dir, store) = registry_dir(root.path());
        let bytes = take(&store, 1).unwrap();
        let path = Path::new("s.snap");
        let reason = |bytes: &[u8]| match decode(bytes, path) {
            Err(AdminError::BadSnapshot { reason, .. }) => reason,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        };
        let mut flipped = bytes.to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        assert!(reason(&flipped).contains("checksum mismatch"));
        assert!(reason(&bytes[..bytes.len() - 1]).contains("checksum mismatch"));
        assert!(reason(b"hello").contains("not an xlreg snapshot"));

        // A well-formed file of another version, or carrying a stray file name.
        let reseal = |mut content: Vec<u8>| {
            let sum = sha256(&content);
            content.extend_from_slice(&sum);
            content
        };
        let mut other_version = bytes[..bytes.len() - CHECKSUM_LEN].to_vec();
        other_version[SNAPSHOT_MAGIC.len()..HEADER_LEN].copy_from_slice(&9u32.to_be_bytes());
        assert!(reason(&reseal(other_version)).contains("format version 9"));

        let mut body = decode(&bytes, path).unwrap();
        body.key_files
            .push(("../../etc/passwd".into(), b"x".to_vec()));
        let mut content = SNAPSHOT_MAGIC.to_vec();
        content.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_be_bytes());
        content.extend(bincode_options(u64::MAX).serialize(&body).unwrap());
        assert!(reason(&reseal(content)).contains("unknown file"));

        // A corrupt snapshot restores nothing.
        let file = root.path().join("bad.snap");
        std::fs::write(&file, &flipped).unwrap();
        let target = root.path().join("t");
        assert!(restore(&file, &target).is_err());
        assert!(!target.exists());
    }
}
