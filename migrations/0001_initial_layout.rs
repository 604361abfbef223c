//! Migration 0001: the initial layout (schema 0, an empty directory, to schema 1).
//!
//! This step owns the creation of the schema-1 trees. Schema 1 is:
//!
//! | tree            | key                              | value                                  |
//! |-----------------|----------------------------------|----------------------------------------|
//! | `meta`          | `b"schema_version"`              | u32, big-endian                        |
//! | `meta`          | `b"registry"`                    | bincode `RegistryMeta`                 |
//! | `nodes`         | node id bytes (32, or 20 legacy) | bincode `NodeRecord`                   |
//! | `clusters`      | cluster id bytes                 | bincode `ClusterRecord`, members inline (at most 64) |
//! | `cluster_names` | cluster name, UTF-8 bytes        | cluster id bytes                       |
//!
//! Values use `bincode::serialize`'s format (fixed-width little-endian integers, u64 lengths).
//! The step only creates the (empty) trees; `meta`/`registry` is written later by the server
//! and the schema version by the migration runner. It writes nothing else, so rerunning it is
//! harmless.
//!
//! Migration files must stay as they are once released: they describe how the data looked at
//! that version, not how the current code names things.

use crate::store::StorageError;

/// The trees of schema 1.
const TREES: [&str; 4] = ["meta", "nodes", "clusters", "cluster_names"];

/// Creates the schema-1 trees.
pub(super) fn apply(db: &sled::Db) -> Result<(), StorageError> {
    for name in TREES {
        db.open_tree(name)?;
    }
    Ok(())
}
