//! Shared test harness: real `xlreg serve` processes on ephemeral loopback ports with real
//! data directories, node identities from a shared key pool, and the real CLI binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use xlreg::client::{Client, DEFAULT_TIMEOUT};
use xlreg::crypto::{RsaKeyPair, RSA_BITS};
use xlreg::node::NodeIdentity;
use xlreg::regcred::RegCred;

/// Path of the `xlreg` binary under test.
pub fn xlreg_bin() -> &'static str {
    env!("CARGO_BIN_EXE_xlreg")
}

/// Runs the CLI with `args` and returns its output.
pub fn xlreg(args: &[&str]) -> Output {
    Command::new(xlreg_bin())
        .args(args)
        .env_remove("XLREG_DATA_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run xlreg")
}

/// A running registry process.
pub struct Server {
    child: Option<Child>,
    /// Its data directory.
    pub dir: PathBuf,
    /// The regCred.dat it wrote.
    pub regcred_path: PathBuf,
    /// Its parsed credentials.
    pub regcred: RegCred,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Server {
    /// Starts `xlreg serve` on `dir` (created if needed) on an ephemeral port, with `extra`
    /// arguments, and waits until it has written its regCred.dat.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(dir, extra, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the process.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let regcred_path = dir.join("regCred.dat");
        let _ = std::fs::remove_file(&regcred_path);
        let log = dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(xlreg_bin())
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn xlreg serve");
        let mut server = Server {
            child: Some(child),
            dir: dir.to_path_buf(),
            regcred: wait_for_regcred(&regcred_path, &log),
            regcred_path,
            log,
        };
        server.assert_running();
        server
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!(
                "xlreg serve exited with {status}; log:\n{}",
                self.log_text()
            );
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The endpoint clients dial.
    pub fn endpoint(&self) -> String {
        self.regcred.endpoint().to_string()
    }

    /// A connected, handshaken client session.
    pub async fn client(&self) -> Client {
        Client::connect(&self.regcred, DEFAULT_TIMEOUT)
            .await
            .expect("connect")
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        signal(&child, libc::SIGTERM);
        let status = wait_with_timeout(&mut child, Duration::from_secs(30));
        status.code()
    }

    /// Kills the process with SIGKILL (a crash) and waits for it.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("xlreg serve did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_regcred(path: &Path, log: &Path) -> RegCred {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(cred) = RegCred::read(path) {
            return cred;
        }
        if Instant::now() > until {
            panic!(
                "no regCred.dat at {} after 60 s; log:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Key pairs shared by every test in one test binary: RSA key generation costs tens of
/// milliseconds a key, so each pair is made once and handed out by index.
pub fn key_pair(index: usize) -> (RsaKeyPair, RsaKeyPair) {
    static POOL: OnceLock<Mutex<Vec<(RsaKeyPair, RsaKeyPair)>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| Mutex::new(Vec::new()));
    loop {
        {
            let keys = pool.lock().unwrap();
            if let Some(pair) = keys.get(index) {
                return pair.clone();
            }
        }
        let pair = (
            RsaKeyPair::generate(RSA_BITS).unwrap(),
            RsaKeyPair::generate(RSA_BITS).unwrap(),
        );
        let mut keys = pool.lock().unwrap();
        if keys.len() <= index {
            keys.push(pair);
        }
    }
}

/// An in-memory node identity using key pair `index`, named `name`, with `endpoints`
/// endpoints on 127.0.0.1.
pub fn node(index: usize, name: &str, endpoints: usize) -> NodeIdentity {
    let (comms, sig) = key_pair(index);
    NodeIdentity {
        name: name.to_string(),
        endpoints: (0..endpoints)
            .map(|i| format!("127.0.0.1:{}", 20_000 + index * 10 + i))
            .collect(),
        id: None,
        comms,
        sig,
    }
}

/// The text of a command's stdout.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of a command's stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub mod legacy_client;

impl Server {
    /// The address of the metrics endpoint (`--metrics-listen`), read from the log line
    /// that announces it (text or JSON format).
    pub fn metrics_addr(&self) -> String {
        let mut found = None;
        wait_until(
            "the metrics endpoint's log line",
            Duration::from_secs(60),
            || {
                found = self
                    .log_text()
                    .lines()
                    .filter(|line| line.contains("metrics endpoint serving"))
                    .find_map(|line| {
                        let (_, rest) = line
                            .split_once("listen=")
                            .or_else(|| line.split_once("\"listen\":\""))?;
                        Some(rest.split(['"', ' ']).next()?.to_string())
                    });
                found.is_some()
            },
        );
        found.unwrap()
    }

    /// Sends `sig` to the process without waiting for it.
    pub fn send_signal(&self, sig: i32) {
        signal(self.child.as_ref().expect("running"), sig);
    }

    /// Waits (at most 60 s) for the process to exit and returns its exit code.
    pub fn wait_exit(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        wait_with_timeout(&mut child, Duration::from_secs(60)).code()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Polls the log (at most 60 s) until `condition` holds for it; returns the log.
    pub fn wait_for_log(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let mut log = String::new();
        wait_until(what, Duration::from_secs(60), || {
            log = self.log_text();
            condition(&log)
        });
        log
    }
}

/// Polls `condition` every 20 ms until it holds, panicking with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > until {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.1 GET over a TCP socket: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the HTTP response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// The value of the series `series` (name with labels, exactly as exposed) in Prometheus
/// text, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `addr`'s /metrics (for at most 60 s) until `series` reads `value`; returns the
/// last text scraped.
pub fn wait_for_metric(addr: &str, series: &str, value: f64) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        let last = metric(&text, series);
        if last == Some(value) {
            return text;
        }
        if Instant::now() > until {
            panic!("{series} is {last:?}, not {value}, after 60 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
