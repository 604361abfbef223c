//! The data directory's permissions do not depend on the umask the daemon was started with:
//! the directory and every directory in it 0700, every file 0600, except the public
//! `regCred.dat` (0644, which no one else can reach inside the 0700 directory) and the
//! control socket (0600, checked in `src/admin/control.rs`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{node, wait_until, xlreg_bin};
use xlreg::client::{Client, DEFAULT_TIMEOUT};
use xlreg::regcred::RegCred;

/// Every entry under `dir` (recursively) with its mode bits.
fn modes(dir: &Path) -> Vec<(String, u32, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let name = entry.path().display().to_string();
        out.push((name, meta.permissions().mode() & 0o777, meta.is_dir()));
        if meta.is_dir() {
            out.extend(modes(&entry.path()));
        }
    }
    out
}

#[test]
fn under_umask_000_the_data_directory_is_private() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let log = root.path().join("serve.log");
    let mut child = Command::new(xlreg_bin());
    child
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: umask is async-signal-safe and touches nothing but the child's mask.
    unsafe {
        child.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = child.spawn().unwrap();
    let regcred_path = dir.join("regCred.dat");
    wait_until("regCred.dat", Duration::from_secs(60), || {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        RegCred::read(&regcred_path).is_ok()
    });
    let regcred = RegCred::read(&regcred_path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect(&regcred, DEFAULT_TIMEOUT).await.unwrap();
        client.register(&node(0, "n0", 1)).await.unwrap();
        client.create("private", 3, 1).await.unwrap();
        client.bye().await.unwrap();
    });
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());

    let top = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(top, 0o700, "the data directory");
    let entries = modes(&dir);
    assert!(
        entries.iter().any(|(n, _, _)| n.ends_with("/db")),
        "{entries:?}"
    );
    for (name, mode, is_dir) in &entries {
        let expected = if *is_dir {
            0o700
        } else if name.ends_with("regCred.dat") {
            0o644
        } else {
            0o600
        };
        assert_eq!(*mode, expected, "{name} is {mode:o}; all: {entries:?}");
    }
}
