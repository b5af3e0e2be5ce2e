//! meshload's orchestration: bring a topology up on a [`Backend`], run the load tests,
//! collect metrics during them, answer the metric queries, store every run, tear down.
//!
//! # Layout
//! - [`plan`]: nodes, replicas, pod and service names.
//! - [`backend`]: the `Backend` trait (the seam for Kubernetes) and what it brings up.
//! - [`local`]: the local backend (child `meshload node` processes on loopback).
//! - [`node_program`]: `meshload-node` or `meshload node`, the program a local node runs.
//! - [`mesh`]: Envoy sidecars for the local backend (`--mesh envoy`).
//! - [`scrape`]: scrapes and `/proc` samples into the embedded store during a run.
//! - [`prometheus`]: `prometheus: "spawn"`, a real Prometheus on the run's replicas.
//! - [`results`]: summaries, SLO checks, the files of a run folder.
//! - [`host`]: how busy the host was in each test, and whether it was saturated.
//! - [`run`]: the orchestration.
//! - [`stop`]: the stop request every part of a run awaits.
//! - [`http`]: the small client for health checks and scrapes.
//! - [`search`]: the capacity search (steps, trials, the knee) over a trial runner.
//! - [`ports`]: loopback ports for started processes, below the ephemeral range.

pub mod backend;
pub mod host;
pub mod http;
pub mod local;
pub mod mesh;
pub mod node_program;
pub mod plan;
pub mod ports;
pub mod prometheus;
pub mod results;
pub mod run;
pub mod scrape;
pub mod search;
pub mod stop;

pub use backend::{Backend, Container, Deployment, Facts, Replica, ScrapeTarget};
pub use local::LocalBackend;
pub use results::TestSummary;
pub use run::{Observer, RunReport, RunSettings, run};
pub use stop::StopSignal;

/// An error from another layer, kept whole so that its chain of causes is printed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    #[error("not ready after {}: {pods}", humantime::format_duration(*.waited))]
    NotReady {
        /// How long was waited.
        waited: std::time::Duration,
        /// The replicas that did not answer.
        pods: String,
    },
    /// The connectivity check failed for a node.
    #[error("connectivity check of node {node:?} failed")]
    Check {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A load test could not run.
    #[error("test {test:?} could not run")]
    Test {
        /// The test.
        test: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The backend failed (a cluster's API, a rollout, a port-forward).
    #[error("the {backend} backend failed")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The Prometheus answering the metric queries cannot be used.
    #[error("the metric queries' Prometheus cannot be used")]
    Prometheus(#[source] BoxError),
    /// Results could not be stored.
    #[error(transparent)]
    Store(#[from] meshload_store::StoreError),
    /// The run was stopped before any test ran.
    #[error("interrupted")]
    Interrupted,
}

pub use meshload_process::error_chain;
