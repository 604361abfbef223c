//! The registry daemon: everything `xlreg serve` runs, as a library.
//!
//! This module owns the assembly of a running registry from a [`DaemonConfig`]: checking the
//! settings, binding every listener (xlReg/2, the opt-in xlReg 1.9 one, the metrics
//! endpoint), opening or creating the data directory, the store (the backend
//! [`DaemonConfig::backend`] chooses, opened by [`BackendChoice::open`]; from then on the
//! daemon speaks only the store's port) and the registry's identity, writing the
//! regCred.dat files, starting the control socket and the cluster expiry sweeper, telling
//! systemd it is ready, serving until shutdown, and the orderly stop (sessions in flight get
//! the grace period, `/health` says 503 meanwhile, then the store is flushed).
//!
//! The order is **validate, bind, then create**: a setting out of range or an address
//! already in use fails before anything is written, so a failed start leaves no data
//! directory and no keys behind.
//!
//! The `xlreg serve` command only maps its flags to a [`DaemonConfig`]; another Rust
//! program can run a registry the same way:
//!
//! ```no_run
//! use xlreg::daemon::{Daemon, DaemonConfig};
//!
//! # async fn example() -> Result<(), xlreg::daemon::DaemonError> {
//! let mut config = DaemonConfig::new("/var/lib/my-registry");
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! config.advertise = None; // clients dial the bound address, written into regCred.dat
//! let daemon = Daemon::start(config).await?;
//! println!("serving on {}", daemon.local_addr());
//! // Serve until Ctrl-C (any future will do: a oneshot, a CancellationToken, ...).
//! daemon
//!     .serve(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`run`] does both steps at once. The daemon never installs a log subscriber or signal
//! handlers of its own: [`shutdown_signal`] is there for programs that want SIGTERM and
//! SIGINT to stop it, as `xlreg serve` does.

pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use self::http::MetricsEndpoint;
use crate::admin::control::ControlServer;
use crate::admin::expiry::ClusterExpiry;
use crate::clock::now_ms;
use crate::ha::etcd::EtcdCoordination;
use crate::ha::{CoordError, Coordination, SealedKey, ServerTasks};
use crate::legacy::server::LegacyListener;
use crate::legacy::wire::Version;
use crate::metrics::Metrics;
use crate::process::{make_room_for_connections, notify_systemd, set_private_umask};
use crate::regcred::{RegCred, RegCredError};
use crate::registry::{Registry, RegistryError, RegistryIdentity};
use crate::sealed_identity::IdentitySecret;
use crate::server::{Server, ServerConfig};
use crate::store::{BackendChoice, StorageError};

/// The address `xlreg serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:56789";
/// Smallest `max_frame` accepted: every well-formed request fits in it.
pub const MIN_FRAME: usize = 1024;

/// Everything a registry daemon needs to know to run.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The data directory: the store (of a backend that keeps files), the registry's key
    /// files, regCred.dat and the control socket. Created on the first start (only after
    /// every listener is bound).
    pub data_dir: PathBuf,
    /// Which backend keeps the registry's records (default: sled, in the data directory).
    /// [`BackendChoice::Memory`] (`serve --ephemeral`) keeps everything in memory and
    /// forgets it on exit: no store files, no key files, no control socket; regCred.dat is
    /// still written.
    pub backend: BackendChoice,
    /// The registry's name (kept in the store; a new one renames the registry).
    pub name: Option<String>,
    /// Where xlReg/2 clients connect.
    pub listen: SocketAddr,
    /// The endpoint written into regCred.dat (default: the bound listen address, which must
    /// then not be a wildcard).
    pub advertise: Option<String>,
    /// Where to write regCred.dat (default: `data_dir/regCred.dat`).
    pub regcred_out: Option<PathBuf>,
    /// Limits and timeouts of the sessions.
    pub limits: ServerConfig,
    /// Remove clusters nobody has joined for this long (default: never).
    pub cluster_ttl: Option<Duration>,
    /// Serve `/metrics` and `/health` over HTTP on this address (default: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve xlReg 1.9 (Go) clients (default: off).
    pub legacy: Option<LegacyConfig>,
    /// Registry-wide caps on clusters and nodes (docs/running.md).
    pub caps: crate::store::Caps,
    /// A store operation that runs longer than this fails the store (the watchdog of
    /// [`crate::failstop::supervise`]).
    pub store_timeout: Duration,
    /// On etcd: the secret file that seals the registry's identity in etcd, the same for
    /// every server of the registry (`--identity-secret-file`; required with etcd, refused
    /// otherwise; docs/ha.md).
    pub identity_secret_file: Option<PathBuf>,
}

/// The opt-in xlReg 1.9 listener's settings (docs/legacy.md).
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// Where 1.9 clients connect.
    pub listen: SocketAddr,
    /// The endpoint written into the Go-format regCred.dat (default: the bound address,
    /// which must then not be a wildcard).
    pub advertise: Option<String>,
    /// The version announced in hello replies and the Go-format regCred.dat.
    pub version: Version,
    /// Where to write the Go-format regCred.dat (default: `data_dir/legacy/regCred.dat`).
    pub regcred_out: Option<PathBuf>,
}

impl LegacyConfig {
    /// A legacy listener on `listen` announcing the Go registry's version.
    pub fn new(listen: SocketAddr) -> LegacyConfig {
        LegacyConfig {
            listen,
            advertise: None,
            version: Version::GO_REGISTRY,
            regcred_out: None,
        }
    }
}

impl DaemonConfig {
    /// A registry on `data_dir` with every other setting at `xlreg serve`'s default.
    pub fn new(data_dir: impl Into<PathBuf>) -> DaemonConfig {
        DaemonConfig {
            data_dir: data_dir.into(),
            backend: BackendChoice::default(),
            name: None,
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            advertise: None,
            regcred_out: None,
            limits: ServerConfig::default(),
            cluster_ttl: None,
            metrics_listen: None,
            legacy: None,
            caps: crate::store::Caps::default(),
            store_timeout: crate::failstop::DEFAULT_STORE_TIMEOUT,
            identity_secret_file: None,
        }
    }

    /// Checks every setting, touching nothing. [`Daemon::start`] calls it first.
    pub fn validate(&self) -> Result<(), DaemonError> {
        let invalid =
            |setting: &'static str, problem: String| DaemonError::Invalid { setting, problem };
        check_advertised(
            "--advertise",
            self.advertise.as_deref(),
            self.listen,
            "clients",
        )?;
        let limits = &self.limits;
        if limits.max_connections == 0 {
            return Err(invalid("--max-connections", "must be at least 1".into()));
        }
        if !(MIN_FRAME..=crate::frame::MAX_FRAME_LEN).contains(&limits.max_frame) {
            return Err(invalid(
                "--max-frame",
                format!(
                    "{} is out of range: it must be {MIN_FRAME} to {} bytes",
                    limits.max_frame,
                    crate::frame::MAX_FRAME_LEN
                ),
            ));
        }
        for (setting, value) in [
            ("--handshake-timeout", limits.handshake_timeout),
            ("--idle-timeout", limits.idle_timeout),
            ("--write-timeout", limits.write_timeout),
        ] {
            if value < Duration::from_secs(1) {
                return Err(invalid(setting, "must be at least 1 second".into()));
            }
        }
        if limits.max_connections_per_ip == 0 {
            return Err(invalid(
                "--max-connections-per-ip",
                "must be at least 1".into(),
            ));
        }
        if self.store_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "--store-timeout",
                "must be at least 1 second".into(),
            ));
        }
        match (&self.backend, &self.identity_secret_file) {
            (BackendChoice::Etcd(_), None) => {
                return Err(invalid(
                    "--identity-secret-file",
                    "is required with --etcd: give every server of the registry the same \
                     secret file (mode 0600); it seals the registry's keys in etcd (docs/ha.md)"
                        .into(),
                ))
            }
            (BackendChoice::Sled | BackendChoice::Memory, Some(_)) => {
                return Err(invalid(
                    "--identity-secret-file",
                    "is for --etcd only: on sled the registry's keys are files in its data \
                     directory"
                        .into(),
                ))
            }
            _ => {}
        }
        if self.caps.max_clusters == 0 || self.caps.max_nodes == 0 {
            return Err(invalid(
                "--max-clusters/--max-nodes",
                "must be at least 1".into(),
            ));
        }
        if self.cluster_ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(invalid("--cluster-ttl", "must be longer than 0".into()));
        }
        if let Some(legacy) = &self.legacy {
            check_advertised(
                "--legacy-advertise",
                legacy.advertise.as_deref(),
                legacy.listen,
                "1.9 clients",
            )?;
            if self.legacy_regcred_path() == Some(self.regcred_path()) {
                return Err(invalid(
                    "--legacy-regcred-out",
                    format!(
                        "{} is also the xlReg/2 regCred.dat; give each its own file",
                        self.regcred_path().display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where regCred.dat is written.
    pub fn regcred_path(&self) -> PathBuf {
        self.regcred_out
            .clone()
            .unwrap_or_else(|| self.data_dir.join("regCred.dat"))
    }

    /// Where the Go-format regCred.dat is written, if the legacy listener is on.
    pub fn legacy_regcred_path(&self) -> Option<PathBuf> {
        let legacy = self.legacy.as_ref()?;
        Some(
            legacy
                .regcred_out
                .clone()
                .unwrap_or_else(|| self.data_dir.join("legacy").join("regCred.dat")),
        )
    }
}

/// Why a daemon could not start or stopped badly. Every error before [`Daemon::start`]
/// returns leaves the file system as it was, except [`DaemonError::Store`],
/// [`DaemonError::Identity`] and [`DaemonError::RegCred`], which come after the data
/// directory was opened.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting is out of range or contradicts another; nothing was created.
    #[error("{setting}: {problem}")]
    Invalid {
        /// The setting, named by its `xlreg serve` flag.
        setting: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An address could not be bound (in use, not local, not permitted); nothing was
    /// created.
    #[error("cannot listen on {addr} for {purpose}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the listener was for.
        purpose: &'static str,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// A bound socket could not report its address.
    #[error("reading the address of the {purpose} listener: {source}")]
    LocalAddr {
        /// What the listener is for.
        purpose: &'static str,
        /// The failure.
        source: std::io::Error,
    },
    /// The store could not be opened, created or flushed.
    #[error("data directory {dir}: {source}")]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// The store's failure.
        source: StorageError,
    },
    /// The registry's identity could not be loaded or created.
    #[error("loading the registry identity: {0}")]
    Identity(#[from] RegistryError),
    /// The servers' coordination keys in etcd (lease, announcement, election) could not be
    /// set up.
    #[error("etcd: {0}")]
    Shared(#[from] crate::ha::CoordError),
    /// A regCred.dat could not be written.
    #[error("writing {path}: {source}")]
    RegCred {
        /// The file.
        path: PathBuf,
        /// Why it could not be written.
        source: RegCredError,
    },
    /// A regCred.dat's directory could not be created.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why it could not be created.
        source: std::io::Error,
    },
    /// The final flush after the sessions ended failed: changes acknowledged may be lost.
    #[error("final flush of the store failed: {0}")]
    FinalFlush(StorageError),
    /// The store failed while serving (fail-stop: nothing was acknowledged after it).
    #[error("the store failed while serving: {0}")]
    StoreFailed(String),
    /// The store watchdog thread could not be started.
    #[error("starting the store watchdog: {0}")]
    Watchdog(std::io::Error),
}

/// Every listener of a daemon, bound, before anything is created.
struct Listeners {
    v2: TcpListener,
    legacy: Option<LegacyListener>,
    metrics: Option<MetricsEndpoint>,
}

impl Listeners {
    async fn bind(config: &DaemonConfig) -> Result<Listeners, DaemonError> {
        let bind_error = |addr, purpose| {
            move |source| DaemonError::Bind {
                addr,
                purpose,
                source,
            }
        };
        let v2 = crate::admission::listen(config.listen)
            .map_err(bind_error(config.listen, "xlReg/2 clients (--listen)"))?;
        let legacy = match &config.legacy {
            Some(legacy) => Some(
                LegacyListener::bind(legacy.listen, legacy.version)
                    .await
                    .map_err(bind_error(
                        legacy.listen,
                        "xlReg 1.9 clients (--legacy-listen)",
                    ))?,
            ),
            None => None,
        };
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                MetricsEndpoint::bind(addr)
                    .await
                    .map_err(bind_error(addr, "metrics (--metrics-listen)"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            v2,
            legacy,
            metrics,
        })
    }
}

/// A started registry: listening, its identity loaded and regCred.dat written, ready to
/// [`serve`](Daemon::serve).
pub struct Daemon {
    config: DaemonConfig,
    registry: Arc<Registry>,
    server: Server,
    local_addr: SocketAddr,
    legacy_addr: Option<SocketAddr>,
    metrics: Option<(MetricsEndpoint, SocketAddr, Arc<Metrics>)>,
    control: Option<ControlServer>,
    expiry: Option<ClusterExpiry>,
    /// Ends a key rotation's overlap when it expires.
    overlap: tokio::task::JoinHandle<()>,
    /// On etcd: the server's lease, announcement, sweeper election and key reloads.
    shared: Option<ServerTasks>,
    regcred: RegCred,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("local_addr", &self.local_addr)
            .field("legacy_addr", &self.legacy_addr)
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Checks `config`, binds every listener, then opens (or creates) the data directory,
    /// the store and the registry's identity, writes regCred.dat (and the Go-format one),
    /// and starts the control socket and the cluster expiry sweeper. Call within a tokio
    /// runtime with I/O and timers.
    pub async fn start(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        config.validate()?;
        // Read before anything is created: a missing or open-to-all secret fails the start.
        let secret = match &config.identity_secret_file {
            Some(path) => Some(IdentitySecret::read(path).map_err(RegistryError::from)?),
            None => None,
        };
        let listeners = Listeners::bind(&config).await?;
        // Bound: from here on the start creates things.
        make_room_for_connections(config.limits.max_connections);
        let data_dir = config.data_dir.clone();
        let store_error = |source| DaemonError::Store {
            dir: data_dir.clone(),
            source,
        };
        // The data directory and every file in it are the daemon's only, whatever the umask.
        set_private_umask();
        let ephemeral = config.backend.is_ephemeral();
        let store = config.backend.open(&config.data_dir).map_err(store_error)?;
        store.set_caps(config.caps).map_err(store_error)?;
        // From here a storage failure or a hung store operation stops the process (exit 74).
        crate::failstop::supervise(store.health().clone(), config.store_timeout)
            .map_err(DaemonError::Watchdog)?;
        let (identity, shared) = match (&config.backend, secret) {
            // Several servers on etcd: one identity, sealed in etcd (docs/ha.md).
            (BackendChoice::Etcd(etcd), Some(secret)) => {
                let coord: Arc<dyn Coordination> = Arc::new(
                    EtcdCoordination::connect(etcd).map_err(|e| CoordError(e.to_string()))?,
                );
                let slot = Box::new(SealedKey::new(
                    coord.clone(),
                    tokio::runtime::Handle::current(),
                ));
                let (store, name) = (store.clone(), config.name.clone());
                let (identity, _) = tokio::task::spawn_blocking(move || {
                    RegistryIdentity::load_or_create_sealed(
                        &*store,
                        slot,
                        secret,
                        name.as_deref(),
                        now_ms(),
                    )
                })
                .await
                .map_err(|e| CoordError(format!("loading the sealed identity stopped: {e}")))??;
                (identity, Some(coord))
            }
            _ => {
                let key_dir = (!ephemeral).then_some(config.data_dir.as_path());
                let identity = RegistryIdentity::load_or_create(
                    &*store,
                    key_dir,
                    config.name.as_deref(),
                    now_ms(),
                )?;
                (identity, None)
            }
        };
        let registry = Arc::new(Registry::new(store, identity)?);
        let local_addr = local_addr(&listeners.v2, "xlReg/2")?;
        let mut server = Server::new(listeners.v2, registry.clone(), config.limits.clone());
        let metrics = match listeners.metrics {
            Some(endpoint) => {
                let addr = endpoint
                    .local_addr()
                    .map_err(|source| DaemonError::LocalAddr {
                        purpose: "metrics",
                        source,
                    })?;
                let metrics = Arc::new(Metrics::new());
                server = server.with_metrics(metrics.clone());
                tracing::info!(listen = %addr, "metrics endpoint serving /metrics and /health");
                Some((endpoint, addr, metrics))
            }
            None => None,
        };
        let mut legacy_addr = None;
        if let Some(legacy) = listeners.legacy {
            let bound = legacy
                .local_addr()
                .map_err(|source| DaemonError::LocalAddr {
                    purpose: "xlReg 1.9",
                    source,
                })?;
            legacy_addr = Some(bound);
            server = server.with_legacy(legacy);
        }
        if let (Some(legacy), Some(bound), Some(path)) =
            (&config.legacy, legacy_addr, config.legacy_regcred_path())
        {
            // Written before the native file, so whoever waits for that one finds both.
            let advertised = legacy
                .advertise
                .clone()
                .unwrap_or_else(|| bound.to_string());
            let mut cred = registry.identity.regcred(vec![advertised.clone()]);
            cred.version = legacy.version.to_string();
            // Go clients read this file, and their parser knows no xlReg/3 fields.
            cred.handshake = None;
            cred.handshake_previous = None;
            write_regcred(&cred, &path)?;
            tracing::warn!(
                legacy_listen = %bound,
                legacy_advertise = %advertised,
                legacy_regcred = %path.display(),
                legacy_version = %legacy.version,
                "xlReg 1.9 listener on: its wire has no integrity protection; keep it on a trusted network (docs/legacy.md)"
            );
        }
        // Admin commands reach a running daemon through DATA_DIR/control.sock; an ephemeral
        // registry keeps nothing in its data directory and has none. Started before
        // regCred.dat is written, so a written regCred.dat means the socket is ready too.
        if shared.is_some() {
            // On etcd nothing else has made the data directory (0700: the umask is private).
            std::fs::create_dir_all(&config.data_dir).map_err(|source| DaemonError::CreateDir {
                path: config.data_dir.clone(),
                source,
            })?;
        }
        let control = if ephemeral {
            None
        } else {
            ControlServer::start_in(registry.clone(), &config.data_dir)
                .inspect_err(|error| {
                    tracing::error!(%error, "no control socket: admin commands need the daemon stopped")
                })
                .ok()
        };
        let advertised = config
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let regcred = registry.identity.regcred(vec![advertised.clone()]);
        let regcred_path = config.regcred_path();
        write_regcred(&regcred, &regcred_path)?;
        // Key rotations and the end of an overlap rewrite this file (not the Go one).
        registry
            .identity
            .handshake
            .published(&regcred_path, &regcred);
        let overlap = tokio::spawn(crate::handshake_keys::end_overlaps(
            registry.identity.handshake.clone(),
        ));
        // On etcd: the server's lease, its announcement (which rewrites regCred.dat as
        // servers come and go), the sweeper election and following key rotations.
        let shared = match shared {
            Some(coord) => Some(
                ServerTasks::start(
                    coord,
                    &registry,
                    vec![advertised.clone()],
                    format!("{advertised} pid {}", std::process::id()),
                )
                .await?,
            ),
            None => None,
        };
        let expiry = config.cluster_ttl.map(|ttl| match &shared {
            Some(shared) => ClusterExpiry::start_elected(registry.clone(), ttl, shared.elected()),
            None => ClusterExpiry::start(registry.clone(), ttl),
        });
        tracing::info!(
            name = %registry.identity.name,
            id = %registry.identity.id,
            listen = %local_addr,
            advertise = %advertised,
            regcred = %regcred_path.display(),
            data_dir = %if ephemeral { "(ephemeral)".to_string() } else { config.data_dir.display().to_string() },
            backend = %config.backend,
            version = crate::registry::VERSION,
            "xlreg registry serving"
        );
        Ok(Daemon {
            config,
            registry,
            server,
            local_addr,
            legacy_addr,
            metrics,
            control,
            expiry,
            overlap,
            shared,
            regcred,
        })
    }

    /// The address xlReg/2 clients connect to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the xlReg 1.9 listener, if it is on.
    pub fn legacy_addr(&self) -> Option<SocketAddr> {
        self.legacy_addr
    }

    /// The address of the metrics endpoint, if it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr, _)| *addr)
    }

    /// The credentials written into regCred.dat at start (a handshake-key rotation or the
    /// end of its overlap rewrites the file: read it for the keys served now).
    pub fn regcred(&self) -> &RegCred {
        &self.regcred
    }

    /// The registry being served (its store and identity).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Serves until `shutdown` completes, then stops: no new connections, `/health` 503,
    /// sessions in flight get the shutdown grace, the metrics endpoint stays up until they
    /// are done, then the sweeper and the control socket stop and the store is flushed.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let Daemon {
            registry,
            server,
            metrics,
            control,
            expiry,
            overlap,
            shared,
            ..
        } = self;
        let metrics_task = metrics.map(|(endpoint, _, metrics)| {
            tokio::spawn(endpoint.run(metrics, registry.store.clone()))
        });
        notify_systemd(sd_notify::NotifyState::Ready);
        let shutdown = async {
            shutdown.await;
            notify_systemd(sd_notify::NotifyState::Stopping);
        };
        // Returns once the sessions in flight have ended or the grace is over; until then
        // the metrics endpoint answers /health with 503.
        server.run(shutdown).await;
        if let Some(task) = metrics_task {
            task.abort();
            // Dropped before the store is flushed and released: the task holds a handle.
            let _ = task.await;
        }
        overlap.abort();
        let _ = overlap.await;
        if let Some(expiry) = expiry {
            expiry.stop().await;
        }
        if let Some(shared) = shared {
            shared.stop().await;
        }
        if let Some(control) = control {
            control.stop().await;
        }
        // A failed store is a failure for the supervisor, whatever stopped the sessions.
        if let Some(reason) = registry.store.health().reason() {
            return Err(DaemonError::StoreFailed(reason.to_string()));
        }
        // The server's final flush may have run before the last expiry removals.
        let flushed = registry
            .store
            .flush_blocking()
            .map_err(DaemonError::FinalFlush);
        tracing::info!("stopped");
        flushed
    }
}

/// Starts a daemon with `config` and serves until `shutdown` completes
/// ([`Daemon::start`], then [`Daemon::serve`]).
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    Daemon::start(config).await?.serve(shutdown).await
}

/// Watches SIGTERM and SIGINT from now on, and returns a future that completes on either.
/// Install it before starting the daemon (the daemon announces itself by writing
/// regCred.dat), so a supervisor that signals as soon as it sees the file always gets a
/// graceful shutdown.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Checks the endpoint a regCred.dat will name: `advertise` if given (it must be a valid
/// endpoint), else the listen address, which must then not be a wildcard.
fn check_advertised(
    setting: &'static str,
    advertise: Option<&str>,
    listen: SocketAddr,
    who: &str,
) -> Result<(), DaemonError> {
    let problem = match advertise {
        Some(endpoint) => crate::validate::endpoint(endpoint)
            .err()
            .map(|e| e.to_string()),
        None if listen.ip().is_unspecified() => Some(format!(
            "listening on {listen}: say which address {who} should dial"
        )),
        None => None,
    };
    match problem {
        Some(problem) => Err(DaemonError::Invalid { setting, problem }),
        None => Ok(()),
    }
}

fn local_addr(listener: &TcpListener, purpose: &'static str) -> Result<SocketAddr, DaemonError> {
    listener
        .local_addr()
        .map_err(|source| DaemonError::LocalAddr { purpose, source })
}

/// Writes `cred` to `path`, creating its directory if needed.
fn write_regcred(cred: &RegCred, path: &Path) -> Result<(), DaemonError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DaemonError::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    cred.write(path).map_err(|source| DaemonError::RegCred {
        path: path.to_path_buf(),
        source,
    })
}
