//! Capacity search: the highest request rate that still meets an SLO, and every step on
//! the way (the latency-against-rate curve up to the knee).
//!
//! The method: an exponential ramp from the starting rate (doubling) until a step fails,
//! then bisection between the highest passing and the lowest failing rate, until the
//! two are within the precision or the steps run out. Each step runs several trials,
//! each after a discarded warm-up, and is decided by the median of the trials' figures,
//! so one noisy trial does not decide it. [`Search`] is the pure state machine; [`run`]
//! drives it with any [`TrialRunner`] (the load generator on a URL, or a test of a run).

use std::time::Duration;

use meshload_config::search::SearchSpec;
use meshload_config::slo::Latency;
use meshload_loadgen::FortioResult;
use serde::Serialize;

use crate::stop::StopSignal;

/// What one trial measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trial {
    /// The rate asked for, req/s.
    pub requested_qps: f64,
    /// The rate achieved over the trial's duration, req/s.
    pub achieved_qps: f64,
    /// Connections used.
    pub connections: u32,
    /// Requests completed.
    pub requests: u64,
    /// Share of failed requests.
    pub error_ratio: f64,
    /// Response-time percentiles (from the due time), `(percentile, ms)`.
    pub response_ms: Vec<(f64, f64)>,
    /// Service-time percentiles, `(percentile, ms)`.
    pub service_ms: Vec<(f64, f64)>,
    /// Each PromQL threshold's value (`None`: no data, or the query failed).
    pub thresholds: Vec<(String, Option<f64>)>,
    /// Where the trial's run was stored, if it was.
    pub run_dir: Option<String>,
    /// The trial was cut short by a stop request.
    pub interrupted: bool,
}

impl Trial {
    /// The figures of a load result (thresholds and run folder are filled in later).
    pub fn of(fortio: &FortioResult, requested_qps: f64, connections: u32) -> Trial {
        let requests: u64 = fortio.ret_codes.values().sum();
        let errors = fortio.error_count();
        let percentiles = |h: &meshload_loadgen::result::HistogramData| {
            h.percentiles
                .iter()
                .flatten()
                .map(|p| (p.percentile, p.value * 1e3))
                .collect()
        };
        Trial {
            requested_qps,
            achieved_qps: fortio.actual_qps,
            connections,
            requests,
            error_ratio: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            response_ms: percentiles(fortio.response_or_service()),
            service_ms: percentiles(&fortio.duration_histogram),
            thresholds: Vec::new(),
            run_dir: None,
            interrupted: fortio.interrupted,
        }
    }

    fn percentile(&self, latency: Latency, p: f64) -> Option<f64> {
        let list = match latency {
            Latency::Response => &self.response_ms,
            Latency::Service => &self.service_ms,
        };
        list.iter()
            .find(|(q, _)| (q - p).abs() < 1e-9)
            .map(|(_, ms)| *ms)
    }
}

/// One bound of a step: the median figure against its limit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// The SLO key or threshold name (`p99_ms`, `error_ratio`, `promql:<name>`).
    pub key: String,
    /// The median over the trials (`None`: no trial had the figure).
    pub value: Option<f64>,
    /// The limit, written as the rule (`<= 50`, `>= 0.99`).
    pub bound: String,
    /// Whether the median meets it.
    pub passed: bool,
}

/// One rate tried, with its trials and verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    /// 1-based.
    pub index: u32,
    /// The rate tried, req/s.
    pub qps: f64,
    /// Its trials.
    pub trials: Vec<Trial>,
    /// Every bound, decided by the median trial.
    pub checks: Vec<Check>,
    /// All checks passed.
    pub passed: bool,
    /// The median response-time p99 of the trials, ms (drawn when the SLO bounds no
    /// percentile).
    pub response_p99_ms: Option<f64>,
}

impl Step {
    /// Decides a step by the median of each figure over its trials.
    pub fn decide(index: u32, qps: f64, trials: Vec<Trial>, spec: &SearchSpec) -> Step {
        let mut checks = Vec::new();
        for bound in &spec.slo.latency {
            let value = median(
                trials
                    .iter()
                    .filter_map(|t| t.percentile(bound.latency, bound.percentile)),
            );
            checks.push(at_most(bound.key(), value, bound.max_ms));
        }
        if let Some(max) = spec.slo.error_ratio {
            let value = median(trials.iter().map(|t| t.error_ratio));
            checks.push(at_most("error_ratio".to_string(), value, max));
        }
        if let Some(min) = spec.slo.min_rate_ratio {
            let value = median(trials.iter().map(|t| t.achieved_qps / t.requested_qps));
            checks.push(at_least("min_rate_ratio".to_string(), value, min));
        }
        for threshold in &spec.thresholds {
            let value = median(trials.iter().filter_map(|t| {
                t.thresholds
                    .iter()
                    .find(|(name, _)| name == &threshold.name)
                    .and_then(|(_, v)| *v)
            }));
            let key = format!("promql:{}", threshold.name);
            if let Some(max) = threshold.max {
                checks.push(at_most(key.clone(), value, max));
            }
            if let Some(min) = threshold.min {
                checks.push(at_least(key, value, min));
            }
        }
        let passed = checks.iter().all(|c| c.passed);
        let response_p99_ms = median(
            trials
                .iter()
                .filter_map(|t| t.percentile(Latency::Response, 99.0)),
        );
        Step {
            index,
            qps,
            trials,
            checks,
            passed,
            response_p99_ms,
        }
    }

    /// The checks that failed, as one line each.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| match c.value {
                Some(v) => format!("{} = {} (needs {})", c.key, round(v), c.bound),
                None => format!("{}: no data (needs {})", c.key, c.bound),
            })
            .collect()
    }

    /// The median of a response-time percentile over the trials, ms.
    pub fn response_ms(&self, p: f64) -> Option<f64> {
        median(
            self.trials
                .iter()
                .filter_map(|t| t.percentile(Latency::Response, p)),
        )
    }

    /// The median achieved rate.
    pub fn achieved_qps(&self) -> Option<f64> {
        median(self.trials.iter().map(|t| t.achieved_qps))
    }
}

fn round(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

fn at_most(key: String, value: Option<f64>, max: f64) -> Check {
    Check {
        key,
        passed: value.is_some_and(|v| v <= max),
        value,
        bound: format!("<= {max}"),
    }
}

fn at_least(key: String, value: Option<f64>, min: f64) -> Check {
    Check {
        key,
        passed: value.is_some_and(|v| v >= min),
        value,
        bound: format!(">= {min}"),
    }
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// How a search ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// The highest passing rate is within the precision of the lowest failing one.
    Found,
    /// The steps ran out before the interval closed: the answer is the highest pass.
    StepsExhausted,
    /// Even the starting rate failed.
    FailsAtStart,
    /// The maximum rate passed: the generator's or the search's limit, not the target's.
    NeverFailed,
    /// A stop request ended the search; the finished steps are kept.
    Interrupted,
}

/// The search's state: the highest pass and lowest failure so far.
#[derive(Debug, Clone)]
pub struct Search {
    spec: SearchSpec,
    pass: Option<f64>,
    fail: Option<f64>,
    steps: u32,
}

impl Search {
    /// A search that has tried nothing.
    pub fn new(spec: SearchSpec) -> Search {
        Search {
            spec,
            pass: None,
            fail: None,
            steps: 0,
        }
    }

    /// The rate to try next; `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        if self.steps >= self.spec.max_steps {
            return None;
        }
        match (self.pass, self.fail) {
            (None, None) => Some(self.spec.start_qps),
            (None, Some(_)) => None,
            (Some(pass), None) if pass >= self.spec.max_qps => None,
            (Some(pass), None) => Some((pass * 2.0).min(self.spec.max_qps)),
            (Some(pass), Some(fail)) if (fail - pass) / pass <= self.spec.precision => None,
            (Some(pass), Some(fail)) => Some((pass + fail) / 2.0),
        }
    }

    /// Records the verdict of a step at `qps`.
    pub fn record(&mut self, qps: f64, passed: bool) {
        self.steps += 1;
        if passed {
            self.pass = Some(self.pass.map_or(qps, |p| p.max(qps)));
        } else {
            self.fail = Some(self.fail.map_or(qps, |f| f.min(qps)));
        }
    }

    /// The interval known now: highest pass, lowest failure.
    pub fn interval(&self) -> (Option<f64>, Option<f64>) {
        (self.pass, self.fail)
    }

    /// How the search ended, once [`Search::next_rate`] says it is over.
    pub fn outcome(&self) -> Outcome {
        match (self.pass, self.fail) {
            (None, _) => Outcome::FailsAtStart,
            (Some(pass), None) if pass >= self.spec.max_qps => Outcome::NeverFailed,
            (Some(pass), Some(fail)) if (fail - pass) / pass <= self.spec.precision => {
                Outcome::Found
            }
            _ => Outcome::StepsExhausted,
        }
    }
}

/// Connections for a rate when the user did not fix them: enough that each one's share
/// of the rate fits in its time per request (taken from the last step's p90 service
/// time, 5 ms before any), four times over, so the generator's closed loops are never
/// the bottleneck; at most one per request per second, at least 2.
pub fn connections_for(qps: f64, fixed: Option<u32>, service_p90: Option<Duration>) -> u32 {
    if let Some(c) = fixed {
        return c;
    }
    let per_request = service_p90
        .unwrap_or(Duration::from_millis(5))
        .max(Duration::from_micros(100))
        .as_secs_f64();
    let wanted = (qps * per_request * 4.0).ceil();
    wanted.clamp(2.0, 4096.0).min(qps.max(1.0).ceil()).max(1.0) as u32
}

/// What one trial is asked to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialPlan {
    /// 1-based step.
    pub step: u32,
    /// 1-based trial of the step.
    pub trial: u32,
    /// The rate, req/s.
    pub qps: f64,
    /// Connections.
    pub connections: u32,
    /// Discarded load before the trial.
    pub warmup: Duration,
    /// Measured load.
    pub duration: Duration,
}

/// Runs trials: the load generator on a URL, or a test of a run on its topology.
#[allow(async_fn_in_trait)]
pub trait TrialRunner {
    /// Runs the warm-up and the trial; `Ok(None)` when a stop request ended it before it
    /// had any result.
    async fn run_trial(&mut self, plan: TrialPlan) -> Result<Option<Trial>, crate::BoxError>;
}

/// The search's result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    /// The highest rate that met every bound.
    pub max_rate: Option<f64>,
    /// The lowest rate that failed, if any.
    pub failed_at: Option<f64>,
    /// The bounds missed at the lowest failing rate, first one first.
    pub first_failure: Vec<String>,
    /// How the search ended.
    pub outcome: Outcome,
    /// Every step, in the order run.
    pub steps: Vec<Step>,
}

impl SearchReport {
    /// One line on what the search found.
    pub fn verdict(&self) -> String {
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.1} req/s"));
        let why = self.first_failure.first().cloned().unwrap_or_default();
        match self.outcome {
            Outcome::Found => format!(
                "capacity {} (fails at {}: {why})",
                rate(self.max_rate),
                rate(self.failed_at)
            ),
            Outcome::StepsExhausted => format!(
                "capacity at least {}, below {} (the steps ran out; {why})",
                rate(self.max_rate),
                rate(self.failed_at)
            ),
            Outcome::FailsAtStart => format!(
                "the SLO already fails at the starting rate {} ({why})",
                rate(self.failed_at)
            ),
            Outcome::NeverFailed => format!(
                "the SLO held up to the maximum rate {}: the load generator or --max-qps, not the target, was the limit",
                rate(self.max_rate)
            ),
            Outcome::Interrupted => format!(
                "interrupted after {} steps; highest pass so far {}",
                self.steps.len(),
                rate(self.max_rate)
            ),
        }
    }
}

/// The search as one JSON document: what `--json` prints and `search-<id>.json` keeps.
pub fn document(
    test_name: &str,
    target: &str,
    mesh: &str,
    search_id: &str,
    spec: &SearchSpec,
    report: &SearchReport,
) -> serde_json::Value {
    let slo: serde_json::Map<String, serde_json::Value> = spec
        .slo
        .entries()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    let thresholds: Vec<serde_json::Value> = spec
        .thresholds
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "query": t.query, "max": t.max, "min": t.min}))
        .collect();
    serde_json::json!({
        "search_id": search_id,
        "test_name": test_name,
        "target": target,
        "mesh": mesh,
        "slo": slo,
        "promql": thresholds,
        "method": {
            "start_qps": spec.start_qps,
            "max_qps": spec.max_qps,
            "precision": spec.precision,
            "max_steps": spec.max_steps,
            "trials": spec.trials,
            "trial_duration": humantime::format_duration(spec.trial_duration).to_string(),
            "warmup": humantime::format_duration(spec.warmup).to_string(),
            "connections": spec.connections,
        },
        "max_rate": report.max_rate,
        "failed_at": report.failed_at,
        "first_failure": report.first_failure,
        "outcome": report.outcome,
        "verdict": report.verdict(),
        "steps": report.steps,
    })
}

/// Writes a search's document as `<store>/<test_name>/search-<id>.json` (in the local
/// folder, or an S3 store's spool) and says where.
pub fn write_document(
    store: &meshload_store::ResultStore,
    test_name: &str,
    search_id: &str,
    document: &serde_json::Value,
) -> std::io::Result<std::path::PathBuf> {
    let dir = store.local().root().join(test_name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("search-{search_id}.json"));
    let mut text = serde_json::to_string_pretty(document).expect("JSON values serialize");
    text.push('\n');
    meshload_store::write_atomically(&path, text.as_bytes()).map_err(std::io::Error::other)?;
    Ok(path)
}

/// The trials of one step (`plan` is its first), each reported to `progress`; `None` when
/// the search was stopped meanwhile.
async fn run_trials(
    spec: &SearchSpec,
    plan: TrialPlan,
    runner: &mut impl TrialRunner,
    stop: &StopSignal,
    progress: &dyn Fn(&str),
) -> Result<Option<Vec<Trial>>, crate::BoxError> {
    let mut trials = Vec::new();
    for trial in 1..=spec.trials {
        match runner.run_trial(TrialPlan { trial, ..plan }).await? {
            Some(t) if !t.interrupted && !stop.is_stopped() => {
                progress(&format!(
                    "  trial {trial}/{}: {:.1} req/s achieved, p99 {} ms, errors {:.4}",
                    spec.trials,
                    t.achieved_qps,
                    t.percentile(Latency::Response, 99.0)
                        .map_or("-".to_string(), |v| format!("{v:.3}")),
                    t.error_ratio
                ));
                trials.push(t);
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(trials))
}

/// Runs the search with `runner`: a rate per step, from the search's bracketing, decided
/// by its trials; `progress` gets one line per event.
pub async fn run(
    spec: &SearchSpec,
    runner: &mut impl TrialRunner,
    stop: &StopSignal,
    progress: &dyn Fn(&str),
) -> Result<SearchReport, crate::BoxError> {
    let mut search = Search::new(spec.clone());
    let mut steps: Vec<Step> = Vec::new();
    let mut service_p90: Option<Duration> = None;
    let mut interrupted = false;
    while let Some(qps) = search.next_rate() {
        let index = steps.len() as u32 + 1;
        let connections = connections_for(qps, spec.connections, service_p90);
        let (pass, fail) = search.interval();
        let shown = |r: Option<f64>| r.map_or("?".to_string(), |r| format!("{r:.1}"));
        progress(&format!(
            "step {index}: {qps:.1} req/s, {connections} connections (interval: pass {} .. fail {})",
            shown(pass),
            shown(fail)
        ));
        let plan = TrialPlan {
            step: index,
            trial: 1,
            qps,
            connections,
            warmup: spec.warmup,
            duration: spec.trial_duration,
        };
        let Some(trials) = run_trials(spec, plan, runner, stop, progress).await? else {
            interrupted = true;
            break;
        };
        let step = Step::decide(index, qps, trials, spec);
        service_p90 = median(
            step.trials
                .iter()
                .filter_map(|t| t.percentile(Latency::Service, 90.0)),
        )
        .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3));
        progress(&format!(
            "  step {index}: {}",
            if step.passed {
                "pass".to_string()
            } else {
                format!("fail: {}", step.failures().join("; "))
            }
        ));
        search.record(qps, step.passed);
        steps.push(step);
    }
    let (pass, fail) = search.interval();
    let first_failure = fail
        .and_then(|f| steps.iter().find(|s| s.qps == f))
        .map(Step::failures)
        .unwrap_or_default();
    Ok(SearchReport {
        max_rate: pass,
        failed_at: fail,
        first_failure,
        outcome: if interrupted {
            Outcome::Interrupted
        } else {
            search.outcome()
        },
        steps,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> SearchSpec {
        SearchSpec {
            start_qps: 100.0,
            max_qps: 100_000.0,
            precision: 0.02,
            ..SearchSpec::default()
        }
    }

    /// Runs the state machine against a target that passes up to `capacity`.
    fn find(capacity: f64, spec: SearchSpec) -> (Search, Vec<f64>) {
        let mut search = Search::new(spec);
        let mut tried = Vec::new();
        while let Some(q) = search.next_rate() {
            tried.push(q);
            search.record(q, q <= capacity);
        }
        (search, tried)
    }

    #[test]
    fn ramps_then_bisects_to_within_the_precision() {
        let (search, tried) = find(1_234.0, spec());
        assert_eq!(&tried[..5], &[100.0, 200.0, 400.0, 800.0, 1_600.0]);
        assert_eq!(search.outcome(), Outcome::Found);
        let (pass, fail) = search.interval();
        let (pass, fail) = (pass.unwrap(), fail.unwrap());
        assert!(pass <= 1_234.0 && fail > 1_234.0);
        assert!((fail - pass) / pass <= 0.02);
        assert!(tried.len() <= 12, "{tried:?}");
    }

    #[test]
    fn a_failing_start_and_a_target_that_never_fails_say_so() {
        let (search, tried) = find(50.0, spec());
        assert_eq!(
            (search.outcome(), tried),
            (Outcome::FailsAtStart, vec![100.0])
        );
        let (search, tried) = find(
            f64::MAX,
            SearchSpec {
                max_qps: 500.0,
                ..spec()
            },
        );
        assert_eq!(search.outcome(), Outcome::NeverFailed);
        assert_eq!(tried, vec![100.0, 200.0, 400.0, 500.0]);
    }

    #[test]
    fn the_steps_run_out() {
        let (search, tried) = find(
            1_234.0,
            SearchSpec {
                max_steps: 6,
                ..spec()
            },
        );
        assert_eq!(tried.len(), 6);
        assert_eq!(search.outcome(), Outcome::StepsExhausted);
    }

    fn trial(p99_ms: f64, errors: f64, achieved: f64) -> Trial {
        Trial {
            requested_qps: 1_000.0,
            achieved_qps: achieved,
            connections: 4,
            requests: 1_000,
            error_ratio: errors,
            response_ms: vec![(50.0, p99_ms / 2.0), (99.0, p99_ms)],
            service_ms: vec![(99.0, p99_ms)],
            thresholds: vec![("cpu".to_string(), Some(p99_ms / 100.0))],
            run_dir: None,
            interrupted: false,
        }
    }

    #[test]
    fn a_noisy_trial_does_not_decide_a_step() {
        let spec = SearchSpec {
            slo: "p99_ms=10,error_ratio=0.01".parse().unwrap(),
            ..spec()
        };
        // One trial far over the bound, two under: the median passes.
        let step = Step::decide(
            1,
            1_000.0,
            vec![
                trial(5.0, 0.0, 1_000.0),
                trial(80.0, 0.5, 1_000.0),
                trial(6.0, 0.0, 1_000.0),
            ],
            &spec,
        );
        assert!(step.passed, "{:?}", step.failures());
        // Two over: it fails, and says by how much.
        let step = Step::decide(
            1,
            1_000.0,
            vec![
                trial(5.0, 0.0, 1_000.0),
                trial(80.0, 0.0, 1_000.0),
                trial(60.0, 0.0, 1_000.0),
            ],
            &spec,
        );
        assert!(!step.passed);
        assert_eq!(
            step.failures(),
            vec!["p99_ms = 60.0000 (needs <= 10)".to_string()]
        );
    }

    #[test]
    fn rate_error_and_promql_bounds_each_fail_a_step() {
        let mut spec = SearchSpec {
            slo: "error_ratio=0.01,min_rate_ratio=0.99".parse().unwrap(),
            ..spec()
        };
        spec.thresholds.push(meshload_config::search::Threshold {
            name: "cpu".to_string(),
            query: "x".to_string(),
            max: Some(0.5),
            min: None,
        });
        let decide = |t: Trial| Step::decide(1, 1_000.0, vec![t], &spec);
        assert!(decide(trial(10.0, 0.0, 1_000.0)).passed);
        assert_eq!(
            decide(trial(10.0, 0.02, 1_000.0)).failures()[0]
                .split(' ')
                .next(),
            Some("error_ratio")
        );
        assert_eq!(
            decide(trial(10.0, 0.0, 900.0)).failures()[0]
                .split(' ')
                .next(),
            Some("min_rate_ratio")
        );
        assert_eq!(
            decide(trial(90.0, 0.0, 1_000.0)).failures()[0]
                .split(' ')
                .next(),
            Some("promql:cpu")
        );
        let mut no_data = trial(10.0, 0.0, 1_000.0);
        no_data.thresholds[0].1 = None;
        assert!(decide(no_data).failures()[0].contains("no data"));
    }

    #[test]
    fn connections_scale_with_the_rate_unless_fixed() {
        assert_eq!(connections_for(1_000.0, Some(7), None), 7);
        assert_eq!(connections_for(100.0, None, None), 2);
        assert_eq!(connections_for(10_000.0, None, None), 200);
        assert_eq!(
            connections_for(10_000.0, None, Some(Duration::from_micros(50))),
            4
        );
        assert_eq!(connections_for(1.0, None, None), 1);
        assert_eq!(connections_for(1e9, None, None), 4096);
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
