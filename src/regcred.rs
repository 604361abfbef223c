//! The registry credentials file, `regCred.dat`.
//!
//! This module owns the file's text format (parsing and writing), shared with the xlReg 1.9 Go
//! registry so that old and new clients can read what either registry writes, and the atomic
//! file write used for it (and for a node's identity files, see [`crate::node`]).
//!
//! The format, lines joined by CRLF:
//!
//! ```text
//! regCred {
//!     Name: <registry name>
//!     ID: <64 hex digits (40 for ids made by Go)>
//!     CommsPubKey: ssh-rsa <base64>
//!     SigPubKey: ssh-rsa <base64>
//!     EndPoints {
//!          TcpEndPoint: <host>:<port>
//!     }
//!     Version: <a.b.c>
//!     HandshakeX25519: <base64 of 32 bytes>        (xlReg/3; these three together or none)
//!     HandshakeMlKem768: <base64 of 1,184 bytes>
//!     HandshakeSig: <base64 RSA signature by the SigPubKey>
//!     HandshakePrevX25519: <base64 of 32 bytes>    (during a key rotation's overlap only;
//!     HandshakePrevMlKem768: <base64 of 1,184 bytes>  these three together or none, and
//!     HandshakePrevSig: <base64 RSA signature>        only after the three above)
//! }
//! ```
//!
//! The three `Handshake` fields carry the registry's static xlReg/3 keys; `HandshakeSig` is
//! RSASSA-PKCS1-v1_5/SHA-256 by the registry's signing key over [`handshake_signed_bytes`],
//! and the parser refuses a file whose signature does not verify. A file without them is an
//! xlReg/2-only file, as every file before xlReg/3 was. The three `HandshakePrev` fields
//! carry the keys the registry rotated away from and still accepts until the overlap ends
//! (`xlreg admin rotate-handshake-keys`), signed the same way; clients dial with the first
//! (current) set, never the previous one.
//!
//! The Go writer ends each key line with `\n\r\n` (the ssh key text carries its own newline),
//! so the parser accepts blank lines, LF or CRLF line ends and whitespace around every line and
//! value. It is otherwise strict: every field exactly once, no unknown fields, at least one
//! endpoint, and every error names the line and the problem.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;

use crate::crypto::{HandshakePublicKeys, PublicKey, RsaKeyPair};
use crate::id::Id;

/// File mode of `regCred.dat`: it holds only public information.
pub const REGCRED_MODE: u32 = 0o644;

/// Largest credentials file [`RegCred::read`] accepts; real ones are about 1.5 KB.
pub const MAX_REGCRED_LEN: u64 = 64 * 1024;

/// Why a credentials file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum RegCredError {
    /// The text is not a well-formed credentials file.
    #[error("registry credentials, line {line}: {problem}")]
    Syntax {
        /// 1-based line number (counting LF-terminated lines) where the problem is.
        line: usize,
        /// What is wrong there.
        problem: String,
    },
    /// A file's text is not a well-formed credentials file.
    #[error("{}, line {line}: {problem}", path.display())]
    File {
        /// The file read.
        path: PathBuf,
        /// 1-based line number (counting LF-terminated lines) where the problem is.
        line: usize,
        /// What is wrong there.
        problem: String,
    },
    /// The file could not be opened or read.
    #[error("cannot read registry credentials {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file is larger than any credentials file could be.
    #[error(
        "{} is over {MAX_REGCRED_LEN} bytes, far larger than a registry credentials file; \
         is it the right file?",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not UTF-8 text.
    #[error("{} is not UTF-8 text, so not a registry credentials file", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// The credentials would not read back as written (no endpoint, a field holding a line
    /// break or surrounding spaces, ...), so the file was not written.
    #[error("refusing to write {}: the file would not read back: {problem}", path.display())]
    Unwritable {
        /// The file that was not written.
        path: PathBuf,
        /// Why the text would not read back.
        problem: String,
    },
    /// The file could not be written.
    #[error("cannot write registry credentials {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// What `regCred.dat` says about a registry: who it is, its public keys and where to dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegCred {
    /// The registry's name (the Go registry calls itself `xlReg`).
    pub name: String,
    /// The registry's node id (20 bytes if made by Go, 32 if made by xlreg).
    pub id: Id,
    /// The key clients encrypt their hello to.
    pub comms_key: PublicKey,
    /// The key the registry signs with.
    pub sig_key: PublicKey,
    /// The registry's endpoints, `host:port`; never empty after parsing.
    pub endpoints: Vec<String>,
    /// The registry's software version, `a.b.c`.
    pub version: String,
    /// The registry's static xlReg/3 keys, signed; `None` in an xlReg/2-only file.
    pub handshake: Option<SignedHandshakeKeys>,
    /// The keys the registry rotated away from, still accepted until the rotation's overlap
    /// ends; only ever present with `handshake`. Clients use `handshake`.
    pub handshake_previous: Option<SignedHandshakeKeys>,
}

/// The registry's static xlReg/3 public keys with the registry's signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHandshakeKeys {
    /// The keys.
    pub keys: HandshakePublicKeys,
    /// RSASSA-PKCS1-v1_5/SHA-256 by the registry's signing key over
    /// [`handshake_signed_bytes`].
    pub signature: Vec<u8>,
}

/// Opens the input of the handshake keys' signature.
pub const HANDSHAKE_SIG_DOMAIN: &[u8] = b"xlReg/3 handshake keys\0";

/// What `HandshakeSig` signs: `"xlReg/3 handshake keys" || 00 || field(registry ID) ||
/// field(X25519 key) || field(ML-KEM-768 key)`, `field(x)` = u32 big-endian length || x.
/// The ID ties the keys to one registry.
pub fn handshake_signed_bytes(id: &Id, keys: &HandshakePublicKeys) -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_SIG_DOMAIN.len() + 1300);
    out.extend_from_slice(HANDSHAKE_SIG_DOMAIN);
    for field in [id.as_bytes(), keys.x25519().as_slice(), keys.ml_kem()] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

impl SignedHandshakeKeys {
    /// Signs `keys` for the registry `id` with its signing key.
    pub fn sign(
        id: &Id,
        keys: HandshakePublicKeys,
        sig: &RsaKeyPair,
    ) -> Result<SignedHandshakeKeys, crate::crypto::CryptoError> {
        let signature = sig.sign_sha256(&handshake_signed_bytes(id, &keys))?;
        Ok(SignedHandshakeKeys { keys, signature })
    }

    /// True if the signature verifies under `sig_key` for the registry `id`.
    pub fn verifies(&self, id: &Id, sig_key: &PublicKey) -> bool {
        sig_key
            .verify_sha256(&handshake_signed_bytes(id, &self.keys), &self.signature)
            .is_ok()
    }
}

impl RegCred {
    /// The protocol versions a client holding this file can speak to the registry: 2, and 3
    /// if the file carries handshake keys.
    pub fn versions(&self) -> Vec<u32> {
        if self.handshake.is_some() {
            vec![2, 3]
        } else {
            vec![2]
        }
    }
}

/// The fields of the `regCred` block, in the order the Go registry writes them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Id,
    CommsPubKey,
    SigPubKey,
    EndPoints,
    Version,
    HandshakeX25519,
    HandshakeMlKem768,
    HandshakeSig,
    HandshakePrevX25519,
    HandshakePrevMlKem768,
    HandshakePrevSig,
}

impl Field {
    const ALL: [Field; 12] = [
        Field::Name,
        Field::Id,
        Field::CommsPubKey,
        Field::SigPubKey,
        Field::EndPoints,
        Field::Version,
        Field::HandshakeX25519,
        Field::HandshakeMlKem768,
        Field::HandshakeSig,
        Field::HandshakePrevX25519,
        Field::HandshakePrevMlKem768,
        Field::HandshakePrevSig,
    ];

    fn label(self) -> &'static str {
        match self {
            Field::Name => "Name",
            Field::Id => "ID",
            Field::CommsPubKey => "CommsPubKey",
            Field::SigPubKey => "SigPubKey",
            Field::EndPoints => "EndPoints",
            Field::Version => "Version",
            Field::HandshakeX25519 => "HandshakeX25519",
            Field::HandshakeMlKem768 => "HandshakeMlKem768",
            Field::HandshakeSig => "HandshakeSig",
            Field::HandshakePrevX25519 => "HandshakePrevX25519",
            Field::HandshakePrevMlKem768 => "HandshakePrevMlKem768",
            Field::HandshakePrevSig => "HandshakePrevSig",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where the parser is in the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `regCred {`.
    Start,
    /// Inside the `regCred` block.
    Body,
    /// Inside the `EndPoints` block.
    EndPoints,
    /// After the closing `}`.
    Done,
}

/// A parse error before it is tied to a file.
struct SyntaxError {
    line: usize,
    problem: String,
}

fn syntax(line: usize, problem: impl Into<String>) -> SyntaxError {
    SyntaxError {
        line,
        problem: problem.into(),
    }
}

/// At most 60 characters of `text`, for quoting a bad line in an error.
fn snippet(text: &str) -> String {
    const LIMIT: usize = 60;
    if text.chars().count() <= LIMIT {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(LIMIT).collect();
        format!("{head:?}...")
    }
}

/// `line` opens a block called `name`: `name {`, with any whitespace before the brace.
fn opens_block(line: &str, name: &str) -> bool {
    line.strip_suffix('{').map(str::trim_end) == Some(name)
}

/// A version is 1 to 4 dot-separated decimal numbers, each 0..=255 (the Go registry packs
/// them into the bytes of a u32).
fn valid_version(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    (1..=4).contains(&parts.len())
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && part.parse::<u8>().is_ok()
        })
}

/// Values collected while parsing, each with the line it came from.
#[derive(Default)]
struct Collected {
    seen: [Option<usize>; 12],
    name: Option<String>,
    id: Option<Id>,
    comms_key: Option<PublicKey>,
    sig_key: Option<PublicKey>,
    endpoints: Vec<String>,
    version: Option<String>,
    /// The current set's X25519 key, ML-KEM key and signature, as decoded.
    handshake: [Option<Vec<u8>>; 3],
    /// The previous set's, likewise.
    handshake_previous: [Option<Vec<u8>>; 3],
}

impl Collected {
    /// Records that `field` appears on `line`, refusing a second appearance.
    fn mark(&mut self, field: Field, line: usize) -> Result<(), SyntaxError> {
        let slot = &mut self.seen[field.index()];
        if let Some(first) = *slot {
            return Err(syntax(
                line,
                format!(
                    "duplicate {} field (first given on line {first}); each field appears once",
                    field.label()
                ),
            ));
        }
        *slot = Some(line);
        Ok(())
    }

    fn set(&mut self, field: Field, value: &str, line: usize) -> Result<(), SyntaxError> {
        self.mark(field, line)?;
        if value.is_empty() {
            return Err(syntax(
                line,
                format!("{} field has no value", field.label()),
            ));
        }
        match field {
            Field::Name => self.name = Some(value.to_string()),
            Field::Id => {
                let id = Id::from_hex(value).map_err(|e| {
                    syntax(
                        line,
                        format!("ID {} is not a valid id: {e}", snippet(value)),
                    )
                })?;
                self.id = Some(id);
            }
            Field::CommsPubKey | Field::SigPubKey => {
                let key = PublicKey::from_ssh(value).map_err(|e| {
                    syntax(
                        line,
                        format!("{} is not a usable ssh-rsa public key: {e}", field.label()),
                    )
                })?;
                if field == Field::CommsPubKey {
                    self.comms_key = Some(key);
                } else {
                    self.sig_key = Some(key);
                }
            }
            Field::Version => {
                if !valid_version(value) {
                    return Err(syntax(
                        line,
                        format!(
                            "Version {} is not a version number such as 1.9.24",
                            snippet(value)
                        ),
                    ));
                }
                self.version = Some(value.to_string());
            }
            Field::HandshakeX25519
            | Field::HandshakeMlKem768
            | Field::HandshakeSig
            | Field::HandshakePrevX25519
            | Field::HandshakePrevMlKem768
            | Field::HandshakePrevSig => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|_| syntax(line, format!("{} is not base64", field.label())))?;
                let slot = match field {
                    Field::HandshakeX25519 => &mut self.handshake[0],
                    Field::HandshakeMlKem768 => &mut self.handshake[1],
                    Field::HandshakeSig => &mut self.handshake[2],
                    Field::HandshakePrevX25519 => &mut self.handshake_previous[0],
                    Field::HandshakePrevMlKem768 => &mut self.handshake_previous[1],
                    _ => &mut self.handshake_previous[2],
                };
                *slot = Some(bytes);
            }
            Field::EndPoints => {
                return Err(syntax(
                    line,
                    "EndPoints is a block: write `EndPoints {`, one `TcpEndPoint: host:port` \
                     per line, then `}`",
                ))
            }
        }
        Ok(())
    }

    fn finish(self, close_line: usize) -> Result<RegCred, SyntaxError> {
        let missing = |what: &str| {
            syntax(
                close_line,
                format!("the regCred block ends without the {what}"),
            )
        };
        let handshake = signed_set(self.handshake, close_line, "Handshake")?;
        let handshake_previous = signed_set(self.handshake_previous, close_line, "HandshakePrev")?;
        if handshake_previous.is_some() && handshake.is_none() {
            return Err(missing(
                "HandshakeX25519, HandshakeMlKem768 and HandshakeSig fields the HandshakePrev \
                 fields go with (a previous key set is only published beside a current one)",
            ));
        }
        let cred = RegCred {
            name: self.name.ok_or_else(|| missing("Name field"))?,
            id: self.id.ok_or_else(|| missing("ID field"))?,
            comms_key: self.comms_key.ok_or_else(|| missing("CommsPubKey field"))?,
            sig_key: self.sig_key.ok_or_else(|| missing("SigPubKey field"))?,
            endpoints: self.endpoints,
            version: self.version.ok_or_else(|| missing("Version field"))?,
            handshake,
            handshake_previous,
        };
        if cred.endpoints.is_empty() {
            return Err(missing(
                "EndPoints block; add `EndPoints {`, a `TcpEndPoint: host:port` line and `}`",
            ));
        }
        for (set, prefix) in [
            (&cred.handshake, "Handshake"),
            (&cred.handshake_previous, "HandshakePrev"),
        ] {
            if let Some(handshake) = set {
                if !handshake.verifies(&cred.id, &cred.sig_key) {
                    return Err(syntax(
                        close_line,
                        format!(
                            "{prefix}Sig does not verify under SigPubKey: the handshake keys \
                             were not published by this registry (or the file was altered)"
                        ),
                    ));
                }
            }
        }
        Ok(cred)
    }
}

/// One signed key set from its three decoded fields (`prefix` names them in errors):
/// `None` if none was given, an error if only some were or the keys are unusable.
fn signed_set(
    [x25519, ml_kem, signature]: [Option<Vec<u8>>; 3],
    close_line: usize,
    prefix: &str,
) -> Result<Option<SignedHandshakeKeys>, SyntaxError> {
    match (x25519, ml_kem, signature) {
        (None, None, None) => Ok(None),
        (Some(x25519), Some(ml_kem), Some(signature)) => {
            let keys = HandshakePublicKeys::new(&x25519, &ml_kem)
                .map_err(|e| syntax(close_line, format!("the {prefix} keys are unusable: {e}")))?;
            Ok(Some(SignedHandshakeKeys { keys, signature }))
        }
        _ => Err(syntax(
            close_line,
            format!(
                "the regCred block ends without the whole set of {prefix}X25519, \
                 {prefix}MlKem768 and {prefix}Sig (give all three, or none)"
            ),
        )),
    }
}

fn parse_text(text: &str) -> Result<RegCred, SyntaxError> {
    let mut state = State::Start;
    let mut found = Collected::default();
    let mut result = None;
    let mut last_line = 0;

    // A byte order mark, as some editors add, is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let n = index + 1;
        last_line = n;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        match state {
            State::Start => {
                if !opens_block(line, "regCred") {
                    return Err(syntax(
                        n,
                        format!(
                            "expected `regCred {{`, found {}; is this a registry credentials file?",
                            snippet(line)
                        ),
                    ));
                }
                state = State::Body;
            }
            State::Body => {
                if line == "}" {
                    result = Some(std::mem::take(&mut found).finish(n)?);
                    state = State::Done;
                } else if opens_block(line, "EndPoints") {
                    found.mark(Field::EndPoints, n)?;
                    state = State::EndPoints;
                } else if let Some((key, value)) = line.split_once(':') {
                    let key = key.trim();
                    let field = Field::ALL
                        .into_iter()
                        .find(|f| f.label() == key)
                        .ok_or_else(|| {
                            syntax(
                                n,
                                format!(
                                    "unknown field {}; expected Name, ID, CommsPubKey, \
                                     SigPubKey, EndPoints, Version or the Handshake fields",
                                    snippet(key)
                                ),
                            )
                        })?;
                    found.set(field, value.trim(), n)?;
                } else {
                    return Err(syntax(
                        n,
                        format!(
                            "expected `Field: value`, `EndPoints {{` or `}}`, found {}",
                            snippet(line)
                        ),
                    ));
                }
            }
            State::EndPoints => {
                if line == "}" {
                    if found.endpoints.is_empty() {
                        return Err(syntax(
                            n,
                            "the EndPoints block lists no endpoint; add a \
                             `TcpEndPoint: host:port` line",
                        ));
                    }
                    state = State::Body;
                } else {
                    let value = line
                        .split_once(':')
                        .filter(|(key, _)| key.trim() == "TcpEndPoint")
                        .map(|(_, value)| value.trim())
                        .ok_or_else(|| {
                            syntax(
                                n,
                                format!(
                                    "expected `TcpEndPoint: host:port` or `}}` in the EndPoints \
                                     block, found {}",
                                    snippet(line)
                                ),
                            )
                        })?;
                    crate::validate::endpoint(value).map_err(|e| syntax(n, e.to_string()))?;
                    found.endpoints.push(value.to_string());
                }
            }
            State::Done => {
                return Err(syntax(
                    n,
                    format!(
                        "unexpected {} after the closing `}}` of the regCred block",
                        snippet(line)
                    ),
                ));
            }
        }
    }

    match (state, result) {
        (State::Done, Some(cred)) => Ok(cred),
        (State::Start, _) => Err(syntax(
            last_line.max(1),
            "the text is empty or blank; expected a `regCred {` block",
        )),
        (State::EndPoints, _) => Err(syntax(
            last_line,
            "the text ends inside the EndPoints block; is the file truncated?",
        )),
        _ => Err(syntax(
            last_line,
            "the text ends before the closing `}` of the regCred block; is the file truncated?",
        )),
    }
}

impl RegCred {
    /// Parses the text of a credentials file, as the Go registry or [`RegCred::to_text`]
    /// writes it.
    pub fn parse(text: &str) -> Result<RegCred, RegCredError> {
        parse_text(text).map_err(|e| RegCredError::Syntax {
            line: e.line,
            problem: e.problem,
        })
    }

    /// Reads and parses a credentials file.
    pub fn read(path: impl AsRef<Path>) -> Result<RegCred, RegCredError> {
        let path = path.as_ref();
        let read_err = |source| RegCredError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_REGCRED_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_REGCRED_LEN {
            return Err(RegCredError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| RegCredError::NotText {
            path: path.to_path_buf(),
        })?;
        parse_text(&text).map_err(|e| RegCredError::File {
            path: path.to_path_buf(),
            line: e.line,
            problem: e.problem,
        })
    }

    /// The text of the credentials file in the Go registry's layout, CRLF line ends. Unlike
    /// the Go writer, no blank line follows the key lines.
    pub fn to_text(&self) -> String {
        let mut lines = vec![
            "regCred {".to_string(),
            format!("    Name: {}", self.name),
            format!("    ID: {}", self.id.to_hex()),
            format!("    CommsPubKey: {}", self.comms_key.to_ssh()),
            format!("    SigPubKey: {}", self.sig_key.to_ssh()),
            "    EndPoints {".to_string(),
        ];
        lines.extend(
            self.endpoints
                .iter()
                .map(|endpoint| format!("         TcpEndPoint: {endpoint}")),
        );
        lines.push("    }".to_string());
        lines.push(format!("    Version: {}", self.version));
        // The current set first: a client takes it, whatever follows.
        for (set, prefix) in [
            (&self.handshake, "Handshake"),
            (&self.handshake_previous, "HandshakePrev"),
        ] {
            if let Some(handshake) = set {
                let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
                lines.push(format!(
                    "    {prefix}X25519: {}",
                    b64(handshake.keys.x25519())
                ));
                lines.push(format!(
                    "    {prefix}MlKem768: {}",
                    b64(handshake.keys.ml_kem())
                ));
                lines.push(format!("    {prefix}Sig: {}", b64(&handshake.signature)));
            }
        }
        lines.push("}".to_string());
        let mut text = lines.join("\r\n");
        text.push_str("\r\n");
        text
    }

    /// Writes the credentials file atomically (a temporary file in the same directory,
    /// fsync, rename, fsync of the directory) with mode 0644. Refuses, writing nothing, if
    /// the text would not parse back to `self`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), RegCredError> {
        let path = path.as_ref();
        let text = self.to_text();
        let unwritable = |problem: String| RegCredError::Unwritable {
            path: path.to_path_buf(),
            problem,
        };
        match parse_text(&text) {
            Ok(back) if back == *self => {}
            Ok(_) => {
                return Err(unwritable(
                    "a name, endpoint or version has spaces at either end".to_string(),
                ))
            }
            Err(e) => return Err(unwritable(e.problem)),
        }
        write_atomic(path, text.as_bytes(), REGCRED_MODE).map_err(|source| RegCredError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The first endpoint: the one clients dial. Empty only if `endpoints` was emptied after
    /// parsing.
    pub fn endpoint(&self) -> &str {
        self.endpoints.first().map(String::as_str).unwrap_or("")
    }
}

/// Writes `contents` to `path` atomically with exactly `mode` (see [`write_atomic_with`]).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |file| file.write_all(contents))
}

/// Replaces `path` atomically with exactly `mode` by what `write` writes: a new temporary
/// file in the same directory, created with `mode` from the start (so private files are never
/// readable by others, even briefly), written by `write`, fsync, rename over `path`, then
/// fsync of the directory so the rename survives a crash. The temporary file is removed if
/// any step fails.
pub(crate) fn write_atomic_with<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };

    // Find a fresh temporary name; create_new never follows or reuses an existing file.
    let mut attempt = 0;
    let (tmp_path, mut file) = loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp_path = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp_path)
        {
            Ok(file) => break (tmp_path, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    };

    let result = (|| {
        // The umask may have removed bits from `mode`; restore them before any data is
        // written. This never widens access beyond `mode`.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let written = write(&mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp_path, path)?;
        Ok(written)
    })();
    match result {
        Ok(written) => {
            File::open(dir)?.sync_all()?;
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_path);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_SAMPLE: &str = include_str!("../tests/data/regCred-go-sample.dat");
    const GO_VECTORS: &str = include_str!("../tests/data/regCred-go-vectors.dat");

    /// The text after `label: ` on the line that holds it, up to the end of the line.
    fn value_in(text: &str, label: &str) -> String {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .unwrap()
            .trim()
            .to_string()
    }

    fn syntax_line(result: Result<RegCred, RegCredError>) -> (usize, String) {
        match result {
            Err(RegCredError::Syntax { line, problem }) => (line, problem),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    /// A registry's credentials with signed handshake keys, and its signing key.
    fn v3_cred() -> (RegCred, RsaKeyPair) {
        let sig = crate::test_support::fixture_key(2);
        let mut cred = RegCred::parse(GO_VECTORS).unwrap();
        cred.id = Id::from_bytes(&[0x5a; 32]).unwrap();
        cred.sig_key = sig.public_key().clone();
        let keys = crate::crypto::HandshakeKeyPair::generate().unwrap();
        cred.handshake =
            Some(SignedHandshakeKeys::sign(&cred.id, keys.public().clone(), &sig).unwrap());
        (cred, sig)
    }

    #[test]
    fn handshake_keys_round_trip_signed_and_name_the_versions() {
        let (cred, _) = v3_cred();
        assert_eq!(cred.versions(), vec![2, 3]);
        let text = cred.to_text();
        assert!(text.contains("\r\n    HandshakeX25519: "));
        assert_eq!(RegCred::parse(&text).unwrap(), cred);
        assert_eq!(RegCred::parse(GO_VECTORS).unwrap().versions(), vec![2]);
    }

    #[test]
    fn handshake_keys_that_do_not_verify_or_come_partly_are_refused() {
        let (cred, _) = v3_cred();
        let text = cred.to_text();
        // Keys swapped for someone else's: the signature no longer verifies.
        let mut forged = cred.clone();
        let other = crate::crypto::HandshakeKeyPair::generate().unwrap();
        forged.handshake.as_mut().unwrap().keys = other.public().clone();
        let (line, problem) = syntax_line(RegCred::parse(&forged.to_text()));
        assert!(
            problem.contains("HandshakeSig does not verify"),
            "{line}: {problem}"
        );
        // Signed by another key than SigPubKey.
        let mut resigned = cred.clone();
        let wrong = crate::test_support::fixture_key(3);
        resigned.handshake = Some(
            SignedHandshakeKeys::sign(&cred.id, cred.handshake.clone().unwrap().keys, &wrong)
                .unwrap(),
        );
        assert!(RegCred::parse(&resigned.to_text()).is_err());
        // The same keys published for another registry ID.
        let mut moved = cred.clone();
        moved.id = Id::from_bytes(&[0x5b; 32]).unwrap();
        assert!(RegCred::parse(&moved.to_text()).is_err());
        // One of the three fields missing.
        let partial: String = text
            .split_inclusive("\r\n")
            .filter(|line| !line.contains("HandshakeSig"))
            .collect();
        let (_, problem) = syntax_line(RegCred::parse(&partial));
        assert!(
            problem.contains("HandshakeX25519, HandshakeMlKem768 and HandshakeSig"),
            "{problem}"
        );
        // Not base64.
        let garbled = text.replace("HandshakeX25519: ", "HandshakeX25519: !");
        assert!(RegCred::parse(&garbled).is_err());
    }

    #[test]
    fn a_previous_key_set_follows_the_current_one_signed_the_same_way() {
        let (mut cred, sig) = v3_cred();
        let previous = crate::crypto::HandshakeKeyPair::generate().unwrap();
        cred.handshake_previous =
            Some(SignedHandshakeKeys::sign(&cred.id, previous.public().clone(), &sig).unwrap());
        let text = cred.to_text();
        let current_at = text.find("HandshakeX25519: ").unwrap();
        let previous_at = text.find("HandshakePrevX25519: ").unwrap();
        assert!(current_at < previous_at, "the current set comes first");
        assert_eq!(RegCred::parse(&text).unwrap(), cred);
        assert_eq!(cred.versions(), vec![2, 3]);

        // Signed by another key: refused, naming the previous set.
        let mut forged = cred.clone();
        forged.handshake_previous = Some(
            SignedHandshakeKeys::sign(
                &cred.id,
                previous.public().clone(),
                &crate::test_support::fixture_key(3),
            )
            .unwrap(),
        );
        let (_, problem) = syntax_line(RegCred::parse(&forged.to_text()));
        assert!(
            problem.contains("HandshakePrevSig does not verify"),
            "{problem}"
        );
        // Part of the set: refused.
        let partial: String = text
            .split_inclusive("\r\n")
            .filter(|line| !line.contains("HandshakePrevSig"))
            .collect();
        let (_, problem) = syntax_line(RegCred::parse(&partial));
        assert!(
            problem.contains("HandshakePrevX25519, HandshakePrevMlKem768"),
            "{problem}"
        );
        // A previous set without a current one: refused.
        let orphan: String = text
            .split_inclusive("\r\n")
            .filter(|line| !line.contains("    Handshake") || line.contains("HandshakePrev"))
            .collect();
        let (_, problem) = syntax_line(RegCred::parse(&orphan));
        assert!(problem.contains("previous key set"), "{problem}");
        // The set given twice: refused.
        let line = text
            .split_inclusive("\r\n")
            .find(|line| line.contains("HandshakePrevSig"))
            .unwrap();
        let doubled = text.replace(line, &format!("{line}{line}"));
        assert!(RegCred::parse(&doubled).is_err());
    }

    #[test]
    fn go_vectors_sample_parses() {
        let cred = RegCred::parse(GO_VECTORS).unwrap();
        assert_eq!(cred.name, "xlReg");
        assert_eq!(cred.id.to_hex(), "46911528ec971bbc986a5bcc018fb41391c30e83");
        assert_eq!(cred.endpoints, vec!["127.0.0.1:56789".to_string()]);
        assert_eq!(cred.endpoint(), "127.0.0.1:56789");
        assert_eq!(cred.version, "1.9.24");
        assert_eq!(
            cred.comms_key.to_ssh(),
            value_in(GO_VECTORS, "CommsPubKey:")
        );
        assert_eq!(cred.sig_key.to_ssh(), value_in(GO_VECTORS, "SigPubKey:"));
        assert_eq!(cred.comms_key.bits(), 2048);
        // Our writer is the Go layout without the stray newline after the key lines.
        assert_eq!(cred.to_text(), GO_VECTORS.replace("\n\r\n", "\r\n"));
    }

    #[test]
    fn go_older_sample_parses() {
        let cred = RegCred::parse(GO_SAMPLE).unwrap();
        assert_eq!(cred.name, "xlReg");
        assert_eq!(
            cred.id.to_hex(),
            "21b95b5c697977d266a0c364e12787ad72bf6fc9346ec0edef351cfb6da90c24"
        );
        assert_eq!(cred.endpoint(), "50.18.104.7:56789");
        assert_eq!(cred.version, "0.4.3");
        assert_eq!(cred.comms_key.to_ssh(), value_in(GO_SAMPLE, "CommsPubKey:"));
        assert_eq!(cred.sig_key.to_ssh(), value_in(GO_SAMPLE, "SigPubKey:"));
        assert_eq!(cred.to_text(), GO_SAMPLE.replace("\n\r\n", "\r\n"));
    }

    #[test]
    fn round_trip_with_several_endpoints() {
        let mut cred = RegCred::parse(GO_VECTORS).unwrap();
        cred.id = Id::from_bytes(&[0xab; 32]).unwrap();
        cred.endpoints = vec![
            "10.0.0.1:4000".to_string(),
            "[::1]:4001".to_string(),
            "reg.example.com:4002".to_string(),
        ];
        let text = cred.to_text();
        assert!(text.contains("\r\n         TcpEndPoint: [::1]:4001\r\n"));
        assert!(!text.contains("\n\r\n"));
        assert_eq!(RegCred::parse(&text).unwrap(), cred);
        assert_eq!(cred.endpoint(), "10.0.0.1:4000");
    }

    #[test]
    fn lf_and_whitespace_variants_parse() {
        let expected = RegCred::parse(GO_VECTORS).unwrap();
        let lf = GO_VECTORS.replace("\r\n", "\n");
        assert_eq!(RegCred::parse(&lf).unwrap(), expected);

        let messy: String = lf
            .lines()
            .map(|line| format!("\t  {}  \t\r\n\n", line.trim().replacen(": ", ":   ", 1)))
            .collect();
        let messy = format!("\n\n{}\n  \n", messy.replace("regCred {", "regCred{"));
        assert_eq!(RegCred::parse(&messy).unwrap(), expected);
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regCred.dat");
        let cred = RegCred::parse(GO_VECTORS).unwrap();
        cred.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(RegCred::read(&path).unwrap(), cred);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), cred.to_text());
        // Overwriting works and leaves no temporary files behind.
        cred.write(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);

        // Credentials that would not read back are not written.
        let other = dir.path().join("other.dat");
        let mut bad = cred.clone();
        bad.endpoints.clear();
        assert_eq!(bad.endpoint(), "");
        let mut spaced = cred.clone();
        spaced.name = " xlReg".to_string();
        let mut broken = cred.clone();
        broken.name = "x\r\n    Colour: blue".to_string();
        for bad in [bad, spaced, broken] {
            let err = bad.write(&other).unwrap_err();
            assert!(matches!(err, RegCredError::Unwritable { .. }), "{err}");
        }
        assert!(!other.exists());
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.dat");
        let err = RegCred::read(&missing).unwrap_err();
        assert!(matches!(err, RegCredError::Read { .. }));
        assert!(err.to_string().contains("nope.dat"), "{err}");

        let bad = dir.path().join("bad.dat");
        std::fs::write(&bad, GO_VECTORS.replace("Version: 1.9.24", "Version: x")).unwrap();
        let err = RegCred::read(&bad).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bad.dat") && text.contains("line 11"),
            "{text}"
        );

        std::fs::write(&bad, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(
            RegCred::read(&bad),
            Err(RegCredError::NotText { .. })
        ));

        std::fs::write(&bad, vec![b' '; MAX_REGCRED_LEN as usize + 1]).unwrap();
        assert!(matches!(
            RegCred::read(&bad),
            Err(RegCredError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_files_are_refused_with_line_numbers() {
        let good = GO_VECTORS.replace("\n\r\n", "\r\n");
        let lines: Vec<&str> = good.lines().collect();
        // Line numbers below are in `good`: 1 regCred {, 2 Name, 3 ID, 4 CommsPubKey,
        // 5 SigPubKey, 6 EndPoints {, 7 TcpEndPoint, 8 }, 9 Version, 10 }.
        let without = |n: usize| {
            let mut v = lines.clone();
            v.remove(n - 1);
            v.join("\r\n")
        };
        let with_line = |n: usize, text: &str| {
            let mut v = lines.clone();
            v[n - 1] = text;
            v.join("\r\n")
        };
        let inserted = |n: usize, text: &str| {
            let mut v = lines.clone();
            v.insert(n - 1, text);
            v.join("\r\n")
        };

        let cases: Vec<(String, usize, &str)> = vec![
            (String::new(), 1, "empty"),
            ("  \r\n\r\n".to_string(), 2, "empty"),
            ("hello".to_string(), 1, "expected `regCred {`"),
            (without(2), 9, "without the Name"),
            (without(3), 9, "without the ID"),
            (without(4), 9, "without the CommsPubKey"),
            (without(5), 9, "without the SigPubKey"),
            (without(9), 9, "without the Version"),
            (without(10), 9, "ends before the closing"),
            (
                inserted(3, "    Name: other"),
                3,
                "duplicate Name field (first given on line 2)",
            ),
            (
                inserted(10, "    Colour: blue"),
                10,
                "unknown field \"Colour\"",
            ),
            (
                inserted(10, "    just words"),
                10,
                "expected `Field: value`",
            ),
            (with_line(2, "    Name:   "), 2, "Name field has no value"),
            (with_line(3, "    ID: 1234"), 3, "not a valid id"),
            (with_line(3, "    ID: xyz"), 3, "not a valid id"),
            (
                with_line(4, "    CommsPubKey: ssh-rsa AAAA"),
                4,
                "CommsPubKey is not a usable",
            ),
            (
                with_line(5, "    SigPubKey: ssh-dss AAAAB3Nza"),
                5,
                "SigPubKey is not a usable",
            ),
            (
                with_line(5, "    SigPubKey: ssh-rsa !!!"),
                5,
                "SigPubKey is not a usable",
            ),
            (
                with_line(7, "         TcpEndPoint: 127.0.0.1"),
                7,
                "no port",
            ),
            (
                with_line(7, "         UdpEndPoint: 1.2.3.4:5"),
                7,
                "expected `TcpEndPoint",
            ),
            (without(7), 7, "lists no endpoint"),
            (
                {
                    let mut v = lines.clone();
                    v.drain(5..8);
                    v.join("\r\n")
                },
                7,
                "without the EndPoints block",
            ),
            (inserted(9, "    EndPoints {"), 9, "duplicate EndPoints"),
            (
                with_line(6, "    EndPoints: 1.2.3.4:5"),
                6,
                "EndPoints is a block",
            ),
            (
                with_line(9, "    Version: 1.9.x"),
                9,
                "not a version number",
            ),
            (
                with_line(9, "    Version: 1.2.3.4.5"),
                9,
                "not a version number",
            ),
            (
                with_line(9, "    Version: 1.256.0"),
                9,
                "not a version number",
            ),
            (format!("{good}extra\r\n"), 11, "after the closing"),
            (lines[..7].join("\r\n"), 7, "ends inside the EndPoints"),
        ];
        for (text, line, needle) in cases {
            let (got_line, problem) = syntax_line(RegCred::parse(&text));
            assert_eq!(got_line, line, "{problem}");
            assert!(problem.contains(needle), "{problem:?} lacks {needle:?}");
            let shown = RegCred::parse(&text).unwrap_err().to_string();
            assert!(shown.contains(&format!("line {line}:")), "{shown}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let samples = [
            "regCred {\r\n}\r\n",
            "regCred {\n EndPoints {\n }\n}",
            "regCred {\n:\n}",
            "}{",
            "regCred {\n ID: \u{feff}\n}",
            "regCred {\n Name: \u{0}\n",
            "\r\r\r",
        ];
        for sample in samples {
            assert!(RegCred::parse(sample).is_err(), "{sample:?}");
        }
        // Every prefix of a real file is either an error or (for the whole file) a success.
        for end in (0..GO_VECTORS.len()).filter(|&i| GO_VECTORS.is_char_boundary(i)) {
            let _ = RegCred::parse(&GO_VECTORS[..end]);
        }
    }
}
