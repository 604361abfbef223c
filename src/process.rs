//! Settings of the registry's process, made once at start: the C allocator's arenas, the
//! open-file limit, the file-creation mask, and the service manager's notifications.
//!
//! This module owns every call that changes or reports on the process as a whole rather
//! than on one session or one store: [`limit_malloc_arenas`] and [`release_free_memory`]
//! (glibc's malloc), [`make_room_for_connections`] (RLIMIT_NOFILE), [`set_private_umask`]
//! and [`notify_systemd`] (`sd_notify` under systemd's `Type=notify`). The daemon
//! ([`crate::daemon`]) calls them; nothing in the protocol core or the store does.
//! [`proc_stat`] reads a process's figures from /proc, for the registry's process metrics
//! and for `xlreg bench`.

pub mod proc_stat;

/// How many malloc arenas the registry's process uses (glibc). glibc's default, 8 per core,
/// lets every thread that touches sled's page cache keep its own arena of freed pages: on a
/// registry of 100,000 clusters every run with the default ended at 103-107 MiB resident
/// after 2,000 lookups, and most runs with two arenas at 92-94 MiB, with no measurable
/// change in throughput (docs/performance.md).
const MALLOC_ARENAS: i32 = 2;

/// File descriptors kept for other than client connections: the store's files, the
/// listeners, the log.
const RESERVED_FDS: libc::rlim_t = 64;

/// Sets the process's umask to 077, so that every file and directory created from now on
/// (the store's files; the key files; regCred.dat; exports) is its owner's only, whatever
/// umask the daemon was started with. The daemon calls this before it opens the store.
pub fn set_private_umask() {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Limits glibc's malloc to `MALLOC_ARENAS` (2) arenas, unless the operator chose
/// otherwise with `MALLOC_ARENA_MAX`. Call before starting threads. A no-op on other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any count.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Hands memory the allocator holds but no longer uses back to the operating system
/// (glibc's `malloc_trim`; a no-op on other C libraries). glibc keeps freed memory for reuse,
/// so after one admin request that built a snapshot of a large registry (an export of
/// 100,000 clusters peaks at 2.3 GiB) the daemon would otherwise stay that large for the
/// rest of its life. Blocking: it walks every arena.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; any pad is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands freed memory back ([`release_free_memory`]) every [`ReleaseEvery::BYTES`] of data
/// read or written, for a long pass over a large registry (an online export or backup).
/// Reading a registry page by page churns through sled's bounded cache, and glibc keeps
/// what the cache frees: on 100,000 clusters up to 105 MiB, and on 20,000 a backup's whole
/// counting pass (which sends nothing) once. Counting bytes where they pass, wherever the
/// pass is, keeps the daemon near its resting size (docs/performance.md).
#[derive(Debug, Default)]
pub struct ReleaseEvery {
    since: usize,
}

impl ReleaseEvery {
    /// Bytes between two hand-backs: each walks every arena, so not too often.
    pub const BYTES: usize = 8 << 20;

    /// Counts `bytes` more, handing memory back once [`ReleaseEvery::BYTES`] have passed.
    pub fn passed(&mut self, bytes: usize) {
        self.since += bytes;
        if self.since >= Self::BYTES {
            self.since = 0;
            release_free_memory();
        }
    }
}

/// Raises this process's soft limit on open files so that `max_connections` clients fit
/// (as far as the hard limit allows), making `--max-connections`, not the descriptor limit,
/// what refuses clients; warns if they still do not fit.
pub fn make_room_for_connections(max_connections: usize) {
    let wanted = (max_connections as libc::rlim_t).saturating_add(RESERVED_FDS);
    match raise_open_file_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is too low for --max-connections; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}

/// Raises the soft RLIMIT_NOFILE to `wanted`, capped at the hard limit; returns the soft
/// limit in force afterwards.
fn raise_open_file_limit(wanted: libc::rlim_t) -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we hand it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: setrlimit only reads the struct we hand it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Tells systemd (under `Type=notify`; nothing happens otherwise) that the registry is
/// ready or stopping.
pub fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_as_far_as_the_hard_limit_allows() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we hand it.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) },
            0
        );
        let wanted = before.rlim_cur.saturating_add(1).min(before.rlim_max);
        let now = raise_open_file_limit(wanted).unwrap();
        assert!(now >= wanted, "soft limit {now} < {wanted}");
        assert!(now <= before.rlim_max);
    }
}
