//! Real etcd clusters for tests and benches: [`EtcdCluster`] starts three `etcd` members
//! on free 127.0.0.1 ports in a temporary directory, finds the leader, SIGKILLs, SIGSTOPs
//! and restarts members, and tears everything down when dropped; [`CutProxy`] cuts and
//! restores one client's connections to a member.
//!
//! This module owns the test harness of the etcd backend, shared by the library's unit
//! tests, the integration tests (`tests/common/etcd.rs`) and the benches. Without `etcd`
//! on the PATH, [`EtcdCluster::start_or_skip`] prints a loud `SKIPPED: etcd not installed`
//! and returns `None` (the test passes), except under `CI=true`, where it panics: CI must
//! run the etcd tests (`.ci/run` installs etcd).
//!
//! Every member is started with `PR_SET_PDEATHSIG` = SIGKILL from one long-lived thread, so
//! no etcd outlives the test process, even one held in a `static`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect a leader and answer.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Whether an `etcd` binary can be run.
pub fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if `tool` is there (`present`); otherwise says loudly that `test` is skipped and
/// returns false, or panics under `CI=true`, where every test must run.
pub fn skip_without(test: &str, tool: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {tool} is not installed, and CI=true requires this test to run");
    }
    eprintln!("SKIPPED: {tool} not installed: {test} ran nothing");
    false
}

/// One member of a test cluster.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
    stopped: bool,
    /// With TLS: the port of the member's TLS client listener (the plain one stays, on
    /// `client_port`, for the harness's own health checks).
    tls_port: Option<u16>,
}

/// The PEM files of a TLS test setup made by [`make_test_certs`].
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The test CA's certificate.
    pub ca: PathBuf,
    /// The members' server certificate (for 127.0.0.1) and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate (CN `xlreg`) and key, signed by the CA.
    pub client: (PathBuf, PathBuf),
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate in `dir` with the
/// `openssl` command; `None` if it cannot be run.
pub fn make_test_certs(dir: &Path) -> Option<TestCerts> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_args = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=xlreg-test-ca",
    ];
    let mut ok = run(&[&["req", "-x509"][..], &ec, &ca_args].concat());
    for (name, usage) in [
        ("server", "serverAuth,clientAuth"),
        ("client", "clientAuth"),
    ] {
        let ext = format!("{name}.ext");
        let extensions = format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n");
        std::fs::write(dir.join(&ext), extensions).ok()?;
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let cn = format!(
            "/CN={}",
            if name == "client" {
                "xlreg"
            } else {
                "127.0.0.1"
            }
        );
        let request = [
            "-keyout",
            key.as_str(),
            "-out",
            csr.as_str(),
            "-subj",
            cn.as_str(),
        ];
        ok = ok
            && run(&[&["req"][..], &ec, &request].concat())
            && run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
    }
    ok.then(|| TestCerts {
        ca: dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server.key")),
        client: (dir.join("client.pem"), dir.join("client.key")),
    })
}

/// A running etcd cluster of test members on loopback ports.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    /// With TLS: the certificates the members serve and require of clients.
    tls: Option<TestCerts>,
}

impl EtcdCluster {
    /// Starts a 3-member cluster, or says loudly that `test` is skipped because etcd is not
    /// installed (a panic under `CI=true`).
    pub fn start_or_skip(test: &str) -> Option<EtcdCluster> {
        skip_without(test, "etcd", etcd_installed()).then(|| EtcdCluster::start(3))
    }

    /// Starts a cluster of `size` members and waits until it answers. Panics if it cannot.
    pub fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, None)
    }

    /// As [`EtcdCluster::start`], each member also serving clients over TLS (with `certs`,
    /// client certificates required) on the ports [`EtcdCluster::tls_endpoints`] names.
    pub fn start_with_tls(size: usize, certs: TestCerts) -> EtcdCluster {
        EtcdCluster::start_with(size, Some(certs))
    }

    fn start_with(size: usize, tls: Option<TestCerts>) -> EtcdCluster {
        remove_dirs_of_ended_processes();
        // The ports are found free and released before etcd binds them, so a test running
        // beside this one may bind one first; the member then exits at once. Such a start
        // is retried on new ports; any other failure to become ready is not.
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = EtcdCluster::spawn_new(size, tls.clone());
            match cluster.try_wait_ready() {
                Ok(()) => return cluster,
                Err(NotReady::MemberExited(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd test cluster: {why}; starting again on other ports");
                }
                Err(NotReady::MemberExited(why) | NotReady::TimedOut(why)) => {
                    panic!("the etcd test cluster did not become ready: {why}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawns a new cluster of `size` members on free ports, without waiting for it.
    fn spawn_new(size: usize, tls: Option<TestCerts>) -> EtcdCluster {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "xlreg-etcd-test-{}-{n}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create the etcd test directory");
        let ports = free_ports(3 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                tls_port: tls.as_ref().map(|_| ports[3 * i + 2]),
                data_dir: dir.join(format!("m{i}")),
                child: None,
                stopped: false,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir,
            members,
            initial_cluster,
            tls,
        };
        for i in 0..size {
            cluster.spawn(i, "new");
        }
        cluster
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The TLS client URLs of every member (empty without TLS).
    pub fn tls_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter_map(|m| m.tls_port.map(|p| format!("https://127.0.0.1:{p}")))
            .collect()
    }

    /// The endpoints joined by commas, as `--etcd` takes them.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// How many members the cluster has.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name)))
            .expect("create the etcd log");
        let listen = match m.tls_port {
            Some(port) => format!("{client},https://127.0.0.1:{port}"),
            None => client.clone(),
        };
        let mut command = Command::new("etcd");
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args([
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "xlreg-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null());
        if let Some(certs) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&certs.server.0)
                .arg("--key-file")
                .arg(&certs.server.1)
                .arg("--trusted-ca-file")
                .arg(&certs.ca)
                .arg("--client-cert-auth");
        }
        command
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = spawn_tied_to_this_process(command);
        let m = &mut self.members[i];
        m.child = Some(child);
        m.stopped = false;
    }

    /// Waits until every running member answers `/health` and a leader is known.
    pub fn wait_ready(&mut self) {
        if let Err(NotReady::MemberExited(why) | NotReady::TimedOut(why)) = self.try_wait_ready() {
            panic!("the etcd test cluster did not become ready: {why}");
        }
    }

    /// Waits until every running member answers `/health` and a leader is known, at most
    /// [`READY_WITHIN`]; a member that exits meanwhile ends the wait at once.
    fn try_wait_ready(&mut self) -> Result<(), NotReady> {
        let until = Instant::now() + READY_WITHIN;
        loop {
            for i in 0..self.members.len() {
                let exited = match self.members[i].child.as_mut() {
                    Some(child) => child.try_wait().ok().flatten(),
                    None => None,
                };
                if let Some(status) = exited {
                    self.members[i].child = None;
                    return Err(NotReady::MemberExited(format!(
                        "member {} exited ({status}); its log: {}",
                        self.members[i].name,
                        self.log_tail(i)
                    )));
                }
            }
            let healthy = (0..self.members.len())
                .filter(|&i| self.members[i].child.is_some() && !self.members[i].stopped)
                .all(|i| {
                    self.http(i, "GET", "/health", "")
                        .is_some_and(|b| b.contains("\"true\""))
                });
            if healthy && self.leader().is_some() {
                return Ok(());
            }
            if Instant::now() >= until {
                let logs = (0..self.members.len())
                    .map(|i| format!("{}: {}", self.members[i].name, self.log_tail(i)))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(NotReady::TimedOut(format!(
                    "not ready within {READY_WITHIN:?} in {}; logs: {logs}",
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of member `i`'s log, for a failure's message (its directory is removed
    /// with the cluster).
    fn log_tail(&self, i: usize) -> String {
        let log = self.dir.join(format!("{}.log", self.members[i].name));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The index of the current leader, as the running members report it.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() || self.members[i].stopped {
                ids.push(None);
                continue;
            }
            let status = self
                .http(i, "POST", "/v3/maintenance/status", "{}")
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok());
            let id = status
                .as_ref()
                .and_then(|s| s["header"]["member_id"].as_str().map(str::to_string));
            if let Some(l) = status.as_ref().and_then(|s| s["leader"].as_str()) {
                if l != "0" {
                    leader = Some(l.to_string());
                }
            }
            ids.push(id);
        }
        let leader = leader?;
        ids.iter()
            .position(|id| id.as_deref() == Some(leader.as_str()))
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs member `i` (it holds its connections but answers nothing).
    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.members[i].stopped = true;
    }

    /// SIGCONTs member `i`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.members[i].stopped = false;
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(child) = &self.members[i].child {
            let pid = libc::pid_t::try_from(child.id()).expect("a pid fits");
            // SAFETY: kill(2) on our own child's pid, with a valid signal number.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Starts member `i` again (after [`EtcdCluster::kill`]) on its data directory, and
    /// waits until the cluster answers.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
        self.wait_ready();
    }

    /// One HTTP request to member `i`'s client port (etcd's JSON gateway and /health):
    /// the body, if it answered within a second.
    fn http(&self, i: usize, method: &str, path: &str, body: &str) -> Option<String> {
        let port = self.members[i].client_port;
        let mut stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
                .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].stopped {
                self.resume(i);
            }
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories of test clusters whose process has ended: a cluster held in a
/// `static` (the unit tests' shared one) is never dropped, so its directory outlives it.
fn remove_dirs_of_ended_processes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("xlreg-etcd-test-"))
        else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How many times a cluster is started on new ports when a member exits at once.
const START_ATTEMPTS: u32 = 3;

/// Why a test cluster is not ready.
enum NotReady {
    /// A member's process exited (etcd exits at once when its port is taken).
    MemberExited(String),
    /// No leader with every member healthy within [`READY_WITHIN`].
    TimedOut(String),
}

/// `count` distinct free loopback ports (bound together, then released).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` so that it is SIGKILLed when this process ends: from one thread that
/// lives as long as the process (PR_SET_PDEATHSIG fires when the spawning *thread* ends).
fn spawn_tied_to_this_process(mut command: Command) -> Child {
    use std::os::unix::process::CommandExt as _;
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcd-test-spawner".into())
            .spawn(move || {
                for (mut command, answer) in requests {
                    let _ = answer.send(command.spawn());
                }
                // Keep the thread (and so the members' parent-death signal) alive.
                loop {
                    std::thread::park();
                }
            })
            .expect("start the spawner thread");
        Mutex::new(sender)
    });
    // SAFETY: prctl with PR_SET_PDEATHSIG is async-signal-safe and touches no memory of
    // the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (answer, receive) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, answer))
        .expect("the spawner thread runs");
    receive
        .recv()
        .expect("the spawner thread answers")
        .expect("start etcd")
}

/// A TCP proxy on a loopback port in front of one etcd member, whose connections a test can
/// cut (every open connection closed, new ones closed on arrival) and restore: a client's
/// connection to etcd lost and back, with etcd itself untouched.
#[derive(Debug)]
pub struct CutProxy {
    port: u16,
    state: Arc<ProxyState>,
}

#[derive(Debug, Default)]
struct ProxyState {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every connection forwarded, to close them on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl CutProxy {
    /// Starts forwarding a new loopback port to `target` (an `http://127.0.0.1:PORT` URL or
    /// `127.0.0.1:PORT`).
    pub fn start(target: &str) -> CutProxy {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("a bound address").port();
        let state = Arc::new(ProxyState::default());
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("etcd-test-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if shared.cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&target) else {
                        continue;
                    };
                    forward(&shared, client, server);
                }
            })
            .expect("start the proxy thread");
        CutProxy { port, state }
    }

    /// The URL clients dial instead of the member's.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every forwarded connection and refuses new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for stream in self
            .state
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways between `client` and `server` until either side closes.
fn forward(state: &Arc<ProxyState>, client: TcpStream, server: TcpStream) {
    let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
        state
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([a, b]);
    }
    for (mut from, mut to) in [(client, server_copy), (server, client_copy)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_exits_while_the_cluster_starts_ends_the_wait_at_once_with_its_log() {
        if !skip_without(
            "a_member_that_exits_while_the_cluster_starts_ends_the_wait_at_once_with_its_log",
            "etcd",
            etcd_installed(),
        ) {
            return;
        }
        let mut cluster = EtcdCluster::spawn_new(1, None);
        let pid = cluster.members[0].child.as_ref().expect("spawned").id();
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        let began = Instant::now();
        match cluster.try_wait_ready() {
            Err(NotReady::MemberExited(why)) => {
                assert!(why.contains("member m0 exited"), "{why}");
            }
            Err(NotReady::TimedOut(why)) => panic!("waited out the deadline: {why}"),
            Ok(()) => panic!("a killed member made a ready cluster"),
        }
        assert!(
            began.elapsed() < READY_WITHIN / 2,
            "the wait did not end when the member exited"
        );
    }
}
