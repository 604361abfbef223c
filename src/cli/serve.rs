//! `xlreg serve`: run the registry daemon.
//!
//! This module maps the command's flags to a [`DaemonConfig`] and hands it to
//! [`crate::daemon`], which does everything else; it also sets up logging (the CLI's edge).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use super::DataDirArg;
use crate::admin::expiry::parse_ttl;
use crate::daemon::{DaemonConfig, LegacyConfig};
use crate::legacy::wire::Version;
use crate::quota::{self, QuotaConfig, Rate};
use crate::server::ServerConfig;
use crate::store::etcd::{EtcdConfig, EtcdTls, EtcdUser};
use crate::store::BackendChoice;

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Options of `xlreg serve`. Every option can also be set by the `XLREG_*` environment
/// variable its help names (a flag given on the command line wins).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Every option can also be set by its XLREG_* environment variable, shown \
in [env: ...] above; the command line wins. A flag's variable takes true or false."
)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// Address to listen on for xlReg/2 clients.
    #[arg(long, env = "XLREG_LISTEN", default_value = crate::daemon::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Endpoint clients should dial, written into regCred.dat (default: the listen address).
    #[arg(long, env = "XLREG_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The registry's name (kept in the data directory; giving a new one renames it).
    #[arg(long, env = "XLREG_NAME")]
    name: Option<String>,
    /// Keep everything in memory and forget it on exit (the memory backend: not durable, for
    /// tests). regCred.dat is still written into the data directory.
    #[arg(long, env = "XLREG_EPHEMERAL", conflicts_with = "endpoints")]
    ephemeral: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// With --etcd: the secret file (mode 0600, at least 32 bytes) that seals the
    /// registry's keys in etcd; give every server of the registry the same one (docs/ha.md).
    #[arg(long, env = "XLREG_IDENTITY_SECRET_FILE", value_name = "FILE")]
    identity_secret_file: Option<PathBuf>,
    /// Write regCred.dat here instead of DATA_DIR/regCred.dat.
    #[arg(long, env = "XLREG_REGCRED_OUT", value_name = "FILE")]
    regcred_out: Option<PathBuf>,
    /// Remove clusters nobody has joined for this long, e.g. 90s, 30m, 12h, 7d (default: never).
    #[arg(long, env = "XLREG_CLUSTER_TTL", value_name = "DURATION", value_parser = parse_ttl)]
    cluster_ttl: Option<Duration>,
    /// Most connections served at once; more are closed on arrival.
    #[arg(long, env = "XLREG_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Most connections one peer address may hold at once; more are closed on arrival.
    #[arg(long, env = "XLREG_MAX_CONNECTIONS_PER_IP", default_value_t = crate::admission::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Most clusters the registry holds; creates beyond are refused.
    #[arg(long, env = "XLREG_MAX_CLUSTERS", default_value_t = crate::store::DEFAULT_MAX_CLUSTERS)]
    max_clusters: u64,
    /// Most nodes the registry holds; new registrations beyond are refused.
    #[arg(long, env = "XLREG_MAX_NODES", default_value_t = crate::store::DEFAULT_MAX_NODES)]
    max_nodes: u64,
    /// New clusters one peer address may create: a burst of N, then N per PERIOD
    /// (e.g. 10000/10m, 50/1s), or off. Finding an existing cluster is not counted.
    #[arg(long, env = "XLREG_QUOTA_CLUSTERS_PER_IP", value_name = "N/PERIOD",
          default_value_t = Quota(Some(quota::DEFAULT_CLUSTERS_PER_IP)), value_parser = Quota::parse)]
    quota_clusters_per_ip: Quota,
    /// New clusters one node may create: a burst of N, then N per PERIOD, or off.
    #[arg(long, env = "XLREG_QUOTA_CLUSTERS_PER_NODE", value_name = "N/PERIOD",
          default_value_t = Quota(Some(quota::DEFAULT_CLUSTERS_PER_NODE)), value_parser = Quota::parse)]
    quota_clusters_per_node: Quota,
    /// New nodes one peer address may register: a burst of N, then N per PERIOD, or off.
    /// A known node registering again is not counted.
    #[arg(long, env = "XLREG_QUOTA_REGISTRATIONS_PER_IP", value_name = "N/PERIOD",
          default_value_t = Quota(Some(quota::DEFAULT_REGISTRATIONS_PER_IP)), value_parser = Quota::parse)]
    quota_registrations_per_ip: Quota,
    /// Seconds a new connection has to send its hello.
    #[arg(long, env = "XLREG_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds a session may stay silent between requests.
    #[arg(long, env = "XLREG_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Seconds a client may take to accept a reply before its session is closed.
    #[arg(long, env = "XLREG_WRITE_TIMEOUT", default_value_t = 30)]
    write_timeout: u64,
    /// Largest frame accepted from a client, in bytes: 1024 to 1048576 (the protocol's
    /// maximum).
    #[arg(long, env = "XLREG_MAX_FRAME", default_value_t = 64 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(1024..=crate::frame::MAX_FRAME_LEN as u64))]
    max_frame: usize,
    /// Seconds one store operation (a batch's transaction, a flush and its syncs) may take
    /// before the storage is declared failed and the registry exits (fail-stop, exit 74).
    #[arg(long, env = "XLREG_STORE_TIMEOUT", value_name = "SECONDS", default_value_t = crate::failstop::DEFAULT_STORE_TIMEOUT.as_secs())]
    store_timeout: u64,
    /// Seconds sessions in flight may run on after SIGTERM or SIGINT.
    #[arg(long, env = "XLREG_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /health
    /// (off by default).
    #[arg(long, env = "XLREG_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log format (RUST_LOG sets the level; default info).
    #[arg(long, env = "XLREG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Also serve xlReg 1.9 (Go) clients on this address (off by default). The 1.9 wire has
    /// no integrity protection and replayable signatures: keep it on a trusted network (see
    /// docs/legacy.md).
    #[arg(long, env = "XLREG_LEGACY_LISTEN", value_name = "ADDR")]
    legacy_listen: Option<SocketAddr>,
    /// Endpoint 1.9 clients should dial, written into the legacy regCred.dat (default: the
    /// legacy listen address).
    #[arg(
        long,
        env = "XLREG_LEGACY_ADVERTISE",
        value_name = "HOST:PORT",
        requires = "legacy_listen"
    )]
    legacy_advertise: Option<String>,
    /// Version the legacy listener announces, in its hello replies and its regCred.dat.
    #[arg(long, env = "XLREG_LEGACY_VERSION", value_name = "A.B.C", default_value_t = Version::GO_REGISTRY)]
    legacy_version: Version,
    /// Write the Go-format regCred.dat for 1.9 clients (legacy endpoint and version) here
    /// instead of DATA_DIR/legacy/regCred.dat. Go clients read a file named regCred.dat.
    #[arg(
        long,
        env = "XLREG_LEGACY_REGCRED_OUT",
        value_name = "FILE",
        requires = "legacy_listen"
    )]
    legacy_regcred_out: Option<PathBuf>,
}

/// The flags that put a registry on etcd (`serve --etcd`; docs/ha.md).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// Keep the records in etcd at these client URLs (comma-separated, e.g.
    /// http://127.0.0.1:2379,http://127.0.0.1:22379) instead of in DATA_DIR: several
    /// servers may then serve one registry. DATA_DIR holds only local files.
    #[arg(
        long = "etcd",
        env = "XLREG_ETCD",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// The etcd key prefix the registry's records live under.
    #[arg(
        long = "etcd-prefix",
        env = "XLREG_ETCD_PREFIX",
        value_name = "PREFIX",
        default_value = "/xlreg"
    )]
    pub prefix: String,
    /// CA certificate (PEM) of the etcd members' TLS certificates (turns TLS on).
    #[arg(long = "etcd-cacert", env = "XLREG_ETCD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    #[arg(
        long = "etcd-cert",
        env = "XLREG_ETCD_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long = "etcd-key",
        env = "XLREG_ETCD_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// etcd user, when etcd has authentication on.
    #[arg(
        long = "etcd-user",
        env = "XLREG_ETCD_USER",
        value_name = "USER",
        requires = "password_file"
    )]
    pub user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(
        long = "etcd-password-file",
        env = "XLREG_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        requires = "user"
    )]
    pub password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The etcd configuration, if `--etcd` was given.
    pub fn config(&self) -> Option<EtcdConfig> {
        if self.endpoints.is_empty() {
            return None;
        }
        let mut config = EtcdConfig::new(self.endpoints.clone(), self.prefix.clone());
        if self.cacert.is_some() || self.cert.is_some() {
            config.tls = Some(EtcdTls {
                ca: self.cacert.clone(),
                identity: self.cert.clone().zip(self.key.clone()),
            });
        }
        config.user =
            self.user
                .clone()
                .zip(self.password_file.clone())
                .map(|(name, password_file)| EtcdUser {
                    name,
                    password_file,
                });
        Some(config)
    }
}

/// A `--quota-*` flag's value: a rate, or off.
#[derive(Debug, Clone, Copy)]
struct Quota(Option<Rate>);

impl Quota {
    fn parse(text: &str) -> Result<Quota, crate::validate::Invalid> {
        Rate::parse(text).map(Quota)
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(rate) => rate.fmt(f),
            None => f.write_str("off"),
        }
    }
}

impl ServeArgs {
    /// The daemon settings these flags describe.
    // Every limit has a flag today; the update keeps limits added later at their defaults.
    #[allow(clippy::needless_update)]
    pub fn daemon_config(&self) -> DaemonConfig {
        DaemonConfig {
            data_dir: self.data.data_dir.clone(),
            backend: match self.etcd.config() {
                Some(etcd) => BackendChoice::Etcd(etcd),
                None if self.ephemeral => BackendChoice::Memory,
                None => BackendChoice::Sled,
            },
            name: self.name.clone(),
            listen: self.listen,
            advertise: self.advertise.clone(),
            regcred_out: self.regcred_out.clone(),
            limits: ServerConfig {
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                handshake_timeout: Duration::from_secs(self.handshake_timeout),
                idle_timeout: Duration::from_secs(self.idle_timeout),
                write_timeout: Duration::from_secs(self.write_timeout),
                max_frame: self.max_frame,
                shutdown_grace: Duration::from_secs(self.shutdown_grace),
                quotas: QuotaConfig {
                    clusters_per_ip: self.quota_clusters_per_ip.0,
                    clusters_per_node: self.quota_clusters_per_node.0,
                    registrations_per_ip: self.quota_registrations_per_ip.0,
                    ..QuotaConfig::default()
                },
                ..ServerConfig::default()
            },
            cluster_ttl: self.cluster_ttl,
            metrics_listen: self.metrics_listen,
            legacy: self.legacy_listen.map(|listen| LegacyConfig {
                listen,
                advertise: self.legacy_advertise.clone(),
                version: self.legacy_version,
                regcred_out: self.legacy_regcred_out.clone(),
            }),
            caps: crate::store::Caps {
                max_clusters: self.max_clusters,
                max_nodes: self.max_nodes,
            },
            store_timeout: Duration::from_secs(self.store_timeout),
            identity_secret_file: self.identity_secret_file.clone(),
        }
    }

    /// Whether logs, and so a fatal error, are JSON lines.
    pub fn logs_json(&self) -> bool {
        matches!(self.log_format, LogFormat::Json)
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal, and never under NO_COLOR: journald and log files get
    // plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    // Watched before the daemon announces itself (regCred.dat), so a supervisor that signals
    // as soon as it sees the file always gets a graceful shutdown.
    let shutdown = crate::daemon::shutdown_signal().context("watching SIGTERM and SIGINT")?;
    crate::daemon::run(args.daemon_config(), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// `xlreg serve`'s flags on their own.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn etcd_flags_choose_the_etcd_backend_with_tls_and_a_user() {
        let serve = Serve::try_parse_from([
            "serve",
            "--etcd=http://127.0.0.1:1,http://127.0.0.1:2",
            "--etcd-prefix=/reg",
            "--etcd-cacert=/etc/ca.pem",
            "--etcd-cert=/etc/c.pem",
            "--etcd-key=/etc/k.pem",
            "--etcd-user=xlreg",
            "--etcd-password-file=/etc/pw",
        ])
        .unwrap();
        let BackendChoice::Etcd(etcd) = serve.args.daemon_config().backend else {
            panic!("not the etcd backend");
        };
        assert_eq!(etcd.endpoints, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(etcd.prefix, "/reg");
        let tls = etcd.tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/etc/c.pem"), PathBuf::from("/etc/k.pem")))
        );
        let user = etcd.user.unwrap();
        assert_eq!(
            (user.name.as_str(), user.password_file),
            ("xlreg", PathBuf::from("/etc/pw"))
        );
        // Without --etcd: sled; --etcd with --ephemeral is a usage error.
        let plain = Serve::try_parse_from(["serve"]).unwrap();
        assert_eq!(plain.args.daemon_config().backend, BackendChoice::Sled);
        assert!(
            Serve::try_parse_from(["serve", "--etcd=http://127.0.0.1:1", "--ephemeral"]).is_err()
        );
        // A certificate without its key is refused.
        assert!(
            Serve::try_parse_from(["serve", "--etcd=http://127.0.0.1:1", "--etcd-cert=/c"])
                .is_err()
        );
    }

    #[test]
    fn every_flag_reaches_the_daemon_config() {
        let serve = Serve::try_parse_from([
            "serve",
            "--data-dir=/srv/reg",
            "--listen=127.0.0.1:1001",
            "--advertise=reg.example:1001",
            "--name=west",
            "--ephemeral",
            "--regcred-out=/srv/out/regCred.dat",
            "--cluster-ttl=90s",
            "--max-connections=7",
            "--handshake-timeout=2",
            "--idle-timeout=3",
            "--write-timeout=4",
            "--max-frame=2048",
            "--shutdown-grace=5",
            "--metrics-listen=127.0.0.1:1002",
            "--legacy-listen=127.0.0.1:1003",
            "--legacy-advertise=old.example:1003",
            "--legacy-version=1.9.30",
            "--legacy-regcred-out=/srv/go/regCred.dat",
        ])
        .unwrap();
        let config = serve.args.daemon_config();
        assert_eq!(config.data_dir, PathBuf::from("/srv/reg"));
        assert_eq!(config.listen, "127.0.0.1:1001".parse().unwrap());
        assert_eq!(config.advertise.as_deref(), Some("reg.example:1001"));
        assert_eq!(config.name.as_deref(), Some("west"));
        assert_eq!(config.backend, BackendChoice::Memory);
        assert_eq!(config.regcred_path(), PathBuf::from("/srv/out/regCred.dat"));
        assert_eq!(config.cluster_ttl, Some(Duration::from_secs(90)));
        let limits = &config.limits;
        assert_eq!(limits.max_connections, 7);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(limits.idle_timeout, Duration::from_secs(3));
        assert_eq!(limits.write_timeout, Duration::from_secs(4));
        assert_eq!(limits.max_frame, 2048);
        assert_eq!(limits.shutdown_grace, Duration::from_secs(5));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:1002".parse().unwrap())
        );
        let legacy = config.legacy.as_ref().unwrap();
        assert_eq!(legacy.listen, "127.0.0.1:1003".parse().unwrap());
        assert_eq!(legacy.advertise.as_deref(), Some("old.example:1003"));
        assert_eq!(legacy.version.to_string(), "1.9.30");
        assert_eq!(
            config.legacy_regcred_path(),
            Some(PathBuf::from("/srv/go/regCred.dat"))
        );
        config.validate().unwrap();
    }

    #[test]
    fn the_defaults_are_the_daemons() {
        let serve = Serve::try_parse_from(["serve", "--data-dir=/srv/reg"]).unwrap();
        let config = serve.args.daemon_config();
        let defaults = DaemonConfig::new("/srv/reg");
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(
            config.limits.max_connections,
            defaults.limits.max_connections
        );
        assert_eq!(config.limits.idle_timeout, defaults.limits.idle_timeout);
        assert_eq!(config.limits.max_frame, defaults.limits.max_frame);
        assert!(config.legacy.is_none() && config.metrics_listen.is_none());
        assert_eq!(config.regcred_path(), PathBuf::from("/srv/reg/regCred.dat"));
    }
}
