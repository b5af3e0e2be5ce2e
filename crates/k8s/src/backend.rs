//! `meshload run --backend k8s`: the runner's [`Backend`] on a cluster. `up` renders and
//! server-side applies the manifests, waits for every rollout, and port-forwards to the
//! load generator and the cluster's Prometheus; each load goes through the load
//! generator's Fortio REST API; `down` deletes everything the run created (also after an
//! error or a stop request, since the runner always calls it).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use meshload_config::Config;
use meshload_loadgen::rest::{RUN_PATH, STOP_PATH};
use meshload_loadgen::{FortioResult, Live, LoadOptions};
use meshload_runner::backend::{Backend, Deployment, Facts, ReplicaExit};
use meshload_runner::plan::Plan;
use meshload_runner::{BoxError, RunError, StopSignal};
use serde_json::{Value, json};

use crate::cluster::{Cluster, K8sError, Restarts, ServiceRef};
use crate::forward::Forward;
use crate::render::{LOADGEN, LOADGEN_PORT, LoadGen, Mesh, RenderOptions, deployment_name, render};

/// How long a stopped load generator may take to answer with its partial result.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a run on a cluster is set up.
#[derive(Debug, Clone)]
pub struct K8sSettings {
    /// Mesh, namespace, image, load generator, run id, resources.
    pub render: RenderOptions,
    /// How long every rollout may take.
    pub rollout_timeout: Duration,
    /// The cluster's Prometheus service, when metric queries go to it.
    pub prometheus: Option<ServiceRef>,
}

/// Why a load through the cluster's load generator failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadGenError {
    /// `drive` before `up` forwarded the load generator.
    #[error("the load generator is not port-forwarded (the backend is not up)")]
    NotForwarded,
    /// The request could not be built.
    #[error("cannot build the request to the load generator")]
    Request(#[source] http::Error),
    /// The port-forward or the load generator did not answer.
    #[error("the load generator ({target}, forwarded to {local}) did not answer")]
    Unreachable {
        /// The pod and port forwarded to.
        target: String,
        /// The local end of the forward.
        local: std::net::SocketAddr,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer broke off.
    #[error("reading the load generator's answer")]
    Read(#[source] hyper::Error),
    /// The load generator refused the request.
    #[error("the load generator answered {status}: {body}")]
    Status {
        /// Its status.
        status: http::StatusCode,
        /// Its body.
        body: String,
    },
    /// No answer in time.
    #[error("the load generator gave no answer within {0:?}")]
    Timeout(Duration),
    /// The answer is not JSON, or not a Fortio result.
    #[error("the load generator's answer is not {0}")]
    Answer(&'static str, #[source] serde_json::Error),
    /// The load generator ran the load and it failed.
    #[error("the load generator failed: {0}")]
    Failed(String),
}

/// What `down` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// What was deleted (`namespace/x`, `mesh/y`).
    pub deleted: Vec<String>,
    /// Why deleting failed, when it did.
    pub error: Option<String>,
}

/// The Kubernetes backend.
pub struct K8sBackend {
    cluster: Cluster,
    config: Config,
    settings: K8sSettings,
    /// Set before the first apply: from then on `down` deletes the run's objects.
    applied: bool,
    version: Option<String>,
    loadgen: Option<Forward>,
    prometheus: Option<Forward>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// Each container's restarts when last looked at.
    restarts: Restarts,
    cleanup: Option<Cleanup>,
    phase: Box<dyn Fn(&str) + Send + Sync>,
}

impl K8sBackend {
    /// A backend that deploys `config` on `cluster`.
    pub fn new(cluster: Cluster, config: Config, settings: K8sSettings) -> K8sBackend {
        K8sBackend {
            cluster,
            config,
            settings,
            applied: false,
            version: None,
            loadgen: None,
            prometheus: None,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            restarts: Restarts::new(),
            cleanup: None,
            phase: Box::new(|_| {}),
        }
    }

    /// Reports the steps of bringing the topology up (applying, waiting, forwarding).
    pub fn on_phase(&mut self, phase: impl Fn(&str) + Send + Sync + 'static) {
        self.phase = Box::new(phase);
    }

    /// What `down` deleted or failed to delete; `None` before `down` or when nothing
    /// was applied.
    pub fn cleanup(&self) -> Option<&Cleanup> {
        self.cleanup.as_ref()
    }

    /// The run id in the `meshload.io/run` label of every object.
    pub fn run_id(&self) -> &str {
        &self.settings.render.run_id
    }

    /// The Deployments to wait for: every node's of the plan and the load generator's,
    /// and with a waypoint the one istiod makes for it (calls go through it).
    pub fn deployments(plan: &Plan, render: &RenderOptions) -> Vec<String> {
        let waypoint = (render.mesh == Mesh::IstioAmbient && render.waypoint)
            .then(|| crate::render::WAYPOINT.to_string());
        plan.nodes
            .iter()
            .map(|n| deployment_name(&n.name))
            .chain([LOADGEN.to_string()])
            .chain(waypoint)
            .collect()
    }

    async fn bring_up(&mut self, plan: &Plan) -> Result<(), K8sError> {
        let ns = self.settings.render.namespace.clone();
        self.version = Some(self.cluster.version().await?);
        let phase = &self.phase;
        self.cluster
            .check_namespace(&ns, self.settings.rollout_timeout, || {
                phase(&format!(
                    "waiting for namespace {ns} to be deleted (a previous run's)"
                ));
            })
            .await?;
        let objects = render(&self.config, &self.settings.render);
        (self.phase)(&format!(
            "applying {} objects (mesh {}) in namespace {ns}",
            objects.len(),
            self.settings.render.mesh
        ));
        self.applied = true;
        self.cluster.apply(&objects).await?;
        let deployments = Self::deployments(plan, &self.settings.render);
        (self.phase)(&format!(
            "waiting for {} rollouts (at most {})",
            deployments.len(),
            humantime::format_duration(self.settings.rollout_timeout)
        ));
        self.cluster
            .wait_ready(&ns, &deployments, self.settings.rollout_timeout)
            .await?;
        self.restarts = self.cluster.restarts(&ns, self.run_id()).await?;
        let pod = self
            .cluster
            .ready_pod(&ns, &format!("app={LOADGEN}"))
            .await?;
        let pod = pod.metadata.name.unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.cluster.client().clone(), &ns);
        let loadgen = forward(pods, &pod, LOADGEN_PORT).await?;
        (self.phase)(&format!(
            "load generator {} forwarded to {}",
            loadgen.target, loadgen.local
        ));
        self.loadgen = Some(loadgen);
        if let Some(service) = &self.settings.prometheus {
            let (pod, port) = self.cluster.service_backend(service).await?;
            let pods: Api<Pod> = Api::namespaced(self.cluster.client().clone(), &service.namespace);
            let prometheus = forward(pods, &pod, port).await?;
            (self.phase)(&format!(
                "prometheus {service} ({}) forwarded to {}",
                prometheus.target, prometheus.local
            ));
            self.prometheus = Some(prometheus);
        }
        Ok(())
    }

    /// POSTs a load to the load generator's `/fortio/rest/run` and reads its result.
    async fn post_run(&self, options: &LoadOptions) -> Result<FortioResult, LoadGenError> {
        let body = rest_body(options).to_string().into_bytes();
        // The call lasts as long as the load: allow its duration, the last requests'
        // timeout, and a margin for the API server's forwarding.
        let limit =
            options.duration.unwrap_or(Duration::ZERO) + options.timeout + Duration::from_secs(60);
        let answer = self.post(RUN_PATH, body, limit).await?;
        // `meshload serve` answers 200 at once (keeping the call alive), so a run that
        // failed after it started is an `{"error": ...}` body.
        let value: Value =
            serde_json::from_slice(&answer).map_err(|e| LoadGenError::Answer("JSON", e))?;
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            return Err(LoadGenError::Failed(error.to_string()));
        }
        serde_json::from_value::<FortioResult>(value)
            .map_err(|e| LoadGenError::Answer("a Fortio result", e))
    }

    /// POSTs `body` to `path` of the load generator (through its port-forward) and
    /// returns the body of a 2xx answer.
    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<Bytes, LoadGenError> {
        let forward = self.loadgen.as_ref().ok_or(LoadGenError::NotForwarded)?;
        let request = http::Request::post(format!("http://{}{path}", forward.local))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(LoadGenError::Request)?;
        let exchange =
            async {
                let response = self.http.request(request).await.map_err(|source| {
                    LoadGenError::Unreachable {
                        target: forward.target.to_string(),
                        local: forward.local,
                        source,
                    }
                })?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(LoadGenError::Read)?
                    .to_bytes();
                if !status.is_success() {
                    return Err(LoadGenError::Status {
                        status,
                        body: String::from_utf8_lossy(&body).trim().to_string(),
                    });
                }
                Ok(body)
            };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| LoadGenError::Timeout(limit))?
    }
}

async fn forward(pods: Api<Pod>, pod: &str, port: u16) -> Result<Forward, K8sError> {
    Forward::start(pods, pod, port)
        .await
        .map_err(|source| K8sError::Forward {
            pod: pod.to_string(),
            source,
        })
}

/// What happened to the run's pods between two looks: containers that restarted (with
/// the last termination's reason, e.g. `OOMKilled`) and pods that went away.
pub fn restarts_since(before: &Restarts, now: &Restarts) -> Vec<ReplicaExit> {
    let mut out = Vec::new();
    for ((pod, container), (count, last)) in now {
        let was = before
            .get(&(pod.clone(), container.clone()))
            .map_or(0, |(c, _)| *c);
        if *count > was {
            out.push(ReplicaExit {
                pod: pod.clone(),
                status: format!(
                    "container {container} restarted {} time(s), last: {last}",
                    count - was
                ),
            });
        }
    }
    let pods_now: std::collections::BTreeSet<&String> = now.keys().map(|(p, _)| p).collect();
    let mut gone: Vec<&String> = before
        .keys()
        .map(|(p, _)| p)
        .filter(|p| !pods_now.contains(p))
        .collect();
    gone.dedup();
    for pod in gone {
        out.push(ReplicaExit {
            pod: pod.clone(),
            status: "gone (deleted or evicted)".to_string(),
        });
    }
    out
}

/// Fortio's REST parameters of a load: strings as the seed's driver sent them, headers as
/// a JSON array of `Name: value` strings (how both Fortio and `meshload serve` read a
/// JSON body).
pub fn rest_body(o: &LoadOptions) -> Value {
    let mut body = json!({
        "url": o.url,
        "qps": if o.qps > 0.0 { o.qps.to_string() } else { "-1".to_string() },
        "c": o.connections.to_string(),
        "timeout": format!("{}ms", o.timeout.as_millis()),
        "headers": o.headers,
    });
    match o.requests {
        Some(n) => body["n"] = n.to_string().into(),
        None => {
            let t = o.duration.unwrap_or(Duration::from_secs(5));
            body["t"] = format!("{}ms", t.as_millis()).into();
        }
    }
    for (key, on) in [
        ("uniform", o.uniform),
        ("jitter", o.jitter),
        ("nocatchup", o.nocatchup),
        ("h2", o.h2),
        ("stdclient", o.std_client),
    ] {
        if on {
            body[key] = "on".into();
        }
    }
    if !o.labels.is_empty() {
        body["labels"] = o.labels.clone().into();
    }
    if let Some(payload) = &o.payload {
        body["payload"] = String::from_utf8_lossy(payload).into_owned().into();
    }
    body
}

impl Backend for K8sBackend {
    fn name(&self) -> &'static str {
        "k8s"
    }

    async fn up(&mut self, plan: &Plan) -> Result<Deployment, RunError> {
        self.bring_up(plan).await.map_err(|e| RunError::Backend {
            backend: "k8s",
            source: e.into(),
        })?;
        // The replicas are pods in the cluster: nothing here scrapes, samples or pins
        // them (loads go by service name from the cluster's load generator).
        Ok(Deployment::default())
    }

    async fn exited(&mut self) -> Vec<ReplicaExit> {
        let ns = self.settings.render.namespace.clone();
        let now = match self.cluster.restarts(&ns, self.run_id()).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the run's pods for restarts");
                return Vec::new();
            }
        };
        let exits = restarts_since(&self.restarts, &now);
        self.restarts = now;
        exits
    }

    async fn down(&mut self) {
        self.loadgen = None;
        self.prometheus = None;
        if !self.applied || self.cleanup.is_some() {
            return;
        }
        let cleanup = match self.cluster.cleanup(Some(self.run_id())).await {
            Ok(deleted) => Cleanup {
                deleted,
                error: None,
            },
            Err(e) => Cleanup {
                deleted: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        self.cleanup = Some(cleanup);
    }

    async fn drive(
        &mut self,
        options: LoadOptions,
        stop: &StopSignal,
        _live: Live,
    ) -> Result<Option<FortioResult>, BoxError> {
        let call = self.post_run(&options);
        tokio::pin!(call);
        tokio::select! {
            result = &mut call => return result.map(Some).map_err(BoxError::from),
            () = stop.stopped() => {}
        }
        // Stopped: ask the load generator to stop too; the pending call then answers
        // with what was measured so far.
        if let Err(e) = self.post(STOP_PATH, Vec::new(), STOP_GRACE).await {
            tracing::warn!(error = %e, "the load generator did not take the stop request");
            return Ok(None);
        }
        match tokio::time::timeout(STOP_GRACE, call).await {
            Ok(Ok(mut fortio)) => {
                fortio.interrupted = true;
                Ok(Some(fortio))
            }
            _ => Ok(None),
        }
    }

    fn drives_here(&self) -> bool {
        false
    }

    fn live_figures(&self) -> bool {
        false
    }

    fn prometheus(&self) -> Option<String> {
        self.prometheus
            .as_ref()
            .map(|f| format!("http://{}", f.local))
    }

    fn facts(&self) -> Facts {
        let r = &self.settings.render;
        let mut facts = Facts::new();
        facts.insert("cluster".into(), self.cluster.name.clone().into());
        facts.insert(
            "kubernetes_version".into(),
            self.version.clone().unwrap_or_default().into(),
        );
        facts.insert("mesh".into(), r.mesh.to_string().into());
        if r.mesh == Mesh::IstioAmbient {
            facts.insert("waypoint".into(), r.waypoint.into());
        }
        if r.mesh == Mesh::Linkerd {
            let sidecar = if r.linkerd_native_sidecar {
                "native"
            } else {
                "classic"
            };
            facts.insert("linkerd_sidecar".into(), sidecar.into());
        }
        facts.insert("namespace".into(), r.namespace.clone().into());
        facts.insert("image".into(), r.image.clone().into());
        facts.insert(
            "loadgen".into(),
            match r.loadgen {
                LoadGen::Meshload => "meshload",
                LoadGen::Fortio => "fortio",
            }
            .into(),
        );
        facts.insert("k8s_run_id".into(), r.run_id.clone().into());
        if let Some(p) = &self.settings.prometheus {
            facts.insert("prometheus_service".into(), p.to_string().into());
        }
        facts
    }
}
