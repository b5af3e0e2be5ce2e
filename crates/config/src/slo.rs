//! Service level objectives: the thresholds a test (or a capacity search step) must meet.
//!
//! Keys, in a config's `slo` object and on the command line (`--slo p99_ms=50,...`):
//! - `pNN_ms`: a response-time percentile (from the due time, so queueing counts), at
//!   most this many milliseconds. The digits after `p` are the percentile with its point
//!   after the first two: `p50`, `p99`, `p999` (99.9), `p9999` (99.99); `p100` is the
//!   maximum.
//! - `service_pNN_ms`: the same over service time (from when the request was sent).
//! - `error_ratio`: the share of failed requests, at most.
//! - `min_rate_ratio`: achieved rate over requested rate, at least.

use std::fmt;

use serde_json::Value;

use crate::reader::{Reader, join};

/// Which time a latency bound is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// From the request's due time to its response (queueing included).
    Response,
    /// From the request's send to its response.
    Service,
}

/// A percentile that must stay at or under a number of milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyBound {
    /// Response or service time.
    pub latency: Latency,
    /// The percentile, 0 to 100.
    pub percentile: f64,
    /// The digits of the key (`99`, `999`), kept so the key reads back as written.
    digits: String,
    /// The bound, ms.
    pub max_ms: f64,
}

impl LatencyBound {
    /// The key this bound is written with (`p99_ms`, `service_p999_ms`).
    pub fn key(&self) -> String {
        let prefix = match self.latency {
            Latency::Response => "",
            Latency::Service => "service_",
        };
        format!("{prefix}p{}_ms", self.digits)
    }

    /// The bound of `key` (`p99_ms`, `service_p50_ms`, ...) at `max_ms`; `None` when the
    /// key is not a latency key.
    pub fn parse(key: &str, max_ms: f64) -> Option<LatencyBound> {
        let (latency, rest) = match key.strip_prefix("service_") {
            Some(rest) => (Latency::Service, rest),
            None => (Latency::Response, key),
        };
        let digits = rest.strip_prefix('p')?.strip_suffix("_ms")?;
        let percentile = percentile_of(digits)?;
        Some(LatencyBound {
            latency,
            percentile,
            digits: digits.to_string(),
            max_ms,
        })
    }
}

/// `99` -> 99, `999` -> 99.9, `5` -> 5, `100` -> 100.
fn percentile_of(digits: &str) -> Option<f64> {
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits == "100" {
        return Some(100.0);
    }
    let (whole, fraction) = digits.split_at(digits.len().min(2));
    let text = if fraction.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{fraction}")
    };
    text.parse().ok()
}

/// True when `key` is one an SLO accepts.
pub fn is_key(key: &str) -> bool {
    matches!(key, "error_ratio" | "min_rate_ratio") || LatencyBound::parse(key, 0.0).is_some()
}

/// Thresholds checked after each test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slo {
    /// Percentile bounds, in the order given.
    pub latency: Vec<LatencyBound>,
    /// Largest acceptable share of errors (0..1).
    pub error_ratio: Option<f64>,
    /// Smallest acceptable achieved/requested rate (0..1).
    pub min_rate_ratio: Option<f64>,
}

impl Slo {
    /// Per-test values override the global ones (a latency bound by its key).
    pub fn overlay(&self, over: &Slo) -> Slo {
        let mut latency: Vec<LatencyBound> = self
            .latency
            .iter()
            .filter(|b| !over.latency.iter().any(|o| o.key() == b.key()))
            .cloned()
            .collect();
        latency.extend(over.latency.iter().cloned());
        Slo {
            latency,
            error_ratio: over.error_ratio.or(self.error_ratio),
            min_rate_ratio: over.min_rate_ratio.or(self.min_rate_ratio),
        }
    }

    /// Whether any threshold is set.
    pub fn is_empty(&self) -> bool {
        self.latency.is_empty() && self.error_ratio.is_none() && self.min_rate_ratio.is_none()
    }

    /// The bound of the p99 response time, the seed's own SLO.
    pub fn p99_ms(&self) -> Option<f64> {
        self.latency
            .iter()
            .find(|b| b.latency == Latency::Response && b.percentile == 99.0)
            .map(|b| b.max_ms)
    }

    /// Sets one key; an error names what is wrong with the key or value.
    pub fn set(&mut self, key: &str, value: f64) -> Result<(), String> {
        if !value.is_finite() || value < 0.0 {
            return Err(format!("{value} is out of range (0 or more)"));
        }
        match key {
            "error_ratio" | "min_rate_ratio" if value > 1.0 => {
                Err(format!("{value} is out of range (0 to 1)"))
            }
            "error_ratio" => {
                self.error_ratio = Some(value);
                Ok(())
            }
            "min_rate_ratio" => {
                self.min_rate_ratio = Some(value);
                Ok(())
            }
            _ => {
                let bound = LatencyBound::parse(key, value).ok_or_else(|| {
                    format!(
                        "unknown SLO key {key:?}: expected pNN_ms, service_pNN_ms, error_ratio or min_rate_ratio"
                    )
                })?;
                self.latency.retain(|b| b.key() != bound.key());
                self.latency.push(bound);
                Ok(())
            }
        }
    }

    /// Every threshold as `(key, value)`, latency bounds first.
    pub fn entries(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> =
            self.latency.iter().map(|b| (b.key(), b.max_ms)).collect();
        if let Some(v) = self.error_ratio {
            out.push(("error_ratio".to_string(), v));
        }
        if let Some(v) = self.min_rate_ratio {
            out.push(("min_rate_ratio".to_string(), v));
        }
        out
    }
}

impl std::str::FromStr for Slo {
    type Err = String;

    /// `p99_ms=50,error_ratio=0.01`.
    fn from_str(text: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not KEY=VALUE (such as p99_ms=50)"))?;
            let key = key.trim();
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{key}: {:?} is not a number", value.trim()))?;
            slo.set(key, value).map_err(|e| format!("{key}: {e}"))?;
        }
        if slo.is_empty() {
            return Err("no threshold given (such as p99_ms=50,error_ratio=0.01)".to_string());
        }
        Ok(slo)
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// An `slo` object of a config, every problem recorded at its path.
pub(crate) fn parse(path: &str, v: &Value, r: &mut Reader) -> Slo {
    let Some(o) = r.object(path, v) else {
        return Slo::default();
    };
    let mut slo = Slo::default();
    for (k, value) in o {
        let key = join(path, k);
        if !is_key(k) {
            r.error(
                &key,
                "is not an SLO key (pNN_ms, service_pNN_ms, error_ratio, min_rate_ratio)",
            );
            continue;
        }
        let Some(n) = r.number(&key, value) else {
            continue;
        };
        if let Err(e) = slo.set(k, n) {
            r.error(&key, e);
        }
    }
    slo
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentile_keys_read_as_fortio_writes_them() {
        for (key, p, latency) in [
            ("p50_ms", 50.0, Latency::Response),
            ("p99_ms", 99.0, Latency::Response),
            ("p999_ms", 99.9, Latency::Response),
            ("p9999_ms", 99.99, Latency::Response),
            ("p100_ms", 100.0, Latency::Response),
            ("p5_ms", 5.0, Latency::Response),
            ("service_p90_ms", 90.0, Latency::Service),
        ] {
            let b = LatencyBound::parse(key, 1.0).expect(key);
            assert_eq!((b.percentile, b.latency), (p, latency), "{key}");
            assert_eq!(b.key(), key);
        }
        for bad in ["p_ms", "p99", "q99_ms", "p9x_ms", "service_ms", "p99_s"] {
            assert!(LatencyBound::parse(bad, 1.0).is_none(), "{bad}");
        }
    }

    #[test]
    fn command_line_slos_parse_and_refuse_with_reasons() {
        let slo: Slo = "p99_ms=50, error_ratio=0.01,service_p999_ms=80"
            .parse()
            .unwrap();
        assert_eq!(slo.p99_ms(), Some(50.0));
        assert_eq!(slo.error_ratio, Some(0.01));
        assert_eq!(
            slo.to_string(),
            "p99_ms=50,service_p999_ms=80,error_ratio=0.01"
        );
        for (bad, says) in [
            ("p99_ms", "not KEY=VALUE"),
            ("p99_ms=fast", "not a number"),
            ("error_ratio=2", "0 to 1"),
            ("latency=3", "unknown SLO key"),
            ("", "no threshold"),
            ("p99_ms=-1", "out of range"),
        ] {
            let err = bad.parse::<Slo>().expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_test_overrides_the_global_slo_key_by_key() {
        let global: Slo = "p99_ms=50,p50_ms=10,error_ratio=0.1".parse().unwrap();
        let own: Slo = "p99_ms=20".parse().unwrap();
        let both = global.overlay(&own);
        assert_eq!(both.to_string(), "p50_ms=10,p99_ms=20,error_ratio=0.1");
    }
}
