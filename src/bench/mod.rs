//! The load generator behind `xlreg bench`: many concurrent clients running complete sessions.
//!
//! A fleet booting at once is what loads a registry hardest: hundreds of nodes connect,
//! register, create or find their cluster, join, and wait for it to complete. [`run`] replays
//! that: `sessions` complete sessions (hello, Member, Create, Join, GetCluster with a wait
//! until the cluster is complete, Bye) from `clients` concurrent tasks, sessions grouped into
//! clusters of `cluster_size` consecutive sessions. It reports throughput, the latency
//! distribution, errors by kind and, when the registry runs on this machine, the registry's
//! CPU time per session read from /proc ([`crate::process::proc_stat`]).
//!
//! The generator speaks either wire ([`Wire`]): xlReg/2 through [`Client`], or xlReg 1.9
//! through [`LegacyClient`], so one generator measures the Go registry and xlreg's legacy
//! listener the same way. A 1.9 session registers with its own 20-byte ID, as Go clients do,
//! and, since 1.9 cannot ask the registry to hold a GetCluster, polls until its cluster is
//! complete ([`crate::legacy::client::POLL_INTERVAL`]).
//!
//! Member keys come from an [`IdentityPool`] made before the clock starts: RSA key
//! generation costs tens of milliseconds a key, and the point is to measure the registry.

pub mod flood;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError, DEFAULT_TIMEOUT};
use crate::crypto::{CryptoError, RsaKeyPair, RSA_BITS};
use crate::id::Id;
use crate::legacy::client::LegacyClient;
use crate::node::NodeIdentity;
use crate::process::proc_stat;
use crate::regcred::RegCred;
use crate::store::ClusterRef;
use stats::LatencySummary;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The parameters cannot produce complete clusters.
    #[error("{0}")]
    BadConfig(String),
    /// Making the identity pool failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The protocol the generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Wire {
    /// xlReg/2, this registry's own protocol.
    #[serde(rename = "xlReg/2")]
    V2,
    /// xlReg/3, the Noise handshake (the regCred.dat must carry handshake keys).
    #[serde(rename = "xlReg/3")]
    V3,
    /// xlReg 1.9, the Go registry's wire (xlreg's `--legacy-listen`).
    #[serde(rename = "xlReg/1.9")]
    Legacy,
}

impl Wire {
    /// The name used in reports and in the registry's session log lines.
    pub fn name(self) -> &'static str {
        match self {
            Wire::V2 => "xlReg/2",
            Wire::V3 => "xlReg/3",
            Wire::Legacy => "xlReg/1.9",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The registry (for [`Wire::Legacy`], a Go-format regCred.dat naming a 1.9 endpoint).
    pub regcred: RegCred,
    /// The protocol to speak.
    pub wire: Wire,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Complete sessions to run in total.
    pub sessions: usize,
    /// Members per cluster; every cluster is filled completely.
    pub cluster_size: u32,
    /// How long one session may wait for its cluster to complete.
    pub wait: Duration,
    /// The registry's process, for CPU accounting (found from the endpoints when local:
    /// every server a regCred.dat lists).
    pub server_pid: Option<u32>,
    /// A tag that makes this run's cluster names unique.
    pub run_id: String,
}

/// Pre-generated member keys, shared round-robin by the sessions (nodes may share keys;
/// each session still registers as a new node with its own ID and name).
#[derive(Debug, Clone)]
pub struct IdentityPool {
    keys: Arc<Vec<(RsaKeyPair, RsaKeyPair)>>,
}

impl IdentityPool {
    /// Generates `size` key pairs (comms and sig) using every core.
    pub fn generate(size: usize) -> Result<IdentityPool, BenchError> {
        let size = size.max(1);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(size);
        let chunks: Vec<_> = (0..threads)
            .map(|t| {
                let count = size / threads + usize::from(t < size % threads);
                std::thread::spawn(move || {
                    (0..count)
                        .map(|_| {
                            Ok((
                                RsaKeyPair::generate(RSA_BITS)?,
                                RsaKeyPair::generate(RSA_BITS)?,
                            ))
                        })
                        .collect::<Result<Vec<_>, CryptoError>>()
                })
            })
            .collect();
        let mut keys = Vec::with_capacity(size);
        for chunk in chunks {
            let made = chunk
                .join()
                .map_err(|_| BenchError::BadConfig("key generation thread panicked".into()))??;
            keys.extend(made);
        }
        Ok(IdentityPool {
            keys: Arc::new(keys),
        })
    }

    /// The identity of session `index`: pool keys, a name unique within its cluster.
    pub fn identity(&self, index: usize) -> NodeIdentity {
        let (comms, sig) = &self.keys[index % self.keys.len()];
        NodeIdentity {
            name: format!("bench-node-{index}"),
            endpoints: vec![format!("127.0.0.1:{}", 10_000 + index % 50_000)],
            id: None,
            comms: comms.clone(),
            sig: sig.clone(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The protocol measured.
    pub wire: Wire,
    /// Concurrent clients.
    pub clients: usize,
    /// Sessions attempted.
    pub sessions: usize,
    /// Members per cluster.
    pub cluster_size: u32,
    /// Sessions that completed without error.
    pub completed: usize,
    /// Failed sessions by kind of error.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Completed sessions per second.
    pub sessions_per_s: f64,
    /// Session latency (connect to Ack) of completed sessions, milliseconds.
    pub latency_ms: LatencySummary,
    /// The registry process measured, if found (the first, with several servers).
    pub server_pid: Option<u32>,
    /// Every registry process measured: one per server found listening on this machine at
    /// an endpoint of the regCred.dat (several servers on etcd), or `--server-pid`.
    pub server_pids: Vec<u32>,
    /// The registry's CPU time (user + system, summed over its servers) per completed
    /// session, milliseconds.
    pub server_cpu_ms_per_session: Option<f64>,
    /// This generator's own CPU time per completed session, milliseconds (identity
    /// generation excluded): near the wall time per session on its core, the generator,
    /// not the registry, is the limit.
    pub generator_cpu_ms_per_session: Option<f64>,
    /// Where the registry's CPU per session went, by thread group (summed over its servers),
    /// with the thread switches per session: empty when no registry process was found.
    pub server_threads: Vec<ThreadShare>,
}

/// One group of the registry's threads (their name without its trailing number, see
/// [`proc_stat::ThreadGroup`]) and its part of the work per completed session. A thread that
/// exits during the run takes its counts with it, so its group's share is then too low
/// (sled's pool can end an idle extra thread; the registry's own threads live as long as it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ThreadShare {
    /// The thread group, as `tokio-rt-worker` or `sled-io`.
    pub threads: String,
    /// User plus system CPU time per completed session, milliseconds.
    pub cpu_ms_per_session: f64,
    /// Context switches (voluntary and involuntary) per completed session: each is a thread
    /// falling asleep or being preempted, and most are a wake-up paid for later.
    pub switches_per_session: f64,
}

/// The registry's threads by group, summed over its servers: CPU time and switches so far.
type ThreadTotals = BTreeMap<String, (Duration, u64)>;

/// [`ThreadTotals`] of the processes `pids` (empty if none can be read).
fn thread_totals(pids: &[u32]) -> ThreadTotals {
    let mut totals = ThreadTotals::new();
    for group in pids
        .iter()
        .filter_map(|pid| proc_stat::thread_groups(*pid))
        .flatten()
    {
        let total = totals.entry(group.name).or_default();
        total.0 += group.cpu;
        total.1 += group.switches;
    }
    totals
}

/// Each thread group's work between `before` and `after`, per one of `sessions` sessions;
/// groups that did nothing are left out.
fn thread_shares(before: &ThreadTotals, after: &ThreadTotals, sessions: usize) -> Vec<ThreadShare> {
    let sessions = sessions.max(1) as f64;
    after
        .iter()
        .filter_map(|(name, (cpu, switches))| {
            let (cpu_before, switches_before) = before.get(name).copied().unwrap_or_default();
            let cpu = cpu.saturating_sub(cpu_before);
            let switches = switches.saturating_sub(switches_before);
            (!cpu.is_zero() || switches > 0).then(|| ThreadShare {
                threads: name.clone(),
                cpu_ms_per_session: cpu.as_secs_f64() * 1e3 / sessions,
                switches_per_session: switches as f64 / sessions,
            })
        })
        .collect()
}

impl Report {
    /// The one-line summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let cpu = [
            ("server", self.server_cpu_ms_per_session),
            ("generator", self.generator_cpu_ms_per_session),
        ]
        .into_iter()
        .filter_map(|(who, ms)| Some(format!(", {who} CPU {:.3} ms/session", ms?)))
        .collect::<String>();
        let errors = if self.errors.is_empty() {
            "no errors".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "{}: {}/{} sessions in {:.2} s: {:.0} sessions/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}{cpu}; {errors}",
            self.wire.name(),
            self.completed,
            self.sessions,
            self.elapsed_s,
            self.sessions_per_s,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
        )
    }

    /// The line saying where the registry's CPU per session went, by thread group, or
    /// `None` when no registry process was measured.
    pub fn threads_summary(&self) -> Option<String> {
        if self.server_threads.is_empty() {
            return None;
        }
        let groups = self
            .server_threads
            .iter()
            .map(|share| {
                format!(
                    "{} {:.3} ms, {:.2} switches",
                    share.threads, share.cpu_ms_per_session, share.switches_per_session
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Some(format!("registry threads per session: {groups}"))
    }
}

/// The kind of a failed session, for the error tally.
fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Refused {
            code: Some(code), ..
        } => code.as_str_name().to_string(),
        ClientError::Refused { code: None, .. } => "refused".into(),
        ClientError::Connect { .. } | ClientError::NothingListens { .. } => "connect".into(),
        ClientError::KeyNotAccepted { .. } => "key_not_accepted".into(),
        ClientError::Timeout(_) => "timeout".into(),
        ClientError::Connection(_) => "connection".into(),
        ClientError::Handshake(_) => "handshake".into(),
        ClientError::Closed => "closed".into(),
        ClientError::Protocol(_) => "protocol".into(),
        ClientError::Crypto(_) => "crypto".into(),
        ClientError::NoV3Keys => "no_v3_keys".into(),
        ClientError::PinMismatch { .. } => "pin_mismatch".into(),
        ClientError::NoEndpointAnswered(_) => "no_endpoint".into(),
    }
}

/// One complete session as a booting cluster member runs it.
async fn one_session(
    config: &BenchConfig,
    pool: &IdentityPool,
    index: usize,
) -> Result<(), String> {
    let cluster = format!(
        "bench-{}-{}",
        config.run_id,
        index / config.cluster_size as usize
    );
    let identity = pool.identity(index);
    let result = match config.wire {
        Wire::V2 => native_session(config, 2, &identity, cluster).await,
        Wire::V3 => native_session(config, 3, &identity, cluster).await,
        Wire::Legacy => legacy_session(config, identity, cluster).await,
    };
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err("incomplete".into()),
        Err(error) => Err(error_kind(&error)),
    }
}

/// An xlReg/2 or xlReg/3 session; true if the cluster was complete.
async fn native_session(
    config: &BenchConfig,
    version: u32,
    identity: &NodeIdentity,
    cluster: String,
) -> Result<bool, ClientError> {
    let mut client = Client::connect_version(&config.regcred, version, DEFAULT_TIMEOUT).await?;
    client.register(identity).await?;
    client.create(&cluster, config.cluster_size, 1).await?;
    client.join(Some(&ClusterRef::Name(cluster))).await?;
    let view = client.get_cluster(None, None, config.wait).await?;
    client.bye().await?;
    Ok(view.is_complete())
}

/// An xlReg 1.9 session as a Go client runs it (its own 20-byte ID, GetCluster polled until
/// the cluster is complete); true if it was.
async fn legacy_session(
    config: &BenchConfig,
    mut identity: NodeIdentity,
    cluster: String,
) -> Result<bool, ClientError> {
    identity.id = Some(Id::random_legacy(&mut rand::rng()));
    let mut client = LegacyClient::connect(&config.regcred, DEFAULT_TIMEOUT).await?;
    client.register(&identity).await?;
    client.create(&cluster, config.cluster_size, 1).await?;
    client.join(Some(&ClusterRef::Name(cluster))).await?;
    let view = client.wait_until_complete(config.wait).await?;
    client.bye().await?;
    Ok(view.is_complete())
}

impl BenchConfig {
    /// Checks the parameters (before anything is generated or sent).
    pub fn check(&self) -> Result<(), BenchError> {
        if self.clients == 0 || self.sessions == 0 {
            return Err(BenchError::BadConfig(
                "--clients and --sessions must be at least 1".into(),
            ));
        }
        let size = self.cluster_size as usize;
        if !(2..=64).contains(&size) {
            return Err(BenchError::BadConfig(
                "--cluster-size must be 2 to 64".into(),
            ));
        }
        if self.clients < size {
            return Err(BenchError::BadConfig(format!(
            "--clients ({}) must be at least --cluster-size ({size}): a cluster completes only when all its members are in flight",
            self.clients
        )));
        }
        if !self.sessions.is_multiple_of(size) {
            return Err(BenchError::BadConfig(format!(
            "--sessions ({}) must be a multiple of --cluster-size ({size}) so every cluster can complete",
            self.sessions
        )));
        }
        if self.wire == Wire::V3 && self.regcred.handshake.is_none() {
            return Err(BenchError::BadConfig(
                "--protocol 3 needs a regCred.dat with handshake keys (written by a registry \
                 that serves xlReg/3)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Runs the benchmark; `progress` hears (sessions done, sessions total) about once a second.
pub async fn run(
    config: BenchConfig,
    pool: IdentityPool,
    progress: impl Fn(usize, usize) + Send + Sync + 'static,
) -> Result<Report, BenchError> {
    config.check()?;
    let server_pids: Vec<u32> = match config.server_pid {
        Some(pid) => vec![pid],
        None => config
            .regcred
            .endpoints
            .iter()
            .filter_map(|endpoint| proc_stat::pid_listening_on(endpoint))
            .collect(),
    };
    let servers_cpu = || -> Option<Duration> {
        (!server_pids.is_empty()).then_some(())?;
        server_pids
            .iter()
            .map(|pid| proc_stat::cpu_time(*pid))
            .sum()
    };
    let cpu_before = servers_cpu();
    let threads_before = thread_totals(&server_pids);
    let own_cpu_before = proc_stat::cpu_time(std::process::id());
    let config = Arc::new(config);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new((
        Vec::with_capacity(config.sessions),
        BTreeMap::new(),
    )));
    let started = Instant::now();
    let reporter = {
        let done = done.clone();
        let total = config.sessions;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(done.load(Ordering::Relaxed), total);
            }
        })
    };
    let mut tasks = Vec::with_capacity(config.clients);
    for _ in 0..config.clients {
        let (config, pool, next, done, outcomes) = (
            config.clone(),
            pool.clone(),
            next.clone(),
            done.clone(),
            outcomes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= config.sessions {
                    break;
                }
                let began = Instant::now();
                let result = one_session(&config, &pool, index).await;
                let latency = began.elapsed();
                let mut outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(()) => outcomes.0.push(latency),
                    Err(kind) => *outcomes.1.entry(kind).or_insert(0u64) += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    reporter.abort();
    // The threads are read before the process here and after it at the start, so that
    // their window lies within the process's.
    let threads_after = thread_totals(&server_pids);
    let cpu_after = servers_cpu();
    let own_cpu_after = proc_stat::cpu_time(std::process::id());
    let (latencies, errors) =
        std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    let completed = latencies.len();
    let per_session = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(before), Some(after)) if completed > 0 => {
            Some((after.saturating_sub(before)).as_secs_f64() * 1e3 / completed as f64)
        }
        _ => None,
    };
    Ok(Report {
        wire: config.wire,
        clients: config.clients,
        sessions: config.sessions,
        cluster_size: config.cluster_size,
        completed,
        errors,
        elapsed_s: elapsed.as_secs_f64(),
        sessions_per_s: completed as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: LatencySummary::of(latencies),
        server_pid: server_pids.first().copied(),
        server_pids: server_pids.clone(),
        server_cpu_ms_per_session: per_session(cpu_before, cpu_after),
        generator_cpu_ms_per_session: per_session(own_cpu_before, own_cpu_after),
        server_threads: if completed > 0 {
            thread_shares(&threads_before, &threads_after, completed)
        } else {
            Vec::new()
        },
    })
}
