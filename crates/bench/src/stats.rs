//! `Latency`: the quantiles of a set of round-trip times.

use std::time::Duration;

use serde::Serialize;

/// Quantiles of measured round trips, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Round trips measured.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl Latency {
    /// Quantiles of `samples` (sorted here).
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            samples
                .get(((samples.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0.0, |d| d.as_nanos() as f64 / 1e3)
        };
        Latency {
            count: samples.len(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_sorted_samples() {
        let samples = (1..=1_000).rev().map(Duration::from_micros).collect();
        let l = Latency::of(samples);
        assert_eq!(l.count, 1_000);
        assert_eq!(l.p50_us, 501.0);
        assert_eq!(l.p99_us, 990.0);
        assert_eq!(l.max_us, 1_000.0);
        assert_eq!(Latency::of(Vec::new()).p50_us, 0.0);
    }
}
