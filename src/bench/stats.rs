//! Latency percentiles for benchmark reports.

use std::time::Duration;

/// Percentiles of a set of latencies, in milliseconds (all zero for an empty set).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl LatencySummary {
    /// Summarises `samples` (nearest-rank percentiles).
    pub fn of(mut samples: Vec<Duration>) -> LatencySummary {
        if samples.is_empty() {
            return LatencySummary::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let index = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1].as_secs_f64() * 1e3
        };
        LatencySummary {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: rank(100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let summary = LatencySummary::of(samples);
        assert_eq!(
            (summary.p50, summary.p90, summary.p99, summary.max),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(LatencySummary::of(vec![]), LatencySummary::default());
        let one = LatencySummary::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50, one.max), (7.0, 7.0));
    }
}
