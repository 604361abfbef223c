//! Several servers on one shared store (etcd): what they coordinate beyond the records.
//!
//! This module owns:
//! - [`Coordination`], the small port onto the shared store's leases and single-key
//!   transactions that the rest of this module uses (on etcd: [`etcd`]);
//! - [`ServerLease`]: one lease per server, kept alive for as long as the server runs (and
//!   granted again if it was lost, after etcd was out of reach for longer than its TTL);
//! - [`announce`]: each server's advertised endpoint under its lease at
//!   `<prefix>/servers/<lease>`, and the set of live servers read back every
//!   [`ANNOUNCE_POLL`], rewriting `DATA_DIR/regCred.dat` (temp file + rename) when it changes;
//! - [`elect_sweeper`]: the cluster-TTL sweeper's election, a put-if-absent of
//!   `<prefix>/election/sweeper` under the server's lease: one holder at a time; when it
//!   dies its lease expires and another server takes over;
//! - [`SealedKey`]: the sealed registry identity's slot ([`SealedSlot`]) at
//!   `<prefix>/identity`.
//!
//! Why polling rather than a watch for the server set: the set changes when a server starts
//! or stops, a one-key-per-server read every second costs etcd nothing noticeable, and a
//! poll has no stream to lose or resume.

pub mod etcd;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::handshake_keys::HandshakeKeyRing;
use crate::sealed_identity::{SealedSlot, SlotError};

/// A future the [`Coordination`] port returns.
pub type CoordFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CoordError>> + Send + 'a>>;

/// A lease of the shared store: keys written under it vanish when it expires.
pub type LeaseId = i64;

/// How long a server's lease lives without a keep-alive: how long a dead server stays
/// announced, and how long its sweeper election outlives it.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the set of live servers is read back.
pub const ANNOUNCE_POLL: Duration = Duration::from_secs(1);
/// How often a server that does not hold the sweeper election tries to take it.
pub const CAMPAIGN_EVERY: Duration = Duration::from_secs(1);

/// The shared store failed, could not be reached, or answered something unusable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CoordError(pub String);

/// What the servers of one registry need from the shared store beyond the records: leases,
/// put-if-absent, compare-and-replace and prefix reads, on keys below the registry's prefix
/// (every key here is relative to it).
pub trait Coordination: Send + Sync + std::fmt::Debug {
    /// Where the keys live, for messages (`etcd /xlreg`).
    fn describe(&self) -> String;
    /// A new lease that expires `ttl` after its last keep-alive.
    fn grant_lease(&self, ttl: Duration) -> CoordFuture<'_, LeaseId>;
    /// Keeps `lease` alive: its remaining time to live, `None` if it has expired.
    fn keep_alive(&self, lease: LeaseId) -> CoordFuture<'_, Option<Duration>>;
    /// Revokes `lease`, deleting every key written under it.
    fn revoke(&self, lease: LeaseId) -> CoordFuture<'_, ()>;
    /// The value of `key` and its version (modification revision), if it exists.
    fn get(&self, key: &str) -> CoordFuture<'_, Option<(Vec<u8>, u64)>>;
    /// Every key below `prefix` with its value.
    fn get_prefix(&self, prefix: &str) -> CoordFuture<'_, Vec<(String, Vec<u8>)>>;
    /// Writes `key` (under `lease`, if given) if it does not exist, in one transaction:
    /// `None` if it was written, else the value that was there (left as it is).
    fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> CoordFuture<'_, Option<Vec<u8>>>;
    /// Writes `key` under `lease`, whatever was there.
    fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> CoordFuture<'_, ()>;
    /// Replaces `key`'s value if its version is still `version`, in one transaction: the
    /// new version, or `None` if it had changed.
    fn replace(&self, key: &str, version: u64, value: &[u8]) -> CoordFuture<'_, Option<u64>>;
}

/// The key of the sealed identity.
pub const IDENTITY_KEY: &str = "identity";
/// Where servers announce themselves: one key per server lease.
pub const SERVERS_PREFIX: &str = "servers/";
/// The sweeper election's key.
pub const SWEEPER_KEY: &str = "election/sweeper";

/// A server's lease, kept alive by the task [`ServerLease::start`] spawns: the lease in force and until when it
/// is known to live.
#[derive(Debug, Clone)]
pub struct ServerLease {
    state: watch::Receiver<Option<(LeaseId, Instant)>>,
}

impl ServerLease {
    /// Grants the server's lease and starts keeping it alive (every third of its TTL); a
    /// lease found expired (etcd out of reach for longer than the TTL) is replaced by a new
    /// one, and whoever watches [`ServerLease::current`] re-writes its keys under it.
    /// Returns once the first lease is granted.
    pub async fn start(
        coord: Arc<dyn Coordination>,
    ) -> Result<(ServerLease, tokio::task::JoinHandle<()>), CoordError> {
        let lease = coord.grant_lease(LEASE_TTL).await?;
        let (tx, rx) = watch::channel(Some((lease, Instant::now() + LEASE_TTL)));
        let task = tokio::spawn(keep_lease(coord, lease, tx));
        Ok((ServerLease { state: rx }, task))
    }

    /// The lease in force, if it is known to be alive now.
    pub fn current(&self) -> Option<LeaseId> {
        match *self.state.borrow() {
            Some((lease, until)) if Instant::now() < until => Some(lease),
            _ => None,
        }
    }

    /// Until when the lease in force is known to live.
    pub fn alive_until(&self) -> Option<(LeaseId, Instant)> {
        *self.state.borrow()
    }

    /// Waits until the lease changes (renewed, replaced or lost).
    pub async fn changed(&mut self) {
        if self.state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn keep_lease(
    coord: Arc<dyn Coordination>,
    mut lease: LeaseId,
    tx: watch::Sender<Option<(LeaseId, Instant)>>,
) {
    let every = LEASE_TTL / 3;
    loop {
        tokio::time::sleep(every).await;
        let asked = Instant::now();
        match coord.keep_alive(lease).await {
            Ok(Some(ttl)) => {
                let _ = tx.send(Some((lease, asked + ttl)));
            }
            Ok(None) => {
                tracing::warn!(
                    lease,
                    "server lease expired (etcd was out of reach); taking a new one"
                );
                let _ = tx.send(None);
                match coord.grant_lease(LEASE_TTL).await {
                    Ok(fresh) => {
                        lease = fresh;
                        let _ = tx.send(Some((lease, Instant::now() + LEASE_TTL)));
                    }
                    Err(error) => tracing::warn!(%error, "could not take a new server lease"),
                }
            }
            Err(error) => tracing::warn!(%error, lease, "server lease keep-alive failed"),
        }
    }
}

/// Announces `endpoints` (this server's advertised endpoints) under the server's lease, and
/// every [`ANNOUNCE_POLL`] reads the set of live servers, rewriting the published
/// regCred.dat through `ring` when it changed. Runs for as long as the server serves.
pub async fn announce(
    coord: Arc<dyn Coordination>,
    mut lease: ServerLease,
    endpoints: Vec<String>,
    ring: Arc<HandshakeKeyRing>,
) {
    let value = endpoints.join("\n");
    let mut announced: Option<LeaseId> = None;
    let mut ticks = tokio::time::interval(ANNOUNCE_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = lease.changed() => {}
        }
        if let Some(current) = lease.current().filter(|l| announced != Some(*l)) {
            let key = format!("{SERVERS_PREFIX}{current:016x}");
            match coord.put(&key, value.as_bytes(), Some(current)).await {
                Ok(()) => {
                    tracing::info!(endpoints = %value.replace('\n', ","), "server announced");
                    announced = Some(current);
                }
                Err(error) => tracing::warn!(%error, "could not announce this server"),
            }
        }
        let live = match coord.get_prefix(SERVERS_PREFIX).await {
            Ok(live) => live,
            Err(error) => {
                tracing::debug!(%error, "could not read the live servers");
                continue;
            }
        };
        let listed = live_endpoints(&live, &endpoints);
        let ring = ring.clone();
        let published = tokio::task::spawn_blocking(move || {
            ring.publish_endpoints(listed, crate::clock::now_ms())
        })
        .await;
        match published {
            Ok(Ok(true)) => {
                tracing::info!("the set of live servers changed: regCred.dat rewritten")
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::error!(%error, "could not rewrite regCred.dat"),
            Err(error) => tracing::error!(%error, "rewriting regCred.dat stopped"),
        }
    }
}

/// The endpoints regCred.dat lists: every live server's, sorted, each once; this server's
/// own are always included (it serves even while its announcement is not yet readable).
pub fn live_endpoints(announcements: &[(String, Vec<u8>)], own: &[String]) -> Vec<String> {
    let mut endpoints: Vec<String> = announcements
        .iter()
        .flat_map(|(_, value)| {
            String::from_utf8_lossy(value)
                .into_owned()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|e| crate::validate::endpoint(e).is_ok())
        .chain(own.iter().cloned())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// Campaigns for the sweeper election with the server's lease, for as long as the server
/// serves, and publishes on `leader` until when this server may sweep: while it holds the
/// election key under a lease known to be alive; `None` while it does not.
pub async fn elect_sweeper(
    coord: Arc<dyn Coordination>,
    mut lease: ServerLease,
    server: String,
    leader: watch::Sender<Option<Instant>>,
) {
    let mut ticks = tokio::time::interval(CAMPAIGN_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = lease.changed() => {}
        }
        let Some((current, until)) = lease
            .alive_until()
            .filter(|(_, until)| Instant::now() < *until)
        else {
            if leader.send_replace(None).is_some() {
                tracing::warn!("sweeper: server lease lost; not sweeping");
            }
            leading = false;
            continue;
        };
        let value = format!("{server} {current:016x}");
        let held = match coord
            .put_if_absent(SWEEPER_KEY, value.as_bytes(), Some(current))
            .await
        {
            Ok(None) => true,
            Ok(Some(holder)) => holder == value.as_bytes(),
            Err(error) => {
                tracing::debug!(%error, "sweeper election: could not reach the store");
                // Keep what we had only while the lease is known alive.
                leading
            }
        };
        if held && !leading {
            tracing::info!("sweeper: elected; this server runs the cluster-TTL sweeper");
        } else if !held && leading {
            tracing::warn!("sweeper: another server holds the election; not sweeping");
        }
        leading = held;
        leader.send_replace(held.then_some(until));
    }
}

/// The tasks that make a daemon one of several servers on a shared store: its lease, its
/// announcement, the sweeper election and following the sealed identity's key changes.
#[derive(Debug)]
pub struct ServerTasks {
    coord: Arc<dyn Coordination>,
    lease: ServerLease,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Until when this server may sweep (see [`elect_sweeper`]).
    elected: watch::Receiver<Option<Instant>>,
}

impl ServerTasks {
    /// Takes the server's lease, announces `endpoints` under it, and starts the sweeper
    /// election (as `server`, a name for logs and the election's value) and the reloading of
    /// the sealed identity's key sets. Call after regCred.dat was published through the
    /// ring: the announcements rewrite it.
    pub async fn start(
        coord: Arc<dyn Coordination>,
        registry: &crate::registry::Registry,
        endpoints: Vec<String>,
        server: String,
    ) -> Result<ServerTasks, CoordError> {
        let (lease, keeper) = ServerLease::start(coord.clone()).await?;
        let identity = &registry.identity;
        let (leader, elected) = watch::channel(None);
        let tasks = vec![
            keeper,
            tokio::spawn(announce(
                coord.clone(),
                lease.clone(),
                endpoints,
                identity.handshake.clone(),
            )),
            tokio::spawn(elect_sweeper(coord.clone(), lease.clone(), server, leader)),
            tokio::spawn(crate::handshake_keys::follow_sealed(
                identity.handshake.clone(),
                identity.id.clone(),
                identity.sig.clone(),
            )),
        ];
        Ok(ServerTasks {
            coord,
            lease,
            tasks,
            elected,
        })
    }

    /// Until when this server may sweep, as the election says: for
    /// [`crate::admin::expiry::ClusterExpiry::start_elected`].
    pub fn elected(&self) -> watch::Receiver<Option<Instant>> {
        self.elected.clone()
    }

    /// Stops the tasks and revokes the lease, so this server's announcement and any
    /// election it held vanish now rather than at the lease's expiry.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some((lease, _)) = self.lease.alive_until() {
            if let Err(error) = self.coord.revoke(lease).await {
                tracing::warn!(%error, "could not revoke the server lease; it expires by itself");
            }
        }
    }
}

/// The sealed identity's key in the shared store, as a [`SealedSlot`]. Its calls block (the
/// identity is loaded and rotated on blocking threads) on the runtime `handle`.
#[derive(Debug)]
pub struct SealedKey {
    coord: Arc<dyn Coordination>,
    handle: tokio::runtime::Handle,
}

impl SealedKey {
    /// The identity slot of `coord`; its calls run on `handle`.
    pub fn new(coord: Arc<dyn Coordination>, handle: tokio::runtime::Handle) -> SealedKey {
        SealedKey { coord, handle }
    }
}

impl SealedSlot for SealedKey {
    fn place(&self) -> String {
        format!("{}/{IDENTITY_KEY}", self.coord.describe())
    }

    fn read(&self) -> Result<Option<(Vec<u8>, u64)>, SlotError> {
        self.handle
            .block_on(self.coord.get(IDENTITY_KEY))
            .map_err(|e| SlotError(e.0))
    }

    fn create(&self, sealed: &[u8]) -> Result<bool, SlotError> {
        self.handle
            .block_on(self.coord.put_if_absent(IDENTITY_KEY, sealed, None))
            .map(|found| found.is_none())
            .map_err(|e| SlotError(e.0))
    }

    fn replace(&self, version: u64, sealed: &[u8]) -> Result<Option<u64>, SlotError> {
        self.handle
            .block_on(self.coord.replace(IDENTITY_KEY, version, sealed))
            .map_err(|e| SlotError(e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regcred_lists_every_live_server_once_sorted_with_this_one() {
        let live = vec![
            ("servers/2".to_string(), b"127.0.0.1:3".to_vec()),
            (
                "servers/1".to_string(),
                b"127.0.0.1:1\n127.0.0.1:2".to_vec(),
            ),
            ("servers/3".to_string(), b"not an endpoint".to_vec()),
        ];
        assert_eq!(
            live_endpoints(
                &live,
                &["127.0.0.1:2".to_string(), "127.0.0.1:9".to_string()]
            ),
            vec!["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:9"]
        );
        assert_eq!(live_endpoints(&[], &["h:1".to_string()]), vec!["h:1"]);
    }
}
