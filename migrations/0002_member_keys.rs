//! Migration 0002: the `member_keys` tree (schema 1 to schema 2).
//!
//! Schema 2 adds one tree to schema 1 (see 0001):
//!
//! | tree          | key                                             | value |
//! |---------------|-------------------------------------------------|-------|
//! | `member_keys` | id length (1 byte) ‖ cluster id ‖ slot (u32 BE) | bincode `MemberKeys { comms_key: Vec<u8>, sig_key: Vec<u8> }`: the member node's keys |
//!
//! This step fills it: for every member of every cluster, the keys of its node record. It
//! only inserts entries derived from records it does not change, so rerunning it after an
//! interruption writes the same entries again. A member whose node record is missing gets
//! no entry; `xlreg admin verify` reports both problems.
//!
//! The record layouts below are those of schema 1 and 2, written out here so that this step
//! keeps working when the code's records change: a migration describes the data as it was.

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// A schema-1 node record (unchanged in schema 2).
#[derive(Deserialize)]
#[allow(dead_code)] // Every field must be declared to decode the record.
struct NodeV1 {
    id: Vec<u8>,
    name: String,
    attrs: u64,
    comms_key: Vec<u8>,
    sig_key: Vec<u8>,
    endpoints: Vec<String>,
    registered_at_ms: u64,
    updated_at_ms: u64,
}

/// A schema-1 member, inside a cluster record (unchanged in schema 2).
#[derive(Deserialize)]
#[allow(dead_code)]
struct MemberV1 {
    slot: u32,
    node_id: Vec<u8>,
    name: String,
    attrs: u64,
    endpoints: Vec<String>,
    joined_at_ms: u64,
}

/// A schema-1 cluster record (unchanged in schema 2).
#[derive(Deserialize)]
#[allow(dead_code)]
struct ClusterV1 {
    id: Vec<u8>,
    name: String,
    attrs: u64,
    max_size: u32,
    endpoint_count: u32,
    created_at_ms: u64,
    touched_at_ms: u64,
    members: Vec<MemberV1>,
}

/// A schema-2 `member_keys` value.
#[derive(Serialize)]
struct MemberKeysV2<'a> {
    comms_key: &'a [u8],
    sig_key: &'a [u8],
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    use bincode::Options as _;
    bincode::options()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| StoreError::Corrupt(format!("{what} {}: {e}", hex::encode(key))))
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    use bincode::Options as _;
    bincode::options()
        .with_fixint_encoding()
        .serialize(value)
        .map_err(|e| StoreError::Corrupt(format!("encoding member keys: {e}")))
}

/// Fills `member_keys` from the clusters' members and their node records.
pub(super) fn apply(db: &sled::Db) -> Result<(), StoreError> {
    let clusters = db.open_tree("clusters")?;
    let nodes = db.open_tree("nodes")?;
    let member_keys = db.open_tree("member_keys")?;
    for entry in clusters.iter() {
        let (key, value) = entry?;
        let cluster: ClusterV1 = decode("cluster", &key, &value)?;
        let mut batch = sled::Batch::default();
        for member in &cluster.members {
            let Some(node) = nodes.get(&member.node_id)? else {
                continue;
            };
            let node: NodeV1 = decode("node", &member.node_id, &node)?;
            let mut entry_key = Vec::with_capacity(1 + cluster.id.len() + 4);
            entry_key.push(u8::try_from(cluster.id.len()).unwrap_or(u8::MAX));
            entry_key.extend_from_slice(&cluster.id);
            entry_key.extend_from_slice(&member.slot.to_be_bytes());
            let keys = MemberKeysV2 {
                comms_key: &node.comms_key,
                sig_key: &node.sig_key,
            };
            batch.insert(entry_key, encode(&keys)?);
        }
        member_keys.apply_batch(batch)?;
    }
    Ok(())
}
