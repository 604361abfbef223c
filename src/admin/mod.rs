//! Operating a registry: the library behind `xlreg admin` and the daemon's admin services.
//!
//! One file per concern:
//! - [`report`]: the read-only views (`info`, `clusters`, `cluster`, `nodes`, `node`,
//!   `verify`) and their text forms;
//! - [`export`]: the versioned JSON export of the public data, and import from it;
//! - [`backup`]: point-in-time snapshots with the registry's keys, and restore;
//! - [`control`]: the daemon's control socket, and the client end the commands use;
//! - [`expiry`]: `serve --cluster-ttl`, removing clusters untouched for too long;
//! - [`migrate`]: `admin migrate`, between a sled data directory and an etcd prefix;
//! - `target`: the new data directory import and restore fill; `error`: [`AdminError`].
//!
//! This file owns the admin [`Request`]s and [`Reply`]s, [`answer`] (the one function both
//! an offline command and the daemon run to answer a request, so output is the same either
//! way; a key rotation goes through [`rotate_handshake_keys`] with the daemon's own identity) and [`Access`]: reaching a registry by opening its data directory, or through its
//! running daemon's control socket when the daemon holds the directory.

pub mod backup;
pub mod control;
mod error;
pub mod expiry;
pub mod export;
pub mod migrate;
pub mod report;
mod target;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::{AdminError, RefusalKind};

use crate::handshake_keys::RotationReport;
use crate::registry::RegistryIdentity;
use crate::store::{AdminStore, Backend, BackendChoice, NodeDeletion, StorageError};
use report::{ClusterDetail, ClusterRow, Info, NodeDetail, NodeRow, VerifyReport};

/// An admin request: what `xlreg admin` asks a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The registry's facts and counts.
    Info,
    /// Every cluster.
    Clusters,
    /// One cluster and its members.
    Cluster {
        /// The cluster's name, or its ID in hex.
        cluster: String,
    },
    /// Every node.
    Nodes,
    /// One node.
    Node {
        /// The node's ID in hex.
        id: String,
    },
    /// The export document (streamed: its bytes go to the output, [`Reply::Exported`] says
    /// how much).
    Export,
    /// The invariant check.
    Verify,
    /// A snapshot file, keys included (streamed: its bytes go to the output,
    /// [`Reply::BackedUp`] describes it).
    Backup,
    /// Delete a cluster and its memberships.
    DeleteCluster {
        /// The cluster's name, or its ID in hex.
        cluster: String,
    },
    /// Delete a node that is a member of no cluster.
    DeleteNode {
        /// The node's ID in hex.
        id: String,
    },
    /// New static xlReg/3 handshake keys; the old ones stay accepted for the overlap.
    RotateHandshakeKeys {
        /// How long the old keys stay accepted, in milliseconds (0: not at all).
        overlap_ms: u64,
    },
}

impl Request {
    /// The request's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Info => "info",
            Request::Clusters => "clusters",
            Request::Cluster { .. } => "cluster",
            Request::Nodes => "nodes",
            Request::Node { .. } => "node",
            Request::Export => "export",
            Request::Verify => "verify",
            Request::Backup => "backup",
            Request::DeleteCluster { .. } => "delete-cluster",
            Request::DeleteNode { .. } => "delete-node",
            Request::RotateHandshakeKeys { .. } => "rotate-handshake-keys",
        }
    }

    /// Whether the answer is a stream of bytes (an export or a snapshot file) written to an
    /// output, followed by a reply that describes it.
    pub fn is_streamed(&self) -> bool {
        matches!(self, Request::Export | Request::Backup)
    }
}

/// The answer to a [`Request`], variant for variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// For [`Request::Info`].
    Info(Info),
    /// For [`Request::Clusters`].
    Clusters(Vec<ClusterRow>),
    /// For [`Request::Cluster`].
    Cluster(ClusterDetail),
    /// For [`Request::Nodes`].
    Nodes(Vec<NodeRow>),
    /// For [`Request::Node`].
    Node(NodeDetail),
    /// For [`Request::Export`], after the document: what it holds.
    Exported(export::ExportCounts),
    /// For [`Request::Verify`].
    Verify(VerifyReport),
    /// For [`Request::Backup`], after the snapshot file: what it holds.
    BackedUp(backup::SnapshotSummary),
    /// For [`Request::DeleteCluster`]: the cluster as it was when deleted.
    DeletedCluster(ClusterRow),
    /// For [`Request::DeleteNode`]: the node as it was when deleted.
    DeletedNode(NodeRow),
    /// For [`Request::RotateHandshakeKeys`]: the key sets now served.
    RotatedHandshakeKeys(RotationReport),
}

/// Answers a request from `store`. Blocking: the daemon runs it on a blocking thread.
/// `now_ms` stamps snapshots. A delete is on disk before its reply is returned. A streamed
/// request ([`Request::is_streamed`]) writes its bytes to `out`, record by record from a
/// point-in-time view ([`AdminStore::view`]), and returns what they hold; the others leave
/// `out` alone.
pub fn answer(
    store: &dyn AdminStore,
    request: &Request,
    now_ms: u64,
    out: &mut dyn std::io::Write,
) -> Result<Reply, AdminError> {
    Ok(match request {
        Request::Info => Reply::Info(report::info(store)?),
        Request::Clusters => Reply::Clusters(report::clusters(store)?),
        Request::Cluster { cluster } => Reply::Cluster(report::cluster(store, cluster)?),
        Request::Nodes => Reply::Nodes(report::nodes(store)?),
        Request::Node { id } => Reply::Node(report::node(store, id)?),
        Request::Export => Reply::Exported(export::write(&*store.view()?, out)?),
        // The checks read a view once, keeping ids and names but never the records.
        Request::Verify => Reply::Verify(report::verify(&*store.view()?)?),
        Request::Backup => {
            let dir = store.data_dir().ok_or(AdminError::Ephemeral)?;
            Reply::BackedUp(backup::write(&*store.view()?, dir, now_ms, out)?)
        }
        Request::DeleteCluster { cluster } => {
            let target = crate::validate::cluster_ref(cluster)?;
            let deleted = store
                .delete_cluster_if(&target, &|_| true)?
                .ok_or_else(|| AdminError::NoSuchCluster(cluster.clone()))?;
            store.flush_blocking()?;
            Reply::DeletedCluster(report::cluster_row(&deleted))
        }
        Request::DeleteNode { id } => {
            let parsed = crate::id::Id::from_hex(id)
                .map_err(|e| crate::validate::Invalid(format!("node ID: {e}")))?;
            let deleted = match store.delete_node(&parsed)? {
                NodeDeletion::Deleted(node) => node,
                NodeDeletion::NoSuchNode => return Err(AdminError::NoSuchNode(id.clone())),
                NodeDeletion::Member(clusters) => {
                    return Err(AdminError::StillMember {
                        node: id.clone(),
                        clusters,
                    })
                }
            };
            store.flush_blocking()?;
            Reply::DeletedNode(report::node_row(&deleted))
        }
        Request::RotateHandshakeKeys { overlap_ms } => {
            // A stopped registry: its key files are all there is to change; its next start
            // serves them and writes regCred.dat.
            let dir = store.data_dir().ok_or(AdminError::Ephemeral)?;
            let identity = RegistryIdentity::load_or_create(store, Some(dir), None, now_ms)?;
            rotate_handshake_keys(&identity, *overlap_ms, now_ms)?
        }
    })
}

/// Answers [`Request::RotateHandshakeKeys`] for a registry whose identity is loaded: the
/// running daemon's (which swaps the sets its sessions use and rewrites regCred.dat) or one
/// loaded from a stopped registry's data directory. The key files are on disk before the
/// reply is returned.
pub fn rotate_handshake_keys(
    identity: &RegistryIdentity,
    overlap_ms: u64,
    now_ms: u64,
) -> Result<Reply, AdminError> {
    let report = identity.rotate_handshake_keys(overlap_ms, now_ms)?;
    tracing::info!(
        current = %report.current_x25519,
        previous = ?report.previous_x25519,
        overlap_ms,
        "handshake keys rotated"
    );
    Ok(Reply::RotatedHandshakeKeys(report))
}

/// Completes once `stop` says true (or its sender is gone). Holds no borrow of the channel
/// when it completes, so it can sit in a `select!` whose other arms await.
pub(crate) async fn stop_requested(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Reads a whole file of at most `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, AdminError> {
    let file = std::fs::File::open(path).map_err(AdminError::file(path))?;
    let len = file.metadata().map_err(AdminError::file(path))?.len();
    if len > limit {
        return Err(AdminError::TooLarge {
            path: path.to_path_buf(),
            len,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(AdminError::file(path))?;
    if bytes.len() as u64 > limit {
        return Err(AdminError::TooLarge {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Opens the registry in `data_dir`, which must already hold one (admin commands never
/// create a registry where there was none).
fn open_store(data_dir: &Path) -> Result<Arc<dyn Backend>, AdminError> {
    let backend = BackendChoice::default();
    if !backend.holds_store(data_dir) {
        return Err(AdminError::NoRegistry(data_dir.to_path_buf()));
    }
    check_owner(data_dir)?;
    backend
        .open_existing(data_dir)
        .map_err(|error| match error {
            // The store's own I/O errors name no file: name the directory.
            StorageError::Io(source) => AdminError::File {
                path: data_dir.to_path_buf(),
                source,
            },
            other => other.into(),
        })
}

/// Refuses unless this process's effective uid owns `data_dir`. Opening a registry writes
/// files (the store's snapshots and log) with the opener's uid and mode 0600: opened as
/// root, a directory the service user owns would hold files the registry can no longer read.
pub fn check_owner(data_dir: &Path) -> Result<(), AdminError> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(data_dir)
        .map_err(AdminError::file(data_dir))?
        .uid();
    let caller = control::own_uid();
    if owner != caller {
        return Err(AdminError::NotOwner {
            dir: data_dir.to_path_buf(),
            owner,
            caller,
        });
    }
    Ok(())
}

/// Opens a stopped registry's data directory for a command that changes it; refuses while a
/// daemon holds it.
pub fn open_offline(data_dir: &Path) -> Result<Arc<dyn Backend>, AdminError> {
    match open_store(data_dir) {
        Err(AdminError::Store(StorageError::Locked { dir })) => Err(AdminError::Running(dir)),
        other => other,
    }
}

/// How an admin command reaches a registry.
#[derive(Debug)]
pub enum Access {
    /// The registry is stopped: its data directory is open.
    Offline(Arc<dyn Backend>),
    /// The registry runs: requests go to its control socket.
    Daemon(control::ControlConnection),
}

impl Access {
    /// Reaches the registry in `data_dir`: through its daemon if one answers on the control
    /// socket, else by opening the directory.
    pub async fn open(data_dir: &Path) -> Result<Access, AdminError> {
        let socket_error = match control::connect(data_dir).await {
            Ok(Some(connection)) => return Ok(Access::Daemon(connection)),
            Ok(None) => None,
            Err(error) => Some(error),
        };
        let dir = data_dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || open_store(&dir))
            .await
            .map_err(|e| AdminError::Interrupted(e.to_string()))?;
        match opened {
            Ok(store) => Ok(Access::Offline(store)),
            Err(AdminError::Store(StorageError::Locked { dir })) => {
                Err(AdminError::DaemonUnreachable {
                    socket: dir.join(control::SOCKET_FILE),
                    dir,
                    reason: socket_error
                        .map_or_else(|| "no daemon listens on it".to_string(), |e| e.to_string()),
                })
            }
            // A socket that exists but could not be used says more than the open failing.
            Err(error) => Err(socket_error.unwrap_or(error)),
        }
    }

    /// Reaches the registry under an etcd prefix (`admin ... --etcd`): its store, opened
    /// beside the servers that run on it (reads see one etcd revision: MVCC).
    pub async fn open_etcd(config: crate::store::etcd::EtcdConfig) -> Result<Access, AdminError> {
        let opened = tokio::task::spawn_blocking(move || {
            let store = BackendChoice::Etcd(config.clone()).open_existing(Path::new(""))?;
            if store.registry_meta()?.is_none() {
                return Err(AdminError::NoEtcdRegistry(format!(
                    "etcd {} under {}",
                    config.endpoints.join(","),
                    config.prefix
                )));
            }
            Ok(store)
        })
        .await
        .map_err(|e| AdminError::Interrupted(e.to_string()))?;
        Ok(Access::Offline(opened?))
    }

    /// Whether requests go to a running daemon.
    pub fn is_online(&self) -> bool {
        matches!(self, Access::Daemon(_))
    }

    /// Sends one request (an [`Access`] answers one request).
    pub async fn ask(self, request: Request) -> Result<Reply, AdminError> {
        match self {
            Access::Daemon(connection) => connection.ask(&request).await,
            Access::Offline(store) => tokio::task::spawn_blocking(move || {
                answer(
                    &*store,
                    &request,
                    crate::clock::now_ms(),
                    &mut std::io::sink(),
                )
            })
            .await
            .map_err(|e| AdminError::Interrupted(e.to_string()))?,
        }
    }

    /// Sends one streamed request ([`Request::is_streamed`]): its bytes are written to `out`
    /// as they come (from the daemon's stream, or from the store itself), so neither end holds
    /// the whole answer. Blocking: call it where blocking is allowed.
    pub fn stream(
        self,
        request: &Request,
        out: &mut dyn std::io::Write,
    ) -> Result<Reply, AdminError> {
        match self {
            Access::Daemon(connection) => connection.ask_streamed(request, out),
            Access::Offline(store) => answer(&*store, request, crate::clock::now_ms(), out),
        }
    }

    /// `admin export`: writes the export document to `out` and says how much it held.
    pub fn export_to(
        self,
        out: &mut dyn std::io::Write,
    ) -> Result<export::ExportCounts, AdminError> {
        let socket = self.socket();
        match self.stream(&Request::Export, out)? {
            Reply::Exported(counts) => Ok(counts),
            _ => Err(unexpected("export", socket)),
        }
    }

    /// `admin backup`: writes the snapshot file to `out` and says what it holds.
    pub fn backup_to(
        self,
        out: &mut dyn std::io::Write,
    ) -> Result<backup::SnapshotSummary, AdminError> {
        let socket = self.socket();
        match self.stream(&Request::Backup, out)? {
            Reply::BackedUp(summary) => Ok(summary),
            _ => Err(unexpected("backup", socket)),
        }
    }
}

/// The error for a reply that does not answer the request sent.
fn unexpected(request: &str, path: PathBuf) -> AdminError {
    AdminError::ControlProtocol {
        path,
        reason: format!("the reply does not answer the {request} request"),
    }
}

macro_rules! typed_request {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $out:ty, $request:expr, $variant:ident) => {
        $(#[$doc])*
        pub async fn $name(self, $($arg: $ty),*) -> Result<$out, AdminError> {
            let socket = self.socket();
            match self.ask($request).await? {
                Reply::$variant(value) => Ok(value),
                _ => Err(unexpected(stringify!($name), socket)),
            }
        }
    };
}

impl Access {
    fn socket(&self) -> PathBuf {
        match self {
            Access::Daemon(connection) => connection.path().to_path_buf(),
            Access::Offline(store) => store
                .data_dir()
                .map(|d| d.join(control::SOCKET_FILE))
                .unwrap_or_default(),
        }
    }

    typed_request!(
        /// `admin info`.
        info() -> Info, Request::Info, Info);
    typed_request!(
        /// `admin clusters`.
        clusters() -> Vec<ClusterRow>, Request::Clusters, Clusters);
    typed_request!(
        /// `admin cluster NAME_OR_ID`.
        cluster(name_or_id: &str) -> ClusterDetail,
        Request::Cluster { cluster: name_or_id.to_string() }, Cluster);
    typed_request!(
        /// `admin nodes`.
        nodes() -> Vec<NodeRow>, Request::Nodes, Nodes);
    typed_request!(
        /// `admin node ID`.
        node(id: &str) -> NodeDetail, Request::Node { id: id.to_string() }, Node);
    typed_request!(
        /// `admin verify`.
        verify() -> VerifyReport, Request::Verify, Verify);
    typed_request!(
        /// `admin delete-cluster`: deletes it, durably, and returns it as it was.
        delete_cluster(name_or_id: &str) -> ClusterRow,
        Request::DeleteCluster { cluster: name_or_id.to_string() }, DeletedCluster);
    typed_request!(
        /// `admin delete-node`: deletes it, durably, unless it is a member.
        delete_node(id: &str) -> NodeRow, Request::DeleteNode { id: id.to_string() }, DeletedNode);
    typed_request!(
        /// `admin rotate-handshake-keys`: new static handshake keys, the old ones accepted
        /// for `overlap_ms` more.
        rotate_handshake_keys(overlap_ms: u64) -> RotationReport,
        Request::RotateHandshakeKeys { overlap_ms }, RotatedHandshakeKeys);
}

/// A registry in `dir` with its identity and key files, one cluster `web` (4 places) and one
/// member per name in `members`, for tests.
#[cfg(test)]
pub(crate) fn test_registry(
    dir: &Path,
    members: &[&str],
) -> (crate::store::Store, crate::registry::RegistryIdentity) {
    use crate::store::{ClusterRef, NewCluster, NewNode, Store};
    let store = Store::open(dir).unwrap();
    let identity =
        crate::registry::RegistryIdentity::load_or_create(&store, Some(dir), Some("reg"), 1)
            .unwrap();
    let cluster = NewCluster {
        admission: Default::default(),
        name: "web".into(),
        attrs: 3,
        max_size: 4,
        endpoint_count: 1,
    };
    let c = store.create_cluster(cluster, 2).unwrap().0;
    for (n, name) in members.iter().enumerate() {
        let key = crate::test_support::fixture_key(n)
            .public_key()
            .to_spki_der()
            .to_vec();
        let node = NewNode {
            id: None,
            name: name.to_string(),
            attrs: 0,
            comms_key: key.clone(),
            sig_key: key,
            endpoints: vec!["127.0.0.1:7000".into()],
        };
        let node = store.register_node(node, 3).unwrap().node;
        store.join(&ClusterRef::Id(c.id.clone()), &node, 4).unwrap();
    }
    (store, identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_through_json() {
        for request in [
            Request::Info,
            Request::Cluster {
                cluster: "web".into(),
            },
            Request::Node { id: "ab".into() },
            Request::Backup,
        ] {
            let json = serde_json::to_string(&request).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), request);
        }
        assert_eq!(
            serde_json::to_string(&Request::Cluster {
                cluster: "web".into()
            })
            .unwrap(),
            r#"{"op":"cluster","cluster":"web"}"#
        );
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"cluster","cluster":"a","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop"}"#).is_err());

        let reply = Reply::Exported(export::ExportCounts {
            nodes: 2,
            clusters: 1,
        });
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(json, r#"{"exported":{"nodes":2,"clusters":1}}"#);
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), reply);
    }

    #[test]
    fn admin_never_creates_a_registry() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing");
        assert!(matches!(
            open_offline(&missing),
            Err(AdminError::NoRegistry(_))
        ));
        assert!(!missing.exists());
        let held = BackendChoice::default().open(dir.path()).unwrap();
        assert!(matches!(
            open_offline(dir.path()),
            Err(AdminError::Running(_))
        ));
        drop(held);
        assert!(open_offline(dir.path()).is_ok());
    }

    #[test]
    fn bounded_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        assert!(matches!(
            read_bounded(&path, 4),
            Err(AdminError::TooLarge {
                len: 5,
                limit: 4,
                ..
            })
        ));
        assert!(matches!(
            read_bounded(&dir.path().join("none"), 4),
            Err(AdminError::File { .. })
        ));
    }
}
