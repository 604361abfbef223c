//! Operational metrics of a running registry, in the Prometheus text format.
//!
//! This module owns [`Metrics`], the registry's metric set: sessions by how they ended,
//! requests by op and result with a latency histogram of each, refusals by error kind, a
//! session duration histogram, open and refused connections, the store's size and counts,
//! and the process's CPU time, resident memory, open files and start time. The server's session glue records
//! into it; the protocol core knows nothing of it. Every label combination is created up
//! front and its counter kept by index, so counting a request is an atomic addition or two,
//! with no lock and no map lookup; a histogram (a request's latency, once per request; a
//! session's duration, once per session) takes a short lock of its own series only
//! (`cargo bench --bench metrics`: 18 ns to count a request, 45 ns to count and time it).
//! Store figures are read only when scraped, on a blocking thread, and at most once per
//! [`STORE_STATS_MAX_AGE`] (counting members walks every cluster); process figures are read
//! from /proc on each scrape. The HTTP endpoint that serves the text is the daemon's
//! ([`crate::daemon::http`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry as MetricRegistry, Unit};

use crate::proto::{ErrCode, Tag};
use crate::quota::QuotaKind;
use crate::store::Backend;

/// How stale the store's size and counts may be when scraped.
pub const STORE_STATS_MAX_AGE: Duration = Duration::from_secs(5);

/// `Content-Type` of the text [`Metrics::render`] produces.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// How a session ended, as counted by `xlreg_sessions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client said Bye.
    Bye,
    /// The registry refused a request with an Error and closed.
    Refused,
    /// A frame failed to authenticate or broke lock-step: closed without a word.
    Dropped,
    /// The client hung up between requests.
    PeerClosed,
    /// The client did not complete its hello in time.
    HandshakeTimeout,
    /// The client stayed silent between requests for too long.
    IdleTimeout,
    /// The client announced a frame over the limit.
    FrameTooLarge,
    /// The socket failed, the client stopped taking replies, or hung up mid-frame.
    ConnectionError,
    /// Shutdown closed the session between requests.
    Shutdown,
    /// The store could not make a change durable, so the reply was withheld.
    StoreFailed,
}

impl SessionEnd {
    /// Every outcome, in label order.
    pub const ALL: [SessionEnd; 10] = [
        SessionEnd::Bye,
        SessionEnd::Refused,
        SessionEnd::Dropped,
        SessionEnd::PeerClosed,
        SessionEnd::HandshakeTimeout,
        SessionEnd::IdleTimeout,
        SessionEnd::FrameTooLarge,
        SessionEnd::ConnectionError,
        SessionEnd::Shutdown,
        SessionEnd::StoreFailed,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::Bye => "bye",
            SessionEnd::Refused => "refused",
            SessionEnd::Dropped => "dropped",
            SessionEnd::PeerClosed => "peer_closed",
            SessionEnd::HandshakeTimeout => "handshake_timeout",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::FrameTooLarge => "frame_too_large",
            SessionEnd::ConnectionError => "connection_error",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::StoreFailed => "store_failed",
        }
    }
}

/// The request ops counted by name; anything else is counted as `other`.
const REQUEST_OPS: [Tag; 5] = [
    Tag::Member,
    Tag::Create,
    Tag::Join,
    Tag::GetCluster,
    Tag::Bye,
];
/// The `op` label of requests whose op is missing, unknown, or not a request.
const OTHER_OP: &str = "other";
/// The `result` label of a request that was answered normally.
const OK_RESULT: &str = "ok";

fn op_index(op: Option<Tag>) -> usize {
    op.and_then(|tag| REQUEST_OPS.iter().position(|t| *t == tag))
        .unwrap_or(REQUEST_OPS.len())
}

/// Every error kind, in wire order (the codes are numbered densely from 1).
fn error_codes() -> Vec<ErrCode> {
    (1..).map_while(|n| ErrCode::try_from(n).ok()).collect()
}

fn code_index(code: ErrCode) -> usize {
    (code as usize).saturating_sub(1)
}

type Labels = Vec<(&'static str, &'static str)>;

/// One metric per op and result, made by `make` from its labels, indexed `[op][result]`.
fn by_op_and_result<M>(
    ops: &[&'static str],
    results: &[&'static str],
    mut make: impl FnMut(&Labels) -> M,
) -> Vec<Vec<M>> {
    ops.iter()
        .map(|op| {
            results
                .iter()
                .map(|result| make(&vec![("op", *op), ("result", *result)]))
                .collect()
        })
        .collect()
}

/// The store's figures as last read.
#[derive(Debug, Default)]
struct StoreGauges {
    size_bytes: Gauge,
    nodes: Gauge,
    clusters: Gauge,
    members: Gauge,
}

/// The process's figures, read from /proc on scrape.
#[derive(Debug, Default)]
struct ProcessGauges {
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident_bytes: Gauge,
    open_fds: Gauge,
    start_time_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// The etcd client's counters (`store/etcd/client.rs`), copied from its process-wide
/// atomics on scrape. They stay at zero on the other backends.
#[derive(Debug, Default)]
struct EtcdCounters {
    round_trips: Counter,
    retries: Counter,
    lost_compares: Counter,
    ambiguous_commits: Counter,
}

impl EtcdCounters {
    /// Brings each counter up to the client's count.
    fn refresh(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let client = crate::store::etcd::client::counters();
        for (counter, now) in [
            (&self.round_trips, client.round_trips.load(Relaxed)),
            (&self.retries, client.retries.load(Relaxed)),
            (&self.lost_compares, client.lost_compares.load(Relaxed)),
            (&self.ambiguous_commits, client.ambiguous.load(Relaxed)),
        ] {
            let have = counter.get();
            if now > have {
                counter.inc_by(now - have);
            }
        }
    }
}

/// The registry's metric set. Create one, hand it to the server, and render it on scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: MetricRegistry,
    /// Indexed like [`SessionEnd::ALL`].
    sessions: Vec<Counter>,
    /// Indexed by op (like `REQUEST_OPS`, then other), then result (ok, then error codes).
    requests: Vec<Vec<Counter>>,
    /// Indexed like `requests`: time from a request's arrival to its reply being sent.
    request_seconds: Vec<Vec<Histogram>>,
    /// Indexed by error code.
    errors: Vec<Counter>,
    session_seconds: Histogram,
    process: ProcessGauges,
    open_connections: Gauge,
    refused_connections: Counter,
    refused_per_ip: Counter,
    /// Indexed like [`QuotaKind::ALL`].
    quota_refusals: Vec<Counter>,
    accept_errors: Counter,
    connection_limit: Gauge,
    store: StoreGauges,
    etcd: EtcdCounters,
    /// When the store figures were last read; the lock also keeps two scrapes from
    /// reading the store at once.
    store_read_at: tokio::sync::Mutex<Option<Instant>>,
    shutting_down: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh metric set, every counter at zero.
    pub fn new() -> Metrics {
        let mut registry = MetricRegistry::with_prefix("xlreg");
        registry.register(
            "build",
            "The running xlreg release",
            Info::new(vec![("version", crate::registry::VERSION)]),
        );

        let session_family = Family::<Labels, Counter>::default();
        let sessions = SessionEnd::ALL
            .iter()
            .map(|end| session_family.get_or_create_owned(&vec![("outcome", end.label())]))
            .collect();
        registry.register(
            "sessions",
            "Sessions ended, by how they ended",
            session_family,
        );

        let codes = error_codes();
        let results: Vec<&'static str> = std::iter::once(OK_RESULT)
            .chain(codes.iter().map(|c| c.as_str_name()))
            .collect();
        let op_names: Vec<&'static str> = REQUEST_OPS
            .iter()
            .map(|t| t.as_str_name())
            .chain(std::iter::once(OTHER_OP))
            .collect();
        let request_family = Family::<Labels, Counter>::default();
        let requests = by_op_and_result(&op_names, &results, |labels| {
            request_family.get_or_create_owned(labels)
        });
        registry.register(
            "requests",
            "Requests answered, by op and result (ok, or the error kind sent back)",
            request_family,
        );
        // 100 us to about 100 s: a Member or Join takes a group commit, a GetCluster that
        // waits for members up to the wait it asked for.
        let latency_family = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 20))) as fn() -> Histogram,
        );
        let request_seconds = by_op_and_result(&op_names, &results, |labels| {
            latency_family.get_or_create_owned(labels)
        });
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its reply being sent, by op and result",
            Unit::Seconds,
            latency_family,
        );

        let error_family = Family::<Labels, Counter>::default();
        let errors = codes
            .iter()
            .map(|c| error_family.get_or_create_owned(&vec![("kind", c.as_str_name())]))
            .collect();
        registry.register(
            "errors",
            "Requests refused with an Error reply, by error kind",
            error_family,
        );

        // 1 ms to about 2 min: a plain session takes milliseconds, a GetCluster wait minutes.
        let session_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register_with_unit(
            "session_duration",
            "Time from accepting a connection to closing it",
            Unit::Seconds,
            session_seconds.clone(),
        );

        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let connection_limit = Gauge::default();
        registry.register(
            "max_connections",
            "Most client connections served at once (--max-connections)",
            connection_limit.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "refused_connections",
            "Connections closed on arrival because --max-connections were open",
            refused_connections.clone(),
        );
        let refused_per_ip = Counter::default();
        registry.register(
            "refused_connections_per_ip",
            "Connections closed on arrival because their address held --max-connections-per-ip",
            refused_per_ip.clone(),
        );
        let quota_family = Family::<Labels, Counter>::default();
        let quota_refusals = QuotaKind::ALL
            .iter()
            .map(|kind| quota_family.get_or_create_owned(&vec![("quota", kind.label())]))
            .collect();
        registry.register(
            "quota_refusals",
            "Creates and registrations refused because a --quota-* was used up, by quota",
            quota_family,
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failed accepts (usually out of file descriptors), each followed by a back-off",
            accept_errors.clone(),
        );

        let store = StoreGauges::default();
        registry.register_with_unit(
            "store_size",
            "Disk space used by the store",
            Unit::Bytes,
            store.size_bytes.clone(),
        );
        registry.register("store_nodes", "Registered nodes", store.nodes.clone());
        registry.register("store_clusters", "Clusters", store.clusters.clone());
        registry.register(
            "store_members",
            "Cluster memberships, summed over all clusters",
            store.members.clone(),
        );

        let etcd = EtcdCounters::default();
        registry.register(
            "etcd_round_trips",
            "Requests sent to etcd members (each try counts; etcd backend only)",
            etcd.round_trips.clone(),
        );
        registry.register(
            "etcd_retries",
            "etcd requests sent again to another member, transactions rerun and watches resumed",
            etcd.retries.clone(),
        );
        registry.register(
            "etcd_lost_compares",
            "etcd transactions whose compares failed because another writer got there first",
            etcd.lost_compares.clone(),
        );
        registry.register(
            "etcd_ambiguous_commits",
            "etcd transactions whose outcome was unknown and was settled through the operation key",
            etcd.ambiguous_commits.clone(),
        );

        let process = ProcessGauges::default();
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of the registry process, in seconds",
            process.cpu_seconds.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the registry process",
            Unit::Bytes,
            process.resident_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of the registry process",
            process.open_fds.clone(),
        );
        registry.register_with_unit(
            "process_start_time",
            "When the registry process started, since the Unix epoch",
            Unit::Seconds,
            process.start_time_seconds.clone(),
        );

        Metrics {
            registry,
            sessions,
            requests,
            request_seconds,
            errors,
            session_seconds,
            process,
            open_connections,
            refused_connections,
            refused_per_ip,
            quota_refusals,
            accept_errors,
            connection_limit,
            store,
            etcd,
            store_read_at: tokio::sync::Mutex::new(None),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection {
            gauge: self.open_connections.clone(),
        }
    }

    /// Counts a connection closed on arrival because the limit was reached.
    pub fn connection_refused(&self) {
        self.refused_connections.inc();
    }

    /// Counts a connection closed on arrival because its address held its share.
    pub fn connection_refused_per_ip(&self) {
        self.refused_per_ip.inc();
    }

    /// Counts a write refused because the quota `kind` was used up.
    pub fn quota_refused(&self, kind: QuotaKind) {
        self.quota_refusals[kind.index()].inc();
    }

    /// Counts a failed accept.
    pub fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    /// Records the configured connection limit.
    pub fn set_connection_limit(&self, limit: usize) {
        self.connection_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Counts one answered request: its op (`None` if it had none or an unknown one) and
    /// `Ok` or the error kind it was refused with.
    pub fn request(&self, op: Option<Tag>, result: Result<(), ErrCode>) {
        let result_index = match result {
            Ok(()) => 0,
            Err(code) => {
                if let Some(counter) = self.errors.get(code_index(code)) {
                    counter.inc();
                }
                code_index(code) + 1
            }
        };
        if let Some(counter) = self
            .requests
            .get(op_index(op))
            .and_then(|row| row.get(result_index))
        {
            counter.inc();
        }
    }

    /// Counts one answered request, as [`Metrics::request`] does, and records how long it
    /// took from its arrival to its reply being sent.
    pub fn request_took(&self, op: Option<Tag>, result: Result<(), ErrCode>, took: Duration) {
        self.request(op, result);
        let result_index = match result {
            Ok(()) => 0,
            Err(code) => code_index(code) + 1,
        };
        if let Some(histogram) = self
            .request_seconds
            .get(op_index(op))
            .and_then(|row| row.get(result_index))
        {
            histogram.observe(took.as_secs_f64());
        }
    }

    /// Counts one ended session and its duration.
    pub fn session_ended(&self, end: SessionEnd, duration: Duration) {
        if let Some(i) = SessionEnd::ALL.iter().position(|e| *e == end) {
            self.sessions[i].inc();
        }
        self.session_seconds.observe(duration.as_secs_f64());
    }

    /// Marks the registry as shutting down: `/health` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// True while the registry serves (until shutdown begins).
    pub fn is_serving(&self) -> bool {
        !self.shutting_down.load(Ordering::SeqCst)
    }

    /// Renders every metric as Prometheus text, first refreshing the store figures from
    /// `store` if they are older than [`STORE_STATS_MAX_AGE`].
    pub async fn render(&self, store: &Arc<dyn Backend>) -> String {
        self.refresh_store_stats(store).await;
        self.refresh_process_stats();
        self.etcd.refresh();
        let mut text = String::new();
        if let Err(error) = prometheus_text::encode(&mut text, &self.registry) {
            // Writing into a String cannot fail; keep whatever was encoded.
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }

    /// Reads this process's figures from /proc (a few small reads; nothing on other systems).
    fn refresh_process_stats(&self) {
        let Some(stats) = crate::process::proc_stat::process_stats(std::process::id()) else {
            return;
        };
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.process.cpu_seconds.set(stats.cpu.as_secs_f64());
        self.process.resident_bytes.set(clamp(stats.resident_bytes));
        self.process.open_fds.set(clamp(stats.open_fds));
        self.process.start_time_seconds.set(stats.start_time_s);
    }

    async fn refresh_store_stats(&self, store: &Arc<dyn Backend>) {
        let mut read_at = self.store_read_at.lock().await;
        if read_at.is_some_and(|at| at.elapsed() < STORE_STATS_MAX_AGE) {
            return;
        }
        let store = store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let counts = store.counts()?;
            let size = store.size_on_disk()?;
            Ok::<_, crate::store::StorageError>((counts, size))
        })
        .await;
        match read {
            Ok(Ok((counts, size))) => {
                let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                self.store.size_bytes.set(clamp(size));
                self.store.nodes.set(clamp(counts.nodes));
                self.store.clusters.set(clamp(counts.clusters));
                self.store.members.set(clamp(counts.members));
                *read_at = Some(Instant::now());
            }
            Ok(Err(error)) => tracing::warn!(%error, "reading store figures for metrics failed"),
            Err(error) => tracing::warn!(%error, "reading store figures for metrics failed"),
        }
    }
}

/// Keeps a connection counted in `xlreg_open_connections` until dropped (also when its
/// task is aborted).
#[derive(Debug)]
pub struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn recorded_events_show_up_under_their_labels() {
        let metrics = Metrics::new();
        let store: Arc<dyn Backend> = Arc::new(crate::store::MemoryStore::new());
        let open = metrics.connection_opened();
        metrics.request_took(Some(Tag::Member), Ok(()), Duration::from_millis(2));
        metrics.request(Some(Tag::Join), Err(ErrCode::ClusterFull));
        metrics.request(None, Err(ErrCode::BadRequest));
        metrics.request(Some(Tag::Ack), Err(ErrCode::BadRequest));
        metrics.session_ended(SessionEnd::Refused, Duration::from_millis(3));
        metrics.connection_refused();
        metrics.quota_refused(QuotaKind::ClustersPerNode);
        metrics.set_connection_limit(7);
        let text = metrics.render(&store).await;
        let expect = [
            (r#"xlreg_requests_total{op="Member",result="ok"}"#, 1.0),
            (
                r#"xlreg_requests_total{op="Join",result="ClusterFull"}"#,
                1.0,
            ),
            (r#"xlreg_requests_total{op="Join",result="ok"}"#, 0.0),
            (
                r#"xlreg_requests_total{op="other",result="BadRequest"}"#,
                2.0,
            ),
            (r#"xlreg_errors_total{kind="ClusterFull"}"#, 1.0),
            (r#"xlreg_errors_total{kind="BadRequest"}"#, 2.0),
            (r#"xlreg_errors_total{kind="Unavailable"}"#, 0.0),
            (r#"xlreg_sessions_total{outcome="refused"}"#, 1.0),
            (r#"xlreg_sessions_total{outcome="bye"}"#, 0.0),
            ("xlreg_session_duration_seconds_count", 1.0),
            ("xlreg_open_connections", 1.0),
            ("xlreg_refused_connections_total", 1.0),
            (
                r#"xlreg_quota_refusals_total{quota="clusters_per_node"}"#,
                1.0,
            ),
            (
                r#"xlreg_quota_refusals_total{quota="clusters_per_ip"}"#,
                0.0,
            ),
            ("xlreg_max_connections", 7.0),
            ("xlreg_store_nodes", 0.0),
            (
                r#"xlreg_request_duration_seconds_count{op="Member",result="ok"}"#,
                1.0,
            ),
            (
                r#"xlreg_request_duration_seconds_bucket{op="Member",result="ok",le="0.0032"}"#,
                1.0,
            ),
            (
                r#"xlreg_request_duration_seconds_bucket{op="Member",result="ok",le="0.0016"}"#,
                0.0,
            ),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        // Process-wide: the etcd tests in this process may have counted some.
        assert!(sample(&text, "xlreg_etcd_round_trips_total").is_some());
        // A test this short may not have used a clock tick of CPU yet.
        assert!(sample(&text, "xlreg_process_cpu_seconds").is_some_and(|v| v >= 0.0));
        for series in [
            "xlreg_process_resident_memory_bytes",
            "xlreg_process_open_fds",
            "xlreg_process_start_time_seconds",
        ] {
            assert!(
                sample(&text, series).is_some_and(|v| v > 0.0),
                "{series} in\n{text}"
            );
        }
        drop(open);
        let text = metrics.render(&store).await;
        assert_eq!(sample(&text, "xlreg_open_connections"), Some(0.0));
        assert!(text.contains(&format!(
            r#"xlreg_build_info{{version="{}"}} 1"#,
            crate::registry::VERSION
        )));
    }

    #[test]
    fn shutdown_flips_health() {
        let metrics = Metrics::new();
        assert!(metrics.is_serving());
        metrics.begin_shutdown();
        assert!(!metrics.is_serving());
    }
}
