//! `xlreg cluster create|join|members`, and the session helper the node commands share.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::output::print_cluster;
use crate::client::{self, Client, ClientError, ClusterView};
use crate::crypto::{RsaKeyPair, RSA_BITS};
use crate::id::Id;
use crate::node::NodeIdentity;
use crate::regcred::RegCred;
use crate::store::ClusterRef;

/// How to reach the registry.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The registry's regCred.dat.
    #[arg(long, value_name = "FILE")]
    pub regcred: PathBuf,
    /// Seconds to keep retrying while the registry is unreachable or restarting.
    #[arg(long, default_value_t = 30)]
    pub retry_for: u64,
}

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
    /// Maximum number of members (clamped to 2..64).
    #[arg(long)]
    size: u32,
    /// Endpoints each member must register (1..8).
    #[arg(long, default_value_t = 1)]
    endpoints: u32,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Node identity to act as (default: a throwaway identity, as the Go admin client did).
    #[arg(long)]
    node: Option<PathBuf>,
}

/// Options of `xlreg cluster join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Cluster name.
    name: String,
    /// The node's identity directory.
    #[arg(long)]
    node: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Seconds to wait for the cluster to be complete (0: return at once after joining).
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `xlreg cluster members`.
#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// Cluster name, or its ID as hex.
    cluster: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Node identity to ask as (default: a throwaway identity).
    #[arg(long)]
    node: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `xlreg cluster ...`.
pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Create(args) => create(args).await,
        ClusterCommand::Join(args) => join(args).await,
        ClusterCommand::Members(args) => members(args).await,
    }
}

/// Reads the regCred, then runs `session` on a fresh connection, again with backoff while
/// the failure is one that retrying may cure, for up to `--retry-for` seconds.
pub async fn connect_and<T, F, Fut>(args: &RegistryArgs, session: F) -> anyhow::Result<T>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let regcred = RegCred::read(&args.regcred)?;
    let deadline = Instant::now() + Duration::from_secs(args.retry_for);
    let result = client::retry(
        deadline,
        |error, backoff| eprintln!("xlreg: {error}; retrying in {backoff:?}"),
        || {
            let regcred = &regcred;
            let session = &session;
            async move {
                let client = Client::connect(regcred, client::DEFAULT_TIMEOUT).await?;
                session(client).await
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
            name: format!("xlreg-cli-{}", &Id::random(&mut rand::rng()).to_hex()[..12]),
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

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    crate::validate::cluster_name(&args.name)?;
    crate::validate::endpoint_count(args.endpoints)?;
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
    if cluster.max_size != args.size {
        eprintln!(
            "xlreg: cluster {} has {} slots (sizes are 2 to 64, and an existing cluster keeps its size)",
            cluster.name, cluster.max_size
        );
    }
    outln!("{}", cluster.id)?;
    Ok(ExitCode::SUCCESS)
}

async fn join(args: JoinArgs) -> anyhow::Result<ExitCode> {
    crate::validate::cluster_name(&args.name)?;
    let mut node = NodeIdentity::load(&args.node)?;
    let target = ClusterRef::Name(args.name.clone());
    let wait_until = Instant::now() + Duration::from_secs(args.wait);
    let mut registry = args.registry.clone();
    registry.retry_for = registry.retry_for.max(args.wait);
    let (node_id, view) = connect_and(&registry, |mut client| {
        let node = &node;
        let target = &target;
        async move {
            let node_id = client.register(node).await?;
            let (cluster, slot) = client.join(Some(target)).await?;
            eprintln!("xlreg: joined cluster {} as slot {slot}", cluster.name);
            let view = wait_for_members(&mut client, &cluster.id, wait_until).await?;
            client.bye().await?;
            Ok((node_id, view))
        }
    })
    .await?;
    remember_id(&mut node, Some(&args.node), &node_id)?;
    print_cluster(&view, args.json)?;
    if args.wait > 0 && !view.is_complete() {
        anyhow::bail!(
            "cluster {} is not complete after {} s ({}/{} members)",
            view.cluster.name,
            args.wait,
            view.members.len(),
            view.cluster.max_size
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists the cluster, holding each request up to 5 s at the registry, until it is complete
/// or `until` passes; reports progress on stderr.
async fn wait_for_members(
    client: &mut Client,
    cluster: &Id,
    until: Instant,
) -> Result<ClusterView, ClientError> {
    let target = ClusterRef::Id(cluster.clone());
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let view = client
            .get_cluster(Some(&target), None, left.min(Duration::from_secs(5)))
            .await?;
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

async fn members(args: MembersArgs) -> anyhow::Result<ExitCode> {
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
    print_cluster(&view, args.json)?;
    Ok(ExitCode::SUCCESS)
}
