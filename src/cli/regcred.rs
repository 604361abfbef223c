//! `xlreg regcred show`: what a regCred.dat file says.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::regcred::RegCred;

/// `xlreg regcred ...`
#[derive(Debug, clap::Subcommand)]
pub enum RegcredCommand {
    /// Print the registry a regCred.dat file names.
    Show {
        /// The file.
        file: PathBuf,
    },
}

/// Runs `xlreg regcred ...`.
pub fn run(command: RegcredCommand, json: bool) -> anyhow::Result<ExitCode> {
    let RegcredCommand::Show { file } = command;
    let cred = RegCred::read(&file)?;
    if json {
        let value = serde_json::json!({
            "name": cred.name,
            "id": cred.id.to_hex(),
            "endpoints": cred.endpoints,
            "version": cred.version,
            "comms_key_fingerprint": cred.comms_key.fingerprint(),
            "sig_key_fingerprint": cred.sig_key.fingerprint(),
            "comms_key_bits": cred.comms_key.bits(),
            "sig_key_bits": cred.sig_key.bits(),
            "protocol_versions": cred.versions(),
            "handshake_x25519": cred.handshake.as_ref().map(|h| hex::encode(h.keys.x25519())),
            "previous_handshake_x25519": cred
                .handshake_previous
                .as_ref()
                .map(|h| hex::encode(h.keys.x25519())),
        });
        super::output::print_json(&value)?;
    } else {
        outln!("name:      {}", cred.name)?;
        outln!("id:        {}", cred.id)?;
        outln!("endpoints: {}", cred.endpoints.join(", "))?;
        outln!("version:   {}", cred.version)?;
        let versions: Vec<String> = cred.versions().iter().map(u32::to_string).collect();
        outln!(
            "protocols: xlReg/{}{}",
            versions.join(", xlReg/"),
            if cred.handshake.is_some() {
                " (handshake keys signed by the sig key, verified)"
            } else {
                " (no handshake keys: xlReg/2 only)"
            }
        )?;
        outln!(
            "comms key: {} bits, sha256 {}",
            cred.comms_key.bits(),
            cred.comms_key.fingerprint()
        )?;
        outln!(
            "sig key:   {} bits, sha256 {}",
            cred.sig_key.bits(),
            cred.sig_key.fingerprint()
        )?;
        if let Some(previous) = &cred.handshake_previous {
            outln!(
                "previous handshake keys (still accepted during a rotation's overlap): X25519 {}",
                hex::encode(previous.keys.x25519())
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
