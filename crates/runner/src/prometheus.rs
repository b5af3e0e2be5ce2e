//! `prometheus: "spawn"`: the seed's pipeline on one machine. The Debian `prometheus`
//! binary is started with a generated scrape config for the run's scrape targets, plus an
//! exporter of the cAdvisor-like samples of its containers (the kubelet's part), and the metric
//! queries go to it. It runs under `meshload supervise`, so it dies with meshload.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use meshload_config::proxies::{CPU_SERIES, MEMORY_SERIES};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::backend::{Container, Deployment, ScrapeTarget};
use crate::{BoxError, RunError};

/// A running Prometheus and the exporter it scrapes.
#[derive(Debug)]
pub struct SpawnedPrometheus {
    /// Its base URL.
    pub url: String,
    child: Child,
    exporter: tokio::task::JoinHandle<()>,
    /// Its config and data: private, removed when it stops (or when dropped).
    dir: tempfile::TempDir,
}

impl SpawnedPrometheus {
    /// Starts Prometheus scraping every target every `interval`; waits until it is ready.
    pub async fn start(
        exe: &std::path::Path,
        deployment: &Deployment,
        interval: Duration,
    ) -> Result<SpawnedPrometheus, RunError> {
        let fail = |reason: String| {
            RunError::Prometheus(format!("cannot start prometheus: {reason}").into())
        };
        let exporter_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| fail(e.to_string()))?;
        let exporter_addr = exporter_listener
            .local_addr()
            .map_err(|e| fail(e.to_string()))?;
        let exporter = tokio::spawn(serve_exporter(
            exporter_listener,
            deployment.containers.clone(),
        ));
        let folder = tempfile::Builder::new()
            .prefix(&format!("meshload-prometheus-{}-", std::process::id()))
            .tempdir()
            .map_err(|e| fail(e.to_string()))?;
        let dir = folder.path().to_path_buf();
        let config = scrape_config(deployment, interval, exporter_addr);
        std::fs::write(dir.join("prometheus.yml"), config).map_err(|e| fail(e.to_string()))?;
        let port = crate::ports::free_port()
            .map_err(|e| fail(e.to_string()))?
            .port();
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
                meshload_process::lifecycle::PARENT_PID_ENV,
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
            dir: folder,
        };
        let ready = match spawned.wait_ready().await {
            Ok(()) => {
                spawned
                    .wait_scraping(deployment.scrape_targets.len() + 1)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            // Stopped, and its folder removed, as after a run.
            spawned.stop().await;
            return Err(e);
        }
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
                return Err(RunError::Prometheus(BoxError::from(format!(
                    "prometheus exited at start ({status}); is the Debian package prometheus installed?"
                ))));
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
            .map_err(|e| RunError::Prometheus(e.into()))?;
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
        Err(RunError::Prometheus(BoxError::from(format!(
            "prometheus did not scrape all {targets} targets within 30s"
        ))))
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
        let _ = self.dir.close();
    }
}

/// The generated `prometheus.yml`: one job per distinct `job` label of the targets, one
/// static target each with the labels the embedded scraper gives, and the exporter of
/// container samples (`honor_labels`).
pub fn scrape_config(deployment: &Deployment, interval: Duration, exporter: SocketAddr) -> String {
    let secs = interval.as_millis().max(100);
    let mut out = format!(
        "global:\n  scrape_interval: {secs}ms\n  scrape_timeout: {secs}ms\n  evaluation_interval: {secs}ms\nscrape_configs:\n"
    );
    let mut jobs: Vec<(&str, &str)> = Vec::new();
    for t in &deployment.scrape_targets {
        let job = label(t, "job");
        if !jobs.contains(&(job, t.path.as_str())) {
            jobs.push((job, t.path.as_str()));
        }
    }
    for (i, (job, path)) in jobs.iter().enumerate() {
        // A job name must be unique; the `job` label itself is set per target below.
        out.push_str(&format!(
            "  - job_name: '{job}-{i}'\n    metrics_path: '{path}'\n    static_configs:\n"
        ));
        for t in deployment
            .scrape_targets
            .iter()
            .filter(|t| label(t, "job") == *job && t.path == *path)
        {
            let labels: Vec<String> = t
                .labels
                .iter()
                .filter(|(k, _)| k != "instance")
                .map(|(k, v)| format!("{k}: '{v}'"))
                .collect();
            out.push_str(&format!(
                "      - targets: ['{}']\n        labels: {{{}}}\n",
                t.addr,
                labels.join(", ")
            ));
        }
    }
    out.push_str(&format!(
        "  - job_name: meshload-cadvisor\n    honor_labels: true\n    static_configs:\n      - targets: ['{exporter}']\n"
    ));
    out
}

fn label<'a>(t: &'a ScrapeTarget, name: &str) -> &'a str {
    t.labels
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Serves the samples of every local container as Prometheus text, with the connection
/// guards of every meshload server (an accept that fails backs off rather than spins).
async fn serve_exporter(listener: TcpListener, containers: Vec<Container>) {
    let containers = std::sync::Arc::new(containers);
    meshload_node::server::serve_guarded(
        listener,
        &meshload_node::Limits::default(),
        std::future::pending(),
        move |_req| {
            let body = exposition(&containers);
            async move { http::Response::new(Full::new(Bytes::from(body))) }
        },
    )
    .await;
}

fn exposition(containers: &[Container]) -> String {
    let mut memory = format!("# TYPE {MEMORY_SERIES} gauge\n");
    let mut cpu = format!("# TYPE {CPU_SERIES} counter\n");
    for c in containers {
        let Some(sample) = meshload_process::resources::sample(c.pid as i32) else {
            continue;
        };
        let labels = format!(
            "namespace=\"{}\",pod=\"{}\",container=\"{}\"",
            c.namespace, c.pod, c.container
        );
        memory.push_str(&format!(
            "{MEMORY_SERIES}{{{labels}}} {}\n",
            sample.working_set_bytes
        ));
        cpu.push_str(&format!(
            "{CPU_SERIES}{{{labels}}} {}\n",
            sample.cpu_seconds
        ));
    }
    memory + &cpu
}
