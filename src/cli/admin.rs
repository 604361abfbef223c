//! `xlreg admin ...`: look inside a registry, export and import it, back it up and restore it,
//! delete clusters.
//!
//! The read commands (`info`, `clusters`, `cluster`, `nodes`, `node`, `export`, `verify`) and
//! `backup` open the data directory of a stopped registry, or ask the running daemon through
//! its control socket; either way the output is the same ([`crate::admin::Access`]).
//! `import`, `restore` and `delete-cluster` work on stopped registries only.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::DataDirArg;
use crate::admin::{backup, export, open_offline, report, Access};
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
    /// Delete a cluster and its memberships (its nodes stay registered).
    DeleteCluster(DeleteClusterArgs),
}

/// Options of the read commands.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    data: DataDirArg,
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
    data: DataDirArg,
    /// The snapshot file to write.
    #[arg(short, long, value_name = "SNAPSHOT")]
    output: PathBuf,
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
pub async fn run(command: AdminCommand) -> anyhow::Result<ExitCode> {
    use AdminCommand as C;
    let access = |data: &DataDirArg| {
        let dir = data.data_dir.clone();
        async move { Access::open(&dir).await }
    };
    match command {
        C::Info(args) => {
            let info = access(&args.data).await?.info().await?;
            show(args.json, &info, || info.to_text())?;
        }
        C::Clusters(args) => {
            let rows = access(&args.data).await?.clusters().await?;
            show(args.json, &rows, || report::clusters_text(&rows))?;
        }
        C::Cluster(args) => {
            let detail = access(&args.read.data)
                .await?
                .cluster(&args.cluster)
                .await?;
            show(args.read.json, &detail, || detail.to_text())?;
        }
        C::Nodes(args) => {
            let rows = access(&args.data).await?.nodes().await?;
            show(args.json, &rows, || report::nodes_text(&rows))?;
        }
        C::Node(args) => {
            let detail = access(&args.read.data).await?.node(&args.id).await?;
            show(args.read.json, &detail, || detail.to_text())?;
        }
        C::Export(args) => {
            let source = access(&args.data).await?.export_source().await?;
            match &args.output {
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    source.write_to(&mut out)?;
                    out.flush()?;
                }
                Some(path) => {
                    let counts = write_atomic_with(path, 0o644, |file| {
                        let mut out = std::io::BufWriter::new(file);
                        let counts = source.write_to(&mut out)?;
                        out.flush()?;
                        Ok(counts)
                    })
                    .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "xlreg: exported {} nodes and {} clusters to {}",
                        counts.nodes,
                        counts.clusters,
                        path.display()
                    );
                }
            }
        }
        C::Import(args) => return import(args).await,
        C::Verify(args) => {
            let report = access(&args.data).await?.verify().await?;
            show(args.json, &report, || report.to_text())?;
            if !report.ok {
                eprintln!("xlreg: verify found {} problem(s)", report.problems.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        C::Backup(args) => {
            let bytes = access(&args.data).await?.backup().await?;
            let output = args.output.clone();
            let summary =
                tokio::task::spawn_blocking(move || backup::save(&bytes.0, &output)).await??;
            outln!("snapshot written to {}", args.output.display())?;
            write!(std::io::stdout(), "{}", snapshot_text(&summary))?;
        }
        C::Restore(args) => return restore(args).await,
        C::DeleteCluster(args) => return delete_cluster(args).await,
    }
    Ok(ExitCode::SUCCESS)
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

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data.data_dir.clone();
    let file = args.file.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let doc = export::read_document(&file)?;
        export::import(&doc, &file, &dir)
    })
    .await??;
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

async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data.data_dir.clone();
    let snapshot = args.snapshot.clone();
    let summary = tokio::task::spawn_blocking(move || backup::restore(&snapshot, &dir)).await??;
    outln!(
        "restored {} into {}",
        args.snapshot.display(),
        args.data.data_dir.display()
    )?;
    write!(std::io::stdout(), "{}", snapshot_text(&summary.snapshot))?;
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

async fn delete_cluster(args: DeleteClusterArgs) -> anyhow::Result<ExitCode> {
    let target = crate::validate::cluster_ref(&args.cluster)?;
    let dir = args.data.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || open_offline(&dir)).await??;
    let cluster = store
        .cluster(&target)?
        .ok_or_else(|| crate::admin::AdminError::NoSuchCluster(args.cluster.clone()))?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "not deleting cluster {} without confirmation: run on a terminal, or pass --yes",
                cluster.name
            );
        }
        let question = format!(
            "Delete cluster {} ({}) and its {} membership(s)? Its nodes stay registered.",
            cluster.name,
            cluster.id,
            cluster.member_count()
        );
        if !confirm(&question)? {
            anyhow::bail!("not deleted");
        }
    }
    // Delete exactly the cluster that was shown, even if given by a name.
    let id = crate::store::ClusterRef::Id(cluster.id.clone());
    let deleted = tokio::task::spawn_blocking(move || {
        let deleted = store.delete_cluster(&id)?;
        store.flush_blocking()?;
        Ok::<_, crate::store::StorageError>(deleted)
    })
    .await??
    .ok_or_else(|| crate::admin::AdminError::NoSuchCluster(args.cluster.clone()))?;
    outln!(
        "deleted cluster {} ({}): {} membership(s) removed; its nodes stay registered",
        deleted.name,
        deleted.id,
        deleted.member_count()
    )?;
    Ok(ExitCode::SUCCESS)
}
