//! The records kept in the store.
//!
//! This module owns the serde structs stored (bincode-encoded) as the values of the store's
//! trees: [`NodeRecord`] in `nodes`, [`ClusterRecord`] (with its [`MemberRecord`]s inline) in
//! `clusters`, and [`RegistryMeta`] in `meta`. It also owns the encode/decode helpers, which
//! never panic on bad input.

use bincode::Options;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::StoreError;
use crate::id::Id;

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id (32 bytes, or 20 for xlReg 1.9 nodes).
    pub id: Id,
    /// The node's self-chosen name.
    pub name: String,
    /// Attribute bits the node declared.
    pub attrs: u64,
    /// The node's communications (encryption) public key, DER SubjectPublicKeyInfo.
    pub comms_key: Vec<u8>,
    /// The node's signing public key, DER SubjectPublicKeyInfo.
    pub sig_key: Vec<u8>,
    /// The endpoints (addresses) the node can be reached at.
    pub endpoints: Vec<String>,
    /// When the node first registered, in milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
    /// When the node's name, attributes or endpoints last changed, in ms since the Unix epoch.
    pub updated_at_ms: u64,
}

/// A node's membership of a cluster, as stored inside the [`ClusterRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's slot: 0, 1, ... in join order, never reused.
    pub slot: u32,
    /// The member node's id.
    pub node_id: Id,
    /// The member's name (the node's name when it last joined).
    pub name: String,
    /// The member's attribute bits (the node's when it last joined).
    pub attrs: u64,
    /// The member's endpoints (the node's when it last joined).
    pub endpoints: Vec<String>,
    /// When the node first joined, in milliseconds since the Unix epoch.
    pub joined_at_ms: u64,
}

/// A named cluster and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The cluster's id.
    pub id: Id,
    /// The cluster's unique name.
    pub name: String,
    /// Attribute bits given when the cluster was created.
    pub attrs: u64,
    /// The most members the cluster may have.
    pub max_size: u32,
    /// How many endpoints each member must offer.
    pub endpoint_count: u32,
    /// When the cluster was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When a member last joined (or rejoined), in milliseconds since the Unix epoch.
    pub touched_at_ms: u64,
    /// The members, in slot order.
    pub members: Vec<MemberRecord>,
}

impl ClusterRecord {
    /// How many members the cluster has.
    pub fn member_count(&self) -> u32 {
        u32::try_from(self.members.len()).unwrap_or(u32::MAX)
    }

    /// The slot the next new member gets: one past the highest slot used, or 0. Slots are
    /// never reused.
    pub fn next_slot(&self) -> u32 {
        self.members
            .iter()
            .map(|m| m.slot)
            .max()
            .map_or(0, |s| s.saturating_add(1))
    }

    /// Whether the cluster has as many members as its maximum size (or more).
    pub fn is_full(&self) -> bool {
        self.member_count() >= self.max_size
    }

    /// The member record of the given node, if it is a member.
    pub fn member_by_node(&self, node: &Id) -> Option<&MemberRecord> {
        self.members.iter().find(|m| &m.node_id == node)
    }
}

/// Facts about this registry instance, kept under `meta`/`registry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryMeta {
    /// The registry's name.
    pub name: String,
    /// The registry's own id.
    pub id: Id,
    /// When the registry was first set up, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// The bincode options of the stored format: those of `bincode::serialize` (fixed-width
/// integers, little-endian), refusing trailing bytes when decoding.
fn options() -> impl Options {
    bincode::options()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Encodes a record for storage.
pub(super) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    options()
        .serialize(value)
        .map_err(|e| StoreError::Corrupt(format!("could not encode {what}: {e}")))
}

/// Decodes a stored record; `key` is only used in the error message.
pub(super) fn decode<T: DeserializeOwned>(
    what: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    options().deserialize(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "{what} record under key {} does not decode: {e}",
            hex::encode(key)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> Id {
        Id::from_bytes(&[b; 32]).unwrap()
    }

    fn member(slot: u32, node: u8) -> MemberRecord {
        MemberRecord {
            slot,
            node_id: id(node),
            name: format!("m{slot}"),
            attrs: 0,
            endpoints: vec![],
            joined_at_ms: 0,
        }
    }

    #[test]
    fn cluster_helpers() {
        let mut c = ClusterRecord {
            id: id(0),
            name: "c".into(),
            attrs: 0,
            max_size: 2,
            endpoint_count: 1,
            created_at_ms: 0,
            touched_at_ms: 0,
            members: vec![],
        };
        assert_eq!(c.next_slot(), 0);
        assert!(!c.is_full());
        c.members.push(member(0, 1));
        c.members.push(member(3, 2));
        assert_eq!(c.member_count(), 2);
        assert_eq!(c.next_slot(), 4);
        assert!(c.is_full());
        assert_eq!(c.member_by_node(&id(2)).map(|m| m.slot), Some(3));
        assert!(c.member_by_node(&id(9)).is_none());
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
