//! `xlreg cluster create|join|members`, and the session helper the node commands share.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::exit::{CliError, Failure};
use super::output::{cluster_info_json, print_cluster, print_json};
use crate::client::{self, Client, ClientError, ClusterView, EndpointOrder};
use crate::crypto::{RsaKeyPair, RSA_BITS};
use crate::id::Id;
use crate::node::NodeIdentity;
use crate::regcred::RegCred;
use crate::store::ClusterRef;

/// How to reach the registry.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The registry's regCred.dat.
    #[arg(long, value_name = "FILE", env = "XLREG_REGCRED")]
    pub regcred: PathBuf,
    /// Keep retrying for this many seconds while the registry is unreachable or restarting,
    /// a refused connection included (for scripts that start alongside the registry).
    /// Default: a refused connection fails at once; other transient failures are retried
    /// for 30 s.
    #[arg(long, value_name = "SECONDS")]
    pub retry_for: Option<u64>,
    /// Seconds to wait for the registry to accept the TCP connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,
}

/// How the name of every throwaway identity starts, so `admin delete-node --throwaway` can
/// find them.
pub const THROWAWAY_PREFIX: &str = "xlreg-cli-";

/// How long transient failures are retried when `--retry-for` is not given.
const DEFAULT_RETRY: Duration = Duration::from_secs(30);

/// `xlreg cluster ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster (or find the existing one of that name) and print its ID.
    Create(CreateArgs),
    /// Join a cluster, wait until it is complete, and print its members.
    Join(JoinArgs),
    /// Print a cluster's members.
    Members(MembersArgs),
}

/// Options of `xlreg cluster create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Cluster name.
    name: String,
    /// Maximum number of members, 2 to 64.
    #[arg(long, value_parser = clap::value_parser!(u32).range(
        crate::validate::MIN_CLUSTER_SIZE as i64..=crate::validate::MAX_CLUSTER_SIZE as i64))]
    size: u32,
    /// Endpoints each member must register, 1 to 8.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(
        1..=crate::validate::MAX_ENDPOINTS as i64))]
    endpoints: u32,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Node identity to act as. Without one, a throwaway identity is registered (the
    /// protocol accepts requests only from a registered node); remove such nodes with
    /// `xlreg admin delete-node --throwaway`.
    #[arg(long, env = "XLREG_NODE")]
    node: Option<PathBuf>,
}

/// Options of `xlreg cluster join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Cluster name, or its ID (64 hex digits).
    cluster: String,
    /// The node's identity directory.
    #[arg(long, env = "XLREG_NODE")]
    node: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Seconds to wait for the cluster to be complete (0: return at once after joining).
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

/// Options of `xlreg cluster members`.
#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// Cluster name, or its ID (64 hex digits).
    cluster: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Node identity to ask as. Without one, a throwaway identity is registered (the
    /// protocol accepts requests only from a registered node); remove such nodes with
    /// `xlreg admin delete-node --throwaway`.
    #[arg(long, env = "XLREG_NODE")]
    node: Option<PathBuf>,
}

/// Runs `xlreg cluster ...`.
pub async fn run(command: ClusterCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Create(args) => create(args, json).await,
        ClusterCommand::Join(args) => join(args, json).await,
        ClusterCommand::Members(args) => members(args, json).await,
    }
}

/// Reads the regCred, then runs `session` on a fresh connection, again with backoff while
/// the failure is one that retrying may cure, for `--retry-for` seconds (default 30). The
/// regCred's endpoints are tried in a shuffled order; an unreachable one, or one whose
/// session was cut short, hands over to the next.
pub async fn connect_and<T, F, Fut>(args: &RegistryArgs, session: F) -> anyhow::Result<T>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    connect_and_for(args, Duration::ZERO, session).await
}

/// [`connect_and`], retrying for at least `at_least` (a long wait outlives the default).
/// Without `--retry-for`, a refused connection on the first attempt fails at once (nothing
/// runs there: interactive use wants that answer now), while one after a session has been
/// established is a restart, and is retried.
async fn connect_and_for<T, F, Fut>(
    args: &RegistryArgs,
    at_least: Duration,
    session: F,
) -> anyhow::Result<T>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let regcred = RegCred::read(&args.regcred)?;
    let budget = args
        .retry_for
        .map_or(DEFAULT_RETRY, Duration::from_secs)
        .max(at_least);
    let retry_refused = args.retry_for.is_some();
    let connected = std::sync::atomic::AtomicBool::new(false);
    let dial_timeout = Duration::from_secs(args.connect_timeout);
    // Shuffled once; each attempt starts at the endpoint that last answered, or the one
    // after an endpoint whose session was cut short.
    let order = EndpointOrder::shuffled(&regcred.endpoints);
    let result = client::retry_if(
        Instant::now() + budget,
        |error| {
            retry_refused
                || connected.load(std::sync::atomic::Ordering::Relaxed)
                || !error.nothing_listens()
        },
        |error, backoff| eprintln!("xlreg: {error}; retrying in {backoff:?}"),
        || {
            let regcred = &regcred;
            let session = &session;
            let connected = &connected;
            let order = &order;
            async move {
                // xlReg/3 when the file has handshake keys, never falling back.
                let client = Client::connect_any(
                    order,
                    client::RegistryKeys::of(regcred),
                    dial_timeout,
                    client::DEFAULT_TIMEOUT,
                )
                .await?;
                connected.store(true, std::sync::atomic::Ordering::Relaxed);
                let endpoint = client.endpoint().to_string();
                // Every session the CLI runs repeats safely (the module doc of
                // crate::client says why), so one cut short runs again on the next endpoint.
                session(client).await.inspect_err(|error| {
                    if error.is_retryable() {
                        order.failed(&endpoint);
                    }
                })
            }
        },
    )
    .await;
    result.map_err(anyhow::Error::from)
}

/// The identity to act as: the node's, or a throwaway one made now.
fn identity(node: Option<&PathBuf>) -> anyhow::Result<NodeIdentity> {
    match node {
        // Retries register the same node, never a second one (NodeIdentity::claim_id).
        Some(dir) => {
            let mut node = NodeIdentity::load(dir)?;
            node.claim_id(dir)
                .with_context(|| format!("recording the node ID in {}", dir.display()))?;
            Ok(node)
        }
        None => Ok(NodeIdentity {
            name: format!(
                "{THROWAWAY_PREFIX}{}",
                &Id::random(&mut rand::rng()).to_hex()[..12]
            ),
            endpoints: vec!["127.0.0.1:1".to_string()],
            id: Some(Id::random(&mut rand::rng())),
            comms: RsaKeyPair::generate(RSA_BITS)?,
            sig: RsaKeyPair::generate(RSA_BITS)?,
        }),
    }
}

/// Records a newly issued node ID in the node's directory.
fn remember_id(node: &mut NodeIdentity, dir: Option<&PathBuf>, id: &Id) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        if node.id.as_ref() != Some(id) {
            node.save_id(dir, id.clone())
                .with_context(|| format!("recording the node ID in {}", dir.display()))?;
        }
    }
    Ok(())
}

async fn create(args: CreateArgs, json: bool) -> anyhow::Result<ExitCode> {
    crate::validate::cluster_name(&args.name)?;
    let mut node = identity(args.node.as_ref())?;
    let (node_id, cluster) = connect_and(&args.registry, |mut client| {
        let node = &node;
        let name = &args.name;
        async move {
            let node_id = client.register(node).await?;
            let cluster = client.create(name, args.size, args.endpoints).await?;
            client.bye().await?;
            Ok((node_id, cluster))
        }
    })
    .await?;
    remember_id(&mut node, args.node.as_ref(), &node_id)?;
    if cluster.max_size != args.size || cluster.endpoint_count != args.endpoints {
        eprintln!(
            "xlreg: cluster {} already exists with {} slots and {} endpoint(s) each; it keeps them",
            cluster.name, cluster.max_size, cluster.endpoint_count
        );
    }
    if json {
        print_json(&serde_json::json!({ "cluster": cluster_info_json(&cluster) }))?;
    } else {
        outln!("{}", cluster.id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a `cluster join` stands, for the report on Ctrl-C.
#[derive(Debug, Default)]
struct JoinProgress {
    /// The cluster and slot, once joined.
    joined: Option<(String, u32)>,
    /// Members seen and the cluster's size, at the last listing.
    members: Option<(usize, u32)>,
}

impl JoinProgress {
    fn describe(&self) -> String {
        match (&self.joined, self.members) {
            (None, _) => "the node had not joined yet".to_string(),
            (Some((name, slot)), Some((members, max))) => format!(
                "the node is a member of cluster {name} (slot {slot}); the cluster is \
                 incomplete ({members}/{max} members)"
            ),
            (Some((name, slot)), None) => format!(
                "the node is a member of cluster {name} (slot {slot}); the cluster is incomplete"
            ),
        }
    }
}

async fn join(args: JoinArgs, json: bool) -> anyhow::Result<ExitCode> {
    let target = crate::validate::cluster_ref(&args.cluster)?;
    let mut node = identity(Some(&args.node))?;
    let wait_until = Instant::now() + Duration::from_secs(args.wait);
    let progress = std::sync::Mutex::new(JoinProgress::default());
    let session = connect_and_for(
        &args.registry,
        Duration::from_secs(args.wait),
        |mut client| {
            let node = &node;
            let target = &target;
            let progress = &progress;
            async move {
                let node_id = client.register(node).await?;
                let (cluster, slot) = client.join(Some(target)).await?;
                eprintln!("xlreg: joined cluster {} as slot {slot}", cluster.name);
                lock(progress).joined = Some((cluster.name.clone(), slot));
                let view = wait_for_members(&mut client, &cluster.id, wait_until, |view| {
                    lock(progress).members = Some((view.members.len(), view.cluster.max_size));
                })
                .await?;
                client.bye().await?;
                Ok((node_id, view))
            }
        },
    );
    let (node_id, view) = tokio::select! {
        result = session => result?,
        _ = tokio::signal::ctrl_c() => {
            return Err(CliError::new(
                Failure::Interrupted,
                format!("interrupted: {}", lock(&progress).describe()),
            )
            .into());
        }
    };
    remember_id(&mut node, Some(&args.node), &node_id)?;
    print_cluster(&view, json)?;
    if args.wait > 0 && !view.is_complete() {
        return Err(CliError::new(
            Failure::Timeout,
            format!(
                "cluster {} is not complete after {} s ({}/{} members)",
                view.cluster.name,
                args.wait,
                view.members.len(),
                view.cluster.max_size
            ),
        )
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Locks `mutex`, whose holder cannot leave it half-updated (a panic only loses a report).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lists the cluster, holding each request up to 5 s at the registry, until it is complete
/// or `until` passes; reports progress on stderr.
async fn wait_for_members(
    client: &mut Client,
    cluster: &Id,
    until: Instant,
    mut seen: impl FnMut(&ClusterView),
) -> Result<ClusterView, ClientError> {
    let target = ClusterRef::Id(cluster.clone());
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let view = client
            .get_cluster(Some(&target), None, left.min(Duration::from_secs(5)))
            .await?;
        seen(&view);
        if view.is_complete() || left.is_zero() {
            return Ok(view);
        }
        eprintln!(
            "xlreg: waiting for cluster {}: {}/{} members",
            view.cluster.name,
            view.members.len(),
            view.cluster.max_size
        );
    }
}

async fn members(args: MembersArgs, json: bool) -> anyhow::Result<ExitCode> {
    let target = crate::validate::cluster_ref(&args.cluster)?;
    let mut node = identity(args.node.as_ref())?;
    let (node_id, view) = connect_and(&args.registry, |mut client| {
        let node = &node;
        let target = &target;
        async move {
            let node_id = client.register(node).await?;
            let view = client
                .get_cluster(Some(target), None, Duration::ZERO)
                .await?;
            client.bye().await?;
            Ok((node_id, view))
        }
    })
    .await?;
    remember_id(&mut node, args.node.as_ref(), &node_id)?;
    print_cluster(&view, json)?;
    Ok(ExitCode::SUCCESS)
}
