//! What a test produced, its summary and SLO verdict, and the files of its run folder.

use std::time::SystemTime;

use meshload_config::slo::Latency;
use meshload_config::{Config, LoadTest, Slo};
use meshload_loadgen::FortioResult;
use meshload_promql::eval::RangeSeries;
use meshload_store::{RunStatus, RunWriter, StoreError};
use serde::Serialize;
use serde_json::{Value, json};

use crate::backend::ReplicaExit;
use crate::host::HostLoad;

/// One metric query's outcome over a test window.
#[derive(Debug, Clone)]
pub struct MetricResult {
    /// The metric's name (its file is `<name>.csv`).
    pub name: String,
    /// The PromQL query.
    pub query: String,
    /// The range result, or why there is none.
    pub series: Result<Vec<RangeSeries>, String>,
}

impl MetricResult {
    /// Whether the query returned at least one series.
    pub fn has_data(&self) -> bool {
        self.series.as_ref().is_ok_and(|s| !s.is_empty())
    }

    /// A short note: series count, `no data`, or the error.
    pub fn note(&self) -> String {
        match &self.series {
            Ok(s) if s.is_empty() => "no data".to_string(),
            Ok(s) => format!("{} series", s.len()),
            Err(e) => format!("error: {e}"),
        }
    }
}

/// Where one run sits in its series: every run of a test in one `meshload run`, over every
/// arm and repeat, shares the series' id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeriesPosition {
    /// The series' id (the `meshload run`'s start, as run ids are).
    pub id: String,
    /// The arm.
    pub arm: String,
    /// The repeat, from 1.
    pub repeat: u32,
    /// Repeats per arm.
    pub repeats: u32,
    /// Every arm of the series, the baseline first.
    pub arms: Vec<String>,
}

/// The figures of one test, as printed and stored.
#[derive(Debug, Clone, Serialize)]
pub struct TestSummary {
    /// The test's name.
    pub test_name: String,
    /// Where its run was stored.
    pub run_dir: String,
    /// How the test ended.
    pub status: RunStatus,
    /// The mesh it ran in (`none`, `envoy`, `appmesh`, ...), as the backend says.
    pub mesh: meshload_config::Mesh,
    /// Requested rate (`max` for as fast as possible).
    pub requested_qps: String,
    /// Achieved rate.
    pub actual_qps: f64,
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed (no status, or not 2xx/3xx).
    pub errors: u64,
    /// `errors / requests`.
    pub error_ratio: f64,
    /// Median service time, ms.
    pub service_p50_ms: f64,
    /// p99 of service time, ms.
    pub service_p99_ms: f64,
    /// Median response time (from the due time), ms.
    pub response_p50_ms: f64,
    /// p99 of response time, ms.
    pub response_p99_ms: f64,
    /// Thresholds missed, each with its figures.
    pub slo_failures: Vec<String>,
    /// Metric name and what its query returned (`3 series`, `no data`).
    pub metrics: Vec<(String, String)>,
    /// The metrics that returned nothing or failed (their notes say which).
    #[serde(skip)]
    pub metric_problems: Vec<String>,
    /// Replicas that exited during the test.
    pub node_exits: Vec<String>,
    /// Set when the run could not reach its store and stayed in the local spool.
    pub storage_note: Option<String>,
    /// Whether the test has an SLO (without one, nothing was checked).
    pub slo_set: bool,
    /// The least share of the requested rate at which the run counts as having held its
    /// load (the SLO's `min_rate_ratio`, else 0.99): below it the run is not compared.
    pub min_rate_ratio: f64,
    /// Where the run sits in its series (test, arm, repeat).
    pub series: Option<SeriesPosition>,
    /// What the host did during the test.
    pub host: HostLoad,
}

impl TestSummary {
    /// The summary of a load result.
    pub fn new(test: &LoadTest, fortio: &FortioResult, interrupted: bool) -> TestSummary {
        let requests: u64 = fortio.ret_codes.values().sum();
        let errors = fortio.error_count();
        let ms = |h: &meshload_loadgen::result::HistogramData, p: f64| {
            h.percentile(p).unwrap_or(0.0) * 1e3
        };
        let response = fortio.response_or_service();
        TestSummary {
            test_name: test.name.clone(),
            run_dir: String::new(),
            status: if interrupted {
                RunStatus::Interrupted
            } else {
                RunStatus::Complete
            },
            mesh: meshload_config::Mesh::None,
            requested_qps: fortio.requested_qps.clone(),
            actual_qps: fortio.actual_qps,
            requests,
            errors,
            error_ratio: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            service_p50_ms: ms(&fortio.duration_histogram, 50.0),
            service_p99_ms: ms(&fortio.duration_histogram, 99.0),
            response_p50_ms: ms(response, 50.0),
            response_p99_ms: ms(response, 99.0),
            slo_failures: Vec::new(),
            metrics: Vec::new(),
            metric_problems: Vec::new(),
            node_exits: Vec::new(),
            storage_note: None,
            slo_set: !test.slo.is_empty(),
            min_rate_ratio: test
                .slo
                .min_rate_ratio
                .unwrap_or(meshload_config::search::DEFAULT_MIN_RATE_RATIO),
            series: None,
            host: HostLoad::default(),
        }
    }
}

/// The thresholds `slo` sets that the summary misses, each naming the figures.
/// Percentiles are read from the load result's histograms.
pub fn slo_failures(
    slo: &Slo,
    s: &TestSummary,
    fortio: &FortioResult,
    requested_qps: Option<f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    for bound in &slo.latency {
        let (histogram, what) = match bound.latency {
            Latency::Response => (fortio.response_or_service(), "response"),
            Latency::Service => (&fortio.duration_histogram, "service"),
        };
        let ms = histogram.percentile(bound.percentile).unwrap_or(0.0) * 1e3;
        if ms > bound.max_ms {
            out.push(format!(
                "p{} {what} time {ms:.3} ms > {} ms",
                bound.percentile, bound.max_ms
            ));
        }
    }
    if let Some(max) = slo.error_ratio
        && s.error_ratio > max
    {
        out.push(format!(
            "error ratio {:.4} > {max} ({} of {} requests)",
            s.error_ratio, s.errors, s.requests
        ));
    }
    if let (Some(min), Some(requested)) = (slo.min_rate_ratio, requested_qps) {
        let ratio = s.actual_qps / requested;
        if ratio < min {
            out.push(format!(
                "achieved {:.1} of {requested} req/s ({ratio:.3}) < {min} of requested",
                s.actual_qps
            ));
        }
    }
    out
}

/// Everything a test run stores.
pub struct RunFiles<'a> {
    /// The config as run.
    pub config: &'a Config,
    /// The test.
    pub test: &'a LoadTest,
    /// The load result.
    pub fortio: &'a FortioResult,
    /// Metric results.
    pub metrics: &'a [MetricResult],
    /// The summary.
    pub summary: &'a TestSummary,
    /// Backend name and Prometheus setting, for metadata.
    pub backend: &'a str,
    /// Where metric queries were answered.
    pub prometheus: &'a str,
    /// What the backend tells about where the run ran.
    pub backend_facts: &'a crate::Facts,
    /// Start and end of the test.
    pub window: (SystemTime, SystemTime),
    /// Raw samples (the documented JSON Lines form).
    pub samples: Vec<u8>,
    /// Replicas that exited.
    pub exits: &'a [ReplicaExit],
    /// The capacity search this run is a trial of (`null` otherwise).
    pub search: Value,
}

/// Writes the run folder of a capacity-search trial against a URL (no topology, no
/// metrics): the load result, its per-second figures, and metadata naming the search.
pub fn write_url_trial(
    run: &RunWriter,
    test_name: &str,
    fortio: &FortioResult,
    search: &Value,
    window: (SystemTime, SystemTime),
) -> Result<(), StoreError> {
    let value = serde_json::to_value(fortio).expect("a result always serializes");
    run.write(meshload_store::layout::FORTIO, pretty(&value).as_bytes())?;
    run.write(
        meshload_store::layout::PER_SECOND,
        per_second_csv(fortio).as_bytes(),
    )?;
    let status = if fortio.interrupted {
        RunStatus::Interrupted
    } else {
        RunStatus::Complete
    };
    let metadata = json!({
        "meshload_version": env!("CARGO_PKG_VERSION"),
        "test_name": test_name,
        "run_id": run.id(),
        "status": status,
        "backend": "url",
        "backend_facts": {"mesh": "none"},
        "start": rfc3339(window.0),
        "end": rfc3339(window.1),
        "start_ms": meshload_promql::system_time_ms(&window.0),
        "end_ms": meshload_promql::system_time_ms(&window.1),
        "parameters": {"url": fortio.url, "qps": fortio.requested_qps, "c": fortio.num_threads},
        "search": search,
    });
    run.write(
        meshload_store::layout::METADATA,
        pretty(&metadata).as_bytes(),
    )
}

/// Writes every file of the run folder.
pub fn write_run(run: &RunWriter, f: &RunFiles<'_>) -> Result<(), StoreError> {
    run.write(
        meshload_store::layout::CONFIG,
        pretty(&f.config.raw).as_bytes(),
    )?;
    let fortio = serde_json::to_value(f.fortio).expect("a result always serializes");
    run.write(meshload_store::layout::FORTIO, pretty(&fortio).as_bytes())?;
    for m in f.metrics {
        let mut csv = Vec::new();
        let series = m.series.as_deref().unwrap_or(&[]);
        meshload_promql::output::write_csv(&mut csv, &m.name, series).expect("writing to memory");
        run.write(&meshload_store::layout::metric_csv(&m.name), &csv)?;
    }
    run.write(
        meshload_store::layout::PER_SECOND,
        per_second_csv(f.fortio).as_bytes(),
    )?;
    run.write(meshload_store::layout::SAMPLES, &f.samples)?;
    run.write(
        meshload_store::layout::METADATA,
        pretty(&metadata(run.id(), f)).as_bytes(),
    )
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values always serialize");
    s.push('\n');
    s
}

fn per_second_csv(fortio: &FortioResult) -> String {
    let mut out = String::from("second,requests,errors,p50_seconds,p99_seconds\n");
    for s in &fortio.per_second {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            s.second, s.requests, s.errors, s.p50, s.p99
        ));
    }
    out
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn metadata(run_id: &str, f: &RunFiles<'_>) -> Value {
    let t = f.test;
    let metrics: serde_json::Map<String, Value> = f
        .metrics
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                json!({"query": m.query, "result": m.note()}),
            )
        })
        .collect();
    json!({
        "meshload_version": env!("CARGO_PKG_VERSION"),
        "test_name": t.name,
        "run_id": run_id,
        "status": f.summary.status,
        "backend": f.backend,
        "backend_facts": f.backend_facts,
        "prometheus": f.prometheus,
        "start": rfc3339(f.window.0),
        "end": rfc3339(f.window.1),
        "start_ms": meshload_promql::system_time_ms(&f.window.0),
        "end_ms": meshload_promql::system_time_ms(&f.window.1),
        "parameters": {
            "url": t.url,
            "target": t.target,
            "qps": t.qps.map_or(Value::from("max"), Value::from),
            "t": humantime::format_duration(t.duration).to_string(),
            "c": t.connections,
            "n": t.requests,
            "uniform": t.uniform,
            "jitter": t.jitter,
            "nocatchup": t.nocatchup,
            "stdclient": t.std_client,
        },
        "topology": {
            "nodes": f.config.nodes.len(),
            "replicas": f.config.nodes.values().map(|n| n.replicas).sum::<u32>(),
        },
        "summary": f.summary,
        "slo": {
            "p99_ms": t.slo.p99_ms(),
            "error_ratio": t.slo.error_ratio,
            "min_rate_ratio": t.slo.min_rate_ratio,
            "thresholds": t.slo.entries().into_iter().map(|(k, v)| (k, Value::from(v))).collect::<serde_json::Map<String, Value>>(),
            "passed": f.summary.slo_failures.is_empty(),
            "failures": f.summary.slo_failures,
        },
        "metrics": metrics,
        "series": f.summary.series,
        "host": f.summary.host,
        "search": f.search,
        "node_exits": f.exits.iter().map(|e| json!({"pod": e.pod, "status": e.status})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fortio_result_without_response_times_uses_its_service_times() {
        let config = meshload_config::from_str(
            r#"{"backends_map": {"0": []}, "load_tests": [{"test_name": "t", "target": "0", "qps": 10, "t": "1s", "c": 1, "slo": {"p99_ms": 5}}]}"#,
            false,
            "t",
        )
        .expect("valid")
        .config;
        let fortio: FortioResult = serde_json::from_value(json!({
            "RunType": "HTTP", "Labels": "", "StartTime": "", "RequestedQPS": "10",
            "RequestedDuration": "1s", "ActualQPS": 10.0, "ActualDuration": 1_000_000_000u64,
            "NumThreads": 1, "RetCodes": {"200": 10}, "URL": "http://x/",
            "DurationHistogram": {"Count": 10, "Min": 0.001, "Max": 0.02, "Sum": 0.1, "Avg": 0.01,
              "StdDev": 0.005, "Percentiles": [{"Percentile": 50, "Value": 0.008}, {"Percentile": 99, "Value": 0.02}]}
        }))
        .expect("a Fortio result");
        let test = &config.tests[0];
        let s = TestSummary::new(test, &fortio, false);
        assert_eq!(s.response_p99_ms, s.service_p99_ms);
        assert!((s.response_p99_ms - 20.0).abs() < 1e-9);
        assert_eq!(
            slo_failures(&test.slo, &s, &fortio, test.qps).len(),
            1,
            "p99 20 ms > 5 ms"
        );
    }
}
