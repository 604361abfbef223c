//! Staying reachable under floods: how many connections one peer address may hold, and
//! log lines about refused or silently closed connections that a flood cannot multiply.
//!
//! This module owns [`PerPeerLimit`] (the `--max-connections-per-ip` budget) and
//! [`LogSummary`] (one line per event kind and interval instead of one per event). The
//! accept loop in `crate::server` applies both; the metrics count every event.
//!
//! # Why per address
//!
//! The connection limit protects the process, but one host that opens connections as fast
//! as they are closed would take the whole budget and starve everyone else. A per-address
//! budget well below the total keeps room for every other host: with the defaults (1,024
//! connections, 64 per address) at least 16 flooding addresses are needed to fill it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default of `serve --max-connections-per-ip`: a sixteenth of the default
/// `--max-connections` (1,024), so that even eight flooding hosts hold only half the
/// budget (tests/floods.rs: at 128, eight hosts re-opening idle connections took all of
/// it and starved everyone else). A host that legitimately holds more (a NAT gateway, a
/// proxy in front of the registry, `xlreg bench` with 64 clients, each briefly holding two
/// connections as it reconnects) needs a higher value: docs/running.md.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;

/// How long a [`LogSummary`] gathers events before it writes its summary line.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Most distinct addresses a summary remembers per interval (beyond, it says "at least").
const MAX_SUMMARY_ADDRESSES: usize = 4096;

/// The listen backlog of the registry's socket (the kernel caps it at
/// `net.core.somaxconn`, 4096 on current kernels). Larger than tokio's 1024, so that a
/// flood of connection attempts overflows the accept queue later: a SYN dropped from a full
/// queue costs a genuine client a 1 s retransmission.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening TCP socket on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's TcpListener::bind: a restarted registry can bind while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Locks `mutex`; everything guarded here stays consistent across a panic (plain counter
/// updates), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many connections each peer address holds, under a per-address maximum.
#[derive(Debug, Clone)]
pub struct PerPeerLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerPeerLimit {
    /// A limit of `max` connections per address (at least 1).
    pub fn new(max: usize) -> PerPeerLimit {
        PerPeerLimit {
            max: max.max(1),
            open: Arc::default(),
        }
    }

    /// The per-address maximum.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection from `ip`, or `None` if it already holds the
    /// maximum. The place is given back when the returned slot is dropped.
    pub fn try_admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = lock(&self.open);
        let held = open.entry(ip).or_insert(0);
        if *held >= self.max {
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            ip,
            open: Arc::clone(&self.open),
        })
    }

    /// How many connections `ip` holds now.
    pub fn held_by(&self, ip: IpAddr) -> usize {
        lock(&self.open).get(&ip).copied().unwrap_or(0)
    }
}

/// One connection's place under a [`PerPeerLimit`]; dropping it frees the place.
#[derive(Debug)]
pub struct PeerSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(held) = open.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                // Forget idle addresses: the map stays as small as the open connections.
                open.remove(&self.ip);
            }
        }
    }
}

/// A log of one kind of event that a flood could multiply (connections refused, sessions
/// that never authenticated, failed accepts): the first event of each interval is logged
/// in full by the caller, the rest are counted, and the next interval's first event also
/// writes one summary line, "dropped 73278 unauthenticated connections from 1 address in
/// the last 60 s". So a flood writes at most two lines per interval, whatever its rate.
#[derive(Debug)]
pub struct LogSummary {
    verb: &'static str,
    what: &'static str,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    unlogged: u64,
    addresses: HashSet<IpAddr>,
}

impl LogSummary {
    /// A summary of events described as `what` ("unauthenticated connections"), written
    /// once per `interval`.
    pub fn new(what: &'static str, interval: Duration) -> LogSummary {
        LogSummary {
            verb: "dropped",
            what,
            interval,
            window: Mutex::new(Window::default()),
        }
    }

    /// The same summary, saying `verb` ("refused") where it says "dropped".
    pub fn with_verb(self, verb: &'static str) -> LogSummary {
        LogSummary { verb, ..self }
    }

    /// Notes one event from `ip`. Returns true if the caller should log this one in full
    /// (the first of an interval); false if it was only counted.
    pub fn note(&self, ip: Option<IpAddr>) -> bool {
        let mut window = lock(&self.window);
        let now = Instant::now();
        match window.started {
            Some(started) if now.duration_since(started) < self.interval => {
                window.unlogged += 1;
                if let Some(ip) = ip {
                    if window.addresses.len() < MAX_SUMMARY_ADDRESSES {
                        window.addresses.insert(ip);
                    }
                }
                false
            }
            started => {
                if let Some(started) = started {
                    if window.unlogged > 0 {
                        let addresses = window.addresses.len();
                        let at_least = if addresses >= MAX_SUMMARY_ADDRESSES {
                            "at least "
                        } else {
                            ""
                        };
                        tracing::warn!(
                            dropped = window.unlogged,
                            addresses,
                            "{} {} {} from {at_least}{addresses} address{} in the last {} s",
                            self.verb,
                            window.unlogged,
                            self.what,
                            if addresses == 1 { "" } else { "es" },
                            now.duration_since(started).as_secs()
                        );
                    }
                }
                *window = Window {
                    started: Some(now),
                    ..Window::default()
                };
                true
            }
        }
    }
}

/// Sessions that ended before they authenticated (a bogus or missing hello, a dropped
/// frame before Member): the first of each interval is logged as a session line, the rest
/// summarised.
pub static UNAUTHENTICATED: LazyLock<LogSummary> =
    LazyLock::new(|| LogSummary::new("unauthenticated connections", SUMMARY_INTERVAL));

/// Sessions refused over a rate quota (`crate::quota`): the first of each interval is
/// logged as a session line, the rest summarised ("refused 1234 sessions over a quota from
/// 1 address in the last 60 s").
pub static OVER_QUOTA: LazyLock<LogSummary> = LazyLock::new(|| {
    LogSummary::new("sessions over a quota", SUMMARY_INTERVAL).with_verb("refused")
});

/// Failed accepts (usually out of file descriptors).
pub static ACCEPT_FAILURES: LazyLock<LogSummary> =
    LazyLock::new(|| LogSummary::new("failed accepts", SUMMARY_INTERVAL));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_its_share_and_gets_it_back() {
        let limit = PerPeerLimit::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = limit.try_admit(a).unwrap();
        let _second = limit.try_admit(a).unwrap();
        assert!(limit.try_admit(a).is_none());
        // Another address is not affected.
        let _other = limit.try_admit(b).unwrap();
        drop(first);
        assert_eq!(limit.held_by(a), 1);
        assert!(limit.try_admit(a).is_some());
    }

    #[test]
    fn a_summary_logs_the_first_of_an_interval_and_counts_the_rest() {
        let summary = LogSummary::new("test events", Duration::from_millis(50));
        let ip = Some("127.0.0.2".parse().unwrap());
        assert!(summary.note(ip));
        for _ in 0..1000 {
            assert!(!summary.note(ip));
        }
        std::thread::sleep(Duration::from_millis(60));
        // A new interval: this one is logged, after the summary of the last.
        assert!(summary.note(ip));
        assert!(!summary.note(None));
    }
}
