//! Exit codes: one per kind of failure a script may act on, decided in one place.
//!
//! This module owns [`Failure`] (the documented codes), [`CliError`] (the refusals the
//! command line itself makes) and [`classify`], which reads an error's chain once and
//! names its kind, whichever library error it came from. README.md and docs/running.md list
//! the codes; they are part of the interface and do not change meaning between releases.

use std::io::ErrorKind;

use crate::admin::{AdminError, RefusalKind};
use crate::client::ClientError;
use crate::daemon::DaemonError;
use crate::model::Refusal;
use crate::node::NodeError;
use crate::proto::ErrCode;
use crate::store::{StorageError, StoreError};
use crate::validate::Invalid;

/// A kind of failure, and the exit code that says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// 1: a failure of no other kind: storage, I/O, a reply that breaks the protocol, a
    /// check (`admin verify`) that found problems.
    Internal = 1,
    /// 2: the command line is wrong: an unknown flag, a value out of range, a malformed name.
    Usage = 2,
    /// 3: the cluster, node, file or registry named does not exist.
    NotFound = 3,
    /// 4: the registry refused because of its state: the cluster is full, the name is
    /// taken, the node is still a member, the data directory is in use or not empty.
    Conflict = 4,
    /// 5: not allowed: the registry does not hold this regCred.dat's key, a signature was
    /// refused, the data directory belongs to another user.
    Unauthorized = 5,
    /// 6: the registry could not be reached (nothing listens, it closed the connection, or
    /// it said it is unavailable).
    Unreachable = 6,
    /// 7: the registry did not answer in time, or a wait (`cluster join --wait`) ended
    /// before the cluster was complete.
    Timeout = 7,
    /// 74 (EX_IOERR): the registry's storage failed, or its final flush did: nothing was
    /// acknowledged after the failure; a supervisor restarts the registry, which recovers
    /// from what is durable (docs/reliability.md).
    StorageFailed = 74,
    /// 130: interrupted by Ctrl-C (SIGINT), as shells report it.
    Interrupted = 130,
}

impl Failure {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A refusal or failure the command line itself decides.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Its kind.
    pub kind: Failure,
    /// What to tell the user.
    pub message: String,
}

impl CliError {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: Failure, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
        }
    }
}

/// The kind of failure `error` is: the first cause in its chain that says.
pub fn classify(error: &anyhow::Error) -> Failure {
    error
        .chain()
        .find_map(|cause| {
            if let Some(e) = cause.downcast_ref::<CliError>() {
                Some(e.kind)
            } else if let Some(e) = cause.downcast_ref::<ClientError>() {
                Some(client(e))
            } else if let Some(e) = cause.downcast_ref::<AdminError>() {
                admin(e)
            } else if let Some(e) = cause.downcast_ref::<NodeError>() {
                node(e)
            } else if let Some(e) = cause.downcast_ref::<DaemonError>() {
                daemon(e)
            } else if let Some(e) = cause.downcast_ref::<StoreError>() {
                match e {
                    StoreError::Refused(refusal) => Some(refused(refusal)),
                    StoreError::Storage(failure) => storage(failure),
                }
            } else if let Some(e) = cause.downcast_ref::<Refusal>() {
                Some(refused(e))
            } else if let Some(e) = cause.downcast_ref::<StorageError>() {
                storage(e)
            } else if cause.downcast_ref::<Invalid>().is_some() {
                Some(Failure::Usage)
            } else if let Some(e) = cause.downcast_ref::<std::io::Error>() {
                io(e.kind())
            } else {
                None
            }
        })
        .unwrap_or(Failure::Internal)
}

fn client(error: &ClientError) -> Failure {
    match error {
        ClientError::NothingListens { .. }
        | ClientError::Connect { .. }
        | ClientError::Connection(_)
        | ClientError::Closed => Failure::Unreachable,
        ClientError::Timeout(_) => Failure::Timeout,
        ClientError::KeyNotAccepted { .. }
        | ClientError::Handshake(_)
        | ClientError::PinMismatch { .. } => Failure::Unauthorized,
        ClientError::Refused { code, .. } => match code {
            Some(ErrCode::BadRequest) => Failure::Usage,
            Some(ErrCode::NotFound) => Failure::NotFound,
            Some(ErrCode::ClusterFull) | Some(ErrCode::Conflict) => Failure::Conflict,
            Some(ErrCode::Unauthorized) | Some(ErrCode::Forbidden) => Failure::Unauthorized,
            Some(ErrCode::Unavailable) => Failure::Unreachable,
            Some(ErrCode::InvalidState) | None => Failure::Internal,
        },
        ClientError::Protocol(_) | ClientError::Crypto(_) => Failure::Internal,
        ClientError::NoV3Keys => Failure::Usage,
        // Each endpoint failed its own way: the last one tried speaks for them all.
        ClientError::NoEndpointAnswered(failures) => failures
            .last()
            .map_or(Failure::Unreachable, |f| client(&f.error)),
    }
}

fn admin(error: &AdminError) -> Option<Failure> {
    if let Some(refusal) = error.refusal() {
        return Some(match refusal {
            RefusalKind::NotFound => Failure::NotFound,
            RefusalKind::Conflict => Failure::Conflict,
            RefusalKind::Invalid => Failure::Usage,
        });
    }
    Some(match error {
        AdminError::NoRegistry(_) => Failure::NotFound,
        AdminError::Running(_) | AdminError::TargetNotEmpty(_) | AdminError::EtcdNotEmpty(_) => {
            Failure::Conflict
        }
        AdminError::NoEtcdRegistry(_) => Failure::NotFound,
        AdminError::Etcd(_) => Failure::Unreachable,
        AdminError::NotOwner { .. } => Failure::Unauthorized,
        AdminError::DaemonUnreachable { .. } => Failure::Unreachable,
        AdminError::TooLarge { .. }
        | AdminError::BadSnapshot { .. }
        | AdminError::BadExport { .. } => Failure::Usage,
        // Look further down the chain (a store or file error says more).
        _ => return None,
    })
}

fn node(error: &NodeError) -> Option<Failure> {
    Some(match error {
        NodeError::NoDirectory { .. } | NodeError::Missing { .. } => Failure::NotFound,
        NodeError::AlreadyExists { .. } => Failure::Conflict,
        NodeError::Invalid(_) => Failure::Usage,
        // Look further down the chain (an I/O error says more).
        _ => return None,
    })
}

fn daemon(error: &DaemonError) -> Option<Failure> {
    Some(match error {
        DaemonError::Invalid { .. } => Failure::Usage,
        DaemonError::StoreFailed(_) | DaemonError::FinalFlush(_) => Failure::StorageFailed,
        // Look further down the chain (a store or file error says more).
        _ => return None,
    })
}

fn refused(refusal: &Refusal) -> Failure {
    match refusal {
        Refusal::NoSuchCluster(_)
        | Refusal::NoSuchNode(_)
        | Refusal::NoSuchToken { .. }
        | Refusal::NotAMember { .. } => Failure::NotFound,
        Refusal::BadProof { .. }
        | Refusal::TokenRefused { .. }
        | Refusal::ClusterClosed(_)
        | Refusal::TooManyTokens(_) => Failure::Unauthorized,
        Refusal::ClusterFull { .. }
        | Refusal::NameTaken(_)
        | Refusal::TokenIdTaken { .. }
        | Refusal::MemberNameTaken { .. }
        | Refusal::NodeKeyMismatch { .. }
        | Refusal::RegistryFull { .. } => Failure::Conflict,
        Refusal::TooFewEndpoints { .. } => Failure::Usage,
        // As a client sees it: Unavailable, try again later.
        Refusal::OverQuota { .. } => Failure::Unreachable,
    }
}

fn storage(failure: &StorageError) -> Option<Failure> {
    Some(match failure {
        StorageError::Locked { .. } => Failure::Conflict,
        StorageError::Failed(_) => Failure::StorageFailed,
        _ => return None,
    })
}

fn io(kind: ErrorKind) -> Option<Failure> {
    match kind {
        ErrorKind::NotFound => Some(Failure::NotFound),
        ErrorKind::PermissionDenied => Some(Failure::Unauthorized),
        ErrorKind::TimedOut => Some(Failure::Timeout),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cause_that_says_decides() {
        let refused = anyhow::Error::from(ClientError::Refused {
            code: Some(ErrCode::ClusterFull),
            description: "full".into(),
            retry_after: None,
        })
        .context("joining");
        assert_eq!(classify(&refused), Failure::Conflict);
        let missing = anyhow::Error::from(std::io::Error::from(ErrorKind::NotFound));
        assert_eq!(classify(&missing), Failure::NotFound);
        assert_eq!(classify(&anyhow::anyhow!("odd")), Failure::Internal);
        let usage = anyhow::Error::from(CliError::new(Failure::Usage, "bad"));
        assert_eq!(classify(&usage).code(), 2);
    }

    #[test]
    fn a_failed_store_exits_with_the_fail_stop_code() {
        assert_eq!(
            Failure::StorageFailed.code(),
            crate::failstop::EXIT_STORAGE_FAILED
        );
        let failed = anyhow::Error::from(DaemonError::StoreFailed("fdatasync: EIO".into()));
        assert_eq!(classify(&failed), Failure::StorageFailed);
    }

    #[test]
    fn a_missing_node_directory_is_not_found() {
        let missing = anyhow::Error::from(NodeError::NoDirectory {
            dir: "node-x".into(),
        });
        assert_eq!(classify(&missing), Failure::NotFound);
    }
}
