//! meshload's load generator: the part that must be right.
//!
//! `c` connections each send one request at a time. With a rate, each connection is paced
//! at `qps / c` from due times computed arithmetically from the start ([`schedule`]), and
//! latency is recorded two ways in HDR histograms: **service time** from the actual send
//! (what Fortio reports) and **response time** from the due time (corrected for
//! coordinated omission, as wrk2 does), plus the **schedule lag** between them. Results are
//! Fortio-compatible JSON ([`result`]).
//!
//! # Layout
//! - [`spec`]: options and their validation into a [`LoadSpec`].
//! - [`schedule`]: due times, staggering, jitter, exact request quotas.
//! - [`executor`]: one connection sending one request at a time, and how a failed one
//!   is classified ([`ErrorKind`], shared with the nodes).
//! - [`h1`]: the fast HTTP/1.1 exchange (a prepared request, a parsed answer, the body
//!   counted, not kept).
//! - [`tls`]: HTTPS (rustls): trust, ALPN, certificate errors in words.
//! - [`wire`]: timestamps taken at the socket, for service times close to the wire.
//! - [`collector`]: aggregates samples into histograms and a per-second series.
//! - [`run`]: orchestration, with the pacer thread.
//! - [`result`]: the result and its Fortio-compatible JSON.
//! - [`summary`]: the human-readable summary.
//! - [`rest`]: the load-generator server (Fortio's REST API).

pub mod collector;
pub mod executor;
pub mod h1;
pub mod rest;
pub mod result;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod summary;
pub mod tls;
pub mod wire;

pub use collector::{Live, LiveStats};
pub use meshload_process::ErrorKind;
pub use result::{FortioResult, LoadResult};
pub use run::{LoadError, run};
pub use spec::{LoadOptions, LoadSpec};
