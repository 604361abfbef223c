//! What the read-only admin commands show: `info`, `clusters`, `cluster`, `nodes`, `node` and
//! `verify`.
//!
//! This module owns the views (serde structs: `--json` prints them as they are, and the
//! control socket carries them, so a command's output is the same offline and online), the
//! functions that build them from the store's admin port ([`AdminStore`]), and their
//! renderings for people (`to_text`). IDs are lowercase hex; key fingerprints are the
//! SHA-256 of the key's DER SubjectPublicKeyInfo in hex, as in `xlreg cluster members`;
//! times are milliseconds since the Unix epoch in JSON and RFC 3339 UTC in text.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::AdminError;
use crate::crypto::sha256;
use crate::id::Id;
use crate::store::{AdminStore, ClusterRecord, MemberRecord, NodeRecord, StoreView};

/// `admin info`: who the registry is and how much it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The registry's name (`None` before its first start).
    pub name: Option<String>,
    /// The registry's ID.
    pub id: Option<String>,
    /// When the registry was set up.
    pub created_at_ms: Option<u64>,
    /// The xlreg version answering.
    pub version: String,
    /// The data directory's schema version.
    pub schema_version: Option<u32>,
    /// Registered nodes.
    pub nodes: u64,
    /// Clusters.
    pub clusters: u64,
    /// Memberships, over all clusters.
    pub members: u64,
    /// Bytes the database takes on disk.
    pub disk_bytes: u64,
}

/// One row of `admin clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRow {
    /// The cluster's name.
    pub name: String,
    /// The cluster's ID.
    pub id: String,
    /// How many members it has (`member_count` in JSON, as in `cluster members --json`).
    #[serde(rename = "member_count")]
    pub members: u32,
    /// Its maximum size.
    pub max_size: u32,
    /// Endpoints each member must offer.
    pub endpoint_count: u32,
    /// Its attribute bits.
    pub attrs: u64,
    /// When it was created.
    pub created_at_ms: u64,
    /// When a member last joined (what `serve --cluster-ttl` measures from).
    pub touched_at_ms: u64,
}

/// One member in `admin cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    /// The member's slot.
    pub slot: u32,
    /// The member's name.
    pub name: String,
    /// The member node's ID.
    pub id: String,
    /// The member's endpoints.
    pub endpoints: Vec<String>,
    /// The member's attribute bits.
    pub attrs: u64,
    /// When it first joined.
    pub joined_at_ms: u64,
    /// Fingerprint of the node's communications key.
    pub comms_key_fingerprint: String,
    /// Fingerprint of the node's signing key.
    pub sig_key_fingerprint: String,
}

/// `admin cluster NAME_OR_ID`: a cluster and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDetail {
    /// The cluster.
    pub cluster: ClusterRow,
    /// Its members, in slot order.
    pub members: Vec<MemberRow>,
    /// Its owner, policy and join tokens (verifiers only); absent for an open cluster
    /// without owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<super::export::ExportedAdmission>,
}

/// One row of `admin nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    /// The node's ID.
    pub id: String,
    /// The node's name.
    pub name: String,
    /// Its attribute bits.
    pub attrs: u64,
    /// Its endpoints.
    pub endpoints: Vec<String>,
    /// When it first registered.
    pub registered_at_ms: u64,
    /// When its name, attributes or endpoints last changed.
    pub updated_at_ms: u64,
    /// Fingerprint of its communications key.
    pub comms_key_fingerprint: String,
    /// Fingerprint of its signing key.
    pub sig_key_fingerprint: String,
}

/// A cluster a node is a member of, in `admin node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The cluster's name.
    pub cluster: String,
    /// The cluster's ID.
    pub cluster_id: String,
    /// The node's slot in it.
    pub slot: u32,
}

/// `admin node ID`: one node, its public keys and its memberships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDetail {
    /// The node.
    pub node: NodeRow,
    /// Its communications key, base64 DER SubjectPublicKeyInfo.
    pub comms_key: String,
    /// Its signing key, base64 DER SubjectPublicKeyInfo.
    pub sig_key: String,
    /// The clusters it is a member of, in cluster ID order.
    pub clusters: Vec<Membership>,
}

/// `admin verify`: what is wrong, if anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Whether every invariant holds.
    pub ok: bool,
    /// Each violation found.
    pub problems: Vec<String>,
    /// Node records checked.
    pub nodes: u64,
    /// Cluster records checked.
    pub clusters: u64,
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha256(der))
}

/// The row `admin clusters` shows for `cluster`.
pub(crate) fn cluster_row(cluster: &ClusterRecord) -> ClusterRow {
    ClusterRow {
        name: cluster.name.clone(),
        id: cluster.id.to_hex(),
        members: cluster.member_count(),
        max_size: cluster.max_size,
        endpoint_count: cluster.endpoint_count,
        attrs: cluster.attrs,
        created_at_ms: cluster.created_at_ms,
        touched_at_ms: cluster.touched_at_ms,
    }
}

fn member_row(member: &MemberRecord, node: &NodeRecord) -> MemberRow {
    MemberRow {
        slot: member.slot,
        name: member.name.clone(),
        id: member.node_id.to_hex(),
        endpoints: member.endpoints.clone(),
        attrs: member.attrs,
        joined_at_ms: member.joined_at_ms,
        comms_key_fingerprint: fingerprint(&node.comms_key),
        sig_key_fingerprint: fingerprint(&node.sig_key),
    }
}

/// The row `admin nodes` shows for `node`.
pub(crate) fn node_row(node: &NodeRecord) -> NodeRow {
    NodeRow {
        id: node.id.to_hex(),
        name: node.name.clone(),
        attrs: node.attrs,
        endpoints: node.endpoints.clone(),
        registered_at_ms: node.registered_at_ms,
        updated_at_ms: node.updated_at_ms,
        comms_key_fingerprint: fingerprint(&node.comms_key),
        sig_key_fingerprint: fingerprint(&node.sig_key),
    }
}

/// Builds `admin info`.
pub fn info(store: &dyn AdminStore) -> Result<Info, AdminError> {
    let meta = store.registry_meta()?;
    let counts = store.counts()?;
    Ok(Info {
        name: meta.as_ref().map(|m| m.name.clone()),
        id: meta.as_ref().map(|m| m.id.to_hex()),
        created_at_ms: meta.as_ref().map(|m| m.created_at_ms),
        version: crate::registry::VERSION.to_string(),
        schema_version: store.schema_version()?,
        nodes: counts.nodes,
        clusters: counts.clusters,
        members: counts.members,
        disk_bytes: store.size_on_disk()?,
    })
}

/// Builds `admin clusters`: every cluster, in name order.
pub fn clusters(store: &dyn AdminStore) -> Result<Vec<ClusterRow>, AdminError> {
    let mut rows = store
        .clusters()
        .map(|c| c.map(|c| cluster_row(&c)))
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(rows)
}

/// Builds `admin cluster NAME_OR_ID`.
pub fn cluster(store: &dyn AdminStore, name_or_id: &str) -> Result<ClusterDetail, AdminError> {
    let target = crate::validate::cluster_ref(name_or_id)?;
    let view = store
        .cluster_view(&target)?
        .ok_or_else(|| AdminError::NoSuchCluster(name_or_id.to_string()))?;
    let members = view
        .members()
        .map(|(member, node)| member_row(member, node))
        .collect();
    Ok(ClusterDetail {
        cluster: cluster_row(&view.cluster),
        members,
        admission: super::export::exported_admission(view.cluster.admission.clone()),
    })
}

/// Builds `admin nodes`: every node, in ID order.
pub fn nodes(store: &dyn AdminStore) -> Result<Vec<NodeRow>, AdminError> {
    Ok(store
        .nodes()
        .map(|n| n.map(|n| node_row(&n)))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Builds `admin node ID`.
pub fn node(store: &dyn AdminStore, id: &str) -> Result<NodeDetail, AdminError> {
    let parsed = Id::from_hex(id).map_err(|e| crate::validate::Invalid(format!("node ID: {e}")))?;
    let node = store
        .node(&parsed)?
        .ok_or_else(|| AdminError::NoSuchNode(id.to_string()))?;
    let mut clusters = Vec::new();
    for cluster in store.clusters() {
        let cluster = cluster?;
        if let Some(member) = cluster.member_by_node(&node.id) {
            clusters.push(Membership {
                cluster: cluster.name.clone(),
                cluster_id: cluster.id.to_hex(),
                slot: member.slot,
            });
        }
    }
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    Ok(NodeDetail {
        node: node_row(&node),
        comms_key: b64(&node.comms_key),
        sig_key: b64(&node.sig_key),
        clusters,
    })
}

/// Builds `admin verify` from a point-in-time view of the store.
pub fn verify(view: &dyn StoreView) -> Result<VerifyReport, AdminError> {
    let found = view.check_invariants()?;
    Ok(VerifyReport {
        ok: found.problems.is_empty(),
        problems: found.problems,
        nodes: found.nodes,
        clusters: found.clusters,
    })
}

/// A time for people: RFC 3339 in UTC, to the second.
pub fn utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A byte count for people: `1.5 MiB (1572864 bytes)`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit} ({n} bytes)")
}

/// Lays rows out in columns under a header, two spaces apart; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `label  value` lines, labels padded to one width.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn or_unset(value: Option<String>) -> String {
    value.unwrap_or_else(|| "(not set: the registry has not been started yet)".into())
}

impl Info {
    /// The text form.
    pub fn to_text(&self) -> String {
        fields(&[
            ("name", or_unset(self.name.clone())),
            ("id", or_unset(self.id.clone())),
            ("created", or_unset(self.created_at_ms.map(utc))),
            ("version", self.version.clone()),
            (
                "schema version",
                or_unset(self.schema_version.map(|v| v.to_string())),
            ),
            ("nodes", self.nodes.to_string()),
            ("clusters", self.clusters.to_string()),
            ("members", self.members.to_string()),
            ("disk use", bytes(self.disk_bytes)),
        ])
    }
}

/// The text form of `admin clusters`.
pub fn clusters_text(rows: &[ClusterRow]) -> String {
    if rows.is_empty() {
        return "no clusters\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.id.clone(),
                format!("{}/{}", c.members, c.max_size),
                c.endpoint_count.to_string(),
                utc(c.created_at_ms),
                utc(c.touched_at_ms),
            ]
        })
        .collect();
    table(
        &["NAME", "ID", "MEMBERS", "ENDPOINTS", "CREATED", "TOUCHED"],
        &cells,
    )
}

impl ClusterDetail {
    /// The text form: the cluster, then one block per member.
    pub fn to_text(&self) -> String {
        let c = &self.cluster;
        let mut out = fields(&[
            ("cluster", c.name.clone()),
            ("id", c.id.clone()),
            ("members", format!("{}/{}", c.members, c.max_size)),
            ("endpoints", format!("{} per member", c.endpoint_count)),
            ("attrs", format!("{:#x}", c.attrs)),
            ("created", utc(c.created_at_ms)),
            ("touched", utc(c.touched_at_ms)),
        ]);
        if let Some(a) = &self.admission {
            let policy = if a.open {
                "open"
            } else {
                "admission-controlled"
            };
            let owner = if a.owner_key.is_empty() {
                "none"
            } else {
                "set"
            };
            let closed = if a.closed {
                ", closed to new members"
            } else {
                ""
            };
            let _ = writeln!(out, "policy: {policy}, owner {owner}{closed}");
            for t in &a.tokens {
                let usages = match t.usages {
                    1 => "join",
                    2 => "list",
                    _ => "join,list",
                };
                let expires = match t.expires_at_ms {
                    0 => "never".to_string(),
                    ms => utc(ms),
                };
                let uses = t
                    .uses_left
                    .map_or("unlimited".to_string(), |n| n.to_string());
                let revoked = if t.revoked { ", revoked" } else { "" };
                let _ = writeln!(
                    out,
                    "token {}: {usages}, expires {expires}, uses left {uses}{revoked}",
                    t.id
                );
            }
        }
        for m in &self.members {
            let _ = write!(out, "\nslot {}: {}\n", m.slot, m.name);
            let block = fields(&[
                ("id", m.id.clone()),
                ("endpoints", m.endpoints.join(" ")),
                ("joined", utc(m.joined_at_ms)),
                ("comms key", format!("sha256:{}", m.comms_key_fingerprint)),
                ("sig key", format!("sha256:{}", m.sig_key_fingerprint)),
            ]);
            for line in block.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

/// The text form of `admin nodes`.
pub fn nodes_text(rows: &[NodeRow]) -> String {
    if rows.is_empty() {
        return "no nodes\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.name.clone(),
                utc(n.registered_at_ms),
                n.endpoints.join(" "),
            ]
        })
        .collect();
    table(&["ID", "NAME", "REGISTERED", "ENDPOINTS"], &cells)
}

impl NodeDetail {
    /// The text form.
    pub fn to_text(&self) -> String {
        let n = &self.node;
        let memberships = if self.clusters.is_empty() {
            "(none)".to_string()
        } else {
            self.clusters
                .iter()
                .map(|m| format!("{} (slot {})", m.cluster, m.slot))
                .collect::<Vec<_>>()
                .join(", ")
        };
        fields(&[
            ("node", n.name.clone()),
            ("id", n.id.clone()),
            ("endpoints", n.endpoints.join(" ")),
            ("attrs", format!("{:#x}", n.attrs)),
            ("registered", utc(n.registered_at_ms)),
            ("updated", utc(n.updated_at_ms)),
            ("comms key", format!("sha256:{}", n.comms_key_fingerprint)),
            ("sig key", format!("sha256:{}", n.sig_key_fingerprint)),
            ("clusters", memberships),
        ])
    }
}

impl VerifyReport {
    /// The text form.
    pub fn to_text(&self) -> String {
        if self.ok {
            return format!(
                "ok: every invariant holds ({} nodes, {} clusters checked)\n",
                self.nodes, self.clusters
            );
        }
        let mut out = format!(
            "{} problem(s) found ({} nodes, {} clusters checked):\n",
            self.problems.len(),
            self.nodes,
            self.clusters
        );
        for problem in &self.problems {
            let _ = writeln!(out, "- {problem}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewCluster, NewNode, Store};

    fn populated() -> (Store, NodeRecord, ClusterRecord) {
        let store = Store::temporary().unwrap();
        let node = store
            .register_node(
                NewNode {
                    id: None,
                    name: "alpha".into(),
                    attrs: 5,
                    comms_key: b"comms".to_vec(),
                    sig_key: b"sig".to_vec(),
                    endpoints: vec!["127.0.0.1:9000".into()],
                },
                1_700_000_000_000,
            )
            .unwrap()
            .node;
        let (cluster, _) = store
            .create_cluster(
                NewCluster {
                    admission: Default::default(),
                    name: "web".into(),
                    attrs: 0,
                    max_size: 3,
                    endpoint_count: 1,
                },
                1_700_000_000_000,
            )
            .unwrap();
        let cluster = store
            .join(
                &crate::store::ClusterRef::Id(cluster.id),
                &node,
                1_700_000_001_000,
            )
            .unwrap()
            .cluster;
        (store, node, cluster)
    }

    #[test]
    fn views_carry_the_store_contents() {
        let (store, node, cluster) = populated();
        let info = info(&store).unwrap();
        assert_eq!((info.nodes, info.clusters, info.members), (1, 1, 1));
        assert_eq!(info.name, None);
        assert_eq!(info.schema_version, Some(crate::store::SCHEMA_VERSION));

        let rows = clusters(&store).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, cluster.id.to_hex());
        assert_eq!((rows[0].members, rows[0].max_size), (1, 3));

        let by_name = super::cluster(&store, "web").unwrap();
        let by_id = super::cluster(&store, &cluster.id.to_hex()).unwrap();
        assert_eq!(by_name, by_id);
        assert_eq!(by_name.members[0].id, node.id.to_hex());
        assert_eq!(
            by_name.members[0].sig_key_fingerprint,
            hex::encode(sha256(b"sig"))
        );
        assert!(matches!(
            super::cluster(&store, "nope"),
            Err(AdminError::NoSuchCluster(n)) if n == "nope"
        ));
        assert!(matches!(
            super::cluster(&store, "9bad"),
            Err(AdminError::Invalid(_))
        ));

        let detail = super::node(&store, &node.id.to_hex()).unwrap();
        assert_eq!(detail.clusters.len(), 1);
        assert_eq!(detail.clusters[0].cluster, "web");
        assert_eq!(detail.comms_key, "Y29tbXM=");
        assert!(matches!(
            super::node(&store, &"00".repeat(32)),
            Err(AdminError::NoSuchNode(_))
        ));
        assert!(matches!(
            super::node(&store, "xyz"),
            Err(AdminError::Invalid(_))
        ));
        assert_eq!(nodes(&store).unwrap().len(), 1);
    }

    #[test]
    fn text_forms() {
        let (store, node, _) = populated();
        let text = clusters_text(&clusters(&store).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME  ID"), "{text}");
        assert!(lines[1].contains("1/3"), "{text}");
        assert!(lines[1].contains("2023-11-14T22:13:20Z"), "{text}");

        let text = super::cluster(&store, "web").unwrap().to_text();
        assert!(text.contains("slot 0: alpha"), "{text}");
        assert!(
            text.contains(&format!("  id         {}", node.id)),
            "{text}"
        );

        let text = nodes_text(&nodes(&store).unwrap());
        assert!(text.contains("alpha"), "{text}");
        assert_eq!(clusters_text(&[]), "no clusters\n");

        let text = info(&store).unwrap().to_text();
        assert!(text.contains("members         1\n"), "{text}");
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(1536), "1.5 KiB (1536 bytes)");
        assert_eq!(bytes(3 << 20), "3.0 MiB (3145728 bytes)");

        let report = verify(&*AdminStore::view(&store).unwrap()).unwrap();
        assert!(report.ok);
        assert_eq!(
            report.to_text(),
            "ok: every invariant holds (1 nodes, 1 clusters checked)\n"
        );
        let bad = VerifyReport {
            ok: false,
            problems: vec!["x is wrong".into()],
            nodes: 0,
            clusters: 0,
        };
        assert!(bad.to_text().ends_with("- x is wrong\n"));
    }
}
