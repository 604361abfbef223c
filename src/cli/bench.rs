//! `xlreg bench`: drive a running registry with many concurrent complete sessions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::bench::{self, BenchConfig, IdentityPool, Wire};
use crate::id::Id;
use crate::regcred::RegCred;

/// Options of `xlreg bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The registry's regCred.dat (with --legacy: the Go-format one naming the 1.9
    /// endpoint, e.g. DATA_DIR/legacy/regCred.dat or the Go registry's own).
    #[arg(long, value_name = "FILE")]
    regcred: PathBuf,
    /// Speak the xlReg 1.9 wire (the Go registry's) instead of xlReg/2.
    #[arg(long)]
    legacy: bool,
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
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `xlreg bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let regcred = RegCred::read(&args.regcred)?;
    let config = BenchConfig {
        regcred,
        wire: if args.legacy { Wire::Legacy } else { Wire::V2 },
        clients: args.clients,
        sessions: args.sessions,
        cluster_size: args.cluster_size,
        wait: Duration::from_secs(args.wait),
        server_pid: args.server_pid,
        run_id: Id::random(&mut rand::rng()).to_hex()[..8].to_string(),
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
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        outln!("{}", report.summary())?;
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
