//! `meshload run` and `meshload validate` end to end: real node processes on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{StderrLines, bin, json, run, run_dir, run_ok, temp_dir, write_config};
use serde_json::Value;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Processes (other than zombies) started by the run process `parent` (they carry its pid
/// in MESHLOAD_PARENT_PID).
fn children_of(parent: u32) -> Vec<u32> {
    let needle = format!("MESHLOAD_PARENT_PID={parent}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&environ).contains(&needle)
        })
        .collect()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts `meshload run` in the background and waits until its first test is running.
fn start_run(config: &Path, store: &Path) -> (Child, StderrLines) {
    common::run_until(config, store, &["--sleep-between-tests", "0"], "test 1/")
}

/// Waits until one of `parent`'s nodes has answered `n` requests.
fn until_a_node_served(parent: u32, n: f64) {
    common::wait_for(&format!("a node answered {n} requests"), || {
        children_of(parent).into_iter().any(|pid| {
            common::listening_ports(pid)
                .into_iter()
                .any(|port| common::node_served(([127, 0, 0, 1], port).into()) >= n)
        })
    });
}

#[test]
fn the_quickstart_runs_and_stores_every_file_with_data() {
    let store = temp_dir("quickstart");
    let config = examples().join("quickstart.json");
    let out = run(
        &[
            "run",
            "--sleep-between-tests",
            "0",
            "--store",
            store.to_str().unwrap(),
            config.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for test in ["quickstart-qps200", "quickstart-qps1000"] {
        assert!(stdout.contains(test), "{stdout}");
        let dir = run_dir(&store, test);
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert!(
            name.len() == 14 && name.chars().all(|c| c.is_ascii_digit()),
            "{name}"
        );
        let fortio = json(&dir.join("fortio.json"));
        assert!(fortio["ActualQPS"].as_f64().unwrap() > 100.0);
        assert_eq!(
            json(&dir.join("config.json")),
            json(&config),
            "the config as run"
        );
        let meta = json(&dir.join("metadata.json"));
        assert_eq!(meta["status"], "complete");
        assert_eq!(meta["backend"], "local");
        for metric in [
            "memory_MB_by_pod",
            "memory_MB_by_replica_set",
            "cpu_cores_by_pod",
            "request_rate_by_node_and_code",
            "p99_seconds_by_node",
        ] {
            let csv = std::fs::read_to_string(dir.join(format!("{metric}.csv"))).unwrap();
            assert!(csv.lines().count() > 5, "{metric}.csv has data:\n{csv}");
            assert!(csv.starts_with("metric."), "{metric}.csv header: {csv}");
        }
        assert!(
            std::fs::read_to_string(dir.join("per_second.csv"))
                .unwrap()
                .lines()
                .count()
                >= 10
        );
        // The stored samples answer queries later.
        let q = run(
            &[
                "query",
                "--run",
                dir.to_str().unwrap(),
                "--format",
                "json",
                "count(up == 1)",
            ],
            &[],
        );
        let answer: Value = serde_json::from_slice(&q.stdout).unwrap();
        assert_eq!(
            answer["data"]["result"][0]["values"][0][1], "6",
            "six replicas were up: {answer}"
        );
    }
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn the_seed_config_runs_locally_with_its_envoy_queries_empty() {
    let store = temp_dir("seed");
    let config = examples().join("seed.json");
    let out = run_ok(&config, &store);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = run_dir(&store, "experiment16-qps50000-t10-c400");
    let meta = json(&dir.join("metadata.json"));
    assert_eq!(
        meta["metrics"]["envoy_memory_MB_by_replica_set"]["result"],
        "no data"
    );
    assert!(
        stderr.contains("metric envoy_memory_MB_by_replica_set: no data"),
        "{stderr}"
    );
    let csv = std::fs::read_to_string(dir.join("envoy_memory_MB_by_replica_set.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1, "a header and no rows: {csv}");
    let fortio = json(&dir.join("fortio.json"));
    assert!(
        fortio["ActualQPS"].as_f64().unwrap() > 1000.0,
        "{}",
        fortio["ActualQPS"]
    );
    assert_eq!(fortio["NumThreads"], 400);
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn replicas_receive_balanced_traffic() {
    let dir = temp_dir("replicas");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": ["1"]}, "nodes": {"0": {"replicas": 3}, "1": {"replicas": 2}},
            "ConnectivityCheckPerURL": 0,
            "load_tests": [{"test_name": "balance", "target": "0", "qps": 300, "t": "2s", "c": 6}]}"#,
    );
    let store = dir.join("results");
    run_ok(&config, &store);
    let run_path = run_dir(&store, "balance");
    let q = r#"sum by (node, pod) (max_over_time(meshload_node_requests_total{code="200"}[1h]))"#;
    let end = json(&run_path.join("metadata.json"))["end_ms"]
        .as_f64()
        .unwrap()
        / 1000.0
        + 2.0;
    let out = run(
        &[
            "query",
            "--run",
            run_path.to_str().unwrap(),
            "--at",
            &end.to_string(),
            "--format",
            "json",
            q,
        ],
        &[],
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts: Vec<(String, f64)> = answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["node"].as_str().unwrap().to_string(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    for (node, replicas) in [("0", 3), ("1", 2)] {
        let per_pod: Vec<f64> = counts
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(per_pod.len(), replicas, "{counts:?}");
        let total: f64 = per_pod.iter().sum();
        assert!(total >= 590.0, "node {node} served {total}: {counts:?}");
        for c in &per_pod {
            let share = c / total;
            assert!(
                (share - 1.0 / replicas as f64).abs() < 0.1,
                "node {node}: {per_pod:?}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configs_are_rejected_with_paths_and_nothing_starts() {
    let dir = temp_dir("bad");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": ["1"], "1": ["0"]},
            "load_tests": [{"test_name": "x", "url": "http://service-7.ns.svc.cluster.local:9080/", "qps": "fast", "t": "10 s"}],
            "metrics": {"m": "sum(rate(x[5m]) by"}}"#,
    );
    let store = dir.join("results");
    for cmd in ["run", "validate"] {
        let mut args = vec![cmd, config.to_str().unwrap()];
        if cmd == "run" {
            args.extend(["--store", store.to_str().unwrap()]);
        }
        let out = run(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        for path in [
            "backends_map: cycle 0 -> 1 -> 0",
            "load_tests[0].url",
            "load_tests[0].qps: \"fast\"",
            "load_tests[0].t: \"10 s\"",
            "metrics.m:",
        ] {
            assert!(stderr.contains(path), "{path} missing in {stderr}");
        }
    }
    assert!(!store.exists(), "nothing was started or stored");
    let out = run(
        &[
            "validate",
            examples().join("quickstart.json").to_str().unwrap(),
        ],
        &[],
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        plan.contains("Topology: 5 nodes (6 replicas), 5 edges, depth 2"),
        "{plan}"
    );
    assert!(
        plan.contains("one request to frontend causes 5 backend requests"),
        "{plan}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const LONG_TEST: &str = r#"{"backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 5,
    "load_tests": [{"test_name": "long", "target": "0", "qps": 100, "t": "60s", "c": 2},
                   {"test_name": "never", "target": "0", "qps": 100, "t": "60s", "c": 2}]}"#;

#[test]
fn ctrl_c_stores_an_interrupted_run_and_leaves_no_process() {
    let dir = temp_dir("ctrlc");
    let config = write_config(&dir, LONG_TEST);
    let store = dir.join("results");
    let (mut child, _lines) = start_run(&config, &store);
    let pid = child.id();
    assert_eq!(children_of(pid).len(), 2, "two nodes run");
    // Under way: the target has answered its 5 connectivity checks and 55 of the load.
    until_a_node_served(pid, 60.0);
    assert!(
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        wait_until(Duration::from_secs(3), || children_of(pid).is_empty()),
        "nodes left: {:?}",
        children_of(pid)
    );
    let meta = json(&run_dir(&store, "long").join("metadata.json"));
    assert_eq!(meta["status"], "interrupted");
    let requests = meta["summary"]["requests"].as_u64().unwrap();
    assert!(
        (40..=300).contains(&requests),
        "{requests} requests, interrupted once 55 had been answered"
    );
    assert!(!store.join("never").exists(), "the next test did not start");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn killing_meshload_takes_its_nodes_with_it() {
    let dir = temp_dir("kill");
    let config = write_config(&dir, LONG_TEST);
    let (mut child, _lines) = start_run(&config, &dir.join("results"));
    let pid = child.id();
    assert_eq!(children_of(pid).len(), 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || children_of(pid).is_empty()),
        "orphans: {:?}",
        children_of(pid)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_node_that_dies_mid_test_is_recorded_and_the_run_goes_on() {
    let dir = temp_dir("dies");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 5,
            "load_tests": [{"test_name": "dies", "target": "0", "qps": 100, "t": "3s", "c": 2},
                           {"test_name": "after", "target": "0", "qps": 100, "t": "1s", "c": 2}]}"#,
    );
    let store = dir.join("results");
    let (mut child, _lines) = start_run(&config, &store);
    let leaf = children_of(child.id())
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|a| a == b"1")
        })
        .expect("node 1 runs");
    // Local nodes run the node-only binary built beside meshload.
    let exe = std::fs::read_link(format!("/proc/{leaf}/exe")).unwrap();
    assert_eq!(exe.file_name().unwrap(), "meshload-node", "{exe:?}");
    // Mid-test: the leaf has answered its 5 connectivity checks and 15 calls of the load.
    let port = common::listening_ports(leaf)[0];
    common::wait_for("node 1 answered the load", || {
        common::node_served(([127, 0, 0, 1], port).into()) >= 20.0
    });
    assert!(
        Command::new("kill")
            .args(["-KILL", &leaf.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let meta = json(&run_dir(&store, "dies").join("metadata.json"));
    let exits = meta["node_exits"].as_array().unwrap();
    assert_eq!(exits.len(), 1, "{meta}");
    assert!(
        exits[0]["pod"].as_str().unwrap().starts_with("node-1-"),
        "{exits:?}"
    );
    assert!(
        meta["summary"]["errors"].as_u64().unwrap() > 50,
        "node 0 answered 500 after node 1 died"
    );
    // The next test ran without it: recorded there too.
    let after = json(&run_dir(&store, "after").join("metadata.json"));
    let exits = after["node_exits"].to_string();
    assert!(
        exits.contains("node-1-") && exits.contains("before this test"),
        "{exits}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missed_slo_exits_1_and_names_the_figures() {
    let dir = temp_dir("slo");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": []}, "nodes": {"0": {"latency": "5ms"}}, "ConnectivityCheckPerURL": 1,
            "slo": {"p99_ms": 1},
            "load_tests": [{"test_name": "slo", "target": "0", "qps": 50, "t": "1s", "c": 1}]}"#,
    );
    let store = dir.join("results");
    let out = run(
        &[
            "run",
            "--store",
            store.to_str().unwrap(),
            "--json",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failure = summary[0]["slo_failures"][0].as_str().unwrap();
    assert!(
        failure.starts_with("p99 response time") && failure.ends_with("> 1 ms"),
        "{failure}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prometheus_spawn_answers_the_metric_queries() {
    let dir = temp_dir("spawn");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 5, "prometheus": "spawn", "metrics_step": "1s",
            "load_tests": [{"test_name": "spawned", "target": "0", "qps": 200, "t": "4s", "c": 2}],
            "metrics": {"rate_by_node": "sum(rate(meshload_node_requests_total{code=\"200\"}[2s])) by (node)",
                        "memory_MB_by_pod": "sum(container_memory_working_set_bytes{container=\"app\"}) by (pod) / (1024*1024)"}}"#,
    );
    let store = dir.join("results");
    let child = bin()
        .args([
            "run",
            "--store",
            store.to_str().unwrap(),
            config.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_path = run_dir(&store, "spawned");
    let meta = json(&run_path.join("metadata.json"));
    assert!(
        meta["prometheus"]
            .as_str()
            .unwrap()
            .starts_with("spawn: http://127.0.0.1:"),
        "{meta}"
    );
    let csv = std::fs::read_to_string(run_path.join("rate_by_node.csv")).unwrap();
    let rates: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(rates.len() >= 4, "{csv}");
    assert!(
        rates.iter().any(|r| (150.0..250.0).contains(r)),
        "about 200 req/s per node: {csv}"
    );
    let memory = std::fs::read_to_string(run_path.join("memory_MB_by_pod.csv")).unwrap();
    assert!(
        memory.contains("node-0-") && memory.contains("node-1-"),
        "{memory}"
    );
    // Prometheus went with the run.
    let marker = format!("meshload-prometheus-{pid}");
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        });
    assert!(!left, "a prometheus process outlived the run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_yaml_config_with_a_short_test_gets_metric_data() {
    // A 2 s test with 1 s scrapes and steps: the queries' last step follows the final
    // scrape, so even a short window has samples to answer with.
    let dir = temp_dir("yaml");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "backends_map:\n  web: [api]\n  api: []\nConnectivityCheckPerURL: 2\nmetrics_step: 1s\n\
         load_tests:\n  - {test_name: short, target: web, qps: 100, t: 2s, c: 2}\n\
         metrics:\n  rate: sum(rate(meshload_node_requests_total[2s])) by (node)\n",
    )
    .unwrap();
    let store = dir.join("results");
    run_ok(&config, &store);
    let csv = std::fs::read_to_string(run_dir(&store, "short").join("rate.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("web,")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("api,")), "{csv}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritable_store_and_an_amplification_bomb_are_refused_before_anything_starts() {
    let dir = temp_dir("refused");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": []}, "store": "/proc/meshload-cannot-write",
            "load_tests": [{"test_name": "t", "target": "0", "t": "1s"}]}"#,
    );
    let out = run(&["run", config.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write /proc/meshload-cannot-write"),
        "{stderr}"
    );
    assert!(!stderr.contains("starting"), "nothing may start: {stderr}");
    // 70 layers, each node calling both nodes of the next: 2^71 requests saturate.
    let mut map = serde_json::Map::new();
    for layer in 0..70 {
        for i in 0..2 {
            map.insert(
                format!("n{layer}-{i}"),
                serde_json::json!([format!("n{}-0", layer + 1), format!("n{}-1", layer + 1)]),
            );
        }
    }
    let bomb = write_config(
        &dir,
        &serde_json::json!({ "backends_map": map }).to_string(),
    );
    let out = run(&["validate", bomb.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "one request to node \"n0-0\" causes more than 18446744073709551614 backend requests"
        ),
        "{stderr}"
    );
    let out = run(
        &[
            "validate",
            "--max-amplification",
            "18446744073709551615",
            bomb.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_during_a_slow_metric_query_stops_the_run_and_keeps_the_test() {
    let dir = temp_dir("slowquery");
    // Each step of this query evaluates a 900,000-step subquery of a join, over twenty
    // steps: about 50 s in a debug build, far longer than the test.
    let slow = "count_over_time((sum by (pod) (rate(container_cpu_usage_seconds_total[1m])) * on(pod) group_left() sum by (pod) (rate(container_memory_working_set_bytes[1m])))[1h:4ms])";
    let config = write_config(
        &dir,
        &serde_json::json!({
            "backends_map": {"0": []}, "ConnectivityCheckPerURL": 0, "metrics_step": "100ms",
            "metrics": {"slow": slow, "fast": "up"},
            "load_tests": [{"test_name": "q", "target": "0", "qps": 20, "t": "2s", "c": 1},
                           {"test_name": "never", "target": "0", "qps": 20, "t": "1s", "c": 1}]
        })
        .to_string(),
    );
    let store = dir.join("results");
    let (mut child, mut lines) = start_run(&config, &store);
    let pid = child.id();
    // Whether the signal lands just before the slow query or while it runs, it is cut.
    lines.wait_for("evaluating 2 metric(s)");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let stopped_at = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert!(
        stopped_at.elapsed() < Duration::from_secs(8),
        "took {:?} to stop",
        stopped_at.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    assert!(wait_until(Duration::from_secs(3), || children_of(pid).is_empty()));
    let meta = json(&run_dir(&store, "q").join("metadata.json"));
    // Stopped while its metrics were evaluated: interrupted, as the run is (130).
    assert_eq!(meta["status"], "interrupted");
    let slow_note = meta["metrics"]["slow"]["result"].to_string();
    assert!(slow_note.contains("query stopped"), "{meta}");
    assert!(!store.join("never").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
