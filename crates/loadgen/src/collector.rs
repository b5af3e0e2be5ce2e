//! One collector receives every request's sample from the connections and keeps the
//! aggregates: HDR histograms, status codes, error kinds and the per-second series.
//! Nothing is stored per request, so memory stays bounded however long the run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedReceiver;

use meshload_process::ErrorKind;

/// Largest latency the histograms hold, in nanoseconds (one hour); longer values clamp.
const MAX_NANOS: u64 = 3_600_000_000_000;
/// Largest size the histograms hold, in bytes (1 TiB); larger values clamp.
const MAX_BYTES: u64 = 1 << 40;

/// A histogram of nanosecond latencies with 3 significant digits (values clamp to
/// [`MAX_NANOS`] when recorded).
///
/// It grows with the largest value recorded (hdrhistogram's auto-resize) instead of
/// covering an hour from the start: hdrhistogram writes every count when it sizes its
/// array, so each full-range histogram cost its whole 270 KiB of resident memory at once,
/// about 1.6 MiB for a load test's six. Growing reallocates a few times early in a run, in
/// the collector, never on a connection's path.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits are valid")
}

/// Records into a growing histogram (`saturating_record` would clamp to its current size
/// instead of growing it); the values are clamped to the range already.
fn record(histogram: &mut Histogram<u64>, value: u64) {
    if histogram.record(value).is_err() {
        histogram.saturating_record(value);
    }
}

/// A histogram of byte sizes with 3 significant digits, growing as
/// [`latency_histogram`] does (values clamp to [`MAX_BYTES`] when recorded).
pub(crate) fn size_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits are valid")
}

/// What a connection reports for each request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// HTTP status, or -1.
    pub code: i32,
    /// Why there was no status.
    pub error: Option<ErrorKind>,
    /// From the actual send to the end of the response.
    pub service: Duration,
    /// From the due time to the end of the response (equals `service` when unpaced).
    pub response: Duration,
    /// From the due time to the actual send (`None` when unpaced).
    pub lag: Option<Duration>,
    /// When the response ended, counted from the start of the run.
    pub completed: Duration,
    /// Response size in bytes.
    pub size_bytes: u64,
    /// Response head size in bytes.
    pub header_bytes: u64,
}

/// Whether a request with this outcome counts as an error: no status at all (`-1`) or
/// one outside 2xx/3xx, as Fortio counts them.
pub fn is_error_code(code: i32) -> bool {
    !(200..400).contains(&code)
}

impl Sample {
    fn is_error(&self) -> bool {
        is_error_code(self.code)
    }
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecondStats {
    /// Seconds since the start (the second in which responses completed).
    pub second: u64,
    /// Responses completed in that second.
    pub requests: u64,
    /// Of which errors (code -1 or a status outside 2xx/3xx).
    pub errors: u64,
    /// Median response time (corrected), in seconds.
    pub p50: f64,
    /// 99th percentile of response time (corrected), in seconds.
    pub p99: f64,
}

/// A second still receiving samples.
struct OpenSecond {
    second: u64,
    requests: u64,
    errors: u64,
    response: Histogram<u64>,
}

impl OpenSecond {
    fn new(second: u64) -> OpenSecond {
        // Two significant digits suffice for a per-second p50/p99 and keep this small.
        let response =
            Histogram::new_with_bounds(1, MAX_NANOS, 2).expect("static bounds are valid");
        OpenSecond {
            second,
            requests: 0,
            errors: 0,
            response,
        }
    }

    fn close(&self) -> SecondStats {
        let q = |p: f64| {
            if self.requests == 0 {
                0.0
            } else {
                nanos_to_secs(self.response.value_at_quantile(p))
            }
        };
        SecondStats {
            second: self.second,
            requests: self.requests,
            errors: self.errors,
            p50: q(0.5),
            p99: q(0.99),
        }
    }
}

/// How often the live figures are refreshed while a run goes on.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Figures for a live progress display, refreshed at most every [`PUBLISH_EVERY`] as samples
/// arrive, and once more at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveStats {
    /// Responses so far.
    pub requests: u64,
    /// Errors so far.
    pub errors: u64,
    /// Responses in the last complete second.
    pub last_second_requests: u64,
    /// p99 response time of the last complete second, in seconds.
    pub last_second_p99: f64,
}

/// Shared handle to the live figures.
pub type Live = Arc<Mutex<LiveStats>>;

/// Everything the collector gathered.
#[derive(Debug, Clone)]
pub struct Collected {
    /// Service time (from the actual send), nanoseconds.
    pub service: Histogram<u64>,
    /// Response time (from the due time), nanoseconds.
    pub response: Histogram<u64>,
    /// Schedule lag (due time to actual send), nanoseconds; empty when unpaced.
    pub lag: Histogram<u64>,
    /// Service time of errors only, nanoseconds.
    pub errors_service: Histogram<u64>,
    /// Response sizes in bytes.
    pub sizes: Histogram<u64>,
    /// Response head sizes in bytes.
    pub header_sizes: Histogram<u64>,
    /// Count per status code; -1 for requests that got no status.
    pub codes: BTreeMap<i32, u64>,
    /// Count per error kind of the -1s.
    pub error_kinds: BTreeMap<ErrorKind, u64>,
    /// One entry per second of the run.
    pub per_second: Vec<SecondStats>,
    /// When the last response completed, counted from the start.
    pub last_completion: Duration,
}

/// Seconds a second stays open for late samples (samples from different connections
/// reach the collector slightly out of order).
const GRACE_SECONDS: u64 = 2;

pub(crate) struct Collector {
    collected: Collected,
    open: VecDeque<OpenSecond>,
    live: Live,
    /// When the live figures were last refreshed.
    published: std::time::Instant,
}

impl Collector {
    pub(crate) fn new(live: Live) -> Collector {
        Collector {
            collected: Collected {
                service: latency_histogram(),
                response: latency_histogram(),
                lag: latency_histogram(),
                errors_service: latency_histogram(),
                sizes: size_histogram(),
                header_sizes: size_histogram(),
                codes: BTreeMap::new(),
                error_kinds: BTreeMap::new(),
                per_second: Vec::new(),
                last_completion: Duration::ZERO,
            },
            open: VecDeque::new(),
            live,
            published: std::time::Instant::now(),
        }
    }

    /// Receives samples until every sender is gone.
    pub(crate) async fn run(mut self, mut rx: UnboundedReceiver<Vec<Sample>>) -> Collected {
        let mut batch = Vec::with_capacity(512);
        while rx.recv_many(&mut batch, 64).await > 0 {
            for sample in batch.drain(..).flatten() {
                self.add(&sample);
            }
            // A display reads these about once a second; the quantile walks need not run per batch.
            if self.published.elapsed() >= PUBLISH_EVERY {
                self.publish();
                self.published = std::time::Instant::now();
            }
        }
        self.finish()
    }

    pub(crate) fn add(&mut self, s: &Sample) {
        let c = &mut self.collected;
        let nanos = |d: Duration| {
            u64::try_from(d.as_nanos())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_NANOS)
        };
        record(&mut c.service, nanos(s.service));
        record(&mut c.response, nanos(s.response));
        if let Some(lag) = s.lag {
            record(&mut c.lag, nanos(lag));
        }
        if s.is_error() {
            record(&mut c.errors_service, nanos(s.service));
        }
        if s.code >= 0 {
            record(&mut c.sizes, s.size_bytes.clamp(1, MAX_BYTES));
            record(&mut c.header_sizes, s.header_bytes.clamp(1, MAX_BYTES));
        }
        *c.codes.entry(s.code).or_default() += 1;
        if let Some(kind) = s.error {
            *c.error_kinds.entry(kind).or_default() += 1;
        }
        c.last_completion = c.last_completion.max(s.completed);
        self.add_to_second(s, nanos(s.response));
    }

    fn add_to_second(&mut self, s: &Sample, response_nanos: u64) {
        let second = s.completed.as_secs();
        let error = u64::from(s.is_error());
        if let Some(closed) = self
            .collected
            .per_second
            .iter_mut()
            .rev()
            .find(|x| x.second == second)
        {
            // Too late for its second's percentiles; the counts still add up.
            closed.requests += 1;
            closed.errors += error;
            return;
        }
        let next = self
            .open
            .back()
            .map_or(self.collected.per_second.len() as u64, |o| o.second + 1);
        for sec in next..=second {
            self.open.push_back(OpenSecond::new(sec));
        }
        if let Some(open) = self.open.iter_mut().find(|o| o.second == second) {
            open.requests += 1;
            open.errors += error;
            open.response.saturating_record(response_nanos);
        }
        while self
            .open
            .front()
            .is_some_and(|o| o.second + GRACE_SECONDS < second)
        {
            let done = self.open.pop_front().expect("checked non-empty");
            self.collected.per_second.push(done.close());
        }
    }

    fn publish(&self) {
        let errors = self
            .collected
            .codes
            .iter()
            .filter(|(c, _)| is_error_code(**c))
            .map(|(_, n)| n)
            .sum();
        let requests = self.collected.codes.values().sum();
        // The newest second that has ended: the one before the newest open one.
        let last = self
            .open
            .iter()
            .rev()
            .nth(1)
            .map(OpenSecond::close)
            .or_else(|| self.collected.per_second.last().cloned());
        let mut live = self
            .live
            .lock()
            .expect("the live stats lock is never poisoned");
        live.requests = requests;
        live.errors = errors;
        if let Some(last) = last {
            live.last_second_requests = last.requests;
            live.last_second_p99 = last.p99;
        }
    }

    pub(crate) fn finish(mut self) -> Collected {
        self.publish();
        while let Some(open) = self.open.pop_front() {
            self.collected.per_second.push(open.close());
        }
        self.collected
    }
}

/// Nanoseconds as seconds.
pub(crate) fn nanos_to_secs(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(code: i32, completed_ms: u64, response_ms: u64) -> Sample {
        Sample {
            code,
            error: (code < 0).then_some(ErrorKind::Refused),
            service: Duration::from_millis(1),
            response: Duration::from_millis(response_ms),
            lag: Some(Duration::from_micros(50)),
            completed: Duration::from_millis(completed_ms),
            size_bytes: 100,
            header_bytes: 40,
        }
    }

    #[test]
    fn histograms_grow_with_what_is_recorded_and_clamp_beyond_their_range() {
        let mut c = Collector::new(Live::default());
        c.add(&sample(200, 10, 2));
        // A 2 ms response: the counts cover milliseconds, not an hour (a few pages).
        assert!(c.collected.response.distinct_values() < 20_000);
        let mut slow = sample(200, 20, 0);
        slow.response = Duration::from_secs(7200);
        slow.size_bytes = u64::MAX;
        c.add(&slow);
        let out = c.finish();
        let hour = Duration::from_secs(3600).as_nanos() as f64;
        let max = out.response.max() as f64;
        assert!(
            (max - hour).abs() / hour < 0.001,
            "clamped to an hour: {max}"
        );
        let tib = (1u64 << 40) as f64;
        let max = out.sizes.max() as f64;
        assert!((max - tib).abs() / tib < 0.001, "clamped to 1 TiB: {max}");
        assert_eq!(out.response.len(), 2);
    }

    #[test]
    fn aggregates_codes_kinds_and_seconds() {
        let mut c = Collector::new(Live::default());
        for i in 0..100 {
            c.add(&sample(200, i * 10, 2)); // seconds 0..=0.99
        }
        c.add(&sample(500, 1500, 3));
        c.add(&sample(-1, 3200, 1));
        let out = c.finish();
        assert_eq!(out.codes[&200], 100);
        assert_eq!(out.codes[&500], 1);
        assert_eq!(out.codes[&-1], 1);
        assert_eq!(out.error_kinds[&ErrorKind::Refused], 1);
        assert_eq!(
            out.per_second.iter().map(|s| s.second).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(out.per_second[0].requests, 100);
        assert_eq!(out.per_second[1].errors, 1);
        assert_eq!(out.per_second[2].requests, 0);
        assert!((out.per_second[0].p99 - 0.002).abs() < 0.0001);
        assert_eq!(out.service.len(), 102);
        assert_eq!(
            out.sizes.len(),
            101,
            "no size for a request without a response"
        );
        assert_eq!(out.last_completion, Duration::from_millis(3200));
    }

    #[test]
    fn late_samples_still_count() {
        let mut c = Collector::new(Live::default());
        c.add(&sample(200, 100, 1));
        c.add(&sample(200, 9_000, 1)); // closes seconds 0..=6
        c.add(&sample(200, 200, 1)); // late for second 0
        let out = c.finish();
        assert_eq!(out.per_second[0].requests, 2);
        assert_eq!(out.per_second.iter().map(|s| s.requests).sum::<u64>(), 3);
    }
}
