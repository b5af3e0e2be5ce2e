//! meshload's orchestration: bring a topology up on a [`Backend`], run the load tests,
//! collect metrics during them, answer the metric queries, store every run, tear down.
//!
//! # Layout
//! - [`plan`]: nodes, replicas, pod and service names.
//! - [`backend`]: the `Backend` trait (the seam for Kubernetes) and what it brings up.
//! - [`local`]: the local backend (child `meshload node` processes on loopback).
//! - [`collector`]: scrapes and `/proc` samples into the embedded store.
//! - [`prometheus`]: `prometheus: "spawn"`, a real Prometheus on the run's replicas.
//! - [`results`]: summaries, SLO checks, the files of a run folder.
//! - [`run`]: the orchestration.
//! - [`http`]: the small client for health checks and scrapes.

pub mod backend;
pub mod collector;
pub mod http;
pub mod local;
pub mod plan;
pub mod prometheus;
pub mod results;
pub mod run;

pub use backend::{Backend, Deployment, Facts, Replica};
pub use local::LocalBackend;
pub use results::TestSummary;
pub use run::{Observer, RunReport, RunSettings, StopSignal, run};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A replica did not start.
    #[error("{pod} {reason}")]
    Start {
        /// The replica.
        pod: String,
        /// Why.
        reason: String,
    },
    /// Replicas did not become healthy.
    #[error("not ready after 10s: {0}")]
    NotReady(String),
    /// The connectivity check failed for a node.
    #[error("connectivity check of node {node:?} failed: {reason}")]
    Check {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// A load test could not run.
    #[error("test {test:?}: {reason}")]
    Test {
        /// The test.
        test: String,
        /// Why.
        reason: String,
    },
    /// The backend failed (a cluster's API, a rollout, a port-forward).
    #[error("{0}")]
    Backend(String),
    /// The configured Prometheus cannot be used.
    #[error("{0}")]
    Prometheus(String),
    /// Results could not be stored.
    #[error(transparent)]
    Store(#[from] meshload_store::StoreError),
    /// The run was stopped before any test ran.
    #[error("interrupted")]
    Interrupted,
}
