//! Latency histograms (HDR, 3 significant digits, nanoseconds) and the percentiles the
//! report prints.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded: 60 s; longer values are clamped to it.
const MAX_NANOS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds. Each task records into its own and they are
/// merged at the end.
#[derive(Debug, Clone)]
pub struct Latency {
    h: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
        // sigfig <= 5); this cannot fail.
        let h = Histogram::new_with_bounds(1, MAX_NANOS, 3)
            .unwrap_or_else(|_| unreachable!("constant bounds are valid"));
        Latency { h }
    }

    /// Records one latency.
    pub fn record(&mut self, nanos: u64) {
        self.h.saturating_record(nanos.clamp(1, MAX_NANOS));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) {
        // Both have the same bounds, so `add` cannot fail.
        let _ = self.h.add(&other.h);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The percentiles in microseconds.
    pub fn percentiles(&self) -> Percentiles {
        let us = |v: u64| (v as f64 / 1000.0 * 10.0).round() / 10.0;
        if self.h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: us(self.h.value_at_quantile(0.50)),
            p90: us(self.h.value_at_quantile(0.90)),
            p99: us(self.h.value_at_quantile(0.99)),
            p999: us(self.h.value_at_quantile(0.999)),
            max: us(self.h.max()),
        }
    }
}

/// Latency percentiles in microseconds (`latency_us` in the JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// The values with their JSON keys, in order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p999", self.p999),
            ("max", self.max),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.002 + 0.1
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        // 1..=10_000 microseconds, once each.
        let mut h = Latency::new();
        for us in 1..=10_000u64 {
            h.record(us * 1000);
        }
        let p = h.percentiles();
        assert_eq!(h.count(), 10_000);
        assert!(close(p.p50, 5000.0), "{p:?}");
        assert!(close(p.p90, 9000.0), "{p:?}");
        assert!(close(p.p99, 9900.0), "{p:?}");
        assert!(close(p.p999, 9990.0), "{p:?}");
        assert!(close(p.max, 10_000.0), "{p:?}");
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_tail() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for _ in 0..999 {
            a.record(100_000); // 100 us
        }
        b.record(50_000_000); // 50 ms
        a.merge(&b);
        let p = a.percentiles();
        assert_eq!(a.count(), 1000);
        assert!(close(p.p50, 100.0), "{p:?}");
        assert!(close(p.p99, 100.0), "{p:?}");
        assert!(close(p.max, 50_000.0), "{p:?}");
        assert_eq!(Latency::new().percentiles(), Percentiles::default());
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut h = Latency::new();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.count(), 2);
        assert!(h.percentiles().max >= 59_000_000.0);
    }
}
