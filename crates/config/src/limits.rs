//! The bounds of every number a load test takes, whether it comes from a flag, a config
//! file or a REST call: one home, so that the three accept the same values and a peer
//! cannot ask a server for what a user could not ask the CLI for.
//!
//! Each check returns the problem in words, quoting the bad value; the caller names the
//! option (a flag, a JSON path, a REST parameter).

use std::time::Duration;

/// The most connections one load test opens (each one a socket and a slot).
pub const MAX_CONNECTIONS: u64 = 100_000;
/// The highest rate, req/s (ten times what one generator reaches on a core here).
pub const MAX_QPS: f64 = 1_000_000.0;
/// The lowest non-zero rate, req/s: one request every 1,000 s at the most, so that every
/// interval and due time is a duration that fits.
pub const MIN_QPS: f64 = 0.001;
/// The most requests of a test with an exact count.
pub const MAX_REQUESTS: u64 = 1_000_000_000_000;
/// The longest test (30 days).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest per-request timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest request body a load test sends (what a node reads at the most).
pub const MAX_PAYLOAD_BYTES: u64 = 16 * 1024 * 1024;
/// The largest response body a node is told to send.
pub const MAX_RESPONSE_BYTES: u64 = 1 << 30;
/// The most percentiles a result reports.
pub const MAX_PERCENTILES: usize = 100;
/// The most extra headers a request carries.
pub const MAX_HEADERS: usize = 100;

/// A rate: 0 is as fast as possible, else from [`MIN_QPS`] to [`MAX_QPS`].
pub fn qps(q: f64) -> Result<f64, String> {
    if q == 0.0 || (MIN_QPS..=MAX_QPS).contains(&q) {
        Ok(q)
    } else {
        Err(format!(
            "{} is not a rate from {MIN_QPS} to {MAX_QPS} requests per second (0 for as fast as possible)",
            short(q)
        ))
    }
}

/// A number of connections, 1 to [`MAX_CONNECTIONS`].
pub fn connections(c: u64) -> Result<u64, String> {
    whole(c, 1, MAX_CONNECTIONS)
}

/// An exact number of requests, 1 to [`MAX_REQUESTS`].
pub fn requests(n: u64) -> Result<u64, String> {
    whole(n, 1, MAX_REQUESTS)
}

/// A test's length: at most [`MAX_DURATION`] (0 is until stopped where that is allowed).
pub fn duration(d: Duration) -> Result<Duration, String> {
    at_most(d, MAX_DURATION)
}

/// A per-request timeout: more than 0, at most [`MAX_TIMEOUT`].
pub fn timeout(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("0s would fail every request".to_string());
    }
    at_most(d, MAX_TIMEOUT)
}

/// A request body's length, at most [`MAX_PAYLOAD_BYTES`].
pub fn payload(len: u64) -> Result<u64, String> {
    bytes(len, MAX_PAYLOAD_BYTES)
}

/// A response body's length, at most [`MAX_RESPONSE_BYTES`].
pub fn response_size(len: u64) -> Result<u64, String> {
    bytes(len, MAX_RESPONSE_BYTES)
}

/// A whole number from `min` to `max`, in the words the config reader uses too.
pub fn whole(v: u64, min: u64, max: u64) -> Result<u64, String> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a whole number from {min} to {max}"))
    }
}

/// A whole number given as a float (a REST parameter, `1e3`), from `min` to `max`.
pub fn whole_f64(v: f64, min: u64, max: u64) -> Result<u64, String> {
    if v.fract() == 0.0 && v >= min as f64 && v <= max as f64 {
        Ok(v as u64)
    } else {
        Err(format!(
            "{} is not a whole number from {min} to {max}",
            short(v)
        ))
    }
}

/// A number as a person reads it: `1e-300` rather than 300 zeros.
fn short(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e15).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

fn at_most(d: Duration, max: Duration) -> Result<Duration, String> {
    if d <= max {
        Ok(d)
    } else {
        Err(format!(
            "{d:?} is longer than the longest allowed, {}s",
            max.as_secs()
        ))
    }
}

fn bytes(len: u64, max: u64) -> Result<u64, String> {
    if len <= max {
        Ok(len)
    } else {
        Err(format!("{len} bytes is more than the most allowed, {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_refuses_just_past_it_and_accepts_it() {
        assert!(qps(0.0).is_ok() && qps(MIN_QPS).is_ok() && qps(MAX_QPS).is_ok());
        for bad in [
            1e-300,
            -5.0,
            f64::NAN,
            f64::INFINITY,
            MAX_QPS * 1.01,
            -0.0001,
        ] {
            assert!(qps(bad).is_err(), "{bad}");
        }
        assert!(connections(0).is_err() && connections(MAX_CONNECTIONS + 1).is_err());
        assert!(connections(MAX_CONNECTIONS).is_ok());
        assert!(requests(0).is_err() && requests(u64::MAX).is_err());
        assert!(timeout(Duration::ZERO).is_err());
        assert!(timeout(MAX_TIMEOUT + Duration::from_nanos(1)).is_err());
        assert!(duration(MAX_DURATION).is_ok() && duration(Duration::MAX).is_err());
        assert!(payload(MAX_PAYLOAD_BYTES + 1).is_err());
        assert!(response_size(MAX_RESPONSE_BYTES).is_ok());
        assert!(whole_f64(1e12, 1, 100).is_err() && whole_f64(2.5, 1, 100).is_err());
        assert!(whole_f64(f64::NAN, 1, 100).is_err());
        assert_eq!(whole_f64(1e2, 1, 100), Ok(100));
    }
}
