//! The xlReg 1.9 wire codec: hello, hello reply, session messages and version numbers.
//!
//! Pure functions of bytes and keys, as the Go registry 1.9.24 put them on the wire
//! (docs/legacy.md, and the reference vectors in tests/data/legacy-vectors/):
//! - hello (client to registry): `RSA-OAEP-SHA1(ck, key1 || salt1 || version1)`, where the
//!   plaintext is exactly [`HELLO_LEN`] = 44 bytes: a 32-byte AES-256 key, an 8-byte salt and a
//!   4-byte version. The registry ignores the proposed version.
//! - hello reply (registry to client): the same 44-byte layout, `key2 || salt2 || version2`,
//!   sent as a session message under `key1`. salt1 is not echoed.
//! - session messages, both directions, under `key2`: `IV (16 random bytes) ||
//!   AES-256-CBC(key, PKCS#7(protobuf XLRegMsg))`. No MAC: nothing here authenticates.
//! - versions `a.b.c.d` travel as the four bytes `a, b, c, d` (the Go code's u32
//!   `a | b<<8 | c<<16 | d<<24`, written little-endian).
//!
//! The AES-CBC primitive itself lives in [`crate::crypto`], like all cryptography.

use std::fmt;
use std::str::FromStr;

use prost::Message as _;
use zeroize::Zeroizing;

use crate::crypto::{
    self, AesKey, CryptoError, HelloDecryptor, PublicKey, AES_BLOCK_LEN, AES_KEY_LEN,
};
use crate::proto::{Tag, XlRegMsg};

/// Length of the salts in the hello and its reply.
pub const SALT_LEN: usize = 8;
/// Length of the hello and reply plaintexts: key, salt, version.
pub const HELLO_LEN: usize = AES_KEY_LEN + SALT_LEN + 4;
/// Length of the per-message IV that opens every session message.
pub const IV_LEN: usize = AES_BLOCK_LEN;
/// The smallest possible session message: an IV and one block.
pub const MIN_MESSAGE_LEN: usize = IV_LEN + AES_BLOCK_LEN;
/// Length of the hello reply on the wire: an IV and the padded 44-byte plaintext (64 bytes).
pub const REPLY_LEN: usize = IV_LEN + (HELLO_LEN / AES_BLOCK_LEN + 1) * AES_BLOCK_LEN;

/// Why bytes from a 1.9 peer are not what the wire format says they must be.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The hello or reply plaintext is not exactly [`HELLO_LEN`] bytes.
    #[error("hello plaintext is {0} bytes, not {HELLO_LEN}")]
    HelloLength(usize),
    /// A session message is shorter than an IV and one block.
    #[error("message of {0} bytes is shorter than an IV and one AES block")]
    TooShort(usize),
    /// Decryption failed: RSA for the hello, AES-CBC (length or padding) for messages.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The plaintext is not an XLRegMsg, or carries no Op or an unknown one.
    #[error("message is not an XLRegMsg with a known Op")]
    NotAMessage,
}

/// A protocol version `a.b.c.d`, one byte a part, as the 1.9 wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub [u8; 4]);

impl Version {
    /// The version the Go registry 1.9.24 announces: the bytes `01 09 18 00`.
    pub const GO_REGISTRY: Version = Version([1, 9, 24, 0]);

    /// The Go code's u32 form, `a | b<<8 | c<<16 | d<<24`.
    pub fn to_u32(self) -> u32 {
        u32::from_le_bytes(self.0)
    }

    /// The version whose Go u32 form is `value`.
    pub fn from_u32(value: u32) -> Version {
        Version(value.to_le_bytes())
    }
}

impl Default for Version {
    /// The version the legacy listener announces unless configured otherwise.
    fn default() -> Version {
        Version::GO_REGISTRY
    }
}

impl fmt::Display for Version {
    /// `a.b.c`, with `.d` only when it is not zero (as the Go registry writes it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}")?;
        if d != 0 {
            write!(f, ".{d}")?;
        }
        Ok(())
    }
}

/// Why a version text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {0:?} is not 1 to 4 dot-separated numbers of 0 to 255 (like 1.9.24)")]
pub struct BadVersion(String);

impl FromStr for Version {
    type Err = BadVersion;

    /// Parses `a`, `a.b`, `a.b.c` or `a.b.c.d`; missing parts are zero.
    fn from_str(text: &str) -> Result<Version, BadVersion> {
        let bad = || BadVersion(text.to_string());
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > 4 {
            return Err(bad());
        }
        let mut bytes = [0u8; 4];
        for (byte, part) in bytes.iter_mut().zip(&parts) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            *byte = part.parse().map_err(|_| bad())?;
        }
        Ok(Version(bytes))
    }
}

/// The plaintext of a hello or of its reply: an AES-256 key, a salt and a version.
pub struct Hello {
    /// key1 in a hello (the reply is encrypted under it), key2 in a reply (the session key).
    pub key: AesKey,
    /// salt1 or salt2; unused by the protocol, but part of the layout.
    pub salt: [u8; SALT_LEN],
    /// The proposed (hello) or decided (reply) version.
    pub version: Version,
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        write!(f, "Hello(version {})", self.version)
    }
}

impl Hello {
    /// A fresh random key and salt with `version`: a client's hello (key1, proposing
    /// `version`) or the registry's reply (key2, the decided version).
    pub fn fresh(version: Version) -> Hello {
        Hello {
            key: crypto::random_aes_key(),
            salt: crypto::random_array(),
            version,
        }
    }

    /// Parses a 44-byte plaintext.
    pub fn parse(plaintext: &[u8]) -> Result<Hello, WireError> {
        if plaintext.len() != HELLO_LEN {
            return Err(WireError::HelloLength(plaintext.len()));
        }
        let mut key = Zeroizing::new([0u8; AES_KEY_LEN]);
        key.copy_from_slice(&plaintext[..AES_KEY_LEN]);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&plaintext[AES_KEY_LEN..AES_KEY_LEN + SALT_LEN]);
        let mut version = [0u8; 4];
        version.copy_from_slice(&plaintext[AES_KEY_LEN + SALT_LEN..]);
        Ok(Hello {
            key,
            salt,
            version: Version(version),
        })
    }

    /// The 44-byte plaintext, wiped from memory when dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(HELLO_LEN));
        out.extend_from_slice(self.key.as_slice());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.version.0);
        out
    }
}

/// Decrypts a client's hello with the registry's comms key.
pub fn open_hello(decryptor: &HelloDecryptor, ciphertext: &[u8]) -> Result<Hello, WireError> {
    Hello::parse(&decryptor.decrypt_oaep_sha1(ciphertext)?)
}

/// Encrypts a client's hello under the registry's comms key `ck` (RSA-OAEP-SHA-1).
pub fn seal_hello(ck: &PublicKey, hello: &Hello) -> Result<Vec<u8>, CryptoError> {
    ck.encrypt_oaep_sha1(&hello.to_bytes())
}

/// Opens the registry's reply to a hello: a session message under key1 holding key2, salt2
/// and the registry's version.
pub fn open_reply(key1: &[u8; AES_KEY_LEN], message: &[u8]) -> Result<Hello, WireError> {
    Hello::parse(&open(key1, message)?)
}

/// Seals `plaintext` as a session message: `iv || AES-256-CBC(key, iv, PKCS#7(plaintext))`.
pub fn seal(key: &[u8; AES_KEY_LEN], iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(IV_LEN + plaintext.len() + AES_BLOCK_LEN);
    out.extend_from_slice(iv);
    out.extend_from_slice(&crypto::cbc_encrypt(key, iv, plaintext));
    out
}

/// Seals `plaintext` under a fresh random IV.
pub fn seal_fresh(key: &[u8; AES_KEY_LEN], plaintext: &[u8]) -> Vec<u8> {
    seal(key, &crypto::random_array(), plaintext)
}

/// Opens a session message: splits off the IV, decrypts and strictly unpads.
pub fn open(key: &[u8; AES_KEY_LEN], message: &[u8]) -> Result<Zeroizing<Vec<u8>>, WireError> {
    if message.len() < MIN_MESSAGE_LEN {
        return Err(WireError::TooShort(message.len()));
    }
    let (iv, ciphertext) = message.split_at(IV_LEN);
    let mut iv_bytes = [0u8; IV_LEN];
    iv_bytes.copy_from_slice(iv);
    Ok(crypto::cbc_decrypt(key, &iv_bytes, ciphertext)?)
}

/// Encodes and seals an XLRegMsg under a fresh IV.
pub fn seal_message(key: &[u8; AES_KEY_LEN], msg: &XlRegMsg) -> Vec<u8> {
    seal_fresh(key, &msg.encode_to_vec())
}

/// Opens a session message and decodes it, accepting only an XLRegMsg whose Op is a known
/// Tag (anything else is not a message, whatever its bytes).
pub fn open_message(key: &[u8; AES_KEY_LEN], message: &[u8]) -> Result<XlRegMsg, WireError> {
    let plaintext = open(key, message)?;
    let msg = XlRegMsg::decode(plaintext.as_slice()).map_err(|_| WireError::NotAMessage)?;
    match msg.op.map(Tag::try_from) {
        Some(Ok(_)) => Ok(msg),
        _ => Err(WireError::NotAMessage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_travel_as_their_parts_in_order() {
        let v: Version = "1.9.24".parse().unwrap();
        assert_eq!(v, Version::GO_REGISTRY);
        assert_eq!(v.0, [0x01, 0x09, 0x18, 0x00]);
        assert_eq!(v.to_u32(), 1_575_169);
        assert_eq!(Version::from_u32(1_575_169), v);
        assert_eq!(v.to_string(), "1.9.24");
        assert_eq!(
            "1.9.24.7".parse::<Version>().unwrap().to_string(),
            "1.9.24.7"
        );
        assert_eq!("2".parse::<Version>().unwrap().to_string(), "2.0.0");
        for bad in ["", "1..2", "1.2.3.4.5", "256.0", "1.x", "+1.2", "1.9.24 "] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hello_layout_round_trips_and_only_44_bytes_parse() {
        let reply = Hello::fresh(Version::GO_REGISTRY);
        let bytes = reply.to_bytes();
        assert_eq!(bytes.len(), HELLO_LEN);
        assert_eq!(&bytes[40..], &[1, 9, 24, 0]);
        let back = Hello::parse(&bytes).unwrap();
        assert_eq!(*back.key, *reply.key);
        assert_eq!(back.salt, reply.salt);
        assert!(matches!(
            Hello::parse(&bytes[..43]),
            Err(WireError::HelloLength(43))
        ));
        assert!(format!("{back:?}").contains("1.9.24"));
    }

    #[test]
    fn a_client_hello_and_its_reply_round_trip() {
        let ck = crate::crypto::RsaKeyPair::from_pem(include_str!(
            "../../tests/data/legacy-vectors/registry-ck.pem"
        ))
        .unwrap();
        let hello = Hello::fresh(Version([0; 4]));
        let sealed = seal_hello(ck.public_key(), &hello).unwrap();
        assert_eq!(sealed.len(), 256);
        let opened = open_hello(&ck.hello_decryptor().unwrap(), &sealed).unwrap();
        assert_eq!(*opened.key, *hello.key);
        assert_eq!((opened.salt, opened.version), (hello.salt, hello.version));

        let reply = Hello::fresh(Version::GO_REGISTRY);
        let sealed = seal_fresh(&hello.key, &reply.to_bytes());
        assert_eq!(sealed.len(), REPLY_LEN);
        assert_eq!(REPLY_LEN, 64);
        let opened = open_reply(&hello.key, &sealed).unwrap();
        assert_eq!(*opened.key, *reply.key);
        assert_eq!(opened.version, Version::GO_REGISTRY);
        assert!(open_reply(&reply.key, &sealed).is_err());
    }

    #[test]
    fn messages_round_trip_and_junk_is_refused() {
        let key = [5u8; AES_KEY_LEN];
        let msg = XlRegMsg {
            op: Some(Tag::Bye as i32),
            ..XlRegMsg::default()
        };
        let sealed = seal_message(&key, &msg);
        assert_eq!(sealed.len(), MIN_MESSAGE_LEN);
        assert_eq!(open_message(&key, &sealed).unwrap(), msg);
        assert!(open_message(&[6u8; AES_KEY_LEN], &sealed).is_err());
        for len in [0, 15, 16, 31, 36] {
            assert!(
                open_message(&key, &sealed.repeat(2)[..len]).is_err(),
                "{len}"
            );
        }
        // A valid protobuf without an Op is not a message.
        assert!(matches!(
            open_message(&key, &seal_fresh(&key, &[])),
            Err(WireError::NotAMessage)
        ));
        let unknown_op = XlRegMsg {
            op: Some(99),
            ..XlRegMsg::default()
        };
        assert!(open_message(&key, &seal_message(&key, &unknown_op)).is_err());
    }
}
