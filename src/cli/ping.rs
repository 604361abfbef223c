//! `xlreg ping`: the health check a node runs before joining.
//!
//! A handshake (which proves the endpoint holds the key in regCred.dat) and a Bye, with
//! nothing registered, so pinging leaves no trace in the registry. With several endpoints in
//! regCred.dat, the first that answers (in a shuffled order) is pinged, and named.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::cluster::{connect_and, RegistryArgs};
use super::output::print_json;
use crate::regcred::RegCred;

/// Options of `xlreg ping`.
#[derive(Debug, clap::Args)]
pub struct PingArgs {
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Runs `xlreg ping`.
pub async fn run(args: PingArgs, json: bool) -> anyhow::Result<ExitCode> {
    let cred = RegCred::read(&args.registry.regcred)?;
    let (endpoint, round_trip) = connect_and(&args.registry, |client| async move {
        // The handshake is done: time the Bye's round trip on the established session.
        let endpoint = client.endpoint().to_string();
        let started = Instant::now();
        client.bye().await?;
        Ok((endpoint, started.elapsed()))
    })
    .await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if json {
        print_json(&serde_json::json!({
            "endpoint": endpoint,
            "name": cred.name,
            "id": cred.id.to_hex(),
            "comms_key_fingerprint": cred.comms_key.fingerprint(),
            "round_trip_ms": ms(round_trip),
        }))?;
    } else {
        outln!(
            "registry {} ({}) at {} answered: round trip {:.2} ms; its key matches regCred.dat \
             (comms key sha256 {})",
            cred.name,
            cred.id,
            endpoint,
            ms(round_trip),
            cred.comms_key.fingerprint()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
