//! `xlreg serve`: run the registry daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use super::DataDirArg;
use crate::registry::{Registry, RegistryIdentity};
use crate::server::{now_ms, Server, ServerConfig};
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
    /// Most connections served at once; more are closed on arrival.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
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
    /// Seconds sessions in flight may run on after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Log format (RUST_LOG sets the level; default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let data_dir = &args.data.data_dir;
    if let Some(advertise) = &args.advertise {
        crate::validate::endpoint(advertise).context("--advertise")?;
    }
    if args.max_connections == 0 || args.max_frame < 1024 {
        anyhow::bail!("--max-connections must be at least 1 and --max-frame at least 1024");
    }
    let store = if args.ephemeral {
        Store::temporary()?
    } else {
        Store::open(data_dir)?
    };
    let key_dir = (!args.ephemeral).then_some(data_dir.as_path());
    let identity =
        RegistryIdentity::load_or_create(&store, key_dir, args.name.as_deref(), now_ms())
            .context("loading the registry identity")?;
    let registry = Arc::new(Registry::new(store, identity)?);
    // Every field has an option today; the update keeps fields added later at their defaults.
    #[allow(clippy::needless_update)]
    let config = ServerConfig {
        max_connections: args.max_connections,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        write_timeout: Duration::from_secs(args.write_timeout),
        max_frame: args.max_frame,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        ..ServerConfig::default()
    };
    let server = Server::bind(args.listen, registry.clone(), config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = server.local_addr()?;
    let advertised = match &args.advertise {
        Some(endpoint) => endpoint.clone(),
        None if bound.ip().is_unspecified() => {
            anyhow::bail!("listening on {bound}: say which address clients should dial with --advertise HOST:PORT")
        }
        None => bound.to_string(),
    };
    let regcred_path = args
        .regcred_out
        .clone()
        .unwrap_or_else(|| data_dir.join("regCred.dat"));
    if let Some(parent) = regcred_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    registry
        .identity
        .regcred(vec![advertised.clone()])
        .write(&regcred_path)
        .with_context(|| format!("writing {}", regcred_path.display()))?;
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
    server.run(shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
