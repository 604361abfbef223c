//! The wall clock, read in one place.
//!
//! This module owns [`now_ms`], the only reading of the system clock that reaches the
//! registry's rules: the session glue hands it to the handlers with each request, the
//! cluster-expiry sweeper and the admin commands stamp their work with it. The protocol core
//! never reads a clock itself; it is given the time, so tests can give it any time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_this_code_was_written_and_does_not_go_back() {
        // 2026-01-01T00:00:00Z: any working clock reads later than this.
        let first = now_ms();
        assert!(first > 1_767_225_600_000, "{first}");
        assert!(now_ms() >= first);
    }
}
