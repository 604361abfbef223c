//! `admin backup` and `admin restore`: point-in-time snapshots of a registry, keys included.
//!
//! This module owns the snapshot file format and the two operations. A snapshot holds a
//! consistent copy of every store tree (read from a point-in-time view, [`StoreView`], and
//! written entry by entry: [`write()`]) and the registry's key files,
//! so a restored registry keeps its identity and its regCred.dat stays valid. Like etcd's
//! snapshot files it ends with a SHA-256 checksum:
//!
//! ```text
//! "XLREGSNP" | format version (u32, big-endian) | body | SHA-256 of everything before it
//! ```
//!
//! The body is bincode (fixed-width integers, little-endian) of `SnapshotBody`, written
//! field by field so that the store is never held in memory ([`Received`] checks a file
//! received from a daemon the same way, as it is written). Restore
//! checks the magic, the checksum and the format version before it decodes anything, takes
//! only the two known key file names from it, writes into a new or empty directory only,
//! and verifies the result. Snapshot files hold private keys: they are written with mode
//! 0600, and the buffers holding them are wiped after use.

use std::io::Write;
use std::path::{Path, PathBuf};

use bincode::Options as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::target::NewDataDir;
use super::AdminError;
use crate::crypto::{sha256, HandshakeKeyPair, RsaKeyPair};
use crate::handshake_keys::{parse_previous_file, PREVIOUS_HANDSHAKE_KEY_FILE};
use crate::process::ReleaseEvery;
use crate::regcred::write_atomic;
use crate::registry::{COMMS_KEY_FILE, HANDSHAKE_KEY_FILE, SIG_KEY_FILE};
use crate::store::{BackendChoice, Snapshot, StoreView};

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
/// its next start, and makes them then), and so is the previous handshake key set during a
/// rotation's overlap (a restore after the overlap drops it at start).
const KEY_FILES: [&str; 4] = [
    COMMS_KEY_FILE,
    SIG_KEY_FILE,
    HANDSHAKE_KEY_FILE,
    PREVIOUS_HANDSHAKE_KEY_FILE,
];
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Writes what it is given to `out`, counting it and hashing it: a snapshot file ends with
/// the SHA-256 of everything before it.
struct Hashing<'a> {
    out: &'a mut dyn Write,
    hash: Sha256,
    len: u64,
}

impl Hashing<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), AdminError> {
        self.out.write_all(bytes).map_err(AdminError::Output)?;
        self.hash.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// A u64 as bincode writes it here (fixed width, little-endian): lengths and times.
    fn put_u64(&mut self, value: u64) -> Result<(), AdminError> {
        self.put(&value.to_le_bytes())
    }

    /// A byte string (or a `String`) as bincode writes it: its length, then its bytes.
    fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), AdminError> {
        self.put_u64(bytes.len() as u64)?;
        self.put(bytes)
    }
}

/// Writes the snapshot file of `view` and of the key files in `dir` (the store's data
/// directory) to `out`, one entry at a time: nothing but the entry being written is held in
/// memory. The bytes are exactly those of the bincode encoding of a `SnapshotBody` holding
/// the same trees (unit-tested), so `restore` reads them as it always has.
pub fn write(
    view: &dyn StoreView,
    dir: &Path,
    now_ms: u64,
    out: &mut dyn Write,
) -> Result<SnapshotSummary, AdminError> {
    let key_files = key_files(dir, view.registry_meta()?.is_some())?;
    write_with_keys(view, key_files, now_ms, out)
}

/// [`write()`] for a registry whose keys are not files: a registry on etcd, whose sealed
/// identity was opened ([`sealed_key_files`]). `restore` makes a sled data directory of it.
pub fn write_with_keys(
    view: &dyn StoreView,
    key_files: Vec<KeyFile>,
    now_ms: u64,
    out: &mut dyn Write,
) -> Result<SnapshotSummary, AdminError> {
    let registry = view.registry_meta()?;
    let mut file = Hashing {
        out,
        hash: Sha256::new(),
        len: 0,
    };
    file.put(SNAPSHOT_MAGIC)?;
    file.put(&SNAPSHOT_FORMAT_VERSION.to_be_bytes())?;
    // SnapshotBody, field by field.
    file.put_u64(now_ms)?;
    file.put_bytes(crate::registry::VERSION.as_bytes())?;
    let names = view.tree_names();
    file.put_u64(names.len() as u64)?;
    for name in &names {
        file.put_bytes(name)?;
        // A map's length comes first: counted in a first pass over the same point in time.
        // That pass sends nothing, so it hands freed memory back itself.
        let mut count = 0u64;
        let mut release = ReleaseEvery::default();
        for entry in view.entries(name) {
            let (key, value) = entry?;
            release.passed(key.len() + value.len());
            count += 1;
        }
        file.put_u64(count)?;
        let mut written = 0u64;
        for entry in view.entries(name) {
            let (key, value) = entry?;
            file.put_bytes(&key)?;
            file.put_bytes(&value)?;
            written += 1;
        }
        if written != count {
            return Err(AdminError::Unreadable(format!(
                "tree {} gave {written} entries after counting {count}",
                String::from_utf8_lossy(name)
            )));
        }
    }
    file.put_u64(key_files.len() as u64)?;
    for (name, contents) in &key_files {
        file.put_bytes(name.as_bytes())?;
        file.put_bytes(contents)?;
    }
    // The summary's counts, from the same point in time.
    let mut nodes = 0;
    for node in view.nodes() {
        node?;
        nodes += 1;
    }
    let (mut clusters, mut members) = (0, 0);
    for cluster in view.clusters() {
        clusters += 1;
        members += cluster?.members.len();
    }
    let checksum: [u8; CHECKSUM_LEN] = file.hash.finalize().into();
    let bytes = file.len as usize + CHECKSUM_LEN;
    file.out.write_all(&checksum).map_err(AdminError::Output)?;
    Ok(SnapshotSummary {
        created_at_ms: now_ms,
        xlreg_version: crate::registry::VERSION.to_string(),
        registry: registry.map(|meta| (meta.name, meta.id.to_hex())),
        nodes,
        clusters,
        members,
        bytes,
        sha256: hex::encode(checksum),
    })
}

/// A key file's name and contents (wiped when dropped).
pub type KeyFile = (String, Zeroizing<Vec<u8>>);

/// The key files a sled data directory would hold for the sealed identity `material`, as
/// of `now_ms` (a previous handshake set only while its overlap lasts).
pub fn sealed_key_files(
    material: &crate::sealed_identity::IdentityMaterial,
    now_ms: u64,
) -> Result<Vec<KeyFile>, AdminError> {
    let mut files = vec![
        (
            crate::registry::COMMS_KEY_FILE.to_string(),
            Zeroizing::new(material.comms_pem.as_bytes().to_vec()),
        ),
        (
            crate::registry::SIG_KEY_FILE.to_string(),
            Zeroizing::new(material.sig_pem.as_bytes().to_vec()),
        ),
    ];
    let handshake = crate::handshake_keys::sealed_key_files(material, now_ms)
        .map_err(crate::registry::RegistryError::from)?;
    files.extend(
        handshake
            .into_iter()
            .map(|(name, bytes)| (name.to_string(), bytes)),
    );
    Ok(files)
}

/// The registry's key files in `dir`, name and contents; a registry not yet started
/// (`has_identity` false) may have none.
fn key_files(dir: &Path, has_identity: bool) -> Result<Vec<KeyFile>, AdminError> {
    let mut key_files = Vec::new();
    for file in KEY_FILES {
        let path = dir.join(file);
        match std::fs::read(&path) {
            Ok(contents) => key_files.push((file.to_string(), Zeroizing::new(contents))),
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && (!has_identity
                        || file == HANDSHAKE_KEY_FILE
                        || file == PREVIOUS_HANDSHAKE_KEY_FILE) => {}
            Err(source) => return Err(AdminError::File { path, source }),
        }
    }
    Ok(key_files)
}

/// Checks a snapshot file as it is received (from a daemon) and written to `out`: keeps the
/// running SHA-256 of everything but the last 32 bytes, so that [`Received::finish`] can
/// check the file's checksum without holding the file.
pub struct Received<W> {
    out: W,
    hash: Sha256,
    /// The first bytes (the header), for the magic and the version.
    head: Vec<u8>,
    /// The last bytes seen (at most [`CHECKSUM_LEN`] once hashed up to them); wiped, as
    /// they may hold key material.
    tail: Zeroizing<Vec<u8>>,
    len: u64,
}

impl<W: Write> Received<W> {
    /// Checks what is written before passing it on to `out`.
    pub fn new(out: W) -> Received<W> {
        Received {
            out,
            hash: Sha256::new(),
            head: Vec::with_capacity(HEADER_LEN),
            tail: Zeroizing::new(Vec::new()),
            len: 0,
        }
    }

    /// Checks the whole file (magic, format version, checksum) and returns its length, its
    /// checksum in hex and `out`. `path` is for messages.
    pub fn finish(self, path: &Path) -> Result<(u64, String, W), AdminError> {
        let bad = |reason: String| AdminError::BadSnapshot {
            path: path.to_path_buf(),
            reason,
        };
        if self.len < (HEADER_LEN + CHECKSUM_LEN) as u64 || !self.head.starts_with(SNAPSHOT_MAGIC) {
            return Err(bad("the daemon did not send an xlreg snapshot".into()));
        }
        if self.head[SNAPSHOT_MAGIC.len()..] != SNAPSHOT_FORMAT_VERSION.to_be_bytes() {
            return Err(bad("the daemon sent another snapshot format version".into()));
        }
        if self.hash.finalize().as_slice() != self.tail.as_slice() {
            return Err(bad(
                "checksum mismatch: the snapshot was damaged on its way; nothing written".into(),
            ));
        }
        Ok((self.len, hex::encode(&*self.tail), self.out))
    }
}

impl<W: Write> Write for Received<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write_all(buf)?;
        let missing = HEADER_LEN.saturating_sub(self.head.len()).min(buf.len());
        self.head.extend_from_slice(&buf[..missing]);
        self.tail.extend_from_slice(buf);
        if self.tail.len() > CHECKSUM_LEN {
            let hashed = self.tail.len() - CHECKSUM_LEN;
            self.hash.update(&self.tail[..hashed]);
            self.tail.drain(..hashed);
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
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
        if name == PREVIOUS_HANDSHAKE_KEY_FILE {
            parse_previous_file(contents).map_err(|e| bad(format!("key file {name}: {e}")))?;
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
        let store = BackendChoice::default().create_from_snapshot(dir, &body.store)?;
        // Read through a view: a second copy of the registry in memory is not needed.
        let view = store.view()?;
        view.check_invariants()?.problems
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
    use crate::store::Store;

    fn registry_dir(root: &Path) -> (PathBuf, Store) {
        let dir = root.join("data");
        let (store, identity) = super::super::test_registry(&dir, &["a", "b"]);
        // Mid-rotation, so every key file is there to carry, the previous set's included.
        identity
            .rotate_handshake_keys(u64::MAX / 2, crate::clock::now_ms())
            .unwrap();
        (dir, store)
    }

    /// A snapshot file of `store`, written as `admin backup` writes it, and its summary.
    fn take(store: &Store, now_ms: u64) -> (Zeroizing<Vec<u8>>, SnapshotSummary) {
        let mut bytes = Zeroizing::new(Vec::new());
        let view = store.view().unwrap();
        let summary = write(&view, store.data_dir().unwrap(), now_ms, &mut *bytes).unwrap();
        (bytes, summary)
    }

    #[test]
    fn the_streamed_file_is_the_bincode_encoding_of_the_body() {
        let root = tempfile::tempdir().unwrap();
        let (dir, store) = registry_dir(root.path());
        let (bytes, summary) = take(&store, 42);
        let body = SnapshotBody {
            created_at_ms: 42,
            xlreg_version: crate::registry::VERSION.to_string(),
            store: store.snapshot().unwrap(),
            key_files: KEY_FILES
                .iter()
                .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
                .collect(),
        };
        let mut expected = SNAPSHOT_MAGIC.to_vec();
        expected.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_be_bytes());
        expected.extend(bincode_options(u64::MAX).serialize(&body).unwrap());
        let checksum = sha256(&expected);
        expected.extend_from_slice(&checksum);
        assert!(*bytes == expected);
        assert_eq!(
            (summary.nodes, summary.clusters, summary.members),
            (2, 1, 2)
        );
        assert_eq!(inspect(&bytes, Path::new("s.snap")).unwrap(), summary);
    }

    #[test]
    fn a_received_snapshot_is_checked_as_it_is_written() {
        let root = tempfile::tempdir().unwrap();
        let (_dir, store) = registry_dir(root.path());
        let (bytes, summary) = take(&store, 7);
        let receive = |bytes: &[u8]| {
            let mut received = Received::new(Vec::new());
            // In pieces, as frames arrive.
            for piece in bytes.chunks(1000) {
                received.write_all(piece).unwrap();
            }
            received.finish(Path::new("s.snap"))
        };
        let (len, sha, out) = receive(&bytes).unwrap();
        assert_eq!((len as usize, sha), (summary.bytes, summary.sha256));
        assert!(out == *bytes);
        let mut flipped = bytes.to_vec();
        flipped[bytes.len() / 2] ^= 1;
        assert!(matches!(
            receive(&flipped),
            Err(AdminError::BadSnapshot { reason, .. }) if reason.contains("checksum mismatch")
        ));
        assert!(receive(&bytes[..bytes.len() - 1]).is_err());
        assert!(receive(b"XLREGSNP").is_err());
    }

    #[test]
    fn take_save_restore_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let (dir, store) = registry_dir(root.path());
        let (bytes, summary) = take(&store, 42);
        let file = root.path().join("s.snap");
        write_atomic(&file, &bytes, SNAPSHOT_MODE).unwrap();
        assert_eq!(summary.registry.as_ref().unwrap().0, "reg");
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
        let (bytes, _) = take(&store, 1);
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
