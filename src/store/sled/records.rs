//! The encoding of records in the sled backend's trees.
//!
//! This module owns the encode/decode helpers for the records of [`crate::model`] stored as
//! the values of the trees (bincode 1.3.3, `bincode::serialize`'s format): `NodeRecord` in
//! `nodes`, `ClusterRecord` (members inline) in `clusters`, `RegistryMeta` in `meta`. They
//! never panic on bad input.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

use crate::store::StorageError;

/// The bincode options of the stored format: those of `bincode::serialize` (fixed-width
/// integers, little-endian), refusing trailing bytes when decoding.
fn options() -> impl Options {
    bincode::options()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Encodes a record for storage.
pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StorageError> {
    options()
        .serialize(value)
        .map_err(|e| StorageError::Corrupt(format!("could not encode {what}: {e}")))
}

/// Decodes a stored record; `key` is only used in the error message.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StorageError> {
    options().deserialize(bytes).map_err(|e| {
        StorageError::Corrupt(format!(
            "{what} record under key {} does not decode: {e}",
            hex::encode(key)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::model::{ClusterRecord, NodeRecord, RegistryMeta};

    fn id(b: u8) -> Id {
        Id::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn decode_refuses_garbage_without_panicking() {
        let meta = RegistryMeta {
            name: "r".into(),
            id: id(7),
            created_at_ms: 5,
        };
        let bytes = encode("registry", &meta).unwrap();
        // Same format as plain bincode::serialize.
        assert_eq!(bytes, bincode::serialize(&meta).unwrap());
        assert_eq!(
            decode::<RegistryMeta>("registry", b"k", &bytes).unwrap(),
            meta
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<RegistryMeta>("registry", b"k", &trailing).is_err());
        assert!(decode::<NodeRecord>("node", b"k", &[0xff; 16]).is_err());
        assert!(decode::<ClusterRecord>("cluster", b"k", &[]).is_err());
    }
}
