//! `admin export` and `admin import`: the registry's public data as a versioned JSON document.
//!
//! This module owns [`ExportDocument`] (format `xlreg-export`, version 1), building or
//! writing it (record by record, [`write()`]) from a point-in-time [`StoreView`], and
//! rebuilding a registry from it. The document holds the
//! registry's name and ID, every node (with its public keys), every cluster and every
//! membership; never a private key. Export is deterministic (nodes and clusters in ID order,
//! members in slot order), and import stores exactly what the document says, so export ->
//! import -> export gives the same document.
//!
//! Import checks the document as strictly as the registry checks its peers (names,
//! endpoints, key sizes, duplicate IDs) and then every store invariant
//! ([`Snapshot::verify`]) before it writes anything. Since the document carries no private
//! keys, an imported registry gets fresh key files: same name and ID, new keys, so clients
//! need the new regCred.dat that `serve` writes.

use std::cell::Cell;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use serde::ser::{Error as _, SerializeSeq as _, SerializeStruct as _};
use serde::{Deserialize, Serialize, Serializer};

use super::target::NewDataDir;
use super::AdminError;
use crate::crypto::PublicKey;
use crate::id::Id;
use crate::model::admission::{check_token_id, VERIFIER_LEN};
use crate::model::{Admission, TokenRecord, MAX_TOKENS_PER_CLUSTER};
use crate::store::{
    BackendChoice, ClusterRecord, MemberRecord, NodeRecord, RegistryMeta, Snapshot, StoreView,
};
use crate::validate;

/// The `format` field of an export document.
pub const EXPORT_FORMAT: &str = "xlreg-export";
/// The document version this xlreg writes and reads.
pub const EXPORT_VERSION: u32 = 1;
/// The largest export file `import` reads.
pub const MAX_EXPORT_BYTES: u64 = 1 << 30;

/// A complete export of a registry's public data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDocument {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// The document version, [`EXPORT_VERSION`].
    pub version: u32,
    /// The registry's own facts, if it has been started.
    pub registry: Option<ExportedRegistry>,
    /// Every node, in ID order.
    pub nodes: Vec<ExportedNode>,
    /// Every cluster with its members, in ID order.
    pub clusters: Vec<ExportedCluster>,
}

/// The registry's name and ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedRegistry {
    /// The registry's name.
    pub name: String,
    /// The registry's ID, hex.
    pub id: String,
    /// When it was set up, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedNode {
    /// The node's ID, hex.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its attribute bits.
    pub attrs: u64,
    /// Its communications key, base64 DER SubjectPublicKeyInfo.
    pub comms_key: String,
    /// Its signing key, base64 DER SubjectPublicKeyInfo.
    pub sig_key: String,
    /// Its endpoints.
    pub endpoints: Vec<String>,
    /// When it first registered.
    pub registered_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
}

/// A cluster and its memberships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedCluster {
    /// The cluster's ID, hex.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its attribute bits.
    pub attrs: u64,
    /// Its maximum size.
    pub max_size: u32,
    /// Endpoints each member must offer.
    pub endpoint_count: u32,
    /// When it was created.
    pub created_at_ms: u64,
    /// When a member last joined.
    pub touched_at_ms: u64,
    /// Its members, in slot order.
    pub members: Vec<ExportedMember>,
    /// Its owner, policy and join tokens (docs/protocol.md section 14); absent for an open
    /// cluster without owner (every cluster before admission, and the 1.9 wire's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<ExportedAdmission>,
}

/// A cluster's admission state: verifiers only, never a secret (the registry has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedAdmission {
    /// The owner verifier (Ed25519 public key), hex; empty for no owner.
    pub owner_key: String,
    /// Admits without tokens.
    pub open: bool,
    /// Closed to new members.
    pub closed: bool,
    /// The join tokens, in the order minted.
    pub tokens: Vec<ExportedToken>,
}

/// A join token: its id and verifier, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedToken {
    /// The token id.
    pub id: String,
    /// The verifier (Ed25519 public key), hex.
    pub verifier: String,
    /// Usage bits: 1 join, 2 list.
    pub usages: u32,
    /// When it was minted.
    pub created_at_ms: u64,
    /// When it expires; 0 = never.
    pub expires_at_ms: u64,
    /// Joins it still admits; absent = unlimited.
    pub uses_left: Option<u32>,
    /// Revoked by the owner.
    pub revoked: bool,
}

/// The exported form of a cluster's admission state (also what `admin cluster` shows);
/// `None` for an open cluster without owner.
pub(crate) fn exported_admission(a: Admission) -> Option<ExportedAdmission> {
    (a != Admission::open()).then(|| ExportedAdmission {
        owner_key: hex::encode(&a.owner_key),
        open: a.open,
        closed: a.closed,
        tokens: a
            .tokens
            .into_iter()
            .map(|t| ExportedToken {
                id: t.id,
                verifier: hex::encode(&t.verifier),
                usages: t.usages,
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                uses_left: t.uses_left,
                revoked: t.revoked,
            })
            .collect(),
    })
}

/// The admission state a document describes, checked as the protocol checks it.
fn imported_admission(c: &ExportedCluster) -> Result<Admission, String> {
    let Some(a) = &c.admission else {
        return Ok(Admission::open());
    };
    let key = |what: &str, text: &str, empty_ok: bool| match hex::decode(text) {
        Ok(bytes) if bytes.len() == VERIFIER_LEN || (empty_ok && bytes.is_empty()) => Ok(bytes),
        _ => Err(format!(
            "cluster {}: {what} must be {VERIFIER_LEN} bytes of hex",
            c.name
        )),
    };
    if a.tokens.len() > MAX_TOKENS_PER_CLUSTER {
        return Err(format!(
            "cluster {}: more than {MAX_TOKENS_PER_CLUSTER} tokens",
            c.name
        ));
    }
    let owner_key = key("owner_key", &a.owner_key, true)?;
    if owner_key.is_empty() && !a.open {
        return Err(format!(
            "cluster {}: a cluster without owner must be open",
            c.name
        ));
    }
    let mut tokens = Vec::with_capacity(a.tokens.len());
    for t in &a.tokens {
        check_token_id(&t.id).map_err(|e| format!("cluster {}: {e}", c.name))?;
        if tokens.iter().any(|seen: &TokenRecord| seen.id == t.id) {
            return Err(format!("cluster {}: token {} appears twice", c.name, t.id));
        }
        tokens.push(TokenRecord {
            id: t.id.clone(),
            verifier: key(&format!("token {} verifier", t.id), &t.verifier, false)?,
            usages: t.usages,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            uses_left: t.uses_left,
            revoked: t.revoked,
        });
    }
    Ok(Admission {
        owner_key,
        open: a.open,
        closed: a.closed,
        tokens,
    })
}

/// One membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedMember {
    /// The member's slot.
    pub slot: u32,
    /// The member node's ID, hex.
    pub node_id: String,
    /// The member's name.
    pub name: String,
    /// The member's attribute bits.
    pub attrs: u64,
    /// The member's endpoints.
    pub endpoints: Vec<String>,
    /// When it first joined.
    pub joined_at_ms: u64,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The registry's name and ID, if the document had them.
    pub registry: Option<(String, String)>,
    /// Nodes imported.
    pub nodes: usize,
    /// Clusters imported.
    pub clusters: usize,
    /// Memberships imported.
    pub members: usize,
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

fn exported_registry(meta: RegistryMeta) -> ExportedRegistry {
    ExportedRegistry {
        name: meta.name,
        id: meta.id.to_hex(),
        created_at_ms: meta.created_at_ms,
    }
}

fn exported_node(n: NodeRecord) -> ExportedNode {
    ExportedNode {
        id: n.id.to_hex(),
        name: n.name,
        attrs: n.attrs,
        comms_key: b64(&n.comms_key),
        sig_key: b64(&n.sig_key),
        endpoints: n.endpoints,
        registered_at_ms: n.registered_at_ms,
        updated_at_ms: n.updated_at_ms,
    }
}

fn exported_cluster(c: ClusterRecord) -> ExportedCluster {
    ExportedCluster {
        id: c.id.to_hex(),
        name: c.name,
        attrs: c.attrs,
        max_size: c.max_size,
        endpoint_count: c.endpoint_count,
        created_at_ms: c.created_at_ms,
        touched_at_ms: c.touched_at_ms,
        members: c
            .members
            .into_iter()
            .map(|m| ExportedMember {
                slot: m.slot,
                node_id: m.node_id.to_hex(),
                name: m.name,
                attrs: m.attrs,
                endpoints: m.endpoints,
                joined_at_ms: m.joined_at_ms,
            })
            .collect(),
        admission: exported_admission(c.admission),
    }
}

fn unreadable(e: crate::store::StorageError) -> AdminError {
    AdminError::Unreadable(e.to_string())
}

/// Builds the export document of a point-in-time view (a [`Snapshot`], say), in memory.
/// [`write()`] writes the same document without building it.
pub fn export(snapshot: &dyn StoreView) -> Result<ExportDocument, AdminError> {
    let registry = snapshot
        .registry_meta()
        .map_err(unreadable)?
        .map(exported_registry);
    let nodes = snapshot
        .nodes()
        .map(|node| node.map(exported_node))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    let clusters = snapshot
        .clusters()
        .map(|cluster| cluster.map(exported_cluster))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    Ok(ExportDocument {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        registry,
        nodes,
        clusters,
    })
}

/// How much an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCounts {
    /// Nodes written.
    pub nodes: usize,
    /// Clusters written.
    pub clusters: usize,
}

/// Writes the export document of `view` to `out` as pretty-printed JSON and a newline, one
/// record at a time: the same bytes as [`export`] and then serializing the document, without
/// building it (on a registry of 100,000 clusters that document is several hundred MB). The
/// offline `admin export` and the daemon's streamed answer both write through here. A record
/// that does not decode fails the write with [`AdminError::Unreadable`], naming it.
pub fn write(view: &dyn StoreView, out: &mut dyn Write) -> Result<ExportCounts, AdminError> {
    let registry = view.registry_meta().map_err(unreadable)?;
    let streamed = streamed_records(registry, view.nodes(), view.clusters());
    serde_json::to_writer_pretty(&mut *out, &streamed).map_err(|e| {
        if e.is_io() {
            AdminError::Output(e.into())
        } else {
            AdminError::Unreadable(e.to_string())
        }
    })?;
    out.write_all(b"\n").map_err(AdminError::Output)?;
    Ok(ExportCounts {
        nodes: streamed.nodes.count.get(),
        clusters: streamed.clusters.count.get(),
    })
}

/// An export document serialized one record at a time, with the shape of [`ExportDocument`].
struct Streamed<N, C> {
    registry: Option<ExportedRegistry>,
    nodes: StreamedSeq<N>,
    clusters: StreamedSeq<C>,
}

type Decoded<T> = Result<T, crate::store::StorageError>;

/// Records as they are read, made into their exported form one at a time.
type Exporting<I, R, E> = std::iter::Map<I, fn(Decoded<R>) -> Decoded<E>>;

/// The streamed document of these records (each iterator in ID order, as the store gives
/// them).
fn streamed_records<NI, CI>(
    registry: Option<RegistryMeta>,
    nodes: NI,
    clusters: CI,
) -> Streamed<Exporting<NI, NodeRecord, ExportedNode>, Exporting<CI, ClusterRecord, ExportedCluster>>
where
    NI: Iterator<Item = Decoded<NodeRecord>>,
    CI: Iterator<Item = Decoded<ClusterRecord>>,
{
    let node: fn(Decoded<NodeRecord>) -> Decoded<ExportedNode> = |n| n.map(exported_node);
    let cluster: fn(Decoded<ClusterRecord>) -> Decoded<ExportedCluster> =
        |c| c.map(exported_cluster);
    Streamed {
        registry: registry.map(exported_registry),
        nodes: StreamedSeq::new(nodes.map(node)),
        clusters: StreamedSeq::new(clusters.map(cluster)),
    }
}

/// A sequence serialized (once) from a fallible iterator, counting its elements.
struct StreamedSeq<I> {
    items: Cell<Option<I>>,
    count: Cell<usize>,
}

impl<I> StreamedSeq<I> {
    fn new(items: I) -> StreamedSeq<I> {
        StreamedSeq {
            items: Cell::new(Some(items)),
            count: Cell::new(0),
        }
    }
}

impl<I, T> Serialize for StreamedSeq<I>
where
    I: Iterator<Item = Result<T, crate::store::StorageError>>,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let items = self
            .items
            .take()
            .ok_or_else(|| S::Error::custom("an export sequence was serialized twice"))?;
        let mut seq = serializer.serialize_seq(None)?;
        for item in items {
            seq.serialize_element(&item.map_err(S::Error::custom)?)?;
            self.count.set(self.count.get() + 1);
        }
        seq.end()
    }
}

impl<N, C> Serialize for Streamed<N, C>
where
    StreamedSeq<N>: Serialize,
    StreamedSeq<C>: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The fields of ExportDocument, in its order.
        let mut doc = serializer.serialize_struct("ExportDocument", 5)?;
        doc.serialize_field("format", EXPORT_FORMAT)?;
        doc.serialize_field("version", &EXPORT_VERSION)?;
        doc.serialize_field("registry", &self.registry)?;
        doc.serialize_field("nodes", &self.nodes)?;
        doc.serialize_field("clusters", &self.clusters)?;
        doc.end()
    }
}

/// The records a document describes.
struct Records {
    meta: Option<RegistryMeta>,
    nodes: Vec<NodeRecord>,
    clusters: Vec<ClusterRecord>,
}

/// The records a document describes, checked as the registry checks what its peers send,
/// and then against every store invariant. Every problem found is listed (not just the
/// first).
fn records(doc: &ExportDocument) -> Result<(Records, Snapshot), Vec<String>> {
    let mut problems = Vec::new();
    if doc.format != EXPORT_FORMAT {
        problems.push(format!(
            "format is {:?}, expected {EXPORT_FORMAT:?}",
            doc.format
        ));
    }
    if doc.version != EXPORT_VERSION {
        problems.push(format!(
            "document version {} is not supported; this xlreg reads version {EXPORT_VERSION}",
            doc.version
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let admissions: Vec<Option<Admission>> = doc
        .clusters
        .iter()
        .map(|c| {
            imported_admission(c)
                .map_err(|problem| problems.push(problem))
                .ok()
        })
        .collect();
    let mut id = |what: &str, text: &str| match Id::from_hex(text) {
        Ok(id) if text == id.to_hex() => Some(id),
        Ok(_) => {
            problems.push(format!("{what}: ID {text:?} must be lowercase hex"));
            None
        }
        Err(e) => {
            problems.push(format!("{what}: ID {text:?}: {e}"));
            None
        }
    };
    let meta = doc.registry.as_ref().and_then(|r| {
        Some(RegistryMeta {
            name: r.name.clone(),
            id: id("registry", &r.id)?,
            created_at_ms: r.created_at_ms,
        })
    });
    let nodes: Vec<Option<NodeRecord>> = doc
        .nodes
        .iter()
        .map(|n| {
            Some(NodeRecord {
                id: id(&format!("node {}", n.name), &n.id)?,
                name: n.name.clone(),
                attrs: n.attrs,
                comms_key: Vec::new(),
                sig_key: Vec::new(),
                endpoints: n.endpoints.clone(),
                registered_at_ms: n.registered_at_ms,
                updated_at_ms: n.updated_at_ms,
            })
        })
        .collect();
    let clusters: Vec<Option<ClusterRecord>> = doc
        .clusters
        .iter()
        .zip(admissions)
        .map(|(c, admission)| {
            let members = c
                .members
                .iter()
                .map(|m| {
                    Some(MemberRecord {
                        slot: m.slot,
                        node_id: id(&format!("cluster {} member {}", c.name, m.name), &m.node_id)?,
                        name: m.name.clone(),
                        attrs: m.attrs,
                        endpoints: m.endpoints.clone(),
                        joined_at_ms: m.joined_at_ms,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(ClusterRecord {
                admission: admission?,
                id: id(&format!("cluster {}", c.name), &c.id)?,
                name: c.name.clone(),
                attrs: c.attrs,
                max_size: c.max_size,
                endpoint_count: c.endpoint_count,
                created_at_ms: c.created_at_ms,
                touched_at_ms: c.touched_at_ms,
                members,
            })
        })
        .collect();

    let mut checked_nodes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (exported, node) in doc.nodes.iter().zip(nodes) {
        let Some(mut node) = node else { continue };
        let label = format!("node {} ({})", exported.name, exported.id);
        if !seen.insert(node.id.clone()) {
            problems.push(format!("{label} appears twice"));
        }
        if let Err(e) = validate::member_name(&node.name) {
            problems.push(format!("{label}: {e}"));
        }
        if let Err(e) = validate::stored_endpoints(&node.endpoints) {
            problems.push(format!("{label}: {e}"));
        }
        for (which, text, slot) in [
            ("communications", &exported.comms_key, &mut node.comms_key),
            ("signing", &exported.sig_key, &mut node.sig_key),
        ] {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| e.to_string())
                .and_then(|der| {
                    PublicKey::from_member_der(&der)
                        .map(|key| key.to_spki_der().to_vec())
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok(der) => *slot = der,
                Err(e) => problems.push(format!("{label}: {which} key: {e}")),
            }
        }
        checked_nodes.push(node);
    }
    let mut checked_clusters = Vec::new();
    for (exported, cluster) in doc.clusters.iter().zip(clusters) {
        let Some(cluster) = cluster else { continue };
        let label = format!("cluster {} ({})", exported.name, exported.id);
        if !seen.insert(cluster.id.clone()) {
            problems.push(format!("{label}: its ID is used twice"));
        }
        if let Err(e) = validate::cluster_name(&cluster.name) {
            problems.push(format!("{label}: {e}"));
        }
        if let Err(e) = validate::endpoint_count(cluster.endpoint_count) {
            problems.push(format!("{label}: {e}"));
        }
        for member in &cluster.members {
            if let Err(e) = validate::member_name(&member.name) {
                problems.push(format!("{label}: {e}"));
            }
        }
        checked_clusters.push(cluster);
    }
    let snapshot = match Snapshot::from_records(meta.as_ref(), &checked_nodes, &checked_clusters) {
        Ok(snapshot) => {
            problems.extend(snapshot.verify());
            snapshot
        }
        Err(error) => {
            problems.push(error.to_string());
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let records = Records {
        meta,
        nodes: checked_nodes,
        clusters: checked_clusters,
    };
    Ok((records, snapshot))
}

/// Reads an export document from a file (at most [`MAX_EXPORT_BYTES`]).
pub fn read_document(path: &Path) -> Result<ExportDocument, AdminError> {
    let bytes = super::read_bounded(path, MAX_EXPORT_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| AdminError::BadExport {
        path: path.to_path_buf(),
        reason: format!("not an xlreg export document: {e}"),
    })
}

/// Rebuilds a registry from `doc` in `dir`, which must be new or empty. Nothing is written
/// unless the whole document is valid; if writing fails, what was written is removed.
pub fn import(
    doc: &ExportDocument,
    source: &Path,
    dir: &Path,
) -> Result<ImportSummary, AdminError> {
    let bad = |problems: Vec<String>| AdminError::BadExport {
        path: source.to_path_buf(),
        reason: format!(
            "{} problem(s), nothing imported:\n- {}",
            problems.len(),
            problems.join("\n- ")
        ),
    };
    let (records, snapshot) = records(doc).map_err(bad)?;
    let target = NewDataDir::create(dir)?;
    {
        let store = BackendChoice::default().create_from_snapshot(dir, &snapshot)?;
        if records.meta.is_some() {
            crate::registry::create_key_files(dir)?;
        }
        store.flush_blocking()?;
    }
    target.keep();
    Ok(ImportSummary {
        registry: records.meta.map(|m| (m.name, m.id.to_hex())),
        nodes: records.nodes.len(),
        clusters: records.clusters.len(),
        members: records.clusters.iter().map(|c| c.members.len()).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClusterRef, NewCluster, NewNode, Store};

    fn populated() -> Store {
        let store = Store::temporary().unwrap();
        store
            .set_registry_meta(&RegistryMeta {
                name: "reg".into(),
                id: Id::from_bytes(&[1u8; 32]).unwrap(),
                created_at_ms: 5,
            })
            .unwrap();
        let (c, _) = store
            .create_cluster(
                NewCluster {
                    admission: Default::default(),
                    name: "web".into(),
                    attrs: 1,
                    max_size: 4,
                    endpoint_count: 1,
                },
                10,
            )
            .unwrap();
        for (n, name) in ["a", "b"].into_iter().enumerate() {
            let comms = crate::test_support::fixture_key(2 * n);
            let sig = crate::test_support::fixture_key(2 * n + 1);
            let node = store
                .register_node(
                    NewNode {
                        id: None,
                        name: name.into(),
                        attrs: 0,
                        comms_key: comms.public_key().to_spki_der().to_vec(),
                        sig_key: sig.public_key().to_spki_der().to_vec(),
                        endpoints: vec!["127.0.0.1:7000".into()],
                    },
                    20,
                )
                .unwrap()
                .node;
            store
                .join(&ClusterRef::Id(c.id.clone()), &node, 30)
                .unwrap();
        }
        store
    }

    #[test]
    fn a_streamed_export_is_byte_identical_to_the_document() {
        for store in [populated(), Store::temporary().unwrap()] {
            let doc = export(&store.snapshot().unwrap()).unwrap();
            let mut expected = serde_json::to_vec_pretty(&doc).unwrap();
            expected.push(b'\n');
            let mut streamed = Vec::new();
            let counts = write(&store.view().unwrap(), &mut streamed).unwrap();
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                String::from_utf8(expected.clone()).unwrap()
            );
            assert_eq!(
                (counts.nodes, counts.clusters),
                (doc.nodes.len(), doc.clusters.len())
            );
        }
    }

    #[test]
    fn a_record_that_does_not_decode_fails_the_streamed_export() {
        let store = populated();
        let first = store.nodes().next().unwrap().unwrap().id;
        store.corrupt_for_test("nodes", first.as_bytes(), b"not a node");
        let error = write(&store.view().unwrap(), &mut std::io::sink()).unwrap_err();
        assert!(matches!(error, AdminError::Unreadable(_)), "{error}");
        assert!(error.to_string().contains("admin verify"), "{error}");
    }

    #[test]
    fn export_import_export_is_identical_and_keys_are_new() {
        let store = populated();
        let doc = export(&store.snapshot().unwrap()).unwrap();
        assert_eq!(doc.nodes.len(), 2);
        assert_eq!(doc.clusters[0].members.len(), 2);
        let json = serde_json::to_string(&doc).unwrap();
        assert!(!json.contains("PRIVATE"));

        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("new");
        let summary = import(&doc, Path::new("doc.json"), &target).unwrap();
        assert_eq!(
            (summary.nodes, summary.clusters, summary.members),
            (2, 1, 2)
        );
        let imported = Store::reopen(&target).unwrap();
        assert_eq!(export(&imported.snapshot().unwrap()).unwrap(), doc);
        assert_eq!(imported.verify().unwrap(), Vec::<String>::new());
        for file in [
            crate::registry::COMMS_KEY_FILE,
            crate::registry::SIG_KEY_FILE,
        ] {
            assert!(target.join(file).is_file(), "{file}");
        }
        drop(imported);

        // Not into a directory that holds something.
        let e = import(&doc, Path::new("doc.json"), &target).unwrap_err();
        assert!(matches!(e, AdminError::TargetNotEmpty(_)), "{e}");
    }

    #[test]
    fn bad_documents_are_refused_with_every_problem_and_write_nothing() {
        let store = populated();
        let good = export(&store.snapshot().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("new");

        let mut doc = good.clone();
        doc.version = 2;
        let e = import(&doc, Path::new("d"), &target).unwrap_err();
        assert!(e.to_string().contains("version 2 is not supported"), "{e}");

        let mut doc = good.clone();
        doc.nodes[0].name = String::new();
        doc.nodes[1].sig_key = "!!".into();
        doc.clusters[0].name = "9bad".into();
        doc.clusters[0].members[1].node_id = "00".repeat(32);
        let text = import(&doc, Path::new("d"), &target)
            .unwrap_err()
            .to_string();
        for expected in [
            "member name is empty",
            "signing key",
            "must start with a letter",
            "is not a registered node",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }

        let mut doc = good.clone();
        doc.nodes.push(doc.nodes[0].clone());
        let text = import(&doc, Path::new("d"), &target)
            .unwrap_err()
            .to_string();
        assert!(text.contains("appears twice"), "{text}");

        let mut doc = good;
        doc.clusters[0].members.truncate(0);
        doc.clusters[0].id = doc.clusters[0].id.to_uppercase();
        let text = import(&doc, Path::new("d"), &target)
            .unwrap_err()
            .to_string();
        assert!(text.contains("lowercase"), "{text}");
        assert!(!target.exists());

        let unknown_field = r#"{"format":"xlreg-export","version":1,"registry":null,"nodes":[],"clusters":[],"extra":1}"#;
        assert!(serde_json::from_str::<ExportDocument>(unknown_field).is_err());
    }

    #[test]
    fn admission_state_survives_export_and_import_and_is_checked() {
        let store = populated();
        let mut doc = export(&store.snapshot().unwrap()).unwrap();
        assert_eq!(doc.clusters[0].admission, None, "an open cluster has none");
        let token = ExportedToken {
            id: "abc123".into(),
            verifier: "11".repeat(32),
            usages: 3,
            created_at_ms: 5,
            expires_at_ms: 0,
            uses_left: Some(2),
            revoked: false,
        };
        doc.clusters[0].admission = Some(ExportedAdmission {
            owner_key: "22".repeat(32),
            open: false,
            closed: true,
            tokens: vec![token.clone()],
        });
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("new");
        import(&doc, Path::new("d"), &target).unwrap();
        let imported = Store::reopen(&target).unwrap();
        assert_eq!(export(&imported.snapshot().unwrap()).unwrap(), doc);
        drop(imported);

        let mut bad = doc.clone();
        let admission = bad.clusters[0].admission.as_mut().unwrap();
        admission.owner_key = "33".into();
        admission.tokens.push(token);
        let text = import(&bad, Path::new("d"), &dir.path().join("bad"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("owner_key must be 32 bytes"), "{text}");
        let mut bad = doc;
        bad.clusters[0].admission.as_mut().unwrap().owner_key = String::new();
        let text = import(&bad, Path::new("d"), &dir.path().join("bad"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("without owner must be open"), "{text}");
    }
}
