//! The store's error type.
//!
//! This module owns [`StoreError`]: every way a store operation can fail, from storage and
//! corruption problems to the domain refusals the registry transactions make (a full cluster, a
//! member name already in use, a node presenting the wrong key).

use std::path::PathBuf;
use std::sync::Arc;

use sled::transaction::TransactionError;

use crate::id::Id;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another [`Store`](super::Store) in this process) holds the data
    /// directory's lock.
    #[error("data directory {} is in use by another xlreg process", dir.display())]
    Locked {
        /// The data directory that could not be locked.
        dir: PathBuf,
    },
    /// A file-system operation of the store itself failed.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The embedded database (sled) reported a failure.
    #[error("database error: {0}")]
    Sled(#[source] sled::Error),
    /// Making changes durable failed; the same failure is reported to every caller that was
    /// waiting on that flush.
    #[error("could not write changes to disk: {0}")]
    FlushFailed(#[source] Arc<StoreError>),
    /// The transaction of a batch of writes ([`Store::write`](super::Store::write)) failed as
    /// a whole; the same failure is reported to every write in the batch.
    #[error("could not apply changes: {0}")]
    BatchFailed(#[source] Arc<StoreError>),
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
    /// No cluster has the given name or id (as the caller gave it).
    #[error("no such cluster: {0}")]
    NoSuchCluster(String),
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
    #[error("node {id} is registered with a different signing key")]
    NodeKeyMismatch {
        /// The node id.
        id: Id,
    },
    /// No node is registered with this id.
    #[error("no such node: {0}")]
    NoSuchNode(Id),
    /// A snapshot was to be written into a data directory that already holds data.
    #[error("data directory {} already holds data; restore only into an empty directory", dir.display())]
    NotEmpty {
        /// The data directory.
        dir: PathBuf,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// Maps a failure to open sled in `dir`, recognising the "directory is locked" case.
pub(super) fn open_error(dir: &std::path::Path, e: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &e {
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock")
        {
            return StoreError::Locked {
                dir: dir.to_path_buf(),
            };
        }
    }
    StoreError::Sled(e)
}
