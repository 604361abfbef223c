//! `serve --cluster-ttl`: removing clusters nobody has joined for a while.
//!
//! Test fleets create many throwaway clusters; with a TTL the daemon removes every cluster
//! whose last join ([`ClusterRecord::touched_at_ms`], set at creation and by every join or
//! rejoin) is at least that long ago, with its memberships (the nodes stay registered), and
//! logs each removal.
//!
//! The decision is the registry's pure rule [`is_expired`] (given the time, no clock); [`expire_clusters`]
//! applies it to a store, re-checking inside the deleting transaction so a join that lands
//! meanwhile keeps its cluster; [`ClusterExpiry`] is the timer glue that runs a sweep every
//! [`sweep_interval`]. Several servers on one shared store (etcd) elect the one that sweeps
//! ([`ClusterExpiry::start_elected`], `crate::ha`): the others skip their ticks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::registry::Registry;
use crate::store::{AdminStore, ClusterRecord, ClusterRef, StorageError};
use crate::validate::Invalid;

/// Parses a TTL such as `90s`, `30m`, `12h`, `7d` or `1h 30m` (humantime's syntax); zero
/// is refused.
pub fn parse_ttl(text: &str) -> Result<Duration, Invalid> {
    let ttl = humantime::parse_duration(text).map_err(|e| {
        Invalid(format!(
            "{text:?} is not a duration like 90s, 30m, 12h or 7d: {e}"
        ))
    })?;
    if ttl.is_zero() {
        return Err(Invalid("a cluster TTL must be longer than zero".into()));
    }
    Ok(ttl)
}

pub use crate::model::rules::is_expired;

/// How often to sweep for a given TTL: a quarter of it, between 100 ms and one minute, so a
/// cluster outlives its TTL by at most that much.
pub fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Removes every cluster expired at `now_ms` and returns the removed records. A cluster
/// joined after it was found expired is kept (the condition is checked again inside the
/// deleting transaction). The caller makes the removals durable.
pub fn expire_clusters(
    store: &dyn AdminStore,
    now_ms: u64,
    ttl: Duration,
) -> Result<Vec<ClusterRecord>, StorageError> {
    let mut candidates = Vec::new();
    for cluster in store.clusters() {
        let cluster = cluster?;
        if is_expired(&cluster, now_ms, ttl) {
            candidates.push(cluster.id);
        }
    }
    let mut removed = Vec::new();
    for id in candidates {
        let still_expired = |c: &ClusterRecord| is_expired(c, now_ms, ttl);
        if let Some(cluster) = store.delete_cluster_if(&ClusterRef::Id(id), &still_expired)? {
            removed.push(cluster);
        }
    }
    Ok(removed)
}

/// The running expiry task of a daemon.
#[derive(Debug)]
pub struct ClusterExpiry {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterExpiry {
    /// Starts sweeping `registry` for clusters untouched for `ttl`. Must be called on a
    /// tokio runtime.
    pub fn start(registry: Arc<Registry>, ttl: Duration) -> ClusterExpiry {
        ClusterExpiry::spawn(registry, ttl, None)
    }

    /// Like [`ClusterExpiry::start`], sweeping only while `elected` says this server holds
    /// the sweeper election: until the instant it holds (a lease known to be alive that
    /// long), and not at all while it holds `None`.
    pub fn start_elected(
        registry: Arc<Registry>,
        ttl: Duration,
        elected: watch::Receiver<Option<tokio::time::Instant>>,
    ) -> ClusterExpiry {
        ClusterExpiry::spawn(registry, ttl, Some(elected))
    }

    fn spawn(
        registry: Arc<Registry>,
        ttl: Duration,
        elected: Option<watch::Receiver<Option<tokio::time::Instant>>>,
    ) -> ClusterExpiry {
        let (stop, stopped) = watch::channel(false);
        tracing::info!(
            ttl = %humantime::format_duration(ttl),
            every = %humantime::format_duration(sweep_interval(ttl)),
            "cluster expiry on"
        );
        let task = tokio::spawn(run(registry, ttl, stopped, elected));
        ClusterExpiry { stop, task }
    }

    /// Stops sweeping; a sweep in progress finishes first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    registry: Arc<Registry>,
    ttl: Duration,
    mut stopped: watch::Receiver<bool>,
    elected: Option<watch::Receiver<Option<tokio::time::Instant>>>,
) {
    let mut ticks = tokio::time::interval(sweep_interval(ttl));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = super::stop_requested(&mut stopped) => return,
            _ = ticks.tick() => {}
        }
        // A lone server sweeps always; one of several only while it holds the election.
        let holds = elected.as_ref().is_none_or(|elected| {
            elected
                .borrow()
                .is_some_and(|until| tokio::time::Instant::now() < until)
        });
        if !holds {
            continue;
        }
        let store = registry.store.clone();
        let now = crate::clock::now_ms();
        let swept = tokio::task::spawn_blocking(move || expire_clusters(&*store, now, ttl)).await;
        let removed = match swept {
            Ok(Ok(removed)) => removed,
            Ok(Err(error)) => {
                tracing::error!(%error, "cluster expiry sweep failed");
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "cluster expiry sweep stopped");
                continue;
            }
        };
        if removed.is_empty() {
            continue;
        }
        if let Err(error) = registry.store.durable().await {
            tracing::error!(%error, "could not make cluster removals durable");
            continue;
        }
        for cluster in removed {
            let idle = Duration::from_millis(now.saturating_sub(cluster.touched_at_ms));
            tracing::info!(
                cluster = %cluster.name,
                id = %cluster.id,
                members = cluster.member_count(),
                idle = %humantime::format_duration(Duration::from_secs(idle.as_secs())),
                ttl = %humantime::format_duration(ttl),
                "cluster expired: removed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::store::{NewCluster, NewNode, Store};

    fn touched_at(ms: u64) -> ClusterRecord {
        ClusterRecord {
            admission: crate::model::Admission::open(),
            id: Id::from_bytes(&[1u8; 32]).unwrap(),
            name: "c".into(),
            attrs: 0,
            max_size: 2,
            endpoint_count: 1,
            created_at_ms: 0,
            touched_at_ms: ms,
            members: vec![],
        }
    }

    #[test]
    fn ttl_syntax() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_ttl("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("").is_err());
        assert!(parse_ttl("-5m").is_err());
    }

    #[test]
    fn expiry_decision() {
        let ttl = Duration::from_secs(60);
        let c = touched_at(1_000_000);
        assert!(!is_expired(&c, 1_000_000, ttl));
        assert!(!is_expired(&c, 1_059_999, ttl));
        assert!(is_expired(&c, 1_060_000, ttl));
        assert!(is_expired(&c, u64::MAX, ttl));
        // The clock went back: not expired.
        assert!(!is_expired(&c, 0, ttl));
        assert!(!is_expired(&c, 1, Duration::MAX));
        assert_eq!(
            sweep_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn sweep_removes_only_expired_clusters_and_keeps_nodes() {
        let store = Store::temporary().unwrap();
        let make = |name: &str, at: u64| {
            store
                .create_cluster(
                    NewCluster {
                        admission: Default::default(),
                        name: name.into(),
                        attrs: 0,
                        max_size: 2,
                        endpoint_count: 1,
                    },
                    at,
                )
                .unwrap()
                .0
        };
        make("old", 1_000);
        make("new", 50_000);
        let joined = make("joined", 1_000);
        let node = store
            .register_node(
                NewNode {
                    id: None,
                    name: "n".into(),
                    attrs: 0,
                    comms_key: b"c".to_vec(),
                    sig_key: b"s".to_vec(),
                    endpoints: vec!["127.0.0.1:1".into()],
                },
                1_000,
            )
            .unwrap()
            .node;
        store
            .join(&ClusterRef::Id(joined.id.clone()), &node, 45_000)
            .unwrap();

        let removed = expire_clusters(&store, 60_000, Duration::from_secs(30)).unwrap();
        let names: Vec<_> = removed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["old"]);
        assert!(store
            .cluster(&ClusterRef::Name("old".into()))
            .unwrap()
            .is_none());
        assert!(store
            .cluster(&ClusterRef::Name("new".into()))
            .unwrap()
            .is_some());
        assert!(store
            .cluster(&ClusterRef::Name("joined".into()))
            .unwrap()
            .is_some());

        let removed = expire_clusters(&store, 200_000, Duration::from_secs(30)).unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(store.clusters().count(), 0);
        assert_eq!(store.node(&node.id).unwrap(), Some(node));
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    }
}
