//! Real storage faults: the real `xlreg serve` under strace's fault injection (`fdatasync`,
//! `pwrite64`, `sync_file_range` failing on the database file; `fsync` failing at start) and
//! on a really full filesystem (a small ext4 image on a loop device, or a small tmpfs).
//!
//! For every fault the registry must be fail-stop (docs/reliability.md): no acknowledgement
//! after the fault, every acknowledgement before it present after a restart, `admin verify`
//! clean, the process gone with exit code 74 within a bound, `/health` 503 while it fails,
//! a clear error for the client, and a bounded log.
//!
//! These tests need strace (and root, for the full filesystem). Without them they say so
//! loudly and pass; with `CI=true` a missing strace fails them (`.ci/run` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, node, stderr, stdout, wait_until, xlreg, xlreg_bin, Server};
use xlreg::client::{Client, ClientError};
use xlreg::proto::ErrCode;
use xlreg::regcred::RegCred;

/// The exit code of a registry whose storage failed (`xlreg::failstop::EXIT_STORAGE_FAILED`).
const EXIT_STORAGE_FAILED: i32 = xlreg::failstop::EXIT_STORAGE_FAILED as i32;

/// How soon after its first refusal a failed registry must be gone: the exit grace (2 s)
/// plus generous slack for a loaded machine and strace's overhead.
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// The store timeout the faulty registries run with (the hung-flush case waits for it).
const STORE_TIMEOUT_SECS: &str = "3";

/// Most creates a case tries before the fault must have hit.
const MAX_CREATES: usize = 400;

/// True if strace can run here. Without it: a loud skip, or a failure under CI.
fn strace_or_skip(test: &str) -> bool {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: strace is not installed, and CI must run the fault tests (.ci/run installs it)");
    }
    eprintln!("SKIPPED {test}: strace is not installed (apt-get install strace); the fault was NOT tested");
    false
}

/// True if this process may mount filesystems (root). Otherwise a loud skip.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs root to mount a small filesystem; the full disk was NOT tested"
    );
    false
}

/// An `xlreg serve` process, possibly under strace, with its metrics endpoint.
struct Registry {
    child: Child,
    log: PathBuf,
    regcred: RegCred,
    metrics: String,
}

impl Registry {
    /// Starts `xlreg serve` on `dir`, behind `wrapper` (strace and its options, or nothing).
    fn start(dir: &Path, log: PathBuf, wrapper: &[String]) -> Registry {
        let regcred_path = dir.join("regCred.dat");
        let _ = std::fs::remove_file(&regcred_path);
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(xlreg_bin());
                c
            }
            None => Command::new(xlreg_bin()),
        };
        let mut child = command
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--store-timeout", STORE_TIMEOUT_SECS])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn xlreg serve");
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until("regCred.dat", Duration::from_secs(60), || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("xlreg serve exited with {status}: {}", log_text());
            }
            RegCred::read(&regcred_path).is_ok()
        });
        let metrics = log_text()
            .lines()
            .filter(|line| line.contains("metrics endpoint serving"))
            .find_map(|line| {
                let (_, rest) = line.split_once("listen=")?;
                Some(rest.split([' ', '"']).next()?.to_string())
            })
            .expect("the metrics endpoint's address in the log");
        Registry {
            child,
            regcred: RegCred::read(&regcred_path).unwrap(),
            log,
            metrics,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `bound`) for the process to exit; its exit code and how long it took.
    fn wait_exit(&mut self, bound: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            if started.elapsed() > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the failed registry still ran {bound:?} after its failure; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime for the test's client sessions.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One create session: connect, register, create `name`.
async fn create(regcred: &RegCred, name: &str) -> Result<(), ClientError> {
    let mut client = Client::connect(regcred, Duration::from_secs(10)).await?;
    client.register(&node(0, "prober", 1)).await?;
    client.create(name, 4, 1).await?;
    let _ = client.bye().await;
    Ok(())
}

/// What a fault case observed.
struct Observed {
    acked: Vec<String>,
    first_error: ClientError,
    health: (u16, String),
}

/// Creates clusters `c0`, `c1`, ... one session each until one is not acknowledged; then
/// reads `/health` and checks that no later create is acknowledged either. `between` runs
/// after each acknowledged create (to fill a disk, say).
fn create_until_refused(registry: &Registry, mut between: impl FnMut(usize)) -> Observed {
    let rt = runtime();
    let mut acked = Vec::new();
    for i in 0..MAX_CREATES {
        let name = format!("c{i}");
        match rt.block_on(create(&registry.regcred, &name)) {
            Ok(()) => {
                acked.push(name);
                between(i);
            }
            Err(first_error) => {
                // At once, while the registry still runs (it exits 2 s after the failure).
                let health = http_get(&registry.metrics, "/health");
                for j in 0..3 {
                    let late = format!("late{j}");
                    let outcome = rt.block_on(create(&registry.regcred, &late));
                    assert!(
                        outcome.is_err(),
                        "{late} was acknowledged after the storage failed"
                    );
                }
                return Observed {
                    acked,
                    first_error,
                    health,
                };
            }
        }
    }
    panic!(
        "no fault after {MAX_CREATES} creates; log:\n{}",
        registry.log_text()
    );
}

/// Checks the fail-stop promise for a case whose fault has hit, then (after
/// `before_restart`, once the process is gone) restarts the registry on `dir` without
/// faults and checks that every acknowledged create survived.
fn assert_fail_stop(
    case: &str,
    dir: &Path,
    mut registry: Registry,
    observed: Observed,
    before_restart: impl FnOnce(),
) {
    let Observed {
        acked,
        first_error,
        health,
    } = observed;
    // A clear, retryable error: Unavailable saying the storage failed, or a reply withheld
    // (the connection closed without one).
    assert!(first_error.is_retryable(), "{case}: {first_error}");
    if let ClientError::Refused {
        code, description, ..
    } = &first_error
    {
        assert_eq!(*code, Some(ErrCode::Unavailable), "{case}: {description}");
        assert!(description.contains("storage"), "{case}: {description}");
    }
    // /health said why, or the process was already gone (it may exit before we asked only
    // if the grace passed, which a 2 s window makes unlikely but not impossible).
    assert_eq!(health.0, 503, "{case}: /health said {health:?}");
    assert!(health.1.contains("storage failed"), "{case}: {health:?}");
    let (code, took) = registry.wait_exit(EXIT_BOUND);
    let log = registry.log_text();
    assert_eq!(code, Some(EXIT_STORAGE_FAILED), "{case}: log:\n{log}");
    // sled logs its own ERROR line for each I/O buffer it was writing when the fault hit:
    // how many depends on timing, not on requests (nothing is written after the failure),
    // so they are bounded apart from xlreg's own lines.
    let is_sleds = |l: &&str| l.contains(" sled::");
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && !is_sleds(l))
        .count();
    let sled_errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && is_sleds(l))
        .count();
    let failed = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("storage failed"))
        .count();
    assert!(errors <= 3, "{case}: {errors} ERROR lines:\n{log}");
    assert!(
        sled_errors <= 16,
        "{case}: {sled_errors} ERROR lines from sled:\n{log}"
    );
    assert_eq!(failed, 1, "{case}: the failure is logged once:\n{log}");
    assert!(!log.contains("panicked"), "{case}: {log}");
    eprintln!(
        "{case}: {} creates acknowledged before the fault; first refusal: {first_error}; \
         /health {}; exit {code:?} {took:?} after the refusal; {errors} ERROR line(s), \
         {sled_errors} from sled",
        acked.len(),
        health.0
    );
    drop(registry);
    before_restart();
    // Restart without faults: every acknowledged create is there, and the store is sound.
    let server = Server::start(dir, &[]);
    assert_eq!(
        server.stop(),
        Some(0),
        "{case}: the restarted registry stops cleanly"
    );
    let data_dir = dir.to_str().unwrap();
    let listed = xlreg(&["admin", "clusters", "--data-dir", data_dir]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let names = stdout(&listed);
    for name in &acked {
        assert!(
            names
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == name)),
            "{case}: acknowledged cluster {name} lost:\n{names}"
        );
    }
    let verify = xlreg(&["admin", "verify", "--data-dir", data_dir]);
    assert!(
        verify.status.success(),
        "{case}: verify: {}{}",
        stdout(&verify),
        stderr(&verify)
    );
}

/// A data directory that a registry has already created (so strace's `-P DIR/db` names an
/// existing file), with one acknowledged cluster `before`.
fn prepared_dir(root: &Path) -> PathBuf {
    let dir = root.join("data");
    let server = Server::start(&dir, &[]);
    let rt = runtime();
    rt.block_on(create(&server.regcred, "before")).unwrap();
    assert_eq!(server.stop(), Some(0));
    dir
}

/// strace failing the `when`-th `syscall` on `DIR/db` with `errno`, following threads.
fn strace_failing(dir: &Path, syscall: &str, errno: &str, when: u32) -> Vec<String> {
    vec![
        "strace".into(),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        "-P".into(),
        dir.join("db").to_str().unwrap().into(),
        "-e".into(),
        format!("trace={syscall}"),
        "-e".into(),
        format!("inject={syscall}:error={errno}:when={when}"),
    ]
}

/// Runs one injected-fault case.
fn injected_case(case: &str, syscall: &str, errno: &str, when: u32) {
    if !strace_or_skip(case) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = prepared_dir(root.path());
    let log = root.path().join("fault.log");
    let registry = Registry::start(&dir, log, &strace_failing(&dir, syscall, errno, when));
    let observed = create_until_refused(&registry, |_| {});
    let mut acked = observed.acked.clone();
    acked.push("before".into());
    let observed = Observed { acked, ..observed };
    assert_fail_stop(case, &dir, registry, observed, || {});
}

/// The injected faults: the syscall, its errno, and which call on `DIR/db` fails (only that
/// one: the next would succeed, and must not lead to an acknowledgement, as fsyncgate
/// showed a later successful sync proves nothing about the pages the failed one dropped).
const INJECTED: [(&str, &str, u32); 4] = [
    ("fdatasync", "EIO", 12),
    ("pwrite64", "ENOSPC", 8),
    ("pwrite64", "EIO", 8),
    ("sync_file_range", "EIO", 12),
];

#[test]
fn a_failed_sync_or_write_of_the_database_file_stops_the_registry() {
    for (syscall, errno, when) in INJECTED {
        injected_case(&format!("{syscall} {errno}"), syscall, errno, when);
    }
}

#[test]
fn a_failed_fsync_at_start_is_one_clear_line_and_a_non_zero_exit() {
    let case = "fsync EIO at start";
    if !strace_or_skip(case) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    // Every fsync fails: the first comes while the store opens.
    let output = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync"])
        .args(["-e", "inject=fsync:error=EIO"])
        .arg(xlreg_bin())
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = stderr(&output);
    let code = output.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101),
        "{case}: exit {code:?}, not a clean failure:\n{err}"
    );
    assert!(!err.contains("panicked"), "{case}: a panic:\n{err}");
    assert!(!err.contains("backtrace"), "{case}:\n{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("xlreg: ") && last.contains(dir.to_str().unwrap()),
        "{case}: the last line names the data directory: {last:?}\n{err}"
    );
    eprintln!("{case}: exit {code:?}: {last}");
}

/// A small filesystem mounted for the test: ext4 on a loop device, or tmpfs if loop devices
/// cannot be used. Unmounted when dropped.
struct SmallFs {
    mount: PathBuf,
    kind: &'static str,
    _root: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts one, or says why it cannot (no loop device and no tmpfs mount allowed).
    fn mount() -> Option<SmallFs> {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("fs.img");
        let mount = root.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let sh = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
        let ext4 = std::fs::File::create(&image)
            .and_then(|f| f.set_len(24 * 1024 * 1024))
            .is_ok()
            && sh(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image))
            && sh(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount));
        let kind = if ext4 {
            "ext4 on a loop device (24 MiB)"
        } else {
            let ok = sh(Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
                .arg(&mount));
            if !ok {
                return None;
            }
            "tmpfs (24 MiB), loop devices unavailable"
        };
        eprintln!("full-disk test on {kind}");
        Some(SmallFs {
            mount,
            kind,
            _root: root,
        })
    }

    /// Fills the filesystem: writes zeros into `filler` until the disk is full.
    fn fill(&self, filler: &Path) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(filler)
            .unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // A last few bytes, into the last partial block.
        while file.write_all(&chunk[..512]).is_ok() {}
        let _ = file.sync_all();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

#[test]
fn a_full_filesystem_stops_the_registry() {
    let case = "full filesystem";
    if !root_or_skip(case) {
        return;
    }
    let Some(fs) = SmallFs::mount() else {
        eprintln!(
            "SKIPPED {case}: could mount neither ext4 on a loop device nor a tmpfs; the full disk was NOT tested"
        );
        return;
    };
    let dir = fs.mount.join("data");
    let filler = fs.mount.join("filler");
    // The log lives off the small filesystem, so that it can tell what happened.
    let log = tempfile::NamedTempFile::new().unwrap();
    let registry = Registry::start(&dir, log.path().to_path_buf(), &[]);
    // A few creates succeed; then the disk fills up under the running registry.
    let observed = create_until_refused(&registry, |i| {
        if i == 3 {
            fs.fill(&filler);
        }
    });
    assert!(observed.acked.len() >= 4, "{}", registry.log_text());
    // The operator frees space once the registry has stopped; then it restarts.
    let case = format!("{case} on {}", fs.kind);
    assert_fail_stop(&case, &dir, registry, observed, || {
        std::fs::remove_file(&filler).unwrap()
    });
}

#[test]
fn a_registration_retried_after_a_storage_failure_makes_one_node() {
    let case = "registration retried after a failure";
    if !strace_or_skip(case) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = prepared_dir(root.path());
    let node_dir = root.path().join("node");
    let init = xlreg(&[
        "node",
        "init",
        "--dir",
        node_dir.to_str().unwrap(),
        "--name",
        "retried",
        "--endpoint",
        "127.0.0.1:9999",
    ]);
    assert!(init.status.success(), "{}", stderr(&init));
    let register = |retry_for: &str| {
        xlreg(&[
            "register",
            "--node",
            node_dir.to_str().unwrap(),
            "--regcred",
            dir.join("regCred.dat").to_str().unwrap(),
            "--retry-for",
            retry_for,
        ])
    };
    // The registration's own flush fails: its reply is lost, though its record may well
    // have reached the file.
    let log = root.path().join("fault.log");
    // strace counts each thread's calls: the store writer's third fdatasync fails, after
    // those of a warm-up session's registration and create.
    let mut registry = Registry::start(&dir, log, &strace_failing(&dir, "fdatasync", "EIO", 3));
    let rt = runtime();
    rt.block_on(create(&registry.regcred, "warm-up")).unwrap();
    let first = register("1");
    assert!(!first.status.success(), "{}", stdout(&first));
    let (code, _) = registry.wait_exit(EXIT_BOUND);
    assert_eq!(code, Some(EXIT_STORAGE_FAILED), "{}", registry.log_text());
    drop(registry);
    // The supervisor restarts the registry; the node tries again.
    let server = Server::start(&dir, &[]);
    let retried = register("30");
    assert!(retried.status.success(), "{}", stderr(&retried));
    assert_eq!(server.stop(), Some(0));
    let nodes = stdout(&xlreg(&[
        "admin",
        "nodes",
        "--data-dir",
        dir.to_str().unwrap(),
    ]));
    let records = nodes.lines().filter(|l| l.contains("retried")).count();
    assert_eq!(
        records, 1,
        "{case}: one node, not one per attempt:\n{nodes}"
    );
}
