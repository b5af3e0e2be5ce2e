//! Two series of runs side by side: one run each, or every repeat of a test under two
//! arms. Each figure gets B - A with a distribution-free interval and a verdict (see
//! `meshload_stats`), unless the two did not hold the same load or the host was
//! saturated: then every figure is `not comparable`, with the reason. Thresholds make
//! the comparison a CI gate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use meshload_stats::{Estimate, Verdict};
use serde::Serialize;

use crate::runs::Run;

/// The key prefix of a sidecar's figures (a node's Envoys).
const SIDECAR: &str = "envoy_";
/// The prefix of a shared proxy's figures (`shared_cpu:ztunnel`).
const SHARED: &str = "shared_";
/// The prefix of the figures of all the mesh's proxies together (`mesh_cpu`).
const MESH: &str = "mesh_";
/// The prefixes of proxies' figures: a proxy that only one arm has costs nothing in the
/// other.
const PROXIES: [&str; 3] = [SIDECAR, SHARED, MESH];

/// A proxy figure's measure without its prefix (`cpu:db` of `envoy_cpu:db`).
fn proxy_measure(key: &str) -> Option<&str> {
    PROXIES.iter().find_map(|p| key.strip_prefix(p))
}

/// One compared figure: the contract of `run --json` (`mesh_cost[].figures[]`) and
/// `compare --json` (`figures[]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Its key (`p99`, `rate`, `memory:frontend`, ...), as thresholds name it.
    pub name: String,
    /// What it is, for people, with its unit.
    pub label: String,
    /// A's median over its repeats.
    pub a: Option<f64>,
    /// B's median over its repeats.
    pub b: Option<f64>,
    /// The estimate of B - A (the median of the paired differences, or the
    /// Hodges-Lehmann shift for series run apart).
    pub estimate: Option<f64>,
    /// The interval around it, `[low, high]`; `null` with too few repeats.
    pub ci95: Option<[f64; 2]>,
    /// The interval's exact confidence (0.9375 with 5 paired repeats, 0.95 or more from 6).
    pub confidence: Option<f64>,
    /// Runs per arm that went into it.
    pub repeats: usize,
    /// `higher`, `lower`, `no difference detected`, `no interval` or `not comparable`.
    pub verdict: Verdict,
    /// Whether both arms held the same load on an unsaturated host.
    pub comparable: bool,
    /// Why there is no verdict, in words (`null` when there is one).
    pub reason: Option<String>,
}

impl Figure {
    /// The estimate of B - A over A's median, in percent, when both exist and A's is not
    /// zero (so that it has the estimate's sign).
    pub fn change_percent(&self) -> Option<f64> {
        match (self.a, self.estimate) {
            (Some(a), Some(d)) if a != 0.0 => Some(100.0 * d / a.abs()),
            _ => None,
        }
    }
}

/// Two series compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// How B - A was estimated.
    pub method: &'static str,
    /// Runs in A and in B.
    pub runs: [usize; 2],
    /// Whether both held the same load on an unsaturated host.
    pub comparable: bool,
    /// Why not, in words.
    pub reason: Option<String>,
    /// What can be measured instead, when they are not comparable.
    pub suggestion: Option<String>,
    /// Every figure.
    pub figures: Vec<Figure>,
    /// Why figures may be missing (a run's samples unreadable, or read in part).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How paired series are estimated.
pub const PAIRED: &str = "median of the paired differences (repeat i of B against repeat i of A), sign-test interval on that median";
/// How series run apart are estimated.
pub const UNPAIRED: &str =
    "Hodges-Lehmann shift (median of all differences B - A), Mann-Whitney interval";
/// What to do when an arm did not hold its load.
pub const SUGGESTION: &str = "lower the rate until every arm holds it on this host, or find each arm's capacity with `meshload search` (a test's \"search\" block under --mesh a,b)";
/// What to do when the host alone was saturated.
pub const HOST_SUGGESTION: &str = "give the load generator CPUs of its own (--loadgen-cpus), run fewer processes beside the test, or lower the rate; --max-host-busy and --max-schedule-lag set where a host counts as saturated";

/// Why two series cannot be compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Problems {
    /// Each reason, in words, once.
    pub reasons: Vec<String>,
    /// Whether every reason is the host's (busy, or the generator lagging), none a rate.
    pub host_only: bool,
}

/// The figures of one run: key, label, value; why some may be missing goes to `warnings`.
fn run_values(run: &Run, warnings: &mut Vec<String>) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    let mut push = |key: String, label: String, v: Option<f64>| {
        if let Some(v) = v {
            out.push((key, label, v));
        }
    };
    push(
        Key::Rate.to_string(),
        "achieved req/s".into(),
        Some(run.fortio.actual_qps),
    );
    push(
        Key::ErrorRatio.to_string(),
        "error ratio".into(),
        Some(run.error_ratio()),
    );
    for p in [50.0, 90.0, 99.0, 99.9] {
        push(
            Key::Response(p).to_string(),
            format!("response p{p} ms"),
            run.response_ms(p),
        );
    }
    for p in [50.0, 90.0, 99.0] {
        push(
            Key::Service(p).to_string(),
            format!("service p{p} ms"),
            run.service_ms(p),
        );
    }
    let krps = run.fortio.actual_qps / 1000.0;
    let resources = run.resources();
    warnings.extend(resources.warning);
    for (prefix, of, resources) in [
        ("", "node {}", resources.nodes),
        (SIDECAR, "node {}'s sidecars", resources.sidecars),
        (SHARED, "the {} proxies (shared)", resources.shared),
    ] {
        for (node, r) in resources {
            let what = of.replace("{}", &node);
            push(
                format!("{prefix}{}", Key::Memory.of_node(&node)),
                format!("{what} max memory MiB"),
                Some(r.max_memory_mib),
            );
            push(
                format!("{prefix}{}", Key::Cpu.of_node(&node)),
                format!("{what} CPU cores"),
                Some(r.cpu_cores),
            );
            // CPU scales with the rate, memory does not: only CPU is given per rate.
            if !prefix.is_empty() && krps > 0.0 {
                push(
                    format!("{prefix}cpu_per_krps:{node}"),
                    format!("{what} CPU cores per 1,000 req/s"),
                    Some(r.cpu_cores / krps),
                );
            }
        }
    }
    if let Some(r) = resources.proxies {
        let what = "all the mesh's proxies";
        push(
            format!("{MESH}memory"),
            format!("{what} memory MiB (each one's max, summed)"),
            Some(r.max_memory_mib),
        );
        push(
            format!("{MESH}cpu"),
            format!("{what} CPU cores"),
            Some(r.cpu_cores),
        );
        if krps > 0.0 {
            push(
                format!("{MESH}cpu_per_krps"),
                format!("{what} CPU cores per 1,000 req/s"),
                Some(r.cpu_cores / krps),
            );
        }
    }
    out
}

/// Why `a` and `b` cannot be compared: a run fell behind its requested rate or ran on a
/// saturated host, was interrupted, or the two asked for different rates (or none).
pub fn load_problems(a: &[Run], b: &[Run]) -> Problems {
    let mut out = Vec::new();
    let mut host = Vec::new();
    let rates: BTreeSet<String> = a
        .iter()
        .chain(b)
        .map(|r| r.fortio.requested_qps.clone())
        .collect();
    if rates.len() > 1 {
        let list: Vec<String> = rates.into_iter().collect();
        out.push(format!(
            "the runs asked for different rates ({} req/s)",
            list.join(", ")
        ));
    }
    for run in a.iter().chain(b) {
        let at = format!("{} (repeat {}, {})", run.arm(), run.repeat(), run.name());
        if run.status() != "complete" {
            out.push(format!("{at} is {}", run.status()));
        }
        match run.requested_qps().filter(|q| *q > 0.0) {
            None => out.push(format!(
                "{at} ran at max rate: there is no requested rate to hold both arms to"
            )),
            Some(requested) if run.fortio.actual_qps < run.min_rate_ratio() * requested => {
                out.push(format!(
                    "{at} achieved {:.1} of {} req/s (less than {})",
                    run.fortio.actual_qps,
                    fmt_value(requested),
                    run.min_rate_ratio()
                ));
            }
            Some(_) => {}
        }
        for reason in run.saturation() {
            host.push(format!("{at}: {reason}"));
        }
    }
    let host_only = out.is_empty() && !host.is_empty();
    let mut reasons: Vec<String> = Vec::new();
    for r in out.into_iter().chain(host) {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    Problems { reasons, host_only }
}

/// Every figure of series `a` against series `b`. `paired`: repeat `i` of each ran side
/// by side (the runs are then matched by repeat), else the two ran apart.
pub fn compare(a: &[Run], b: &[Run], paired: bool) -> Comparison {
    let problems = load_problems(a, b);
    let reason = (!problems.reasons.is_empty()).then(|| problems.reasons.join("; "));
    let suggestion = match problems.host_only {
        true => HOST_SUGGESTION,
        false => SUGGESTION,
    };
    // Each run's figures are read once: the resources come from its stored samples.
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut warnings = Vec::new();
    let (va, vb) = (
        values_by_key(a, &mut keys, &mut warnings),
        values_by_key(b, &mut keys, &mut warnings),
    );
    let figures = keys
        .into_iter()
        .map(|(key, label)| {
            // A sidecar that only one arm has costs nothing in the other.
            let absent = |v: &BTreeMap<String, Vec<f64>>, runs: &[Run]| match v.get(&key) {
                Some(v) => v.clone(),
                None if proxy_measure(&key).is_some() => {
                    vec![0.0; runs.len()]
                }
                None => vec![f64::NAN; runs.len()],
            };
            let (xa, xb) = (absent(&va, a), absent(&vb, b));
            figure(key, label, &xa, &xb, paired, reason.as_deref())
        })
        .collect();
    Comparison {
        method: if paired { PAIRED } else { UNPAIRED },
        runs: [a.len(), b.len()],
        comparable: reason.is_none(),
        suggestion: reason.as_ref().map(|_| suggestion.to_string()),
        reason,
        figures,
        warnings,
    }
}

/// Each figure's values over the runs, in run order (NaN where a run lacks it); every key
/// not in `keys` yet is added there with its label, in the order first seen.
fn values_by_key(
    runs: &[Run],
    keys: &mut Vec<(String, String)>,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        for (key, label, v) in run_values(run, warnings) {
            if !keys.iter().any(|(k, _)| *k == key) {
                keys.push((key.clone(), label));
            }
            out.entry(key).or_insert_with(|| vec![f64::NAN; runs.len()])[i] = v;
        }
    }
    out
}

fn figure(
    name: String,
    label: String,
    a: &[f64],
    b: &[f64],
    paired: bool,
    not_comparable: Option<&str>,
) -> Figure {
    let estimate: Option<Estimate> = if paired {
        meshload_stats::paired(a, b)
    } else {
        meshload_stats::shift(a, b)
    };
    let repeats = estimate.as_ref().map_or(0, |e| e.repeats);
    let (verdict, reason) = match (&estimate, not_comparable) {
        (_, Some(why)) => (Verdict::NotComparable, Some(why.to_string())),
        (None, None) => (
            Verdict::NoInterval,
            Some("not measured in both".to_string()),
        ),
        (Some(e), None) => {
            let verdict = e.verdict();
            let needed = match paired {
                true => "5 paired repeats",
                false => "4 runs against 4",
            };
            let why = (verdict == Verdict::NoInterval).then(|| match e.repeats {
                1 => "one run per arm: no interval (repeat to get one)".to_string(),
                n => format!(
                    "{n} runs per arm give no interval at {:.0}% or more: {needed} or more are needed",
                    meshload_stats::MIN_CONFIDENCE * 100.0
                ),
            });
            (verdict, why)
        }
    };
    Figure {
        name,
        label,
        a: meshload_stats::median(a),
        b: meshload_stats::median(b),
        estimate: estimate.as_ref().map(|e| e.estimate),
        ci95: estimate
            .as_ref()
            .and_then(|e| e.interval)
            .map(|i| [i.low, i.high]),
        confidence: estimate
            .as_ref()
            .and_then(|e| e.interval)
            .map(|i| i.confidence),
        repeats,
        verdict,
        comparable: not_comparable.is_none(),
        reason,
    }
}

/// Whether two series ran side by side: every run of one test in one `meshload run` (the
/// same series id), and the same repeats in each.
pub fn are_paired(a: &[Run], b: &[Run]) -> bool {
    let Some(first) = a.first() else {
        return false;
    };
    let one_series = a.iter().chain(b).all(|r| {
        r.series_id().is_some()
            && r.series_id() == first.series_id()
            && r.run.test_name == first.run.test_name
    });
    let repeats = |runs: &[Run]| runs.iter().map(Run::repeat).collect::<Vec<_>>();
    one_series && repeats(a) == repeats(b)
}

/// One arm of a series: its runs in repeat order.
#[derive(Debug, Clone)]
pub struct ArmRuns {
    /// The arm.
    pub arm: String,
    /// Its runs, by repeat.
    pub runs: Vec<Run>,
}

/// The latest series of every test among `runs`, by test name: its arms in the series'
/// order (the baseline first), each with its runs by repeat. A run stored without a
/// series is a series of its own.
pub fn latest_series(runs: &[Run]) -> BTreeMap<String, Vec<ArmRuns>> {
    let mut latest: BTreeMap<String, (String, Vec<&Run>)> = BTreeMap::new();
    for run in runs {
        let id = match run.series_id() {
            Some(id) => id.to_string(),
            None => run.run.id.clone(),
        };
        let entry = latest
            .entry(run.run.test_name.clone())
            .or_insert_with(|| (id.clone(), Vec::new()));
        if id > entry.0 {
            *entry = (id.clone(), Vec::new());
        }
        if id == entry.0 {
            entry.1.push(run);
        }
    }
    latest
        .into_iter()
        .map(|(test, (_, runs))| (test, arms_of(&runs)))
        .collect()
}

/// The runs of one series split by arm, in the series' order of arms, each by repeat.
pub fn arms_of(runs: &[&Run]) -> Vec<ArmRuns> {
    let order = runs.first().map(|r| r.series_arms()).unwrap_or_default();
    let mut arms: Vec<ArmRuns> = Vec::new();
    for run in runs {
        let arm = run.arm();
        match arms.iter_mut().find(|a| a.arm == arm) {
            Some(a) => a.runs.push((*run).clone()),
            None => arms.push(ArmRuns {
                arm,
                runs: vec![(*run).clone()],
            }),
        }
    }
    let rank = |arm: &str| order.iter().position(|a| a == arm).unwrap_or(usize::MAX);
    arms.sort_by_key(|a| rank(&a.arm));
    for a in &mut arms {
        a.runs.sort_by_key(Run::repeat);
    }
    arms
}

/// For a test whose runs under each mesh were made apart (by separate `meshload run`s, or
/// before series were stored): its latest run under each mesh as an arm of one run,
/// `none` first; empty without a `none` run and another mesh.
pub fn latest_by_mesh(runs: &[Run], test: &str) -> Vec<ArmRuns> {
    let mut latest: BTreeMap<String, &Run> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.run.test_name == test) {
        let newer = latest.get(&r.mesh()).is_none_or(|l| l.run.id < r.run.id);
        if newer {
            latest.insert(r.mesh(), r);
        }
    }
    let Some(none) = latest.remove("none") else {
        return Vec::new();
    };
    if latest.is_empty() {
        return Vec::new();
    }
    std::iter::once(("none".to_string(), none))
        .chain(latest)
        .map(|(arm, run)| ArmRuns {
            arm,
            runs: vec![run.clone()],
        })
        .collect()
}

/// What each arm of a series costs against its first arm, paired by repeat.
pub fn against_baseline(arms: &[ArmRuns]) -> Vec<(String, Comparison)> {
    let Some((base, others)) = arms.split_first() else {
        return Vec::new();
    };
    others
        .iter()
        .map(|other| {
            let paired = are_paired(&base.runs, &other.runs);
            (other.arm.clone(), compare(&base.runs, &other.runs, paired))
        })
        .collect()
}

/// How one arm's memory or CPU grows with the rate, over runs at several rates of one
/// load (the same URL and connections).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scaling {
    /// The arm.
    pub arm: String,
    /// The tests whose runs were fitted.
    pub tests: Vec<String>,
    /// The figure (`memory:<node>`, `envoy_cpu:<node>`, ...).
    pub name: String,
    /// What it is, for people.
    pub label: String,
    /// The requested rates of the runs fitted, req/s.
    pub rates: Vec<f64>,
    /// Runs fitted (those that held their load on an unsaturated host).
    pub runs: usize,
    /// The line's value at no load: idle memory in MiB, or idle CPU in cores.
    pub intercept: f64,
    /// How much it grows per further 1,000 achieved req/s (MiB or cores).
    pub slope_per_krps: f64,
}

/// For every arm and load (URL and connections) with runs at two rates or more that held
/// their load on an unsaturated host: a least-squares line through each node's and
/// sidecar's memory and CPU against the achieved rate.
pub fn scaling(runs: &[Run]) -> Vec<Scaling> {
    type Load = (String, String, u64);
    let mut groups: BTreeMap<Load, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        if load_problems(std::slice::from_ref(run), &[])
            .reasons
            .is_empty()
        {
            let key = (run.arm(), run.fortio.url.clone(), run.fortio.num_threads);
            groups.entry(key).or_default().push(run);
        }
    }
    let mut out = Vec::new();
    for ((arm, _, _), runs) in groups {
        let mut rates: Vec<f64> = runs.iter().filter_map(|r| r.requested_qps()).collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        if rates.len() < 2 {
            continue;
        }
        let mut tests: Vec<String> = runs.iter().map(|r| r.run.test_name.clone()).collect();
        tests.sort();
        tests.dedup();
        for ((name, label), points) in resource_points(&runs) {
            if let Some(line) = meshload_stats::Line::fit(&points) {
                out.push(Scaling {
                    arm: arm.clone(),
                    tests: tests.clone(),
                    name,
                    label,
                    rates: rates.clone(),
                    runs: points.len(),
                    intercept: line.intercept,
                    slope_per_krps: line.slope,
                });
            }
        }
    }
    out
}

/// Each memory and CPU figure of `runs` as (achieved thousands of req/s, value) points.
fn resource_points(runs: &[&Run]) -> BTreeMap<(String, String), Vec<(f64, f64)>> {
    let mut points: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for run in runs {
        let krps = run.fortio.actual_qps / 1000.0;
        for (key, label, v) in run_values(run, &mut Vec::new()) {
            let resource = proxy_measure(&key).unwrap_or(&key);
            if Key::Memory.bounds(resource) || Key::Cpu.bounds(resource) {
                points.entry((key, label)).or_default().push((krps, v));
            }
        }
    }
    points
}

/// What a figure measures: the one spelling of its key, in figures and thresholds alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Key {
    /// The achieved rate (`rate`): lower is worse.
    Rate,
    /// The ratio of errors (`error_ratio`): a percent limit on it is in points.
    ErrorRatio,
    /// A percentile of response time in ms (`p99`).
    Response(f64),
    /// A percentile of service time in ms (`service_p99`).
    Service(f64),
    /// A node's peak memory (`memory:<node>`): a threshold on it bounds every node.
    Memory,
    /// A node's CPU (`cpu:<node>`), likewise.
    Cpu,
}

impl Key {
    /// The key of this measure of one node (`memory:frontend`).
    fn of_node(self, node: &str) -> String {
        format!("{self}:{node}")
    }

    /// Whether a figure (by its name) is one this key bounds.
    fn bounds(self, figure: &str) -> bool {
        let key = self.to_string();
        figure == key
            || figure
                .strip_prefix(&key)
                .is_some_and(|r| r.starts_with(':'))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Rate => write!(f, "rate"),
            Key::ErrorRatio => write!(f, "error_ratio"),
            Key::Response(p) => write!(f, "p{p}"),
            Key::Service(p) => write!(f, "service_p{p}"),
            Key::Memory => write!(f, "memory"),
            Key::Cpu => write!(f, "cpu"),
        }
    }
}

impl FromStr for Key {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let percentile = |p: &str| p.parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p));
        let key = match s {
            "rate" => Key::Rate,
            "error_ratio" => Key::ErrorRatio,
            "memory" => Key::Memory,
            "cpu" => Key::Cpu,
            _ => match s.strip_prefix("service_p").or_else(|| s.strip_prefix('p')) {
                Some(p) => match (percentile(p), s.starts_with("service_")) {
                    (Some(p), true) => Key::Service(p),
                    (Some(p), false) => Key::Response(p),
                    (None, _) => return Err(Self::unknown(s)),
                },
                None => return Err(Self::unknown(s)),
            },
        };
        Ok(key)
    }
}

impl Key {
    fn unknown(key: &str) -> String {
        format!(
            "unknown threshold {key:?}: use p50, p90, p99, p99.9, service_p50, service_p99, rate, error_ratio, memory or cpu"
        )
    }
}

/// A limit on how much worse run B may be than run A.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The figure it bounds; `memory` and `cpu` bound every node.
    pub key: Key,
    /// The allowance.
    pub limit: Limit,
}

/// How a threshold is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// A relative change in percent (`10%`); for `error_ratio`, percentage points.
    Percent(f64),
    /// An absolute change in the figure's unit (`5` ms, `0.01` ratio).
    Absolute(f64),
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid threshold {s:?}: expected KEY=VALUE such as p99=10% or error_ratio=0.1%"
            )
        };
        let (key, value) = s.split_once('=').ok_or_else(bad)?;
        let value = value.trim();
        let limit = match value.strip_suffix('%') {
            Some(p) => Limit::Percent(p.trim().parse().map_err(|_| bad())?),
            None => Limit::Absolute(
                value
                    .strip_suffix("ms")
                    .unwrap_or(value)
                    .trim()
                    .parse()
                    .map_err(|_| bad())?,
            ),
        };
        let key = key.trim().parse()?;
        Ok(Threshold { key, limit })
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::Percent(p) => write!(f, "{}={p}%", self.key),
            Limit::Absolute(v) => write!(f, "{}={v}", self.key),
        }
    }
}

/// The thresholds B passes over A, as messages naming the figures: the estimate of B - A
/// is worse than the limit allows and, where there is an interval, the interval lies on
/// the worse side of 0 (a difference that may be noise fails no gate).
pub fn regressions(figures: &[Figure], thresholds: &[Threshold]) -> Vec<String> {
    let mut out = Vec::new();
    for t in thresholds {
        let matching: Vec<&Figure> = figures.iter().filter(|f| t.key.bounds(&f.name)).collect();
        // A bound with nothing to check fails: a gate never passes on a missing figure.
        if matching.is_empty() {
            out.push(format!(
                "{}: no such figure in these runs, so the bound ({t}) cannot be checked (for memory and CPU, are the runs' samples readable?)",
                t.key
            ));
        }
        for f in matching {
            let (Some(a), Some(b), Some(estimate)) = (f.a, f.b, f.estimate) else {
                let side = match (f.a, f.b) {
                    (None, _) => "A",
                    (_, None) => "B",
                    _ => "A and B (no estimate)",
                };
                out.push(format!(
                    "{}: missing in {side}, so the bound ({t}) cannot be checked",
                    f.label
                ));
                continue;
            };
            // Higher is worse for everything but the achieved rate.
            let (worse_by, worse) = match t.key {
                Key::Rate => (-estimate, Verdict::Lower),
                _ => (estimate, Verdict::Higher),
            };
            let maybe_noise = f.ci95.is_some() && f.verdict != worse;
            if maybe_noise {
                continue;
            }
            let allowed = match t.limit {
                Limit::Percent(p) if t.key == Key::ErrorRatio => p / 100.0,
                Limit::Percent(p) => a.abs() * p / 100.0,
                Limit::Absolute(v) => v,
            };
            if worse_by > allowed {
                out.push(format!(
                    "{}: {} -> {}, B - A {} (limit {t})",
                    f.label,
                    fmt_value(a),
                    fmt_value(b),
                    fmt_value(estimate)
                ));
            }
        }
    }
    out
}

/// A figure for tables: up to four decimals, no trailing zeros.
pub fn fmt_value(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(key: &str, a: f64, b: f64) -> Figure {
        figure(key.into(), key.into(), &[a], &[b], true, None)
    }

    #[test]
    fn thresholds_parse() {
        let t: Threshold = "p99=10%".parse().expect("valid");
        assert_eq!(t.limit, Limit::Percent(10.0));
        let t: Threshold = "service_p50=2ms".parse().expect("valid");
        assert_eq!(t.limit, Limit::Absolute(2.0));
        assert!("p99".parse::<Threshold>().is_err());
        assert!("latency=1%".parse::<Threshold>().is_err());
        assert!("p99=ten%".parse::<Threshold>().is_err());
        for bad in ["p101=1%", "service_pfast=1%", "pp99=1%", "cpus=1%"] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
        for key in [
            "p99.9",
            "service_p50",
            "rate",
            "error_ratio",
            "memory",
            "cpu",
        ] {
            assert_eq!(key.parse::<Key>().map(|k| k.to_string()), Ok(key.into()));
        }
    }

    #[test]
    fn regressions_respect_direction_and_units() {
        let figures = [
            fig("p99", 10.0, 10.9),
            fig("rate", 1000.0, 940.0),
            fig("error_ratio", 0.001, 0.0025),
            fig("memory:0", 10.0, 12.0),
            fig("memory:1", 10.0, 10.1),
        ];
        let t = |s: &str| s.parse::<Threshold>().expect("valid");
        assert!(regressions(&figures, &[t("p99=10%")]).is_empty());
        assert_eq!(regressions(&figures, &[t("p99=5%")]).len(), 1);
        assert_eq!(
            regressions(&figures, &[t("rate=5%")]).len(),
            1,
            "a 6% drop in rate"
        );
        assert!(
            regressions(&[fig("rate", 1000.0, 1100.0)], &[t("rate=1%")]).is_empty(),
            "faster is fine"
        );
        assert_eq!(
            regressions(&figures, &[t("error_ratio=0.1%")]).len(),
            1,
            "0.15 points more errors"
        );
        assert_eq!(
            regressions(&figures, &[t("memory=10%")]).len(),
            1,
            "node 0 only"
        );
    }

    #[test]
    fn a_gate_fails_only_on_a_difference_the_interval_finds() {
        let t = |s: &str| s.parse::<Threshold>().expect("valid");
        let series = |a: &[f64], b: &[f64]| figure("p99".into(), "p99".into(), a, b, true, None);
        // Six pairs, every one 2 ms worse: found, and over a 1 ms limit.
        let worse = series(&[10.0; 6], &[12.0, 12.1, 11.9, 12.2, 12.0, 11.8]);
        assert_eq!(worse.verdict, Verdict::Higher);
        assert_eq!(regressions(&[worse], &[t("p99=1")]).len(), 1);
        // The same median estimate, with pairs on both sides of 0: noise, no regression.
        let noisy = series(&[10.0; 6], &[12.0, 7.0, 13.0, 8.0, 12.5, 14.0]);
        assert_eq!(noisy.verdict, Verdict::NoDifference);
        assert!(noisy.estimate.expect("an estimate") > 1.0);
        assert!(regressions(&[noisy], &[t("p99=1")]).is_empty());
    }
}
