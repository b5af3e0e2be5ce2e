//! A node with a known capacity, so that a capacity search has a right answer to find.
//!
//! `--capacity RATE` makes the node serve at most RATE requests per second, on a virtual
//! clock so that timer lateness never changes the rate:
//! - `reject` (default): a request beyond the rate (after a burst of 50 ms worth) gets
//!   503 at once, as a rate limiter answers;
//! - `queue`: requests are served one at a time, each taking 1/RATE seconds, as a single
//!   worker would: below the rate the wait stays short, above it the queue (and the
//!   response time) grows without bound.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What happens beyond the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer 503.
    Reject,
    /// Wait in line.
    Queue,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "reject" => Ok(Mode::Reject),
            "queue" => Ok(Mode::Queue),
            other => Err(format!(
                "invalid capacity mode {other:?}: expected reject or queue"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Reject => "reject",
            Mode::Queue => "queue",
        })
    }
}

/// A capacity: a rate and what happens beyond it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Requests per second served at most.
    pub rate: f64,
    /// Beyond it.
    pub mode: Mode,
}

/// What a request is told by the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it now.
    Now,
    /// Serve it when this instant comes.
    At(Instant),
    /// Refuse it.
    Refuse,
}

/// The virtual clock of a capacity: when the next request may be served.
#[derive(Debug)]
pub struct Gate {
    capacity: Capacity,
    interval: Duration,
    burst: Duration,
    next: Mutex<Option<Instant>>,
}

impl Gate {
    /// A gate for `capacity` (a rate of at least one request per hour).
    pub fn new(capacity: Capacity) -> Gate {
        let interval = Duration::from_secs_f64(1.0 / capacity.rate.max(1.0 / 3600.0));
        Gate {
            capacity,
            interval,
            burst: Duration::from_millis(50).max(interval),
            next: Mutex::new(None),
        }
    }

    /// Decides one request arriving at `now`.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = next.map_or(now, |n| n.max(now));
        match self.capacity.mode {
            Mode::Reject => {
                // A generic cell rate: admitted while the virtual clock is less than a
                // burst ahead of real time.
                if due.saturating_duration_since(now) >= self.burst {
                    return Admission::Refuse;
                }
                *next = Some(due + self.interval);
                Admission::Now
            }
            Mode::Queue => {
                let done = due + self.interval;
                *next = Some(done);
                Admission::At(done)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reject_mode_admits_the_rate_and_a_burst() {
        let gate = Gate::new(Capacity {
            rate: 100.0,
            mode: Mode::Reject,
        });
        let t0 = Instant::now();
        // 50 ms of burst at 10 ms per request: 5 at once, then refusals.
        let at_once: Vec<Admission> = (0..8).map(|_| gate.admit(t0)).collect();
        assert_eq!(at_once.iter().filter(|a| **a == Admission::Now).count(), 5);
        // One second later, the clock has caught up.
        assert_eq!(gate.admit(t0 + Duration::from_secs(1)), Admission::Now);
        // Over 10 s at exactly the rate, every request is admitted.
        let t1 = t0 + Duration::from_secs(2);
        let admitted = (0..1000)
            .filter(|k| gate.admit(t1 + Duration::from_millis(10) * *k) == Admission::Now)
            .count();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn queue_mode_serves_one_at_a_time() {
        let gate = Gate::new(Capacity {
            rate: 10.0,
            mode: Mode::Queue,
        });
        let t0 = Instant::now();
        let times: Vec<Admission> = (0..3).map(|_| gate.admit(t0)).collect();
        assert_eq!(
            times,
            vec![
                Admission::At(t0 + Duration::from_millis(100)),
                Admission::At(t0 + Duration::from_millis(200)),
                Admission::At(t0 + Duration::from_millis(300)),
            ]
        );
    }
}
