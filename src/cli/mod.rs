//! The `xlreg` command line: argument parsing and the subcommands.
//!
//! One file per group of subcommands: `serve` (the daemon), `node` (`node init` and
//! `register`), `cluster` (`cluster create|join|members`), `regcred` (`regcred show`), with
//! `bench` (the load generator) and `admin` (`xlreg admin ...`), with `output` for the
//! human and JSON renderings they share. This is the program's edge, so
//! errors here are `anyhow` errors: [`main`] prints one clear line and exits non-zero.

/// `println!` for command output that reports a closed stdout (`xlreg ... | head`) as an
/// error instead of panicking; [`main`] then exits quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

mod admin;
mod bench;
mod cluster;
mod node;
mod output;
mod regcred;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A durable cluster registry.
#[derive(Debug, Parser)]
#[command(name = "xlreg", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry daemon.
    Serve(Box<serve::ServeArgs>),
    /// Manage a node's identity directory.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Register a node with the registry and record its ID.
    Register(node::RegisterArgs),
    /// Create, join and list clusters.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Inspect regCred.dat files.
    #[command(subcommand)]
    Regcred(regcred::RegcredCommand),
    /// Load-test a running registry with concurrent complete sessions.
    Bench(bench::BenchArgs),
    /// Operate a registry: inspect, export, import, verify, back up, restore.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
}

/// Where the registry keeps its data unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "xlreg-data";

/// The data directory option shared by `serve` and `admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArg {
    /// Data directory.
    #[arg(long, env = "XLREG_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// Parses the command line, runs the command, prints any error as one line on stderr and
/// returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Prints help and version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = error.print();
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
    };
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing left to say.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xlreg: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// True if `error` comes from writing to a closed pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Renders an error and its causes on one line, without repeating a cause that the
/// message already contains.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Serve(_) = &cli.command {
        // Before any thread exists, so that every thread's allocations follow it.
        crate::process::limit_malloc_arenas();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(*args)),
        Command::Node(command) => node::run_node(command),
        Command::Register(args) => runtime.block_on(node::run_register(args)),
        Command::Cluster(command) => runtime.block_on(cluster::run(command)),
        Command::Regcred(command) => regcred::run(command),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Admin(command) => runtime.block_on(admin::run(command)),
    }
}
