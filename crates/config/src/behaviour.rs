//! A node's injected behaviour, as the config, the node's flags and the node itself take it:
//! added latency, error rate, and how a node calls its backends.
//!
//! The specifications are parsed here, where the config is read, so that `meshload
//! validate` names a bad `latency` by its JSON path; the node draws from them
//! (`meshload_node::behaviour`), and [`crate::service::behaviour_flags`] writes them back
//! as the node's flags with [`fmt::Display`], which parses back to the same value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::reader::{format_go_duration, parse_go_duration};

/// Errors in a behaviour specification.
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
    /// The call mode is neither of the two.
    #[error("invalid call mode {0:?}: expected parallel or sequential")]
    CallMode(String),
}

/// Injected behaviour of a node (the node service's knobs), as the config gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Behaviour {
    /// Added latency.
    pub latency: Option<Latency>,
    /// Fraction of requests failing with `error_code`.
    pub error_rate: Option<ErrorRate>,
    /// Status of injected errors.
    pub error_code: Option<u16>,
    /// Padded size of successful bodies in bytes.
    pub response_size: Option<u64>,
    /// Per backend call timeout.
    pub timeout: Option<Duration>,
    /// How the node calls its backends.
    pub call_mode: Option<CallMode>,
}

impl Behaviour {
    /// This behaviour with every knob `over` sets taken from it (a node over the defaults).
    pub fn overlaid_by(&self, over: &Behaviour) -> Behaviour {
        Behaviour {
            latency: over.latency.or(self.latency),
            error_rate: over.error_rate.or(self.error_rate),
            error_code: over.error_code.or(self.error_code),
            response_size: over.response_size.or(self.response_size),
            timeout: over.timeout.or(self.timeout),
            call_mode: over.call_mode.or(self.call_mode),
        }
    }
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

impl FromStr for Latency {
    type Err = BehaviourError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = || BehaviourError::Latency(spec.to_string());
        let duration = |s: &str| parse_go_duration(s).ok_or_else(bad);
        let trimmed = spec.trim();
        if trimmed.is_empty() || trimmed == "none" {
            return Ok(Latency::None);
        }
        let (kind, args) = trimmed.split_once(':').unwrap_or(("fixed", trimmed));
        let latency = match kind {
            "fixed" => Latency::Fixed(duration(args)?),
            "uniform" => {
                let (min, max) = args.split_once("..").ok_or_else(bad)?;
                let (min, max) = (duration(min)?, duration(max)?);
                if min > max {
                    return Err(bad());
                }
                Latency::Uniform { min, max }
            }
            "normal" => {
                let (mean, stddev) = args.split_once(',').ok_or_else(bad)?;
                Latency::Normal {
                    mean: duration(mean)?,
                    stddev: duration(stddev)?,
                }
            }
            "exp" => Latency::Exponential {
                mean: duration(args)?,
            },
            _ => return Err(bad()),
        };
        Ok(latency)
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = format_go_duration;
        match *self {
            Latency::None => write!(f, "none"),
            Latency::Fixed(d) => write!(f, "{}", g(d)),
            Latency::Uniform { min, max } => write!(f, "uniform:{}..{}", g(min), g(max)),
            Latency::Normal { mean, stddev } => write!(f, "normal:{},{}", g(mean), g(stddev)),
            Latency::Exponential { mean } => write!(f, "exp:{}", g(mean)),
        }
    }
}

/// A probability in [0, 1] that a request fails with the injected error code.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorRate(f64);

impl ErrorRate {
    /// A rate, if `v` is in [0, 1].
    pub fn new(v: f64) -> Result<Self, BehaviourError> {
        match (0.0..=1.0).contains(&v) {
            true => Ok(ErrorRate(v)),
            false => Err(BehaviourError::ErrorRate(v.to_string())),
        }
    }

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
        value
            .ok()
            .and_then(|v| ErrorRate::new(v).ok())
            .ok_or_else(|| BehaviourError::ErrorRate(s.to_string()))
    }
}

impl fmt::Display for ErrorRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a node calls its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallMode {
    /// All backends at once (the seed's behaviour).
    #[default]
    Parallel,
    /// One after the other, in the listed order; a failure does not stop the rest.
    Sequential,
}

impl FromStr for CallMode {
    type Err = BehaviourError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "parallel" => Ok(CallMode::Parallel),
            "sequential" | "sequence" => Ok(CallMode::Sequential),
            other => Err(BehaviourError::CallMode(other.to_string())),
        }
    }
}

impl fmt::Display for CallMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallMode::Parallel => "parallel",
            CallMode::Sequential => "sequential",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latency_specs() {
        let ms = Duration::from_millis;
        assert_eq!("10ms".parse(), Ok(Latency::Fixed(ms(10))));
        assert_eq!("0".parse(), Ok(Latency::Fixed(Duration::ZERO)));
        assert_eq!(
            "uniform:1ms..3ms".parse(),
            Ok(Latency::Uniform {
                min: ms(1),
                max: ms(3)
            })
        );
        assert_eq!(
            "normal:10ms,2ms".parse(),
            Ok(Latency::Normal {
                mean: ms(10),
                stddev: ms(2)
            })
        );
        assert_eq!("exp:5ms".parse(), Ok(Latency::Exponential { mean: ms(5) }));
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
            "1.5s",
            "uniform:1ms..3ms",
            "normal:10ms,250us",
            "exp:5ms",
            "none",
        ] {
            let parsed: Latency = spec.parse().expect("valid");
            assert_eq!(parsed.to_string().parse::<Latency>(), Ok(parsed));
        }
    }

    #[test]
    fn parses_error_rates_and_call_modes() {
        assert_eq!("0.25".parse::<ErrorRate>().map(ErrorRate::get), Ok(0.25));
        assert_eq!("5%".parse::<ErrorRate>().map(ErrorRate::get), Ok(0.05));
        for bad in ["1.5", "-0.1", "often", "NaN"] {
            assert!(bad.parse::<ErrorRate>().is_err(), "{bad}");
        }
        for mode in [CallMode::Parallel, CallMode::Sequential] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
        assert!("both".parse::<CallMode>().is_err());
    }
}
