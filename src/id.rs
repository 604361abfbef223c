//! Node and cluster identifiers.
//!
//! This module owns the [`Id`] type: the 256-bit random identifier the registry issues to nodes
//! and clusters. Ids issued by xlreg are always 32 bytes. The xlReg 1.9 registry and its clients
//! made 20-byte (SHA-1 sized) ids, and its members present them when they register, so an [`Id`]
//! may also be 20 bytes long; no other length is valid.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Length in bytes of the ids this registry issues.
pub const ID_LEN: usize = 32;
/// Length in bytes of the SHA-1 sized ids made by xlReg 1.9 clients.
pub const LEGACY_ID_LEN: usize = 20;

/// Why a byte string or text is not an [`Id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id has a length other than 20 or 32 bytes.
    #[error("an id must be 32 bytes (or 20 for xlReg 1.9 ids), not {0}")]
    BadLength(usize),
    /// The text form is not hexadecimal.
    #[error("an id is written as 64 (or 40) hex digits")]
    NotHex,
}

/// A node or cluster identifier: 32 random bytes, or 20 bytes for ids made by xlReg 1.9.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id(#[serde(with = "serde_bytes")] Vec<u8>);

impl Id {
    /// A fresh random 32-byte id from the given cryptographic random number generator.
    pub fn random<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Id {
        let mut bytes = vec![0u8; ID_LEN];
        rng.fill_bytes(&mut bytes);
        Id(bytes)
    }

    /// A fresh random 20-byte id, as an xlReg 1.9 (Go) client makes for itself.
    pub fn random_legacy<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Id {
        let mut bytes = vec![0u8; LEGACY_ID_LEN];
        rng.fill_bytes(&mut bytes);
        Id(bytes)
    }

    /// Wraps bytes received from a peer or read from the store, checking the length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Id, IdError> {
        match bytes.len() {
            ID_LEN | LEGACY_ID_LEN => Ok(Id(bytes.to_vec())),
            other => Err(IdError::BadLength(other)),
        }
    }

    /// Parses the lowercase or uppercase hex form.
    pub fn from_hex(text: &str) -> Result<Id, IdError> {
        let bytes = hex::decode(text.trim()).map_err(|_| IdError::NotHex)?;
        Id::from_bytes(&bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The lowercase hex form, as shown to people and in JSON.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_32_bytes_and_distinct() {
        let mut rng = rand::rng();
        let a = Id::random(&mut rng);
        let b = Id::random(&mut rng);
        assert_eq!(a.as_bytes().len(), ID_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn only_20_and_32_byte_ids_are_valid() {
        assert!(Id::from_bytes(&[0u8; 32]).is_ok());
        assert!(Id::from_bytes(&[0u8; 20]).is_ok());
        assert_eq!(Id::from_bytes(&[0u8; 31]), Err(IdError::BadLength(31)));
        assert_eq!(Id::from_bytes(&[]), Err(IdError::BadLength(0)));
    }

    #[test]
    fn hex_round_trip() {
        let id = Id::from_bytes(&[0xab; 32]).unwrap();
        assert_eq!(Id::from_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(Id::from_hex("zz"), Err(IdError::NotHex));
    }
}
