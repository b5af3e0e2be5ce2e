//! The fuzz targets, one function per parser, each taking the fuzzer's raw bytes.
//!
//! A target must never panic, hang or exhaust memory whatever the bytes: errors are
//! fine, they are what bad input should get. The fuzzers under `fuzz/` (cargo-fuzz)
//! call these functions; `tests/replay.rs` feeds them every file of the committed
//! corpora and every case a fuzzer ever found, so a plain `cargo test` re-checks them.

use std::sync::OnceLock;
use std::time::Duration;

use meshload_promql::exposition::{self, Format};
use meshload_promql::promqltest::{self, ScriptLimits};
use meshload_promql::{Labels, QueryOptions, Store};

/// A fuzz target: takes the fuzzer's bytes.
pub type Target = fn(&[u8]);

/// Every target, by the name its fuzzer and its corpus folder have.
pub const TARGETS: [(&str, Target); 7] = [
    ("config_json", config_json),
    ("config_yaml", config_yaml),
    ("exposition", exposition),
    ("promql_parse", promql_parse),
    ("promql_eval", promql_eval),
    ("rest_request", rest_request),
    ("promql_script", promql_script),
];

/// How long one evaluation may take under the fuzzer: a slow input is found by the
/// fuzzer's own hang timeout, set above this.
const EVAL_TIMEOUT: Duration = Duration::from_secs(2);

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A config file in JSON, validated as `meshload validate` does.
pub fn config_json(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = meshload_config::from_str(text, false, "fuzz.json");
    }
}

/// A config file in YAML.
pub fn config_yaml(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = meshload_config::from_str(text, true, "fuzz.yaml");
    }
}

/// A scrape body, in both exposition formats.
pub fn exposition(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = exposition::parse(text, Format::Prometheus);
        let _ = exposition::parse(text, Format::OpenMetrics);
    }
}

/// A PromQL expression, parsed within the query limits.
pub fn promql_parse(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = meshload_promql::eval::parse(text);
    }
}

/// A small store of the kinds of series a run holds: a gauge, counters and a histogram,
/// one sample every 15 s for 10 minutes.
fn small_store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let mut store = Store::new();
        let series = |name: &str, pairs: &[(&str, &str)]| {
            let mut labels = Labels::default();
            labels.set("__name__", name);
            for (k, v) in pairs {
                labels.set(k, v);
            }
            labels
        };
        let up = series("up", &[("job", "node"), ("instance", "a")]);
        let ok = series("requests_total", &[("code", "200"), ("instance", "a")]);
        let bad = series("requests_total", &[("code", "500"), ("instance", "b")]);
        let buckets: Vec<(Labels, f64)> = ["0.01", "0.1", "1", "+Inf"]
            .iter()
            .zip([0.5, 0.8, 0.95, 1.0])
            .map(|(le, share)| (series("latency_seconds_bucket", &[("le", le)]), share))
            .collect();
        for k in 0..40i64 {
            let t = k * 15_000;
            let n = k as f64;
            store.append(&up, t, if k == 20 { 0.0 } else { 1.0 });
            store.append(&ok, t, n * 100.0);
            store.append(&bad, t, n * 3.0);
            for (labels, share) in &buckets {
                store.append(labels, t, n * 10.0 * share);
            }
        }
        store
    })
}

/// A PromQL expression evaluated over [`small_store`], as an instant query and as a
/// range query over the store's span.
pub fn promql_eval(data: &[u8]) {
    let Some(query) = text(data) else { return };
    let store = small_store();
    let opts = QueryOptions {
        timeout: EVAL_TIMEOUT,
        ..QueryOptions::default()
    };
    let _ = meshload_promql::instant_query(store, query, 300_000, opts.clone());
    let _ = meshload_promql::range_query(store, query, 0, 600_000, 15_000, opts);
}

/// A Fortio REST request to `meshload serve`: the query string, a newline, then the
/// body, read into load options as the server does.
pub fn rest_request(data: &[u8]) {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Some(query) = text(query) else { return };
    let Ok(params) = meshload_loadgen::rest::params(query, body) else {
        return;
    };
    // The validation a run gets (the bounds the CLI and the config share); what passes it
    // must be schedulable without a panic, to its last request.
    // A server CA of no certificate: an https:// URL is then refused at once, rather than
    // after reading the system's roots at every execution.
    let ca = Some("no certificate");
    let Ok(spec) = meshload_loadgen::rest::spec(&params, &Default::default(), ca) else {
        return;
    };
    let c = spec.connections;
    assert!((1..=meshload_config::limits::MAX_CONNECTIONS as usize).contains(&c));
    if let Some(qps) = spec.qps {
        assert!(meshload_config::limits::qps(qps).is_ok(), "{qps}");
        let schedule = meshload_loadgen::schedule::Schedule::new(qps, c, spec.jitter);
        let last = match spec.stop {
            meshload_loadgen::spec::Stop::Requests(n) => n / c as u64,
            meshload_loadgen::spec::Stop::Duration(d) => (d.as_secs_f64() * qps / c as f64) as u64,
            meshload_loadgen::spec::Stop::Never => 0,
        };
        let _ = (
            schedule.interval(),
            schedule.gap(),
            schedule.due(c - 1, last),
        );
    }
}

/// A `promql test` script, run within fuzzing-sized limits.
pub fn promql_script(data: &[u8]) {
    if let Some(text) = text(data) {
        let limits = ScriptLimits {
            max_points: 100_000,
            timeout: EVAL_TIMEOUT,
        };
        let _ = promqltest::run_script_with(text, &limits);
    }
}
