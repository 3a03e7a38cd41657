//! Lock-free latency histograms for the runtime's own figures (poll jitter, command latency).
//! Log-linear buckets: exact below 16 µs, then 8 sub-buckets per power of two (≤ 12.5 %
//! error), which is plenty for p50/p99 and costs one atomic add per sample.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const LINEAR: usize = 16;
const SUB: usize = 8;
const POWERS: usize = 40;
const BUCKETS: usize = LINEAR + (POWERS - 4) * SUB;

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn index(us: u64) -> usize {
    if us < LINEAR as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // >= 4
    let sub = ((us >> (exp - 3)) & (SUB as u64 - 1)) as usize;
    (LINEAR + (exp - 4) * SUB + sub).min(BUCKETS - 1)
}

/// The upper bound (µs) of bucket `i`.
fn upper(i: usize) -> u64 {
    if i < LINEAR {
        return i as u64;
    }
    let exp = (i - LINEAR) / SUB + 4;
    let sub = ((i - LINEAR) % SUB) as u64;
    ((SUB as u64 + sub + 1) << (exp - 3)) - 1
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[index(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max.load(Ordering::Relaxed))
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Duration::from_micros(upper(i).min(self.max.load(Ordering::Relaxed)));
            }
        }
        self.max()
    }

    /// Adds `other`'s samples to this one (to report several links as one).
    pub fn merge_from(&self, other: &Histogram) {
        for (a, b) in self.buckets.iter().zip(other.buckets.iter()) {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.count.fetch_add(other.count(), Ordering::Relaxed);
        self.max
            .fetch_max(other.max.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        for us in [
            0u64, 1, 15, 16, 17, 31, 32, 100, 999, 1_000, 123_456, 10_000_000,
        ] {
            let i = index(us);
            assert!(us <= upper(i), "{us} above bucket {i} ({})", upper(i));
            if i > 0 {
                assert!(us > upper(i - 1), "{us} belongs below bucket {i}");
            }
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).as_micros() as f64;
        let p99 = h.quantile(0.99).as_micros() as f64;
        assert!((p50 / 5_000.0 - 1.0).abs() <= 0.125, "{p50}");
        assert!((p99 / 9_900.0 - 1.0).abs() <= 0.125, "{p99}");
        assert_eq!(h.quantile(1.0), Duration::from_micros(10_000));
    }
}
