//! How sled's failures become [`StorageError`]s.
//!
//! This module owns the conversions from `sled::Error` and sled's transaction errors, and
//! recognises the "directory is locked by another process" case when opening, turns a
//! panic of sled's while opening into [`StorageError::OpenFailed`], and makes sled's
//! panics one log line each in a daemon ([`log_panics`]). Nothing of
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

/// Makes panics inside sled one ERROR log line each instead of the default hook's message
/// and backtrace: sled 0.34.7 panics (an `unwrap`) on some I/O failures, while it opens a
/// data directory among others, and the store turns those into a storage error naming the
/// directory (see `Store::open`) or a failed store (`crate::failstop`). Every other panic
/// still goes to the previous hook. The daemon's opening of a sled store installs it
/// ([`crate::store::BackendChoice::open`]); only the first call does anything.
pub(crate) fn log_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(install_panic_hook);
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let Some(location) = info.location().filter(|l| l.file().contains("/sled-")) else {
            return previous(info);
        };
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        tracing::error!(%location, "sled gave up: {message}");
    }));
}
