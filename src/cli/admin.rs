//! `xlreg admin ...`: look inside a registry, export and import it, back it up and restore it,
//! delete clusters, rotate its handshake keys.
//!
//! The read commands (`info`, `clusters`, `cluster`, `nodes`, `node`, `export`, `verify`),
//! `backup`, the deletes (`delete-cluster`, `delete-node`) and `rotate-handshake-keys` open the
//! data directory of a stopped registry, or ask the running daemon through its control
//! socket; either way the output is the same ([`crate::admin::Access`]). `import` and `restore` fill a new data
//! directory. Every command that opens an existing data directory refuses unless the caller
//! owns it, so that no file in it becomes unreadable to the service user.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use super::cluster::THROWAWAY_PREFIX;
use super::exit::{CliError, Failure};
use super::output::print_json;
use super::serve::EtcdArgs;
use super::DataDirArg;
use crate::admin::{backup, export, report, Access, AdminError};
use crate::regcred::write_atomic_with;

/// `xlreg admin ...`
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Show the registry's name, ID, version, schema version, counts and disk use.
    Info(ReadArgs),
    /// List the clusters: name, ID, members/max, endpoint count, created, last touched.
    Clusters(ReadArgs),
    /// Show a cluster and its members, with their endpoints and key fingerprints.
    Cluster(ClusterArgs),
    /// List the registered nodes.
    Nodes(ReadArgs),
    /// Show a node, its public keys and the clusters it is a member of.
    Node(NodeArgs),
    /// Write the registry's public data (nodes, clusters, memberships) as versioned JSON.
    Export(ExportArgs),
    /// Rebuild a registry from an export, in a new data directory (with new keys).
    Import(ImportArgs),
    /// Check every invariant; exits non-zero listing what is wrong.
    Verify(ReadArgs),
    /// Write a consistent point-in-time snapshot, keys included, to a file (mode 0600).
    Backup(BackupArgs),
    /// Restore a snapshot into a new data directory, checking its checksum first.
    Restore(RestoreArgs),
    /// Delete a cluster and its memberships (its nodes stay registered). Works while the
    /// daemon serves: sessions waiting on the cluster are answered.
    DeleteCluster(DeleteClusterArgs),
    /// Delete a registered node that is a member of no cluster (a throwaway identity, say).
    DeleteNode(DeleteNodeArgs),
    /// Move a stopped registry from a sled data directory into an empty etcd prefix
    /// (--from-data-dir), or from etcd into a new or empty directory (--to-data-dir), its
    /// identity included: sealed in etcd with --identity-secret-file (docs/ha.md).
    Migrate(MigrateArgs),
    /// Make new static xlReg/3 handshake keys; the old ones stay accepted for the overlap,
    /// and regCred.dat lists both meanwhile. Works on a stopped registry (its next start
    /// publishes the keys) and while the daemon serves (it swaps its keys and rewrites
    /// regCred.dat at once).
    RotateHandshakeKeys(RotateArgs),
}

/// Options of `admin rotate-handshake-keys`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// How long the old keys stay accepted, so clients holding the old regCred.dat keep
    /// connecting until they fetch the new one ("7d", "12h", "30m"; "0" for no overlap).
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = parse_duration)]
    overlap: std::time::Duration,
}

/// A duration on the command line: humantime ("7d", "90m", "24h") or "0".
pub(super) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 7d, 12h or 0: {e}"))
}

/// Options of the read commands.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    data: StoreArgs,
}

/// Where a read, export or backup finds the registry: its data directory (the daemon's
/// control socket, or the stopped store), or with `--etcd` its etcd prefix, read at one
/// revision while the servers run.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    data: DataDirArg,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Options of `admin migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The stopped sled registry to move into etcd.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "to_data_dir",
        conflicts_with = "to_data_dir"
    )]
    from_data_dir: Option<PathBuf>,
    /// The new or empty directory to move the etcd registry into (stop its servers first).
    #[arg(long, value_name = "DIR")]
    to_data_dir: Option<PathBuf>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The secret file (mode 0600) that seals the identity in etcd, or opens it there.
    #[arg(long, env = "XLREG_IDENTITY_SECRET_FILE", value_name = "FILE")]
    identity_secret_file: PathBuf,
}

/// Options of `admin cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The cluster's name, or its ID (64 hex digits).
    cluster: String,
    #[command(flatten)]
    read: ReadArgs,
}

/// Options of `admin node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's ID (hex).
    id: String,
    #[command(flatten)]
    read: ReadArgs,
}

/// Options of `admin export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    data: StoreArgs,
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Options of `admin import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The export document.
    file: PathBuf,
    /// The new registry's data directory: must not exist, or be empty.
    #[command(flatten)]
    data: DataDirArg,
}

/// Options of `admin backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    data: StoreArgs,
    /// The snapshot file to write.
    #[arg(short, long, value_name = "SNAPSHOT")]
    output: PathBuf,
    /// With --etcd: the secret file that opens the registry's sealed identity (a snapshot
    /// holds the keys).
    #[arg(long, env = "XLREG_IDENTITY_SECRET_FILE", value_name = "FILE")]
    identity_secret_file: Option<PathBuf>,
}

/// Options of `admin restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    snapshot: PathBuf,
    /// The data directory to restore into: must not exist, or be empty.
    #[command(flatten)]
    data: DataDirArg,
}

/// Options of `admin delete-cluster`.
#[derive(Debug, clap::Args)]
pub struct DeleteClusterArgs {
    /// The cluster's name, or its ID (64 hex digits).
    cluster: String,
    #[command(flatten)]
    data: DataDirArg,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

/// Options of `admin delete-node`.
#[derive(Debug, clap::Args)]
pub struct DeleteNodeArgs {
    /// The node's ID (64 hex digits).
    #[arg(required_unless_present = "throwaway", conflicts_with = "throwaway")]
    id: Option<String>,
    /// Instead of one node, every throwaway identity that `cluster create` and `cluster
    /// members` registered without `--node` (named xlreg-cli-...) and that is a member of
    /// no cluster.
    #[arg(long)]
    throwaway: bool,
    #[command(flatten)]
    data: DataDirArg,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

/// Prints a view as pretty JSON, or as its text form.
fn show(
    json: bool,
    value: &impl serde::Serialize,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(value)?)?;
    } else {
        write!(std::io::stdout(), "{}", text())?;
    }
    Ok(())
}

/// Runs `xlreg admin ...`.
pub async fn run(command: AdminCommand, json: bool) -> anyhow::Result<ExitCode> {
    use AdminCommand as C;
    let access = |data: &StoreArgs| {
        let dir = data.data.data_dir.clone();
        let etcd = data.etcd.config();
        async move {
            match etcd {
                Some(etcd) => Access::open_etcd(etcd).await,
                None => Access::open(&dir).await,
            }
        }
    };
    match command {
        C::Info(args) => {
            let info = access(&args.data).await?.info().await?;
            show(json, &info, || info.to_text())?;
        }
        C::Clusters(args) => {
            let rows = access(&args.data).await?.clusters().await?;
            show(json, &rows, || report::clusters_text(&rows))?;
        }
        C::Cluster(args) => {
            let detail = access(&args.read.data)
                .await?
                .cluster(&args.cluster)
                .await?;
            show(json, &detail, || detail.to_text())?;
        }
        C::Nodes(args) => {
            let rows = access(&args.data).await?.nodes().await?;
            show(json, &rows, || report::nodes_text(&rows))?;
        }
        C::Node(args) => {
            let detail = access(&args.read.data).await?.node(&args.id).await?;
            show(json, &detail, || detail.to_text())?;
        }
        C::Export(args) => {
            let access = access(&args.data).await?;
            match args.output.clone() {
                None => {
                    blocking(move || {
                        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                        access.export_to(&mut out)?;
                        out.flush().map_err(AdminError::Output)
                    })
                    .await?;
                }
                Some(path) => {
                    let file = path.clone();
                    let counts = blocking(move || {
                        write_file(&file, 0o644, |out| {
                            let mut out = std::io::BufWriter::new(out);
                            let counts = access.export_to(&mut out)?;
                            out.flush().map_err(AdminError::Output)?;
                            Ok(counts)
                        })
                    })
                    .await?;
                    if json {
                        print_json(&serde_json::json!({
                            "exported": {
                                "file": path.display().to_string(),
                                "nodes": counts.nodes,
                                "clusters": counts.clusters,
                            }
                        }))?;
                    } else {
                        eprintln!(
                            "xlreg: exported {} nodes and {} clusters to {}",
                            counts.nodes,
                            counts.clusters,
                            path.display()
                        );
                    }
                }
            }
        }
        C::Import(args) => return import(args, json).await,
        C::Verify(args) => {
            let report = access(&args.data).await?.verify().await?;
            show(json, &report, || report.to_text())?;
            if !report.ok {
                eprintln!("xlreg: verify found {} problem(s)", report.problems.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        C::Backup(args) => {
            // On etcd the keys are sealed there: the secret opens them for the snapshot.
            let source = match args.data.etcd.config() {
                Some(etcd) => {
                    let Some(path) = &args.identity_secret_file else {
                        return Err(CliError::new(
                            Failure::Usage,
                            "admin backup --etcd needs --identity-secret-file: a snapshot \
                             holds the registry's keys, sealed in etcd",
                        )
                        .into());
                    };
                    let secret = crate::sealed_identity::IdentitySecret::read(path)?;
                    BackupSource::Etcd(etcd, secret, tokio::runtime::Handle::current())
                }
                None => BackupSource::Registry(access(&args.data).await?),
            };
            let output = args.output.clone();
            let summary = blocking(move || {
                write_file(&output, backup::SNAPSHOT_MODE, |file| {
                    let mut received = backup::Received::new(std::io::BufWriter::new(file));
                    let summary = match source {
                        BackupSource::Registry(access) => access.backup_to(&mut received)?,
                        BackupSource::Etcd(etcd, secret, handle) => {
                            crate::admin::migrate::backup_etcd(
                                &etcd,
                                secret,
                                &handle,
                                crate::clock::now_ms(),
                                &mut received,
                            )?
                        }
                    };
                    let (len, sha256, mut out) = received.finish(&output)?;
                    out.flush().map_err(AdminError::Output)?;
                    if len != summary.bytes as u64 || sha256 != summary.sha256 {
                        return Err(AdminError::BadSnapshot {
                            path: output.clone(),
                            reason: "the file received does not match its description; \
                                     nothing written"
                                .into(),
                        });
                    }
                    Ok(summary)
                })
            })
            .await?;
            if json {
                print_json(&serde_json::json!({
                    "file": args.output.display().to_string(),
                    "snapshot": snapshot_json(&summary),
                }))?;
            } else {
                outln!("snapshot written to {}", args.output.display())?;
                write!(std::io::stdout(), "{}", snapshot_text(&summary))?;
            }
        }
        C::Restore(args) => return restore(args, json).await,
        C::DeleteCluster(args) => return delete_cluster(args, json).await,
        C::DeleteNode(args) => return delete_node(args, json).await,
        C::Migrate(args) => return migrate(args, json).await,
        C::RotateHandshakeKeys(args) => {
            let overlap_ms = u64::try_from(args.overlap.as_millis()).unwrap_or(u64::MAX);
            let access = Access::open(&args.data.data_dir).await?;
            let online = access.is_online();
            let report = access.rotate_handshake_keys(overlap_ms).await?;
            if json {
                print_json(&serde_json::json!({ "rotated": report, "online": online }))?;
            } else {
                outln!("new handshake keys: X25519 {}", report.current_x25519)?;
                match (&report.previous_x25519, report.previous_expires_at_ms) {
                    (Some(previous), Some(until)) => outln!(
                        "previous keys (X25519 {previous}) accepted until {}",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(until)
                        )
                    )?,
                    _ => outln!("no overlap: only the new keys are accepted")?,
                }
                match &report.regcred {
                    Some(path) => outln!("{} rewritten; hand it to clients", path.display())?,
                    None => outln!(
                        "the registry is stopped: its next start serves the keys and writes \
                         regCred.dat; hand that to clients"
                    )?,
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate(args: MigrateArgs, json: bool) -> anyhow::Result<ExitCode> {
    use crate::admin::migrate;
    let Some(etcd) = args.etcd.config() else {
        return Err(CliError::new(
            Failure::Usage,
            "admin migrate needs --etcd URL[,URL...]: the etcd the registry moves to or from",
        )
        .into());
    };
    let secret = crate::sealed_identity::IdentitySecret::read(&args.identity_secret_file)?;
    let handle = tokio::runtime::Handle::current();
    let now = crate::clock::now_ms();
    let summary = match (args.from_data_dir, args.to_data_dir) {
        (Some(from), _) => {
            blocking(move || migrate::to_etcd(&from, &etcd, secret, &handle, now)).await?
        }
        (None, Some(to)) => {
            blocking(move || migrate::to_data_dir(&etcd, &to, secret, &handle, now)).await?
        }
        (None, None) => unreachable!("clap requires one of --from-data-dir and --to-data-dir"),
    };
    if json {
        print_json(&serde_json::json!({ "migrated": summary }))?;
    } else {
        outln!(
            "registry {} moved to {}: {} nodes, {} clusters, its identity included; \
             clients keep their regCred.dat",
            summary.registry,
            summary.target,
            summary.nodes,
            summary.clusters
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `admin backup` snapshots: a registry reached through its data directory, or one
/// on etcd with the secret that opens its sealed keys (and the runtime its connections use).
enum BackupSource {
    Registry(Access),
    Etcd(
        crate::store::etcd::EtcdConfig,
        crate::sealed_identity::IdentitySecret,
        tokio::runtime::Handle,
    ),
}

/// Runs blocking admin work (a streamed export or backup) off the runtime's workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AdminError::Interrupted(e.to_string()))?
}

/// Replaces `path` atomically (mode `mode`) by what `write` writes; nothing is left behind if
/// it fails, and its error is returned as it was. A device, FIFO or terminal at `path` is
/// written in place instead.
fn write_file<T>(
    path: &std::path::Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, AdminError>,
) -> Result<T, AdminError> {
    // Something that exists and is neither a file nor a directory (a device such as
    // /dev/null, a FIFO, a terminal) is written to where it is: replacing it atomically
    // would put a regular file in its place (run as root, /dev/null itself).
    let in_place = std::fs::metadata(path).is_ok_and(|meta| !meta.is_file() && !meta.is_dir());
    let mut failure = None;
    let write = |file: &mut std::fs::File| {
        write(file).map_err(|error| {
            // The output is this file: name it.
            let error = match error {
                AdminError::Output(source) => AdminError::File {
                    path: path.to_path_buf(),
                    source,
                },
                other => other,
            };
            let message = error.to_string();
            failure = Some(error);
            std::io::Error::other(message)
        })
    };
    let written = if in_place {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut file| write(&mut file))
    } else {
        write_atomic_with(path, mode, write)
    };
    match (written, failure) {
        (_, Some(error)) => Err(error),
        (Ok(value), None) => Ok(value),
        (Err(source), None) => Err(AdminError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn snapshot_json(s: &backup::SnapshotSummary) -> serde_json::Value {
    serde_json::json!({
        "registry": s.registry.as_ref().map(|(name, id)| serde_json::json!({ "name": name, "id": id })),
        "created_at_ms": s.created_at_ms,
        "xlreg_version": s.xlreg_version,
        "nodes": s.nodes,
        "clusters": s.clusters,
        "members": s.members,
        "bytes": s.bytes,
        "sha256": s.sha256,
    })
}

fn snapshot_text(s: &backup::SnapshotSummary) -> String {
    let (name, id) = s
        .registry
        .clone()
        .unwrap_or_else(|| ("(not set)".into(), "(not set)".into()));
    format!(
        "registry  {name} ({id})\ntaken     {} by xlreg {}\ncontents  {} nodes, {} clusters, {} members\nsize      {} bytes\nsha256    {}\n",
        report::utc(s.created_at_ms),
        s.xlreg_version,
        s.nodes,
        s.clusters,
        s.members,
        s.bytes,
        s.sha256
    )
}

async fn import(args: ImportArgs, json: bool) -> anyhow::Result<ExitCode> {
    let dir = args.data.data_dir.clone();
    let file = args.file.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let doc = export::read_document(&file)?;
        export::import(&doc, &file, &dir)
    })
    .await??;
    if json {
        print_json(&serde_json::json!({
            "imported": {
                "data_dir": args.data.data_dir.display().to_string(),
                "nodes": summary.nodes,
                "clusters": summary.clusters,
                "members": summary.members,
                "registry": summary.registry.as_ref().map(|(name, id)| {
                    serde_json::json!({ "name": name, "id": id })
                }),
            }
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "imported {} nodes, {} clusters and {} members into {}",
        summary.nodes,
        summary.clusters,
        summary.members,
        args.data.data_dir.display()
    )?;
    if let Some((name, id)) = summary.registry {
        outln!(
            "registry {name} ({id}) has new keys (an export carries none): give clients the \
             regCred.dat that `xlreg serve` writes"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(args: RestoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let dir = args.data.data_dir.clone();
    let snapshot = args.snapshot.clone();
    let summary = tokio::task::spawn_blocking(move || backup::restore(&snapshot, &dir)).await??;
    if json {
        print_json(&serde_json::json!({
            "restored": {
                "file": args.snapshot.display().to_string(),
                "data_dir": args.data.data_dir.display().to_string(),
                "snapshot": snapshot_json(&summary.snapshot),
                "problems": summary.problems,
            }
        }))?;
    } else {
        outln!(
            "restored {} into {}",
            args.snapshot.display(),
            args.data.data_dir.display()
        )?;
        write!(std::io::stdout(), "{}", snapshot_text(&summary.snapshot))?;
    }
    if !summary.problems.is_empty() {
        eprintln!(
            "xlreg: the restored registry fails verify ({} problem(s)); it holds exactly what \
             the snapshot held:",
            summary.problems.len()
        );
        for problem in &summary.problems {
            eprintln!("- {problem}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal whether to go ahead; only "y" or "yes" does.
fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().take(256).read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Asks for confirmation of `question` unless `yes`; refuses off a terminal.
fn confirmed(yes: bool, what: &str, question: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::new(
            Failure::Usage,
            format!("not deleting {what} without confirmation: run on a terminal, or pass --yes"),
        )
        .into());
    }
    if !confirm(question)? {
        return Err(CliError::new(Failure::Internal, "not deleted").into());
    }
    Ok(())
}

async fn delete_cluster(args: DeleteClusterArgs, json: bool) -> anyhow::Result<ExitCode> {
    crate::validate::cluster_ref(&args.cluster)?;
    let data_dir = &args.data.data_dir;
    let cluster = Access::open(data_dir).await?.cluster(&args.cluster).await?;
    confirmed(
        args.yes,
        &format!("cluster {}", cluster.cluster.name),
        &format!(
            "Delete cluster {} ({}) and its {} membership(s)? Its nodes stay registered.",
            cluster.cluster.name,
            cluster.cluster.id,
            cluster.members.len()
        ),
    )?;
    // Delete exactly the cluster that was shown, even if given by a name.
    let deleted = Access::open(data_dir)
        .await?
        .delete_cluster(&cluster.cluster.id)
        .await?;
    if json {
        print_json(&serde_json::json!({ "deleted": { "cluster": deleted } }))?;
    } else {
        outln!(
            "deleted cluster {} ({}): {} membership(s) removed; its nodes stay registered",
            deleted.name,
            deleted.id,
            deleted.members
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete_node(args: DeleteNodeArgs, json: bool) -> anyhow::Result<ExitCode> {
    let Some(id) = &args.id else {
        return delete_throwaway_nodes(args, json).await;
    };
    let data_dir = &args.data.data_dir;
    let node = Access::open(data_dir).await?.node(id).await?;
    if !node.clusters.is_empty() {
        let clusters = node.clusters.iter().map(|m| m.cluster.clone()).collect();
        return Err(AdminError::StillMember {
            node: node.node.id,
            clusters,
        }
        .into());
    }
    confirmed(
        args.yes,
        &format!("node {}", node.node.name),
        &format!("Delete node {} ({})?", node.node.name, node.node.id),
    )?;
    let deleted = Access::open(data_dir)
        .await?
        .delete_node(&node.node.id)
        .await?;
    if json {
        print_json(&serde_json::json!({ "deleted": { "node": deleted } }))?;
    } else {
        outln!("deleted node {} ({})", deleted.name, deleted.id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `admin delete-node --throwaway`: every CLI throwaway identity that is a member of nothing.
async fn delete_throwaway_nodes(args: DeleteNodeArgs, json: bool) -> anyhow::Result<ExitCode> {
    let data_dir = &args.data.data_dir;
    let nodes = Access::open(data_dir).await?.nodes().await?;
    let throwaways: Vec<_> = nodes
        .into_iter()
        .filter(|n| n.name.starts_with(THROWAWAY_PREFIX))
        .collect();
    if !throwaways.is_empty() {
        confirmed(
            args.yes,
            "throwaway nodes",
            &format!(
                "Delete the {} throwaway node(s) ({THROWAWAY_PREFIX}...) that are members of no \
                 cluster?",
                throwaways.len()
            ),
        )?;
    }
    let mut deleted = Vec::new();
    for node in &throwaways {
        match Access::open(data_dir).await?.delete_node(&node.id).await {
            Ok(row) => deleted.push(row),
            // A member of a cluster (it created or listed one it then joined): kept.
            Err(error) if error.refusal().is_some() => {}
            Err(error) => return Err(error.into()),
        }
    }
    if json {
        print_json(&serde_json::json!({ "deleted": { "nodes": deleted } }))?;
    } else {
        outln!("deleted {} throwaway node(s)", deleted.len())?;
    }
    Ok(ExitCode::SUCCESS)
}
