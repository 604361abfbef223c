//! The on-disk schema version and the migrations between versions.
//!
//! This module owns [`SCHEMA_VERSION`] and the migration runner. Migration steps live in the
//! crate's top-level `migrations/` directory, one file per step, and are compiled in here with
//! `#[path]`. Step N takes a data directory at schema N-1 (0 = new and empty) to schema N; the
//! runner writes the new version to `meta`/`schema_version` (u32 big-endian) and flushes after
//! each step, so an interrupted upgrade resumes at the first step that did not finish.

use sled::Db;

use crate::store::StorageError;

#[path = "../../../migrations/0001_initial_layout.rs"]
mod m0001_initial_layout;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// The tree and key holding the schema version.
pub(crate) const META_TREE: &str = "meta";
pub(crate) const VERSION_KEY: &[u8] = b"schema_version";

/// One migration step: brings a directory at schema `version - 1` to `version`.
struct Step {
    version: u32,
    name: &'static str,
    apply: fn(&Db) -> Result<(), StorageError>,
}

/// All migration steps, in order; the last one's version is [`SCHEMA_VERSION`].
const STEPS: &[Step] = &[Step {
    version: 1,
    name: "initial layout",
    apply: m0001_initial_layout::apply,
}];

/// Reads the stored schema version: `None` if none is stored.
pub(super) fn stored_version(db: &Db) -> Result<Option<u32>, StorageError> {
    let meta = db.open_tree(META_TREE)?;
    meta.get(VERSION_KEY)?
        .map(|bytes| decode_version(&bytes))
        .transpose()
}

/// Decodes the stored form of a schema version (u32, big-endian).
pub(crate) fn decode_version(bytes: &[u8]) -> Result<u32, StorageError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| {
        StorageError::Corrupt(format!(
            "schema_version is {} bytes long, not 4",
            bytes.len()
        ))
    })?;
    Ok(u32::from_be_bytes(arr))
}

/// Writes the schema version (without flushing).
fn write_version(db: &Db, version: u32) -> Result<(), StorageError> {
    db.open_tree(META_TREE)?
        .insert(VERSION_KEY, &version.to_be_bytes()[..])?;
    Ok(())
}

/// Whether any tree of the database holds data.
pub(super) fn has_data(db: &Db) -> Result<bool, StorageError> {
    for name in db.tree_names() {
        if !db.open_tree(&name)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Brings the database to [`SCHEMA_VERSION`], or refuses if it is newer or unrecognisable.
pub(super) fn migrate(db: &Db) -> Result<(), StorageError> {
    let current =
        match stored_version(db)? {
            Some(v) => v,
            None if has_data(db)? => return Err(StorageError::Corrupt(
                "the data directory holds data but no schema version; it was not written by xlreg"
                    .into(),
            )),
            None => 0,
        };
    if current > SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for step in STEPS.iter().filter(|s| s.version > current) {
        tracing::info!(
            version = step.version,
            step = step.name,
            "applying store migration"
        );
        (step.apply)(db)?;
        write_version(db, step.version)?;
        db.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    #[test]
    fn steps_are_ordered_and_end_at_current_version() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.version as usize, i + 1);
        }
        assert_eq!(STEPS.last().map(|s| s.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn new_database_is_migrated_and_migration_is_idempotent() {
        let db = temp_db();
        migrate(&db).unwrap();
        assert_eq!(stored_version(&db).unwrap(), Some(SCHEMA_VERSION));
        let names: Vec<_> = db.tree_names();
        for t in ["meta", "nodes", "clusters", "cluster_names"] {
            assert!(names.iter().any(|n| n.as_ref() == t.as_bytes()), "{t}");
        }
        migrate(&db).unwrap();
        assert_eq!(stored_version(&db).unwrap(), Some(SCHEMA_VERSION));
    }

    #[test]
    fn too_new_unparseable_and_unversioned_data_are_refused() {
        let db = temp_db();
        write_version(&db, 7).unwrap();
        let e = migrate(&db).unwrap_err();
        assert!(matches!(
            e,
            StorageError::SchemaTooNew {
                found: 7,
                supported: SCHEMA_VERSION
            }
        ));
        assert_eq!(
            e.to_string(),
            "data directory has schema version 7, this xlreg understands up to 1; use a newer xlreg"
        );

        let db = temp_db();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(VERSION_KEY, &b"x"[..])
            .unwrap();
        assert!(matches!(migrate(&db), Err(StorageError::Corrupt(_))));

        let db = temp_db();
        db.open_tree("nodes")
            .unwrap()
            .insert(b"k", &b"v"[..])
            .unwrap();
        assert!(matches!(migrate(&db), Err(StorageError::Corrupt(_))));
    }
}
