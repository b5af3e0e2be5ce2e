//! What the mesh costs, after `meshload run --mesh none,envoy`: for every test, each
//! arm's runs against the first arm's, read back from the store with the report crate
//! (the figures `meshload compare` gives): B - A per figure with an interval and a
//! verdict, or `not comparable` with the reason; and, over tests at several rates, how
//! memory and CPU grow with the rate.

use std::io::Write;
use std::path::PathBuf;

use meshload_report::compare::{self, Comparison, Scaling, fmt_value};
use meshload_report::runs::{self, Run};
use meshload_runner::TestSummary;
use meshload_store::RunRef;
use serde::Serialize;

use crate::table::Table;

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

fn run_ref(summary: &TestSummary) -> Option<RunRef> {
    let dir = PathBuf::from(&summary.run_dir);
    let id = dir.file_name()?.to_string_lossy().into_owned();
    dir.is_dir().then(|| RunRef {
        test_name: summary.test_name.clone(),
        id,
        dir,
    })
}

/// The runs of `tests` read back; a run that cannot be read here (an S3 store) is left
/// out, with a warning on stderr.
pub fn load(tests: &[TestSummary]) -> Vec<Run> {
    let mut out = Vec::new();
    for t in tests {
        match run_ref(t).and_then(|r| runs::load(&r).ok()) {
            Some(run) => out.push(run),
            None => eprintln!(
                "meshload: cannot read {} back for its mesh cost; `meshload compare` it from its store",
                t.run_dir
            ),
        }
    }
    out
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

/// A value for a table: `-` when there is none.
fn cell(v: Option<f64>) -> String {
    v.map_or("-".to_string(), fmt_value)
}

/// A signed difference for a table.
fn signed(v: Option<f64>) -> String {
    match v {
        Some(v) if v > 0.0 => format!("+{}", fmt_value(v)),
        other => cell(other),
    }
}

/// The cost of each test and arm: a line on how it was estimated, then every figure
/// (A, B, B - A, its interval and verdict); or why the arms are not comparable.
pub fn print(out: &mut impl Write, costs: &[MeshCost]) -> std::io::Result<()> {
    for c in costs {
        let cmp = &c.comparison;
        writeln!(out)?;
        writeln!(
            out,
            "What the mesh costs: {} {} against {} ({} and {} runs; {})",
            c.test_name, c.mesh, c.baseline, cmp.runs[1], cmp.runs[0], cmp.method
        )?;
        if let Some(reason) = &cmp.reason {
            writeln!(out, "NOT COMPARABLE: {reason}")?;
            if let Some(s) = &cmp.suggestion {
                writeln!(out, "To measure instead: {s}")?;
            }
            continue;
        }
        let mut table = Table::new(&[
            "figure",
            &c.baseline,
            &c.mesh,
            "B - A",
            "interval",
            "conf.",
            "verdict",
        ])
        .left(&[6]);
        for f in &cmp.figures {
            let interval = f.ci95.map_or("-".to_string(), |[l, h]| {
                format!("[{}, {}]", signed(Some(l)), signed(Some(h)))
            });
            let confidence = f
                .confidence
                .map_or("-".to_string(), |c| format!("{:.1}%", c * 100.0));
            table.row(vec![
                f.label.clone(),
                cell(f.a),
                cell(f.b),
                signed(f.estimate),
                interval,
                confidence,
                f.verdict.to_string(),
            ]);
        }
        table.write(out)?;
        if let Some(why) = cmp.figures.iter().find_map(|f| f.reason.as_ref()) {
            writeln!(out, "({why})")?;
        }
    }
    Ok(())
}

/// How memory and CPU grow with the rate, per arm, where runs at several rates held their
/// load.
pub fn print_scaling(out: &mut impl Write, scaling: &[Scaling]) -> std::io::Result<()> {
    if scaling.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "How cost grows with rate (least squares over the runs that held their load; memory is not divided by rate)"
    )?;
    let mut table = Table::new(&[
        "arm",
        "tests",
        "figure",
        "rates req/s",
        "runs",
        "at no load",
        "per further 1,000 req/s",
    ])
    .left(&[1, 2, 3]);
    for s in scaling {
        let rates: Vec<String> = s.rates.iter().map(|r| fmt_value(*r)).collect();
        table.row(vec![
            s.arm.clone(),
            s.tests.join(", "),
            s.label.clone(),
            rates.join(", "),
            s.runs.to_string(),
            fmt_value(s.intercept),
            signed(Some(s.slope_per_krps)),
        ]);
    }
    table.write(out)
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
pub fn capacity_costs(searches: &[meshload_runner::run::SearchRun]) -> Vec<CapacityCost> {
    let Some(first_mesh) = searches.first().map(|s| s.mesh.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for base in searches.iter().filter(|s| s.mesh == first_mesh) {
        for other in searches
            .iter()
            .filter(|s| s.test_name == base.test_name && s.mesh != first_mesh)
        {
            let (a, b) = (base.report.max_rate, other.report.max_rate);
            out.push(CapacityCost {
                test_name: base.test_name.clone(),
                baseline: first_mesh.clone(),
                mesh: other.mesh.clone(),
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

/// One line per mesh and searched test: "the mesh costs N% of capacity at this SLO".
pub fn print_capacity(out: &mut impl Write, costs: &[CapacityCost]) -> std::io::Result<()> {
    for c in costs {
        let rate = |r: Option<f64>| r.map_or("none found".to_string(), |r| format!("{r:.1} req/s"));
        let cost = c
            .cost_percent
            .map_or("an unknown share".to_string(), |p| format!("{p:.1}%"));
        writeln!(
            out,
            "{}: capacity {} under {}, {} under {}: {} costs {cost} of capacity at this SLO",
            c.test_name,
            rate(c.baseline_rate),
            c.baseline,
            rate(c.rate),
            c.mesh,
            c.mesh
        )?;
    }
    Ok(())
}
