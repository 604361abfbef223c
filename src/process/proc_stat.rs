//! Reading a local process's CPU time, memory, open files and start time from /proc (for
//! `xlreg bench` and the registry's own process metrics), and finding the process that
//! listens on a TCP port (so `xlreg bench` can report the registry's CPU per session without
//! being told its PID). Linux only; elsewhere these return `None`.

use std::time::Duration;

/// User plus system CPU time consumed so far by process `pid`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    ticks_to_time(&stat_fields(pid)?)
}

/// The fields of `/proc/PID/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(split_stat(&stat)?.1)
}

/// A `stat` file's command name (field 2) and the fields after it (field 3 onwards).
fn split_stat(stat: &str) -> Option<(&str, Vec<String>)> {
    // The command name may contain spaces and parentheses; it ends at the last ')'.
    let close = stat.rfind(')')?;
    let name = stat.get(stat.find('(')? + 1..close)?;
    let after_name = stat.get(close + 2..)?;
    Some((
        name,
        after_name.split_whitespace().map(str::to_string).collect(),
    ))
}

/// User plus system CPU time in a `stat` file's fields after the name.
fn ticks_to_time(fields: &[String]) -> Option<Duration> {
    // Fields 14 (utime) and 15 (stime) overall are 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second()?))
}

/// A group of a process's threads: those whose names differ only in a trailing number (sled's
/// I/O threads `sled-io-0` to `sled-io-6` are the group `sled-io`).
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadGroup {
    /// The threads' name without its trailing number.
    pub name: String,
    /// User plus system CPU time of the group's live threads so far.
    pub cpu: Duration,
    /// Context switches of the group's live threads so far, voluntary and involuntary.
    pub switches: u64,
}

/// CPU time and context switches of process `pid`'s live threads, by [`ThreadGroup`], in
/// name order. A thread that has exited is no longer counted, so the difference of two calls
/// covers the threads alive at both.
pub fn thread_groups(pid: u32) -> Option<Vec<ThreadGroup>> {
    let mut groups: Vec<ThreadGroup> = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread may exit while it is read: skip it.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let Some((name, fields)) = split_stat(&stat) else {
            continue;
        };
        let cpu = ticks_to_time(&fields)?;
        let switches = status
            .lines()
            .filter_map(|line| {
                let rest = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))?;
                rest.trim().parse::<u64>().ok()
            })
            .sum();
        let name = thread_group_name(name);
        match groups.iter_mut().find(|group| group.name == name) {
            Some(group) => {
                group.cpu += cpu;
                group.switches += switches;
            }
            None => groups.push(ThreadGroup {
                name: name.to_string(),
                cpu,
                switches,
            }),
        }
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Some(groups)
}

/// A thread's name without its trailing number and the `-` or `_` before it.
fn thread_group_name(name: &str) -> &str {
    let without_number = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if without_number.len() == name.len() || without_number.is_empty() {
        return name;
    }
    without_number
        .strip_suffix(['-', '_'])
        .filter(|rest| !rest.is_empty())
        .unwrap_or(without_number)
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
    use std::sync::{Arc, Mutex};

    #[test]
    fn threads_are_grouped_by_their_name_without_its_trailing_number() {
        for (name, group) in [
            ("sled-io-0", "sled-io"),
            ("sled-io-12", "sled-io"),
            ("tokio-rt-worker", "tokio-rt-worker"),
            ("xlreg-store-wri", "xlreg-store-wri"),
            ("worker_3", "worker"),
            ("pool7", "pool"),
            ("2024", "2024"),
            ("-7", "-"),
            ("", ""),
        ] {
            assert_eq!(thread_group_name(name), group, "{name:?}");
        }
    }

    #[test]
    fn thread_groups_count_this_process_threads_and_their_work() {
        /// CPU time this thread has used.
        fn thread_cpu() -> Duration {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `now` is a valid timespec for the call to fill.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
            assert_eq!(rc, 0);
            Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
        }
        let me = std::process::id();
        let (spun, all_spun) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let stopped = Arc::new(Mutex::new(stopped));
        let spinners: Vec<_> = ["spinner-1", "spinner-2"]
            .into_iter()
            .map(|name| {
                let (spun, stopped) = (spun.clone(), stopped.clone());
                std::thread::Builder::new()
                    .name(name.to_string())
                    .spawn(move || {
                        // Enough CPU to show in /proc's clock ticks (10 ms each, usually).
                        let mut x = 0u64;
                        while thread_cpu() < Duration::from_millis(50) {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                        }
                        spun.send(x).unwrap();
                        // Blocks (a switch) until the test has read the groups.
                        let _ = stopped.lock().unwrap().recv();
                    })
                    .unwrap()
            })
            .collect();
        for _ in &spinners {
            all_spun.recv().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        let groups = thread_groups(me).unwrap();
        drop(stop);
        for spinner in spinners {
            spinner.join().unwrap();
        }
        let spinner = groups
            .iter()
            .find(|group| group.name == "spinner")
            .unwrap_or_else(|| panic!("no spinner group in {groups:?}"));
        assert!(spinner.cpu >= Duration::from_millis(80), "{spinner:?}");
        assert!(spinner.switches >= 1, "{spinner:?}");
        assert!(
            groups.windows(2).all(|w| w[0].name < w[1].name),
            "{groups:?}"
        );
        let total: Duration = groups.iter().map(|group| group.cpu).sum();
        assert!(total <= cpu_time(me).unwrap(), "{groups:?}");
    }

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
