//! The admin error type.
//!
//! This module owns [`AdminError`]: every way an admin operation can fail, whether it runs
//! on an open data directory or through a running daemon's control socket. Errors the daemon
//! reports come back as [`AdminError::Remote`] carrying the daemon's own message, so a
//! command prints the same words online and offline.

use std::path::PathBuf;

use crate::registry::RegistryError;
use crate::store::StorageError;
use crate::validate::Invalid;

impl From<crate::sealed_identity::SealError> for AdminError {
    fn from(error: crate::sealed_identity::SealError) -> AdminError {
        AdminError::Registry(RegistryError::Sealed(error))
    }
}

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// The registry's key files could not be read or written.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A name or ID given to the command is malformed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No cluster has the given name or ID.
    #[error("no such cluster: {0}")]
    NoSuchCluster(String),
    /// No node has the given ID.
    #[error("no such node: {0}")]
    NoSuchNode(String),
    /// A node cannot be deleted while it is a member of a cluster.
    #[error(
        "node {node} is a member of {}; delete those clusters first (`xlreg admin \
         delete-cluster`), or leave the node registered",
        clusters.join(", ")
    )]
    StillMember {
        /// The node's ID.
        node: String,
        /// The clusters it is a member of.
        clusters: Vec<String>,
    },
    /// The caller does not own the data directory: an offline command would leave files
    /// the owner (the service user) cannot read.
    #[error(
        "{} belongs to uid {owner}, and this is uid {caller}: run the command as its owner \
         (e.g. `sudo -u '#{owner}' xlreg ...`), so that no file in it becomes unreadable to \
         the registry",
        dir.display()
    )]
    NotOwner {
        /// The data directory.
        dir: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// The caller's effective uid.
        caller: u32,
    },
    /// The data directory holds no registry database.
    #[error("{} holds no xlreg registry (no database file there); check --data-dir", .0.display())]
    NoRegistry(PathBuf),
    /// The data directory is held by a running daemon and the command needs it stopped.
    #[error(
        "{} is in use by a running xlreg; stop it first (this command works on a stopped \
         registry only)",
        .0.display()
    )]
    Running(PathBuf),
    /// The data directory is held by a running daemon whose control socket did not answer.
    #[error(
        "{} is in use by a running xlreg, but its control socket {} does not answer ({reason}); \
         an ephemeral registry has none",
        dir.display(),
        socket.display()
    )]
    DaemonUnreachable {
        /// The data directory.
        dir: PathBuf,
        /// The control socket tried.
        socket: PathBuf,
        /// Why it did not answer.
        reason: String,
    },
    /// The registry keeps nothing on disk (it runs with `--ephemeral`).
    #[error("an ephemeral registry keeps nothing on disk to back up")]
    Ephemeral,
    /// Import and restore write only into a new or empty directory.
    #[error("{} is not empty; import and restore write only into a new or empty directory", .0.display())]
    TargetNotEmpty(PathBuf),
    /// `admin migrate` writes only into an empty etcd prefix.
    #[error("{0} holds keys already; migrate writes only into an empty etcd prefix (choose another --etcd-prefix)")]
    EtcdNotEmpty(String),
    /// The etcd prefix holds no registry (or no sealed identity).
    #[error("{0} holds no xlreg registry; check --etcd and --etcd-prefix")]
    NoEtcdRegistry(String),
    /// etcd could not be reached or used.
    #[error("etcd: {0}")]
    Etcd(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file given to the command is larger than this xlreg accepts.
    #[error("{} is {len} bytes long; the limit is {limit}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is not an xlreg snapshot, or one whose checksum does not match its contents.
    #[error("{}: {reason}", path.display())]
    BadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An export document cannot be imported.
    #[error("{}: {reason}", path.display())]
    BadExport {
        /// The export file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing the output (an export or a snapshot file, or the daemon's stream of it to
    /// the client) failed.
    #[error("writing the output failed: {0}")]
    Output(#[source] std::io::Error),
    /// Stored data could not be turned into a document (it fails to decode).
    #[error("{0}; run `xlreg admin verify`")]
    Unreadable(String),
    /// The control socket could not be created, reached or used.
    #[error("control socket {}: {source}", path.display())]
    Control {
        /// The socket's path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The control socket answered something that breaks the control protocol.
    #[error("control socket {}: {reason}", path.display())]
    ControlProtocol {
        /// The socket's path.
        path: PathBuf,
        /// What was wrong with the exchange.
        reason: String,
    },
    /// The thread doing the work stopped before it finished (it panicked or was cancelled).
    #[error("the admin request was interrupted: {0}")]
    Interrupted(String),
    /// The running daemon refused or failed the request; its message is shown as it is.
    #[error("{0}")]
    Remote(String),
    /// The running daemon refused the request on its merits (the same refusal an offline
    /// command makes); its message is shown as it is.
    #[error("{message}")]
    RemoteRefusal {
        /// What kind of refusal.
        kind: RefusalKind,
        /// The daemon's message.
        message: String,
    },
}

/// The kinds of refusal, the same whether a command ran offline or through the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The cluster or node named does not exist.
    NotFound,
    /// The registry's state forbids it (a node that is still a member, say).
    Conflict,
    /// The request is malformed (a bad name or ID).
    Invalid,
}

impl AdminError {
    /// The kind of refusal this is, if it is one rather than a failure.
    pub fn refusal(&self) -> Option<RefusalKind> {
        match self {
            AdminError::NoSuchCluster(_) | AdminError::NoSuchNode(_) => Some(RefusalKind::NotFound),
            AdminError::StillMember { .. } => Some(RefusalKind::Conflict),
            AdminError::Invalid(_) => Some(RefusalKind::Invalid),
            AdminError::RemoteRefusal { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Wraps an I/O error with the file it concerns.
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AdminError {
        let path = path.into();
        move |source| AdminError::File { path, source }
    }
}
