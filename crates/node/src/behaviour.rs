//! Injected behaviour: added latency, error rate and response size.
//!
//! A node's fate for each request (how long to wait, whether to fail) is drawn from a
//! random stream keyed by `(seed, request number)`, so the n-th request of a node started
//! with the same seed always meets the same fate, however requests interleave.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};

/// Errors in a latency or error-rate specification.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BehaviourError {
    /// The latency specification did not parse.
    #[error(
        "invalid latency {0:?}: expected a duration (10ms), uniform:MIN..MAX, normal:MEAN,STDDEV or exp:MEAN"
    )]
    Latency(String),
    /// The error rate is not a number in [0, 1].
    #[error("invalid error rate {0:?}: expected a number from 0 to 1 (0.01 is 1%)")]
    ErrorRate(String),
}

/// Added latency before a node answers (or calls its backends).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Latency {
    /// No added latency.
    #[default]
    None,
    /// Always the same delay.
    Fixed(Duration),
    /// Uniformly distributed between `min` and `max`.
    Uniform {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// Normally distributed, clamped at zero.
    Normal {
        /// Mean delay.
        mean: Duration,
        /// Standard deviation.
        stddev: Duration,
    },
    /// Exponentially distributed (a memoryless service time) with this mean.
    Exponential {
        /// Mean delay.
        mean: Duration,
    },
}

impl Latency {
    /// Draws one delay from the distribution.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let secs = match *self {
            Latency::None => return Duration::ZERO,
            Latency::Fixed(d) => return d,
            Latency::Uniform { min, max } if min >= max => return min,
            Latency::Uniform { min, max } => rng.random_range(min.as_secs_f64()..max.as_secs_f64()),
            Latency::Normal { mean, stddev } => {
                Normal::new(mean.as_secs_f64(), stddev.as_secs_f64())
                    .map_or(mean.as_secs_f64(), |n| n.sample(rng))
            }
            Latency::Exponential { mean } if mean.is_zero() => return Duration::ZERO,
            Latency::Exponential { mean } => {
                Exp::new(1.0 / mean.as_secs_f64()).map_or(0.0, |e| e.sample(rng))
            }
        };
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    meshload_config::reader::parse_go_duration(s)
}

impl FromStr for Latency {
    type Err = BehaviourError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = || BehaviourError::Latency(spec.to_string());
        let spec_trim = spec.trim();
        if spec_trim.is_empty() || spec_trim == "none" {
            return Ok(Latency::None);
        }
        let (kind, args) = spec_trim.split_once(':').unwrap_or(("fixed", spec_trim));
        let latency = match kind {
            "fixed" => Latency::Fixed(parse_duration(args).ok_or_else(bad)?),
            "uniform" => {
                let (min, max) = args.split_once("..").ok_or_else(bad)?;
                let (min, max) = (parse_duration(min), parse_duration(max));
                match (min, max) {
                    (Some(min), Some(max)) if min <= max => Latency::Uniform { min, max },
                    _ => return Err(bad()),
                }
            }
            "normal" => {
                let (mean, stddev) = args.split_once(',').ok_or_else(bad)?;
                Latency::Normal {
                    mean: parse_duration(mean).ok_or_else(bad)?,
                    stddev: parse_duration(stddev).ok_or_else(bad)?,
                }
            }
            "exp" => Latency::Exponential {
                mean: parse_duration(args).ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        };
        Ok(latency)
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = humantime::format_duration;
        match *self {
            Latency::None => write!(f, "none"),
            Latency::Fixed(d) => write!(f, "{}", h(d)),
            Latency::Uniform { min, max } => write!(f, "uniform:{}..{}", h(min), h(max)),
            Latency::Normal { mean, stddev } => write!(f, "normal:{},{}", h(mean), h(stddev)),
            Latency::Exponential { mean } => write!(f, "exp:{}", h(mean)),
        }
    }
}

/// A probability in [0, 1] that a request fails with the injected error code.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorRate(f64);

impl ErrorRate {
    /// The probability as a number in [0, 1].
    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for ErrorRate {
    type Err = BehaviourError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        // "5%" reads as 0.05: people write rates both ways.
        let value = match trimmed.strip_suffix('%') {
            Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
            None => trimmed.parse::<f64>(),
        };
        match value {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(ErrorRate(v)),
            _ => Err(BehaviourError::ErrorRate(s.to_string())),
        }
    }
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
        let delay = self.behaviour.latency.sample(&mut rng);
        Fate { delay, fail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latency_specs() {
        assert_eq!(
            "10ms".parse(),
            Ok(Latency::Fixed(Duration::from_millis(10)))
        );
        assert_eq!("0".parse(), Ok(Latency::Fixed(Duration::ZERO)));
        assert_eq!(
            "uniform:1ms..3ms".parse(),
            Ok(Latency::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(3)
            })
        );
        assert_eq!(
            "normal:10ms,2ms".parse(),
            Ok(Latency::Normal {
                mean: Duration::from_millis(10),
                stddev: Duration::from_millis(2)
            })
        );
        assert_eq!(
            "exp:5ms".parse(),
            Ok(Latency::Exponential {
                mean: Duration::from_millis(5)
            })
        );
        for bad in [
            "fast",
            "uniform:3ms..1ms",
            "normal:1ms",
            "gamma:1ms",
            "10 parsecs",
        ] {
            assert!(bad.parse::<Latency>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn latency_display_round_trips() {
        for spec in [
            "10ms",
            "uniform:1ms..3ms",
            "normal:10ms,2ms",
            "exp:5ms",
            "none",
        ] {
            let parsed: Latency = spec.parse().expect("valid");
            assert_eq!(parsed.to_string().parse::<Latency>(), Ok(parsed));
        }
    }

    #[test]
    fn parses_error_rates() {
        assert_eq!("0.25".parse::<ErrorRate>().map(ErrorRate::get), Ok(0.25));
        assert_eq!("5%".parse::<ErrorRate>().map(ErrorRate::get), Ok(0.05));
        assert!("1.5".parse::<ErrorRate>().is_err());
        assert!("-0.1".parse::<ErrorRate>().is_err());
        assert!("often".parse::<ErrorRate>().is_err());
    }

    fn dice(seed: u64, rate: f64, latency: Latency) -> Dice {
        Dice::new(Behaviour {
            latency,
            error_rate: ErrorRate(rate),
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
