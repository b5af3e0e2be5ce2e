//! The seam between orchestration and where nodes run: locally as processes (here) or on
//! Kubernetes (the k8s crate).

use std::future::Future;
use std::net::SocketAddr;

use meshload_loadgen::{FortioResult, Live, LoadOptions, LoadSpec};

use crate::RunError;
use crate::plan::Plan;
use crate::run::StopSignal;

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
    /// Its process, when local (for memory and CPU samples).
    pub pid: Option<u32>,
}

/// What a backend brought up.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    /// Every replica of every node.
    pub replicas: Vec<Replica>,
}

impl Deployment {
    /// The addresses of a node's replicas (its service's endpoints).
    pub fn endpoints(&self, node: &str) -> Vec<SocketAddr> {
        self.replicas
            .iter()
            .filter(|r| r.node == node)
            .map(|r| r.addr)
            .collect()
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
    ) -> impl Future<Output = Result<Option<FortioResult>, String>> {
        drive_here(options, stop.clone(), live)
    }

    /// Whether `drive` keeps the live figures it is given up to date (a remote load
    /// generator answers only at the end).
    fn live_figures(&self) -> bool {
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
) -> Result<Option<FortioResult>, String> {
    let spec = LoadSpec::try_new(options).map_err(|e| e.to_string())?;
    let result = meshload_loadgen::run(spec, stop.stopped(), live)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(result.to_fortio()))
}
