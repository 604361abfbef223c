//! The owner's commands: `xlreg cluster token create|list|revoke`, `cluster evict`,
//! `cluster close` and `cluster delete`, and the owner file they read.
//!
//! The owner file holds the owner credential of one cluster with the cluster's name and ID
//! (every owner proof covers the ID, so a command that names the cluster by name still
//! needs it). It is written with mode 0600 and read with a warning if others may read it:
//!
//! ```text
//! # xlreg owner credential: it manages cluster NAME. Keep it secret.
//! cluster: NAME
//! id: <64 hex digits>
//! owner: <32 characters of a-z2-7>
//! ```

use std::future::Future;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use super::cluster::{connect_and, RegistryArgs};
use super::exit::{CliError, Failure};
use super::output::{cluster_info_json, print_json};
use crate::client::{
    self, Client, ClientError, ClusterOwner, TokenInfo, TokenTerms, USAGE_JOIN, USAGE_LIST,
};
use crate::id::Id;
use crate::join_string::JoinString;
use crate::model::admission::{check_token_id, JoinTokenSecret, OwnerSecret};
use crate::proto::ErrCode;
use crate::regcred::RegCred;
use crate::store::ClusterRef;

/// Mode of the owner file: only its owner may read it.
pub const OWNER_FILE_MODE: u32 = 0o600;

/// Largest owner file read (a real one is about 200 bytes).
const MAX_OWNER_FILE_LEN: u64 = 4096;

/// An owner file: the credential that manages one cluster.
#[derive(Debug, Clone)]
pub struct OwnerFile {
    /// The cluster's name.
    pub name: String,
    /// The cluster's ID and the owner credential.
    pub owner: ClusterOwner,
}

impl OwnerFile {
    /// Reads and checks an owner file; warns on stderr if group or others may read it.
    pub fn read(path: &Path) -> anyhow::Result<OwnerFile> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read the owner file {}", path.display()))?;
        let mode = file.metadata()?.permissions().mode();
        let mut text = zeroize::Zeroizing::new(String::new());
        file.take(MAX_OWNER_FILE_LEN + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read the owner file {}", path.display()))?;
        if text.len() as u64 > MAX_OWNER_FILE_LEN {
            return Err(bad_file(path, "it is far larger than an owner file"));
        }
        if mode & 0o077 != 0 {
            eprintln!(
                "xlreg: the owner file {} is readable by other users; restrict it with `chmod 600`",
                path.display()
            );
        }
        OwnerFile::parse(&text).map_err(|problem| bad_file(path, &problem))
    }

    /// Parses the text of an owner file.
    fn parse(text: &str) -> Result<OwnerFile, String> {
        let (mut name, mut id, mut secret) = (None, None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err("every line must be `key: value`".into());
            };
            let slot = match key.trim() {
                "cluster" => &mut name,
                "id" => &mut id,
                "owner" => &mut secret,
                other => return Err(format!("unknown field {other:?}")),
            };
            if slot.replace(value.trim()).is_some() {
                return Err(format!("field {:?} appears twice", key.trim()));
            }
        }
        let name = name.ok_or("no `cluster:` line")?;
        crate::validate::cluster_name(name).map_err(|e| e.to_string())?;
        let id = Id::from_hex(id.ok_or("no `id:` line")?).map_err(|e| format!("id: {e}"))?;
        let secret = OwnerSecret::parse(secret.ok_or("no `owner:` line")?)
            .map_err(|e| format!("owner: {e}"))?;
        Ok(OwnerFile {
            name: name.to_string(),
            owner: ClusterOwner {
                cluster: id,
                secret,
            },
        })
    }

    /// Writes the file atomically with mode 0600 (never readable by others, not even
    /// briefly).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = zeroize::Zeroizing::new(format!(
            "# xlreg owner credential: it manages cluster {}. Keep it secret.\n\
             cluster: {}\nid: {}\nowner: {}\n",
            self.name,
            self.name,
            self.owner.cluster.to_hex(),
            self.owner.secret.expose()
        ));
        crate::regcred::write_atomic(path, text.as_bytes(), OWNER_FILE_MODE)
            .with_context(|| format!("cannot write the owner file {}", path.display()))
    }

    /// Refuses a command that names another cluster than this file's.
    pub fn check_target(&self, path: &Path, target: &ClusterRef) -> anyhow::Result<()> {
        let matches = match target {
            ClusterRef::Id(id) => *id == self.owner.cluster,
            ClusterRef::Name(name) => *name == self.name,
        };
        if matches {
            return Ok(());
        }
        Err(CliError::new(
            Failure::Usage,
            format!(
                "{} is the owner file of cluster {} ({}), not {target}",
                path.display(),
                self.name,
                self.owner.cluster
            ),
        )
        .into())
    }
}

fn bad_file(path: &Path, problem: &str) -> anyhow::Error {
    CliError::new(
        Failure::Usage,
        format!("{} is not an owner file: {problem}", path.display()),
    )
    .into()
}

/// The join string of `token` for `cluster` on the registry of `regcred`.
pub fn join_string(regcred: &RegCred, cluster: &Id, token: JoinTokenSecret) -> JoinString {
    JoinString {
        token,
        cluster: cluster.clone(),
        pin: client::pin_of(regcred),
        endpoints: regcred.endpoints.clone(),
    }
}

/// Options every owner command takes.
#[derive(Debug, clap::Args)]
pub struct OwnerArgs {
    /// Cluster name, or its ID (64 hex digits).
    cluster: String,
    /// The owner file `cluster create --owner-file` wrote.
    #[arg(long, value_name = "FILE", env = "XLREG_OWNER_FILE")]
    owner_file: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl OwnerArgs {
    /// Runs `session` against the registry ([`connect_and`]); a refused owner proof is
    /// explained in terms of the owner file.
    async fn session<T, F, Fut>(&self, file: &OwnerFile, session: F) -> anyhow::Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        connect_and(&self.registry, session).await.map_err(|error| {
            let refused = matches!(
                error.downcast_ref::<ClientError>(),
                Some(ClientError::Refused {
                    code: Some(ErrCode::Unauthorized),
                    ..
                })
            );
            if refused {
                error.context(format!(
                    "the registry refused the owner file {} for cluster {}: it does not hold \
                     the cluster's owner credential (or the cluster was deleted)",
                    self.owner_file.display(),
                    file.name
                ))
            } else {
                error
            }
        })
    }

    /// The owner file, checked against the cluster named.
    fn owner(&self) -> anyhow::Result<OwnerFile> {
        let target = crate::validate::cluster_ref(&self.cluster)?;
        let file = OwnerFile::read(&self.owner_file)?;
        file.check_target(&self.owner_file, &target)?;
        Ok(file)
    }
}

/// `xlreg cluster token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a join token and print its join string.
    Create(TokenCreateArgs),
    /// List the cluster's tokens: ids, usages, expiry, uses left (never secrets).
    List(OwnerArgs),
    /// Revoke a token: it admits nobody from now on (members stay).
    Revoke(TokenRevokeArgs),
}

/// A token usage on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Usage {
    /// Admits new members.
    Join,
    /// Lets its holder list the cluster's members.
    List,
}

/// Options of `cluster token create`.
#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    /// How long the token is valid ("24h", "30m", "7d"; "0": never expires). Default 24 h.
    #[arg(long, value_name = "DUR", value_parser = super::admin::parse_duration)]
    ttl: Option<Duration>,
    /// How many nodes it admits (default: no limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    uses: Option<u32>,
    /// What it allows (repeat or separate by commas): join, list. Default: join.
    #[arg(
        long = "usage",
        value_name = "USAGE",
        value_delimiter = ',',
        default_value = "join"
    )]
    usages: Vec<Usage>,
}

/// Options of `cluster token revoke`.
#[derive(Debug, clap::Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    /// The token id (the part before the '.').
    tid: String,
}

/// Options of `cluster evict`.
#[derive(Debug, clap::Args)]
pub struct EvictArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    /// The member to remove: its node ID (64 hex digits) or its name.
    member: String,
}

/// Runs `xlreg cluster token ...`.
pub async fn run_token(command: TokenCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => token_create(args, json).await,
        TokenCommand::List(args) => token_list(args, json).await,
        TokenCommand::Revoke(args) => token_revoke(args, json).await,
    }
}

async fn token_create(args: TokenCreateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let file = args.owner.owner()?;
    let regcred = RegCred::read(&args.owner.registry.regcred)?;
    let terms = TokenTerms {
        usages: args.usages.iter().fold(0, |bits, usage| {
            bits | match usage {
                Usage::Join => USAGE_JOIN,
                Usage::List => USAGE_LIST,
            }
        }),
        ttl: args.ttl,
        uses: args.uses,
    };
    let token = JoinTokenSecret::generate(&mut rand::rng());
    let owner = &file.owner;
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let info = args
        .owner
        .session(&file, |mut client| {
            let (token, attempts) = (&token, &attempts);
            async move {
                let retry = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
                let info = match client.mint_token(owner, token, &terms).await {
                    Ok(info) => info,
                    // A retry after a lost reply finds the token minted: on a retry, a Conflict
                    // on this fresh random tid means the first attempt stored it (the registry
                    // closes the session after an Error: no Bye).
                    Err(ClientError::Refused {
                        code: Some(ErrCode::Conflict),
                        ..
                    }) if retry => return Ok(None),
                    Err(error) => return Err(error),
                };
                client.bye().await?;
                Ok(Some(info))
            }
        })
        .await?;
    let info = match info {
        Some(info) => info,
        None => listed_token(&args.owner.registry, owner, token.id()).await?,
    };
    let join = join_string(&regcred, &owner.cluster, token);
    if json {
        print_json(&serde_json::json!({
            "token": token_json(&info),
            "join_token": join.to_text().as_str(),
        }))?;
    } else {
        outln!("{}", join.to_text().as_str())?;
        eprintln!(
            "xlreg: token {} for cluster {}: {}",
            info.id,
            file.name,
            describe_terms(&info)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The token `tid` as the registry lists it.
async fn listed_token(
    registry: &RegistryArgs,
    owner: &ClusterOwner,
    tid: &str,
) -> anyhow::Result<TokenInfo> {
    let tokens = connect_and(registry, |mut client| async move {
        let tokens = client.list_tokens(owner).await?;
        client.bye().await?;
        Ok(tokens)
    })
    .await?;
    tokens
        .into_iter()
        .find(|t| t.id == tid)
        .ok_or_else(|| anyhow::anyhow!("token {tid} was refused as a duplicate but is not listed"))
}

async fn token_list(args: OwnerArgs, json: bool) -> anyhow::Result<ExitCode> {
    let file = args.owner()?;
    let owner = &file.owner;
    let tokens = args
        .session(&file, |mut client| async move {
            let tokens = client.list_tokens(owner).await?;
            client.bye().await?;
            Ok(tokens)
        })
        .await?;
    if json {
        print_json(&serde_json::json!({
            "cluster": { "name": file.name, "id": owner.cluster.to_hex() },
            "tokens": tokens.iter().map(token_json).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "cluster {} ({}): {} token(s)",
        file.name,
        owner.cluster,
        tokens.len()
    )?;
    outln!(
        "{:<16}  {:<9}  {:<20}  {:<9}  STATE",
        "ID",
        "USAGES",
        "EXPIRES",
        "USES LEFT"
    )?;
    let now = SystemTime::now();
    for token in &tokens {
        outln!(
            "{:<16}  {:<9}  {:<20}  {:<9}  {}",
            token.id,
            usages_text(token.usages),
            token
                .expires_at
                .map_or("never".to_string(), |at| humantime::format_rfc3339_seconds(
                    at
                )
                .to_string()),
            token
                .uses_left
                .map_or("unlimited".to_string(), |n| n.to_string()),
            token.state_at(now).as_str()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn token_revoke(args: TokenRevokeArgs, json: bool) -> anyhow::Result<ExitCode> {
    check_token_id(&args.tid).map_err(|e| CliError::new(Failure::Usage, e.to_string()))?;
    let file = args.owner.owner()?;
    let owner = &file.owner;
    let tid = &args.tid;
    let info = args
        .owner
        .session(&file, |mut client| async move {
            let info = client.revoke_token(owner, tid).await?;
            client.bye().await?;
            Ok(info)
        })
        .await?;
    if json {
        print_json(&serde_json::json!({ "revoked": token_json(&info) }))?;
    } else {
        outln!("token {} of cluster {} is revoked", info.id, file.name)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `xlreg cluster evict`.
pub async fn evict(args: EvictArgs, json: bool) -> anyhow::Result<ExitCode> {
    let file = args.owner.owner()?;
    let owner = &file.owner;
    let by_id = (args.member.len() == 64 || args.member.len() == 40)
        .then(|| Id::from_hex(&args.member).ok())
        .flatten();
    let member_name = &args.member;
    let (cluster, member) = args
        .owner
        .session(&file, |mut client| {
            let by_id = by_id.clone();
            async move {
                let member = match by_id {
                    Some(id) => id,
                    None => {
                        let view = client
                            .get_cluster_as_owner(owner, None, Duration::ZERO)
                            .await?;
                        match view.members.into_iter().find(|m| m.name == *member_name) {
                            Some(member) => member.id,
                            None => {
                                return Ok(Err(CliError::new(
                                    Failure::NotFound,
                                    format!(
                                        "cluster {} has no member named {member_name:?}",
                                        view.cluster.name
                                    ),
                                )))
                            }
                        }
                    }
                };
                let cluster = client.evict(owner, &member).await?;
                client.bye().await?;
                Ok(Ok((cluster, member)))
            }
        })
        .await??;
    if json {
        print_json(&serde_json::json!({
            "evicted": member.to_hex(),
            "cluster": cluster_info_json(&cluster),
        }))?;
    } else {
        outln!(
            "evicted {} from cluster {} ({}/{} members now)",
            member,
            cluster.name,
            cluster.size,
            cluster.max_size
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `xlreg cluster close`.
pub async fn close(args: OwnerArgs, json: bool) -> anyhow::Result<ExitCode> {
    let file = args.owner()?;
    let owner = &file.owner;
    let cluster = args
        .session(&file, |mut client| async move {
            let cluster = client.close_cluster(owner).await?;
            client.bye().await?;
            Ok(cluster)
        })
        .await?;
    if json {
        print_json(&serde_json::json!({ "closed": cluster_info_json(&cluster) }))?;
    } else {
        outln!(
            "cluster {} is closed to new members ({}/{} members)",
            cluster.name,
            cluster.size,
            cluster.max_size
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `xlreg cluster delete`.
pub async fn delete(args: OwnerArgs, json: bool) -> anyhow::Result<ExitCode> {
    let file = args.owner()?;
    let owner = &file.owner;
    let cluster = args
        .session(&file, |mut client| async move {
            let cluster = client.delete_cluster(owner).await?;
            client.bye().await?;
            Ok(cluster)
        })
        .await?;
    if json {
        print_json(&serde_json::json!({ "deleted": cluster_info_json(&cluster) }))?;
    } else {
        outln!(
            "cluster {} ({}) is deleted, with its {} member(s) and its tokens",
            cluster.name,
            cluster.id,
            cluster.size
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `join`, `list`, or `join,list`.
fn usages_text(bits: u32) -> String {
    let mut names = Vec::new();
    if bits & USAGE_JOIN != 0 {
        names.push("join");
    }
    if bits & USAGE_LIST != 0 {
        names.push("list");
    }
    names.join(",")
}

/// The JSON object for a token: never a secret.
pub fn token_json(token: &TokenInfo) -> serde_json::Value {
    let time = |at: SystemTime| humantime::format_rfc3339_seconds(at).to_string();
    serde_json::json!({
        "id": token.id,
        "usages": usages_text(token.usages).split(',').filter(|u| !u.is_empty()).collect::<Vec<_>>(),
        "expires_at": token.expires_at.map(time),
        "created_at": time(token.created_at),
        "uses_left": token.uses_left,
        "revoked": token.revoked,
        "state": token.state_at(SystemTime::now()).as_str(),
    })
}

/// "admits 3 nodes until 2026-12-01T03:00:00Z", for people.
pub fn describe_terms(token: &TokenInfo) -> String {
    let nodes = match token.uses_left {
        Some(1) => "admits 1 node".to_string(),
        Some(n) => format!("admits {n} nodes"),
        None => "admits any number of nodes".to_string(),
    };
    match token.expires_at {
        Some(at) => format!("{nodes} until {}", humantime::format_rfc3339_seconds(at)),
        None => format!("{nodes}, never expires"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.owner");
        let file = OwnerFile {
            name: "web".into(),
            owner: ClusterOwner {
                cluster: Id::from_bytes(&[7; 32]).unwrap(),
                secret: OwnerSecret::generate(&mut rand::rng()),
            },
        };
        file.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = OwnerFile::read(&path).unwrap();
        assert_eq!(read.name, "web");
        assert_eq!(read.owner.cluster, file.owner.cluster);
        assert_eq!(read.owner.secret, file.owner.secret);
    }

    #[test]
    fn a_broken_owner_file_is_refused_with_the_problem_named() {
        let id = "07".repeat(32);
        let owner = "abcdefghijklmnopqrstuvwxyz234567";
        for (text, problem) in [
            (format!("id: {id}\nowner: {owner}\n"), "no `cluster:` line"),
            (format!("cluster: web\nowner: {owner}\n"), "no `id:` line"),
            (format!("cluster: web\nid: {id}\n"), "no `owner:` line"),
            (
                format!("cluster: web\ncluster: web\nid: {id}\nowner: {owner}\n"),
                "appears twice",
            ),
            (
                format!("cluster: web\nid: {id}\nowner: {owner}\nextra: 1\n"),
                "unknown field",
            ),
            (format!("cluster: web\nid: {id}\nowner: short\n"), "owner:"),
            (format!("cluster: web\nid: 12\nowner: {owner}\n"), "id:"),
            ("just a line\n".to_string(), "key: value"),
        ] {
            let error = OwnerFile::parse(&text).unwrap_err();
            assert!(error.contains(problem), "{text:?}: {error}");
            assert!(!error.contains(owner), "the secret leaked: {error}");
        }
    }

    #[test]
    fn an_oversized_owner_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.owner");
        std::fs::write(&path, "#".repeat(MAX_OWNER_FILE_LEN as usize + 1)).unwrap();
        let error = OwnerFile::read(&path).unwrap_err();
        assert!(error.to_string().contains("far larger"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn no_text_makes_the_owner_file_parser_panic(text in "\\PC{0,400}") {
            let _ = OwnerFile::parse(&text);
            let _ = OwnerFile::parse(&format!("cluster: web\nid: {}\n{text}", "07".repeat(32)));
        }
    }

    #[test]
    fn usages_read_as_words() {
        assert_eq!(usages_text(USAGE_JOIN | USAGE_LIST), "join,list");
        assert_eq!(usages_text(USAGE_LIST), "list");
    }
}
