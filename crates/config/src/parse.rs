//! From the file's JSON value to a [`Config`]: pure, no I/O, every problem reported.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::behaviour::{Behaviour, BehaviourError, ErrorRate};
use crate::limits;
use crate::model::{Config, LoadTest, NodeSpec, PrometheusSetting};
use crate::reader::{Reader, index, join, short};
use crate::slo::Slo;
use crate::topology;

const TOP_LEVEL: [&str; 19] = [
    "IsTLSEnabled",
    "IsmTLSEnabled",
    "ReplicasPerVirtualNode",
    "ConnectivityCheckPerURL",
    "backends_map",
    "load_tests",
    "metrics",
    "nodes",
    "defaults",
    "sleep_between_tests",
    "scrape_interval",
    "metrics_step",
    "slo",
    "store",
    "prometheus",
    "namespace",
    "mesh",
    "repeat",
    "hosts",
];

const NODE_KEYS: [&str; 8] = [
    "latency",
    "error_rate",
    "error_code",
    "response_size",
    "timeout",
    "call_mode",
    "replicas",
    "host",
];

/// Fortio load options meshload understands in a test.
const TEST_KEYS: [&str; 18] = [
    "test_name",
    "search",
    "url",
    "target",
    "qps",
    "t",
    "c",
    "n",
    "uniform",
    "jitter",
    "nocatchup",
    "stdclient",
    "timeout",
    "headers",
    "payload",
    "labels",
    "slo",
    "repeat",
];

/// Fortio options meshload knows but does not support: named in a warning.
const FORTIO_UNSUPPORTED: [&str; 13] = [
    "async",
    "compression",
    "connection-reuse",
    "content-type",
    "https-insecure",
    "keepalive",
    "loglevel",
    "p",
    "resolve",
    "save",
    "sequential-warmup",
    "profile",
    "runid",
];

/// Reads the whole configuration; `None` when a problem was found (every problem is
/// recorded in `r`). Long on purpose: one key after another, in the file's order.
pub fn config(raw: &Value, r: &mut Reader) -> Option<Config> {
    let top = r.object("", raw)?;
    r.unknown_keys("", top, &TOP_LEVEL);
    let field = |k: &str| top.get(k);
    let bool_of = |r: &mut Reader, k: &str| field(k).and_then(|v| r.boolean(k, v)).unwrap_or(false);
    let tls = bool_of(r, "IsTLSEnabled");
    let mtls = bool_of(r, "IsmTLSEnabled");
    let replicas = field("ReplicasPerVirtualNode")
        .and_then(|v| r.integer("ReplicasPerVirtualNode", v, 1, 1000))
        .unwrap_or(1) as u32;
    let connectivity_checks = field("ConnectivityCheckPerURL")
        .and_then(|v| r.integer("ConnectivityCheckPerURL", v, 0, 1_000_000))
        .unwrap_or(10) as u32;
    let namespace = match field("namespace") {
        Some(v) => r.string("namespace", v).unwrap_or("").to_string(),
        None => "tls-e2e".to_string(),
    };
    let nodes = nodes(top, replicas, r);
    let slo = field("slo")
        .map(|v| crate::slo::parse("slo", v, r))
        .unwrap_or_default();
    let repeat = field("repeat").and_then(|v| repeat("repeat", v, r));
    let defaults = TestDefaults {
        slo: &slo,
        repeat: repeat.unwrap_or(1),
        namespace: &namespace,
    };
    let tests = match field("load_tests") {
        Some(v) => tests(v, &nodes, &defaults, r),
        None => Vec::new(),
    };
    let metrics = field("metrics").map(|v| metrics(v, r)).unwrap_or_default();
    let duration_or = |r: &mut Reader, k: &str, default: Duration| {
        field(k).and_then(|v| r.duration(k, v)).unwrap_or(default)
    };
    let sleep_between_tests = duration_or(r, "sleep_between_tests", Duration::from_secs(10));
    let scrape_interval = duration_or(r, "scrape_interval", Duration::from_secs(1));
    let metrics_step = duration_or(r, "metrics_step", Duration::from_secs(10));
    for (key, d) in [
        ("scrape_interval", scrape_interval),
        ("metrics_step", metrics_step),
    ] {
        if d < Duration::from_millis(100) {
            r.error(
                key,
                format!(
                    "{} is too short (at least 100ms)",
                    short(&field(key).cloned().unwrap_or_default())
                ),
            );
        }
    }
    let store = field("store")
        .and_then(|v| r.string("store", v))
        .map(str::to_string);
    let prometheus = match field("prometheus") {
        None => PrometheusSetting::Embedded,
        Some(v) => match r.string("prometheus", v) {
            Some("spawn") => PrometheusSetting::Spawn,
            Some("embedded") | Some("") => PrometheusSetting::Embedded,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                PrometheusSetting::Url(url.to_string())
            }
            Some(other) => {
                r.error(
                    "prometheus",
                    format!("{other:?} is not \"spawn\", \"embedded\" or an http:// URL"),
                );
                PrometheusSetting::Embedded
            }
            None => PrometheusSetting::Embedded,
        },
    };
    let meshes = field("mesh").map(|v| meshes(v, r)).unwrap_or_default();
    let hosts = field("hosts")
        .and_then(|v| r.integer("hosts", v, 1, u64::from(MAX_HOSTS)))
        .map(|n| n as u32);
    Some(Config {
        meshes,
        hosts,
        tls,
        mtls,
        connectivity_checks,
        nodes,
        tests,
        metrics,
        sleep_between_tests,
        scrape_interval,
        metrics_step,
        store,
        prometheus,
        namespace,
        raw: raw.clone(),
    })
}

fn nodes(
    top: &Map<String, Value>,
    default_replicas: u32,
    r: &mut Reader,
) -> BTreeMap<String, NodeSpec> {
    let mut nodes: BTreeMap<String, NodeSpec> = BTreeMap::new();
    let Some(map_value) = top.get("backends_map") else {
        r.error(
            "backends_map",
            "missing: the topology needs at least one node",
        );
        return nodes;
    };
    let Some(map) = r.object("backends_map", map_value) else {
        return nodes;
    };
    let defaults = top.get("defaults").and_then(|v| r.object("defaults", v));
    let default_behaviour = defaults
        .map(|d| behaviour("defaults", d, r))
        .unwrap_or_default();
    for (name, backends_value) in map {
        let path = join("backends_map", name);
        check_node_name(&path, name, r);
        let backends: Vec<String> = match r.array(&path, backends_value) {
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, b)| r.string(&index(&path, i), b).map(str::to_string))
                .collect(),
            None => Vec::new(),
        };
        for b in &backends {
            check_node_name(&path, b, r);
        }
        nodes
            .entry(name.clone())
            .or_insert_with(|| node(default_replicas, &default_behaviour))
            .backends = backends.clone();
        for b in backends {
            nodes
                .entry(b)
                .or_insert_with(|| node(default_replicas, &default_behaviour));
        }
    }
    if nodes.is_empty() {
        r.error(
            "backends_map",
            "{} is empty: the topology needs at least one node",
        );
    }
    if let Some(per_node) = top.get("nodes").and_then(|v| r.object("nodes", v)) {
        for (name, v) in per_node {
            let path = join("nodes", name);
            let Some(o) = r.object(&path, v) else {
                continue;
            };
            let Some(spec) = nodes.get_mut(name) else {
                r.error(&path, format!("{name:?} is not a node of backends_map"));
                continue;
            };
            let own = behaviour(&path, o, r);
            spec.behaviour = spec.behaviour.overlaid_by(&own);
            if let Some(n) = o
                .get("replicas")
                .and_then(|v| r.integer(&join(&path, "replicas"), v, 1, 1000))
            {
                spec.replicas = n as u32;
            }
            if let Some(v) = o.get("host") {
                spec.host = host(&join(&path, "host"), v, r);
            }
        }
    }
    if let Some(cycle) = topology::find_cycle(&nodes) {
        r.error(
            "backends_map",
            format!("cycle {}: a request would loop forever", cycle.join(" -> ")),
        );
    }
    nodes
}

fn node(replicas: u32, behaviour: &Behaviour) -> NodeSpec {
    NodeSpec {
        backends: Vec::new(),
        replicas,
        behaviour: behaviour.clone(),
        host: None,
    }
}

/// The most simulated hosts of `--mesh ambient`.
pub const MAX_HOSTS: u32 = 64;

/// A node's simulated host: a DNS label (it names the host's node proxy, `ztunnel-<host>`).
fn host(path: &str, v: &Value, r: &mut Reader) -> Option<String> {
    let name = r.string(path, v)?;
    let label = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if label {
        Some(name.to_string())
    } else {
        r.error(
            path,
            format!(
                "{} is not a valid host name: lower-case letters, digits and '-' (not first or last), at most 40",
                short(v)
            ),
        );
        None
    }
}

/// Node names become pod, Service and folder names (`node-<name>`, `service-<name>`), and
/// arguments: each must be a DNS-1123 label once prefixed, so lower-case letters, digits and
/// '-', neither first nor last (`-x` would reach a node as a flag), and short enough. Upper
/// case is refused rather than folded, so two names never become one (`A` and `a`).
fn check_node_name(path: &str, name: &str, r: &mut Reader) {
    let ok = !name.is_empty()
        && name.len() <= 50
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        let hint = if name.chars().any(|c| c.is_ascii_uppercase()) {
            format!(" (use lower case: {:?})", name.to_ascii_lowercase())
        } else {
            String::new()
        };
        r.error(
            path,
            format!(
                "{name:?} is not a valid node name: lower-case letters, digits and '-' (not first or last), at most 50{hint}"
            ),
        );
    }
}

fn behaviour(path: &str, o: &Map<String, Value>, r: &mut Reader) -> Behaviour {
    r.unknown_keys(path, o, &NODE_KEYS);
    let key = |k: &str| join(path, k);
    // A specification the node parses, read here so that a bad one names its path.
    fn spec<T: std::str::FromStr<Err = BehaviourError>>(
        path: &str,
        v: &Value,
        r: &mut Reader,
    ) -> Option<T> {
        let s = r.string(path, v)?;
        r.check(path, s.parse::<T>().map_err(|e| e.to_string()))
    }
    Behaviour {
        latency: o.get("latency").and_then(|v| spec(&key("latency"), v, r)),
        error_rate: o.get("error_rate").and_then(|v| {
            let n = r.number(&key("error_rate"), v)?;
            let rate = ErrorRate::new(n)
                .map_err(|_| format!("{} is not a fraction from 0 to 1", short(v)));
            r.check(&key("error_rate"), rate)
        }),
        error_code: o
            .get("error_code")
            .and_then(|v| r.integer(&key("error_code"), v, 100, 599))
            .map(|n| n as u16),
        response_size: o
            .get("response_size")
            .and_then(|v| r.integer(&key("response_size"), v, 0, limits::MAX_RESPONSE_BYTES)),
        timeout: o
            .get("timeout")
            .and_then(|v| r.duration(&key("timeout"), v))
            .and_then(|d| r.check(&key("timeout"), limits::timeout(d))),
        call_mode: o
            .get("call_mode")
            .and_then(|v| spec(&key("call_mode"), v, r)),
    }
}

/// The most repeats of a test per arm: each is a whole test run.
pub const MAX_REPEAT: u64 = 100;

/// A `repeat` count, 1 to [`MAX_REPEAT`].
fn repeat(path: &str, v: &Value, r: &mut Reader) -> Option<u32> {
    r.integer(path, v, 1, MAX_REPEAT).map(|n| n as u32)
}

/// What every test takes from the top level unless it says otherwise.
struct TestDefaults<'a> {
    slo: &'a Slo,
    repeat: u32,
    namespace: &'a str,
}

fn tests(
    v: &Value,
    nodes: &BTreeMap<String, NodeSpec>,
    defaults: &TestDefaults<'_>,
    r: &mut Reader,
) -> Vec<LoadTest> {
    let Some(list) = r.array("load_tests", v) else {
        return Vec::new();
    };
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let path = index("load_tests", i);
        let Some(o) = r.object(&path, item) else {
            continue;
        };
        if let Some(test) = test(&path, o, nodes, defaults, r) {
            if !names.insert(test.name.clone()) {
                r.error(
                    &join(&path, "test_name"),
                    format!("{:?} is used by another test", test.name),
                );
            }
            out.push(test);
        }
    }
    out
}

/// One load test. Long on purpose: it reads the test's keys one after another, each
/// check beside the key it concerns, so every problem of a test is found in one pass.
fn test(
    path: &str,
    o: &Map<String, Value>,
    nodes: &BTreeMap<String, NodeSpec>,
    defaults: &TestDefaults<'_>,
    r: &mut Reader,
) -> Option<LoadTest> {
    let (global_slo, namespace) = (defaults.slo, defaults.namespace);
    let key = |k: &str| join(path, k);
    let unsupported: Vec<&str> = o
        .keys()
        .map(String::as_str)
        .filter(|k| FORTIO_UNSUPPORTED.contains(k))
        .collect();
    if !unsupported.is_empty() {
        r.warnings.push(format!(
            "{path}: Fortio options not supported by meshload (ignored): {}",
            unsupported.join(", ")
        ));
    }
    let other: Vec<&str> = o
        .keys()
        .map(String::as_str)
        .filter(|k| !TEST_KEYS.contains(k) && !FORTIO_UNSUPPORTED.contains(k))
        .collect();
    if !other.is_empty() {
        r.warnings.push(format!(
            "unknown keys at {path} (ignored): {}",
            other.join(", ")
        ));
    }
    let name = match o.get("test_name") {
        Some(v) => r.string(&key("test_name"), v).map(str::to_string),
        None => {
            r.error(&key("test_name"), "missing");
            None
        }
    };
    if let Some(n) = &name {
        let safe = !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\\', '\0']);
        if !safe {
            r.error(
                &key("test_name"),
                format!("{n:?} cannot name a results folder"),
            );
        }
    }
    let target = target(path, o, nodes, namespace, r);
    let qps = match o.get("qps") {
        Some(Value::String(s)) if s == "max" => Some(0.0),
        Some(v) => r
            .number(&key("qps"), v)
            .and_then(|q| r.check(&key("qps"), limits::qps(q))),
        None => Some(8.0),
    };
    let duration = match o.get("t") {
        Some(v) => r
            .duration(&key("t"), v)
            .and_then(|d| r.check(&key("t"), limits::duration(d))),
        None => Some(Duration::from_secs(5)),
    };
    let connections = match o.get("c") {
        Some(v) => r
            .integer(&key("c"), v, 1, limits::MAX_CONNECTIONS)
            .map(|c| c as u32),
        None => Some(4),
    };
    let requests = o
        .get("n")
        .and_then(|v| r.integer(&key("n"), v, 1, limits::MAX_REQUESTS));
    let flag = |r: &mut Reader, k: &str| {
        o.get(k)
            .and_then(|v| r.boolean(&key(k), v))
            .unwrap_or(false)
    };
    let (uniform, jitter, nocatchup) =
        (flag(r, "uniform"), flag(r, "jitter"), flag(r, "nocatchup"));
    let std_client = flag(r, "stdclient");
    let timeout = o
        .get("timeout")
        .and_then(|v| r.duration(&key("timeout"), v))
        .and_then(|d| r.check(&key("timeout"), limits::timeout(d)));
    let headers = o
        .get("headers")
        .map(|v| headers(&key("headers"), v, r))
        .unwrap_or_default();
    let payload = o
        .get("payload")
        .and_then(|v| r.string(&key("payload"), v))
        .filter(|p| {
            r.check(&key("payload"), limits::payload(p.len() as u64))
                .is_some()
        })
        .map(str::to_string);
    let labels = o
        .get("labels")
        .and_then(|v| r.string(&key("labels"), v))
        .unwrap_or("")
        .to_string();
    let own_slo = o
        .get("slo")
        .map(|v| crate::slo::parse(&key("slo"), v, r))
        .unwrap_or_default();
    let slo = global_slo.overlay(&own_slo);
    let search = o
        .get("search")
        .and_then(|v| crate::search::parse(&key("search"), v, &slo, r));
    let repeat = match o.get("repeat") {
        Some(v) => repeat(&key("repeat"), v, r),
        None => Some(defaults.repeat),
    };
    let (target, url, path_and_query) = target?;
    Some(LoadTest {
        name: name?,
        target,
        url,
        path: path_and_query,
        qps: qps.map(|q| if q == 0.0 { None } else { Some(q) })?,
        duration: duration?,
        connections: connections?,
        requests,
        uniform,
        jitter,
        nocatchup,
        std_client,
        timeout,
        headers,
        payload,
        labels,
        slo,
        search,
        repeat: repeat?,
    })
}

fn headers(path: &str, v: &Value, r: &mut Reader) -> Vec<String> {
    match v {
        Value::Array(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, h)| r.string(&index(path, i), h).map(str::to_string))
            .collect(),
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| r.string(&join(path, k), v).map(|v| format!("{k}: {v}")))
            .collect(),
        other => {
            r.error(
                path,
                format!(
                    "{} is not a list of \"Name: value\" or an object",
                    short(other)
                ),
            );
            Vec::new()
        }
    }
}

/// The node a test targets, its URL and path: from `url` (Kubernetes form) or `target`.
fn target(
    path: &str,
    o: &Map<String, Value>,
    nodes: &BTreeMap<String, NodeSpec>,
    namespace: &str,
    r: &mut Reader,
) -> Option<(String, String, String)> {
    match (o.get("url"), o.get("target")) {
        (Some(_), Some(_)) => {
            r.error(path, "give either url or target, not both");
            None
        }
        (None, None) => {
            r.error(
                &join(path, "url"),
                "missing: give the URL of a service (or target: a node name)",
            );
            None
        }
        (None, Some(t)) => {
            let key = join(path, "target");
            let name = r.string(&key, t)?;
            if !nodes.contains_key(name) {
                r.error(&key, format!("{name:?} names no node of backends_map"));
                return None;
            }
            let url = crate::service::service_url(name, namespace);
            Some((name.to_string(), url, "/".to_string()))
        }
        (Some(u), None) => {
            let key = join(path, "url");
            let url = r.string(&key, u)?;
            match node_of_url(url, nodes) {
                Ok((node, path_and_query)) => Some((node, url.to_string(), path_and_query)),
                Err(problem) => {
                    r.error(&key, format!("{url:?} {problem}"));
                    None
                }
            }
        }
    }
}

/// `http://service-<node>.<ns>.svc.cluster.local:9080/path` → (`node`, `/path`). The host's
/// first label may also be `node-<node>` or the node's own name.
pub fn node_of_url(
    url: &str,
    nodes: &BTreeMap<String, NodeSpec>,
) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or("is not an http:// URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let first = host.split('.').next().unwrap_or("");
    let candidates = [crate::service::node_of_name(first), Some(first)];
    candidates
        .into_iter()
        .flatten()
        .find(|c| nodes.contains_key(*c))
        .map(|n| (n.to_string(), path.to_string()))
        .ok_or_else(|| {
            format!(
                "names no node of backends_map (expected {})",
                crate::service::service_url("<node>", "<namespace>")
            )
        })
}

/// `"mesh": "envoy"`, `"mesh": "none,envoy"` or `"mesh": ["none", "envoy"]`.
fn meshes(v: &Value, r: &mut Reader) -> Vec<crate::Mesh> {
    let names: Vec<(String, String)> = match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let path = format!("mesh[{i}]");
                r.string(&path, item).map(|s| (path, s.to_string()))
            })
            .collect(),
        _ => match r.string("mesh", v) {
            Some(s) => s
                .split(',')
                .map(|m| ("mesh".to_string(), m.trim().to_string()))
                .collect(),
            None => Vec::new(),
        },
    };
    let mut out = Vec::new();
    // A mesh named twice is two arms of the same mesh (an A/A comparison).
    for (path, name) in names {
        if let Some(mesh) = r.check(&path, name.parse::<crate::Mesh>()) {
            out.push(mesh);
        }
    }
    out
}

fn metrics(v: &Value, r: &mut Reader) -> Vec<(String, String)> {
    let Some(map) = r.object("metrics", v) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, q) in map {
        let path = join("metrics", name);
        let safe = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && name != "."
            && name != "..";
        if !safe {
            r.error(
                &path,
                format!("{name:?} cannot name a file (letters, digits, '_', '-', '.')"),
            );
        }
        let Some(query) = r.string(&path, q) else {
            continue;
        };
        if let Err(e) = crate::query_limits::check(query) {
            r.error(&path, format!("{} is refused: {e}", short(q)));
            continue;
        }
        if let Err(e) = crate::query_limits::parse(query) {
            r.error(&path, format!("{} does not parse: {e}", short(q)));
            continue;
        }
        out.push((name.clone(), query.to_string()));
    }
    out
}
