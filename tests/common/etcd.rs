//! The etcd side of the test harness: real 3-member etcd clusters on loopback ports (the
//! library's [`xlreg::store::etcd::testing`], shared with its unit tests and the benches),
//! and `xlreg serve --etcd` servers on them.
//!
//! Without `etcd` on the PATH, [`cluster_or_skip`] prints `SKIPPED: etcd not installed`
//! and the test returns early (it passes); under `CI=true` it fails instead.

use std::path::{Path, PathBuf};

pub use xlreg::store::etcd::testing::EtcdCluster;

use super::Server;

/// A 3-member etcd cluster for `test`, or `None` (after a loud SKIPPED line) without etcd.
pub fn cluster_or_skip(test: &str) -> Option<EtcdCluster> {
    EtcdCluster::start_or_skip(test)
}

/// Starts `xlreg serve` with its data directory `dir` and its records in `etcd` under
/// `prefix`, with `extra` arguments, and the identity secret file of that prefix
/// ([`secret_file`]).
pub fn server_on(etcd: &EtcdCluster, prefix: &str, dir: &Path, extra: &[&str]) -> Server {
    let args = server_args(etcd, prefix, extra);
    Server::start(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The arguments of [`server_on`]: `--etcd`, `--etcd-prefix`, `--identity-secret-file` and
/// `extra`.
pub fn server_args(etcd: &EtcdCluster, prefix: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--etcd".into(),
        etcd.endpoints_arg(),
        "--etcd-prefix".into(),
        prefix.into(),
        "--identity-secret-file".into(),
        secret_file(etcd, prefix).display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The identity secret file every server of `prefix` on `etcd` is given (mode 0600, made
/// on first use; a different prefix gets a different secret).
pub fn secret_file(etcd: &EtcdCluster, prefix: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let name: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = etcd.dir().join(format!("identity-secret{name}"));
    if !path.exists() {
        let secret = format!("{}{name}\n", "s".repeat(32));
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}
