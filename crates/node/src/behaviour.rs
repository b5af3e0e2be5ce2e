//! Injected behaviour: added latency, error rate and response size.
//!
//! A node's fate for each request (how long to wait, whether to fail) is drawn from a
//! random stream keyed by `(seed, request number)`, so the n-th request of a node started
//! with the same seed always meets the same fate, however requests interleave. The
//! specifications themselves are the config's (`meshload_config::behaviour`), parsed where a
//! config is read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use meshload_config::behaviour::{BehaviourError, ErrorRate, Latency};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};

/// Draws one delay from a latency distribution.
fn sample<R: Rng + ?Sized>(latency: &Latency, rng: &mut R) -> Duration {
    let secs = match *latency {
        Latency::None => return Duration::ZERO,
        Latency::Fixed(d) => return d,
        Latency::Uniform { min, max } if min >= max => return min,
        Latency::Uniform { min, max } => rng.random_range(min.as_secs_f64()..max.as_secs_f64()),
        Latency::Normal { mean, stddev } => Normal::new(mean.as_secs_f64(), stddev.as_secs_f64())
            .map_or(mean.as_secs_f64(), |n| n.sample(rng)),
        Latency::Exponential { mean } if mean.is_zero() => return Duration::ZERO,
        Latency::Exponential { mean } => {
            Exp::new(1.0 / mean.as_secs_f64()).map_or(0.0, |e| e.sample(rng))
        }
    };
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

/// Everything a node does besides calling its backends.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Added latency per request.
    pub latency: Latency,
    /// Probability that a request fails with `error_code` without calling backends.
    pub error_rate: ErrorRate,
    /// Status code of injected failures.
    pub error_code: u16,
    /// Size in bytes of a successful response body (at least the small JSON document).
    pub response_size_bytes: usize,
    /// Seed of the random stream; the same seed gives the same fates.
    pub seed: u64,
}

/// What happens to one request, decided before it is served.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fate {
    /// Delay before the node proceeds.
    pub delay: Duration,
    /// Whether the request fails with the injected error.
    pub fail: bool,
}

/// Draws fates for successive requests.
#[derive(Debug)]
pub struct Dice {
    behaviour: Behaviour,
    counter: AtomicU64,
}

/// SplitMix64's finaliser: turns (seed, n) into well-mixed independent-looking seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Dice {
    /// Creates the dice for a node's behaviour.
    pub fn new(behaviour: Behaviour) -> Self {
        Dice {
            behaviour,
            counter: AtomicU64::new(0),
        }
    }

    /// The behaviour the dice were made for.
    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    /// Whether rolling can ever delay or fail a request (the fast path skips it otherwise).
    pub fn is_active(&self) -> bool {
        self.behaviour.latency != Latency::None || self.behaviour.error_rate.get() > 0.0
    }

    /// The fate of the next request.
    pub fn roll(&self) -> Fate {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.fate_of(n)
    }

    /// The fate of request number `n` (0-based).
    pub fn fate_of(&self, n: u64) -> Fate {
        let mut rng = SmallRng::seed_from_u64(mix(self.behaviour.seed ^ mix(n)));
        let fail = rng.random::<f64>() < self.behaviour.error_rate.get();
        let delay = sample(&self.behaviour.latency, &mut rng);
        Fate { delay, fail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dice(seed: u64, rate: f64, latency: Latency) -> Dice {
        Dice::new(Behaviour {
            latency,
            error_rate: ErrorRate::new(rate).expect("a rate"),
            error_code: 500,
            response_size_bytes: 0,
            seed,
        })
    }

    #[test]
    fn fates_are_reproducible_and_seed_dependent() {
        let a: Vec<bool> = (0..200)
            .map(|n| dice(7, 0.3, Latency::None).fate_of(n).fail)
            .collect();
        let b: Vec<bool> = (0..200)
            .map(|n| dice(7, 0.3, Latency::None).fate_of(n).fail)
            .collect();
        let c: Vec<bool> = (0..200)
            .map(|n| dice(8, 0.3, Latency::None).fate_of(n).fail)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn error_rate_is_respected_over_many_requests() {
        let d = dice(42, 0.1, Latency::None);
        let failures = (0..20_000).filter(|&n| d.fate_of(n).fail).count();
        // 10% of 20,000 = 2,000, standard deviation ~42: 5 sigma either way.
        assert!((1_790..=2_210).contains(&failures), "{failures} failures");
    }

    #[test]
    fn sampled_latency_stays_in_range() {
        let d = dice(
            1,
            0.0,
            Latency::Uniform {
                min: Duration::from_millis(2),
                max: Duration::from_millis(4),
            },
        );
        for n in 0..1000 {
            let delay = d.fate_of(n).delay;
            assert!(delay >= Duration::from_millis(2) && delay < Duration::from_millis(4));
        }
        let normal = dice(
            1,
            0.0,
            Latency::Normal {
                mean: Duration::from_millis(1),
                stddev: Duration::from_millis(5),
            },
        );
        assert!((0..1000).all(|n| normal.fate_of(n).delay >= Duration::ZERO));
    }
}
