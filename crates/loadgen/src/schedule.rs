//! When each request is due: pure arithmetic from the start, never accumulated sleeps.
//!
//! Connection `i` of `c` sends its `k`-th request at `offset_i + k / r (+ jitter)`, where
//! `r = qps / c` and `offset_i = i / qps`: the connections are staggered, so the whole
//! generator sends request `j = i + k c` at `j / qps`, and a test of `d` seconds sends
//! `ceil(d qps)` requests whatever `c` is. (Fortio starts its connections together unless
//! `-uniform`: with `c` near or above the rate, those bursts send more than the rate in
//! short tests, up to `c` requests at once. meshload takes `-uniform` and records it, but
//! always staggers.)
//! With `jitter`, each due time moves by up to ±10% of the per-connection interval (as
//! Fortio's `-jitter`), drawn from a hash of `(i, k)` so a run's schedule is reproducible.

use std::time::Duration;

/// The rate schedule of a paced run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Seconds between two requests of one connection.
    interval_secs: f64,
    /// Number of connections.
    connections: usize,
    /// Move each due time by up to ±10% of the interval.
    jitter: bool,
}

/// Fraction of the interval by which `jitter` may move a due time (Fortio uses 10%).
const JITTER_FRACTION: f64 = 0.10;

impl Schedule {
    /// A schedule of `qps` requests per second in total over `connections` connections.
    /// `qps` must be positive and finite and `connections` at least 1 (the spec checks).
    pub fn new(qps: f64, connections: usize, jitter: bool) -> Schedule {
        let connections = connections.max(1);
        Schedule {
            interval_secs: connections as f64 / qps,
            connections,
            jitter,
        }
    }

    /// Seconds between two requests of one connection.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs)
    }

    /// Seconds between two requests of the whole run (the rate's inverse).
    pub fn gap(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs / self.connections as f64)
    }

    /// When request `k` of connection `conn` is due, counted from the start of the run.
    pub fn due(&self, conn: usize, k: u64) -> Duration {
        let offset = self.interval_secs * conn as f64 / self.connections as f64;
        let mut secs = offset + self.interval_secs * k as f64;
        if self.jitter {
            let unit = unit_interval(hash(conn as u64, k)) * 2.0 - 1.0;
            secs += unit * JITTER_FRACTION * self.interval_secs;
        }
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The first slot of `conn` due at or after `elapsed` (used to skip missed slots).
    pub fn first_slot_at_or_after(&self, conn: usize, elapsed: Duration) -> u64 {
        let guess = ((elapsed.as_secs_f64() / self.interval_secs).floor() as u64).saturating_sub(1);
        (guess..)
            .find(|&k| self.due(conn, k) >= elapsed)
            .unwrap_or(guess)
    }
}

/// How many of `total` requests connection `conn` of `connections` sends: an even split,
/// the remainder going to the first connections, so the counts add up to exactly `total`.
pub fn quota(total: u64, connections: usize, conn: usize) -> u64 {
    let c = connections.max(1) as u64;
    total / c + u64::from((conn as u64) < total % c)
}

/// SplitMix64 over a pair: a cheap, well-mixed hash for reproducible jitter.
fn hash(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a hash to [0, 1).
fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_arithmetic() {
        let s = Schedule::new(100.0, 4, false);
        assert_eq!(s.interval(), Duration::from_millis(40));
        assert_eq!(s.due(0, 0), Duration::ZERO);
        assert!((s.due(3, 0).as_secs_f64() - 0.030).abs() < 1e-9);
        // No drift after many requests: 1,000,000 intervals of 40 ms is exactly 40,000 s
        // (plus connection 2's stagger of 20 ms).
        let far = s.due(2, 1_000_000).as_secs_f64();
        assert!((far - 40_000.02).abs() < 1e-6, "{far}");
    }

    #[test]
    fn connections_are_staggered_evenly() {
        let s = Schedule::new(1000.0, 4, false);
        let mut dues: Vec<f64> = (0..4)
            .flat_map(|c| (0..10).map(move |k| (c, k)))
            .map(|(c, k)| s.due(c, k).as_secs_f64())
            .collect();
        dues.sort_by(f64::total_cmp);
        for pair in dues.windows(2) {
            assert!((pair[1] - pair[0] - 0.001).abs() < 1e-9, "{pair:?}");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_is_reproducible() {
        let s = Schedule::new(100.0, 1, true);
        let plain = Schedule::new(100.0, 1, false);
        let mut moved = 0;
        for k in 1..1000 {
            let d = s.due(0, k).as_secs_f64() - plain.due(0, k).as_secs_f64();
            assert!(d.abs() <= 0.001 + 1e-12, "{d}");
            moved += usize::from(d.abs() > 1e-6);
            assert_eq!(s.due(0, k), s.due(0, k));
        }
        assert!(moved > 900);
    }

    #[test]
    fn more_connections_than_the_rate_still_send_at_the_rate() {
        // 100 connections at 8 req/s for 1 s: 8 requests, not 100 at once.
        let s = Schedule::new(8.0, 100, false);
        let in_first_second = (0..100)
            .filter(|&c| s.due(c, 0) < Duration::from_secs(1))
            .count();
        assert_eq!(in_first_second, 8);
    }

    #[test]
    fn quotas_add_up_exactly() {
        for (total, c) in [(10, 3), (3, 8), (1000, 7), (0, 4)] {
            let sum: u64 = (0..c).map(|i| quota(total, c, i)).sum();
            assert_eq!(sum, total);
        }
        assert_eq!(quota(10, 3, 0), 4);
        assert_eq!(quota(10, 3, 2), 3);
    }

    #[test]
    fn skipping_finds_the_next_slot() {
        let s = Schedule::new(10.0, 1, false);
        assert_eq!(s.first_slot_at_or_after(0, Duration::from_millis(1050)), 11);
        assert_eq!(s.first_slot_at_or_after(0, Duration::from_millis(1000)), 10);
        assert_eq!(s.first_slot_at_or_after(0, Duration::ZERO), 0);
    }
}
