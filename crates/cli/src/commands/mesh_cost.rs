//! The tables of what the mesh costs after `meshload run --mesh none,envoy`, computed by
//! [`meshload_report::mesh_cost`] from the runs read back here: each arm against the
//! first, each mesh's capacity against the first's, and how memory and CPU grow with the
//! rate.

use std::io::Write;
use std::path::PathBuf;

use meshload_report::compare::{Scaling, fmt_value};
use meshload_report::mesh_cost::{CapacityCost, MeshCost};
use meshload_report::runs::{self, Run};
use meshload_runner::TestSummary;
use meshload_store::RunRef;

use crate::table::Table;

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
