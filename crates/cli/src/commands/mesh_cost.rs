//! What the mesh costs, after `meshload run --mesh none,envoy`: for every test, each
//! mesh's run against the first mesh's, read back from the store with the report crate
//! (the same figures `meshload compare` prints): the latency it adds and what each
//! node's sidecars take, also per 1,000 achieved req/s.

use std::io::Write;
use std::path::PathBuf;

use meshload_report::compare::{Figure, figures};
use meshload_report::runs;
use meshload_runner::TestSummary;
use meshload_store::RunRef;
use serde::Serialize;

/// One test under one mesh, against the same test under the baseline mesh.
#[derive(Debug, Serialize)]
pub struct MeshCost {
    /// The test.
    pub test_name: String,
    /// The baseline's mesh (the first one run).
    pub baseline: String,
    /// This run's mesh.
    pub mesh: String,
    /// Added latency (this run minus the baseline) and every sidecar figure.
    pub figures: Vec<Figure>,
}

/// The keys of the added latencies shown, with their headings.
const LATENCY: [(&str, &str); 4] = [
    ("p50", "response p50"),
    ("p99", "response p99"),
    ("service_p50", "service p50"),
    ("service_p99", "service p99"),
];

fn run_ref(summary: &TestSummary) -> Option<RunRef> {
    let dir = PathBuf::from(&summary.run_dir);
    let id = dir.file_name()?.to_string_lossy().into_owned();
    dir.is_dir().then(|| RunRef {
        test_name: summary.test_name.clone(),
        id,
        dir,
    })
}

/// Every test's cost under each mesh but the first; empty with one mesh. A run that
/// cannot be read back here (an S3 store) is left out, with a warning on stderr.
pub fn costs(tests: &[TestSummary]) -> Vec<MeshCost> {
    let Some(first_mesh) = tests.first().map(|t| t.mesh.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for base in tests.iter().filter(|t| t.mesh == first_mesh) {
        for other in tests
            .iter()
            .filter(|t| t.test_name == base.test_name && t.mesh != first_mesh)
        {
            let loaded = run_ref(base)
                .zip(run_ref(other))
                .and_then(|(a, b)| Some((runs::load(&a).ok()?, runs::load(&b).ok()?)));
            let Some((a, b)) = loaded else {
                eprintln!(
                    "meshload: cannot read {} back for its mesh cost; `meshload compare` it from its store",
                    other.run_dir
                );
                continue;
            };
            let figures = figures(&a, &b)
                .into_iter()
                .filter(|f| LATENCY.iter().any(|(k, _)| f.key == *k) || f.key.starts_with("envoy_"))
                .collect();
            out.push(MeshCost {
                test_name: base.test_name.clone(),
                baseline: first_mesh.clone(),
                mesh: other.mesh.clone(),
                figures,
            });
        }
    }
    out
}

fn value(figures: &[Figure], key: &str, pick: fn(&Figure) -> Option<f64>) -> String {
    figures
        .iter()
        .find(|f| f.key == key)
        .and_then(pick)
        .map_or("-".to_string(), |v| format!("{v:.3}"))
}

/// The cost as two tables: added latency per test, then each node's sidecars.
pub fn print(out: &mut impl Write, costs: &[MeshCost]) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<32} {:<8} {:>14} {:>14} {:>14} {:>14}   added ms (mesh minus {})",
        "mesh cost",
        "mesh",
        LATENCY[0].1,
        LATENCY[1].1,
        LATENCY[2].1,
        LATENCY[3].1,
        costs.first().map_or("none", |c| c.baseline.as_str())
    )?;
    for c in costs {
        let added: Vec<String> = LATENCY
            .iter()
            .map(|(k, _)| value(&c.figures, k, |f| f.difference))
            .collect();
        writeln!(
            out,
            "{:<32} {:<8} {:>14} {:>14} {:>14} {:>14}",
            c.test_name, c.mesh, added[0], added[1], added[2], added[3]
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<32} {:<8} {:<10} {:>10} {:>14} {:>10} {:>14}",
        "sidecars", "mesh", "node", "max MiB", "MiB/1k req/s", "cores", "cores/1k req/s"
    )?;
    for c in costs {
        let nodes: Vec<&str> = c
            .figures
            .iter()
            .filter_map(|f| f.key.strip_prefix("envoy_memory:"))
            .collect();
        for node in nodes {
            let b = |k: &str| value(&c.figures, &format!("{k}:{node}"), |f| f.b);
            writeln!(
                out,
                "{:<32} {:<8} {:<10} {:>10} {:>14} {:>10} {:>14}",
                c.test_name,
                c.mesh,
                node,
                b("envoy_memory"),
                b("envoy_memory_per_krps"),
                b("envoy_cpu"),
                b("envoy_cpu_per_krps")
            )?;
        }
    }
    Ok(())
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
