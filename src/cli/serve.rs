//! `xlreg serve`: run the registry daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use super::DataDirArg;
use crate::admin::control::ControlServer;
use crate::admin::expiry::{parse_ttl, ClusterExpiry};
use crate::legacy::server::LegacyListener;
use crate::legacy::wire::Version;
use crate::metrics::http::MetricsEndpoint;
use crate::metrics::Metrics;
use crate::regcred::RegCred;
use crate::registry::{Registry, RegistryIdentity};
use crate::server::{make_room_for_connections, now_ms, Server, ServerConfig};
use crate::store::Store;

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Options of `xlreg serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// Address to listen on for xlReg/2 clients.
    #[arg(long, default_value = "127.0.0.1:56789")]
    listen: SocketAddr,
    /// Endpoint clients should dial, written into regCred.dat (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The registry's name (kept in the data directory; giving a new one renames it).
    #[arg(long)]
    name: Option<String>,
    /// Keep everything in memory and forget it on exit (for tests). regCred.dat is still
    /// written into the data directory.
    #[arg(long)]
    ephemeral: bool,
    /// Write regCred.dat here instead of DATA_DIR/regCred.dat.
    #[arg(long, value_name = "FILE")]
    regcred_out: Option<PathBuf>,
    /// Remove clusters nobody has joined for this long, e.g. 90s, 30m, 12h, 7d (default: never).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    cluster_ttl: Option<Duration>,
    /// Most connections served at once; more are closed on arrival.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most connections one peer address may hold at once; more are closed on arrival.
    #[arg(long, default_value_t = crate::admission::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Most clusters the registry holds; creates beyond are refused.
    #[arg(long, default_value_t = crate::store::DEFAULT_MAX_CLUSTERS)]
    max_clusters: u64,
    /// Most nodes the registry holds; new registrations beyond are refused.
    #[arg(long, default_value_t = crate::store::DEFAULT_MAX_NODES)]
    max_nodes: u64,
    /// Seconds a new connection has to send its hello.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds a session may stay silent between requests.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Seconds a client may take to accept a reply before its session is closed.
    #[arg(long, default_value_t = 30)]
    write_timeout: u64,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_frame: usize,
    /// Seconds one store operation (a batch's transaction, a flush and its syncs) may take
    /// before the storage is declared failed and the registry exits (fail-stop, exit 74).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::failstop::DEFAULT_STORE_TIMEOUT.as_secs())]
    store_timeout: u64,
    /// Seconds sessions in flight may run on after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /health
    /// (off by default).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log format (RUST_LOG sets the level; default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Also serve xlReg 1.9 (Go) clients on this address (off by default). The 1.9 wire has
    /// no integrity protection and replayable signatures: keep it on a trusted network (see
    /// docs/legacy.md).
    #[arg(long, value_name = "ADDR")]
    legacy_listen: Option<SocketAddr>,
    /// Endpoint 1.9 clients should dial, written into the legacy regCred.dat (default: the
    /// legacy listen address).
    #[arg(long, value_name = "HOST:PORT", requires = "legacy_listen")]
    legacy_advertise: Option<String>,
    /// Version the legacy listener announces, in its hello replies and its regCred.dat.
    #[arg(long, value_name = "A.B.C", default_value_t = Version::GO_REGISTRY)]
    legacy_version: Version,
    /// Write the Go-format regCred.dat for 1.9 clients (legacy endpoint and version) here
    /// instead of DATA_DIR/legacy/regCred.dat. Go clients read a file named regCred.dat.
    #[arg(long, value_name = "FILE", requires = "legacy_listen")]
    legacy_regcred_out: Option<PathBuf>,
}

/// The endpoint to write into a regCred.dat: `advertise` if given, else the bound address,
/// which must then not be a wildcard.
fn advertised_endpoint(
    advertise: Option<&String>,
    bound: SocketAddr,
    flag: &str,
) -> anyhow::Result<String> {
    match advertise {
        Some(endpoint) => Ok(endpoint.clone()),
        None if bound.ip().is_unspecified() => {
            anyhow::bail!(
                "listening on {bound}: say which address clients should dial with {flag} HOST:PORT"
            )
        }
        None => Ok(bound.to_string()),
    }
}

/// Writes `cred` to `path`, creating its directory if needed.
fn write_regcred(cred: &RegCred, path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    cred.write(path)
        .with_context(|| format!("writing {}", path.display()))
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let shutdown = shutdown_signal()?;
    let data_dir = &args.data.data_dir;
    if let Some(advertise) = &args.advertise {
        crate::validate::endpoint(advertise).context("--advertise")?;
    }
    if let Some(advertise) = &args.legacy_advertise {
        crate::validate::endpoint(advertise).context("--legacy-advertise")?;
    }
    if args.max_connections == 0 || args.max_frame < 1024 {
        anyhow::bail!("--max-connections must be at least 1 and --max-frame at least 1024");
    }
    if args.handshake_timeout == 0 || args.idle_timeout == 0 {
        anyhow::bail!("--handshake-timeout and --idle-timeout must be at least 1 second");
    }
    make_room_for_connections(args.max_connections);
    // failstop: the data directory and every file in it are the daemon's only, whatever the
    // umask; a storage failure or a hung store operation stops the process (exit 74).
    if args.store_timeout == 0 {
        anyhow::bail!("--store-timeout must be at least 1 second");
    }
    crate::store::set_private_umask();
    crate::failstop::log_sled_panics();
    let store = if args.ephemeral {
        Store::temporary()?
    } else {
        Store::open(data_dir)?
    };
    if args.max_clusters == 0 || args.max_nodes == 0 {
        anyhow::bail!("--max-clusters and --max-nodes must be at least 1");
    }
    store.set_caps(crate::store::Caps {
        max_clusters: args.max_clusters,
        max_nodes: args.max_nodes,
    })?;
    crate::failstop::supervise(
        store.health().clone(),
        Duration::from_secs(args.store_timeout),
    )
    .context("starting the store watchdog")?;
    // failstop: end
    let key_dir = (!args.ephemeral).then_some(data_dir.as_path());
    let identity =
        RegistryIdentity::load_or_create(&store, key_dir, args.name.as_deref(), now_ms())
            .context("loading the registry identity")?;
    let registry = Arc::new(Registry::new(store, identity)?);
    // Every field has an option today; the update keeps fields added later at their defaults.
    #[allow(clippy::needless_update)]
    let config = ServerConfig {
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        write_timeout: Duration::from_secs(args.write_timeout),
        max_frame: args.max_frame,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        ..ServerConfig::default()
    };
    let mut server = Server::bind(args.listen, registry.clone(), config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if let Some(legacy_listen) = args.legacy_listen {
        let legacy = LegacyListener::bind(legacy_listen, args.legacy_version)
            .await
            .with_context(|| format!("cannot listen on {legacy_listen} (--legacy-listen)"))?;
        server = server.with_legacy(legacy);
    }
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let endpoint = MetricsEndpoint::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            let metrics = Arc::new(Metrics::new());
            server = server.with_metrics(metrics.clone());
            tracing::info!(listen = %endpoint.local_addr()?, "metrics endpoint serving /metrics and /health");
            Some(tokio::spawn(endpoint.run(metrics, registry.store.clone())))
        }
        None => None,
    };
    let bound = server.local_addr()?;
    let advertised = advertised_endpoint(args.advertise.as_ref(), bound, "--advertise")?;
    let regcred_path = args
        .regcred_out
        .clone()
        .unwrap_or_else(|| data_dir.join("regCred.dat"));
    if let Some(legacy_bound) = server.legacy_addr().transpose()? {
        // Written before the native file, so whoever waits for that one finds both.
        let legacy_advertised = advertised_endpoint(
            args.legacy_advertise.as_ref(),
            legacy_bound,
            "--legacy-advertise",
        )?;
        let legacy_regcred_path = args
            .legacy_regcred_out
            .clone()
            .unwrap_or_else(|| data_dir.join("legacy").join("regCred.dat"));
        if legacy_regcred_path == regcred_path {
            anyhow::bail!(
                "--legacy-regcred-out {} is also the xlReg/2 regCred.dat; give each its own file",
                regcred_path.display()
            );
        }
        let mut legacy_cred = registry.identity.regcred(vec![legacy_advertised.clone()]);
        legacy_cred.version = args.legacy_version.to_string();
        write_regcred(&legacy_cred, &legacy_regcred_path)?;
        tracing::warn!(
            legacy_listen = %legacy_bound,
            legacy_advertise = %legacy_advertised,
            legacy_regcred = %legacy_regcred_path.display(),
            legacy_version = %args.legacy_version,
            "xlReg 1.9 listener on: its wire has no integrity protection; keep it on a trusted network (docs/legacy.md)"
        );
    }
    // Admin commands reach a running daemon through DATA_DIR/control.sock; an ephemeral
    // registry keeps nothing in its data directory and has none. Started before regCred.dat
    // is written, so a written regCred.dat means the socket is ready too.
    let control = if args.ephemeral {
        None
    } else {
        ControlServer::start(registry.store.clone())
            .inspect_err(|error| {
                tracing::error!(%error, "no control socket: admin commands need the daemon stopped")
            })
            .ok()
    };
    let expiry = args
        .cluster_ttl
        .map(|ttl| ClusterExpiry::start(registry.clone(), ttl));
    write_regcred(
        &registry.identity.regcred(vec![advertised.clone()]),
        &regcred_path,
    )?;
    tracing::info!(
        name = %registry.identity.name,
        id = %registry.identity.id,
        listen = %bound,
        advertise = %advertised,
        regcred = %regcred_path.display(),
        data_dir = %if args.ephemeral { "(ephemeral)".to_string() } else { data_dir.display().to_string() },
        version = crate::registry::VERSION,
        "xlreg registry serving"
    );
    notify_systemd(sd_notify::NotifyState::Ready);
    server.run(shutdown).await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(expiry) = expiry {
        expiry.stop().await;
    }
    if let Some(control) = control {
        control.stop().await;
    }
    // The server's final flush may have run before the last expiry removals.
    // failstop: a failed store, or a final flush that fails, is a failure for the supervisor.
    if registry.store.health().is_failed() {
        return Ok(ExitCode::from(crate::failstop::EXIT_STORAGE_FAILED));
    }
    if let Err(error) = registry.store.flush_blocking() {
        tracing::error!(%error, "final flush failed");
        return Ok(ExitCode::from(crate::failstop::EXIT_STORAGE_FAILED));
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Watches SIGTERM and SIGINT from now on, and returns a future that completes on either.
/// Installed before the registry announces itself (regCred.dat), so a supervisor that
/// signals as soon as it sees the file always gets a graceful shutdown.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        notify_systemd(sd_notify::NotifyState::Stopping);
    })
}

/// Tells systemd (under `Type=notify`; nothing happens otherwise) that the registry is
/// ready or stopping.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
