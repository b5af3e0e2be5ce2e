//! The seam between orchestration and where nodes run: locally as processes (here) or on
//! Kubernetes (the k8s crate).

use std::future::Future;
use std::net::SocketAddr;

use crate::RunError;
use crate::plan::Plan;

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

    /// Replicas that exited since the last call.
    fn exited(&mut self) -> Vec<ReplicaExit>;

    /// Stops everything `up` started; safe to call twice.
    fn down(&mut self) -> impl Future<Output = ()>;
}
