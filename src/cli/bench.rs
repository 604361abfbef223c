//! `xlreg bench`: drive a running registry with many concurrent complete sessions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::admin::Access;
use crate::bench::{self, BenchConfig, IdentityPool, Wire};
use crate::id::Id;
use crate::regcred::RegCred;

/// Options of `xlreg bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The registry's regCred.dat (with --legacy: the Go-format one naming the 1.9
    /// endpoint, e.g. DATA_DIR/legacy/regCred.dat or the Go registry's own).
    #[arg(long, value_name = "FILE", env = "XLREG_REGCRED")]
    regcred: PathBuf,
    /// Speak the xlReg 1.9 wire (the Go registry's) instead of xlReg/2.
    #[arg(long, conflicts_with = "protocol")]
    legacy: bool,
    /// The protocol version to speak, 2 or 3 (default: the highest the regCred.dat
    /// supports: 3 if it has handshake keys).
    #[arg(long, value_name = "2|3", value_parser = clap::value_parser!(u32).range(2..=3))]
    protocol: Option<u32>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Complete sessions to run.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Members per cluster (2..64); sessions must be a multiple of it.
    #[arg(long, default_value_t = 4)]
    cluster_size: u32,
    /// Pre-generated key pairs shared by the sessions.
    #[arg(long, default_value_t = 16)]
    identities: usize,
    /// Seconds a session waits for its cluster to complete.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// PID of the registry for CPU accounting (default: found from the endpoint's port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The registry's data directory, when it runs on this machine as this user: at the end,
    /// remove this run's clusters and their nodes through its control socket, so the bench
    /// leaves nothing behind. Without it, they stay, named bench-RUN-N (see the report's
    /// run_id), for `xlreg admin delete-cluster` / `delete-node`.
    #[arg(long, value_name = "DIR")]
    cleanup_data_dir: Option<PathBuf>,
}

/// Runs `xlreg bench`.
pub async fn run(args: BenchArgs, json: bool) -> anyhow::Result<ExitCode> {
    let regcred = RegCred::read(&args.regcred)?;
    let run_id = Id::random(&mut rand::rng()).to_hex()[..8].to_string();
    let wire = match (args.legacy, args.protocol) {
        (true, _) => Wire::Legacy,
        (false, Some(2)) => Wire::V2,
        (false, Some(_)) => Wire::V3,
        (false, None) if regcred.handshake.is_some() => Wire::V3,
        (false, None) => Wire::V2,
    };
    let config = BenchConfig {
        regcred,
        wire,
        clients: args.clients,
        sessions: args.sessions,
        cluster_size: args.cluster_size,
        wait: Duration::from_secs(args.wait),
        server_pid: args.server_pid,
        run_id: run_id.clone(),
    };
    // Refuse bad parameters before spending seconds on key generation.
    config.check()?;
    eprintln!("xlreg bench: generating {} identities", args.identities);
    let made = Instant::now();
    let pool =
        tokio::task::spawn_blocking(move || IdentityPool::generate(args.identities)).await??;
    eprintln!(
        "xlreg bench: identities ready in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let report = bench::run(config, pool, |done, total| {
        eprintln!("xlreg bench: {done}/{total} sessions");
    })
    .await?;
    let removed = match &args.cleanup_data_dir {
        Some(dir) => Some(remove_run(dir, &run_id).await?),
        None => None,
    };
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["run_id"] = run_id.clone().into();
        if let Some((clusters, nodes)) = removed {
            value["removed"] = serde_json::json!({ "clusters": clusters, "nodes": nodes });
        }
        super::output::print_json(&value)?;
    } else {
        outln!("{}", report.summary())?;
        if let Some(threads) = report.threads_summary() {
            outln!("{threads}")?;
        }
        match removed {
            Some((clusters, nodes)) => outln!(
                "removed this run's {clusters} cluster(s) and {nodes} node(s) (run {run_id})"
            )?,
            None => outln!(
                "this run's clusters are named bench-{run_id}-N; they and their nodes stay \
                 (pass --cleanup-data-dir to remove them)"
            )?,
        }
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Removes the clusters named `bench-RUN-N` and then their member nodes, through the admin
/// access to `data_dir` (the daemon's control socket while it runs). Returns how many
/// clusters and nodes went.
async fn remove_run(data_dir: &std::path::Path, run_id: &str) -> anyhow::Result<(usize, usize)> {
    let prefix = format!("bench-{run_id}-");
    let clusters = Access::open(data_dir).await?.clusters().await?;
    let (mut removed_clusters, mut removed_nodes) = (0, 0);
    for row in clusters.iter().filter(|c| c.name.starts_with(&prefix)) {
        let detail = Access::open(data_dir).await?.cluster(&row.id).await?;
        Access::open(data_dir)
            .await?
            .delete_cluster(&row.id)
            .await?;
        removed_clusters += 1;
        for member in &detail.members {
            match Access::open(data_dir).await?.delete_node(&member.id).await {
                Ok(_) => removed_nodes += 1,
                // Also a member of a cluster this run did not make: keep it.
                Err(error) if error.refusal().is_some() => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok((removed_clusters, removed_nodes))
}
