//! `xlreg node init` and `xlreg register`: a node's identity and its registration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::cluster::{connect_and, RegistryArgs};
use super::output::print_json;
use crate::node::NodeIdentity;

/// `xlreg node ...`
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Create a node identity directory: two RSA keys and the node's name and endpoints.
    Init(InitArgs),
}

/// Options of `xlreg node init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create the identity in.
    #[arg(long)]
    dir: PathBuf,
    /// The node's name (unique within each cluster it joins).
    #[arg(long)]
    name: String,
    /// An endpoint HOST:PORT; the first is for member-to-member traffic, a second for
    /// clients. Repeat for more.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
}

/// Options of `xlreg register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The node's identity directory.
    #[arg(long, env = "XLREG_NODE")]
    node: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Runs `xlreg node ...`.
pub fn run_node(command: NodeCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::Init(args) => {
            let node = NodeIdentity::create(&args.dir, &args.name, &args.endpoints)?;
            if json {
                print_json(&serde_json::json!({
                    "node": {
                        "name": node.name,
                        "dir": args.dir.display().to_string(),
                        "endpoints": node.endpoints,
                        "comms_key_fingerprint": node.comms.public_key().fingerprint(),
                        "sig_key_fingerprint": node.sig.public_key().fingerprint(),
                    }
                }))?;
            } else {
                outln!(
                    "node {} created in {} (sig key sha256 {})",
                    node.name,
                    args.dir.display(),
                    node.sig.public_key().fingerprint()
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Registers the node (or confirms its registration), records its ID and prints it.
pub async fn run_register(args: RegisterArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut node = NodeIdentity::load(&args.node)?;
    // Retries register the same node, never a second one (NodeIdentity::claim_id).
    node.claim_id(&args.node)
        .with_context(|| format!("recording the node ID in {}", args.node.display()))?;
    let id = connect_and(&args.registry, |mut client| {
        let node = &node;
        async move {
            let id = client.register(node).await?;
            client.bye().await?;
            Ok(id)
        }
    })
    .await?;
    if node.id.as_ref() != Some(&id) {
        node.save_id(&args.node, id.clone())
            .with_context(|| format!("recording the node ID in {}", args.node.display()))?;
    }
    if json {
        print_json(&serde_json::json!({
            "node": { "name": node.name, "id": id.to_hex() }
        }))?;
    } else {
        outln!("{id}")?;
    }
    Ok(ExitCode::SUCCESS)
}
