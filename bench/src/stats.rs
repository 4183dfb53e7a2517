//! Percentiles of measured durations.
//!
//! Nearest-rank percentiles: the reported value is always one that was
//! measured, never an interpolation. With 50 samples, p50 is the 25th
//! smallest and p99 the largest.

use std::time::Duration;

/// The summary of one series of measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Summary {
            count: sorted.len(),
            p50: percentile(&sorted, 50)?,
            p99: percentile(&sorted, 99)?,
        })
    }
}

/// The `pct`th percentile (1 to 100) of `sorted` by the nearest-rank
/// method: the smallest sample with at least `pct`% of the samples at or
/// below it. `None` for an empty slice or a `pct` outside 1..=100.
pub fn percentile(sorted: &[Duration], pct: usize) -> Option<Duration> {
    if sorted.is_empty() || !(1..=100).contains(&pct) {
        return None;
    }
    // rank = ceil(pct/100 * n), 1-based.
    let rank = (pct * sorted.len()).div_ceil(100);
    sorted.get(rank.max(1) - 1).copied()
}

/// `d` in milliseconds, for printing and ratios.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentile_of_an_empty_series_is_none() {
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn percentile_out_of_range_is_none() {
        assert_eq!(percentile(&ms(&[1, 2]), 0), None);
        assert_eq!(percentile(&ms(&[1, 2]), 101), None);
    }

    #[test]
    fn median_of_an_even_series_is_the_lower_middle_sample() {
        assert_eq!(
            percentile(&ms(&[1, 2, 3, 4]), 50),
            Some(Duration::from_millis(2))
        );
    }

    #[test]
    fn p99_of_fifty_samples_is_the_largest() {
        let samples: Vec<u64> = (1..=50).collect();

        assert_eq!(
            percentile(&ms(&samples), 99),
            Some(Duration::from_millis(50))
        );
    }

    #[test]
    fn p99_of_two_hundred_samples_is_the_198th() {
        let samples: Vec<u64> = (1..=200).collect();

        assert_eq!(
            percentile(&ms(&samples), 99),
            Some(Duration::from_millis(198))
        );
    }

    #[test]
    fn summary_sorts_its_input() {
        let summary = Summary::of(&ms(&[9, 1, 5])).expect("three samples");

        assert_eq!(summary.count, 3);
        assert_eq!(summary.p50, Duration::from_millis(5));
        assert_eq!(summary.p99, Duration::from_millis(9));
    }

    #[test]
    fn a_single_sample_is_every_percentile() {
        let summary = Summary::of(&ms(&[7])).expect("one sample");

        assert_eq!(summary.p50, Duration::from_millis(7));
        assert_eq!(summary.p99, Duration::from_millis(7));
    }
}
