//! The `xlreg` command line: argument parsing and the subcommands.
//!
//! One file per group of subcommands: `serve` (the daemon), `node` (`node init` and
//! `register`), `cluster` (`cluster create|join|members|leave`) with `owner` (`cluster token ...`,
//! `evict`, `close`, `delete`), `regcred` (`regcred show`), with
//! `bench` (the load generator) and `admin` (`xlreg admin ...`), with `output` for the
//! human and JSON renderings they share, `ping` (the health check), `completions` and `man`
//! (generated from these definitions), and `exit`, the one place that turns an error into
//! an exit code. This is the program's edge, so errors here are `anyhow` errors: [`main`]
//! prints one clear line (a JSON object under `--json` or `serve --log-format json`) and
//! exits with the code [`exit::classify`] gives.

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
pub mod exit;
mod node;
mod output;
mod owner;
mod ping;
mod regcred;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A durable cluster registry.
#[derive(Debug, Parser)]
#[command(
    name = "xlreg",
    version,
    about,
    long_about = None,
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Print the result as JSON on stdout, and a fatal error as a JSON object on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The exit codes, as `--help` lists them (see [`exit::Failure`]).
const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 internal failure (or problems found \
by a check), 2 usage, 3 not found, 4 conflict (full, taken, in use), 5 unauthorized, \
6 unreachable, 7 timeout, 130 interrupted.";

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
    /// Operate a registry: inspect, export, import, verify, back up, restore, delete.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Check that the registry in a regCred.dat answers: a handshake and Bye, registering
    /// nothing; prints the round trip and the registry's identity.
    Ping(ping::PingArgs),
    /// Print a shell completion script: `xlreg completions bash > /etc/bash_completion.d/xlreg`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages, one per command, into a directory (xlreg.1, xlreg-serve.1, ...).
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
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
    let json_errors = cli.json || matches!(&cli.command, Command::Serve(args) if args.logs_json());
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing left to say.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            let failure = exit::classify(&error);
            if json_errors {
                let line = serde_json::json!({
                    "error": one_line(&error),
                    "kind": failure,
                    "exit_code": failure.code(),
                });
                eprintln!("{line}");
            } else {
                eprintln!("xlreg: {}", one_line(&error));
            }
            ExitCode::from(failure.code())
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
    let json = cli.json;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(*args)),
        Command::Node(command) => node::run_node(command, json),
        Command::Register(args) => runtime.block_on(node::run_register(args, json)),
        Command::Cluster(command) => runtime.block_on(cluster::run(command, json)),
        Command::Regcred(command) => regcred::run(command, json),
        Command::Bench(args) => runtime.block_on(bench::run(args, json)),
        Command::Admin(command) => runtime.block_on(admin::run(command, json)),
        Command::Ping(args) => runtime.block_on(ping::run(args, json)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut command, "xlreg", &mut out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => write_man_pages(&dir, json),
    }
}

/// Writes one man page per command and subcommand into `dir`.
fn write_man_pages(dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = <Cli as clap::CommandFactory>::command();
    let mut written = Vec::new();
    write_man_page(dir, command, "xlreg", &mut written)?;
    if json {
        output::print_json(&serde_json::json!({ "written": written }))?;
    } else {
        for path in &written {
            outln!("{path}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `command`'s page as `DIR/NAME.1`, then its subcommands' as `DIR/NAME-SUB.1`.
fn write_man_page(
    dir: &std::path::Path,
    command: clap::Command,
    name: &str,
    written: &mut Vec<String>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let command = command.name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path.display().to_string());
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_man_page(dir, sub.clone(), &sub_name, written)?;
    }
    Ok(())
}
