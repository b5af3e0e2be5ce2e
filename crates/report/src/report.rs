//! The report: charts of every run and a self-contained HTML page (inline SVG, no network).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value as Json;

use crate::ReportError;
use crate::compare::fmt_value;
use crate::plot::{self, Chart, Mark};
use crate::runs::{NodeResources, Run};

const TEMPLATE: &str = include_str!("../assets/report.html");

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The HTML page.
    pub index: PathBuf,
    /// Chart ids, each with `<id>.svg` and `<id>.png` beside the page.
    pub charts: Vec<String>,
    /// Why some figures may be missing (a run's samples unreadable, or read in part).
    pub warnings: Vec<String>,
}

/// The charts of a set of runs, given each run's per-node resources and sidecars'. Long
/// on purpose: a list of chart definitions, one after another.
pub fn charts(
    runs: &[Run],
    resources: &[BTreeMap<String, NodeResources>],
    sidecars: &[BTreeMap<String, NodeResources>],
) -> Vec<Chart> {
    let per_node = |resources: &[BTreeMap<String, NodeResources>],
                    f: &dyn Fn(&NodeResources) -> f64|
     -> Vec<(String, Vec<(f64, f64)>)> {
        let nodes: std::collections::BTreeSet<&String> =
            resources.iter().flat_map(|r| r.keys()).collect();
        nodes
            .iter()
            .map(|n| {
                let points = runs
                    .iter()
                    .zip(resources)
                    .filter_map(|(run, r)| Some((run.fortio.actual_qps, f(r.get(*n)?))))
                    .collect();
                (format!("node {n}"), points)
            })
            .collect()
    };
    let mut out = vec![
        Chart {
            id: "rate_vs_memory".into(),
            title: "Maximum memory of each node against achieved rate".into(),
            x_label: "achieved rate (req/s)".into(),
            y_label: "max working set (MiB)".into(),
            series: per_node(resources, &|r| r.max_memory_mib),
            marks: Vec::new(),
        },
        // The seed's own chart: the largest memory of each node's Envoy against the rate.
        Chart {
            id: "envoy_memory_vs_rate".into(),
            title: "Maximum memory of each node's Envoy sidecar against achieved rate".into(),
            x_label: "achieved rate (req/s)".into(),
            y_label: "max Envoy working set (MiB)".into(),
            series: per_node(sidecars, &|r| r.max_memory_mib),
            marks: Vec::new(),
        },
        Chart {
            id: "envoy_cpu_vs_rate".into(),
            title: "CPU of each node's Envoy sidecars against achieved rate".into(),
            x_label: "achieved rate (req/s)".into(),
            y_label: "Envoy CPU (cores)".into(),
            series: per_node(sidecars, &|r| r.cpu_cores),
            marks: Vec::new(),
        },
        Chart {
            id: "latency_vs_rate".into(),
            title: "Latency percentiles against achieved rate".into(),
            x_label: "achieved rate (req/s)".into(),
            y_label: "latency (ms)".into(),
            series: [
                ("response p50", true, 50.0),
                ("response p99", true, 99.0),
                ("service p50", false, 50.0),
                ("service p99", false, 99.0),
            ]
            .iter()
            .map(|&(name, response, p)| {
                let points = runs
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r.fortio.actual_qps,
                            if response {
                                r.response_ms(p)?
                            } else {
                                r.service_ms(p)?
                            },
                        ))
                    })
                    .collect();
                (name.to_string(), points)
            })
            .collect(),
            marks: Vec::new(),
        },
        Chart {
            id: "errors_vs_rate".into(),
            title: "Error ratio against achieved rate".into(),
            x_label: "achieved rate (req/s)".into(),
            y_label: "errors (% of requests)".into(),
            series: vec![(
                "error ratio".into(),
                runs.iter()
                    .map(|r| (r.fortio.actual_qps, 100.0 * r.error_ratio()))
                    .collect(),
            )],
            marks: Vec::new(),
        },
        Chart {
            id: "cpu_vs_rate".into(),
            title: "CPU of each node against achieved rate".into(),
            x_label: "achieved rate (req/s)".into(),
            y_label: "CPU (cores)".into(),
            series: per_node(resources, &|r| r.cpu_cores),
            marks: Vec::new(),
        },
    ];
    for run in runs {
        out.extend(timelines(run));
    }
    out.retain(|c| !c.is_empty());
    out
}

/// Rate and latency over time of one run, from its per-second series.
fn timelines(run: &Run) -> [Chart; 2] {
    let id = safe_id(&format!("{}_{}", run.run.test_name, run.run.id));
    let s = &run.fortio.per_second;
    let at = |f: &dyn Fn(&meshload_loadgen::collector::SecondStats) -> f64| -> Vec<(f64, f64)> {
        s.iter().map(|x| (x.second as f64, f(x))).collect()
    };
    [
        Chart {
            id: format!("rate_{id}"),
            title: format!("{}: rate over time", run.name()),
            x_label: "time since start (s)".into(),
            y_label: "responses per second".into(),
            series: vec![
                ("responses/s".into(), at(&|x| x.requests as f64)),
                ("errors/s".into(), at(&|x| x.errors as f64)),
            ],
            marks: Vec::new(),
        },
        Chart {
            id: format!("latency_{id}"),
            title: format!("{}: response time over time", run.name()),
            x_label: "time since start (s)".into(),
            y_label: "response time (ms)".into(),
            series: vec![
                ("p50".into(), at(&|x| x.p50 * 1e3)),
                ("p99".into(), at(&|x| x.p99 * 1e3)),
            ],
            marks: Vec::new(),
        },
    ]
}

fn safe_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Serialize)]
struct RunRow {
    test_name: String,
    id: String,
    status: String,
    backend: String,
    connections: u64,
    requested: String,
    achieved: String,
    response_p50: String,
    response_p99: String,
    service_p99: String,
    errors: u64,
    error_ratio: String,
    /// The arm and repeat of its series (`envoy 2/5`), `-` without one.
    series: String,
    /// `SATURATED: <why>` when the host was saturated, else empty.
    host: String,
}

/// What a mesh costs in one test: the test's latest series, each arm against the first.
#[derive(Debug, Serialize, PartialEq)]
pub struct MeshRow {
    /// The test.
    pub test_name: String,
    /// The baseline arm.
    pub baseline: String,
    /// The arm.
    pub mesh: String,
    /// Runs per arm and how B - A was estimated.
    pub runs: String,
    /// Whether the arms held the same load on an unsaturated host.
    pub comparable: bool,
    /// Why not, with what to do instead.
    pub reason: String,
    /// Each figure: what it is, A, B, B - A, its interval and verdict.
    pub figures: Vec<[String; 6]>,
}

/// Every test's cost under each arm of its latest series against the first arm; for a
/// test whose latest series has one arm, its latest run under each mesh against its
/// latest run without one (one run each: no interval).
pub fn mesh_rows(runs: &[Run]) -> Vec<MeshRow> {
    let mut out = Vec::new();
    for (test, arms) in crate::compare::latest_series(runs) {
        let arms = match arms.len() {
            1 => crate::compare::latest_by_mesh(runs, &test),
            _ => arms,
        };
        let baseline = arms.first().map(|a| a.arm.clone()).unwrap_or_default();
        for (mesh, c) in crate::compare::against_baseline(&arms) {
            let show = |v: Option<f64>| v.map_or("-".to_string(), fmt_value);
            let figures = c
                .figures
                .iter()
                .map(|f| {
                    let interval = f.ci95.map_or("-".to_string(), |[l, h]| {
                        format!("[{}, {}]", fmt_value(l), fmt_value(h))
                    });
                    [
                        f.label.clone(),
                        show(f.a),
                        show(f.b),
                        show(f.estimate),
                        interval,
                        f.verdict.to_string(),
                    ]
                })
                .collect();
            out.push(MeshRow {
                test_name: test.clone(),
                baseline: baseline.clone(),
                mesh,
                runs: format!("{} against {} runs; {}", c.runs[1], c.runs[0], c.method),
                comparable: c.comparable,
                reason: match (&c.reason, &c.suggestion) {
                    (Some(r), Some(s)) => format!("{r}. To measure instead: {s}"),
                    (Some(r), None) => r.clone(),
                    _ => String::new(),
                },
                figures,
            });
        }
    }
    out
}

/// One run's per-node maxima, in node order.
#[derive(Serialize)]
struct NodeRow {
    run: String,
    cells: Vec<String>,
}

#[derive(Serialize)]
struct ChartView {
    id: String,
    title: String,
    svg: String,
}

fn row(r: &Run) -> RunRow {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), fmt_value);
    RunRow {
        test_name: r.run.test_name.clone(),
        id: r.run.id.clone(),
        status: r.status(),
        backend: r.backend(),
        connections: r.fortio.num_threads,
        requested: r.fortio.requested_qps.clone(),
        achieved: format!("{:.1}", r.fortio.actual_qps),
        response_p50: ms(r.response_ms(50.0)),
        response_p99: ms(r.response_ms(99.0)),
        service_p99: ms(r.service_ms(99.0)),
        errors: r.fortio.error_count(),
        error_ratio: format!("{:.4}", r.error_ratio()),
        series: match r.series_id() {
            Some(_) => format!(
                "{} {}/{}",
                r.arm(),
                r.repeat(),
                r.metadata["series"]["repeats"].as_u64().unwrap_or(1)
            ),
            None => "-".to_string(),
        },
        host: match r.saturation() {
            s if s.is_empty() => String::new(),
            s => format!("SATURATED: {}", s.join("; ")),
        },
    }
}

fn write_error(path: &Path, source: std::io::Error) -> ReportError {
    ReportError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// One capacity search, as the report's table shows it.
#[derive(Debug, Serialize)]
pub struct SearchRow {
    /// The test searched.
    pub test_name: String,
    /// Its mesh.
    pub mesh: String,
    /// The search's id.
    pub search_id: String,
    /// `p99_ms=50, error_ratio=0.01`.
    pub slo: String,
    /// Steps run.
    pub steps: usize,
    /// The rate found, or `-`.
    pub capacity: String,
    /// The search's one-line verdict.
    pub verdict: String,
}

/// The table rows of capacity searches (`search-<id>.json` documents).
pub fn search_rows(searches: &[Json]) -> Vec<SearchRow> {
    searches
        .iter()
        .map(|s| SearchRow {
            test_name: s["test_name"].as_str().unwrap_or("").to_string(),
            mesh: s["mesh"].as_str().unwrap_or("none").to_string(),
            search_id: s["search_id"].as_str().unwrap_or("").to_string(),
            slo: s["slo"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            steps: s["steps"].as_array().map_or(0, Vec::len),
            capacity: s["max_rate"]
                .as_f64()
                .map_or("-".to_string(), |r| format!("{r:.1}")),
            verdict: s["verdict"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

/// The knee chart of each search: every latency bound's median percentile against the
/// rate of each step, with the bound and the rate found as dashed lines. A search whose
/// SLO has no latency bound draws the response p99.
pub fn search_charts(searches: &[Json]) -> Vec<Chart> {
    let mut out = Vec::new();
    for s in searches {
        let test = s["test_name"].as_str().unwrap_or("search");
        let id = s["search_id"].as_str().unwrap_or("");
        let mesh = s["mesh"].as_str().unwrap_or("none");
        let slo = s["slo"].as_object().cloned().unwrap_or_default();
        // Each latency bound's median per step is in the step's checks; without one,
        // the step's median response p99.
        let mut bounds: Vec<(String, String, Option<f64>)> = slo
            .iter()
            .filter(|(k, _)| meshload_config::slo::LatencyBound::parse(k, 0.0).is_some())
            .map(|(k, v)| (k.clone(), k.clone(), v.as_f64()))
            .collect();
        if bounds.is_empty() {
            bounds.push(("response_p99_ms".to_string(), "p99_ms".to_string(), None));
        }
        let steps = s["steps"].as_array().cloned().unwrap_or_default();
        let mut series = Vec::new();
        let mut marks = Vec::new();
        for (key, shown, max) in &bounds {
            let points: Vec<(f64, f64)> = steps
                .iter()
                .filter_map(|step| {
                    let qps = step["qps"].as_f64()?;
                    let value = match step["checks"].as_array().and_then(|checks| {
                        checks
                            .iter()
                            .find(|c| c["key"].as_str() == Some(key.as_str()))
                    }) {
                        Some(check) => check["value"].as_f64(),
                        None => step[key.as_str()].as_f64(),
                    };
                    Some((qps, value?))
                })
                .collect();
            series.push((format!("{shown} (median of trials)"), points));
            if let Some(max) = max {
                marks.push(Mark {
                    label: format!("SLO {shown} = {max}"),
                    horizontal: true,
                    at: *max,
                });
            }
        }
        if let Some(rate) = s["max_rate"].as_f64() {
            marks.push(Mark {
                label: format!("capacity {rate:.1} req/s"),
                horizontal: false,
                at: rate,
            });
        }
        out.push(Chart {
            id: safe_id(&format!("search_{test}_{mesh}_{id}")),
            title: format!("Capacity search {test} ({mesh}): latency against rate"),
            x_label: "requested rate (req/s)".into(),
            y_label: "latency (ms)".into(),
            series,
            marks,
        });
    }
    out.retain(|c| !c.is_empty());
    out
}

/// Writes `index.html` and every chart as SVG and PNG into `out`, with the capacity
/// searches (`search-<id>.json` documents) among them.
pub fn write(
    runs: &[Run],
    searches: &[Json],
    store: &str,
    out: &Path,
) -> Result<Written, ReportError> {
    std::fs::create_dir_all(out).map_err(|source| write_error(out, source))?;
    let read: Vec<crate::runs::Resources> = runs.iter().map(Run::resources).collect();
    let warnings: Vec<String> = read.iter().filter_map(|r| r.warning.clone()).collect();
    let (resources, sidecars): (Vec<_>, Vec<_>) =
        read.into_iter().map(|r| (r.nodes, r.sidecars)).unzip();
    let nodes: std::collections::BTreeSet<String> =
        resources.iter().flat_map(|r| r.keys().cloned()).collect();
    let node_rows: Vec<NodeRow> = runs
        .iter()
        .zip(&resources)
        .map(|(run, r)| NodeRow {
            run: run.name(),
            cells: nodes
                .iter()
                .map(|n| {
                    r.get(n).map_or("-".to_string(), |x| {
                        format!("{:.1} MiB / {:.3}", x.max_memory_mib, x.cpu_cores)
                    })
                })
                .collect(),
        })
        .collect();
    let mut views = Vec::new();
    let mut all = search_charts(searches);
    all.extend(charts(runs, &resources, &sidecars));
    for chart in all {
        let svg = plot::svg(&chart)?;
        let write = |name: String, bytes: &[u8]| {
            let path = out.join(&name);
            std::fs::write(&path, bytes).map_err(|source| write_error(&path, source))
        };
        write(format!("{}.svg", chart.id), svg.as_bytes())?;
        plot::png(&chart, &out.join(format!("{}.png", chart.id)))?;
        // Inline SVGs share one document: keep only the <svg> element.
        let inline = svg
            .find("<svg")
            .map_or(svg.as_str(), |i| &svg[i..])
            .to_string();
        views.push(ChartView {
            id: chart.id,
            title: chart.title,
            svg: inline,
        });
    }
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)
        .map_err(ReportError::Page)?;
    let generated = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let html = env
        .get_template("report.html")
        .and_then(|t| {
            t.render(minijinja::context! {
                runs => minijinja::value::Serde(runs.iter().map(row).collect::<Vec<_>>()),
                charts => minijinja::value::Serde(&views),
                nodes => minijinja::value::Serde(&nodes),
                node_rows => minijinja::value::Serde(&node_rows),
                mesh_rows => minijinja::value::Serde(&mesh_rows(runs)),
                search_rows => minijinja::value::Serde(&search_rows(searches)),
                store => store,
                generated => generated,
                version => env!("CARGO_PKG_VERSION"),
            })
        })
        .map_err(ReportError::Page)?;
    let index = out.join("index.html");
    std::fs::write(&index, html).map_err(|source| write_error(&index, source))?;
    Ok(Written {
        index,
        charts: views.into_iter().map(|v| v.id).collect(),
        warnings,
    })
}
