//! The service every meshload topology node runs: the seed's `request_handler.py`, rebuilt
//! to be fast and observable.
//!
//! On any path but `/health` and `/metrics` a node calls each of its backends (in parallel
//! by default, over pooled keep-alive connections) and answers 200 only if every backend
//! answered 200; with no backends it answers 200. Latency, errors and response size can
//! be injected, reproducibly.
//!
//! # Layout
//! - [`config`]: the node's settings, backend addresses and limits.
//! - [`behaviour`]: injected latency and errors, drawn from a seeded stream.
//! - [`cli`]: the node's flags, and `meshload node` as a process (its signals, logs and
//!   usage errors come from `meshload_process`).
//! - [`capacity`]: a known capacity (`--capacity`), rejecting or queueing beyond it.
//! - [`delays`]: injected latency, to a fraction of a millisecond.
//! - [`metrics`]: the Prometheus metrics a node exposes.
//! - [`server`]: the listener, HTTP/1.1 and h2c on one port, graceful shutdown.
//! - [`server`] also serves meshload's own servers (`serve_guarded`: the REST API,
//!   `results serve`, the local Prometheus exporter) with the same guards.
//! - `connections`: the open connections, their timeouts, and who makes way at the limit
//!   (a silent, idle or body-stalled one).
//! - `handler`: a request's path: body read and discarded, injected latency and errors,
//!   the calls to the backends, the answer.

pub mod behaviour;
pub mod capacity;
pub mod cli;
pub mod config;
pub(crate) mod connections;
pub mod delays;
mod handler;
pub mod metrics;
pub mod server;

pub use config::{Backend, CallMode, Limits, NodeConfig, Resolve};
pub use handler::CHECK_HEADER;
pub use server::{NodeError, Server};
