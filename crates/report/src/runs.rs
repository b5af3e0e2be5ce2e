//! Stored runs read back: the load result, the metadata, and per-node resources computed
//! from the run's raw samples with the embedded engine.

use std::collections::BTreeMap;
use std::io::BufReader;

use meshload_config::proxies::{APP_CONTAINER, CPU_SERIES, MEMORY_SERIES};
use meshload_loadgen::FortioResult;
use meshload_promql::{QueryOptions, Store, Value, instant_query};
use meshload_store::RunRef;
use serde_json::Value as Json;

use crate::ReportError;

/// A stored run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Where it is.
    pub run: RunRef,
    /// Its load result.
    pub fortio: FortioResult,
    /// Its metadata.json (`null` when it is missing or damaged).
    pub metadata: Json,
    /// Why metadata.json could not be read, when it could not: the run is damaged, and
    /// what the file said (its status, a replica's exit) is unknown.
    pub damage: Option<String>,
}

/// Resources of one node during a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeResources {
    /// Largest working set of any of its replicas, in MiB.
    pub max_memory_mib: f64,
    /// CPU used by all its replicas over the test, in cores.
    pub cpu_cores: f64,
}

fn read_json(path: &std::path::Path) -> Result<Json, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ReportError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a run's fortio.json and metadata.json.
pub fn load(run: &RunRef) -> Result<Run, ReportError> {
    let fortio_json = read_json(&run.dir.join(meshload_store::layout::FORTIO))?;
    let fortio: FortioResult =
        serde_json::from_value(fortio_json).map_err(|source| ReportError::Parse {
            path: run
                .dir
                .join(meshload_store::layout::FORTIO)
                .display()
                .to_string(),
            source,
        })?;
    let (metadata, damage) = match read_json(&run.dir.join(meshload_store::layout::METADATA)) {
        Ok(metadata) => match shape_problem(&metadata) {
            None => (metadata, None),
            Some(problem) => (
                Json::Null,
                Some(format!(
                    "{}: {problem}",
                    run.dir.join(meshload_store::layout::METADATA).display()
                )),
            ),
        },
        Err(e) => (Json::Null, Some(meshload_process::error_chain(&e))),
    };
    Ok(Run {
        run: run.clone(),
        fortio,
        metadata,
        damage,
    })
}

/// What is wrong with the shape of a metadata.json that parsed, if anything: it must be an
/// object, and the fields read from it must have their types (a run whose `status` is `5`
/// is damaged, not complete).
fn shape_problem(metadata: &Json) -> Option<String> {
    let Some(object) = metadata.as_object() else {
        return Some(format!(
            "{} is not an object",
            meshload_config::reader::short(metadata)
        ));
    };
    let expect = |key: &str, ok: fn(&Json) -> bool, what: &str| {
        object
            .get(key)
            .filter(|v| !ok(v))
            .map(|v| format!("{key} is {}, not {what}", meshload_config::reader::short(v)))
    };
    expect(
        "status",
        |v| matches!(v.as_str(), Some("complete" | "interrupted")),
        "\"complete\" or \"interrupted\"",
    )
    .or_else(|| expect("test_name", Json::is_string, "a string"))
    .or_else(|| expect("run_id", Json::is_string, "a string"))
    .or_else(|| expect("backend", Json::is_string, "a string"))
    .or_else(|| expect("summary", Json::is_object, "an object"))
    .or_else(|| expect("backend_facts", Json::is_object, "an object"))
    .or_else(|| expect("series", |v| v.is_object() || v.is_null(), "an object"))
    .or_else(|| expect("start_ms", Json::is_number, "a number"))
    .or_else(|| expect("end_ms", Json::is_number, "a number"))
}

impl Run {
    /// `<test_name>/<id>`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.run.test_name, self.run.id)
    }

    /// The requested rate, `None` for as fast as possible.
    pub fn requested_qps(&self) -> Option<f64> {
        self.fortio.requested_qps.parse().ok()
    }

    /// Errors over requests.
    pub fn error_ratio(&self) -> f64 {
        let requests: u64 = self.fortio.ret_codes.values().sum();
        if requests == 0 {
            0.0
        } else {
            self.fortio.error_count() as f64 / requests as f64
        }
    }

    /// Where the run ran: `local`, or `k8s` with the mesh, namespace, Kubernetes version
    /// and cluster; empty for runs without metadata (other tools' results).
    pub fn backend(&self) -> String {
        let Some(backend) = self.metadata["backend"].as_str() else {
            return String::new();
        };
        let facts = &self.metadata["backend_facts"];
        let mut parts = vec![backend.to_string()];
        for (label, key) in [
            ("mesh", "mesh"),
            ("namespace", "namespace"),
            ("Kubernetes", "kubernetes_version"),
            ("cluster", "cluster"),
        ] {
            if let Some(v) = facts[key].as_str().filter(|v| !v.is_empty()) {
                parts.push(format!("{label} {v}"));
            }
        }
        parts.join(", ")
    }

    /// `complete` or `interrupted` (metadata); `damaged` when metadata.json cannot be
    /// read.
    pub fn status(&self) -> String {
        if self.damage.is_some() {
            return "damaged".into();
        }
        match self.metadata["status"].as_str() {
            Some(s) => s.to_string(),
            None if self.fortio.interrupted => "interrupted".into(),
            None => "complete".into(),
        }
    }

    /// Start and end of the test, ms since the epoch.
    pub fn window_ms(&self) -> Option<(i64, i64)> {
        Some((
            self.metadata["start_ms"].as_i64()?,
            self.metadata["end_ms"].as_i64()?,
        ))
    }

    /// Response time percentile `p` in milliseconds (corrected; service time for results
    /// from tools that only have that).
    pub fn response_ms(&self, p: f64) -> Option<f64> {
        self.fortio
            .response_or_service()
            .percentile(p)
            .map(|v| v * 1e3)
    }

    /// Service time percentile `p` in milliseconds.
    pub fn service_ms(&self, p: f64) -> Option<f64> {
        self.fortio
            .duration_histogram
            .percentile(p)
            .map(|v| v * 1e3)
    }

    /// The series the run belongs to: every arm and repeat of its test in one
    /// `meshload run` (`None` for runs stored before series, or by other tools).
    pub fn series_id(&self) -> Option<&str> {
        self.metadata["series"]["id"].as_str()
    }

    /// The arm the run belongs to: its series' arm, else its mesh.
    pub fn arm(&self) -> String {
        match self.metadata["series"]["arm"].as_str() {
            Some(arm) => arm.to_string(),
            None => self.mesh(),
        }
    }

    /// The arms of its series, the baseline first (its own arm alone without a series).
    pub fn series_arms(&self) -> Vec<String> {
        match self.metadata["series"]["arms"].as_array() {
            Some(arms) => arms
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            None => vec![self.arm()],
        }
    }

    /// Its repeat in the series, from 1 (1 for runs without a series).
    pub fn repeat(&self) -> u64 {
        self.metadata["series"]["repeat"].as_u64().unwrap_or(1)
    }

    /// Why the host was saturated during the run (empty when it was not, or nothing
    /// was recorded).
    pub fn saturation(&self) -> Vec<String> {
        let host = &self.metadata["summary"]["host"];
        if host["saturated"].as_bool() != Some(true) {
            return Vec::new();
        }
        host["reasons"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec!["the host was saturated".to_string()])
    }

    /// The least share of the requested rate at which the run held its load: its SLO's
    /// `min_rate_ratio`, else 0.99.
    pub fn min_rate_ratio(&self) -> f64 {
        let summary = &self.metadata["summary"]["min_rate_ratio"];
        let slo = &self.metadata["slo"]["min_rate_ratio"];
        summary
            .as_f64()
            .or_else(|| slo.as_f64())
            .unwrap_or(meshload_config::search::DEFAULT_MIN_RATE_RATIO)
    }

    /// The mesh the run ran in (`none` when its backend named none).
    pub fn mesh(&self) -> String {
        self.metadata["backend_facts"]["mesh"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    }

    /// The run's mesh as a type: its arm's name without the `#2` of an arm named again;
    /// an unknown name (a newer meshload's) reads as none.
    pub fn mesh_kind(&self) -> meshload_config::Mesh {
        let mesh = self.mesh();
        let name = mesh.split('#').next().unwrap_or_default();
        name.parse().unwrap_or(meshload_config::Mesh::None)
    }

    /// Memory and CPU of each node's app containers over the test, from the run's
    /// samples (empty when the run stored none).
    pub fn node_resources(&self) -> BTreeMap<String, NodeResources> {
        self.resources().nodes
    }

    /// The run's raw samples, with the lines that had to be skipped; `Err` says why the
    /// file cannot be read at all. The one reader of `samples.jsonl`.
    pub fn samples(&self) -> Result<(Store, meshload_promql::Skipped), String> {
        let path = self.run.dir.join(meshload_store::layout::SAMPLES);
        std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| Store::read_jsonl(BufReader::new(f)).map_err(|e| e.to_string()))
    }

    /// When the test started, ms since the epoch (from metadata.json).
    pub fn start_ms(&self) -> Option<i64> {
        self.metadata["start_ms"].as_i64()
    }

    /// Memory and CPU of each node's app containers and of its sidecars (the container the
    /// run's mesh names them by, [`meshload_config::Mesh::proxies`]; none for runs without
    /// a mesh: the load generator's own sidecar is not a node's), from one read of the
    /// run's samples, with a warning when those could not be read whole.
    pub fn resources(&self) -> Resources {
        let mut out = Resources::default();
        let Some((start, end)) = self.window_ms() else {
            return out;
        };
        let store = match self.samples() {
            Ok((store, skipped)) => {
                out.warning = skipped
                    .warning()
                    .map(|w| format!("{}: samples.jsonl: {w}", self.name()));
                store
            }
            Err(e) => {
                out.warning = Some(format!(
                    "{}: samples.jsonl cannot be read ({e}): no memory or CPU figures",
                    self.name()
                ));
                return out;
            }
        };
        out.nodes = resources_of(&store, APP_CONTAINER, start, end);
        let proxies = self.mesh_kind().proxies();
        if let Some(sidecar) = proxies.sidecar {
            out.sidecars = resources_of(&store, sidecar, start, end);
        }
        for shared in proxies.shared {
            if let Some(r) = shared_resources(&store, shared.matchers, start, end) {
                out.shared.insert(shared.role.to_string(), r);
            }
        }
        // The nodes' sidecars (not the load generator's) and the shared proxies.
        let every: Vec<String> = proxies
            .sidecar
            .map(|c| format!(r#"container="{c}", pod=~"{NODE_POD}""#))
            .into_iter()
            .chain(proxies.shared.iter().map(|s| s.matchers.to_string()))
            .collect();
        out.proxies = all_proxies(&store, &every, start, end);
        out
    }
}

/// What a run's samples say of its containers' resources.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Each node's app containers.
    pub nodes: BTreeMap<String, NodeResources>,
    /// Each node's sidecars.
    pub sidecars: BTreeMap<String, NodeResources>,
    /// The proxies pods share (ambient's `ztunnel` and `waypoint`), by role: the largest
    /// working set of any one, and the CPU of all.
    pub shared: BTreeMap<String, NodeResources>,
    /// All the mesh's proxies together (the nodes' sidecars and the shared ones): the sum
    /// of each one's largest working set, and the CPU of all. `None` without a mesh.
    pub proxies: Option<NodeResources>,
    /// Why the figures may be incomplete (bad lines skipped, or no samples at all).
    pub warning: Option<String>,
}

/// A node's pods: `node-<node>-<replica set>-<n>` locally, `node-<node>-<hash>-<id>` on a
/// cluster; the node is the first group.
const NODE_POD: &str = "node-(.+)-[^-]+-[^-]+";

/// Memory and CPU of `container` per node, over `start..end`.
fn resources_of(
    store: &Store,
    container: &str,
    start: i64,
    end: i64,
) -> BTreeMap<String, NodeResources> {
    let by_node =
        |inner: String| format!(r#"label_replace({inner}, "node", "$1", "pod", "{NODE_POD}")"#);
    let mut out = BTreeMap::new();
    let selector = format!(r#"container="{container}""#);
    for (node, r) in measure(store, &selector, ("max", "node"), by_node, start, end) {
        if !node.is_empty() {
            out.insert(node, r);
        }
    }
    out
}

/// Memory and CPU of the containers that `matchers` select, together, over `start..end`:
/// the largest working set of any of them and the CPU of all.
fn shared_resources(store: &Store, matchers: &str, start: i64, end: i64) -> Option<NodeResources> {
    measure(store, matchers, ("max", ""), |inner| inner, start, end)
        .into_values()
        .next()
}

/// Every proxy of a mesh together (`proxies`: each one's matchers): the sum of each
/// one's largest working set, and the CPU of all; `None` without any.
fn all_proxies(store: &Store, proxies: &[String], start: i64, end: i64) -> Option<NodeResources> {
    let each = proxies.iter().filter_map(|matchers| {
        measure(store, matchers, ("sum", ""), |inner| inner, start, end)
            .into_values()
            .next()
    });
    each.reduce(|a, b| NodeResources {
        max_memory_mib: a.max_memory_mib + b.max_memory_mib,
        cpu_cores: a.cpu_cores + b.cpu_cores,
    })
}

/// The working sets (MiB, the largest of each, aggregated by `memory`: `max` or `sum`)
/// and the CPU (cores) of the containers `matchers` select, by the label `by` (after
/// `relabel`; `""` for all together).
fn measure(
    store: &Store,
    matchers: &str,
    (memory, by): (&str, &str),
    relabel: impl Fn(String) -> String,
    start: i64,
    end: i64,
) -> BTreeMap<String, NodeResources> {
    let mut out: BTreeMap<String, NodeResources> = BTreeMap::new();
    let window = format!("{}ms", (end - start).max(1000) + 1000);
    let memory = format!(
        "{memory} by ({by}) ({}) / (1024*1024)",
        relabel(format!(
            "max_over_time({MEMORY_SERIES}{{{matchers}}}[{window}])"
        ))
    );
    let seconds = ((end - start).max(1000) + 1000) as f64 / 1000.0;
    let cpu = format!(
        "sum by ({by}) ({}) / {seconds}",
        relabel(format!("increase({CPU_SERIES}{{{matchers}}}[{window}])"))
    );
    for (query, is_memory) in [(memory, true), (cpu, false)] {
        let Ok(result) = instant_query(store, &query, end, QueryOptions::default()) else {
            continue;
        };
        let Value::Vector(samples) = result.value else {
            continue;
        };
        for s in samples {
            let key = if by.is_empty() {
                String::new()
            } else {
                s.labels.value(by).to_string()
            };
            let entry = out.entry(key).or_default();
            if is_memory {
                entry.max_memory_mib = s.value;
            } else {
                entry.cpu_cores = s.value;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshload_promql::Labels;

    /// Samples of two ztunnels, a waypoint and an Istio sidecar, every second for 10 s:
    /// each pod's working set is constant, its CPU grows at `cores`.
    fn cluster_samples() -> Store {
        let mut store = Store::new();
        let pods = [
            ("istio-system", "ztunnel-a1b2c", "istio-proxy", 12.0, 0.05),
            ("istio-system", "ztunnel-d3e4f", "istio-proxy", 14.0, 0.07),
            ("perf", "waypoint-6f7d8c-x9y8z", "istio-proxy", 60.0, 0.25),
            ("perf", "node-a-5d9f7-0", "istio-proxy", 50.0, 0.2),
        ];
        for (namespace, pod, container, mib, cores) in pods {
            let labels = |name: &str| {
                Labels::from_pairs([
                    ("__name__", name),
                    ("namespace", namespace),
                    ("pod", pod),
                    ("container", container),
                ])
            };
            for s in 0..=10 {
                let t = s * 1000;
                store.append(
                    &labels("container_memory_working_set_bytes"),
                    t,
                    mib * 1024.0 * 1024.0,
                );
                store.append(
                    &labels("container_cpu_usage_seconds_total"),
                    t,
                    cores * s as f64,
                );
            }
        }
        store
    }

    #[test]
    fn shared_proxies_are_measured_together_by_their_presets() {
        let store = cluster_samples();
        let ambient = meshload_config::Mesh::IstioAmbient.proxies();
        let measured: BTreeMap<&str, NodeResources> = ambient
            .shared
            .iter()
            .filter_map(|p| Some((p.role, shared_resources(&store, p.matchers, 0, 10_000)?)))
            .collect();
        let ztunnel = &measured["ztunnel"];
        assert!((ztunnel.max_memory_mib - 14.0).abs() < 1e-9, "{ztunnel:?}");
        // increase() over the window extrapolates a little: 0.12 cores measured over 11 s.
        assert!((ztunnel.cpu_cores - 0.12).abs() < 0.02, "{ztunnel:?}");
        let waypoint = &measured["waypoint"];
        assert!(
            (waypoint.max_memory_mib - 60.0).abs() < 1e-9,
            "{waypoint:?}"
        );
        assert!((waypoint.cpu_cores - 0.25).abs() < 0.04, "{waypoint:?}");
        // The sidecar preset finds the node's sidecar, and neither ztunnel nor waypoint.
        let sidecar = meshload_config::Mesh::Istio
            .proxies()
            .sidecar
            .expect("Istio has sidecars");
        let sidecars = resources_of(&store, sidecar, 0, 10_000);
        assert_eq!(sidecars.keys().collect::<Vec<_>>(), ["a"]);
        // Together: each proxy's own largest working set, summed.
        let every: Vec<String> = ambient
            .shared
            .iter()
            .map(|p| p.matchers.to_string())
            .collect();
        let all = all_proxies(&store, &every, 0, 10_000).expect("proxies");
        assert!(
            (all.max_memory_mib - (12.0 + 14.0 + 60.0)).abs() < 1e-9,
            "{all:?}"
        );
        assert!((all.cpu_cores - 0.37).abs() < 0.06, "{all:?}");
    }
}
