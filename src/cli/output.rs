//! How command output looks: a table or a line for people, JSON for programs.
//!
//! One JSON shape per object, the same in every command (`admin cluster` uses the same
//! field names): a cluster is `{"name", "id", "max_size", "endpoint_count", "attrs",
//! "member_count"}` (with `"open"` and `"closed"` where the registry says, in the client
//! commands); a member `{"slot", "name", "id", "endpoints", "attrs", "comms_key",
//! "sig_key", "comms_key_fingerprint", "sig_key_fingerprint"}`; a listing
//! `{"cluster": CLUSTER, "members": [MEMBER...]}`. IDs are lowercase hex, keys are base64
//! DER SubjectPublicKeyInfo (the body of a PEM `PUBLIC KEY`), and a fingerprint is the
//! lowercase hex SHA-256 of that DER, everywhere.

use base64::Engine as _;

use crate::client::{ClusterInfo, ClusterView, Member};
use crate::crypto::sha256;

fn member_json(member: &Member) -> serde_json::Value {
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    serde_json::json!({
        "slot": member.slot,
        "name": member.name,
        "id": member.id.to_hex(),
        "endpoints": member.endpoints,
        "attrs": member.attrs,
        "comms_key": b64(&member.comms_key),
        "sig_key": b64(&member.sig_key),
        "comms_key_fingerprint": hex::encode(sha256(&member.comms_key)),
        "sig_key_fingerprint": hex::encode(sha256(&member.sig_key)),
    })
}

/// The JSON object for a cluster.
pub fn cluster_info_json(cluster: &ClusterInfo) -> serde_json::Value {
    serde_json::json!({
        "name": cluster.name,
        "id": cluster.id.to_hex(),
        "max_size": cluster.max_size,
        "endpoint_count": cluster.endpoint_count,
        "attrs": cluster.attrs,
        "member_count": cluster.size,
        "open": cluster.open,
        "closed": cluster.closed,
    })
}

/// Prints `value` to stdout as pretty JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// The JSON document for a cluster listing.
pub fn cluster_json(view: &ClusterView) -> serde_json::Value {
    serde_json::json!({
        "cluster": cluster_info_json(&view.cluster),
        "members": view.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

/// Prints a cluster listing to stdout, as JSON or as a table.
pub fn print_cluster(view: &ClusterView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&cluster_json(view));
    }
    let cluster = &view.cluster;
    let policy = match (cluster.open, cluster.closed) {
        (true, false) => "open",
        (true, true) => "open, closed to new members",
        (false, false) => "admission-controlled",
        (false, true) => "admission-controlled, closed to new members",
    };
    outln!(
        "cluster {} ({}): {}/{} members, {} endpoint(s) each, {policy}",
        cluster.name,
        cluster.id,
        cluster.size,
        cluster.max_size,
        cluster.endpoint_count
    )?;
    let name_width = view
        .members
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "{:>4}  {:<name_width$}  {:<64}  ENDPOINTS",
        "SLOT",
        "NAME",
        "ID"
    )?;
    for member in &view.members {
        outln!(
            "{:>4}  {:<name_width$}  {:<64}  {}",
            member.slot,
            member.name,
            member.id.to_hex(),
            member.endpoints.join(" ")
        )?;
    }
    Ok(())
}
