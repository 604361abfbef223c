//! How sled's failures become [`StorageError`]s.
//!
//! This module owns the conversions from `sled::Error` and sled's transaction errors, and
//! recognises the "directory is locked by another process" case when opening, and turns a
//! panic of sled's while opening into [`StorageError::OpenFailed`]. Nothing of
//! sled's error types leaves the sled backend: a sled failure travels as
//! [`StorageError::Backend`].

use sled::transaction::TransactionError;

use crate::store::StorageError;

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Backend(Box::new(e))
    }
}

impl From<TransactionError<StorageError>> for StorageError {
    fn from(e: TransactionError<StorageError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StorageError::from(e),
        }
    }
}

/// Maps a failure to open sled in `dir`, recognising the "directory is locked" case.
pub(super) fn open_error(dir: &std::path::Path, e: sled::Error) -> StorageError {
    if let sled::Error::Io(io) = &e {
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock")
        {
            return StorageError::Locked {
                dir: dir.to_path_buf(),
            };
        }
    }
    StorageError::from(e)
}

/// Maps a panic caught while opening sled in `dir` to [`StorageError::OpenFailed`].
pub(super) fn open_panicked(
    dir: &std::path::Path,
    panic: &(dyn std::any::Any + Send),
) -> StorageError {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "sled panicked".to_string());
    // sled's panics here are `unwrap`s of I/O results: say what failed, not how.
    let message = match message.split_once("on an `Err` value: ") {
        Some((_, error)) => format!("I/O error inside sled: {error}"),
        None => message,
    };
    StorageError::OpenFailed {
        dir: dir.to_path_buf(),
        message,
    }
}
