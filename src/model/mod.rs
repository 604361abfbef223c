//! The registry's vocabulary: its records, the changes made to them and the refusals its
//! rules make. No storage, no I/O, no clock.
//!
//! This module owns the records every store backend keeps ([`NodeRecord`], [`ClusterRecord`]
//! with its [`MemberRecord`]s inline, [`RegistryMeta`]), how a request names a cluster
//! ([`ClusterRef`]), the changes the protocol asks for ([`Write`]: [`NewNode`],
//! [`NewCluster`], a join) and what they did ([`Written`]), and [`Refusal`]: every way the
//! registry's rules turn a change down. The rules themselves are pure functions over records
//! in [`rules`]; every backend (`crate::store`) applies them inside its own transaction.
//!
//! The records' serde form is the on-disk format of the sled backend (bincode 1.3.3, schema
//! 1): field order and types must not change without a schema migration.

pub mod rules;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// Which of a node's two keys differ from the ones registered under its id
/// ([`Refusal::NodeKeyMismatch`]), as its text names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchedKeys {
    /// Only the signing key differs.
    Signing,
    /// Only the comms (encryption) key differs.
    Comms,
    /// Both keys differ.
    Both,
}

impl fmt::Display for MismatchedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MismatchedKeys::Signing => "signing key",
            MismatchedKeys::Comms => "comms key",
            MismatchedKeys::Both => "signing key and comms key",
        })
    }
}

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
    #[serde(with = "serde_bytes")]
    pub comms_key: Vec<u8>,
    /// The node's signing public key, DER SubjectPublicKeyInfo.
    #[serde(with = "serde_bytes")]
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

/// Facts about this registry instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryMeta {
    /// The registry's name.
    pub name: String,
    /// The registry's own id.
    pub id: Id,
    /// When the registry was first set up, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// Names a cluster by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRef {
    /// The cluster with this id.
    Id(Id),
    /// The cluster with this name.
    Name(String),
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterRef::Id(id) => f.write_str(&id.to_hex()),
            ClusterRef::Name(name) => f.write_str(name),
        }
    }
}

/// A node's registration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    /// The id the node already has, or `None` to be issued a fresh one.
    pub id: Option<Id>,
    /// The node's name.
    pub name: String,
    /// The node's attribute bits.
    pub attrs: u64,
    /// The node's communications public key, DER SubjectPublicKeyInfo.
    pub comms_key: Vec<u8>,
    /// The node's signing public key, DER SubjectPublicKeyInfo.
    pub sig_key: Vec<u8>,
    /// The node's endpoints.
    pub endpoints: Vec<String>,
}

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// A new node record was stored.
    Created,
    /// The node was known; its name, attributes or endpoints were changed.
    Updated,
    /// The node was known with exactly these details; nothing changed.
    Unchanged,
}

/// The result of registering a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The node record as stored after the registration.
    pub node: NodeRecord,
    /// What the registration did.
    pub outcome: RegistrationOutcome,
}

/// A request to create a cluster. The store stores what it is given: callers validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCluster {
    /// The cluster's unique name.
    pub name: String,
    /// The cluster's attribute bits.
    pub attrs: u64,
    /// The most members the cluster may have.
    pub max_size: u32,
    /// How many endpoints each member must offer.
    pub endpoint_count: u32,
}

/// The result of a successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The cluster as stored after the join.
    pub cluster: ClusterRecord,
    /// The node's slot in the cluster.
    pub slot: u32,
    /// Whether the node was already a member (and got its old slot back).
    pub rejoined: bool,
}

/// How much a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Registered nodes.
    pub nodes: u64,
    /// Clusters.
    pub clusters: u64,
    /// Memberships, summed over all clusters.
    pub members: u64,
}

/// A change to the registry: what the Member, Create and Join requests do to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Register or re-register a node ([`rules::register`]).
    RegisterNode {
        /// The node.
        node: NewNode,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Create a cluster or find the existing one of that name ([`rules::create`]).
    CreateCluster {
        /// The cluster.
        cluster: NewCluster,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Add a registered node to a cluster or give it its slot back ([`rules::join`]).
    Join {
        /// The cluster.
        cluster: ClusterRef,
        /// The node's id.
        node: Id,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
}

/// What a [`Write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The result of [`Write::RegisterNode`].
    Node(Registration),
    /// The result of [`Write::CreateCluster`]: the cluster, and whether it was created.
    Cluster(ClusterRecord, bool),
    /// The result of [`Write::Join`].
    Joined(JoinOutcome),
}

/// Why the registry's rules turned a [`Write`] down. A refusal changes nothing; it is an
/// answer to the request, not a failure of the store (that is `crate::store::StorageError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No cluster has the given name or id (as the caller gave it).
    #[error("no such cluster: {0}")]
    NoSuchCluster(String),
    /// No node is registered with this id.
    #[error("no such node: {0}")]
    NoSuchNode(Id),
    /// The cluster already has as many members as its maximum size.
    #[error("cluster {name} is full ({members}/{max})")]
    ClusterFull {
        /// The cluster's name.
        name: String,
        /// How many members it has.
        members: u32,
        /// Its maximum size.
        max: u32,
    },
    /// Another node is already a member of the cluster under this name.
    #[error("cluster {cluster} already has a different member named {name}")]
    MemberNameTaken {
        /// The cluster's name.
        cluster: String,
        /// The member name that is taken.
        name: String,
    },
    /// The node offers fewer endpoints than the cluster requires of each member.
    #[error("cluster {cluster} needs {needed} endpoints per member, the node offers {offered}")]
    TooFewEndpoints {
        /// The cluster's name.
        cluster: String,
        /// Endpoints each member must offer.
        needed: u32,
        /// Endpoints the node offers.
        offered: u32,
    },
    /// The node id is registered with different keys than the ones presented.
    #[error("node {id} is registered with a different {keys}")]
    NodeKeyMismatch {
        /// The node id.
        id: Id,
        /// Which of the presented keys differ from the registered ones.
        keys: MismatchedKeys,
    },
    /// The registry holds as many clusters (or nodes) as its operator allows
    /// (`serve --max-clusters`, `--max-nodes`; see `crate::store::Caps`): a new cluster or a
    /// new node is refused, while finding an existing cluster, re-registering a known node
    /// and joining still work. Not the client's fault and not a storage failure: the
    /// protocol answers it as Unavailable.
    #[error("the registry holds its maximum of {max} {what}; ask its operator")]
    RegistryFull {
        /// "clusters" or "nodes".
        what: &'static str,
        /// The cap.
        max: u64,
    },
    /// A rate quota is used up (`serve --quota-*`; see `crate::quota`): this peer address or
    /// node has created as many clusters, or registered as many new nodes, as its quota
    /// allows for now. Temporary: the protocol answers it as Unavailable, and the text says
    /// which quota and when to try again. Finding an existing cluster and re-registering a
    /// known node are not counted and not refused.
    #[error("{text}")]
    OverQuota {
        /// "quota: ... try again in N s".
        text: String,
        /// How long until the quota admits one more, in milliseconds.
        retry_after_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node record as schema 1 wrote it, before its byte strings were marked as such.
    #[derive(Serialize, Deserialize)]
    struct SchemaOneNode {
        id: Vec<u8>,
        name: String,
        attrs: u64,
        comms_key: Vec<u8>,
        sig_key: Vec<u8>,
        endpoints: Vec<String>,
        registered_at_ms: u64,
        updated_at_ms: u64,
    }

    #[test]
    fn byte_strings_keep_the_schema_one_encoding() {
        let node = NodeRecord {
            id: id(7),
            name: "n".into(),
            attrs: 3,
            comms_key: vec![0x30, 0x82, 1, 2],
            sig_key: (0..=255).collect(),
            endpoints: vec!["127.0.0.1:1".into()],
            registered_at_ms: 5,
            updated_at_ms: 6,
        };
        let old = SchemaOneNode {
            id: node.id.as_bytes().to_vec(),
            name: node.name.clone(),
            attrs: node.attrs,
            comms_key: node.comms_key.clone(),
            sig_key: node.sig_key.clone(),
            endpoints: node.endpoints.clone(),
            registered_at_ms: 5,
            updated_at_ms: 6,
        };
        let old_bytes = bincode::serialize(&old).unwrap();
        assert_eq!(bincode::serialize(&node).unwrap(), old_bytes);
        assert_eq!(
            bincode::deserialize::<NodeRecord>(&old_bytes).unwrap(),
            node
        );
    }

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
}

/// A cluster with the current record of each member's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster.
    pub cluster: ClusterRecord,
    /// The node record of each member, in the order of `cluster.members`.
    pub nodes: Vec<NodeRecord>,
}

impl ClusterView {
    /// Looks up each member's node with `node` and builds the view; a member whose node is
    /// not registered means the store is corrupt.
    pub(crate) fn build(
        cluster: ClusterRecord,
        mut node: impl FnMut(&Id) -> Result<Option<NodeRecord>, StorageError>,
    ) -> Result<ClusterView, StorageError> {
        let nodes = cluster
            .members
            .iter()
            .map(|m| {
                node(&m.node_id)?.ok_or_else(|| {
                    StorageError::Corrupt(format!(
                        "cluster {} lists member node {} which is not registered",
                        cluster.name, m.node_id
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ClusterView { cluster, nodes })
    }

    /// Each member with its node's record, in slot order.
    pub fn members(&self) -> impl Iterator<Item = (&MemberRecord, &NodeRecord)> {
        self.cluster.members.iter().zip(&self.nodes)
    }
}

/// Why the store failed. A failure is never a refusal: after one, nothing that depends on
/// it may be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process (or another store in this process) holds the data directory's lock.
    #[error("data directory {} is in use by another xlreg process", dir.display())]
    Locked {
        /// The data directory that could not be locked.
        dir: PathBuf,
    },
    /// A file-system operation of the store itself failed, or its writer stopped.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The backend's database reported a failure.
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record or key could not be decoded, or the stored data is inconsistent.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The data directory was written by a newer xlreg with a newer on-disk layout.
    #[error(
        "data directory has schema version {found}, this xlreg understands up to {supported}; \
         use a newer xlreg"
    )]
    SchemaTooNew {
        /// The schema version found in the data directory.
        found: u32,
        /// The newest schema version this build understands.
        supported: u32,
    },
    /// Fresh random ids kept colliding with existing ones; the random source is broken.
    #[error("could not draw an unused id in {tries} tries; the random number source looks broken")]
    NoFreshId {
        /// How many ids were drawn.
        tries: u32,
    },
    /// The registry's storage has failed (a write, flush or sync failed, the writer
    /// panicked, or a store operation hung; see `crate::failstop`): fail-stop, nothing is
    /// read or acknowledged any more until the registry restarts. Carries the reason of the
    /// first failure.
    #[error("registry storage has failed ({0}); nothing more is acknowledged until a restart")]
    Failed(String),
    /// Opening the data directory failed inside the backend's database, which gave up with
    /// a panic (sled 0.34.7 does so on some I/O failures while it recovers, a failed fsync
    /// among them).
    #[error("cannot open the data directory {}: {message}", dir.display())]
    OpenFailed {
        /// The data directory.
        dir: PathBuf,
        /// What the database said.
        message: String,
    },
    /// The store cannot be reached now (no etcd quorum answers within the request timeout):
    /// temporary, unlike [`StorageError::Failed`]; nothing was changed by the request that
    /// got it, or, for a write whose outcome could not be learned, nothing is acknowledged.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Records were to be restored into a store that already holds data.
    #[error("data directory {} already holds data; restore only into an empty directory", dir.display())]
    NotEmpty {
        /// The data directory (empty for a store kept in memory).
        dir: PathBuf,
    },
}

/// Why a write did not happen: the registry's rules refused it, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The rules refused the write; nothing changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl StoreError {
    /// Folds a port answer (a storage failure outside, a refusal inside) into one result.
    pub fn flatten<T>(answer: Result<Result<T, Refusal>, StorageError>) -> Result<T, StoreError> {
        Ok(answer??)
    }
}
