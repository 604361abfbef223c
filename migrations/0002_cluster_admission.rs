//! Migration 0002: clusters get their admission state (schema 1 to schema 2).
//!
//! This step owns the rewrite of every `clusters` value. Schema 2 appends to the bincode
//! `ClusterRecord` of schema 1 its admission state (docs/protocol.md section 14.12):
//!
//! | field       | type                                      | schema-1 clusters get |
//! |-------------|-------------------------------------------|-----------------------|
//! | `owner_key` | bytes (u64 length, then the bytes)        | empty: no owner       |
//! | `open`      | bool (1 byte)                             | true                  |
//! | `closed`    | bool (1 byte)                             | false                 |
//! | `tokens`    | sequence (u64 count) of token records     | none                  |
//!
//! Every cluster made before admission was open to every registered node, so it stays open
//! and without owner: nothing changes for its members or for strangers. The other trees are
//! unchanged. A value that does not decode as a schema-1 record is left alone (it was
//! rewritten by an interrupted earlier run of this step), so rerunning is harmless.
//!
//! Migration files must stay as they are once released: they describe how the data looked at
//! that version, not how the current code names things.

use bincode::Options as _;
use serde::{Deserialize, Serialize};

use crate::store::StorageError;

/// A member as schema 1 stored it (unchanged in schema 2).
#[derive(Serialize, Deserialize)]
struct MemberV1 {
    slot: u32,
    #[serde(with = "serde_bytes")]
    node_id: Vec<u8>,
    name: String,
    attrs: u64,
    endpoints: Vec<String>,
    joined_at_ms: u64,
}

/// A cluster as schema 1 stored it.
#[derive(Serialize, Deserialize)]
struct ClusterV1 {
    #[serde(with = "serde_bytes")]
    id: Vec<u8>,
    name: String,
    attrs: u64,
    max_size: u32,
    endpoint_count: u32,
    created_at_ms: u64,
    touched_at_ms: u64,
    members: Vec<MemberV1>,
}

/// The admission state schema 2 appends (tokens empty here, so their layout is not needed).
#[derive(Serialize)]
struct AdmissionV2 {
    #[serde(with = "serde_bytes")]
    owner_key: Vec<u8>,
    open: bool,
    closed: bool,
    tokens: Vec<()>,
}

fn options() -> impl bincode::Options {
    bincode::options()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// The schema-2 form of a schema-1 cluster value, `None` if `bytes` is not one.
fn upgraded(bytes: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
    if options().deserialize::<ClusterV1>(bytes).is_err() {
        return Ok(None);
    }
    let open = AdmissionV2 {
        owner_key: Vec::new(),
        open: true,
        closed: false,
        tokens: Vec::new(),
    };
    let tail = options()
        .serialize(&open)
        .map_err(|e| StorageError::Corrupt(format!("could not encode admission: {e}")))?;
    let mut out = bytes.to_vec();
    out.extend_from_slice(&tail);
    Ok(Some(out))
}

/// Appends the open, ownerless admission state to every schema-1 cluster.
pub(super) fn apply(db: &sled::Db) -> Result<(), StorageError> {
    let clusters = db.open_tree("clusters")?;
    for entry in clusters.iter() {
        let (key, value) = entry?;
        if let Some(new) = upgraded(&value)? {
            clusters.insert(key, new)?;
        }
    }
    Ok(())
}
