//! What the mesh costs, after `meshload run --mesh none,envoy`: for every test, each
//! arm's runs against the first arm's (the figures `meshload compare` gives: B - A per
//! figure with an interval and a verdict, or `not comparable` with the reason); and for
//! every capacity search, each mesh's capacity against the first mesh's.

use serde::Serialize;

use crate::compare::{self, Comparison};
use crate::runs::Run;

/// One test under one arm, against the same test under the baseline arm.
#[derive(Debug, Serialize)]
pub struct MeshCost {
    /// The test.
    pub test_name: String,
    /// The baseline's arm (the first one run).
    pub baseline: String,
    /// This arm.
    pub mesh: String,
    /// The comparison: method, comparable, reason, suggestion and every figure.
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// Every test's cost under each arm but the first; empty with one arm.
pub fn costs(runs: &[Run]) -> Vec<MeshCost> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.run.test_name.as_str()) {
            names.push(&r.run.test_name);
        }
    }
    for name in names {
        let of_test: Vec<&Run> = runs.iter().filter(|r| r.run.test_name == name).collect();
        let arms = compare::arms_of(&of_test);
        let baseline = arms.first().map(|a| a.arm.clone()).unwrap_or_default();
        for (mesh, comparison) in compare::against_baseline(&arms) {
            out.push(MeshCost {
                test_name: name.to_string(),
                baseline: baseline.clone(),
                mesh,
                comparison,
            });
        }
    }
    out
}

/// What one capacity search found: the highest rate that met its objectives.
#[derive(Debug, Clone, Copy)]
pub struct Capacity<'a> {
    /// The test searched.
    pub test_name: &'a str,
    /// The mesh (arm) it ran under.
    pub mesh: &'a str,
    /// Its capacity, req/s; `None` when no rate met the objectives.
    pub max_rate: Option<f64>,
}

/// What a mesh costs of one test's capacity: its search against the first mesh's.
#[derive(Debug, Serialize)]
pub struct CapacityCost {
    /// The test searched.
    pub test_name: String,
    /// The baseline's mesh (the first one searched).
    pub baseline: String,
    /// This search's mesh.
    pub mesh: String,
    /// The baseline's capacity, req/s.
    pub baseline_rate: Option<f64>,
    /// This mesh's capacity, req/s.
    pub rate: Option<f64>,
    /// The share of the baseline's capacity this mesh takes off, percent.
    pub cost_percent: Option<f64>,
}

/// For every searched test, each mesh's capacity against the first mesh's; empty with
/// one mesh.
pub fn capacity_costs(searches: &[Capacity<'_>]) -> Vec<CapacityCost> {
    let Some(first_mesh) = searches.first().map(|s| s.mesh) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for base in searches.iter().filter(|s| s.mesh == first_mesh) {
        for other in searches
            .iter()
            .filter(|s| s.test_name == base.test_name && s.mesh != first_mesh)
        {
            let (a, b) = (base.max_rate, other.max_rate);
            out.push(CapacityCost {
                test_name: base.test_name.to_string(),
                baseline: first_mesh.to_string(),
                mesh: other.mesh.to_string(),
                baseline_rate: a,
                rate: b,
                cost_percent: a
                    .zip(b)
                    .filter(|(a, _)| *a > 0.0)
                    .map(|(a, b)| (a - b) / a * 100.0),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_costs_are_against_the_first_mesh() {
        let found = |test_name, mesh, max_rate| Capacity {
            test_name,
            mesh,
            max_rate,
        };
        let searches = [
            found("a", "none", Some(1000.0)),
            found("b", "none", Some(0.0)),
            found("a", "envoy", Some(750.0)),
            found("b", "envoy", Some(10.0)),
            found("a", "linkerd", None),
        ];
        let found = capacity_costs(&searches);
        let shown: Vec<(&str, &str, Option<f64>)> = found
            .iter()
            .map(|c| (c.test_name.as_str(), c.mesh.as_str(), c.cost_percent))
            .collect();
        assert_eq!(
            shown,
            [
                ("a", "envoy", Some(25.0)),
                ("a", "linkerd", None),
                ("b", "envoy", None),
            ],
            "a share of nothing is not given"
        );
        assert!(capacity_costs(&searches[..2]).is_empty(), "one mesh");
        assert!(costs(&[]).is_empty());
    }
}
