//! Real etcd clusters for tests and benches: [`EtcdCluster`] starts three `etcd` members
//! on free 127.0.0.1 ports in a temporary directory, finds the leader, SIGKILLs, SIGSTOPs
//! and restarts members, and tears everything down when dropped.
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
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
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

/// One member of a test cluster.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

/// A running etcd cluster of test members on loopback ports.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts a 3-member cluster, or says loudly that `test` is skipped because etcd is not
    /// installed (a panic under `CI=true`).
    pub fn start_or_skip(test: &str) -> Option<EtcdCluster> {
        if !etcd_installed() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: etcd is not installed, and CI=true requires the etcd tests to run");
            }
            eprintln!("SKIPPED: etcd not installed: {test} ran nothing");
            return None;
        }
        Some(EtcdCluster::start(3))
    }

    /// Starts a cluster of `size` members and waits until it answers. Panics if it cannot.
    pub fn start(size: usize) -> EtcdCluster {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "xlreg-etcd-test-{}-{n}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create the etcd test directory");
        let ports = free_ports(2 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
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
        };
        for i in 0..size {
            cluster.spawn(i, "new");
        }
        cluster.wait_ready();
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
        let mut command = Command::new("etcd");
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args([
                "--listen-client-urls",
                &client,
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
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = spawn_tied_to_this_process(command);
        let m = &mut self.members[i];
        m.child = Some(child);
        m.stopped = false;
    }

    /// Waits until every running member answers `/health` and a leader is known.
    pub fn wait_ready(&self) {
        let until = Instant::now() + READY_WITHIN;
        loop {
            let healthy = (0..self.members.len())
                .filter(|&i| self.members[i].child.is_some() && !self.members[i].stopped)
                .all(|i| {
                    self.http(i, "GET", "/health", "")
                        .is_some_and(|b| b.contains("\"true\""))
                });
            if healthy && self.leader().is_some() {
                return;
            }
            assert!(
                Instant::now() < until,
                "the etcd test cluster in {} did not become ready (see its logs)",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
