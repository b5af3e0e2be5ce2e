//! Two runs side by side, with thresholds that make the comparison a CI gate.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::runs::{NodeResources, Run};

/// One compared figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Its key (`p99`, `rate`, `memory:frontend`, ...), as thresholds name it.
    pub key: String,
    /// What it is, for people.
    pub label: String,
    /// In run A (the baseline).
    pub a: Option<f64>,
    /// In run B.
    pub b: Option<f64>,
    /// `b - a`: what B adds (the mesh's cost when A ran without one).
    pub difference: Option<f64>,
}

impl Figure {
    /// A figure of A and B.
    pub fn new(key: &str, label: &str, a: Option<f64>, b: Option<f64>) -> Figure {
        let difference = match (a, b) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        Figure {
            key: key.into(),
            label: label.into(),
            a,
            b,
            difference,
        }
    }

    /// `(b - a) / a` in percent, when both exist and `a` is not zero.
    pub fn change_percent(&self) -> Option<f64> {
        match (self.a, self.b) {
            (Some(a), Some(b)) if a != 0.0 => Some(100.0 * (b - a) / a.abs()),
            _ => None,
        }
    }
}

/// Every figure of two runs.
pub fn figures(a: &Run, b: &Run) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut push = |key: &str, label: &str, f: &dyn Fn(&Run) -> Option<f64>| {
        out.push(Figure::new(key, label, f(a), f(b)));
    };
    push("requested", "requested req/s", &|r| r.requested_qps());
    push("rate", "achieved req/s", &|r| Some(r.fortio.actual_qps));
    push("error_ratio", "error ratio", &|r| Some(r.error_ratio()));
    for p in [50.0, 90.0, 99.0, 99.9] {
        let key = format!("p{p}");
        push(&key, &format!("response time p{p} ms"), &|r| {
            r.response_ms(p)
        });
    }
    for p in [50.0, 99.0] {
        let key = format!("service_p{p}");
        push(&key, &format!("service time p{p} ms"), &|r| r.service_ms(p));
    }
    resource_figures(&mut out, "", "node {} ", (a, b), Run::node_resources);
    resource_figures(
        &mut out,
        "envoy_",
        "node {}'s Envoy ",
        (a, b),
        Run::sidecar_resources,
    );
    out
}

/// One figure of a node's resources.
type ResourceOf = fn(&NodeResources) -> f64;

/// Memory and CPU per node of one kind of container, absolute and per 1,000 achieved
/// req/s (what Istio's performance docs quote for a sidecar).
fn resource_figures(
    out: &mut Vec<Figure>,
    prefix: &str,
    label: &str,
    (a, b): (&Run, &Run),
    of: fn(&Run) -> std::collections::BTreeMap<String, NodeResources>,
) {
    let (ra, rb) = (of(a), of(b));
    let nodes: std::collections::BTreeSet<&String> = ra.keys().chain(rb.keys()).collect();
    let per_krps = |run: &Run, v: f64| {
        let krps = run.fortio.actual_qps / 1000.0;
        (krps > 0.0).then(|| v / krps)
    };
    let kinds: [(&str, &str, ResourceOf); 2] = [
        ("memory", "max memory MiB", |r| r.max_memory_mib),
        ("cpu", "CPU cores", |r| r.cpu_cores),
    ];
    for (key, what, value) in kinds {
        for node in &nodes {
            let name = label.replace("{}", node);
            let (va, vb) = (ra.get(*node).map(value), rb.get(*node).map(value));
            out.push(Figure::new(
                &format!("{prefix}{key}:{node}"),
                &format!("{name}{what}"),
                va,
                vb,
            ));
            if !prefix.is_empty() {
                out.push(Figure::new(
                    &format!("{prefix}{key}_per_krps:{node}"),
                    &format!("{name}{what} per 1,000 req/s"),
                    va.and_then(|v| per_krps(a, v)),
                    vb.and_then(|v| per_krps(b, v)),
                ));
            }
        }
    }
}

/// A limit on how much worse run B may be than run A.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The figure (`p99`, `rate`, `error_ratio`, `memory`, `cpu`, ...); `memory` and `cpu`
    /// apply to every node.
    pub key: String,
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
        let key = key.trim().to_string();
        let known = ["rate", "error_ratio", "memory", "cpu"].contains(&key.as_str())
            || key
                .strip_prefix("service_")
                .unwrap_or(&key)
                .strip_prefix('p')
                .is_some_and(|p| p.parse::<f64>().is_ok());
        if !known {
            return Err(format!(
                "unknown threshold {key:?}: use p50, p90, p99, p99.9, service_p50, service_p99, rate, error_ratio, memory or cpu"
            ));
        }
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

/// The thresholds run B passes over run A, as messages naming the figures.
pub fn regressions(figures: &[Figure], thresholds: &[Threshold]) -> Vec<String> {
    let mut out = Vec::new();
    for t in thresholds {
        let matching = figures
            .iter()
            .filter(|f| f.key == t.key || f.key.starts_with(&format!("{}:", t.key)));
        for f in matching {
            let (Some(a), Some(b)) = (f.a, f.b) else {
                continue;
            };
            // Higher is worse for everything but the achieved rate.
            let worse_by = if t.key == "rate" { a - b } else { b - a };
            let allowed = match t.limit {
                Limit::Percent(p) if t.key == "error_ratio" => p / 100.0,
                Limit::Percent(p) => a.abs() * p / 100.0,
                Limit::Absolute(v) => v,
            };
            if worse_by > allowed {
                out.push(format!(
                    "{}: {} -> {} (limit {t})",
                    f.label,
                    fmt_value(a),
                    fmt_value(b)
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
        Figure::new(key, key, Some(a), Some(b))
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
}
