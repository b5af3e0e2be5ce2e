//! `meshload run --backend k8s` against a mocked API server (tower-test): the namespace
//! guard, apply, rollout wait (and its timeout), the port-forward request to the load
//! generator, and the deletion of everything the run created, also when the run is
//! interrupted or fails. No cluster is needed.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use meshload_config::{Config, LoadTest};
use meshload_k8s::backend::{K8sBackend, K8sSettings};
use meshload_k8s::cluster::{Cluster, ServiceRef};
use meshload_k8s::{LoadGen, Mesh, RenderOptions};
use meshload_loadgen::Live;
use meshload_runner::{Observer, RunError, RunSettings, StopSignal, TestSummary};
use serde_json::{Value, json};
use tower_test::mock;

/// One request the fake API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    upgrade: Option<String>,
}

type Seens = Arc<Mutex<Vec<Seen>>>;

/// A mocked API server answering every request with `route(method, path, query)`.
fn fake_cluster(
    route: impl Fn(&str, &str, &str) -> (u16, Value) + Send + 'static,
) -> (Cluster, Seens) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seens = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let s = Seen {
                method: request.method().to_string(),
                path: request.uri().path().to_string(),
                query: request.uri().query().unwrap_or("").to_string(),
                upgrade: request
                    .headers()
                    .get(http::header::UPGRADE)
                    .map(|v| v.to_str().unwrap().to_string()),
            };
            let (status, body) = route(&s.method, &s.path, &s.query);
            log.lock().unwrap().push(s);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string().into_bytes()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Cluster::new(Client::new(service, "default")), seen)
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn deployment(name: &str, ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "perf"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {}},
           "status": {"readyReplicas": ready}})
}

/// The run's two deployments (node-0 and the load generator), `ready` of 1 replica ready.
fn deployments(ready: i32) -> Value {
    list(
        "DeploymentList",
        vec![
            deployment("node-0", ready),
            deployment("meshload-loadgen", ready),
        ],
    )
}

fn pod(name: &str, app: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "perf", "labels": {"app": app}},
           "spec": {"containers": [{"name": "app", "ports": [{"name": "web", "containerPort": 9091}]}]},
           "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items})
}

/// What a cluster answers whatever the test: the version, a free namespace, applies
/// (echoed), the run's namespace when cleanup lists them, deletes, and no App Mesh CRD.
fn common(method: &str, path: &str, query: &str) -> Option<(u16, Value)> {
    Some(match (method, path) {
        ("GET", "/version") => (
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": ""}),
        ),
        ("GET", "/api/v1/namespaces/perf") => not_found(),
        ("PATCH", _) => (
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        ),
        ("GET", "/api/v1/namespaces") if query.contains("labelSelector") => (
            200,
            list(
                "NamespaceList",
                vec![
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "perf"}}),
                ],
            ),
        ),
        ("DELETE", "/api/v1/namespaces/perf") => (
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "perf"}}),
        ),
        ("GET", "/apis/appmesh.k8s.aws/v1beta2/meshes") => not_found(),
        _ => return None,
    })
}

fn config() -> Config {
    let mut config = meshload_config::from_str(
        r#"{"backends_map": {"0": []}, "ConnectivityCheckPerURL": 0,
            "load_tests": [{"test_name": "t1", "target": "0", "qps": 10, "t": "1s", "c": 1}]}"#,
        false,
        "t",
    )
    .unwrap()
    .config;
    config.namespace = "perf".into();
    config
}

fn settings(timeout: Duration) -> K8sSettings {
    K8sSettings {
        render: RenderOptions {
            mesh: Mesh::Istio,
            namespace: "perf".into(),
            image: "meshload:test".into(),
            loadgen: LoadGen::Meshload,
            run_id: "r1".into(),
            resources: Default::default(),
            waypoint: false,
            linkerd_native_sidecar: true,
        },
        rollout_timeout: timeout,
        prometheus: None,
    }
}

struct Quiet;

impl Observer for Quiet {
    fn phase(&self, _: &str) {}
    fn test_started(
        &self,
        _: usize,
        _: usize,
        _: &LoadTest,
        _: &meshload_runner::run::SeriesPosition,
        _: Option<Live>,
    ) {
    }
    fn test_finished(&self, _: &TestSummary) {}
}

fn run_settings(dir: &std::path::Path) -> RunSettings {
    RunSettings {
        exe: "meshload".into(),
        store: meshload_store::ResultStore::open(dir.to_str().unwrap()).unwrap(),
        sleep_between_tests: Duration::ZERO,
        repeat: None,
        loadgen_cpus: Vec::new(),
        saturation: Default::default(),
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshload-k8s-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn deleted_namespace(seen: &Seens) -> bool {
    let seen = seen.lock().unwrap();
    let listed = seen.iter().any(|s| {
        s.method == "GET"
            && s.path == "/api/v1/namespaces"
            && s.query.contains("meshload.io%2Frun%3Dr1")
    });
    let deleted = seen
        .iter()
        .any(|s| s.method == "DELETE" && s.path == "/api/v1/namespaces/perf");
    listed && deleted
}

#[tokio::test]
async fn an_interrupted_run_still_deletes_what_it_created() {
    // Deployments never become ready; Ctrl-C comes during the rollout wait.
    let (cluster, seen) = fake_cluster(|m, p, q| {
        common(m, p, q).unwrap_or_else(|| match p {
            "/apis/apps/v1/namespaces/perf/deployments" => (200, deployments(0)),
            _ => not_found(),
        })
    });
    let mut backend = K8sBackend::new(cluster, config(), settings(Duration::from_secs(600)));
    let dir = temp_dir("interrupted");
    let stop = StopSignal::new(tokio::time::sleep(Duration::from_millis(1500)));
    let outcome =
        meshload_runner::run(&config(), &mut backend, &run_settings(&dir), &Quiet, stop).await;
    assert!(matches!(outcome, Err(RunError::Interrupted)), "{outcome:?}");
    let applied = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "PATCH")
        .count();
    assert_eq!(
        applied,
        meshload_k8s::render(&config(), &settings(Duration::ZERO).render).len()
    );
    assert!(deleted_namespace(&seen), "{:?}", seen.lock().unwrap());
    let cleanup = backend.cleanup().unwrap();
    assert_eq!(cleanup.deleted, vec!["namespace/perf".to_string()]);
    assert_eq!(cleanup.error, None);
}

#[tokio::test]
async fn a_rollout_timeout_fails_the_run_names_the_pod_and_deletes() {
    let (cluster, seen) = fake_cluster(|m, p, q| {
        common(m, p, q).unwrap_or_else(|| match p {
            "/apis/apps/v1/namespaces/perf/deployments" => (200, deployments(0)),
            "/api/v1/namespaces/perf/pods" => (
                200,
                list("PodList", vec![pod("node-0-abc-1", "node-0", false)]),
            ),
            "/api/v1/namespaces/perf/events" => (
                200,
                list(
                    "EventList",
                    vec![json!({"metadata": {"name": "e1"}, "involvedObject": {}, "reason": "Failed",
                               "message": "Failed to pull image \"meshload:test\"", "lastTimestamp": "2026-11-27T10:00:00Z"})],
                ),
            ),
            _ => not_found(),
        })
    });
    let mut backend = K8sBackend::new(cluster, config(), settings(Duration::from_secs(1)));
    let dir = temp_dir("timeout");
    let stop = StopSignal::new(std::future::pending());
    let outcome =
        meshload_runner::run(&config(), &mut backend, &run_settings(&dir), &Quiet, stop).await;
    let Err(RunError::Backend { source, .. }) = outcome else {
        panic!("{outcome:?}");
    };
    let message = meshload_runner::error_chain(&*source);
    assert!(message.contains("not ready after 1s"), "{message}");
    assert!(message.contains("pod node-0-abc-1 not ready"), "{message}");
    assert!(message.contains("Failed to pull image"), "{message}");
    assert!(deleted_namespace(&seen));
}

#[tokio::test]
async fn a_namespace_that_is_not_meshloads_is_refused_and_left_alone() {
    let (cluster, seen) = fake_cluster(|m, p, q| match (m, p) {
        ("GET", "/api/v1/namespaces/perf") => (
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "perf", "labels": {"team": "payments"}}}),
        ),
        _ => common(m, p, q).unwrap_or_else(not_found),
    });
    let mut backend = K8sBackend::new(cluster, config(), settings(Duration::from_secs(5)));
    let dir = temp_dir("foreign");
    let stop = StopSignal::new(std::future::pending());
    let outcome =
        meshload_runner::run(&config(), &mut backend, &run_settings(&dir), &Quiet, stop).await;
    let Err(RunError::Backend { source, .. }) = outcome else {
        panic!("{outcome:?}");
    };
    let message = meshload_runner::error_chain(&*source);
    assert!(message.contains("meshload did not create it"), "{message}");
    let seen = seen.lock().unwrap();
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PATCH" || s.method == "DELETE"),
        "nothing applied or deleted: {seen:?}"
    );
    assert_eq!(backend.cleanup(), None);
}

#[tokio::test]
async fn the_load_generator_is_port_forwarded_from_its_ready_pod() {
    let (cluster, seen) = fake_cluster(|m, p, q| {
        common(m, p, q).unwrap_or_else(|| match p {
            "/apis/apps/v1/namespaces/perf/deployments" => (200, deployments(1)),
            "/api/v1/namespaces/perf/pods" => (
                200,
                list(
                    "PodList",
                    vec![
                        pod("meshload-loadgen-old", "meshload-loadgen", false),
                        pod("meshload-loadgen-new", "meshload-loadgen", true),
                    ],
                ),
            ),
            // The kubelet is unreachable: the forward is refused.
            p if p.ends_with("/portforward") => (
                500,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "error dialing backend"}),
            ),
            _ => not_found(),
        })
    });
    let mut config = config();
    config.connectivity_checks = 3;
    let mut backend = K8sBackend::new(cluster, config.clone(), settings(Duration::from_secs(5)));
    let dir = temp_dir("forward");
    let stop = StopSignal::new(std::future::pending());
    let outcome =
        meshload_runner::run(&config, &mut backend, &run_settings(&dir), &Quiet, stop).await;
    // The connectivity check goes through the forward, which the API server refuses.
    let Err(RunError::Check { node, source }) = outcome else {
        panic!("{outcome:?}");
    };
    let reason = meshload_runner::error_chain(&*source);
    assert_eq!(node, "0");
    assert!(
        reason.contains("the load generator (perf/meshload-loadgen-new:8080"),
        "{reason}"
    );
    let seen = seen.lock().unwrap();
    let forward = seen
        .iter()
        .find(|s| s.path.ends_with("/portforward"))
        .expect("a port-forward request");
    assert_eq!(
        forward.path,
        "/api/v1/namespaces/perf/pods/meshload-loadgen-new/portforward"
    );
    assert!(forward.query.ends_with("ports=8080"), "{}", forward.query);
    assert_eq!(forward.upgrade.as_deref(), Some("websocket"));
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.path == "/api/v1/namespaces/perf")
    );
}

#[tokio::test]
async fn a_prometheus_service_resolves_to_a_ready_pod_and_its_target_port() {
    let (cluster, _seen) = fake_cluster(|_, p, q| match p {
        "/api/v1/namespaces/appmesh-system/services/appmesh-prometheus" => (
            200,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "appmesh-prometheus"},
                   "spec": {"selector": {"app": "prom"}, "ports": [{"port": 9090, "targetPort": "web"}]}}),
        ),
        "/api/v1/namespaces/appmesh-system/pods" if q.contains("labelSelector=app%3Dprom") => {
            (200, list("PodList", vec![pod("prom-0", "prom", true)]))
        }
        _ => not_found(),
    });
    let service: ServiceRef = "appmesh-system/appmesh-prometheus:9090".parse().unwrap();
    let (pod, port) = cluster.service_backend(&service).await.unwrap();
    assert_eq!((pod.as_str(), port), ("prom-0", 9091));
    let missing: ServiceRef = "appmesh-system/nothing:9090".parse().unwrap();
    let err = cluster.service_backend(&missing).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("get service appmesh-system/nothing:9090"),
        "{err}"
    );
    for bad in [
        "prometheus:9090",
        "ns/prometheus",
        "ns/prometheus:http",
        "/p:1",
    ] {
        let err = bad.parse::<ServiceRef>().unwrap_err();
        assert!(err.contains("NAMESPACE/SERVICE:PORT"), "{err}");
    }
}

#[test]
fn loads_become_the_seed_drivers_string_parameters() {
    let options = meshload_loadgen::LoadOptions {
        url: "http://service-0.perf.svc.cluster.local:9080/".into(),
        qps: 50.0,
        connections: 4,
        duration: Some(Duration::from_secs(10)),
        headers: vec!["x-a: 1".into()],
        jitter: true,
        std_client: true,
        ..Default::default()
    };
    let body = meshload_k8s::backend::rest_body(&options);
    assert_eq!(body["url"], "http://service-0.perf.svc.cluster.local:9080/");
    assert_eq!(body["qps"], "50");
    assert_eq!(body["c"], "4");
    assert_eq!(body["t"], "10000ms");
    assert_eq!(body["jitter"], "on");
    assert_eq!(body["stdclient"], "on");
    assert_eq!(body["headers"], json!(["x-a: 1"]));
    assert!(body.get("n").is_none() && body.get("uniform").is_none());
    // The load generator's own parser reads them back to the same load.
    let params = meshload_loadgen::rest::params("", body.to_string().as_bytes()).unwrap();
    let back = meshload_loadgen::rest::options(&params).unwrap();
    assert_eq!(back.qps, 50.0);
    assert_eq!(back.connections, 4);
    assert_eq!(back.duration, Some(Duration::from_secs(10)));
    assert!(back.jitter && !back.uniform && back.std_client);
    assert_eq!(back.headers, vec!["x-a: 1".to_string()]);
}

#[tokio::test]
async fn restarts_and_oom_kills_during_a_test_are_reported() {
    // Up with every container at 0 restarts; then node-0's app was OOM-killed twice.
    let oom = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after = oom.clone();
    let (cluster, _seen) = fake_cluster(move |m, p, q| {
        common(m, p, q).unwrap_or_else(|| match p {
            "/apis/apps/v1/namespaces/perf/deployments" => (200, deployments(1)),
            "/api/v1/namespaces/perf/pods" => {
                let restarted = after.load(std::sync::atomic::Ordering::SeqCst);
                let mut node = pod("node-0-abc-1", "node-0", true);
                node["status"]["containerStatuses"] = json!([{
                    "name": "app", "ready": true, "image": "", "imageID": "",
                    "restartCount": if restarted { 2 } else { 0 },
                    "lastState": if restarted { json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}}) } else { json!({}) },
                }]);
                (200, list("PodList", vec![node, pod("meshload-loadgen-x", "meshload-loadgen", true)]))
            }
            _ => not_found(),
        })
    });
    let mut backend = K8sBackend::new(cluster, config(), settings(Duration::from_secs(5)));
    let plan = meshload_runner::plan::Plan::new(&config(), "r1");
    meshload_runner::Backend::up(&mut backend, &plan)
        .await
        .unwrap();
    assert!(
        meshload_runner::Backend::exited(&mut backend)
            .await
            .is_empty()
    );
    oom.store(true, std::sync::atomic::Ordering::SeqCst);
    let exits = meshload_runner::Backend::exited(&mut backend).await;
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0].pod, "node-0-abc-1");
    assert_eq!(
        exits[0].status,
        "container app restarted 2 time(s), last: OOMKilled (exit code 137)"
    );
    // Reported once.
    assert!(
        meshload_runner::Backend::exited(&mut backend)
            .await
            .is_empty()
    );
    meshload_runner::Backend::down(&mut backend).await;
}

#[test]
fn pods_that_go_away_are_reported() {
    use meshload_k8s::cluster::Restarts;
    let mut before = Restarts::new();
    before.insert(("p1".into(), "app".into()), (0, String::new()));
    before.insert(("p1".into(), "istio-proxy".into()), (0, String::new()));
    before.insert(("p2".into(), "app".into()), (1, String::new()));
    let mut now = Restarts::new();
    now.insert(("p2".into(), "app".into()), (1, String::new()));
    now.insert(("p3".into(), "app".into()), (0, String::new()));
    let exits = meshload_k8s::backend::restarts_since(&before, &now);
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(
        (exits[0].pod.as_str(), exits[0].status.as_str()),
        ("p1", "gone (deleted or evicted)")
    );
}

/// A previous run's namespace, being deleted.
fn terminating_namespace() -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "perf", "deletionTimestamp": "2026-11-27T10:00:00Z",
                            "labels": {"app.kubernetes.io/managed-by": "meshload", "meshload.io/run": "r0"}}}),
    )
}

#[tokio::test]
async fn a_previous_runs_namespace_still_being_deleted_is_waited_for() {
    let looks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = looks.clone();
    let (cluster, seen) = fake_cluster(move |m, p, q| match (m, p) {
        ("GET", "/api/v1/namespaces/perf") => {
            // Gone at the third look.
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                terminating_namespace()
            } else {
                not_found()
            }
        }
        ("GET", "/apis/apps/v1/namespaces/perf/deployments") => (200, deployments(1)),
        ("GET", "/api/v1/namespaces/perf/pods") => (
            200,
            list(
                "PodList",
                vec![pod("meshload-loadgen-x", "meshload-loadgen", true)],
            ),
        ),
        _ => common(m, p, q).unwrap_or_else(not_found),
    });
    let phases = Arc::new(Mutex::new(Vec::new()));
    let shown = phases.clone();
    let mut backend = K8sBackend::new(cluster, config(), settings(Duration::from_secs(30)));
    backend.on_phase(move |t| shown.lock().unwrap().push(t.to_string()));
    let plan = meshload_runner::plan::Plan::new(&config(), "r1");
    meshload_runner::Backend::up(&mut backend, &plan)
        .await
        .unwrap();
    assert!(
        phases
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == "waiting for namespace perf to be deleted (a previous run's)"),
        "{phases:?}"
    );
    let seen = seen.lock().unwrap();
    let last_look = seen
        .iter()
        .rposition(|s| s.path == "/api/v1/namespaces/perf" && s.method == "GET")
        .unwrap();
    let first_apply = seen.iter().position(|s| s.method == "PATCH").unwrap();
    assert!(
        first_apply > last_look,
        "applied only once the old namespace was gone"
    );
    assert_eq!(looks.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_namespace_that_stays_terminating_fails_the_run_after_the_timeout() {
    let (cluster, seen) = fake_cluster(|m, p, q| match (m, p) {
        ("GET", "/api/v1/namespaces/perf") => terminating_namespace(),
        _ => common(m, p, q).unwrap_or_else(not_found),
    });
    let mut backend = K8sBackend::new(cluster, config(), settings(Duration::from_secs(1)));
    let plan = meshload_runner::plan::Plan::new(&config(), "r1");
    let Err(RunError::Backend { source, .. }) =
        meshload_runner::Backend::up(&mut backend, &plan).await
    else {
        panic!("the run must fail");
    };
    let message = meshload_runner::error_chain(&*source);
    assert!(
        message.contains("still being deleted after 1s"),
        "{message}"
    );
    assert!(!seen.lock().unwrap().iter().any(|s| s.method == "PATCH"));
}
