//! The result of a load test and its Fortio-compatible JSON form.
//!
//! The JSON has the shape Fortio (and Nighthawk's Fortio output) emits, so tools written
//! for Fortio results read it: `ActualQPS`, `DurationHistogram` (seconds), `RetCodes`, ...
//! `DurationHistogram` is the service time, measured from the actual send, as Fortio
//! reports it. meshload's own data is under extra keys: `ResponseTimeHistogram` (from
//! each request's due time, corrected for coordinated omission as wrk2 does),
//! `ScheduleLagHistogram`, `PerSecond`, `ErrorKinds`, `Interrupted`, and `HdrHistograms`
//! (base64 of HdrHistogram V2 deflate encodings, for exact merging later).
//! The committed JSON Schema `schema/fortio-result.schema.json` pins this shape.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use crate::collector::{Collected, SecondStats, nanos_to_secs};
use crate::spec::{LoadSpec, Stop};

/// A finished (or interrupted) load test, with full-resolution histograms.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// What was asked for.
    pub spec: LoadSpec,
    /// Wall-clock start.
    pub start_time: SystemTime,
    /// The span the rate is computed over: the requested duration of a timed test (the
    /// last response's end when later), `n / qps` for a paced `-n` test, else the start
    /// to the last response.
    pub actual_duration: Duration,
    /// The aggregates.
    pub collected: Collected,
    /// What opening sockets cost (count, connect and TLS handshake times, ALPN).
    pub connections: crate::executor::ConnectionStats,
    /// Whether the run was stopped before its end.
    pub interrupted: bool,
}

impl LoadResult {
    pub(crate) fn new(
        spec: LoadSpec,
        start_time: SystemTime,
        elapsed: Duration,
        collected: Collected,
        connections: crate::executor::ConnectionStats,
        interrupted: bool,
    ) -> LoadResult {
        let to_last = if collected.service.is_empty() {
            elapsed
        } else {
            collected.last_completion
        };
        // A test's rate is over the span it was asked to cover, as Fortio's
        // ActualDuration: dividing by the time to the last *send* instead over-reports
        // short tests (a 2 s test at 8 req/s sends its last request at 1.875 s).
        let nominal = match (spec.stop, spec.qps) {
            _ if interrupted => None,
            (Stop::Duration(d), _) => Some(d),
            (Stop::Requests(n), Some(qps)) => Some(Duration::from_secs_f64(n as f64 / qps)),
            _ => None,
        };
        let actual_duration = nominal.map_or(to_last, |d| d.max(to_last));
        LoadResult {
            spec,
            start_time,
            actual_duration,
            collected,
            connections,
            interrupted,
        }
    }

    /// Requests completed.
    pub fn count(&self) -> u64 {
        self.collected.codes.values().sum()
    }

    /// Achieved requests per second.
    pub fn actual_qps(&self) -> f64 {
        let secs = self.actual_duration.as_secs_f64();
        if secs > 0.0 {
            self.count() as f64 / secs
        } else {
            0.0
        }
    }

    /// The Fortio-compatible document.
    pub fn to_fortio(&self) -> FortioResult {
        let spec = &self.spec;
        let p = &spec.percentiles;
        let c = &self.collected;
        let requested_duration = match spec.stop {
            Stop::Requests(n) => format!("exactly {n} calls"),
            Stop::Duration(d) => humantime::format_duration(d).to_string(),
            Stop::Never => "until stopped".to_string(),
        };
        FortioResult {
            run_type: "HTTP".into(),
            labels: spec.labels.clone(),
            start_time: humantime::format_rfc3339_nanos(self.start_time).to_string(),
            requested_qps: spec.qps.map_or_else(|| "max".to_string(), format_number),
            requested_duration,
            actual_qps: self.actual_qps(),
            actual_duration: u64::try_from(self.actual_duration.as_nanos()).unwrap_or(u64::MAX),
            num_threads: spec.connections as u64,
            version: format!("meshload {}", env!("CARGO_PKG_VERSION")),
            duration_histogram: HistogramData::of_nanos(&c.service, p),
            errors_duration_histogram: HistogramData::of_nanos(&c.errors_service, p),
            exactly: match spec.stop {
                Stop::Requests(n) => n,
                _ => 0,
            },
            jitter: spec.jitter,
            uniform: spec.uniform,
            no_catch_up: spec.nocatchup,
            ret_codes: c.codes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            url: spec.uri.to_string(),
            num_connections: spec.connections as u64,
            h2: spec.h2,
            http_req_time_out: u64::try_from(spec.timeout.as_nanos()).unwrap_or(u64::MAX),
            sizes: HistogramData::of_units(&c.sizes, p),
            header_sizes: HistogramData::of_units(&c.header_sizes, p),
            socket_count: self.connections.sockets,
            connection_stats: HistogramData::of_nanos(&self.connections.connect, p),
            tls_handshake_histogram: self
                .spec
                .tls
                .as_ref()
                .map(|_| HistogramData::of_nanos(&self.connections.tls_handshake, p)),
            alpn_protocols: self.spec.tls.as_ref().map(|_| {
                [
                    ("h2", self.connections.alpn_h2),
                    ("http/1.1", self.connections.alpn_http1),
                    ("none", self.connections.alpn_none),
                ]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), n))
                .collect()
            }),
            response_time_histogram: HistogramData::of_nanos(&c.response, p),
            schedule_lag_histogram: spec.qps.map(|_| HistogramData::of_nanos(&c.lag, p)),
            per_second: c.per_second.clone(),
            error_kinds: c
                .error_kinds
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect(),
            interrupted: self.interrupted,
            hdr_histograms: HdrHistograms {
                service: encode_hdr(&c.service),
                response: encode_hdr(&c.response),
                lag: encode_hdr(&c.lag),
            },
        }
    }
}

/// `1000` for whole numbers, `12.5` otherwise.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// base64 of the histogram's HdrHistogram V2 deflate encoding.
fn encode_hdr(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing to memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes a histogram written by [`FortioResult::hdr_histograms`].
pub fn decode_hdr(text: &str) -> Option<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .ok()
}

/// Fortio's load-test result, with meshload's extra keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FortioResult {
    /// Always `HTTP`.
    pub run_type: String,
    /// Free-form labels.
    pub labels: String,
    /// Start, RFC 3339 with nanoseconds.
    pub start_time: String,
    /// Requested rate, or `max`.
    #[serde(rename = "RequestedQPS")]
    pub requested_qps: String,
    /// Requested duration (`10s`), or `exactly N calls`.
    pub requested_duration: String,
    /// Achieved requests per second.
    #[serde(rename = "ActualQPS")]
    pub actual_qps: f64,
    /// Actual duration in nanoseconds.
    pub actual_duration: u64,
    /// Connections (Fortio calls them threads).
    pub num_threads: u64,
    /// Generator and version.
    #[serde(default)]
    pub version: String,
    /// Service time, seconds, from the actual send (Fortio's meaning).
    pub duration_histogram: HistogramData,
    /// Service time of failed requests, seconds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub errors_duration_histogram: HistogramData,
    /// Exact request count asked for (0 when by duration).
    #[serde(default)]
    pub exactly: u64,
    /// Jitter on.
    #[serde(default)]
    pub jitter: bool,
    /// Uniform staggering on.
    #[serde(default)]
    pub uniform: bool,
    /// No catch-up on.
    #[serde(default)]
    pub no_catch_up: bool,
    /// Count per status code; `-1` for requests without one.
    #[serde(deserialize_with = "null_as_default")]
    pub ret_codes: BTreeMap<String, u64>,
    /// Target URL.
    #[serde(rename = "URL")]
    pub url: String,
    /// Connections.
    #[serde(default)]
    pub num_connections: u64,
    /// h2c used.
    #[serde(default, rename = "H2")]
    pub h2: bool,
    /// Per-request timeout in nanoseconds.
    #[serde(default, rename = "HTTPReqTimeOut")]
    pub http_req_time_out: u64,
    /// Response sizes in bytes.
    #[serde(default, deserialize_with = "null_as_default")]
    pub sizes: HistogramData,
    /// Response head sizes in bytes.
    #[serde(default, deserialize_with = "null_as_default")]
    pub header_sizes: HistogramData,
    /// Sockets opened.
    #[serde(default)]
    pub socket_count: u64,
    /// Fortio's connection statistics: each socket's TCP connect time, seconds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub connection_stats: HistogramData,
    /// meshload: each socket's TLS handshake time, seconds (`https://` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_handshake_histogram: Option<HistogramData>,
    /// meshload: the protocols ALPN chose, by socket count (`https://` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn_protocols: Option<BTreeMap<String, u64>>,
    /// meshload: response time from each request's due time, seconds.
    #[serde(default)]
    pub response_time_histogram: HistogramData,
    /// meshload: lateness of sends against the schedule, seconds (absent when unpaced).
    #[serde(default)]
    pub schedule_lag_histogram: Option<HistogramData>,
    /// meshload: one entry per second.
    #[serde(default)]
    pub per_second: Vec<SecondStats>,
    /// meshload: breakdown of the `-1` code by kind.
    #[serde(default)]
    pub error_kinds: BTreeMap<String, u64>,
    /// meshload: the run was stopped before its end.
    #[serde(default)]
    pub interrupted: bool,
    /// meshload: full histograms for exact merging.
    #[serde(default)]
    pub hdr_histograms: HdrHistograms,
}

impl FortioResult {
    /// Response time from each request's due time; for results without it (Fortio's
    /// own), their service time, the only latency they have.
    pub fn response_or_service(&self) -> &HistogramData {
        if self.response_time_histogram.count == 0 {
            &self.duration_histogram
        } else {
            &self.response_time_histogram
        }
    }

    /// Requests that got a status outside 2xx/3xx or none at all.
    pub fn error_count(&self) -> u64 {
        self.ret_codes
            .iter()
            .filter(|(code, _)| {
                code.parse::<i32>()
                    .map_or(true, crate::collector::is_error_code)
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// Reads `null` as the default: Go's encoder writes empty slices, maps and pointers as
/// `null`, so Fortio's results have them.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Base64 HdrHistogram V2 deflate encodings, values in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HdrHistograms {
    /// Service time.
    pub service: String,
    /// Response time.
    pub response: String,
    /// Schedule lag.
    pub lag: String,
}

/// Fortio's histogram summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistogramData {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Mean.
    pub avg: f64,
    /// Standard deviation.
    pub std_dev: f64,
    /// Non-empty buckets.
    #[serde(default, deserialize_with = "null_as_default")]
    pub data: Vec<Bucket>,
    /// Requested percentiles.
    #[serde(default)]
    pub percentiles: Option<Vec<Percentile>>,
}

/// One histogram bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Bucket {
    /// Lower bound.
    pub start: f64,
    /// Upper bound.
    pub end: f64,
    /// Cumulative percentage of values up to `end`.
    pub percent: f64,
    /// Values in the bucket.
    pub count: u64,
}

/// One percentile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Percentile {
    /// The percentile, in percent.
    pub percentile: f64,
    /// Its value.
    pub value: f64,
}

impl HistogramData {
    /// Summarises a nanosecond histogram in seconds.
    pub fn of_nanos(h: &Histogram<u64>, percentiles: &[f64]) -> HistogramData {
        Self::scaled(h, percentiles, 1e-9, 1_000)
    }

    /// Summarises a histogram of plain units (bytes).
    pub fn of_units(h: &Histogram<u64>, percentiles: &[f64]) -> HistogramData {
        Self::scaled(h, percentiles, 1.0, 1)
    }

    /// Buckets double from `first_bucket` (in the histogram's units); values are
    /// multiplied by `scale` on the way out.
    fn scaled(
        h: &Histogram<u64>,
        percentiles: &[f64],
        scale: f64,
        first_bucket: u64,
    ) -> HistogramData {
        if h.is_empty() {
            return HistogramData::default();
        }
        let (min, max) = (h.min() as f64 * scale, h.max() as f64 * scale);
        let mut data = Vec::new();
        let mut start = min;
        for step in h.iter_log(first_bucket, 2.0) {
            let count = step.count_since_last_iteration();
            let end = (step.value_iterated_to() as f64 * scale).min(max);
            if count > 0 {
                data.push(Bucket {
                    start,
                    end,
                    percent: step.percentile(),
                    count,
                });
            }
            start = end;
        }
        let percentiles = percentiles
            .iter()
            .map(|&p| Percentile {
                percentile: p,
                value: h.value_at_percentile(p) as f64 * scale,
            })
            .collect();
        HistogramData {
            count: h.len(),
            min,
            max,
            sum: h.mean() * h.len() as f64 * scale,
            avg: h.mean() * scale,
            std_dev: h.stdev() * scale,
            data,
            percentiles: Some(percentiles),
        }
    }

    /// The value at percentile `p` if it was reported.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        self.percentiles
            .as_ref()?
            .iter()
            .find(|x| (x.percentile - p).abs() < 1e-9)
            .map(|x| x.value)
    }
}

/// Seconds of a nanosecond count (re-exported for printers).
pub fn seconds(nanos: u64) -> f64 {
    nanos_to_secs(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_data_matches_fortio_shape() {
        let mut h = crate::collector::latency_histogram();
        for micros in [100u64, 200, 300, 400, 10_000] {
            h.record(micros * 1000).expect("in range");
        }
        let d = HistogramData::of_nanos(&h, &[50.0, 99.0]);
        assert_eq!(d.count, 5);
        assert!((d.min - 0.0001).abs() < 1e-6);
        assert!((d.max - 0.01).abs() < 1e-5);
        assert!((d.avg - 0.0022).abs() < 1e-5);
        assert_eq!(d.data.iter().map(|b| b.count).sum::<u64>(), 5);
        let last = d.data.last().expect("buckets");
        assert!((last.percent - 100.0).abs() < 1e-9);
        assert!((last.end - d.max).abs() < 1e-12);
        assert!(d.data.windows(2).all(|w| w[0].end <= w[1].start + 1e-12));
        assert!((d.percentile(50.0).expect("asked") - 0.0003).abs() < 1e-6);
    }

    #[test]
    fn fortios_own_result_json_is_read() {
        // The shape Fortio's HTTP runner writes (fortio.org/fortio, HTTPRunnerResults):
        // its extra keys, and Go's nulls for empty slices and pointers.
        let fortio = r#"{
          "RunType": "HTTP", "Labels": "", "StartTime": "2026-11-27T10:00:00.123456789Z",
          "RequestedQPS": "50", "RequestedDuration": "10s", "ActualQPS": 49.98,
          "ActualDuration": 10004000000, "NumThreads": 4, "Version": "1.69.0",
          "DurationHistogram": {"Count": 500, "Min": 0.0004, "Max": 0.012, "Sum": 0.9,
            "Avg": 0.0018, "StdDev": 0.0007,
            "Data": [{"Start": 0.0004, "End": 0.001, "Percent": 40, "Count": 200},
                     {"Start": 0.001, "End": 0.012, "Percent": 100, "Count": 300}],
            "Percentiles": [{"Percentile": 50, "Value": 0.0015}, {"Percentile": 99, "Value": 0.009}]},
          "ErrorsDurationHistogram": {"Count": 0, "Min": 0, "Max": 0, "Sum": 0, "Avg": 0,
            "StdDev": 0, "Data": null},
          "Exactly": 0, "Jitter": false, "Uniform": false, "NoCatchUp": false, "RunID": 1,
          "AccessLoggerInfo": "", "ID": "2026-11-27-100000", "RetCodes": {"200": 500},
          "IPCountMap": {"10.0.0.7:9080": 4}, "Insecure": false, "MTLS": false,
          "URL": "http://service-0.perf.svc.cluster.local:9080/", "NumConnections": 1,
          "Compression": false, "H2": false, "HTTPReqTimeOut": 3000000000, "Payload": null,
          "Sizes": {"Count": 500, "Min": 100, "Max": 100, "Sum": 50000, "Avg": 100,
            "StdDev": 0, "Data": null},
          "HeaderSizes": null, "Sockets": [1, 1, 1, 1], "SocketCount": 4, "AbortOn": 0
        }"#;
        let r: FortioResult = serde_json::from_str(fortio).expect("Fortio's JSON reads");
        assert_eq!(r.ret_codes.get("200"), Some(&500));
        assert_eq!(r.duration_histogram.count, 500);
        assert_eq!(r.duration_histogram.percentile(99.0), Some(0.009));
        assert!(r.errors_duration_histogram.data.is_empty());
        assert_eq!(r.header_sizes, HistogramData::default());
        assert_eq!(r.error_count(), 0);
        assert!(!r.interrupted && r.per_second.is_empty());
    }

    #[test]
    fn hdr_encoding_round_trips() {
        let mut h = crate::collector::latency_histogram();
        h.record(12_345).expect("in range");
        let back = decode_hdr(&encode_hdr(&h)).expect("decodes");
        assert_eq!(back.len(), 1);
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn numbers_format_like_fortio() {
        assert_eq!(format_number(1000.0), "1000");
        assert_eq!(format_number(12.5), "12.5");
    }
}
