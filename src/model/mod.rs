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
//! 2): field order and types must not change without a schema migration.

pub mod admission;
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
    /// Who may join and see the cluster, and its join tokens (schema 2).
    pub admission: Admission,
}

/// Token usage bit: the token admits new members (docs/protocol.md section 14).
pub const USAGE_JOIN: u32 = 1;
/// Token usage bit: the token lets its holder list the members.
pub const USAGE_LIST: u32 = 2;
/// The most join tokens one cluster holds (a bound on the cluster record's size).
pub const MAX_TOKENS_PER_CLUSTER: usize = 64;

/// A cluster's admission state: its owner's verifier, its policy, whether it still takes
/// new members, and its join tokens, kept inline so that a token's check, its use counter
/// and the slot it gives are one record in one transaction in every backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The owner verifier (a 32-byte Ed25519 public key), empty for a cluster without owner.
    #[serde(with = "serde_bytes")]
    pub owner_key: Vec<u8>,
    /// Open: admits and shows itself to every registered node, as before admission.
    pub open: bool,
    /// Closed by its owner to new members.
    pub closed: bool,
    /// The join tokens, in the order minted (at most [`MAX_TOKENS_PER_CLUSTER`]).
    pub tokens: Vec<TokenRecord>,
}

impl Admission {
    /// The admission state of an open cluster without owner: every cluster before schema 2,
    /// and every cluster the 1.9 wire creates.
    pub fn open() -> Admission {
        Admission {
            owner_key: Vec::new(),
            open: true,
            closed: false,
            tokens: Vec::new(),
        }
    }

    /// Whether the cluster has an owner.
    pub fn has_owner(&self) -> bool {
        !self.owner_key.is_empty()
    }

    /// The token with this id.
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.iter().find(|t| t.id == id)
    }
}

/// A join token as the registry keeps it: never its secret, only the verifier derived from
/// it (`crate::model::admission`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public token id, unique within the cluster.
    pub id: String,
    /// The token's verifier, a 32-byte Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub verifier: Vec<u8>,
    /// Usage bits ([`USAGE_JOIN`], [`USAGE_LIST`]).
    pub usages: u32,
    /// When it was minted, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it expires, in ms since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
    /// Joins it still admits; `None` = unlimited.
    pub uses_left: Option<u32>,
    /// Revoked by the owner.
    pub revoked: bool,
}

impl TokenRecord {
    /// Whether the token has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms >= self.expires_at_ms
    }

    /// Whether the token can never admit or show anything again (revoked, expired or used
    /// up): such tokens are dropped when the next one is minted.
    pub fn is_dead(&self, now_ms: u64) -> bool {
        self.revoked || self.is_expired(now_ms) || self.uses_left == Some(0)
    }
}

impl ClusterRecord {
    /// How many members the cluster has.
    pub fn member_count(&self) -> u32 {
        u32::try_from(self.members.len()).unwrap_or(u32::MAX)
    }

    /// The slot the next new member gets: the lowest slot no member holds (members may
    /// leave or be evicted; without that, this is join order).
    pub fn next_slot(&self) -> u32 {
        (0..=self.member_count())
            .find(|slot| self.members.iter().all(|m| m.slot != *slot))
            .unwrap_or(u32::MAX)
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
    /// Its owner, policy and first join token (default: open, without owner).
    pub admission: NewAdmission,
}

/// A proof made in one session (docs/protocol.md section 14.2): the session's binding and
/// the Ed25519 signature. Not a secret, and checked by the rules against stored verifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The session binding (xlReg/2: the registry's salt; xlReg/3: the handshake hash).
    pub binding: Vec<u8>,
    /// The signature (64 bytes for a valid one).
    pub signature: Vec<u8>,
}

/// A join or list proof by a token's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaim {
    /// The token id.
    pub id: String,
    /// The proof.
    pub proof: Proof,
}

/// A token to store (its lifetime is counted from the time of the write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The token id.
    pub id: String,
    /// The verifier, a 32-byte Ed25519 public key.
    pub verifier: Vec<u8>,
    /// Usage bits.
    pub usages: u32,
    /// Lifetime in ms; 0 = never expires.
    pub ttl_ms: u64,
    /// Joins it admits; `None` = unlimited.
    pub uses: Option<u32>,
}

/// The admission part of a Create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAdmission {
    /// The owner verifier and the proof the creator holds its credential; `None`: an open
    /// cluster without owner.
    pub owner: Option<(Vec<u8>, Proof)>,
    /// With an owner: admit without tokens.
    pub open: bool,
    /// The first join token.
    pub first_token: Option<NewToken>,
}

impl Default for NewAdmission {
    /// Open, without owner: what a Create meant before admission.
    fn default() -> NewAdmission {
        NewAdmission {
            owner: None,
            open: true,
            first_token: None,
        }
    }
}

/// A change only the owner may make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerChange {
    /// Store a new token.
    Mint(NewToken),
    /// Revoke the token with this id.
    Revoke(String),
    /// Remove the member that is this node.
    Evict(Id),
    /// Take no new members from now on.
    Close,
    /// Delete the cluster, its members and tokens.
    Delete,
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
        /// The join proof, if the node presents a token.
        token: Option<TokenClaim>,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// A change by the cluster's owner, proved by `proof` ([`rules::owner_change`]).
    Owner {
        /// The cluster.
        cluster: ClusterRef,
        /// The owner proof.
        proof: Proof,
        /// The change.
        change: OwnerChange,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// A member leaves the cluster ([`rules::leave`]).
    Leave {
        /// The cluster.
        cluster: ClusterRef,
        /// The member's node id.
        node: Id,
    },
}

impl Write {
    /// The cluster a write proves something about (a join token, the owner credential), as
    /// the request named it: such writes are refused while failed proofs are throttled.
    pub fn proof_target(&self) -> Option<&ClusterRef> {
        match self {
            Write::Join {
                cluster,
                token: Some(_),
                ..
            }
            | Write::Owner { cluster, .. } => Some(cluster),
            _ => None,
        }
    }
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
    /// The result of a mint or a revocation: the cluster, and the token concerned.
    Token(ClusterRecord, TokenRecord),
    /// The result of an eviction, a close, a delete (the cluster as it was) or a leave.
    Changed(ClusterRecord),
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
    /// A join, list or owner proof did not verify, or named a token or cluster that does
    /// not exist: the same answer either way, so a stranger learns nothing.
    #[error("{}", bad_proof_text(*.kind, cluster, tid))]
    BadProof {
        /// Which proof.
        kind: ProofKind,
        /// The cluster as the request named it.
        cluster: String,
        /// The token id the request named (join and list proofs).
        tid: String,
    },
    /// The proof verified, but the token may not do this.
    #[error("join token {tid} {problem}")]
    TokenRefused {
        /// The token id.
        tid: String,
        /// What is wrong with it.
        problem: TokenProblem,
    },
    /// The cluster takes no new members (its owner closed it).
    #[error("cluster {0} is closed to new members")]
    ClusterClosed(String),
    /// A Create named a cluster that exists and is not the creator's.
    #[error("cluster name {0} is taken")]
    NameTaken(String),
    /// A token with this id exists in the cluster.
    #[error("cluster {cluster} already has a token {tid}")]
    TokenIdTaken {
        /// The cluster's name.
        cluster: String,
        /// The token id.
        tid: String,
    },
    /// The cluster holds [`MAX_TOKENS_PER_CLUSTER`] live tokens.
    #[error("cluster {0} holds its maximum of 64 tokens; revoke some")]
    TooManyTokens(String),
    /// The owner named a token the cluster does not have.
    #[error("cluster {cluster} has no token {tid}")]
    NoSuchToken {
        /// The cluster's name.
        cluster: String,
        /// The token id.
        tid: String,
    },
    /// The node is not a member of the cluster.
    #[error("node {node} is not a member of cluster {cluster}")]
    NotAMember {
        /// The cluster's name.
        cluster: String,
        /// The node.
        node: Id,
    },
}

impl Refusal {
    /// The admission reason of this refusal, for the `xlreg_admission_failures_total`
    /// metric: `None` for a refusal that is not about admission.
    pub fn admission_reason(&self) -> Option<&'static str> {
        match self {
            Refusal::BadProof { kind, .. } => Some(kind.reason()),
            Refusal::TokenRefused { problem, .. } => Some(problem.reason()),
            Refusal::ClusterClosed(_) => Some("closed"),
            _ => None,
        }
    }

    /// Whether this refusal is a failed proof (counted by the throttle).
    pub fn is_failed_proof(&self) -> bool {
        matches!(self, Refusal::BadProof { .. })
    }
}

/// Which admission proof failed ([`Refusal::BadProof`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofKind {
    /// A Join's token proof.
    Join,
    /// A GetCluster's token proof.
    List,
    /// An owner proof.
    Owner,
}

impl ProofKind {
    /// The metric label of the failure.
    pub fn reason(self) -> &'static str {
        match self {
            ProofKind::Join => "join_proof",
            ProofKind::List => "list_proof",
            ProofKind::Owner => "owner_proof",
        }
    }
}

fn bad_proof_text(kind: ProofKind, cluster: &str, tid: &str) -> String {
    match kind {
        ProofKind::Join => format!("join token {tid} is not valid for cluster {cluster}"),
        ProofKind::List => format!("list proof for token {tid} is not valid for cluster {cluster}"),
        ProofKind::Owner => format!("owner proof does not verify for cluster {cluster}"),
    }
}

/// Why a token whose proof verified may not do what was asked ([`Refusal::TokenRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// The owner revoked it.
    Revoked,
    /// Its lifetime is over.
    Expired,
    /// It lacks the `join` usage.
    NoJoin,
    /// It lacks the `list` usage.
    NoList,
    /// It admitted as many joins as it was minted for.
    UsedUp,
}

impl TokenProblem {
    /// The metric label of the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            TokenProblem::Revoked => "token_revoked",
            TokenProblem::Expired => "token_expired",
            TokenProblem::NoJoin | TokenProblem::NoList => "token_usage",
            TokenProblem::UsedUp => "token_used_up",
        }
    }
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenProblem::Revoked => "was revoked",
            TokenProblem::Expired => "has expired",
            TokenProblem::NoJoin => "does not allow joining",
            TokenProblem::NoList => "does not allow listing",
            TokenProblem::UsedUp => "is used up",
        })
    }
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
            admission: Admission::open(),
        };
        assert_eq!(c.next_slot(), 0);
        assert!(!c.is_full());
        c.members.push(member(0, 1));
        c.members.push(member(3, 2));
        assert_eq!(c.member_count(), 2);
        // The lowest free slot: 1 is free again.
        assert_eq!(c.next_slot(), 1);
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
