//! The etcd key layout of one registry: `<prefix>/<tree>/<key>`, the trees and keys of the
//! sled backend (see `store/sled/mod.rs`), so that snapshots, restore and views by tree name
//! work unchanged; and `<prefix>/ops/<op id>`, the operation keys of the transactions.
//!
//! This module owns [`Keys`].

use super::client::prefix_end;

/// Builds and takes apart the etcd keys of one registry's prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `<prefix>/`.
    root: Vec<u8>,
}

impl Keys {
    /// Node records, by id.
    pub const NODES: &'static str = "nodes";
    /// Cluster records, by id.
    pub const CLUSTERS: &'static str = "clusters";
    /// Cluster name to cluster id.
    pub const NAMES: &'static str = "cluster_names";
    /// The registry's facts and the schema version.
    pub const META: &'static str = "meta";
    /// Operation keys (not a tree of the store: never in snapshots or views).
    pub const OPS: &'static str = "ops";
    /// The trees of the store, in name order, as a view lists them.
    pub const TREES: [&'static str; 4] = [Self::NAMES, Self::CLUSTERS, Self::META, Self::NODES];

    /// The layout under `prefix` (a trailing `/` is implied).
    pub fn new(prefix: &str) -> Keys {
        let mut root = prefix.trim_end_matches('/').as_bytes().to_vec();
        root.push(b'/');
        Keys { root }
    }

    /// `<prefix>/`: every key of this registry starts with it.
    pub fn root(&self) -> &[u8] {
        &self.root
    }

    /// The prefix of every key of `tree`: `<prefix>/<tree>/`.
    pub fn tree(&self, tree: &str) -> Vec<u8> {
        let mut key = self.root.clone();
        key.extend_from_slice(tree.as_bytes());
        key.push(b'/');
        key
    }

    /// The etcd key of `key` in `tree`.
    pub fn key(&self, tree: &str, key: &[u8]) -> Vec<u8> {
        let mut full = self.tree(tree);
        full.extend_from_slice(key);
        full
    }

    /// The range `[start, end)` of every key of `tree`.
    pub fn tree_range(&self, tree: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.tree(tree);
        let end = prefix_end(&start);
        (start, end)
    }

    /// The key within `tree` of an etcd key of that tree.
    pub fn strip<'k>(&self, tree: &str, full: &'k [u8]) -> Option<&'k [u8]> {
        full.strip_prefix(self.tree(tree).as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_the_prefix_and_trees_do_not_overlap() {
        let keys = Keys::new("/xlreg/");
        assert_eq!(keys.key(Keys::NODES, b"ab"), b"/xlreg/nodes/ab".to_vec());
        assert_eq!(
            keys.strip(Keys::NODES, b"/xlreg/nodes/ab"),
            Some(&b"ab"[..])
        );
        let (start, end) = keys.tree_range(Keys::CLUSTERS);
        let name_key = keys.key(Keys::NAMES, b"x");
        assert!(!(start.as_slice() <= name_key.as_slice() && name_key.as_slice() < end.as_slice()));
        let mut sorted = Keys::TREES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, Keys::TREES.to_vec());
    }
}
