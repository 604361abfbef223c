//! `xlreg cluster create|join|members|leave` (the owner's commands are in `owner`), and the
//! session helper the node commands share: [`Reach`] (a regCred.dat, or a join string's pin)
//! and [`connect_and`].

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::exit::{CliError, Failure};
use super::output::{cluster_info_json, print_cluster, print_json};
use super::owner;
use crate::client::{
    self, Client, ClientError, ClusterInfo, ClusterOwner, ClusterView, EndpointOrder, TokenTerms,
};
use crate::crypto::{RsaKeyPair, RSA_BITS};
use crate::id::Id;
use crate::join_string::JoinString;
use crate::model::admission::{JoinTokenSecret, OwnerSecret};
use crate::node::NodeIdentity;
use crate::proto::ErrCode;
use crate::regcred::RegCred;
use crate::store::ClusterRef;

/// How long to keep trying, and how long to wait for a connection.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
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

/// How to reach the registry.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The registry's regCred.dat.
    #[arg(long, value_name = "FILE", env = "XLREG_REGCRED")]
    pub regcred: PathBuf,
    #[command(flatten)]
    pub retry: RetryArgs,
}

/// How to reach the registry when a join string may stand in for regCred.dat.
#[derive(Debug, Clone, clap::Args)]
pub struct PinnedRegistryArgs {
    /// The registry's regCred.dat. Not needed with `--token JOIN_STRING`: the join string
    /// names the registry's endpoints and pins its keys.
    #[arg(long, value_name = "FILE", env = "XLREG_REGCRED")]
    pub regcred: Option<PathBuf>,
    #[command(flatten)]
    pub retry: RetryArgs,
}

/// How to reach the registry: the keys in a regCred.dat, or a join string's endpoints and
/// pin (its credentials are fetched and checked against the pin on every connection).
#[derive(Debug)]
pub enum Reach {
    /// A regCred.dat read from a file.
    File(Box<RegCred>),
    /// A join string, without a regCred.dat.
    Pinned(JoinString),
}

impl Reach {
    /// The reach of `regcred` if given (checked against the join string's pin, if any), or
    /// else of the join string.
    fn of(regcred: Option<&PathBuf>, join: Option<&JoinString>) -> anyhow::Result<Reach> {
        match (regcred, join) {
            (Some(path), join) => {
                let regcred = RegCred::read(path)?;
                if let Some(join) = join {
                    client::check_pin(&regcred, &join.pin, regcred.endpoint()).with_context(
                        || format!("checking {} against the join string", path.display()),
                    )?;
                }
                Ok(Reach::File(Box::new(regcred)))
            }
            (None, Some(join)) => Ok(Reach::Pinned(join.clone())),
            (None, None) => Err(CliError::new(
                Failure::Usage,
                "give the registry's credentials (--regcred FILE) or a join string (--token)",
            )
            .into()),
        }
    }

    /// The registry's endpoints, as the credentials or the join string list them.
    fn endpoints(&self) -> &[String] {
        match self {
            Reach::File(regcred) => &regcred.endpoints,
            Reach::Pinned(join) => &join.endpoints,
        }
    }

    /// A handshaken session: xlReg/3 when the credentials have handshake keys, never
    /// falling back. A regCred.dat's endpoints are tried in `order` (several servers on
    /// etcd); a join string's in its own order, each checked against its pin.
    async fn connect(
        &self,
        order: &EndpointOrder,
        dial_timeout: Duration,
    ) -> Result<Client, ClientError> {
        match self {
            Reach::File(regcred) => {
                Client::connect_any(
                    order,
                    client::RegistryKeys::of(regcred),
                    dial_timeout,
                    client::DEFAULT_TIMEOUT,
                )
                .await
            }
            Reach::Pinned(join) => {
                let (client, _) =
                    Client::dial_pinned(join, dial_timeout, client::DEFAULT_TIMEOUT).await?;
                Ok(client)
            }
        }
    }
}

/// How the name of every throwaway identity starts, so `admin delete-node --throwaway` can
/// find them.
pub const THROWAWAY_PREFIX: &str = "xlreg-cli-";

/// How long transient failures are retried when `--retry-for` is not given.
const DEFAULT_RETRY: Duration = Duration::from_secs(30);

/// `xlreg cluster ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster and print its ID, its owner credential and a join token (with
    /// `--open`: an open cluster, and only its ID).
    Create(CreateArgs),
    /// Join a cluster, wait until it is complete, and print its members.
    Join(JoinArgs),
    /// Print a cluster's members (as a member, a list-token holder or the owner).
    Members(MembersArgs),
    /// Mint, list and revoke a cluster's join tokens (owner).
    #[command(subcommand)]
    Token(owner::TokenCommand),
    /// Leave a cluster: the node's slot becomes free.
    Leave(LeaveArgs),
    /// Remove a member from a cluster; its slot becomes free (owner).
    Evict(owner::EvictArgs),
    /// Close a cluster to new members for good; members stay (owner).
    Close(owner::OwnerArgs),
    /// Delete a cluster, its members and its tokens (owner).
    Delete(owner::OwnerArgs),
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
    /// Create an open cluster: anyone holding regCred.dat may list it and join it, as
    /// before admission control (and as xlReg 1.9 clients need). No owner, no token.
    #[arg(long, conflicts_with_all = ["token_ttl", "token_uses", "owner_file"])]
    open: bool,
    /// How long the first join token admits nodes ("24h", "30m", "7d"; "0": never expires).
    #[arg(long, value_name = "DUR", value_parser = super::admin::parse_duration)]
    token_ttl: Option<Duration>,
    /// How many nodes the first join token admits (default: no limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    token_uses: Option<u32>,
    /// Also write the owner credential to this file (mode 0600). If the file exists, its
    /// credential is used: running the same create again returns the same cluster.
    #[arg(long, value_name = "FILE")]
    owner_file: Option<PathBuf>,
}

/// Options of `xlreg cluster join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Cluster name, or its ID (64 hex digits).
    cluster: String,
    /// The node's identity directory.
    #[arg(long, env = "XLREG_NODE")]
    node: PathBuf,
    /// A join string (`xlreg1:...`, from `cluster create` or `cluster token create`), or a
    /// bare token `tid.secret` together with `--regcred` and the cluster's ID. Without it,
    /// only open clusters and existing members join. Secret: pass it through
    /// XLREG_JOIN_TOKEN rather than a command line others can read.
    #[arg(
        long,
        value_name = "STRING",
        env = "XLREG_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(flatten)]
    registry: PinnedRegistryArgs,
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
    registry: PinnedRegistryArgs,
    /// Node identity to ask as (a member sees its cluster). Without --node, --token or
    /// --owner-file, a throwaway identity is registered, which sees open clusters only;
    /// remove such nodes with `xlreg admin delete-node --throwaway`.
    #[arg(long, env = "XLREG_NODE")]
    node: Option<PathBuf>,
    /// Ask as the holder of a token with the `list` usage: its join string, or `tid.secret`
    /// with --regcred and the cluster's ID. Used instead of --node if both are given.
    #[arg(long, value_name = "STRING")]
    token: Option<String>,
    /// Ask as the cluster's owner, with the owner file `cluster create --owner-file` wrote.
    /// Used instead of --token and --node if given.
    #[arg(long, value_name = "FILE")]
    owner_file: Option<PathBuf>,
}

/// Options of `xlreg cluster leave`.
#[derive(Debug, clap::Args)]
pub struct LeaveArgs {
    /// Cluster name, or its ID (64 hex digits).
    cluster: String,
    /// The node's identity directory.
    #[arg(long, env = "XLREG_NODE")]
    node: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Runs `xlreg cluster ...`.
pub async fn run(command: ClusterCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Create(args) => create(args, json).await,
        ClusterCommand::Join(args) => join(args, json).await,
        ClusterCommand::Members(args) => members(args, json).await,
        ClusterCommand::Token(command) => owner::run_token(command, json).await,
        ClusterCommand::Leave(args) => leave(args, json).await,
        ClusterCommand::Evict(args) => owner::evict(args, json).await,
        ClusterCommand::Close(args) => owner::close(args, json).await,
        ClusterCommand::Delete(args) => owner::delete(args, json).await,
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
    let reach = Reach::File(Box::new(RegCred::read(&args.regcred)?));
    connect_and_for(&reach, &args.retry, Duration::ZERO, session).await
}

/// [`connect_and`] for any [`Reach`], retrying for at least `at_least` (a long wait
/// outlives the default). Without `--retry-for`, a refused connection on the first attempt
/// fails at once (nothing runs there: interactive use wants that answer now), while one
/// after a session has been established is a restart, and is retried.
pub async fn connect_and_for<T, F, Fut>(
    reach: &Reach,
    retry: &RetryArgs,
    at_least: Duration,
    session: F,
) -> anyhow::Result<T>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let budget = retry
        .retry_for
        .map_or(DEFAULT_RETRY, Duration::from_secs)
        .max(at_least);
    let retry_refused = retry.retry_for.is_some();
    let connected = std::sync::atomic::AtomicBool::new(false);
    let dial_timeout = Duration::from_secs(retry.connect_timeout);
    // Shuffled once; each attempt starts at the endpoint that last answered, or the one
    // after an endpoint whose session was cut short.
    let order = EndpointOrder::shuffled(reach.endpoints());
    let result = client::retry_if(
        Instant::now() + budget,
        |error| {
            retry_refused
                || connected.load(std::sync::atomic::Ordering::Relaxed)
                || !error.nothing_listens()
        },
        |error, backoff| eprintln!("xlreg: {error}; retrying in {backoff:?}"),
        || {
            let session = &session;
            let connected = &connected;
            let order = &order;
            async move {
                let client = reach.connect(order, dial_timeout).await?;
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

/// What `--token` gave: a token, and the join string it came in (if it came in one).
struct GivenToken {
    token: JoinTokenSecret,
    join: Option<JoinString>,
}

impl GivenToken {
    /// Parses `--token`: a join string, or a bare `tid.secret`.
    fn parse(text: &str) -> anyhow::Result<GivenToken> {
        if text.trim_start().starts_with("xlreg") {
            let join = JoinString::parse(text)
                .map_err(|e| CliError::new(Failure::Usage, e.to_string()))?;
            return Ok(GivenToken {
                token: join.token.clone(),
                join: Some(join),
            });
        }
        let token = JoinTokenSecret::parse(text).map_err(|e| {
            CliError::new(
                Failure::Usage,
                format!("--token: {e}, or a join string (xlreg1:...)"),
            )
        })?;
        Ok(GivenToken { token, join: None })
    }

    /// The cluster ID the token's proofs must cover: the join string's (which `target`, if
    /// an ID, must equal), or `target`'s own for a bare token.
    fn cluster_id(&self, target: &ClusterRef) -> anyhow::Result<Id> {
        match (&self.join, target) {
            (Some(join), ClusterRef::Id(id)) if *id != join.cluster => Err(CliError::new(
                Failure::Usage,
                format!("the join string is for cluster {}, not {id}", join.cluster),
            )
            .into()),
            (Some(join), _) => Ok(join.cluster.clone()),
            (None, ClusterRef::Id(id)) => Ok(id.clone()),
            (None, ClusterRef::Name(name)) => Err(CliError::new(
                Failure::Usage,
                format!(
                    "a bare token needs the cluster's ID, not its name ({name}): give the \
                     ID, or the whole join string"
                ),
            )
            .into()),
        }
    }
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
    if args.open {
        return create_open(args, json).await;
    }
    let mut node = identity(args.node.as_ref())?;
    let regcred = RegCred::read(&args.registry.regcred)?;
    // A retry of this create, or a second run with the same owner file, sends the same
    // owner credential, so it finds the cluster the first one made.
    let (secret, owner_file_exists) = match &args.owner_file {
        Some(path) if path.exists() => {
            let file = owner::OwnerFile::read(path)?;
            if file.name != args.name {
                return Err(CliError::new(
                    Failure::Usage,
                    format!(
                        "{} is the owner file of cluster {}, not {}",
                        path.display(),
                        file.name,
                        args.name
                    ),
                )
                .into());
            }
            (file.owner.secret, true)
        }
        _ => (OwnerSecret::generate(&mut rand::rng()), false),
    };
    let token = JoinTokenSecret::generate(&mut rand::rng());
    let terms = TokenTerms {
        usages: client::USAGE_JOIN,
        ttl: args.token_ttl,
        uses: args.token_uses,
    };
    let reach = Reach::File(Box::new(regcred.clone()));
    let (node_id, cluster, minted) = connect_and_for(
        &reach,
        &args.registry.retry,
        Duration::ZERO,
        |mut client| {
            let (node, name, secret, token) = (&node, &args.name, &secret, &token);
            async move {
                let node_id = client.register(node).await?;
                let cluster = client
                    .create_owned(
                        name,
                        args.size,
                        args.endpoints,
                        secret,
                        false,
                        Some((token, &terms)),
                    )
                    .await?;
                // A cluster this owner created before keeps its tokens, and the registry
                // stores a Create's first token only for a new cluster: mint it now if it
                // is not there, so the join string printed below admits.
                let owner = ClusterOwner {
                    cluster: cluster.id.clone(),
                    secret: secret.clone(),
                };
                let tokens = client.list_tokens(&owner).await?;
                let minted = match tokens.into_iter().find(|t| t.id == token.id()) {
                    Some(info) => info,
                    None => client.mint_token(&owner, token, &terms).await?,
                };
                client.bye().await?;
                Ok((node_id, cluster, minted))
            }
        },
    )
    .await?;
    remember_id(&mut node, args.node.as_ref(), &node_id)?;
    warn_if_kept(&args, &cluster);
    let owner = ClusterOwner {
        cluster: cluster.id.clone(),
        secret,
    };
    if let (Some(path), false) = (&args.owner_file, owner_file_exists) {
        owner::OwnerFile {
            name: cluster.name.clone(),
            owner: owner.clone(),
        }
        .write(path)?;
    }
    let join = owner::join_string(&regcred, &cluster.id, token);
    if json {
        print_json(&serde_json::json!({
            "cluster": cluster_info_json(&cluster),
            "owner": owner.secret.expose(),
            "join_token": join.to_text().as_str(),
            "token": owner::token_json(&minted),
        }))?;
    } else {
        outln!("cluster:    {}", cluster.id)?;
        outln!("owner:      {}", owner.secret.expose())?;
        outln!("join token: {}", join.to_text().as_str())?;
        eprintln!(
            "xlreg: keep the owner credential secret: it manages cluster {}{}; hand the join \
             token to the nodes that may join ({})",
            cluster.name,
            args.owner_file
                .as_ref()
                .map(|p| format!(" (also in {})", p.display()))
                .unwrap_or_default(),
            owner::describe_terms(&minted)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cluster create --open`: an open cluster without owner, exactly as before admission.
async fn create_open(args: CreateArgs, json: bool) -> anyhow::Result<ExitCode> {
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
    warn_if_kept(&args, &cluster);
    if json {
        print_json(&serde_json::json!({ "cluster": cluster_info_json(&cluster) }))?;
    } else {
        outln!("{}", cluster.id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Says so when an existing cluster kept its own size or endpoint count.
fn warn_if_kept(args: &CreateArgs, cluster: &ClusterInfo) {
    if cluster.max_size != args.size || cluster.endpoint_count != args.endpoints {
        eprintln!(
            "xlreg: cluster {} already exists with {} slots and {} endpoint(s) each; it keeps them",
            cluster.name, cluster.max_size, cluster.endpoint_count
        );
    }
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
    let given = args.token.as_deref().map(GivenToken::parse).transpose()?;
    let proof = match &given {
        Some(given) => Some((&given.token, given.cluster_id(&target)?)),
        None => None,
    };
    let reach = Reach::of(
        args.registry.regcred.as_ref(),
        given.as_ref().and_then(|g| g.join.as_ref()),
    )?;
    let mut node = identity(Some(&args.node))?;
    let wait_until = Instant::now() + Duration::from_secs(args.wait);
    let progress = std::sync::Mutex::new(JoinProgress::default());
    let session = connect_and_for(
        &reach,
        &args.registry.retry,
        Duration::from_secs(args.wait),
        |mut client| {
            let node = &node;
            let target = &target;
            let progress = &progress;
            let proof = &proof;
            async move {
                let node_id = client.register(node).await?;
                // A retry after a lost reply finds the node a member: it rejoins by its
                // own key, and the token is not used twice.
                let (cluster, slot) = match proof {
                    Some((token, cluster_id)) => {
                        client
                            .join_with_token(target, cluster_id, token, node, &node_id)
                            .await?
                    }
                    None => client.join(Some(target)).await?,
                };
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
        result = session => result.map_err(|error| {
            let not_found = matches!(
                error.downcast_ref::<ClientError>(),
                Some(ClientError::Refused { code: Some(ErrCode::NotFound), .. })
            );
            if not_found && given.is_none() {
                error.context(
                    "without a join token only members and open clusters can be joined: \
                     give --token JOIN_STRING",
                )
            } else {
                error
            }
        })?,
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
    let view = if let Some(path) = &args.owner_file {
        let file = owner::OwnerFile::read(path)?;
        file.check_target(path, &target)?;
        let reach = Reach::of(args.registry.regcred.as_ref(), None)?;
        let owner = &file.owner;
        connect_and_for(
            &reach,
            &args.registry.retry,
            Duration::ZERO,
            |mut client| async move {
                let view = client
                    .get_cluster_as_owner(owner, None, Duration::ZERO)
                    .await?;
                client.bye().await?;
                Ok(view)
            },
        )
        .await?
    } else if let Some(text) = &args.token {
        let given = GivenToken::parse(text)?;
        let cluster_id = given.cluster_id(&target)?;
        let reach = Reach::of(args.registry.regcred.as_ref(), given.join.as_ref())?;
        let (target, cluster_id, token) = (&target, &cluster_id, &given.token);
        connect_and_for(
            &reach,
            &args.registry.retry,
            Duration::ZERO,
            |mut client| async move {
                let view = client
                    .get_cluster_with_token(target, cluster_id, token, None, Duration::ZERO)
                    .await?;
                client.bye().await?;
                Ok(view)
            },
        )
        .await?
    } else {
        let reach = Reach::of(args.registry.regcred.as_ref(), None)?;
        let mut node = identity(args.node.as_ref())?;
        let (node_id, view) = connect_and_for(
            &reach,
            &args.registry.retry,
            Duration::ZERO,
            |mut client| {
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
            },
        )
        .await?;
        remember_id(&mut node, args.node.as_ref(), &node_id)?;
        view
    };
    print_cluster(&view, json)?;
    Ok(ExitCode::SUCCESS)
}

async fn leave(args: LeaveArgs, json: bool) -> anyhow::Result<ExitCode> {
    let target = crate::validate::cluster_ref(&args.cluster)?;
    let mut node = identity(Some(&args.node))?;
    let (node_id, cluster) = connect_and(&args.registry, |mut client| {
        let node = &node;
        let target = &target;
        async move {
            let node_id = client.register(node).await?;
            let cluster = client.leave(target).await?;
            client.bye().await?;
            Ok((node_id, cluster))
        }
    })
    .await?;
    remember_id(&mut node, Some(&args.node), &node_id)?;
    if json {
        print_json(&serde_json::json!({
            "left": cluster_info_json(&cluster),
            "node": node_id.to_hex(),
        }))?;
    } else {
        outln!(
            "node {} left cluster {} ({}/{} members now)",
            node.name,
            cluster.name,
            cluster.size,
            cluster.max_size
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "k3x9p0.abcdefghijklmnopqrstuvwxyz";

    fn join_string(cluster: u8) -> String {
        format!(
            "xlreg1:{TOKEN}:{}:{}@127.0.0.1:56789",
            hex::encode([cluster; 32]),
            "f0".repeat(32)
        )
    }

    #[test]
    fn a_join_string_names_the_cluster_its_proofs_cover() {
        let given = GivenToken::parse(&join_string(0x55)).unwrap();
        assert_eq!(given.token.id(), "k3x9p0");
        let by_name = ClusterRef::Name("web".into());
        assert_eq!(given.cluster_id(&by_name).unwrap().as_bytes(), &[0x55; 32]);
        let same = ClusterRef::Id(Id::from_bytes(&[0x55; 32]).unwrap());
        assert!(given.cluster_id(&same).is_ok());
        let other = ClusterRef::Id(Id::from_bytes(&[0x66; 32]).unwrap());
        let error = given.cluster_id(&other).unwrap_err();
        assert_eq!(super::super::exit::classify(&error), Failure::Usage);
        assert!(error.to_string().contains("is for cluster"), "{error}");
    }

    #[test]
    fn a_bare_token_needs_the_cluster_id_and_bad_text_is_a_usage_error() {
        let given = GivenToken::parse(TOKEN).unwrap();
        assert!(given.join.is_none());
        let id = Id::from_bytes(&[0x55; 32]).unwrap();
        assert_eq!(given.cluster_id(&ClusterRef::Id(id.clone())).unwrap(), id);
        let error = given
            .cluster_id(&ClusterRef::Name("web".into()))
            .unwrap_err();
        assert!(
            error.to_string().contains("needs the cluster's ID"),
            "{error}"
        );
        for bad in ["", "k3x9p0", "xlreg1:nonsense", "xlreg9:later"] {
            let error = GivenToken::parse(bad).err().expect(bad);
            assert_eq!(
                super::super::exit::classify(&error),
                Failure::Usage,
                "{bad}"
            );
            assert!(!error.to_string().contains("abcdefghij"), "{error}");
        }
    }
}
