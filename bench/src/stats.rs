//! Exact percentiles over recorded samples (nanoseconds), and the summaries written to
//! the table and the JSON.

use serde::Serialize;

/// The points of the percentile curves drawn in the plot.
pub const CURVE: [f64; 16] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 1.0,
];

/// Latency figures of one kind of operation, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// `(percentile, latency in µs)` points for the plot.
    pub curve: Vec<(f64, f64)>,
}

impl Summary {
    /// Sorts `samples` (nanoseconds) in place and summarises them. `None` when empty.
    pub fn of(samples: &mut [u64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        let at = |p: f64| us(percentile(samples, p));
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Some(Summary {
            count: samples.len(),
            mean_us: sum as f64 / samples.len() as f64 / 1000.0,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
            curve: CURVE.iter().map(|&p| (p, at(p))).collect(),
        })
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample that at least a
/// fraction `p` of all samples are less than or equal to. `p = 0` is the minimum.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    let rank = (p.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Milliseconds with three significant digits for the tables: `0.412`, `3.07`, `51.2`,
/// `502`.
pub fn fmt_ms(us: f64) -> String {
    sig3(us / 1000.0)
}

/// Three significant digits (at least the units): `0.412`, `3.07`, `51.2`, `502`.
pub fn sig3(x: f64) -> String {
    // Chosen on the value as rounded, so that 0.9996 reads 1.00, not 1.000.
    match x.abs() {
        a if a >= 99.95 => format!("{x:.0}"),
        a if a >= 9.995 => format!("{x:.1}"),
        a if a >= 0.9995 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        let s = Summary::of(&mut v).unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 0.5);
        assert_eq!(s.p99_us, 0.99);
        assert_eq!(s.p999_us, 0.999);
        assert_eq!(s.max_us, 1.0);
        assert_eq!(percentile(&[7], 0.0), 7);
        assert_eq!(percentile(&[1, 2], 0.5), 1);
        assert_eq!(percentile(&[1, 2], 0.51), 2);
        assert!(Summary::of(&mut []).is_none());
    }

    #[test]
    fn milliseconds_keep_three_digits() {
        assert_eq!(fmt_ms(412.4), "0.412");
        assert_eq!(fmt_ms(3070.0), "3.07");
        assert_eq!(fmt_ms(51_234.0), "51.2");
        assert_eq!(fmt_ms(502_000.0), "502");
        assert_eq!(sig3(0.9996), "1.00");
        assert_eq!(sig3(9.996), "10.0");
    }
}
