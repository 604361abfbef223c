//! Rate quotas: how many clusters a peer address and a node may create, and how many new
//! nodes a peer address may register, per unit of time (`serve --quota-*`).
//!
//! This module owns the limiter, [`Quotas`], and what configures it ([`QuotaConfig`],
//! [`Rate`]) or comes out of it ([`QuotaExceeded`], which becomes
//! [`Refusal::OverQuota`] on the wire). It owns no clock and no socket: the driver
//! (`crate::driver`), which knows the peer's address and the session's node, passes the time
//! in, asks before each write that may create a cluster or a node, and gives the charge back
//! when the write turned out to create nothing.
//!
//! # The limiter
//!
//! Each quota (`--quota-... N/PERIOD`) is a token bucket of `N` tokens refilled at `N` per
//! `PERIOD`: a burst of `N`, then `N` per `PERIOD` on average. It is kept as the generic
//! cell rate algorithm: one number per key, the time at which its bucket would be full again
//! (the "theoretical arrival time"). A key whose time has passed holds a full bucket, the
//! same as a key never seen, so it can be forgotten; that is what bounds the memory.
//!
//! # Bounded memory
//!
//! Each quota tracks at most [`QuotaConfig::max_tracked`] keys. A key that would pass the
//! bound first makes the table forget every key whose bucket is full again, and if that
//! frees less than an eighth of the table, the keys nearest to full until an eighth is free
//! (so the cost of the sweep is spread over many new keys). A forgotten key starts again
//! with a full bucket: a flood of addresses cannot grow the table, and the worst it can do
//! is give back their burst to the least recently charged addresses.
//!
//! IPv6 addresses are counted per /64 (one host usually holds a whole /64, so counting each
//! address would give it 2^64 quotas); an IPv4-mapped IPv6 address counts as its IPv4
//! address.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::id::Id;
use crate::model::{ClusterRef, Refusal, Write};
use crate::session::Millis;
use crate::validate::Invalid;

/// The default of `serve --quota-clusters-per-ip`: a fleet behind one address may create ten
/// thousand clusters at once, then about 17 a second.
pub const DEFAULT_CLUSTERS_PER_IP: Rate = Rate::new_const(10_000, 600);

/// The default of `serve --quota-clusters-per-node`: a node creates the cluster it joins,
/// rarely more; a hundred at once, then one or two a second.
pub const DEFAULT_CLUSTERS_PER_NODE: Rate = Rate::new_const(100, 60);

/// The default of `serve --quota-registrations-per-ip`: ten thousand new nodes booting at
/// once behind one NAT, then about 17 a second (a known node registering again is not
/// counted).
pub const DEFAULT_REGISTRATIONS_PER_IP: Rate = Rate::new_const(10_000, 600);

/// The default of [`QuotaConfig::max_tracked`]: keys (addresses or nodes) each quota keeps.
/// Full, a table has 32,768 buckets of 41 bytes (1.3 MiB), and a node id 48 bytes more on
/// the heap: under 5 MiB for the three quotas. A key stays only while its bucket refills (an
/// address that registered one node, 60 ms at the default rate), so only a flood from many
/// addresses fills a table.
pub const DEFAULT_MAX_TRACKED: usize = 16_384;

/// A rate: a burst of `count`, refilled at `count` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    period: Duration,
}

impl Rate {
    /// `count` (at least 1) per `period`, if the period is long enough to divide into
    /// `count` microsecond steps.
    pub fn new(count: u32, period: Duration) -> Result<Rate, Invalid> {
        if count == 0 {
            return Err(Invalid("a quota must allow at least 1".into()));
        }
        if period.is_zero() {
            return Err(Invalid("the period must be longer than zero".into()));
        }
        let rate = Rate { count, period };
        if rate.interval_us() == 0 {
            return Err(Invalid(format!(
                "a quota of {count} per {} is finer than a microsecond each",
                humantime::format_duration(period)
            )));
        }
        Ok(rate)
    }

    const fn new_const(count: u32, period_s: u64) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(period_s),
        }
    }

    /// Parses a quota flag: `N/PERIOD` (`1000/10m`, `50/1s`, `100/s`, PERIOD in humantime's
    /// syntax), or `off` (or `0`) for no quota.
    pub fn parse(text: &str) -> Result<Option<Rate>, Invalid> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") || text == "0" {
            return Ok(None);
        }
        let bad = |why: String| {
            Invalid(format!(
                "{text:?} is not a quota like 1000/10m, 50/1s or off: {why}"
            ))
        };
        let (count, period) = text
            .split_once('/')
            .ok_or_else(|| bad("no /PERIOD".into()))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|e| bad(format!("count: {e}")))?;
        let period = period.trim();
        // "100/s" reads as "100/1s".
        let period = if period.chars().all(|c| c.is_ascii_alphabetic()) {
            format!("1{period}")
        } else {
            period.to_string()
        };
        let period = humantime::parse_duration(&period).map_err(|e| bad(format!("period: {e}")))?;
        Rate::new(count, period).map(Some).map_err(|e| bad(e.0))
    }

    /// The burst, and how many are refilled per [`period`](Rate::period).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Microseconds between two refilled tokens, rounded down: the refill is at most a
    /// microsecond per token faster than `count` per `period`.
    fn interval_us(&self) -> u64 {
        self.period_us() / u64::from(self.count)
    }

    /// How far ahead of now a bucket may be charged: `count` intervals (not the period,
    /// which the rounded-down interval may divide into more than `count`).
    fn burst_us(&self) -> u64 {
        self.interval_us() * u64::from(self.count)
    }

    fn period_us(&self) -> u64 {
        u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX / 4)
    }
}

impl fmt::Display for Rate {
    /// `1000/10m`, as the flag takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

/// The quotas of a running registry (`serve --quota-*`); `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// New clusters per peer address (`--quota-clusters-per-ip`).
    pub clusters_per_ip: Option<Rate>,
    /// New clusters per registered node (`--quota-clusters-per-node`).
    pub clusters_per_node: Option<Rate>,
    /// New nodes per peer address (`--quota-registrations-per-ip`).
    pub registrations_per_ip: Option<Rate>,
    /// Most keys each quota keeps (at least 8).
    pub max_tracked: usize,
}

impl Default for QuotaConfig {
    fn default() -> QuotaConfig {
        QuotaConfig {
            clusters_per_ip: Some(DEFAULT_CLUSTERS_PER_IP),
            clusters_per_node: Some(DEFAULT_CLUSTERS_PER_NODE),
            registrations_per_ip: Some(DEFAULT_REGISTRATIONS_PER_IP),
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }
}

impl QuotaConfig {
    /// No quota at all.
    pub fn off() -> QuotaConfig {
        QuotaConfig {
            clusters_per_ip: None,
            clusters_per_node: None,
            registrations_per_ip: None,
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }
}

/// Which quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// New clusters per peer address.
    ClustersPerIp,
    /// New clusters per node.
    ClustersPerNode,
    /// New nodes per peer address.
    RegistrationsPerIp,
}

impl QuotaKind {
    /// Every quota, in the order of [`QuotaKind::index`].
    pub const ALL: [QuotaKind; 3] = [
        QuotaKind::ClustersPerIp,
        QuotaKind::ClustersPerNode,
        QuotaKind::RegistrationsPerIp,
    ];

    /// The metrics label: `clusters_per_ip`, `clusters_per_node`, `registrations_per_ip`.
    pub fn label(self) -> &'static str {
        match self {
            QuotaKind::ClustersPerIp => "clusters_per_ip",
            QuotaKind::ClustersPerNode => "clusters_per_node",
            QuotaKind::RegistrationsPerIp => "registrations_per_ip",
        }
    }

    /// Its position in [`QuotaKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            QuotaKind::ClustersPerIp => 0,
            QuotaKind::ClustersPerNode => 1,
            QuotaKind::RegistrationsPerIp => 2,
        }
    }

    /// What is counted, as the refusal says it.
    fn counted(self) -> &'static str {
        match self {
            QuotaKind::ClustersPerIp => "new clusters from this address",
            QuotaKind::ClustersPerNode => "new clusters by this node",
            QuotaKind::RegistrationsPerIp => "new nodes registered from this address",
        }
    }

    /// The `serve` flag that sets it.
    fn flag(self) -> &'static str {
        match self {
            QuotaKind::ClustersPerIp => "--quota-clusters-per-ip",
            QuotaKind::ClustersPerNode => "--quota-clusters-per-node",
            QuotaKind::RegistrationsPerIp => "--quota-registrations-per-ip",
        }
    }
}

/// A write turned down because a quota is used up: temporary, it is answered as
/// Unavailable, with the time after which the same write would be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "quota: {} are limited to {} (serve {}); try again in {} s",
    kind.counted(), rate, kind.flag(), retry_after_s(*retry_after)
)]
pub struct QuotaExceeded {
    /// The quota used up.
    pub kind: QuotaKind,
    /// Its rate.
    pub rate: Rate,
    /// How long until one more is admitted.
    pub retry_after: Duration,
}

/// Whole seconds, rounded up, at least 1: "try again in 0 s" would invite a retry too soon.
fn retry_after_s(after: Duration) -> u64 {
    (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)
}

impl From<QuotaExceeded> for Refusal {
    fn from(exceeded: QuotaExceeded) -> Refusal {
        Refusal::OverQuota {
            text: exceeded.to_string(),
            retry_after_ms: u64::try_from(exceeded.retry_after.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// What a write may be charged, before it is known whether it creates anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// A Create: a new cluster, charged to the address and to the node (if the session has
    /// registered one).
    Cluster {
        /// The session's node.
        node: Option<Id>,
    },
    /// A registration: a new node, charged to the address.
    Registration,
}

impl Charge {
    /// The charge a write may bring, `None` for a write that never creates a cluster or a
    /// node (a Join).
    pub fn of(write: &Write, node: Option<&Id>) -> Option<Charge> {
        match write {
            Write::CreateCluster { .. } => Some(Charge::Cluster {
                node: node.cloned(),
            }),
            Write::RegisterNode { .. } => Some(Charge::Registration),
            Write::Join { .. } | Write::Owner { .. } | Write::Leave { .. } => None,
        }
    }
}

/// What a quota is kept per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
    Node(Id),
    /// A cluster as a request named it (its ID in hex, or its name).
    Cluster(String),
}

impl Key {
    fn address(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => Key::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Key::V6(prefix)
                }
            },
        }
    }
}

/// One quota's buckets: for each key, the time (in microseconds) at which its bucket is
/// full again.
#[derive(Debug)]
struct Table {
    rate: Rate,
    full_at: HashMap<Key, u64>,
}

impl Table {
    /// `Err(wait)` if `key` has no token at `now`, with the wait for the next one.
    fn check(&self, key: &Key, now: u64) -> Result<(), Duration> {
        let full_at = self.full_at.get(key).copied().unwrap_or(0).max(now);
        let after = full_at + self.rate.interval_us();
        let over = (after - now).saturating_sub(self.rate.burst_us());
        if over > 0 {
            return Err(Duration::from_micros(over));
        }
        Ok(())
    }

    /// Takes one token from `key` (whether it has one or not: a write charged after the
    /// fact may leave the bucket short).
    fn take(&mut self, key: Key, now: u64, max_tracked: usize) {
        if !self.full_at.contains_key(&key) && self.full_at.len() >= max_tracked {
            self.make_room(now, max_tracked);
        }
        let interval = self.rate.interval_us();
        let full_at = self.full_at.entry(key).or_insert(0);
        *full_at = (*full_at).max(now) + interval;
    }

    /// Gives back a token taken by [`take`](Table::take).
    fn give_back(&mut self, key: &Key) {
        let interval = self.rate.interval_us();
        if let Some(full_at) = self.full_at.get_mut(key) {
            *full_at = full_at.saturating_sub(interval);
        }
    }

    /// Forgets the keys whose buckets are full at `now`, and if that frees less than an
    /// eighth of `max_tracked`, the keys nearest to full until it does.
    fn make_room(&mut self, now: u64, max_tracked: usize) {
        self.full_at.retain(|_, full_at| *full_at > now);
        let target = max_tracked - max_tracked / 8;
        if self.full_at.len() > target {
            let excess = self.full_at.len() - target;
            let mut times: Vec<u64> = self.full_at.values().copied().collect();
            let (_, &mut nth, _) = times.select_nth_unstable(excess - 1);
            // Ties at the boundary may free a few more than the eighth: fine.
            self.full_at.retain(|_, full_at| *full_at > nth);
        }
    }
}

/// A charge taken by [`Quotas::reserve`], to be given back with [`Quotas::give_back`] if
/// the write created nothing.
#[derive(Debug)]
#[must_use = "a reservation is kept, or given back if the write created nothing"]
pub struct Reservation {
    taken: Vec<(QuotaKind, Key)>,
}

/// The registry's quotas: every session shares one. The time passed in is milliseconds on
/// any clock that does not go back (the driver uses a monotonic one).
#[derive(Debug)]
pub struct Quotas {
    max_tracked: usize,
    /// Indexed by [`QuotaKind::index`]; `None` for a quota turned off.
    tables: Mutex<[Option<Table>; 3]>,
}

impl Quotas {
    /// The quotas `config` sets.
    pub fn new(config: &QuotaConfig) -> Quotas {
        let table = |rate: Option<Rate>| {
            rate.map(|rate| Table {
                rate,
                full_at: HashMap::new(),
            })
        };
        Quotas {
            max_tracked: config.max_tracked.max(8),
            tables: Mutex::new([
                table(config.clusters_per_ip),
                table(config.clusters_per_node),
                table(config.registrations_per_ip),
            ]),
        }
    }

    /// Locks the tables; a panic elsewhere leaves them consistent (plain number updates).
    fn lock(&self) -> MutexGuard<'_, [Option<Table>; 3]> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The quotas and keys `charge` from `ip` is counted against.
    fn keys(charge: &Charge, ip: IpAddr) -> Vec<(QuotaKind, Key)> {
        match charge {
            Charge::Cluster { node } => {
                let mut keys = vec![(QuotaKind::ClustersPerIp, Key::address(ip))];
                if let Some(node) = node {
                    keys.push((QuotaKind::ClustersPerNode, Key::Node(node.clone())));
                }
                keys
            }
            Charge::Registration => vec![(QuotaKind::RegistrationsPerIp, Key::address(ip))],
        }
    }

    /// Takes one of `charge` from every quota it counts against, if each has one left at
    /// `now`; otherwise takes nothing and says which quota is used up (the first, in the
    /// order address, node) and for how long.
    pub fn reserve(
        &self,
        charge: &Charge,
        ip: IpAddr,
        now: Millis,
    ) -> Result<Reservation, QuotaExceeded> {
        let now = now.saturating_mul(1000);
        let keys = Self::keys(charge, ip);
        let mut tables = self.lock();
        for (kind, key) in &keys {
            if let Some(table) = &tables[kind.index()] {
                table.check(key, now).map_err(|retry_after| QuotaExceeded {
                    kind: *kind,
                    rate: table.rate,
                    retry_after,
                })?;
            }
        }
        let mut taken = Vec::with_capacity(keys.len());
        for (kind, key) in keys {
            if let Some(table) = &mut tables[kind.index()] {
                table.take(key.clone(), now, self.max_tracked);
                taken.push((kind, key));
            }
        }
        Ok(Reservation { taken })
    }

    /// Gives back what `reservation` took: the write created nothing.
    pub fn give_back(&self, reservation: Reservation) {
        let mut tables = self.lock();
        for (kind, key) in &reservation.taken {
            if let Some(table) = &mut tables[kind.index()] {
                table.give_back(key);
            }
        }
    }

    /// Charges `charge` after the fact, whatever is left: a write let through as one that
    /// would create nothing created something after all (the cluster was deleted in
    /// between).
    pub fn charge_anyway(&self, charge: &Charge, ip: IpAddr, now: Millis) {
        let now = now.saturating_mul(1000);
        let mut tables = self.lock();
        for (kind, key) in Self::keys(charge, ip) {
            if let Some(table) = &mut tables[kind.index()] {
                table.take(key, now, self.max_tracked);
            }
        }
    }

    /// How many keys `kind` tracks now.
    pub fn tracked(&self, kind: QuotaKind) -> usize {
        self.lock()[kind.index()]
            .as_ref()
            .map_or(0, |table| table.full_at.len())
    }
}

/// Failed admission proofs allowed per peer address: a burst of 10, then 10 a minute
/// (docs/protocol.md section 14.9).
pub const FAILED_PROOFS_PER_IP: Rate = Rate::new_const(10, 60);

/// Failed admission proofs allowed per cluster: a burst of 100, then 100 a minute.
pub const FAILED_PROOFS_PER_CLUSTER: Rate = Rate::new_const(100, 60);

/// The throttle on failed admission proofs (join, list and owner proofs that do not
/// verify): two token buckets, per peer address and per cluster as the request names it,
/// charged only by failures. While either is empty, a request carrying a proof is refused
/// before its proof is verified. The time passed in is milliseconds on a clock that does
/// not go back.
#[derive(Debug)]
pub struct ProofThrottle {
    max_tracked: usize,
    /// Per address, then per cluster.
    tables: Mutex<[Table; 2]>,
}

impl ProofThrottle {
    /// A throttle allowing `per_ip` failures per address and `per_cluster` per cluster,
    /// tracking at most `max_tracked` keys of each.
    pub fn new(per_ip: Rate, per_cluster: Rate, max_tracked: usize) -> ProofThrottle {
        let table = |rate| Table {
            rate,
            full_at: HashMap::new(),
        };
        ProofThrottle {
            max_tracked: max_tracked.max(8),
            tables: Mutex::new([table(per_ip), table(per_cluster)]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, [Table; 2]> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(ip: IpAddr, cluster: &ClusterRef) -> [Key; 2] {
        [Key::address(ip), Key::Cluster(cluster.to_string())]
    }

    /// Whether a proof from `ip` about `cluster` may be checked at `now`; the refusal
    /// ([`Refusal::OverQuota`], answered as Unavailable with RetryAfterMs) otherwise.
    pub fn check(&self, ip: IpAddr, cluster: &ClusterRef, now: Millis) -> Result<(), Refusal> {
        let now = now.saturating_mul(1000);
        let tables = self.lock();
        let [by_ip, by_cluster] = Self::keys(ip, cluster);
        let (what, wait) = match (
            tables[0].check(&by_ip, now),
            tables[1].check(&by_cluster, now),
        ) {
            (Ok(()), Ok(())) => return Ok(()),
            (Err(wait), _) => ("from this address".to_string(), wait),
            (Ok(()), Err(wait)) => (format!("for cluster {cluster}"), wait),
        };
        Err(Refusal::OverQuota {
            text: format!(
                "admission: too many failed proofs {what}; try again in {} s",
                retry_after_s(wait)
            ),
            retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Counts a failed proof from `ip` about `cluster` at `now`.
    pub fn failed(&self, ip: IpAddr, cluster: &ClusterRef, now: Millis) {
        let now = now.saturating_mul(1000);
        let mut tables = self.lock();
        let [by_ip, by_cluster] = Self::keys(ip, cluster);
        tables[0].take(by_ip, now, self.max_tracked);
        tables[1].take(by_cluster, now, self.max_tracked);
    }
}

impl Default for ProofThrottle {
    fn default() -> ProofThrottle {
        ProofThrottle::new(
            FAILED_PROOFS_PER_IP,
            FAILED_PROOFS_PER_CLUSTER,
            DEFAULT_MAX_TRACKED,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn failed_proofs_are_throttled_per_address_and_per_cluster() {
        let throttle = ProofThrottle::new(
            Rate::new(2, Duration::from_secs(60)).unwrap(),
            Rate::new(3, Duration::from_secs(60)).unwrap(),
            16,
        );
        let web = ClusterRef::Name("web".into());
        let db = ClusterRef::Name("db".into());
        for _ in 0..2 {
            assert!(throttle.check(A, &web, 0).is_ok());
            throttle.failed(A, &web, 0);
        }
        let Err(Refusal::OverQuota {
            text,
            retry_after_ms,
        }) = throttle.check(A, &db, 0)
        else {
            panic!("the address is throttled")
        };
        assert!(text.contains("from this address"), "{text}");
        assert_eq!(retry_after_ms, 30_000);
        // Another address may still try web, once more: then web is throttled for all.
        assert!(throttle.check(B, &web, 0).is_ok());
        throttle.failed(B, &web, 0);
        let Err(Refusal::OverQuota { text, .. }) = throttle.check(B, &web, 0) else {
            panic!("the cluster is throttled")
        };
        assert!(text.contains("for cluster web"), "{text}");
        assert!(throttle.check(B, &db, 0).is_ok());
        // The buckets refill.
        assert!(throttle.check(A, &web, 60_000).is_ok());
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn node(b: u8) -> Option<Id> {
        Some(Id::from_bytes(&[b; 32]).unwrap())
    }

    fn quotas(clusters_per_ip: &str, clusters_per_node: &str, registrations: &str) -> Quotas {
        Quotas::new(&QuotaConfig {
            clusters_per_ip: Rate::parse(clusters_per_ip).unwrap(),
            clusters_per_node: Rate::parse(clusters_per_node).unwrap(),
            registrations_per_ip: Rate::parse(registrations).unwrap(),
            max_tracked: DEFAULT_MAX_TRACKED,
        })
    }

    #[test]
    fn rates_parse_from_the_flag_syntax_and_print_back() {
        let rate = Rate::parse("1000/10m").unwrap().unwrap();
        assert_eq!(rate.count(), 1000);
        assert_eq!(rate.period(), Duration::from_secs(600));
        assert_eq!(rate.to_string(), "1000/10m");
        assert_eq!(
            Rate::parse("100/s").unwrap(),
            Some(Rate::new(100, Duration::from_secs(1)).unwrap())
        );
        assert_eq!(Rate::parse("off").unwrap(), None);
        assert_eq!(Rate::parse("0").unwrap(), None);
        for bad in [
            "",
            "100",
            "x/1m",
            "0/1m",
            "5/",
            "5/banana",
            "2000000/1s",
            "-1/1m",
        ] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.0.contains("is not a quota like"), "{bad}: {e}");
        }
        assert_eq!(DEFAULT_CLUSTERS_PER_IP.to_string(), "10000/10m");
    }

    #[test]
    fn an_address_gets_its_burst_then_one_per_interval() {
        // 3 per 3 s: a burst of 3, then one a second.
        let quotas = quotas("3/3s", "off", "off");
        let create = Charge::Cluster { node: None };
        for _ in 0..3 {
            let _ = quotas.reserve(&create, A, 1_000).unwrap();
        }
        let e = quotas.reserve(&create, A, 1_000).unwrap_err();
        assert_eq!(e.kind, QuotaKind::ClustersPerIp);
        assert_eq!(e.retry_after, Duration::from_secs(1));
        assert_eq!(
            e.to_string(),
            "quota: new clusters from this address are limited to 3/3s \
             (serve --quota-clusters-per-ip); try again in 1 s"
        );
        // Another address has its own bucket.
        let _ = quotas.reserve(&create, B, 1_000).unwrap();
        // Just before the refill: still refused, with the rest of the wait.
        let e = quotas.reserve(&create, A, 1_999).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_millis(1));
        assert_eq!(retry_after_s(e.retry_after), 1);
        let _ = quotas.reserve(&create, A, 2_000).unwrap();
        assert!(quotas.reserve(&create, A, 2_000).is_err());
        // After a whole period the burst is back.
        for _ in 0..3 {
            let _ = quotas.reserve(&create, A, 5_000).unwrap();
        }
        assert!(quotas.reserve(&create, A, 5_000).is_err());
    }

    #[test]
    fn the_burst_is_the_count_even_when_the_interval_rounds_down() {
        // 6 per 10 us: an interval of 1 us (rounded down from 1.67), a burst of 6, not 10.
        let rate = Rate::new(6, Duration::from_micros(10)).unwrap();
        let quotas = Quotas::new(&QuotaConfig {
            registrations_per_ip: Some(rate),
            ..QuotaConfig::off()
        });
        for _ in 0..6 {
            let _ = quotas.reserve(&Charge::Registration, A, 0).unwrap();
        }
        assert!(quotas.reserve(&Charge::Registration, A, 0).is_err());
    }

    #[test]
    fn a_create_counts_against_its_address_and_its_node() {
        let quotas = quotas("5/1m", "2/1m", "off");
        let _ = quotas
            .reserve(&Charge::Cluster { node: node(1) }, A, 0)
            .unwrap();
        let _ = quotas
            .reserve(&Charge::Cluster { node: node(1) }, A, 0)
            .unwrap();
        let e = quotas
            .reserve(&Charge::Cluster { node: node(1) }, A, 0)
            .unwrap_err();
        assert_eq!(e.kind, QuotaKind::ClustersPerNode);
        assert!(e.to_string().contains("new clusters by this node"), "{e}");
        // The refused create took nothing from the address: three more nodes get three.
        for n in 2..5 {
            let _ = quotas
                .reserve(&Charge::Cluster { node: node(n) }, A, 0)
                .unwrap();
        }
        let e = quotas
            .reserve(&Charge::Cluster { node: node(9) }, A, 0)
            .unwrap_err();
        assert_eq!(e.kind, QuotaKind::ClustersPerIp);
        // Registrations are counted apart, and this one is off.
        for _ in 0..100 {
            let _ = quotas.reserve(&Charge::Registration, A, 0).unwrap();
        }
    }

    #[test]
    fn a_charge_given_back_is_available_again() {
        let quotas = quotas("off", "off", "2/1h");
        let first = quotas.reserve(&Charge::Registration, A, 0).unwrap();
        let _second = quotas.reserve(&Charge::Registration, A, 0).unwrap();
        assert!(quotas.reserve(&Charge::Registration, A, 0).is_err());
        quotas.give_back(first);
        let _third = quotas.reserve(&Charge::Registration, A, 0).unwrap();
        assert!(quotas.reserve(&Charge::Registration, A, 0).is_err());
    }

    #[test]
    fn a_charge_after_the_fact_may_leave_a_bucket_short() {
        let quotas = quotas("off", "off", "1/10s");
        let _ = quotas.reserve(&Charge::Registration, A, 0).unwrap();
        quotas.charge_anyway(&Charge::Registration, A, 0);
        // Two taken from a bucket of one: the next is 10 s further away.
        let e = quotas.reserve(&Charge::Registration, A, 0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(20));
        assert!(quotas.reserve(&Charge::Registration, A, 19_999).is_err());
        let _ = quotas.reserve(&Charge::Registration, A, 20_000).unwrap();
    }

    #[test]
    fn quotas_turned_off_admit_everything_and_track_nothing() {
        let quotas = Quotas::new(&QuotaConfig::off());
        for n in 0..1000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(n));
            let _ = quotas
                .reserve(&Charge::Cluster { node: node(1) }, ip, 0)
                .unwrap();
            let _ = quotas.reserve(&Charge::Registration, ip, 0).unwrap();
        }
        for kind in QuotaKind::ALL {
            assert_eq!(quotas.tracked(kind), 0);
        }
    }

    #[test]
    fn a_flood_of_addresses_cannot_grow_the_table_past_its_bound() {
        let quotas = Quotas::new(&QuotaConfig {
            registrations_per_ip: Rate::parse("2/1h").unwrap(),
            max_tracked: 64,
            ..QuotaConfig::off()
        });
        // 10,000 addresses, each registering once, all within the hour: no bucket refills.
        for n in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(n));
            let _ = quotas
                .reserve(&Charge::Registration, ip, u64::from(n))
                .unwrap();
            assert!(quotas.tracked(QuotaKind::RegistrationsPerIp) <= 64);
        }
        // The address charged last is still remembered: its next one is allowed, the one
        // after is not.
        let last = IpAddr::V4(Ipv4Addr::from(9_999u32));
        let _ = quotas.reserve(&Charge::Registration, last, 10_000).unwrap();
        assert!(quotas.reserve(&Charge::Registration, last, 10_000).is_err());
        // Once every bucket is full again, a new key sweeps all of them out.
        assert_eq!(quotas.tracked(QuotaKind::RegistrationsPerIp), 64);
        let later = 10_000 + 3_600_000;
        let _ = quotas.reserve(&Charge::Registration, A, later).unwrap();
        assert_eq!(quotas.tracked(QuotaKind::RegistrationsPerIp), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let quotas = quotas("off", "off", "1/1h");
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _ = quotas.reserve(&Charge::Registration, one, 0).unwrap();
        assert!(quotas.reserve(&Charge::Registration, same_64, 0).is_err());
        let _ = quotas.reserve(&Charge::Registration, other_64, 0).unwrap();
        let _ = quotas.reserve(&Charge::Registration, A, 0).unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(quotas.reserve(&Charge::Registration, mapped, 0).is_err());
    }

    proptest::proptest! {
        /// Whatever the requests' timing and give-backs, an address never has more than
        /// its burst plus what its rate refilled since its first request; and a refusal's
        /// wait is honest: the same request at the end of it is admitted.
        #[test]
        fn a_quota_never_admits_more_than_burst_plus_refill(
            count in proptest::prop_oneof![1u32..20, 20u32..20_000],
            period_ms in 20u64..10_000,
            steps in proptest::collection::vec((0u64..2_000, proptest::bool::ANY), 1..200),
        ) {
            let rate = Rate::new(count, Duration::from_millis(period_ms)).unwrap();
            let quotas = Quotas::new(&QuotaConfig {
                registrations_per_ip: Some(rate),
                ..QuotaConfig::off()
            });
            let (mut now, mut kept) = (0u64, 0u64);
            for (gap, give_back) in steps {
                now += gap;
                match quotas.reserve(&Charge::Registration, A, now) {
                    Ok(reservation) if give_back => quotas.give_back(reservation),
                    Ok(_) => {
                        kept += 1;
                        // Refill in whole microseconds per token, as the limiter counts.
                        let refilled = now * 1000 / rate.interval_us();
                        proptest::prop_assert!(kept <= u64::from(count) + refilled, "{kept} kept");
                    }
                    Err(exceeded) => {
                        let wait = u64::try_from(exceeded.retry_after.as_micros()).unwrap();
                        let at = (now * 1000 + wait).div_ceil(1000);
                        let retry = quotas.reserve(&Charge::Registration, A, at);
                        proptest::prop_assert!(
                            retry.is_ok(),
                            "refused again at the end of its wait"
                        );
                        quotas.give_back(retry.unwrap());
                    }
                }
            }
        }
    }

    #[test]
    fn a_quota_refusal_is_a_refusal_with_its_text() {
        let exceeded = QuotaExceeded {
            kind: QuotaKind::RegistrationsPerIp,
            rate: DEFAULT_REGISTRATIONS_PER_IP,
            retry_after: Duration::from_millis(1500),
        };
        let refusal = Refusal::from(exceeded);
        assert_eq!(
            refusal.to_string(),
            "quota: new nodes registered from this address are limited to 10000/10m \
             (serve --quota-registrations-per-ip); try again in 2 s"
        );
    }
}
