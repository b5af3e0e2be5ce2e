//! `meshload run --backend k8s` end to end, as a user runs it, against a fake cluster on
//! loopback: an HTTP server that answers the Kubernetes API calls meshload makes (from a
//! kubeconfig, through kube-rs) and serves real port-forwards (the WebSocket
//! `v4.channel.k8s.io` protocol) to real processes standing in for the cluster's pods: a
//! `meshload serve` load generator, a `meshload node` and a Prometheus scraping it.
//! Nothing leaves loopback.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    NodeProc, Prometheus, bin, json, run_dir, start_prometheus_jobs, temp_dir, write_config,
};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Where the fake cluster's Prometheus Service is found: the tests' own name and the
/// seed's (the `--mesh appmesh` default).
const PROMETHEUS_SERVICES: [(&str, &str); 2] = [
    ("monitoring", "prometheus"),
    ("appmesh-system", "appmesh-prometheus"),
];

/// What the fake cluster holds and saw.
#[derive(Default)]
struct State {
    /// Objects applied, by API path.
    applied: HashMap<String, Value>,
    /// Every request: `METHOD path?query`.
    requests: Vec<String>,
    /// Pod name -> the local address its forwarded port reaches.
    pods: HashMap<String, SocketAddr>,
}

type Shared = Arc<Mutex<State>>;

fn reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn not_found() -> Response<Full<Bytes>> {
    reply(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn ready_pod(name: &str, namespace: &str, app: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
           "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": port}]}]},
           "status": {"conditions": [{"type": "Ready", "status": "True"}],
                      "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "", "imageID": ""}]}})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items})
}

async fn handle(
    mut req: Request<Incoming>,
    state: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    state
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {path}?{query}"));
    if path.ends_with("/portforward") {
        return Ok(port_forward(&mut req, &path, &query, &state));
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut st = state.lock().unwrap();
    let response = match (method.as_str(), path.as_str()) {
        ("GET", "/version") => reply(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1-fake", "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": ""}),
        ),
        ("PATCH", _) => {
            let obj: Value = serde_json::from_slice(&body).unwrap();
            st.applied.insert(path.clone(), obj.clone());
            reply(200, &obj)
        }
        // Every applied Deployment is ready at once, and so is the one istiod makes for a
        // waypoint Gateway (of the Gateway's name).
        ("GET", p) if p.starts_with("/apis/apps/v1/namespaces/") && p.ends_with("/deployments") => {
            let namespace = p.split('/').nth(5).unwrap();
            let within = format!("/namespaces/{namespace}/");
            let waypoints = st
                .applied
                .iter()
                .filter(|(path, o)| {
                    path.contains(&within)
                        && o["kind"] == "Gateway"
                        && o["spec"]["gatewayClassName"] == "istio-waypoint"
                })
                .map(|(_, g)| json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                     "metadata": {"name": g["metadata"]["name"], "namespace": namespace},
                                     "spec": {"replicas": 1}}))
                .collect::<Vec<_>>();
            let ready: Vec<Value> = st
                .applied
                .values()
                .filter(|o| o["kind"] == "Deployment" && o["metadata"]["namespace"] == namespace)
                .cloned()
                .chain(waypoints)
                .map(|mut d| {
                    d["status"] = json!({"readyReplicas": d["spec"]["replicas"]});
                    d
                })
                .collect();
            reply(200, &list("DeploymentList", ready))
        }
        // The cluster's Prometheus, under the name of the test's choice or the seed's.
        ("GET", p)
            if PROMETHEUS_SERVICES
                .iter()
                .any(|(ns, name)| p == format!("/api/v1/namespaces/{ns}/services/{name}")) =>
        {
            reply(
                200,
                &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prometheus"},
                        "spec": {"selector": {"app": "prometheus"}, "ports": [{"port": 9090, "targetPort": "http"}]}}),
            )
        }
        ("GET", p) if p.ends_with("/pods") && query.contains("app%3Dprometheus") => {
            let namespace = p.split('/').nth(4).unwrap();
            reply(
                200,
                &list(
                    "PodList",
                    vec![ready_pod("prometheus-0", namespace, "prometheus", 9090)],
                ),
            )
        }
        // The load generator's pod, asked for by its app label or by the run's label.
        ("GET", p) if p.starts_with("/api/v1/namespaces/") && p.ends_with("/pods") => {
            let namespace = p.split('/').nth(4).unwrap();
            reply(
                200,
                &list(
                    "PodList",
                    vec![ready_pod(
                        "meshload-loadgen-7f9c4",
                        namespace,
                        "meshload-loadgen",
                        8080,
                    )],
                ),
            )
        }
        ("GET", "/apis/appmesh.k8s.aws/v1beta2/meshes")
            if st.applied.values().any(|o| o["kind"] == "Mesh") =>
        {
            let meshes: Vec<Value> = st
                .applied
                .values()
                .filter(|o| o["kind"] == "Mesh")
                .cloned()
                .collect();
            reply(200, &list("MeshList", meshes))
        }
        ("DELETE", p) if p.starts_with("/apis/appmesh.k8s.aws/v1beta2/meshes/") => {
            st.applied.remove(p);
            reply(
                200,
                &json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "Mesh", "metadata": {}}),
            )
        }
        ("GET", "/api/v1/namespaces") if query.contains("labelSelector") => {
            let namespaces: Vec<Value> = st
                .applied
                .values()
                .filter(|o| o["kind"] == "Namespace")
                .cloned()
                .collect();
            reply(200, &list("NamespaceList", namespaces))
        }
        ("DELETE", p) if p.starts_with("/api/v1/namespaces/") => {
            let name = p.rsplit('/').next().unwrap().to_string();
            st.applied
                .retain(|k, _| !k.starts_with(&format!("/api/v1/namespaces/{name}")));
            reply(
                200,
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            )
        }
        // The namespace does not exist yet; no App Mesh CRD until a Mesh is applied.
        _ => not_found(),
    };
    Ok(response)
}

/// Accepts the WebSocket upgrade and bridges channel 0 to the pod's stand-in process.
fn port_forward(
    req: &mut Request<Incoming>,
    path: &str,
    query: &str,
    state: &Shared,
) -> Response<Full<Bytes>> {
    let pod = path
        .trim_end_matches("/portforward")
        .rsplit('/')
        .next()
        .unwrap();
    let port: u16 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ports="))
        .unwrap()
        .parse()
        .unwrap();
    let Some(target) = state.lock().unwrap().pods.get(pod).copied() else {
        return not_found();
    };
    let key = req.headers()[http::header::SEC_WEBSOCKET_KEY].clone();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = upgrade.await.unwrap();
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut sink, mut stream) = ws.split();
        let [lo, hi] = port.to_le_bytes();
        // Each port's data and error channels first announce the port.
        for channel in [0u8, 1] {
            sink.send(Message::binary(vec![channel, lo, hi]))
                .await
                .unwrap();
        }
        let tcp = tokio::net::TcpStream::connect(target).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let to_pod = async move {
            while let Some(Ok(message)) = stream.next().await {
                let data = match message {
                    Message::Binary(b) if b.len() > 1 && b[0] == 0 => b,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if wr.write_all(&data[1..]).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        let from_pod = async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut frame = Vec::with_capacity(n + 1);
                frame.push(0);
                frame.extend_from_slice(&buf[..n]);
                if sink.send(Message::binary(frame)).await.is_err() {
                    break;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        tokio::join!(to_pod, from_pod);
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, "v4.channel.k8s.io")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The fake API server on a loopback port, in its own runtime thread.
struct FakeCluster {
    addr: SocketAddr,
    state: Shared,
}

impl FakeCluster {
    fn start(pods: HashMap<String, SocketAddr>) -> FakeCluster {
        let state: Shared = Arc::new(Mutex::new(State {
            pods,
            ..State::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        FakeCluster { addr, state }
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake-context\n  context:\n    cluster: fake\n    user: tester\n- name: second-context\n  context:\n    cluster: fake\n    user: tester\ncurrent-context: fake-context\nusers:\n- name: tester\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// Waits (at most 30 s) until Prometheus has scraped its target, as a cluster's
/// Prometheus already has when a run starts.
fn wait_scraping(prometheus: &Prometheus) {
    let client = meshload_promql::client::PrometheusClient::new(&prometheus.url).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for _ in 0..60 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            if let Ok(r) = client.query("up", now).await
                && let meshload_promql::Value::Vector(v) = r.value
                && !v.is_empty()
                && v.iter().all(|s| s.value == 1.0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("prometheus did not scrape the node and cAdvisor within 30 s");
    });
}

/// The stand-ins for the cluster's pods: a node, the load generator (which reaches the
/// node under its in-cluster name), a Prometheus, and the kubelets' cAdvisor it scrapes.
struct Pods {
    node: NodeProc,
    loadgen: NodeProc,
    prometheus: Prometheus,
    _cadvisor: Cadvisor,
}

/// What the cAdvisor stand-in reports: (namespace, pod, container, MiB, cores), each
/// container's CPU counter growing at its cores from the start. An Istio ambient
/// cluster: the node's app container, a ztunnel, the run's waypoint, and what a run must
/// not count (another namespace's waypoint, another container of the run's namespace).
const CONTAINERS: [(&str, &str, &str, f64, f64); 5] = [
    ("perf", "node-0-6d4cf56db6-x7k2p", "app", 8.0, 0.1),
    ("istio-system", "ztunnel-4xk9z", "istio-proxy", 12.0, 0.05),
    (
        "perf",
        "waypoint-5d8f9c7b4-q2w3e",
        "istio-proxy",
        60.0,
        0.25,
    ),
    ("other", "waypoint-7c6d5-abcde", "istio-proxy", 600.0, 2.0),
    ("perf", "debug-0", "shell", 300.0, 1.0),
];

/// A stand-in for the kubelets' cAdvisor endpoint (`/metrics/cadvisor`): the series of
/// [`CONTAINERS`], answered on loopback until dropped.
struct Cadvisor {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Cadvisor {
    fn start() -> Cadvisor {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let seconds = started.elapsed().as_secs_f64();
                let mut body = String::new();
                for (ns, pod, container, mib, cores) in CONTAINERS {
                    let labels = format!(r#"namespace="{ns}",pod="{pod}",container="{container}""#);
                    body.push_str(&format!(
                        "container_memory_working_set_bytes{{{labels}}} {}\ncontainer_cpu_usage_seconds_total{{{labels}}} {}\n",
                        mib * 1024.0 * 1024.0,
                        cores * seconds
                    ));
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Cadvisor { addr, stop }
    }
}

impl Drop for Cadvisor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accept loop so that it sees the stop.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// The stand-ins, with node 0 reachable as service-0 in `namespace`.
fn pods_in(namespace: &str) -> Pods {
    let node = NodeProc::start(&[]);
    let resolve = format!("service-0.{namespace}.svc.cluster.local:9080={}", node.addr);
    let loadgen = NodeProc::spawn(
        &[
            "-q",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--resolve",
            &resolve,
        ],
        &[],
    );
    let cadvisor = Cadvisor::start();
    let prometheus = start_prometheus_jobs(&[
        ("pods", node.addr, "{pod: node-0-abcde-0}"),
        ("cadvisor", cadvisor.addr, "{}"),
    ]);
    wait_scraping(&prometheus);
    Pods {
        node,
        loadgen,
        prometheus,
        _cadvisor: cadvisor,
    }
}

fn fake_cluster(pods: &Pods) -> FakeCluster {
    FakeCluster::start(HashMap::from([
        ("meshload-loadgen-7f9c4".to_string(), pods.loadgen.addr),
        ("prometheus-0".to_string(), pods.prometheus.addr),
    ]))
}

/// A finished run on a fake cluster, with the stand-in pods it used.
struct FakeRun {
    _pods: Pods,
    cluster: FakeCluster,
    store: std::path::PathBuf,
    stderr: String,
}

fn pods() -> Pods {
    pods_in("perf")
}

/// Runs `meshload run CONFIG --backend k8s EXTRA...` on a new fake cluster whose pods
/// live in `namespace`; it must succeed.
fn run_on_fake_cluster(name: &str, namespace: &str, config: &str, extra: &[&str]) -> FakeRun {
    let pods = pods_in(namespace);
    let cluster = fake_cluster(&pods);
    let dir = temp_dir(name);
    let kubeconfig = cluster.kubeconfig(&dir);
    let config = write_config(&dir, config);
    let store = dir.join("results");
    let out = bin()
        .args(["run", config.to_str().unwrap(), "--backend", "k8s"])
        .args(extra)
        .args(["--store", store.to_str().unwrap()])
        .args(["--sleep-between-tests", "0"])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    FakeRun {
        _pods: pods,
        cluster,
        store,
        stderr,
    }
}

const CONFIG: &str = r#"{
  "namespace": "perf",
  "scrape_interval": "2s",
  "ConnectivityCheckPerURL": 20,
  "backends_map": {"0": []},
  "load_tests": [
    {"test_name": "k8s-qps40", "url": "http://service-0.perf.svc.cluster.local:9080/", "qps": "40", "t": "4s", "c": "2"}
  ],
  "metrics": {
    "requests_by_pod": "sum(max_over_time(meshload_node_requests_total[1m])) by (pod)"
  }
}"#;

#[test]
fn a_run_on_a_cluster_applies_forwards_measures_stores_and_deletes() {
    let FakeRun {
        cluster,
        store,
        stderr,
        ..
    } = run_on_fake_cluster(
        "k8s-run",
        "perf",
        CONFIG,
        &["--prometheus-service", "monitoring/prometheus:9090"],
    );
    eprintln!("{stderr}");
    assert!(
        stderr.contains("cluster fake-context (http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("deleted namespace/perf"), "{stderr}");

    let run = run_dir(&store, "k8s-qps40");
    let fortio = json(&run.join("fortio.json"));
    let requests = fortio["DurationHistogram"]["Count"].as_u64().unwrap();
    assert!(
        (140..=170).contains(&requests),
        "about 40 req/s for 4 s: {requests}"
    );
    assert_eq!(
        fortio["RetCodes"]["200"].as_u64(),
        Some(requests),
        "{fortio}"
    );
    assert_eq!(
        fortio["URL"],
        "http://service-0.perf.svc.cluster.local:9080/"
    );

    let metadata = json(&run.join("metadata.json"));
    assert_eq!(metadata["backend"], "k8s");
    let facts = &metadata["backend_facts"];
    assert_eq!(facts["kubernetes_version"], "v1.33.1-fake");
    assert_eq!(facts["mesh"], "none");
    assert_eq!(facts["namespace"], "perf");
    assert_eq!(facts["prometheus_service"], "monitoring/prometheus:9090");
    assert!(
        facts["cluster"]
            .as_str()
            .unwrap()
            .starts_with("fake-context"),
        "{facts}"
    );
    assert!(
        metadata["prometheus"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    // The cluster's Prometheus (through its port-forward) saw the node's requests.
    let csv = std::fs::read_to_string(run.join("requests_by_pod.csv")).unwrap();
    let counts: Vec<f64> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(2)?.parse().ok())
        .collect();
    // The node's request counter as the cluster's Prometheus scraped it: the test's
    // requests and the connectivity check's 20 (the last scrape may miss a few).
    assert!(
        counts
            .iter()
            .any(|c| *c >= requests as f64 * 0.5 && *c <= requests as f64 + 20.0),
        "the node's request count near {requests} in {csv}"
    );

    let requests = cluster.requests();
    let applies = requests.iter().filter(|r| r.starts_with("PATCH ")).count();
    assert_eq!(
        applies, 6,
        "namespace, deployment, 2 services, loadgen deployment and service: {requests:#?}"
    );
    for expected in [
        "GET /api/v1/namespaces/perf/pods/meshload-loadgen-7f9c4/portforward?",
        "GET /api/v1/namespaces/monitoring/pods/prometheus-0/portforward?",
        "DELETE /api/v1/namespaces/perf?",
    ] {
        assert!(
            requests.iter().any(|r| r.starts_with(expected)),
            "{expected} in {requests:#?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces?") && r.contains("meshload.io%2Frun%3D")),
        "cleanup by the run's label: {requests:#?}"
    );
}

#[test]
fn app_mesh_runs_with_the_seeds_prometheus_and_deletes_the_mesh_too() {
    let FakeRun {
        cluster,
        store,
        stderr,
        ..
    } = run_on_fake_cluster(
        "k8s-appmesh",
        "mesh-perf",
        &CONFIG.replace("\"t\": \"4s\"", "\"t\": \"2s\""),
        &[
            "--mesh",
            "appmesh",
            "--context",
            "second-context",
            "--namespace",
            "mesh-perf",
        ],
    );
    assert!(
        stderr.contains("prometheus appmesh-system/appmesh-prometheus:9090"),
        "the seed's Prometheus by default: {stderr}"
    );
    let metadata = json(&run_dir(&store, "k8s-qps40").join("metadata.json"));
    let facts = &metadata["backend_facts"];
    assert_eq!(facts["mesh"], "appmesh");
    assert_eq!(facts["namespace"], "mesh-perf");
    assert_eq!(
        metadata["parameters"]["url"], "http://service-0.mesh-perf.svc.cluster.local:9080/",
        "the URL the test used, as stored"
    );
    // The test's URL was pointed at --namespace, where the load generator found the node.
    let fortio = json(&run_dir(&store, "k8s-qps40").join("fortio.json"));
    assert_eq!(
        fortio["URL"],
        "http://service-0.mesh-perf.svc.cluster.local:9080/"
    );
    assert!(
        fortio["RetCodes"]["200"].as_u64().unwrap() >= 70,
        "{fortio}"
    );
    assert!(
        facts["cluster"]
            .as_str()
            .unwrap()
            .starts_with("second-context"),
        "{facts}"
    );
    assert_eq!(
        metadata["metrics"]["requests_by_pod"]["result"], "1 series",
        "{metadata}"
    );
    let requests = cluster.requests();
    let mesh = requests
        .iter()
        .find(|r| r.starts_with("PATCH /apis/appmesh.k8s.aws/v1beta2/meshes/meshload-"))
        .expect("the Mesh applied");
    let name = mesh.split('/').nth(5).unwrap().split('?').next().unwrap();
    for expected in [
        "PATCH /apis/appmesh.k8s.aws/v1beta2/namespaces/mesh-perf/virtualnodes/node-0?".to_string(),
        "PATCH /apis/appmesh.k8s.aws/v1beta2/namespaces/mesh-perf/virtualservices/service-0?"
            .to_string(),
        format!("DELETE /apis/appmesh.k8s.aws/v1beta2/meshes/{name}?"),
        "DELETE /api/v1/namespaces/mesh-perf?".to_string(),
    ] {
        assert!(
            requests.iter().any(|r| r.starts_with(&expected)),
            "{expected} in {requests:#?}"
        );
    }
    assert!(stderr.contains(&format!("mesh/{name}")), "{stderr}");
    // `results show` says where the run ran.
    let out = bin()
        .args([
            "results",
            "show",
            "--store",
            store.to_str().unwrap(),
            "k8s-qps40",
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("Backend    k8s, mesh appmesh, namespace mesh-perf, Kubernetes v1.33.1-fake, cluster second-context"),
        "{shown}"
    );
}

#[test]
fn istio_ambient_on_a_cluster_measures_its_proxies_from_the_clusters_prometheus() {
    let FakeRun { store, stderr, .. } = run_on_fake_cluster(
        "k8s-ambient",
        "perf",
        CONFIG,
        &[
            "--mesh",
            "istio-ambient",
            "--waypoint",
            "--prometheus-service",
            "monitoring/prometheus:9090",
        ],
    );
    assert!(
        stderr.contains("container series (CPU, memory) copied from the cluster's Prometheus"),
        "{stderr}"
    );
    let run = run_dir(&store, "k8s-qps40");
    // The run's samples hold the preset's containers, and only those.
    let samples = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    for (ns, pod, container, ..) in CONTAINERS {
        let wanted = ns != "other" && container != "shell";
        assert_eq!(
            samples.contains(pod),
            wanted,
            "{ns}/{pod}/{container} collected: {wanted}"
        );
    }
    // `results show` reads the node's and the proxies' memory and CPU from them, as for
    // a local run: each near what cAdvisor said.
    let out = bin()
        .args(["results", "show", "--store", store.to_str().unwrap()])
        .arg(run.strip_prefix(&store).unwrap())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    let row = |name: &str| -> (f64, f64) {
        let line = shown
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {shown}"));
        let numbers: Vec<f64> = line
            .split_whitespace()
            .rev()
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect();
        (numbers[1], numbers[0])
    };
    for (name, mib, cores) in [
        ("0 ", 8.0, 0.1),
        ("ztunnel (shared)", 12.0, 0.05),
        ("waypoint (shared)", 60.0, 0.25),
    ] {
        let (memory, cpu) = row(name);
        assert_eq!(memory, mib, "{name}: {shown}");
        assert!(
            (cpu - cores).abs() <= cores * 0.3,
            "{name}: {cpu} cores, cAdvisor said {cores}: {shown}"
        );
    }
}

#[test]
fn ctrl_c_during_a_test_on_a_cluster_deletes_what_the_run_created() {
    let pods = pods();
    let cluster = fake_cluster(&pods);
    let dir = temp_dir("k8s-interrupt");
    let kubeconfig = cluster.kubeconfig(&dir);
    let config = write_config(&dir, &CONFIG.replace("\"t\": \"4s\"", "\"t\": \"60s\""));
    let store = dir.join("results");
    let mut child = bin()
        .args(["run", config.to_str().unwrap(), "--backend", "k8s"])
        .args(["--prometheus-service", "monitoring/prometheus:9090"])
        .args(["--store", store.to_str().unwrap()])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|l: &String| l.contains("test 1/1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no test started: {seen:#?}"
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    // Ctrl-C once the test is under way: its 20 connectivity checks and 20 requests of
    // the load answered.
    common::wait_for("the load reached the node", || {
        common::node_served(pods.node.addr) >= 40.0
    });
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "meshload did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    assert_eq!(status.code(), Some(130), "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("deleted namespace/perf")),
        "{seen:#?}"
    );
    // The load generator was stopped too, and what it measured is stored.
    let run = run_dir(&store, "k8s-qps40");
    let metadata = json(&run.join("metadata.json"));
    assert_eq!(metadata["status"], "interrupted", "{metadata}");
    let fortio = json(&run.join("fortio.json"));
    let requests = fortio["DurationHistogram"]["Count"].as_u64().unwrap();
    assert!(
        (10..=200).contains(&requests),
        "interrupted once 20 were answered: {requests}"
    );
    assert!(
        cluster
            .requests()
            .iter()
            .any(|r| r.starts_with("DELETE /api/v1/namespaces/perf?")),
        "{:#?}",
        cluster.requests()
    );
}

#[test]
fn k8s_settings_are_checked_before_anything_starts() {
    let dir = temp_dir("k8s-bad");
    // No cluster at this address: a usage error must come before any connection.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: none\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n").unwrap();
    let config = write_config(&dir, CONFIG);
    let run = |extra: &[&str]| {
        bin()
            .args(["run", config.to_str().unwrap(), "--backend", "k8s"])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--prometheus-service"), "{stderr}");
    // Kubernetes flags without --backend k8s are a mistake, not silently ignored.
    let out = bin()
        .args([
            "run",
            config.to_str().unwrap(),
            "--mesh",
            "istio",
            "--context",
            "c",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--context only applies with --backend k8s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--mesh istio runs on Kubernetes"),
        "{stderr}"
    );
    let out = run(&["--prometheus-service", "prometheus"]);
    assert_eq!(out.status.code(), Some(64), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAMESPACE/SERVICE:PORT"));
    // An unreachable API server: a clear error, exit 2, nothing stored.
    let store = dir.join("results");
    let out = run(&[
        "--prometheus-service",
        "monitoring/prometheus:9090",
        "--store",
        store.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("get the Kubernetes version"), "{stderr}");
}
