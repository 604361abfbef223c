//! The registry's own identity and the state its sessions share.
//!
//! This module owns:
//! - [`RegistryIdentity`]: the registry's name, ID, two RSA keys and its static xlReg/3
//!   handshake keys. The RSA keys live in the data directory as PKCS#8 PEM files of mode 0600
//!   (`registry-comms.pem`, `registry-sig.pem`), the handshake keys (X25519 and ML-KEM-768)
//!   in `registry-handshake.key` (mode 0600; with the previous set during a rotation's
//!   overlap, see [`crate::handshake_keys`]); name and ID live in the store. First start
//!   creates them; later starts load them. A registry from before xlReg/3 gets its handshake
//!   keys at its next start. On a shared store (etcd) every key lives in the store instead,
//!   sealed under the operator's secret ([`RegistryIdentity::load_or_create_sealed`],
//!   [`crate::sealed_identity`]), and no key file is written.
//! - [`Registry`]: what every session of a running registry shares: the store, as the
//!   port's trait object (`Arc<dyn Backend>`, whichever backend the daemon opened; it also
//!   tells GetCluster waits when a cluster changes), and the hello decryptor.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::{CryptoError, HelloDecryptor, NoiseError, RsaKeyPair, RSA_BITS};
use crate::handshake_keys::{HandshakeKeyError, HandshakeKeyRing, RotationReport};
use crate::id::Id;
use crate::regcred::{write_atomic, RegCred};
use crate::sealed_identity::{
    IdentityMaterial, IdentitySecret, SealError, SealedIdentity, SealedSlot,
};
use crate::store::{AdminStore, Backend, RegistryMeta, StorageError};

/// File name of the registry's comms (hello decryption) key in the data directory.
pub const COMMS_KEY_FILE: &str = "registry-comms.pem";
/// File name of the registry's signing key in the data directory.
pub const SIG_KEY_FILE: &str = "registry-sig.pem";
pub use crate::handshake_keys::HANDSHAKE_KEY_FILE;
/// The registry name used when none is given.
pub const DEFAULT_NAME: &str = "xlreg";
/// The version written into regCred.dat: the xlreg release.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the registry's identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A key file does not hold a usable key.
    #[error("{path}: {source}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Why the key is unusable.
        source: CryptoError,
    },
    /// The store names a registry but its key files are gone.
    #[error("{dir} holds registry {id} but its key file {file} is missing; restore the data directory from a backup")]
    KeysMissing {
        /// The data directory.
        dir: PathBuf,
        /// The registry ID in the store.
        id: String,
        /// The missing file.
        file: &'static str,
    },
    /// Key generation or encoding failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The handshake key files could not be read, written or used.
    #[error(transparent)]
    HandshakeKeys(#[from] HandshakeKeyError),
    /// Handshake key generation failed.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// The sealed identity could not be read, opened or created (a wrong secret included).
    #[error(transparent)]
    Sealed(#[from] SealError),
    /// The sealed identity is not the registry the store names.
    #[error(
        "the store holds registry {stored} but the sealed identity is registry {sealed}: the          store and its identity come from different registries"
    )]
    IdentityMismatch {
        /// The registry ID in the store's metadata.
        stored: String,
        /// The registry ID in the sealed identity.
        sealed: String,
    },
    /// The sealed identity holds a value that cannot be used.
    #[error("the sealed identity's {field} is unusable: {problem}")]
    BadSealed {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// Who the registry is: its name, ID and keys.
#[derive(Debug, Clone)]
pub struct RegistryIdentity {
    /// The registry's name (shown in regCred.dat).
    pub name: String,
    /// The registry's node ID.
    pub id: Id,
    /// The comms key: clients encrypt their hello to it.
    pub comms: RsaKeyPair,
    /// The signing key (published in regCred.dat).
    pub sig: RsaKeyPair,
    /// The static xlReg/3 handshake key sets (current, and previous during an overlap),
    /// their public halves signed by `sig`.
    pub handshake: Arc<HandshakeKeyRing>,
}

impl RegistryIdentity {
    /// Loads the identity kept in `data_dir` and `store` (through its admin port, so any
    /// backend), creating whatever is missing on a first start. With no `data_dir` (an
    /// ephemeral registry) the keys live in memory only. A `name` that differs from the
    /// stored one renames the registry.
    pub fn load_or_create(
        store: &dyn AdminStore,
        data_dir: Option<&Path>,
        name: Option<&str>,
        now_ms: u64,
    ) -> Result<RegistryIdentity, RegistryError> {
        let meta = store.registry_meta()?;
        let (comms, sig) = match data_dir {
            None => (
                RsaKeyPair::generate(RSA_BITS)?,
                RsaKeyPair::generate(RSA_BITS)?,
            ),
            Some(dir) => (
                load_or_create_key(dir, COMMS_KEY_FILE, meta.as_ref())?,
                load_or_create_key(dir, SIG_KEY_FILE, meta.as_ref())?,
            ),
        };
        let meta = settle_meta(store, meta, name, || RegistryMeta {
            name: name.unwrap_or(DEFAULT_NAME).to_string(),
            id: Id::random(&mut rand::rng()),
            created_at_ms: now_ms,
        })?;
        let handshake = HandshakeKeyRing::load_or_create(data_dir, &meta.id, &sig, now_ms)?;
        Ok(RegistryIdentity {
            name: meta.name,
            id: meta.id,
            comms,
            sig,
            handshake: Arc::new(handshake),
        })
    }

    /// Loads the identity sealed in `slot` (a shared store: etcd), or creates it there with
    /// a put-if-absent on the first start of the first server, so that a race of first
    /// starts yields one identity. The name and ID also go into the store's metadata (if it
    /// has none yet: the loser of the race writes the winner's, the same), where a `name`
    /// that differs renames the registry as on sled. A store whose metadata names a
    /// registry but which has no sealed identity (rebuilt from an export, which never
    /// carries private keys) gets fresh keys for that registry.
    pub fn load_or_create_sealed(
        store: &dyn AdminStore,
        slot: Box<dyn SealedSlot>,
        secret: IdentitySecret,
        name: Option<&str>,
        now_ms: u64,
    ) -> Result<(RegistryIdentity, Arc<SealedIdentity>), RegistryError> {
        let meta = store.registry_meta()?;
        let (sealed, material) = SealedIdentity::load_or_create(slot, secret, || {
            let meta = meta.clone().unwrap_or_else(|| RegistryMeta {
                name: name.unwrap_or(DEFAULT_NAME).to_string(),
                id: Id::random(&mut rand::rng()),
                created_at_ms: now_ms,
            });
            fresh_material(&meta)
        })?;
        let sealed = Arc::new(sealed);
        let id = Id::from_hex(&material.id).map_err(|e| RegistryError::BadSealed {
            field: "ID",
            problem: e.to_string(),
        })?;
        let key = |field: &'static str, pem: &str| {
            RsaKeyPair::from_pem(pem).map_err(|e| RegistryError::BadSealed {
                field,
                problem: e.to_string(),
            })
        };
        let comms = key("comms key", &material.comms_pem)?;
        let sig = key("signing key", &material.sig_pem)?;
        if let Some(meta) = meta.as_ref().filter(|meta| meta.id != id) {
            return Err(RegistryError::IdentityMismatch {
                stored: meta.id.to_hex(),
                sealed: id.to_hex(),
            });
        }
        let meta = settle_meta(store, meta, name, || RegistryMeta {
            name: name.unwrap_or(&material.name).to_string(),
            id: id.clone(),
            created_at_ms: material.created_at_ms,
        })?;
        let handshake =
            HandshakeKeyRing::sealed(sealed.clone(), &material, &meta.id, &sig, now_ms)?;
        let identity = RegistryIdentity {
            name: meta.name,
            id: meta.id,
            comms,
            sig,
            handshake: Arc::new(handshake),
        };
        Ok((identity, sealed))
    }

    /// Everything this identity is, private keys included, as it is sealed for a shared
    /// store (`xlreg admin migrate`): the key sets served at `now_ms`.
    pub fn material(
        &self,
        created_at_ms: u64,
        now_ms: u64,
    ) -> Result<IdentityMaterial, RegistryError> {
        let sets = self.handshake.sets();
        let encode = crate::handshake_keys::encode_keys;
        let previous = match &sets.previous {
            Some(previous) if now_ms < previous.expires_at_ms => Some((
                encode(&previous.set.keys)?.to_string(),
                previous.expires_at_ms,
            )),
            _ => None,
        };
        Ok(IdentityMaterial {
            name: self.name.clone(),
            id: self.id.to_hex(),
            created_at_ms,
            comms_pem: self.comms.to_pkcs8_pem()?.to_string(),
            sig_pem: self.sig.to_pkcs8_pem()?.to_string(),
            handshake: encode(&sets.current.keys)?.to_string(),
            handshake_previous: previous,
        })
    }

    /// `xlreg admin rotate-handshake-keys`: new static handshake keys; the old ones stay
    /// accepted for `overlap_ms` ([`HandshakeKeyRing::rotate`]).
    pub fn rotate_handshake_keys(
        &self,
        overlap_ms: u64,
        now_ms: u64,
    ) -> Result<RotationReport, RegistryError> {
        Ok(self
            .handshake
            .rotate(&self.id, &self.sig, overlap_ms, now_ms)?)
    }

    /// The credentials clients need to reach and authenticate this registry at `endpoints`.
    pub fn regcred(&self, endpoints: Vec<String>) -> RegCred {
        let mut cred = RegCred {
            name: self.name.clone(),
            id: self.id.clone(),
            comms_key: self.comms.public_key().clone(),
            sig_key: self.sig.public_key().clone(),
            endpoints,
            version: VERSION.to_string(),
            handshake: None,
            handshake_previous: None,
        };
        self.handshake.fill(&mut cred, crate::clock::now_ms());
        cred
    }
}

/// The registry's metadata: `stored` renamed to `name` if that differs, or `fresh()` if the
/// store has none yet; written and flushed if it changed.
fn settle_meta(
    store: &dyn AdminStore,
    stored: Option<RegistryMeta>,
    name: Option<&str>,
    fresh: impl FnOnce() -> RegistryMeta,
) -> Result<RegistryMeta, RegistryError> {
    let meta = match stored {
        Some(mut meta) => {
            match name.filter(|n| *n != meta.name) {
                Some(name) => meta.name = name.to_string(),
                None => return Ok(meta),
            }
            meta
        }
        None => fresh(),
    };
    store.set_registry_meta(&meta)?;
    store.flush_blocking()?;
    Ok(meta)
}

/// A new identity for the registry `meta` names: fresh RSA and handshake keys.
fn fresh_material(meta: &RegistryMeta) -> Result<IdentityMaterial, RegistryError> {
    let comms = RsaKeyPair::generate(RSA_BITS)?;
    let sig = RsaKeyPair::generate(RSA_BITS)?;
    let handshake = crate::crypto::HandshakeKeyPair::generate()?;
    Ok(IdentityMaterial {
        name: meta.name.clone(),
        id: meta.id.to_hex(),
        created_at_ms: meta.created_at_ms,
        comms_pem: comms.to_pkcs8_pem()?.to_string(),
        sig_pem: sig.to_pkcs8_pem()?.to_string(),
        handshake: crate::handshake_keys::encode_keys(&handshake)?.to_string(),
        handshake_previous: None,
    })
}

/// Writes the private keys of a sealed identity into `dir` as a sled registry keeps them
/// (`xlreg admin migrate --to-data-dir`): the two RSA key files and the handshake key files,
/// each mode 0600. Fails if an RSA key file exists already.
pub fn write_key_files(
    dir: &Path,
    material: &IdentityMaterial,
    now_ms: u64,
) -> Result<(), RegistryError> {
    for (file, pem) in [
        (COMMS_KEY_FILE, &material.comms_pem),
        (SIG_KEY_FILE, &material.sig_pem),
    ] {
        let path = dir.join(file);
        RsaKeyPair::from_pem(pem).map_err(|source| RegistryError::BadKey {
            path: path.clone(),
            source,
        })?;
        if path.exists() {
            return Err(RegistryError::KeyFile {
                path,
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        write_atomic(&path, pem.as_bytes(), 0o600)
            .map_err(|source| RegistryError::KeyFile { path, source })?;
    }
    crate::handshake_keys::write_sealed_to_files(dir, material, now_ms)?;
    Ok(())
}

/// Creates fresh key files in `dir` for a registry whose name and ID are already in its
/// store but whose private keys are not to be had: one rebuilt from an export, which never
/// carries private keys. Fails if either file already exists.
pub fn create_key_files(dir: &Path) -> Result<(), RegistryError> {
    for file in [COMMS_KEY_FILE, SIG_KEY_FILE] {
        let path = dir.join(file);
        if path.exists() {
            return Err(RegistryError::KeyFile {
                path,
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        load_or_create_key(dir, file, None)?;
    }
    Ok(())
}

fn load_or_create_key(
    dir: &Path,
    file: &'static str,
    meta: Option<&RegistryMeta>,
) -> Result<RsaKeyPair, RegistryError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            RsaKeyPair::from_pem(&pem).map_err(|source| RegistryError::BadKey { path, source })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(meta) = meta {
                return Err(RegistryError::KeysMissing {
                    dir: dir.to_path_buf(),
                    id: meta.id.to_hex(),
                    file,
                });
            }
            let key = RsaKeyPair::generate(RSA_BITS)?;
            write_atomic(&path, key.to_pkcs8_pem()?.as_bytes(), 0o600)
                .map_err(|source| RegistryError::KeyFile { path, source })?;
            Ok(key)
        }
        Err(source) => Err(RegistryError::KeyFile { path, source }),
    }
}

/// What every session of a running registry shares.
#[derive(Debug)]
pub struct Registry {
    /// The store: sessions use its session port, admin requests its admin port, the daemon
    /// its health and final flush.
    pub store: Arc<dyn Backend>,
    /// The registry's identity.
    pub identity: RegistryIdentity,
    /// The comms key on the fast decryption path.
    pub decryptor: Arc<HelloDecryptor>,
}

impl Registry {
    /// Assembles a registry from its store and identity.
    pub fn new(
        store: Arc<dyn Backend>,
        identity: RegistryIdentity,
    ) -> Result<Registry, RegistryError> {
        let decryptor = Arc::new(identity.comms.hello_decryptor()?);
        Ok(Registry {
            store,
            identity,
            decryptor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn an_identity_moves_to_sealed_material_and_back_to_key_files_unchanged() {
        let from = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let identity =
            RegistryIdentity::load_or_create(&store, Some(from.path()), Some("reg"), 1).unwrap();
        // A rotation in its overlap: both sets must make the trip.
        identity.rotate_handshake_keys(60_000, 10).unwrap();
        let material = identity.material(1, 20).unwrap();
        assert!(material.handshake_previous.is_some());

        let to = tempfile::tempdir().unwrap();
        write_key_files(to.path(), &material, 20).unwrap();
        let moved = RegistryIdentity::load_or_create(&store, Some(to.path()), None, 20).unwrap();
        assert_eq!(moved.id, identity.id);
        assert_eq!(moved.comms.public_key(), identity.comms.public_key());
        assert_eq!(moved.sig.public_key(), identity.sig.public_key());
        let (before, after) = (identity.handshake.sets(), moved.handshake.sets());
        assert_eq!(after.current.keys.public(), before.current.keys.public());
        let previous = |sets: &crate::handshake_keys::HandshakeKeySets| {
            sets.previous
                .as_ref()
                .map(|p| (p.set.keys.public().clone(), p.expires_at_ms))
        };
        assert_eq!(previous(&after), previous(&before));
        // Key files are the owner's only, and are not overwritten.
        use std::os::unix::fs::PermissionsExt as _;
        for file in [COMMS_KEY_FILE, SIG_KEY_FILE, HANDSHAKE_KEY_FILE] {
            let mode = std::fs::metadata(to.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        assert!(matches!(
            write_key_files(to.path(), &material, 20),
            Err(RegistryError::KeyFile { .. })
        ));
    }
}
