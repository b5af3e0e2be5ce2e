//! A capacity search: how a test's rate is ramped and bisected to find the highest rate
//! that meets its SLO (`"search"` in a load test, or `meshload search URL`).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::reader::{Reader, join};
use crate::slo::Slo;

/// A PromQL threshold checked over each trial's window.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// A name for tables and files.
    pub name: String,
    /// The query, evaluated as a range query over the trial.
    pub query: String,
    /// The largest value any series may reach at any step (set this or `min`).
    pub max: Option<f64>,
    /// The smallest value every series must keep at every step (set this or `max`).
    pub min: Option<f64>,
}

/// How a search runs; defaults in [`SearchSpec::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpec {
    /// The objectives every step must meet (the test's `slo` when the block has none).
    pub slo: Slo,
    /// PromQL thresholds.
    pub thresholds: Vec<Threshold>,
    /// The first rate tried, req/s.
    pub start_qps: f64,
    /// The highest rate tried, req/s.
    pub max_qps: f64,
    /// The search stops when the highest pass and the lowest failure are this close
    /// (relative to the pass).
    pub precision: f64,
    /// The search stops after this many steps.
    pub max_steps: u32,
    /// Trials per step; the step is decided by their median.
    pub trials: u32,
    /// Length of one measured trial.
    pub trial_duration: Duration,
    /// Load before each trial, discarded.
    pub warmup: Duration,
    /// Connections; `None` scales them with the rate.
    pub connections: Option<u32>,
}

impl Default for SearchSpec {
    fn default() -> Self {
        SearchSpec {
            slo: Slo {
                min_rate_ratio: Some(DEFAULT_MIN_RATE_RATIO),
                ..Slo::default()
            },
            thresholds: Vec::new(),
            start_qps: 100.0,
            max_qps: 100_000.0,
            precision: 0.02,
            max_steps: 20,
            trials: 3,
            trial_duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            connections: None,
        }
    }
}

/// A step fails when it achieves less than this share of the requested rate, unless the
/// SLO says otherwise: a generator or target that falls behind has reached its limit.
pub const DEFAULT_MIN_RATE_RATIO: f64 = 0.99;

/// Keys of a `search` block.
const KEYS: [&str; 10] = [
    "slo",
    "promql",
    "start_qps",
    "max_qps",
    "precision",
    "max_steps",
    "trials",
    "trial_duration",
    "warmup",
    "c",
];

impl SearchSpec {
    /// Checks what the spec's numbers allow; each problem names its key.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.start_qps == 0.0 {
            out.push(("start_qps", "0 is not a positive rate".to_string()));
        }
        for (key, q) in [("start_qps", self.start_qps), ("max_qps", self.max_qps)] {
            if let Err(problem) = crate::limits::qps(q) {
                out.push((key, problem));
            }
        }
        if self.max_qps < self.start_qps {
            out.push((
                "max_qps",
                format!("{} is below start_qps {}", self.max_qps, self.start_qps),
            ));
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            out.push((
                "precision",
                format!("{} is not between 0 and 1", self.precision),
            ));
        }
        if self.trials == 0 {
            out.push(("trials", "0 trials cannot decide a step".to_string()));
        }
        if self.max_steps == 0 {
            out.push(("max_steps", "0 steps cannot search".to_string()));
        }
        if self.trial_duration < Duration::from_secs(1) {
            // Each trial is a run, named by its start second.
            out.push(("trial_duration", "a trial lasts at least 1s".to_string()));
        }
        out
    }
}

/// Reads a test's `search` block; `test_slo` applies where the block has no `slo`.
pub(crate) fn parse(path: &str, v: &Value, test_slo: &Slo, r: &mut Reader) -> Option<SearchSpec> {
    let o: &Map<String, Value> = r.object(path, v)?;
    r.unknown_keys(path, o, &KEYS);
    let key = |k: &str| join(path, k);
    let mut spec = SearchSpec::default();
    let slo = match o.get("slo") {
        Some(v) => crate::slo::parse(&key("slo"), v, r),
        None => test_slo.clone(),
    };
    if slo.min_rate_ratio.is_none() {
        spec.slo = Slo {
            min_rate_ratio: Some(DEFAULT_MIN_RATE_RATIO),
            ..slo
        };
    } else {
        spec.slo = slo;
    }
    if let Some(v) = o.get("promql") {
        spec.thresholds = thresholds(&key("promql"), v, r);
    }
    let mut number = |k: &str, into: &mut f64| {
        if let Some(n) = o.get(k).and_then(|v| r.number(&key(k), v)) {
            *into = n;
        }
    };
    number("start_qps", &mut spec.start_qps);
    number("max_qps", &mut spec.max_qps);
    number("precision", &mut spec.precision);
    let mut integer = |k: &str, into: &mut u32| {
        if let Some(n) = o.get(k).and_then(|v| r.integer(&key(k), v, 1, 10_000)) {
            *into = n as u32;
        }
    };
    integer("max_steps", &mut spec.max_steps);
    integer("trials", &mut spec.trials);
    if let Some(v) = o.get("c") {
        spec.connections = r
            .integer(&key("c"), v, 1, crate::limits::MAX_CONNECTIONS)
            .map(|c| c as u32);
    }
    let mut duration = |k: &str, into: &mut Duration| {
        if let Some(d) = o.get(k).and_then(|v| r.duration(&key(k), v)) {
            *into = d;
        }
    };
    duration("trial_duration", &mut spec.trial_duration);
    duration("warmup", &mut spec.warmup);
    for (k, problem) in spec.problems() {
        r.error(&key(k), problem);
    }
    Some(spec)
}

/// `"promql": [{"name": "...", "query": "...", "max": 1}]`.
fn thresholds(path: &str, v: &Value, r: &mut Reader) -> Vec<Threshold> {
    let Some(items) = v.as_array() else {
        r.error(
            path,
            format!("{} is not a list of thresholds", crate::reader::short(v)),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(o) = r.object(&path, item) else {
            continue;
        };
        r.unknown_keys(&path, o, &["name", "query", "max", "min"]);
        let key = |k: &str| join(&path, k);
        let name = match o.get("name") {
            Some(v) => r.string(&key("name"), v).map(str::to_string),
            None => Some(format!("promql_{i}")),
        };
        let query = match o.get("query") {
            Some(v) => r.string(&key("query"), v).map(str::to_string),
            None => {
                r.error(&key("query"), "missing");
                None
            }
        };
        if let Some(q) = &query
            && let Err(e) = crate::query_limits::parse(q)
        {
            let shown = crate::reader::short(&Value::from(q.as_str()));
            r.error(&key("query"), format!("{shown} does not parse: {e}"));
        }
        let max = o.get("max").and_then(|v| r.number(&key("max"), v));
        let min = o.get("min").and_then(|v| r.number(&key("min"), v));
        if max.is_none() == min.is_none() {
            r.error(&path, "a threshold has max or min (one of them)");
        }
        if let (Some(name), Some(query)) = (name, query) {
            out.push(Threshold {
                name,
                query,
                max,
                min,
            });
        }
    }
    out
}
