//! Reading a local process's CPU time, memory, open files and start time from /proc (for
//! `xlreg bench` and the registry's own process metrics), and finding the process that
//! listens on a TCP port (so `xlreg bench` can report the registry's CPU per session without
//! being told its PID). Linux only; elsewhere these return `None`.

use std::time::Duration;

/// User plus system CPU time consumed so far by process `pid`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    // Fields 14 (utime) and 15 (stime) overall are 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second()?))
}

/// The fields of `/proc/PID/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

/// Clock ticks per second, the unit of /proc's times.
fn ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then_some(per_second as f64)
}

/// What the process metrics report about a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// When the process started, seconds since the Unix epoch.
    pub start_time_s: f64,
}

/// CPU, memory, open files and start time of process `pid`.
pub fn process_stats(pid: u32) -> Option<ProcessStats> {
    let fields = stat_fields(pid)?;
    // Field 22 (starttime, ticks after boot) and 24 (rss, pages) are 19 and 21 here.
    let started_ticks: f64 = fields.get(19)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let boot_time: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())?;
    Some(ProcessStats {
        cpu: cpu_time(pid)?,
        resident_bytes: rss_pages.saturating_mul(u64::try_from(page).ok()?),
        open_fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
        start_time_s: boot_time + started_ticks / ticks_per_second()?,
    })
}

/// The PID of the local process listening on `endpoint`'s TCP port, if it is visible.
pub fn pid_listening_on(endpoint: &str) -> Option<u32> {
    let port: u16 = endpoint.rsplit_once(':')?.1.parse().ok()?;
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .next()?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// Inodes of sockets in LISTEN state (st 0A) on `port` in a /proc/net/tcp table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A").then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_its_listener_is_found() {
        let me = std::process::id();
        assert!(cpu_time(me).is_some());
        let stats = process_stats(me).unwrap();
        assert!(stats.resident_bytes > 1 << 20, "{stats:?}");
        assert!(stats.open_fds >= 3, "{stats:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            stats.start_time_s <= now + 1.0 && stats.start_time_s > now - 3600.0,
            "{stats:?}"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        assert_eq!(pid_listening_on(&endpoint), Some(me));
    }

    #[test]
    fn parses_a_proc_net_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:DDD5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 0xDDD5), vec![4242]);
        assert!(listening_inodes(table, 80).is_empty());
    }
}
