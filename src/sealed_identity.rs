//! The registry's identity sealed for a store every server shares (etcd, docs/ha.md).
//!
//! This module owns:
//! - [`IdentitySecret`]: the operator's secret, read from `--identity-secret-file` (mode 0600
//!   or stricter, at least [`SECRET_MIN_LEN`] bytes);
//! - [`IdentityMaterial`]: everything that makes the registry itself: name, ID, creation
//!   time, the two RSA private keys and the xlReg/3 handshake key ring (the current set and,
//!   during a rotation's overlap, the previous one and its expiry);
//! - the sealed form: `"xlreg sealed identity v1\n" || salt (32) || nonce (12) ||
//!   AES-256-GCM(key, nonce, JSON of the material)`, where `key = HKDF-SHA256(ikm = secret,
//!   salt, info = "xlreg identity seal v1")`. A fresh random salt per seal gives every sealed
//!   copy its own key, so nonces never repeat under a key;
//! - [`SealedSlot`], the small port a shared store offers for the one sealed value
//!   (read with a version, put-if-absent, compare-and-replace), and [`SealedIdentity`], which
//!   creates, loads and updates the material through it: the first server to start creates
//!   the identity with a put-if-absent, every other one (including the losers of a race of
//!   first starts) loads the winner's; a key rotation replaces it only if nobody changed it
//!   since it was read.
//!
//! A sled registry keeps its key files exactly as before (crate::registry); this module is
//! used only when the store is shared.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{self, CryptoError};

/// The shortest identity secret accepted, in bytes.
pub const SECRET_MIN_LEN: usize = 32;
/// How a sealed identity begins.
const MAGIC: &[u8] = b"xlreg sealed identity v1\n";
/// HKDF's `info`: binds the derived key to this use and format.
const HKDF_INFO: &[u8] = b"xlreg identity seal v1";
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// How often an update retries after losing the compare to another server's update.
const UPDATE_ATTEMPTS: usize = 8;

/// Why the sealed identity could not be read, opened, created or updated.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The secret file could not be read (missing, unreadable).
    #[error("identity secret file {path}: {source}")]
    SecretFile {
        /// The file named by `--identity-secret-file`.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The secret file can be read by others than its owner.
    #[error(
        "identity secret file {path} has mode {mode:o}: it must be readable by its owner only \
         (chmod 600 {path})"
    )]
    SecretMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret is too short to be a key.
    #[error(
        "identity secret file {path} holds {len} bytes; at least {SECRET_MIN_LEN} are needed \
         (make one with: head -c 32 /dev/urandom | base64 > {path})"
    )]
    SecretTooShort {
        /// The file.
        path: PathBuf,
        /// Its length, trailing whitespace removed.
        len: usize,
    },
    /// The stored identity does not open under this secret.
    #[error(
        "the registry identity stored at {place} does not open with this identity secret: \
         every server of a registry must be given the same --identity-secret-file (the one \
         the identity was created with)"
    )]
    WrongSecret {
        /// Where the sealed identity lives (an etcd key).
        place: String,
    },
    /// The stored value is not a sealed identity of a format this release reads.
    #[error("the value at {place} is not a sealed registry identity: {problem}")]
    Damaged {
        /// Where it lives.
        place: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The shared store failed or could not be reached.
    #[error("the sealed identity at {place}: {problem}")]
    Store {
        /// Where it lives.
        place: String,
        /// What went wrong.
        problem: String,
    },
    /// Other servers kept changing the identity while this one tried to update it.
    #[error("the sealed identity at {place} kept changing under this update; try again")]
    Contended {
        /// Where it lives.
        place: String,
    },
    /// Deriving the key failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The operator's identity secret, wiped from memory when dropped.
pub struct IdentitySecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for IdentitySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentitySecret(..)")
    }
}

impl IdentitySecret {
    /// Reads the secret from `path`: the file must exist, be readable by its owner only
    /// (no group or other permission bits) and hold at least [`SECRET_MIN_LEN`] bytes once
    /// trailing whitespace (a final newline) is removed.
    pub fn read(path: &Path) -> Result<IdentitySecret, SealError> {
        use std::os::unix::fs::PermissionsExt as _;
        let file_error = |source| SealError::SecretFile {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(file_error)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::SecretMode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut bytes = Zeroizing::new(std::fs::read(path).map_err(file_error)?);
        let len = bytes.trim_ascii_end().len();
        bytes.truncate(len);
        if len < SECRET_MIN_LEN {
            return Err(SealError::SecretTooShort {
                path: path.to_path_buf(),
                len,
            });
        }
        Ok(IdentitySecret(bytes))
    }

    /// A secret held in memory (tests and tools that already have one).
    pub fn from_bytes(bytes: &[u8]) -> IdentitySecret {
        IdentitySecret(Zeroizing::new(bytes.to_vec()))
    }
}

/// Everything that makes the registry itself, private keys included: what is sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityMaterial {
    /// The registry's name.
    pub name: String,
    /// The registry's ID, 64 hex digits.
    pub id: String,
    /// When the registry was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The comms key, PKCS#8 PEM.
    pub comms_pem: String,
    /// The signing key, PKCS#8 PEM.
    pub sig_pem: String,
    /// The current handshake key set, in its key file's bytes, base64.
    pub handshake: String,
    /// The previous handshake key set during a rotation's overlap (base64 of its key file's
    /// bytes) and when it stops being accepted (milliseconds since the Unix epoch).
    pub handshake_previous: Option<(String, u64)>,
}

impl fmt::Debug for IdentityMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityMaterial")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for IdentityMaterial {
    fn drop(&mut self) {
        self.comms_pem.zeroize();
        self.sig_pem.zeroize();
        self.handshake.zeroize();
        if let Some((previous, _)) = &mut self.handshake_previous {
            previous.zeroize();
        }
    }
}

/// Seals `material` under `secret`.
pub fn seal(material: &IdentityMaterial, secret: &IdentitySecret) -> Result<Vec<u8>, SealError> {
    let salt: [u8; SALT_LEN] = crypto::random_array();
    let nonce: [u8; NONCE_LEN] = crypto::random_array();
    let key = crypto::hkdf_sha256_key(&secret.0, &salt, HKDF_INFO)?;
    // Serialising a struct of strings and integers cannot fail.
    let plaintext = Zeroizing::new(serde_json::to_vec(material).unwrap_or_default());
    let mut out = Vec::with_capacity(MAGIC.len() + SALT_LEN + NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&crypto::gcm_seal(&key, &nonce, &plaintext));
    Ok(out)
}

/// Opens a sealed identity read from `place` (named in errors) with `secret`.
pub fn open(
    sealed: &[u8],
    secret: &IdentitySecret,
    place: &str,
) -> Result<IdentityMaterial, SealError> {
    let damaged = |problem: &str| SealError::Damaged {
        place: place.to_string(),
        problem: problem.to_string(),
    };
    let rest = sealed
        .strip_prefix(MAGIC)
        .ok_or_else(|| damaged("it does not begin \"xlreg sealed identity v1\""))?;
    let (salt, rest) = rest
        .split_first_chunk::<SALT_LEN>()
        .ok_or_else(|| damaged("too short"))?;
    let (nonce, ciphertext) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or_else(|| damaged("too short"))?;
    let key = crypto::hkdf_sha256_key(&secret.0, salt, HKDF_INFO)?;
    let plaintext =
        crypto::gcm_open(&key, nonce, ciphertext).map_err(|_| SealError::WrongSecret {
            place: place.to_string(),
        })?;
    serde_json::from_slice(&plaintext).map_err(|e| damaged(&format!("its contents: {e}")))
}

/// A failure of the shared store holding the sealed identity, in its own words.
#[derive(Debug)]
pub struct SlotError(pub String);

/// The one value a shared store keeps for the sealed identity. Versions change with every
/// write (etcd: the key's `mod_revision`).
pub trait SealedSlot: Send + Sync + fmt::Debug {
    /// Where the value lives, for messages (`etcd key /xlreg/identity`).
    fn place(&self) -> String;
    /// The sealed value and its version, or `None` if there is none yet.
    fn read(&self) -> Result<Option<(Vec<u8>, u64)>, SlotError>;
    /// Stores `sealed` if there is no value yet (one transaction). True if it was stored,
    /// false if a value was there already (left as it is).
    fn create(&self, sealed: &[u8]) -> Result<bool, SlotError>;
    /// Replaces the value with `sealed` if its version is still `version` (one
    /// transaction). The new version if it was replaced, `None` if the value had changed.
    fn replace(&self, version: u64, sealed: &[u8]) -> Result<Option<u64>, SlotError>;
}

/// The identity as kept in a [`SealedSlot`], with the secret that opens it.
#[derive(Debug)]
pub struct SealedIdentity {
    slot: Box<dyn SealedSlot>,
    secret: IdentitySecret,
    /// The version last read or written.
    version: Mutex<u64>,
}

impl SealedIdentity {
    /// Loads the identity from `slot`, or, if there is none, creates it from `make` with a
    /// put-if-absent; a server that loses that race loads the winner's identity instead of
    /// its own. Fails with [`SealError::WrongSecret`] if the stored identity does not open
    /// with `secret`.
    pub fn load_or_create<E: From<SealError>>(
        slot: Box<dyn SealedSlot>,
        secret: IdentitySecret,
        make: impl FnOnce() -> Result<IdentityMaterial, E>,
    ) -> Result<(SealedIdentity, IdentityMaterial), E> {
        let sealed = SealedIdentity {
            slot,
            secret,
            version: Mutex::new(0),
        };
        if let Some(found) = sealed.read()? {
            return Ok((sealed, found));
        }
        let material = make()?;
        let created = sealed
            .slot
            .create(&seal(&material, &sealed.secret)?)
            .map_err(|e| sealed.store_error(e))?;
        if created {
            tracing::info!(place = %sealed.slot.place(), "registry identity created and sealed");
        } else {
            tracing::info!(place = %sealed.slot.place(), "another server created the registry identity first; using it");
        }
        // Read back either way: the version to compare later updates against, and (having
        // lost the race) the winner's identity.
        let stored = sealed.read()?.ok_or_else(|| SealError::Store {
            place: sealed.slot.place(),
            problem: "the identity was created but is gone again".to_string(),
        })?;
        Ok((sealed, stored))
    }

    /// The stored identity, opened, if there is one; remembers its version.
    pub fn read(&self) -> Result<Option<IdentityMaterial>, SealError> {
        let Some((bytes, version)) = self.slot.read().map_err(|e| self.store_error(e))? else {
            return Ok(None);
        };
        let material = open(&bytes, &self.secret, &self.slot.place())?;
        *self.lock_version() = version;
        Ok(Some(material))
    }

    /// The stored identity if it changed since it was last read or written here.
    pub fn changed(&self) -> Result<Option<IdentityMaterial>, SealError> {
        let known = *self.lock_version();
        match self.slot.read().map_err(|e| self.store_error(e))? {
            Some((_, version)) if version == known => Ok(None),
            Some(_) => self.read(),
            None => Err(SealError::Store {
                place: self.slot.place(),
                problem: "the registry identity was deleted".to_string(),
            }),
        }
    }

    /// Applies `change` to the stored identity and stores the result, if nobody changed it
    /// in between (else reads it again and reapplies `change`). Returns what was stored.
    pub fn update(
        &self,
        mut change: impl FnMut(&mut IdentityMaterial) -> Result<(), SealError>,
    ) -> Result<IdentityMaterial, SealError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let (bytes, version) = self
                .slot
                .read()
                .map_err(|e| self.store_error(e))?
                .ok_or_else(|| SealError::Store {
                    place: self.slot.place(),
                    problem: "the registry identity was deleted".to_string(),
                })?;
            let mut material = open(&bytes, &self.secret, &self.slot.place())?;
            change(&mut material)?;
            let sealed = seal(&material, &self.secret)?;
            let replaced = self
                .slot
                .replace(version, &sealed)
                .map_err(|e| self.store_error(e))?;
            if let Some(version) = replaced {
                *self.lock_version() = version;
                return Ok(material);
            }
        }
        Err(SealError::Contended {
            place: self.slot.place(),
        })
    }

    fn lock_version(&self) -> std::sync::MutexGuard<'_, u64> {
        self.version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store_error(&self, error: SlotError) -> SealError {
        SealError::Store {
            place: self.slot.place(),
            problem: error.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn material() -> IdentityMaterial {
        IdentityMaterial {
            name: "xlreg".into(),
            id: "ab".repeat(32),
            created_at_ms: 7,
            comms_pem: "comms".into(),
            sig_pem: "sig".into(),
            handshake: "aGFuZHNoYWtl".into(),
            handshake_previous: Some(("cHJldmlvdXM=".into(), 99)),
        }
    }

    #[test]
    fn a_sealed_identity_opens_with_its_secret_only() {
        let secret = IdentitySecret::from_bytes(&[1; 32]);
        let sealed = seal(&material(), &secret).unwrap();
        assert_eq!(open(&sealed, &secret, "here").unwrap(), material());
        // The private keys are not in the clear.
        assert!(!sealed.windows(5).any(|w| w == b"comms"));
        // Two seals of the same material differ (fresh salt and nonce).
        assert_ne!(seal(&material(), &secret).unwrap(), sealed);

        let wrong = IdentitySecret::from_bytes(&[2; 32]);
        let error = open(&sealed, &wrong, "etcd key /x/identity").unwrap_err();
        assert!(matches!(error, SealError::WrongSecret { .. }), "{error:?}");
        assert!(error.to_string().contains("/x/identity"), "{error}");

        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            open(&tampered, &secret, "here"),
            Err(SealError::WrongSecret { .. })
        ));
        assert!(matches!(
            open(b"something else", &secret, "here"),
            Err(SealError::Damaged { .. })
        ));
    }

    #[test]
    fn the_secret_file_must_be_private_long_enough_and_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let missing = IdentitySecret::read(&path).unwrap_err();
        assert!(matches!(missing, SealError::SecretFile { .. }), "{missing}");

        std::fs::write(&path, format!("{}\n", "k".repeat(40))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open_to_all = IdentitySecret::read(&path).unwrap_err();
        assert!(
            open_to_all.to_string().contains("chmod 600"),
            "{open_to_all}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = IdentitySecret::read(&path).unwrap();
        // The trailing newline is not part of the secret.
        assert_eq!(secret.0.as_slice(), "k".repeat(40).as_bytes());

        std::fs::write(&path, "short\n").unwrap();
        let short = IdentitySecret::read(&path).unwrap_err();
        assert!(
            matches!(short, SealError::SecretTooShort { len: 5, .. }),
            "{short}"
        );
    }
}
