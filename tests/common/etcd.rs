//! The etcd side of the test harness: real 3-member etcd clusters on loopback ports (the
//! library's [`xlreg::store::etcd::testing`], shared with its unit tests and the benches),
//! and `xlreg serve --etcd` servers on them.
//!
//! Without `etcd` on the PATH, [`cluster_or_skip`] prints `SKIPPED: etcd not installed`
//! and the test returns early (it passes); under `CI=true` it fails instead.

use std::path::Path;

pub use xlreg::store::etcd::testing::EtcdCluster;

use super::Server;

/// A 3-member etcd cluster for `test`, or `None` (after a loud SKIPPED line) without etcd.
pub fn cluster_or_skip(test: &str) -> Option<EtcdCluster> {
    EtcdCluster::start_or_skip(test)
}

/// Starts `xlreg serve` with its data directory `dir` and its records in `etcd` under
/// `prefix`, with `extra` arguments.
pub fn server_on(etcd: &EtcdCluster, prefix: &str, dir: &Path, extra: &[&str]) -> Server {
    let endpoints = etcd.endpoints_arg();
    let mut args = vec!["--etcd", endpoints.as_str(), "--etcd-prefix", prefix];
    args.extend_from_slice(extra);
    Server::start(dir, &args)
}
