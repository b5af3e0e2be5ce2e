//! The seam between orchestration and where nodes run: locally as processes (here) or on
//! Kubernetes (the k8s crate).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use meshload_loadgen::{FortioResult, Live, LoadOptions, LoadSpec};

use crate::plan::Plan;
use crate::stop::StopSignal;
use crate::{BoxError, RunError};

/// What a backend tells about where a run ran (cluster, mesh, versions), stored under
/// `backend_facts` in each run's `metadata.json`.
pub type Facts = serde_json::Map<String, serde_json::Value>;

/// One running replica of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// The node's name.
    pub node: String,
    /// The replica's index.
    pub index: u32,
    /// Its pod name (`node-<name>-<id>-<i>`).
    pub pod: String,
    /// Where it serves (`/`, `/health`, `/metrics`).
    pub addr: SocketAddr,
}

/// An endpoint in Prometheus's text format, scraped during the run with the labels a
/// Kubernetes Prometheus would attach to the pod it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeTarget {
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its path (`/metrics`; an Envoy admin's `/stats/prometheus`).
    pub path: String,
    /// The pod it belongs to.
    pub pod: String,
    /// Target labels added to every sample (`job`, `instance`, `namespace`, `pod`, ...).
    pub labels: Vec<(String, String)>,
}

impl ScrapeTarget {
    /// The target at `addr` + `path` of a pod in `namespace`, with the labels the seed's
    /// queries select on (`job`, `namespace`, `pod`, `kubernetes_pod_name`, ...).
    pub fn of_pod(
        addr: SocketAddr,
        path: &str,
        job: &str,
        namespace: &str,
        replica: &Replica,
    ) -> ScrapeTarget {
        let labels = [
            ("job", job),
            ("instance", &addr.to_string()),
            ("namespace", namespace),
            ("pod", &replica.pod),
            ("kubernetes_namespace", namespace),
            ("kubernetes_pod_name", &replica.pod),
            ("node", &replica.node),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        ScrapeTarget {
            addr,
            path: path.to_string(),
            pod: replica.pod.clone(),
            labels,
        }
    }

    /// The URL scraped.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// A local process sampled as cAdvisor samples a container
/// (`container_memory_working_set_bytes`, `container_cpu_usage_seconds_total`).
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// The process.
    pub pid: u32,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod it belongs to.
    pub pod: String,
    /// Its container name (`app` for a node, `envoy` for its sidecar).
    pub container: String,
}

/// What a backend brought up, and what of it this process can observe. On a cluster the
/// replicas are pods meshload neither scrapes nor samples: the lists are empty and the
/// cluster's Prometheus answers the metric queries.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    /// Every replica this process can reach, of every node.
    pub replicas: Vec<Replica>,
    /// What to scrape during the run.
    pub scrape_targets: Vec<ScrapeTarget>,
    /// Local processes to sample during the run.
    pub containers: Vec<Container>,
    /// Where this process's load generator sends a node's traffic, by node (empty when
    /// the load goes by name, from a load generator elsewhere).
    pub entries: BTreeMap<String, Vec<SocketAddr>>,
}

impl Deployment {
    /// Where the load for `node` goes (the addresses its name stands for).
    pub fn entry(&self, node: &str) -> Vec<SocketAddr> {
        self.entries.get(node).cloned().unwrap_or_default()
    }

    /// The addresses of a node's replicas (its service's endpoints).
    pub fn endpoints(&self, node: &str) -> Vec<SocketAddr> {
        self.replicas
            .iter()
            .filter(|r| r.node == node)
            .map(|r| r.addr)
            .collect()
    }

    /// Whether anything here is collected during the run.
    pub fn observable(&self) -> bool {
        !self.scrape_targets.is_empty() || !self.containers.is_empty()
    }
}

/// A replica that stopped while the run went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaExit {
    /// Its pod name.
    pub pod: String,
    /// How it ended (`exit status 1`, `signal 9`, ...).
    pub status: String,
}

/// Where the nodes of a plan run.
pub trait Backend {
    /// A short name stored with results (`local`, `k8s`).
    fn name(&self) -> &'static str;

    /// Brings every node of the plan up and waits until each replica is ready.
    fn up(&mut self, plan: &Plan) -> impl Future<Output = Result<Deployment, RunError>>;

    /// Replicas that exited (or, on Kubernetes, restarted or went away) since the last
    /// call.
    fn exited(&mut self) -> impl Future<Output = Vec<ReplicaExit>>;

    /// Stops everything `up` started; safe to call twice.
    fn down(&mut self) -> impl Future<Output = ()>;

    /// Sends one load (a test or a connectivity check) from where this backend's load
    /// generator is, and returns its Fortio-shaped result; `None` when a stop request
    /// ended it before any result came back. By default the load generator runs in
    /// this process (`options.connect_to` pins the local replicas).
    fn drive(
        &mut self,
        options: LoadOptions,
        stop: &StopSignal,
        live: Live,
    ) -> impl Future<Output = Result<Option<FortioResult>, BoxError>> {
        drive_here(options, stop.clone(), live)
    }

    /// Whether `drive` keeps the live figures it is given up to date (a remote load
    /// generator answers only at the end).
    fn live_figures(&self) -> bool {
        true
    }

    /// Whether `drive` runs the load generator in this process, on this host (its CPU
    /// and the host's are then recorded with each run).
    fn drives_here(&self) -> bool {
        true
    }

    /// The Prometheus (a URL) that answers metric queries the config leaves to the
    /// embedded engine: a cluster's, reached through a port-forward. `None` locally.
    fn prometheus(&self) -> Option<String> {
        None
    }

    /// Facts stored with every run (cluster, mesh, Kubernetes version).
    fn facts(&self) -> Facts {
        Facts::new()
    }
}

/// Runs a load with the load generator of this process.
pub async fn drive_here(
    options: LoadOptions,
    stop: StopSignal,
    live: Live,
) -> Result<Option<FortioResult>, BoxError> {
    let spec = LoadSpec::try_new(options)?;
    for warning in spec.warnings() {
        tracing::warn!("{warning}");
    }
    let result = meshload_loadgen::run(spec, stop.stopped(), live).await?;
    Ok(Some(result.to_fortio()))
}
