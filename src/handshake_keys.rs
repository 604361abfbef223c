//! The registry's static xlReg/3 handshake keys over time: the current set and, during a
//! rotation's overlap, the previous set and the moment it stops being accepted.
//!
//! This module owns:
//! - the key files: `registry-handshake.key` (the current set, see
//!   [`HandshakeKeyPair::to_file_bytes`]) and, during an overlap only,
//!   `registry-handshake.prev.key` ([`PREVIOUS_HANDSHAKE_KEY_FILE`]): `"xlreg previous
//!   handshake keys v1\n" || expiry (u64 big-endian, milliseconds since the Unix epoch) ||
//!   the previous set in the current file's format`. Both mode 0600, written atomically;
//! - [`HandshakeKeyRing`]: the sets a running registry serves, swapped atomically by
//!   [`HandshakeKeyRing::rotate`] (new current set, the old one kept as previous for the
//!   overlap) and [`HandshakeKeyRing::drop_expired`] (the overlap is over), each of which
//!   also rewrites the regCred.dat the daemon published.
//!
//! On a shared store (etcd) the sets live in the registry's sealed identity instead
//! ([`crate::sealed_identity`]), the files are not used, and a rotation replaces the sealed
//! identity with a compare transaction (so two servers rotating at once cannot lose one
//! another's keys); every server re-reads it every [`SEALED_RELOAD`] ([`follow_sealed`]).
//!
//! A rotation writes the previous file before the new current one, so a crash between the
//! two leaves the old keys in both files (accepted, and tidied at the next start), never a
//! registry that lost the keys its clients hold. A previous set whose expiry has passed is
//! deleted at start and by [`HandshakeKeyRing::drop_expired`]; sessions stop accepting it at
//! its expiry whether or not the file is gone yet ([`HandshakeKeySets::previous_at`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, HandshakeKeyPair, NoiseError, RsaKeyPair};
use crate::id::Id;
use crate::regcred::{write_atomic, RegCred, RegCredError, SignedHandshakeKeys};
use crate::sealed_identity::{IdentityMaterial, SealError, SealedIdentity};

/// File name of the registry's current static xlReg/3 handshake keys in the data directory.
pub const HANDSHAKE_KEY_FILE: &str = "registry-handshake.key";
/// File name of the previous handshake key set (during a rotation's overlap only).
pub const PREVIOUS_HANDSHAKE_KEY_FILE: &str = "registry-handshake.prev.key";
/// Opens the previous key file.
const PREVIOUS_MAGIC: &[u8] = b"xlreg previous handshake keys v1\n";

/// Why the handshake keys could not be loaded, made, rotated or published.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeKeyError {
    /// A key file could not be read, written or removed.
    #[error("{path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A key file does not hold usable keys.
    #[error("{path}: {source}")]
    BadKeys {
        /// The key file.
        path: PathBuf,
        /// Why the keys are unusable.
        source: NoiseError,
    },
    /// Key generation or encoding failed.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// Signing the public keys with the registry's signing key failed.
    #[error(transparent)]
    Sign(#[from] CryptoError),
    /// An ephemeral registry keeps its keys in memory only: there is nothing to rotate.
    #[error("an ephemeral registry keeps no key files; its keys change at every start")]
    NoDataDir,
    /// The keys changed but the published regCred.dat could not be rewritten (the next
    /// start, or the next key change, writes it).
    #[error(transparent)]
    RegCred(#[from] RegCredError),
    /// The sealed identity on the shared store could not be read, opened or updated.
    #[error(transparent)]
    Sealed(#[from] SealError),
    /// The sealed identity holds handshake keys that cannot be decoded.
    #[error("the sealed identity's handshake keys: {0}")]
    BadSealedKeys(String),
}

/// Where a ring's key sets are kept.
#[derive(Debug)]
enum RingHome {
    /// In memory only (an ephemeral registry).
    Memory,
    /// Key files in the data directory.
    Files(PathBuf),
    /// The registry's sealed identity on a shared store.
    Sealed(Arc<SealedIdentity>),
}

/// One static key set with its public halves signed by the registry's signing key.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// The private and public keys.
    pub keys: Arc<HandshakeKeyPair>,
    /// The public keys as regCred.dat publishes them.
    pub signed: SignedHandshakeKeys,
}

impl KeySet {
    fn sign(
        keys: HandshakeKeyPair,
        id: &Id,
        sig: &RsaKeyPair,
    ) -> Result<KeySet, HandshakeKeyError> {
        let signed = SignedHandshakeKeys::sign(id, keys.public().clone(), sig)?;
        Ok(KeySet {
            keys: Arc::new(keys),
            signed,
        })
    }

    /// The X25519 public key in hex: what names a key set in reports and logs.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.keys.public().x25519())
    }
}

/// The previous key set and when the registry stops accepting it.
#[derive(Debug, Clone)]
pub struct PreviousKeySet {
    /// The keys.
    pub set: KeySet,
    /// When the overlap ends, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// The key sets a registry serves at one moment.
#[derive(Debug, Clone)]
pub struct HandshakeKeySets {
    /// The current set: clients are told to use it.
    pub current: KeySet,
    /// The set rotated away from, during the overlap.
    pub previous: Option<PreviousKeySet>,
}

impl HandshakeKeySets {
    /// The previous set if it is still accepted at `now_ms`.
    pub fn previous_at(&self, now_ms: u64) -> Option<&KeySet> {
        self.previous
            .as_ref()
            .filter(|previous| now_ms < previous.expires_at_ms)
            .map(|previous| &previous.set)
    }
}

/// What a rotation did, as `xlreg admin rotate-handshake-keys` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationReport {
    /// The new current X25519 public key, hex.
    pub current_x25519: String,
    /// The previous X25519 public key, hex, while it is still accepted.
    pub previous_x25519: Option<String>,
    /// When the previous set stops being accepted (milliseconds since the Unix epoch).
    pub previous_expires_at_ms: Option<u64>,
    /// The regCred.dat the running daemon rewrote; `None` offline (the next start writes it).
    pub regcred: Option<PathBuf>,
}

/// Where the daemon published regCred.dat and what it said, so key changes can rewrite it.
#[derive(Debug)]
struct Publication {
    path: PathBuf,
    cred: RegCred,
}

/// The key sets a registry serves, swapped atomically on rotation and expiry.
#[derive(Debug)]
pub struct HandshakeKeyRing {
    /// Where the sets are kept.
    home: RingHome,
    sets: RwLock<Arc<HandshakeKeySets>>,
    /// Held across a whole rotation or expiry (files, swap, regCred.dat), so two never
    /// interleave; holds the published regCred.dat.
    changing: Mutex<Option<Publication>>,
    /// The published regCred.dat's text as last written: what a regCred fetch is answered
    /// with (docs/protocol.md section 14.10). Apart from `changing`, so that a session
    /// starting during a rotation does not wait for its file writes.
    published_text: RwLock<Option<Arc<str>>>,
}

impl HandshakeKeyRing {
    /// Loads the key sets kept in `dir`, making the current set if there is none (a first
    /// start, or the first start of a registry made before xlReg/3), and deleting a previous
    /// set that expired by `now_ms` (or that is the current set again, after a crash
    /// mid-rotation). With no `dir` the keys live in memory only.
    pub fn load_or_create(
        dir: Option<&Path>,
        id: &Id,
        sig: &RsaKeyPair,
        now_ms: u64,
    ) -> Result<HandshakeKeyRing, HandshakeKeyError> {
        let (current, previous) = match dir {
            None => (HandshakeKeyPair::generate()?, None),
            Some(dir) => {
                let current = load_or_create_current(dir)?;
                let previous = load_previous(dir, &current, now_ms)?;
                (current, previous)
            }
        };
        let current = KeySet::sign(current, id, sig)?;
        let previous = match previous {
            Some((keys, expires_at_ms)) => Some(PreviousKeySet {
                set: KeySet::sign(keys, id, sig)?,
                expires_at_ms,
            }),
            None => None,
        };
        Ok(HandshakeKeyRing {
            home: dir.map_or(RingHome::Memory, |dir| RingHome::Files(dir.to_path_buf())),
            sets: RwLock::new(Arc::new(HandshakeKeySets { current, previous })),
            changing: Mutex::new(None),
            published_text: RwLock::new(None),
        })
    }

    /// The ring kept in the sealed identity `sealed`, whose stored state is `material`.
    pub fn sealed(
        sealed: Arc<SealedIdentity>,
        material: &IdentityMaterial,
        id: &Id,
        sig: &RsaKeyPair,
        now_ms: u64,
    ) -> Result<HandshakeKeyRing, HandshakeKeyError> {
        Ok(HandshakeKeyRing {
            sets: RwLock::new(Arc::new(sealed_sets(material, id, sig, now_ms)?)),
            home: RingHome::Sealed(sealed),
            changing: Mutex::new(None),
            published_text: RwLock::new(None),
        })
    }

    /// Serves the sets of the sealed identity if another server changed them (a rotation,
    /// an overlap ended) since this one last read or wrote them, and rewrites the published
    /// regCred.dat. True if they changed. Does nothing for a ring kept in files.
    pub fn reload_sealed(
        &self,
        id: &Id,
        sig: &RsaKeyPair,
        now_ms: u64,
    ) -> Result<bool, HandshakeKeyError> {
        let RingHome::Sealed(sealed) = &self.home else {
            return Ok(false);
        };
        let mut publication = self.lock_changes();
        let Some(material) = sealed.changed()? else {
            return Ok(false);
        };
        let sets = sealed_sets(&material, id, sig, now_ms)?;
        let same = {
            let served = self.sets();
            served.current.keys.public() == sets.current.keys.public()
                && served
                    .previous
                    .as_ref()
                    .map(|p| (p.set.keys.public(), p.expires_at_ms))
                    == sets
                        .previous
                        .as_ref()
                        .map(|p| (p.set.keys.public(), p.expires_at_ms))
        };
        if same {
            return Ok(false);
        }
        self.swap(sets);
        self.republish(&mut publication, now_ms)?;
        Ok(true)
    }

    /// Rewrites the published regCred.dat, if any, with `endpoints` (the servers that are
    /// up now, on a shared store). True if there was one to rewrite.
    pub fn publish_endpoints(
        &self,
        endpoints: Vec<String>,
        now_ms: u64,
    ) -> Result<bool, HandshakeKeyError> {
        let mut publication = self.lock_changes();
        match publication.as_mut() {
            Some(published) if published.cred.endpoints != endpoints => {
                published.cred.endpoints = endpoints;
            }
            _ => return Ok(false),
        }
        self.republish(&mut publication, now_ms)?;
        Ok(true)
    }

    /// True if the ring is kept in a sealed identity on a shared store (etcd), not in key
    /// files: a backup of the running registry then takes its keys from the ring.
    pub fn is_sealed(&self) -> bool {
        matches!(self.home, RingHome::Sealed(_))
    }

    /// The sets served now. A session takes them once, when it starts.
    pub fn sets(&self) -> Arc<HandshakeKeySets> {
        // A poisoned lock still holds a whole Arc: swaps are a single assignment.
        self.sets
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn swap(&self, sets: HandshakeKeySets) {
        *self
            .sets
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(sets);
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, Option<Publication>> {
        self.changing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fills `cred`'s handshake fields from the sets served at `now_ms`.
    pub fn fill(&self, cred: &mut RegCred, now_ms: u64) {
        let sets = self.sets();
        cred.handshake = Some(sets.current.signed.clone());
        cred.handshake_previous = sets.previous_at(now_ms).map(|set| set.signed.clone());
    }

    /// Records that the daemon wrote `cred` to `path`, so that key changes rewrite it.
    pub fn published(&self, path: &Path, cred: &RegCred) {
        *self.lock_changes() = Some(Publication {
            path: path.to_path_buf(),
            cred: cred.clone(),
        });
        self.set_published_text(cred);
    }

    /// The text of the regCred.dat published last (current after rotations), if any: what
    /// the registry answers a regCred fetch with.
    pub fn published_text(&self) -> Option<Arc<str>> {
        self.published_text
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_published_text(&self, cred: &RegCred) {
        *self
            .published_text
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cred.to_text().into());
    }

    /// Rewrites the published regCred.dat, if any, for the sets served at `now_ms`.
    fn republish(
        &self,
        publication: &mut Option<Publication>,
        now_ms: u64,
    ) -> Result<Option<PathBuf>, HandshakeKeyError> {
        let Some(publication) = publication.as_mut() else {
            return Ok(None);
        };
        self.fill(&mut publication.cred, now_ms);
        publication.cred.write(&publication.path)?;
        self.set_published_text(&publication.cred);
        Ok(Some(publication.path.clone()))
    }

    /// Makes a new current key set; the old one stays accepted for `overlap_ms` (none if
    /// 0), replacing any earlier previous set. The files are on disk before the running
    /// sessions' sets are swapped, and the published regCred.dat is rewritten after.
    pub fn rotate(
        &self,
        id: &Id,
        sig: &RsaKeyPair,
        overlap_ms: u64,
        now_ms: u64,
    ) -> Result<RotationReport, HandshakeKeyError> {
        let dir = match &self.home {
            RingHome::Memory => return Err(HandshakeKeyError::NoDataDir),
            RingHome::Sealed(sealed) => {
                return self.rotate_sealed(sealed, id, sig, overlap_ms, now_ms)
            }
            RingHome::Files(dir) => dir.as_path(),
        };
        let mut publication = self.lock_changes();
        let old = self.sets();
        let fresh = HandshakeKeyPair::generate()?;
        let previous = if overlap_ms == 0 {
            // Removed before the new current set is written: should that write fail, the
            // registry keeps serving its current set, with no overlap, as asked.
            remove_previous(dir)?;
            None
        } else {
            let expires_at_ms = now_ms.saturating_add(overlap_ms);
            write_previous(dir, &old.current.keys, expires_at_ms)?;
            Some(PreviousKeySet {
                set: old.current.clone(),
                expires_at_ms,
            })
        };
        let path = dir.join(HANDSHAKE_KEY_FILE);
        write_atomic(&path, &fresh.to_file_bytes()?, 0o600)
            .map_err(|source| HandshakeKeyError::KeyFile { path, source })?;
        let current = KeySet::sign(fresh, id, sig)?;
        let report = RotationReport {
            current_x25519: current.fingerprint(),
            previous_x25519: previous.as_ref().map(|p| p.set.fingerprint()),
            previous_expires_at_ms: previous.as_ref().map(|p| p.expires_at_ms),
            regcred: None,
        };
        self.swap(HandshakeKeySets { current, previous });
        let regcred = self.republish(&mut publication, now_ms)?;
        Ok(RotationReport { regcred, ..report })
    }

    /// Ends an overlap whose expiry has passed by `now_ms`: deletes the previous key file,
    /// stops serving the set and rewrites the published regCred.dat. True if it did.
    pub fn drop_expired(&self, now_ms: u64) -> Result<bool, HandshakeKeyError> {
        let mut publication = self.lock_changes();
        let sets = self.sets();
        match &sets.previous {
            Some(previous) if now_ms >= previous.expires_at_ms => {}
            _ => return Ok(false),
        }
        match &self.home {
            RingHome::Files(dir) => remove_previous(dir)?,
            RingHome::Sealed(sealed) => {
                // Whichever server gets here first clears it; the others find it cleared.
                sealed.update(|material| {
                    if material
                        .handshake_previous
                        .as_ref()
                        .is_some_and(|(_, expires_at_ms)| now_ms >= *expires_at_ms)
                    {
                        material.handshake_previous = None;
                    }
                    Ok(())
                })?;
            }
            RingHome::Memory => {}
        }
        self.swap(HandshakeKeySets {
            current: sets.current.clone(),
            previous: None,
        });
        self.republish(&mut publication, now_ms)?;
        Ok(true)
    }
}

impl HandshakeKeyRing {
    /// [`HandshakeKeyRing::rotate`] on a sealed identity: the new set replaces the stored
    /// current one, which becomes the previous set for the overlap, in one compare
    /// transaction over what is stored now (another server's rotation included).
    fn rotate_sealed(
        &self,
        sealed: &SealedIdentity,
        id: &Id,
        sig: &RsaKeyPair,
        overlap_ms: u64,
        now_ms: u64,
    ) -> Result<RotationReport, HandshakeKeyError> {
        let mut publication = self.lock_changes();
        let fresh = HandshakeKeyPair::generate()?;
        let fresh_text = encode_keys(&fresh)?;
        let stored = sealed.update(|material| {
            if material.handshake == *fresh_text {
                // Our own write, applied though its answer was lost: done already.
                return Ok(());
            }
            let old = std::mem::replace(&mut material.handshake, fresh_text.to_string());
            material.handshake_previous =
                (overlap_ms > 0).then(|| (old, now_ms.saturating_add(overlap_ms)));
            Ok(())
        })?;
        let sets = sealed_sets(&stored, id, sig, now_ms)?;
        let report = RotationReport {
            current_x25519: sets.current.fingerprint(),
            previous_x25519: sets.previous.as_ref().map(|p| p.set.fingerprint()),
            previous_expires_at_ms: sets.previous.as_ref().map(|p| p.expires_at_ms),
            regcred: None,
        };
        self.swap(sets);
        let regcred = self.republish(&mut publication, now_ms)?;
        Ok(RotationReport { regcred, ..report })
    }
}

/// A key file's name and contents (wiped when dropped).
pub type NamedKeyFile = (&'static str, Zeroizing<Vec<u8>>);

/// The handshake key files of a data directory for the sealed identity `material`: the
/// current set, and the previous one if its overlap has not ended by `now_ms`.
pub fn sealed_key_files(
    material: &IdentityMaterial,
    now_ms: u64,
) -> Result<Vec<NamedKeyFile>, HandshakeKeyError> {
    let mut files = vec![(
        HANDSHAKE_KEY_FILE,
        decode_keys(&material.handshake)?.to_file_bytes()?,
    )];
    if let Some((previous, expires_at_ms)) = &material.handshake_previous {
        if now_ms < *expires_at_ms {
            files.push((
                PREVIOUS_HANDSHAKE_KEY_FILE,
                previous_file_bytes(&decode_keys(previous)?, *expires_at_ms)?,
            ));
        }
    }
    Ok(files)
}

/// Writes [`sealed_key_files`] into `dir` (`xlreg admin migrate --to-data-dir`), each mode
/// 0600.
pub fn write_sealed_to_files(
    dir: &Path,
    material: &IdentityMaterial,
    now_ms: u64,
) -> Result<(), HandshakeKeyError> {
    for (file, bytes) in sealed_key_files(material, now_ms)? {
        let path = dir.join(file);
        write_atomic(&path, &bytes, 0o600)
            .map_err(|source| HandshakeKeyError::KeyFile { path, source })?;
    }
    Ok(())
}

/// A key set in the sealed identity's form: base64 of its key file's bytes.
pub fn encode_keys(keys: &HandshakeKeyPair) -> Result<Zeroizing<String>, HandshakeKeyError> {
    use base64::Engine as _;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(keys.to_file_bytes()?.as_slice()),
    ))
}

fn decode_keys(text: &str) -> Result<HandshakeKeyPair, HandshakeKeyError> {
    use base64::Engine as _;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| HandshakeKeyError::BadSealedKeys(e.to_string()))?,
    );
    HandshakeKeyPair::from_file_bytes(&bytes)
        .map_err(|e| HandshakeKeyError::BadSealedKeys(e.to_string()))
}

/// The sets a sealed identity holds, signed, as served at `now_ms` (an expired or repeated
/// previous set is not served).
fn sealed_sets(
    material: &IdentityMaterial,
    id: &Id,
    sig: &RsaKeyPair,
    now_ms: u64,
) -> Result<HandshakeKeySets, HandshakeKeyError> {
    let current = decode_keys(&material.handshake)?;
    let previous = match &material.handshake_previous {
        Some((text, expires_at_ms)) if now_ms < *expires_at_ms => {
            let keys = decode_keys(text)?;
            (keys.public() != current.public()).then_some((keys, *expires_at_ms))
        }
        _ => None,
    };
    let previous = match previous {
        Some((keys, expires_at_ms)) => Some(PreviousKeySet {
            set: KeySet::sign(keys, id, sig)?,
            expires_at_ms,
        }),
        None => None,
    };
    Ok(HandshakeKeySets {
        current: KeySet::sign(current, id, sig)?,
        previous,
    })
}

/// How often a server on a shared store re-reads the sealed identity for key changes made
/// through another server.
pub const SEALED_RELOAD: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a running registry checks whether a rotation's overlap has ended.
const OVERLAP_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs for as long as the daemon serves: within a second of an overlap's expiry, drops the
/// previous set ([`HandshakeKeyRing::drop_expired`]: file, sessions, regCred.dat). Sessions
/// stop accepting the set at its expiry to the millisecond either way.
pub async fn end_overlaps(ring: Arc<HandshakeKeyRing>) {
    let mut ticks = tokio::time::interval(OVERLAP_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let expired = ring
            .sets()
            .previous
            .as_ref()
            .is_some_and(|previous| crate::clock::now_ms() >= previous.expires_at_ms);
        if !expired {
            continue;
        }
        let ring = ring.clone();
        let dropped =
            tokio::task::spawn_blocking(move || ring.drop_expired(crate::clock::now_ms())).await;
        match dropped {
            Ok(Ok(true)) => tracing::info!("handshake key overlap over: previous keys dropped"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::error!(%error, "could not drop the expired handshake keys"),
            Err(error) => tracing::error!(%error, "dropping the expired handshake keys stopped"),
        }
    }
}

/// Runs for as long as a daemon on a shared store serves: every [`SEALED_RELOAD`], serves
/// the key sets of the sealed identity if another server changed them
/// ([`HandshakeKeyRing::reload_sealed`]). A store that cannot be reached is logged and tried
/// again at the next tick; the sets served meanwhile stay as they were.
pub async fn follow_sealed(ring: Arc<HandshakeKeyRing>, id: Id, sig: RsaKeyPair) {
    let mut ticks = tokio::time::interval(SEALED_RELOAD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (id, sig) = (Arc::new(id), Arc::new(sig));
    loop {
        ticks.tick().await;
        let (ring, id, sig) = (ring.clone(), id.clone(), sig.clone());
        let reloaded = tokio::task::spawn_blocking(move || {
            ring.reload_sealed(&id, &sig, crate::clock::now_ms())
        })
        .await;
        match reloaded {
            Ok(Ok(true)) => {
                tracing::info!("handshake keys changed by another server: now serving them")
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not re-read the sealed identity"),
            Err(error) => tracing::error!(%error, "re-reading the sealed identity stopped"),
        }
    }
}

/// Loads the current keys from `dir`, or makes and writes them (mode 0600) if the file is
/// missing. New keys only mean clients need the new regCred.dat for xlReg/3; xlReg/2 is
/// unaffected.
fn load_or_create_current(dir: &Path) -> Result<HandshakeKeyPair, HandshakeKeyError> {
    let path = dir.join(HANDSHAKE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            HandshakeKeyPair::from_file_bytes(&bytes)
                .map_err(|source| HandshakeKeyError::BadKeys { path, source })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let keys = HandshakeKeyPair::generate()?;
            write_atomic(&path, &keys.to_file_bytes()?, 0o600)
                .map_err(|source| HandshakeKeyError::KeyFile { path, source })?;
            Ok(keys)
        }
        Err(source) => Err(HandshakeKeyError::KeyFile { path, source }),
    }
}

/// The previous file's bytes for `keys` accepted until `expires_at_ms`.
fn previous_file_bytes(
    keys: &HandshakeKeyPair,
    expires_at_ms: u64,
) -> Result<Zeroizing<Vec<u8>>, HandshakeKeyError> {
    let set = keys.to_file_bytes()?;
    let mut out = Zeroizing::new(Vec::with_capacity(PREVIOUS_MAGIC.len() + 8 + set.len()));
    out.extend_from_slice(PREVIOUS_MAGIC);
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out.extend_from_slice(&set);
    Ok(out)
}

fn write_previous(
    dir: &Path,
    keys: &HandshakeKeyPair,
    expires_at_ms: u64,
) -> Result<(), HandshakeKeyError> {
    let path = dir.join(PREVIOUS_HANDSHAKE_KEY_FILE);
    write_atomic(&path, &previous_file_bytes(keys, expires_at_ms)?, 0o600)
        .map_err(|source| HandshakeKeyError::KeyFile { path, source })
}

/// Deletes the previous key file if there is one, durably (the directory is synced).
fn remove_previous(dir: &Path) -> Result<(), HandshakeKeyError> {
    let path = dir.join(PREVIOUS_HANDSHAKE_KEY_FILE);
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => std::fs::File::open(dir).and_then(|d| d.sync_all()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    removed.map_err(|source| HandshakeKeyError::KeyFile { path, source })
}

/// Reads the previous key file's bytes: the keys and when they expire.
pub fn parse_previous_file(bytes: &[u8]) -> Result<(HandshakeKeyPair, u64), NoiseError> {
    let rest = bytes
        .strip_prefix(PREVIOUS_MAGIC)
        .ok_or(NoiseError::BadKeyFile)?;
    let (expiry, set) = rest
        .split_first_chunk::<8>()
        .ok_or(NoiseError::BadKeyFile)?;
    Ok((
        HandshakeKeyPair::from_file_bytes(set)?,
        u64::from_be_bytes(*expiry),
    ))
}

/// Loads the previous set from `dir`, if it exists, is still accepted at `now_ms` and is not
/// the `current` set; deletes the file otherwise.
fn load_previous(
    dir: &Path,
    current: &HandshakeKeyPair,
    now_ms: u64,
) -> Result<Option<(HandshakeKeyPair, u64)>, HandshakeKeyError> {
    let path = dir.join(PREVIOUS_HANDSHAKE_KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HandshakeKeyError::KeyFile { path, source }),
    };
    let (keys, expires_at_ms) = parse_previous_file(&bytes)
        .map_err(|source| HandshakeKeyError::BadKeys { path, source })?;
    if now_ms >= expires_at_ms || keys.public() == current.public() {
        remove_previous(dir)?;
        return Ok(None);
    }
    Ok(Some((keys, expires_at_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn signer() -> (Id, RsaKeyPair) {
        (
            Id::from_bytes(&[0x42; 32]).unwrap(),
            crate::test_support::fixture_key(0),
        )
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn rotation_keeps_the_old_set_for_the_overlap_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let (id, sig) = signer();
        let ring = HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 1_000).unwrap();
        let before = ring.sets();
        assert!(before.previous.is_none());
        assert!(!dir.path().join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());

        let report = ring.rotate(&id, &sig, 5_000, 2_000).unwrap();
        let after = ring.sets();
        assert_ne!(after.current.fingerprint(), before.current.fingerprint());
        assert_eq!(report.current_x25519, after.current.fingerprint());
        assert_eq!(
            report.previous_x25519,
            Some(before.current.fingerprint()),
            "the old current set is the previous one"
        );
        assert_eq!(report.previous_expires_at_ms, Some(7_000));
        assert_eq!(report.regcred, None);
        assert!(after.previous_at(6_999).is_some());
        assert!(after.previous_at(7_000).is_none());
        for file in [HANDSHAKE_KEY_FILE, PREVIOUS_HANDSHAKE_KEY_FILE] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        assert!(after.current.signed.verifies(&id, sig.public_key()));
        assert!(after
            .previous_at(2_000)
            .unwrap()
            .signed
            .verifies(&id, sig.public_key()));

        // A restart within the overlap serves both sets again...
        let reloaded =
            HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 6_000).unwrap();
        let sets = reloaded.sets();
        assert_eq!(sets.current.fingerprint(), after.current.fingerprint());
        let previous = sets.previous.as_ref().unwrap();
        assert_eq!(previous.set.fingerprint(), before.current.fingerprint());
        assert_eq!(previous.expires_at_ms, 7_000);
        // ...and one after it deletes the previous file.
        let late = HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 7_000).unwrap();
        assert!(late.sets().previous.is_none());
        assert!(!dir.path().join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());
        assert_eq!(
            late.sets().current.fingerprint(),
            after.current.fingerprint()
        );
    }

    #[test]
    fn an_expired_overlap_is_dropped_while_serving_and_a_zero_overlap_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (id, sig) = signer();
        let ring = HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 0).unwrap();
        ring.rotate(&id, &sig, 100, 0).unwrap();
        assert!(!ring.drop_expired(99).unwrap(), "not yet");
        assert!(ring.sets().previous.is_some());
        assert!(ring.drop_expired(100).unwrap());
        assert!(ring.sets().previous.is_none());
        assert!(!dir.path().join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());
        assert!(!ring.drop_expired(200).unwrap(), "nothing left to drop");

        // A second rotation during an overlap replaces the previous set; --overlap 0
        // deletes it at once.
        ring.rotate(&id, &sig, 1_000, 300).unwrap();
        assert!(dir.path().join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());
        let report = ring.rotate(&id, &sig, 0, 400).unwrap();
        assert_eq!(report.previous_x25519, None);
        assert!(ring.sets().previous.is_none());
        assert!(!dir.path().join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());
    }

    #[test]
    fn a_crash_between_the_two_writes_leaves_the_old_keys_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (id, sig) = signer();
        let ring = HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 0).unwrap();
        let current = ring.sets().current.clone();
        // The previous file is written first; the process dies before the new current one.
        write_previous(dir.path(), &current.keys, 10_000).unwrap();
        let reloaded = HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 1).unwrap();
        assert_eq!(reloaded.sets().current.fingerprint(), current.fingerprint());
        assert!(
            reloaded.sets().previous.is_none(),
            "the duplicate is tidied"
        );
        assert!(!dir.path().join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());
    }

    #[test]
    fn a_damaged_previous_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (id, sig) = signer();
        HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 0).unwrap();
        let path = dir.path().join(PREVIOUS_HANDSHAKE_KEY_FILE);
        for bytes in [
            b"not a key file".to_vec(),
            PREVIOUS_MAGIC.to_vec(),
            [PREVIOUS_MAGIC, &[0u8; 8][..], &b"short"[..]].concat(),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            assert!(matches!(
                HandshakeKeyRing::load_or_create(Some(dir.path()), &id, &sig, 0),
                Err(HandshakeKeyError::BadKeys { .. })
            ));
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn an_ephemeral_registry_cannot_rotate() {
        let (id, sig) = signer();
        let ring = HandshakeKeyRing::load_or_create(None, &id, &sig, 0).unwrap();
        assert!(matches!(
            ring.rotate(&id, &sig, 0, 0),
            Err(HandshakeKeyError::NoDataDir)
        ));
    }
}
