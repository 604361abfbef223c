//! The new data directory that `admin import` and `admin restore` fill.
//!
//! This module owns [`NewDataDir`]: it refuses a target that holds anything, creates a missing
//! one with mode 0700 (it will hold private keys), and, unless told the work succeeded,
//! removes what was put there, so a failed import or restore leaves the target as it found it.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use super::AdminError;

/// A data directory being filled. Dropping it without [`NewDataDir::keep`] undoes the work.
#[derive(Debug)]
pub struct NewDataDir {
    dir: PathBuf,
    /// Whether this run created the directory (then it is removed, else only emptied).
    created: bool,
    kept: bool,
}

impl NewDataDir {
    /// Claims `dir` for a new registry: it must not exist, or be an empty directory.
    pub fn create(dir: &Path) -> Result<NewDataDir, AdminError> {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(AdminError::TargetNotEmpty(dir.to_path_buf()));
                }
                Ok(NewDataDir {
                    dir: dir.to_path_buf(),
                    created: false,
                    kept: false,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(AdminError::file(parent))?;
                }
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dir)
                    .map_err(AdminError::file(dir))?;
                Ok(NewDataDir {
                    dir: dir.to_path_buf(),
                    created: true,
                    kept: false,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => {
                Err(AdminError::TargetNotEmpty(dir.to_path_buf()))
            }
            Err(error) => Err(AdminError::file(dir)(error)),
        }
    }

    /// The work succeeded: leave the directory as it is.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for NewDataDir {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let result = if self.created {
            std::fs::remove_dir_all(&self.dir)
        } else {
            // It was empty when claimed: everything in it is ours.
            std::fs::read_dir(&self.dir).and_then(|entries| {
                for entry in entries {
                    let path = entry?.path();
                    if path.is_dir() && !path.is_symlink() {
                        std::fs::remove_dir_all(&path)?;
                    } else {
                        std::fs::remove_file(&path)?;
                    }
                }
                Ok(())
            })
        };
        if let Err(error) = result {
            tracing::warn!(dir = %self.dir.display(), %error, "could not clean up after a failed import or restore");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_and_undoes_unkept_work() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        {
            let claimed = NewDataDir::create(&fresh).unwrap();
            std::fs::write(fresh.join("x"), b"1").unwrap();
            drop(claimed);
        }
        assert!(!fresh.exists());

        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        {
            let _claimed = NewDataDir::create(&empty).unwrap();
            std::fs::create_dir(empty.join("sub")).unwrap();
            std::fs::write(empty.join("sub/y"), b"1").unwrap();
        }
        assert!(empty.is_dir());
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

        let kept = NewDataDir::create(&empty).unwrap();
        std::fs::write(empty.join("z"), b"1").unwrap();
        kept.keep();
        assert!(empty.join("z").exists());
        assert!(matches!(
            NewDataDir::create(&empty),
            Err(AdminError::TargetNotEmpty(_))
        ));
        assert!(matches!(
            NewDataDir::create(&empty.join("z")),
            Err(AdminError::TargetNotEmpty(_))
        ));
    }
}
