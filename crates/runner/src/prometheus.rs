//! `prometheus: "spawn"`: the seed's pipeline on one machine. The Debian `prometheus`
//! binary is started with a generated scrape config for the run's replicas, plus an
//! exporter of the cAdvisor-like process samples (the kubelet's part), and the metric
//! queries go to it. It runs under `meshload supervise`, so it dies with meshload.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::RunError;
use crate::backend::{Deployment, Replica};
use crate::collector::CONTAINER;

/// A running Prometheus and the exporter it scrapes.
#[derive(Debug)]
pub struct SpawnedPrometheus {
    /// Its base URL.
    pub url: String,
    child: Child,
    exporter: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl SpawnedPrometheus {
    /// Starts Prometheus scraping every replica every `interval`; waits until it is ready.
    pub async fn start(
        exe: &std::path::Path,
        deployment: &Deployment,
        namespace: &str,
        interval: Duration,
    ) -> Result<SpawnedPrometheus, RunError> {
        let fail =
            |reason: String| RunError::Prometheus(format!("cannot start prometheus: {reason}"));
        let exporter_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| fail(e.to_string()))?;
        let exporter_addr = exporter_listener
            .local_addr()
            .map_err(|e| fail(e.to_string()))?;
        let exporter = tokio::spawn(serve_exporter(
            exporter_listener,
            deployment.replicas.clone(),
            namespace.to_string(),
        ));
        let dir = std::env::temp_dir().join(format!("meshload-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let config = scrape_config(deployment, namespace, interval, exporter_addr);
        std::fs::write(dir.join("prometheus.yml"), config).map_err(|e| fail(e.to_string()))?;
        let port = free_port().map_err(|e| fail(e.to_string()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["supervise", "--", "prometheus"])
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .env(
                meshload_node::PARENT_PID_ENV,
                std::process::id().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not killed on drop: a SIGKILLed supervisor could not stop Prometheus. The
            // supervisor stops it when told (SIGTERM) or when meshload is gone.
            .process_group(0);
        let child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        let url = format!("http://127.0.0.1:{port}");
        let mut spawned = SpawnedPrometheus {
            url,
            child,
            exporter,
            dir,
        };
        spawned.wait_ready().await?;
        spawned.wait_scraping(deployment.replicas.len() + 1).await?;
        Ok(spawned)
    }

    async fn wait_ready(&mut self) -> Result<(), RunError> {
        let client = crate::http::client();
        for _ in 0..150 {
            if let Ok((200, _, _)) = crate::http::get(
                &client,
                format!("{}/-/ready", self.url),
                Duration::from_secs(1),
            )
            .await
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(RunError::Prometheus(format!(
                    "prometheus exited at start ({status}); is the Debian package prometheus installed?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(RunError::Prometheus(
            "prometheus was not ready after 15s".into(),
        ))
    }

    /// Waits until every target has been scraped once: Prometheus applies its scrape
    /// targets a few seconds after it reports ready, and a test must not start before.
    async fn wait_scraping(&self, targets: usize) -> Result<(), RunError> {
        let client = meshload_promql::client::PrometheusClient::new(&self.url)
            .map_err(|e| RunError::Prometheus(e.to_string()))?;
        for _ in 0..300 {
            let now = meshload_promql::system_time_ms(&std::time::SystemTime::now());
            if let Ok(r) = client.query("count(up)", now).await
                && let meshload_promql::Value::Vector(v) = r.value
                && v.first().is_some_and(|s| s.value as usize >= targets)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(RunError::Prometheus(format!(
            "prometheus did not scrape all {targets} targets within 30s"
        )))
    }

    /// Stops Prometheus and the exporter and removes its data.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = self.child.wait().await;
        self.exporter.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The generated `prometheus.yml`: one static target per replica with the labels the
/// embedded collector gives, and the exporter of process samples (`honor_labels`).
pub fn scrape_config(
    deployment: &Deployment,
    namespace: &str,
    interval: Duration,
    exporter: SocketAddr,
) -> String {
    let secs = interval.as_millis().max(100);
    let mut out = format!(
        "global:\n  scrape_interval: {secs}ms\n  scrape_timeout: {secs}ms\n  evaluation_interval: {secs}ms\nscrape_configs:\n  - job_name: {}\n    static_configs:\n",
        crate::collector::JOB
    );
    for r in &deployment.replicas {
        out.push_str(&format!(
            "      - targets: ['{}']\n        labels: {{namespace: '{namespace}', pod: '{pod}', kubernetes_namespace: '{namespace}', kubernetes_pod_name: '{pod}', node: '{node}'}}\n",
            r.addr,
            pod = r.pod,
            node = r.node
        ));
    }
    out.push_str(&format!(
        "  - job_name: meshload-cadvisor\n    honor_labels: true\n    static_configs:\n      - targets: ['{exporter}']\n"
    ));
    out
}

/// Serves the process samples of every local replica as Prometheus text.
async fn serve_exporter(listener: TcpListener, replicas: Vec<Replica>, namespace: String) {
    let replicas = std::sync::Arc::new(replicas);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let replicas = replicas.clone();
        let namespace = namespace.clone();
        let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
            let body = exposition(&replicas, &namespace);
            async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc),
        );
    }
}

fn exposition(replicas: &[Replica], namespace: &str) -> String {
    let mut memory = String::from("# TYPE container_memory_working_set_bytes gauge\n");
    let mut cpu = String::from("# TYPE container_cpu_usage_seconds_total counter\n");
    for r in replicas {
        let Some(sample) = r
            .pid
            .and_then(|pid| meshload_node::process::sample(pid as i32))
        else {
            continue;
        };
        let labels = format!(
            "namespace=\"{namespace}\",pod=\"{}\",container=\"{CONTAINER}\"",
            r.pod
        );
        memory.push_str(&format!(
            "container_memory_working_set_bytes{{{labels}}} {}\n",
            sample.working_set_bytes
        ));
        cpu.push_str(&format!(
            "container_cpu_usage_seconds_total{{{labels}}} {}\n",
            sample.cpu_seconds
        ));
    }
    memory + &cpu
}
