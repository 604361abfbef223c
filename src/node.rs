//! A node's identity directory, as made by `xlreg node init` and used by `xlreg register` and
//! `xlreg cluster join --node DIR`.
//!
//! This module owns the directory's layout and the rules for reading and writing it:
//!
//! - `node.json`: `{"name": ..., "endpoints": [...], "id": "<hex>"}`, pretty-printed, mode
//!   0644. `id` is absent (or `null`) until the registry issues one.
//! - `comms.pem` and `sig.pem`: the node's RSA comms and signing keys, PKCS#8 PEM, mode 0600
//!   from the moment they are created.
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of the directory),
//! so a crash leaves either the old file or the new one. `node.json` is written last when an
//! identity is created: a directory holding it holds a complete identity.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError, RsaKeyPair};
use crate::id::Id;
use crate::regcred::write_atomic;
use crate::token::TokenFields;
use crate::validate::{self, Invalid};

/// Name of the file holding the node's name, endpoints and id.
pub const NODE_FILE: &str = "node.json";
/// Name of the file holding the node's comms (encryption) private key.
pub const COMMS_KEY_FILE: &str = "comms.pem";
/// Name of the file holding the node's signing private key.
pub const SIG_KEY_FILE: &str = "sig.pem";
/// Mode of the private key files.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of `node.json`, which holds nothing secret.
pub const NODE_FILE_MODE: u32 = 0o644;
/// Mode of a node directory `create` makes.
pub const NODE_DIR_MODE: u32 = 0o700;

/// Largest file this module reads; real ones are a few kilobytes.
const MAX_FILE_LEN: u64 = 1024 * 1024;

/// Why a node identity could not be created, loaded or updated.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The name or endpoints given for a new identity break the rules.
    #[error("{0}")]
    Invalid(#[source] Invalid),
    /// `create` was pointed at a directory that already holds an identity.
    #[error(
        "{} already holds a node identity ({NODE_FILE}); use it as it is, or pick another \
         directory",
        dir.display()
    )]
    AlreadyExists {
        /// The directory.
        dir: PathBuf,
    },
    /// `create` found a key file but no `node.json`: what is left of an interrupted
    /// `xlreg node init`, or files put there by hand. Never overwritten.
    #[error(
        "{} exists but {NODE_FILE} does not: the directory holds part of a node identity; \
         move the directory aside or remove it, then run `xlreg node init` again",
        path.display()
    )]
    Partial {
        /// The key file found.
        path: PathBuf,
    },
    /// The node directory does not exist.
    #[error(
        "node directory {} does not exist; create a node identity there with `xlreg node init`",
        dir.display()
    )]
    NoDirectory {
        /// The directory.
        dir: PathBuf,
    },
    /// One of the identity's files is missing.
    #[error(
        "{} is missing, so its directory does not hold a complete node identity; create one \
         with `xlreg node init`",
        path.display()
    )]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A file or directory could not be read, written or created.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "create directory", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// `node.json` is not valid.
    #[error(
        "{} is not a valid node file: {problem}; correct it, or create a new identity with \
         `xlreg node init`",
        path.display()
    )]
    BadNodeFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A key file does not hold a usable RSA private key.
    #[error("{} does not hold a usable RSA private key: {source}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with the key.
        source: CryptoError,
    },
    /// A key could not be generated or encoded.
    #[error("cannot make the node's keys: {0}")]
    KeyGeneration(#[source] CryptoError),
}

/// A node's identity: its name, endpoints, registry-issued id and two RSA key pairs.
///
/// `Debug` shows key fingerprints only, never private material.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The member name the node registers under.
    pub name: String,
    /// The node's endpoints, `host:port`, as it registers them.
    pub endpoints: Vec<String>,
    /// The id the registry issued, once the node has registered.
    pub id: Option<Id>,
    /// The key peers and the registry encrypt to.
    pub comms: RsaKeyPair,
    /// The key the node signs with.
    pub sig: RsaKeyPair,
}

/// The JSON form of `node.json`.
#[derive(Serialize, Deserialize)]
struct NodeFile {
    name: String,
    endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NodeError + 'a {
    move |source| NodeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads at most [`MAX_FILE_LEN`] bytes of `path` into a buffer wiped when dropped, with the
/// file's mode. A missing file is [`NodeError::Missing`].
fn read_file(path: &Path) -> Result<(Zeroizing<Vec<u8>>, u32), NodeError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => NodeError::Missing {
            path: path.to_path_buf(),
        },
        _ => io_error("read", path)(e),
    })?;
    let meta = file.metadata().map_err(io_error("read", path))?;
    if meta.len() > MAX_FILE_LEN {
        return Err(NodeError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the file is over {MAX_FILE_LEN} bytes, far larger than it should be"),
            ),
        });
    }
    // Sized up front so private material is not left behind in reallocated buffers.
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.take(MAX_FILE_LEN)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    Ok((bytes, meta.permissions().mode()))
}

/// Reads a private key file; returns the key and whether group or others may read it.
fn read_key(path: &Path) -> Result<(RsaKeyPair, bool), NodeError> {
    let (bytes, mode) = read_file(path)?;
    let bad = |source| NodeError::BadKey {
        path: path.to_path_buf(),
        source,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        bad(CryptoError::BadPrivateKey(
            "the file is not PEM text".into(),
        ))
    })?;
    let key = RsaKeyPair::from_pem(text).map_err(bad)?;
    let bits = key.public_key().bits();
    if !(crypto::MIN_MEMBER_KEY_BITS..=crypto::MAX_MEMBER_KEY_BITS).contains(&bits) {
        return Err(bad(CryptoError::KeySize {
            bits,
            min: crypto::MIN_MEMBER_KEY_BITS,
            max: crypto::MAX_MEMBER_KEY_BITS,
        }));
    }
    Ok((key, mode & 0o077 != 0))
}

fn write_key(path: &Path, key: &RsaKeyPair) -> Result<(), NodeError> {
    let pem = key.to_pkcs8_pem().map_err(NodeError::KeyGeneration)?;
    write_atomic(path, pem.as_bytes(), KEY_FILE_MODE).map_err(io_error("write", path))
}

/// Does `path` exist (as anything, including a dangling symlink)?
fn exists(path: &Path) -> Result<bool, NodeError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("examine", path)(e)),
    }
}

impl NodeIdentity {
    /// The fields a member token signature covers, for a token with `attrs`: this node's
    /// ID (if it has one), name, public keys and endpoints.
    pub fn token_fields(&self, attrs: u64) -> TokenFields<'_> {
        TokenFields {
            id: self.id.as_ref().map(Id::as_bytes),
            name: &self.name,
            attrs,
            comms_key: self.comms.public_key().to_spki_der(),
            sig_key: self.sig.public_key().to_spki_der(),
            endpoints: &self.endpoints,
        }
    }

    /// Makes a new identity in `dir`: checks the name and endpoints, generates the two keys
    /// and writes the three files. Creates `dir` (mode 0700) if it is missing; refuses a
    /// directory that already holds an identity, or part of one.
    pub fn create(
        dir: impl AsRef<Path>,
        name: &str,
        endpoints: &[String],
    ) -> Result<NodeIdentity, NodeError> {
        let dir = dir.as_ref();
        validate::member_name(name).map_err(NodeError::Invalid)?;
        validate::endpoints(endpoints).map_err(NodeError::Invalid)?;

        if exists(&dir.join(NODE_FILE))? {
            return Err(NodeError::AlreadyExists {
                dir: dir.to_path_buf(),
            });
        }
        for file in [COMMS_KEY_FILE, SIG_KEY_FILE] {
            let path = dir.join(file);
            if exists(&path)? {
                return Err(NodeError::Partial { path });
            }
        }

        let comms = RsaKeyPair::generate(crypto::RSA_BITS).map_err(NodeError::KeyGeneration)?;
        let sig = RsaKeyPair::generate(crypto::RSA_BITS).map_err(NodeError::KeyGeneration)?;
        let identity = NodeIdentity {
            name: name.to_string(),
            endpoints: endpoints.to_vec(),
            id: None,
            comms,
            sig,
        };

        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(NODE_DIR_MODE)
            .create(dir)
            .map_err(io_error("create directory", dir))?;
        write_key(&dir.join(COMMS_KEY_FILE), &identity.comms)?;
        write_key(&dir.join(SIG_KEY_FILE), &identity.sig)?;
        // Last: its presence marks a complete identity.
        identity.write_node_file(dir)?;
        Ok(identity)
    }

    /// Reads the identity in `dir`. A key file that group or others may read is accepted
    /// with a warning (it should be mode 0600).
    pub fn load(dir: impl AsRef<Path>) -> Result<NodeIdentity, NodeError> {
        let dir = dir.as_ref();
        match std::fs::metadata(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(NodeError::NoDirectory {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(io_error("examine", dir)(e)),
        }

        let node_path = dir.join(NODE_FILE);
        let (bytes, _) = read_file(&node_path)?;
        let bad = |problem: String| NodeError::BadNodeFile {
            path: node_path.clone(),
            problem,
        };
        let file: NodeFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        validate::member_name(&file.name).map_err(|e| bad(e.to_string()))?;
        validate::endpoints(&file.endpoints).map_err(|e| bad(e.to_string()))?;
        let id = match &file.id {
            None => None,
            Some(hex) => {
                Some(Id::from_hex(hex).map_err(|e| bad(format!("id {hex:?} is not valid: {e}")))?)
            }
        };

        let comms_path = dir.join(COMMS_KEY_FILE);
        let sig_path = dir.join(SIG_KEY_FILE);
        let (comms, comms_loose) = read_key(&comms_path)?;
        let (sig, sig_loose) = read_key(&sig_path)?;
        let loose: Vec<String> = [(comms_loose, &comms_path), (sig_loose, &sig_path)]
            .into_iter()
            .filter(|(is_loose, _)| *is_loose)
            .map(|(_, path)| path.display().to_string())
            .collect();
        if !loose.is_empty() {
            tracing::warn!(
                files = %loose.join(", "),
                "private key files are readable by other users; restrict them with `chmod 600`"
            );
        }

        Ok(NodeIdentity {
            name: file.name,
            endpoints: file.endpoints,
            id,
            comms,
            sig,
        })
    }

    /// Records the id the registry issued in `dir`'s `node.json`, and in `self`.
    pub fn save_id(&mut self, dir: impl AsRef<Path>, id: Id) -> Result<(), NodeError> {
        let dir = dir.as_ref();
        let node_path = dir.join(NODE_FILE);
        // Only update an existing identity; never start one without its keys.
        if !exists(&node_path)? {
            return Err(NodeError::Missing { path: node_path });
        }
        let previous = self.id.replace(id);
        let written = self.write_node_file(dir);
        if written.is_err() {
            self.id = previous;
        }
        written
    }

    /// Gives a node that has no ID yet one of its own, recorded in `dir`'s node.json before
    /// the node first registers, so that every attempt to register (a retry after Error
    /// Unavailable, a closed connection or a registry restart, when the reply was lost but
    /// the registration may have been stored) presents the same ID and finds the node it
    /// may already have made, instead of leaving an orphan record per attempt. The registry
    /// binds an unregistered ID to the presented keys (first use wins: docs/protocol.md).
    /// A node that has an ID keeps it.
    pub fn claim_id(&mut self, dir: impl AsRef<Path>) -> Result<(), NodeError> {
        if self.id.is_some() {
            return Ok(());
        }
        self.save_id(dir, Id::random(&mut rand::rng()))
    }

    fn write_node_file(&self, dir: &Path) -> Result<(), NodeError> {
        let path = dir.join(NODE_FILE);
        let file = NodeFile {
            name: self.name.clone(),
            endpoints: self.endpoints.clone(),
            id: self.id.as_ref().map(Id::to_hex),
        };
        let mut text = serde_json::to_string_pretty(&file).map_err(|e| NodeError::Io {
            action: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        text.push('\n');
        write_atomic(&path, text.as_bytes(), NODE_FILE_MODE).map_err(io_error("write", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn endpoints() -> Vec<String> {
        vec![
            "10.0.0.7:4000".to_string(),
            "node-7.example:4001".to_string(),
        ]
    }

    /// One key generation (two keys) covers every test that needs real keys.
    #[test]
    fn create_load_save_and_refusals() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("node-7");
        let created = NodeIdentity::create(&dir, "node 7", &endpoints()).unwrap();
        assert_eq!(created.id, None);

        // Modes: exact, from creation.
        assert_eq!(mode_of(&dir), NODE_DIR_MODE);
        assert_eq!(mode_of(&dir.join(COMMS_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&dir.join(SIG_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&dir.join(NODE_FILE)), 0o644);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 3, "no temporary files left behind");

        // Round trip.
        let loaded = NodeIdentity::load(&dir).unwrap();
        assert_eq!(loaded.name, "node 7");
        assert_eq!(loaded.endpoints, endpoints());
        assert_eq!(loaded.id, None);
        assert_eq!(loaded.comms.public_key(), created.comms.public_key());
        assert_eq!(loaded.sig.public_key(), created.sig.public_key());
        assert_ne!(loaded.comms.public_key(), loaded.sig.public_key());
        assert_eq!(loaded.comms.public_key().bits(), crypto::RSA_BITS);
        let json = std::fs::read_to_string(dir.join(NODE_FILE)).unwrap();
        assert!(json.contains("\n  \"name\": \"node 7\""), "{json}");
        assert!(!json.contains("\"id\""), "{json}");

        // Debug shows no private material.
        let debug = format!("{loaded:?}");
        assert!(debug.contains(&loaded.comms.public_key().fingerprint()));
        assert!(!debug.contains("PRIVATE"));

        // A second create is refused before any key is generated, and changes nothing.
        let err = NodeIdentity::create(&dir, "other", &endpoints()).unwrap_err();
        assert!(matches!(err, NodeError::AlreadyExists { .. }));
        assert!(
            err.to_string()
                .contains(&format!("{} already holds a node identity", dir.display())),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(dir.join(NODE_FILE)).unwrap(), json);

        // save_id persists, and keeps the rest.
        let mut identity = loaded;
        let id = Id::from_bytes(&[0x5a; 32]).unwrap();
        identity.save_id(&dir, id.clone()).unwrap();
        assert_eq!(identity.id.as_ref(), Some(&id));
        let reloaded = NodeIdentity::load(&dir).unwrap();
        assert_eq!(reloaded.id.as_ref(), Some(&id));
        assert_eq!(reloaded.name, "node 7");
        assert_eq!(reloaded.comms.public_key(), created.comms.public_key());
        assert_eq!(mode_of(&dir.join(NODE_FILE)), 0o644);
        let json = std::fs::read_to_string(dir.join(NODE_FILE)).unwrap();
        assert!(
            json.contains(&format!("\"id\": \"{}\"", id.to_hex())),
            "{json}"
        );

        // A legacy 20-byte id and an explicit null both load.
        let legacy = Id::from_bytes(&[0x11; 20]).unwrap();
        identity.save_id(&dir, legacy.clone()).unwrap();
        assert_eq!(NodeIdentity::load(&dir).unwrap().id, Some(legacy));
        std::fs::write(
            dir.join(NODE_FILE),
            r#"{"name": "node 7", "endpoints": ["10.0.0.7:4000"], "id": null}"#,
        )
        .unwrap();
        assert_eq!(NodeIdentity::load(&dir).unwrap().id, None);

        // save_id into a directory without an identity is refused.
        let empty = top.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(
            identity.save_id(&empty, id.clone()),
            Err(NodeError::Missing { .. })
        ));
        assert!(!empty.join(NODE_FILE).exists());

        // A key file readable by others is accepted (with a warning).
        let comms_path = dir.join(COMMS_KEY_FILE);
        std::fs::set_permissions(&comms_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(NodeIdentity::load(&dir).is_ok());

        // A missing or broken key file is an error naming it.
        let copy = top.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        std::fs::copy(dir.join(NODE_FILE), copy.join(NODE_FILE)).unwrap();
        std::fs::copy(&comms_path, copy.join(COMMS_KEY_FILE)).unwrap();
        let err = NodeIdentity::load(&copy).unwrap_err();
        assert!(matches!(err, NodeError::Missing { .. }));
        let text = err.to_string();
        assert!(
            text.contains(SIG_KEY_FILE) && text.contains("xlreg node init"),
            "{text}"
        );
        std::fs::write(
            copy.join(SIG_KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
        )
        .unwrap();
        let err = NodeIdentity::load(&copy).unwrap_err();
        assert!(matches!(err, NodeError::BadKey { .. }), "{err}");
        assert!(err.to_string().contains(SIG_KEY_FILE), "{err}");
        std::fs::write(copy.join(SIG_KEY_FILE), [0xff, 0x00, 0xfe]).unwrap();
        assert!(matches!(
            NodeIdentity::load(&copy),
            Err(NodeError::BadKey { .. })
        ));

        // create refuses a directory holding keys but no node.json, and leaves them be.
        std::fs::remove_file(copy.join(NODE_FILE)).unwrap();
        let before = std::fs::read(copy.join(COMMS_KEY_FILE)).unwrap();
        let err = NodeIdentity::create(&copy, "node 8", &endpoints()).unwrap_err();
        assert!(matches!(err, NodeError::Partial { .. }), "{err}");
        assert_eq!(std::fs::read(copy.join(COMMS_KEY_FILE)).unwrap(), before);
    }

    #[test]
    fn invalid_name_or_endpoints_refused() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("n");
        let bad_cases: [(&str, Vec<String>); 4] = [
            ("", endpoints()),
            ("a\nb", endpoints()),
            ("ok", vec![]),
            ("ok", vec!["no-port".to_string()]),
        ];
        for (name, eps) in bad_cases {
            let err = NodeIdentity::create(&dir, name, &eps).unwrap_err();
            assert!(matches!(err, NodeError::Invalid(_)), "{err}");
        }
        assert!(!dir.exists(), "nothing is created for invalid input");
    }

    #[test]
    fn missing_directory_or_node_file() {
        let top = tempfile::tempdir().unwrap();
        let err = NodeIdentity::load(top.path().join("absent")).unwrap_err();
        assert!(matches!(err, NodeError::NoDirectory { .. }));
        assert!(err.to_string().contains("xlreg node init"), "{err}");

        let err = NodeIdentity::load(top.path()).unwrap_err();
        assert!(matches!(err, NodeError::Missing { .. }));
        let text = err.to_string();
        assert!(
            text.contains(NODE_FILE) && text.contains("xlreg node init"),
            "{text}"
        );
    }

    #[test]
    fn corrupt_node_file_is_an_error() {
        let top = tempfile::tempdir().unwrap();
        let cases: &[&[u8]] = &[
            b"",
            b"{",
            b"not json",
            b"[1, 2, 3]",
            &[0xff, 0xfe, 0x00],
            br#"{"name": "n"}"#,
            br#"{"name": 7, "endpoints": ["h:1"]}"#,
            br#"{"name": "", "endpoints": ["h:1"]}"#,
            br#"{"name": "n", "endpoints": []}"#,
            br#"{"name": "n", "endpoints": ["h"]}"#,
            br#"{"name": "n", "endpoints": ["h:1"], "id": "zz"}"#,
            br#"{"name": "n", "endpoints": ["h:1"], "id": "abcd"}"#,
            br#"{"name": "n", "endpoints": ["h:1"], "id": 5}"#,
        ];
        for (i, case) in cases.iter().enumerate() {
            let dir = top.path().join(format!("case-{i}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join(NODE_FILE), case).unwrap();
            let err = NodeIdentity::load(&dir).unwrap_err();
            assert!(
                matches!(err, NodeError::BadNodeFile { .. }),
                "case {i}: {err}"
            );
            assert!(err.to_string().contains(NODE_FILE), "case {i}: {err}");
        }
        let deep = "[".repeat(100_000);
        let dir = top.path().join("deep");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(NODE_FILE), deep).unwrap();
        assert!(NodeIdentity::load(&dir).is_err());
    }
}
