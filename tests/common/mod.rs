//! Shared test harness: real `xlreg serve` processes on ephemeral loopback ports with real
//! data directories, node identities from a shared key pool, and the real CLI binary.
//!
//! Keys come from committed, test-only fixtures (tests/data/keys and tests/data/registry,
//! each with a README) wherever the key itself is not what a test is about: RSA key
//! generation costs tens to hundreds of milliseconds a key, and each registry would
//! otherwise make two.
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
        install_template_identity(dir);
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

/// The committed test data (tests/data): test-only keys for tests only, never for a real
/// registry or node.
pub fn test_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
}

include!("../data/fixture_keys.rs");

/// Key pair `index` (comms, sig): the fixtures' pair `index` while they last, generated
/// keys after that, each made once per test binary and handed out by index.
pub fn key_pair(index: usize) -> (RsaKeyPair, RsaKeyPair) {
    static POOL: OnceLock<Mutex<Vec<(RsaKeyPair, RsaKeyPair)>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| Mutex::new(Vec::new()));
    loop {
        let next = {
            let keys = pool.lock().unwrap();
            if let Some(pair) = keys.get(index) {
                return pair.clone();
            }
            keys.len()
        };
        let pair = if 2 * next + 1 < FIXTURE_KEYS {
            (fixture_key(2 * next), fixture_key(2 * next + 1))
        } else {
            (
                RsaKeyPair::generate(RSA_BITS).unwrap(),
                RsaKeyPair::generate(RSA_BITS).unwrap(),
            )
        };
        let mut keys = pool.lock().unwrap();
        if keys.len() == next {
            keys.push(pair);
        }
    }
}

/// Gives a data directory that holds no registry yet the template registry's key files
/// (tests/data/registry, mode 0600), so `xlreg serve` loads them instead of generating
/// two keys; the registry's name and ID are still made on its first start. A directory that
/// already holds a store or key files is left alone.
pub fn install_template_identity(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    use xlreg::registry::{COMMS_KEY_FILE, SIG_KEY_FILE};
    std::fs::create_dir_all(dir).unwrap();
    let occupied = [COMMS_KEY_FILE, SIG_KEY_FILE, "db"]
        .iter()
        .any(|file| dir.join(file).exists());
    if occupied {
        return;
    }
    for file in [COMMS_KEY_FILE, SIG_KEY_FILE] {
        let target = dir.join(file);
        std::fs::copy(test_data_dir().join("registry").join(file), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
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

pub mod etcd;
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

// ---------------------------------------------------------------------------------------------
// Raw xlReg/2, for tests that must send what a well-behaved client never would. Built from the
// library's own pieces (handshake, session cipher, frames, messages, token signing), so only
// the deliberately broken part of each test differs from a real client.

use prost::Message as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use xlreg::connection::{Connection, ConnectionError};
use xlreg::frame::{self, MAX_FRAME_LEN};
use xlreg::id::Id;
use xlreg::proto::{ErrCode, Tag, XlRegMsg};
use xlreg::session_crypto::{ClientHandshake, Role, SessionCipher, SALT_LEN};
use xlreg::store::{ClusterRecord, NodeRecord, Store};

/// How long a raw client waits for the registry to answer or hang up. Far longer than any
/// reply takes, far shorter than the handshake and idle timeouts the hostile tests configure,
/// so "closed" can only mean the registry closed on purpose.
pub const HEAR_TIMEOUT: Duration = Duration::from_secs(20);

/// What a raw client heard from the registry.
#[derive(Debug)]
pub enum Heard {
    /// A whole frame.
    Frame(Vec<u8>),
    /// The registry closed the connection (cleanly or with a reset) without a frame.
    Closed,
    /// Nothing within [`HEAR_TIMEOUT`].
    Silence,
}

/// A raw TCP connection to a registry, framed for reading.
pub struct RawConn {
    conn: Connection<TcpStream>,
}

impl RawConn {
    /// Dials `endpoint`.
    pub async fn connect(endpoint: &str) -> RawConn {
        let stream = TcpStream::connect(endpoint).await.expect("dial registry");
        stream.set_nodelay(true).unwrap();
        RawConn {
            conn: Connection::new(stream, MAX_FRAME_LEN),
        }
    }

    /// Sends `bytes` as they are. Errors (the registry already hung up) are returned.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.conn.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// Sends `payload` as one frame.
    pub async fn send_frame(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.send_raw(&frame::encode(payload)).await
    }

    /// Closes our sending side: the registry reads end-of-stream.
    pub async fn half_close(&mut self) {
        let _ = self.conn.get_mut().shutdown().await;
    }

    /// Waits for the next frame or the end of the connection.
    pub async fn hear(&mut self) -> Heard {
        match self.conn.read_frame(HEAR_TIMEOUT).await {
            Ok(Some(frame)) => Heard::Frame(frame),
            Ok(None) => Heard::Closed,
            Err(ConnectionError::ReadTimeout(_)) => Heard::Silence,
            Err(ConnectionError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Heard::Closed
            }
            Err(other) => panic!("unexpected read failure: {other}"),
        }
    }

    /// Asserts that the registry closes the connection without sending anything.
    pub async fn expect_silent_close(&mut self, case: &str) {
        match self.hear().await {
            Heard::Closed => {}
            other => panic!("{case}: expected a silent close, got {other:?}"),
        }
    }

    /// Performs the xlReg/2 handshake against the registry of `regcred`.
    pub async fn handshake(mut self, regcred: &RegCred) -> RawSession {
        let (handshake, hello) = ClientHandshake::start(&regcred.comms_key).unwrap();
        self.send_frame(&hello).await.expect("send hello");
        let Heard::Frame(reply) = self.hear().await else {
            panic!("no handshake reply")
        };
        let keys = handshake.finish(&reply).expect("handshake reply");
        RawSession {
            conn: self,
            cipher: SessionCipher::new(&keys.key, Role::Client),
            server_salt: keys.server_salt,
        }
    }
}

/// An established raw xlReg/2 session.
pub struct RawSession {
    /// The connection underneath.
    pub conn: RawConn,
    cipher: SessionCipher,
    /// The registry's salt for this session (member token signatures cover it).
    pub server_salt: [u8; SALT_LEN],
}

impl RawSession {
    /// Dials `server` and performs the handshake.
    pub async fn open(server: &Server) -> RawSession {
        RawConn::connect(&server.endpoint())
            .await
            .handshake(&server.regcred)
            .await
    }

    /// Seals `plaintext` as the session's next message, without sending it.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.cipher.seal(plaintext)
    }

    /// Seals and sends arbitrary plaintext bytes (for crafted protobuf).
    pub async fn send_plain(&mut self, plaintext: &[u8]) -> std::io::Result<()> {
        let sealed = self.seal(plaintext);
        self.conn.send_frame(&sealed).await
    }

    /// Seals and sends a message.
    pub async fn send(&mut self, msg: &XlRegMsg) -> std::io::Result<()> {
        self.send_plain(&msg.encode_to_vec()).await
    }

    /// Reads, opens and decodes the registry's next message; panics if there is none.
    pub async fn recv(&mut self) -> XlRegMsg {
        let Heard::Frame(sealed) = self.conn.hear().await else {
            panic!("the registry sent no reply")
        };
        let plaintext = self.cipher.open(&sealed).expect("reply authenticates");
        XlRegMsg::decode(plaintext.as_slice()).expect("reply decodes")
    }

    /// Sends `msg` and returns the reply.
    pub async fn call(&mut self, msg: &XlRegMsg) -> XlRegMsg {
        self.send(msg).await.expect("send request");
        self.recv().await
    }

    /// Asserts that the next message is an Error of class `code` whose description
    /// contains `text`, and that the registry then closes the connection.
    pub async fn expect_error(&mut self, case: &str, code: ErrCode, text: &str) {
        let reply = self.recv().await;
        assert_eq!(
            reply.op,
            Some(Tag::Error as i32),
            "{case}: expected an Error, got {reply:?}"
        );
        let description = reply.err_desc.clone().unwrap_or_default();
        assert_eq!(
            reply.err_kind,
            Some(code as i32),
            "{case}: wrong error class ({description})"
        );
        assert!(
            description.contains(text),
            "{case}: error {description:?} should mention {text:?}"
        );
        self.conn.expect_silent_close(case).await;
    }

    /// A Member message for `node`, signed for this session.
    pub fn member_msg(&self, node: &NodeIdentity) -> XlRegMsg {
        member_msg(node, &self.server_salt)
    }

    /// Registers `node` and returns its ID.
    pub async fn register(&mut self, node: &NodeIdentity) -> Id {
        let msg = self.member_msg(node);
        let reply = self.call(&msg).await;
        assert_eq!(reply.op, Some(Tag::MemberOk as i32), "{reply:?}");
        Id::from_bytes(&reply.member_id.unwrap()).unwrap()
    }
}

/// A Member message carrying `node`'s token, signed for the session whose salt is `salt`.
pub fn member_msg(node: &NodeIdentity, salt: &[u8]) -> XlRegMsg {
    XlRegMsg {
        op: Some(Tag::Member as i32),
        member_specs: Some(xlreg::client::signed_token(node, salt).unwrap()),
        ..XlRegMsg::default()
    }
}

/// Everything a store holds, to compare a data directory before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreContents {
    /// Every node, in id order.
    pub nodes: Vec<NodeRecord>,
    /// Every cluster, in id order.
    pub clusters: Vec<ClusterRecord>,
}

impl StoreContents {
    /// One line per node and cluster, without keys: what a failed comparison prints.
    pub fn summary(&self) -> Vec<String> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| format!("node {} {:?}", n.id, n.name));
        let clusters = self.clusters.iter().map(|c| {
            let members: Vec<_> = c
                .members
                .iter()
                .map(|m| format!("{}:{}", m.slot, m.name))
                .collect();
            format!(
                "cluster {} {:?} max {} members {members:?}",
                c.id, c.name, c.max_size
            )
        });
        nodes.chain(clusters).collect()
    }

    /// Asserts that `self` equals `before`, printing summaries if not.
    pub fn assert_unchanged_since(&self, before: &StoreContents) {
        assert!(
            self == before,
            "the store changed:\nbefore: {:#?}\nafter: {:#?}",
            before.summary(),
            self.summary()
        );
    }
}

/// Opens the (stopped) registry's data directory, checks it verifies clean and returns its
/// contents.
pub fn store_contents(dir: &Path) -> StoreContents {
    let store = Store::open(dir).expect("open the data directory");
    assert_eq!(
        store.verify().unwrap(),
        Vec::<String>::new(),
        "Store::verify found problems"
    );
    StoreContents {
        nodes: store.nodes().collect::<Result<_, _>>().unwrap(),
        clusters: store.clusters().collect::<Result<_, _>>().unwrap(),
    }
}

impl Server {
    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The registry's resident memory, in KiB (VmRSS from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// How many lines of the log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits (at most 60 s) until at least `count` log lines contain `needle`.
    pub fn wait_for_log_lines(&self, needle: &str, count: usize) {
        let until = Instant::now() + Duration::from_secs(60);
        while self.log_count(needle) < count {
            assert!(
                Instant::now() < until,
                "fewer than {count} log lines contain {needle:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl RawConn {
    /// Dials `endpoint` with a receive buffer of about `bytes` (the kernel may round it),
    /// so that a client that stops reading soon stops the registry's writes.
    pub async fn connect_with_receive_buffer(endpoint: &str, bytes: u32) -> RawConn {
        let address: std::net::SocketAddr = endpoint.parse().expect("a numeric endpoint");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        let stream = socket.connect(address).await.expect("dial registry");
        stream.set_nodelay(true).unwrap();
        RawConn {
            conn: Connection::new(stream, MAX_FRAME_LEN),
        }
    }

    /// Reads and discards whatever arrives until the registry closes the connection;
    /// returns how many bytes came. Panics if the connection stays open for
    /// [`HEAR_TIMEOUT`] without sending anything.
    pub async fn drain_until_closed(&mut self) -> usize {
        use tokio::io::AsyncReadExt as _;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let read = tokio::time::timeout(HEAR_TIMEOUT, self.conn.get_mut().read(&mut buffer))
                .await
                .expect("the registry neither sent nor closed");
            match read {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
                Err(e) => panic!("unexpected read failure: {e}"),
            }
        }
    }
}

/// Creates a node identity directory with `xlreg node init`, with one endpoint on `port`.
pub fn init_node(dir: &Path, name: &str, port: u16) {
    let output = xlreg(&[
        "node",
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--endpoint",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

/// A new pseudo-terminal: its master end and its slave end (what a program sees as its
/// terminal).
pub fn openpty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the given ints; the other arguments
    // may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

/// The seed a replayable test runs with, from the setting of its environment variable
/// `variable`: unset or empty, `default`; `random`, one from the clock; otherwise the number
/// it holds.
pub fn seed_setting(variable: &str, setting: Option<&str>, default: u64) -> u64 {
    match setting.map(str::trim) {
        None | Some("") => default,
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        Some(number) => number
            .parse()
            .unwrap_or_else(|_| panic!("{variable}={number:?}: give a number or \"random\"")),
    }
}
