//! meshload's embedded PromQL engine: the seed's metric queries, answered without a
//! Prometheus server.
//!
//! # Layout
//! - [`labels`]: label sets.
//! - [`store`]: the in-memory time-series store and its on-disk form.
//! - [`exposition`]: the Prometheus text and OpenMetrics parser.
//! - [`eval`]: the evaluator (instant and range queries, Prometheus 3 semantics).
//! - [`output`]: results as the seed's CSV and as Prometheus API JSON.
//! - [`client`]: the Prometheus HTTP API client.
//! - [`promqltest`]: the runner of Prometheus's PromQL test scripts.

pub mod client;
pub mod eval;
pub mod exposition;
pub mod labels;
pub mod output;
pub mod promqltest;
pub mod store;

pub use eval::{
    QueryError, QueryOptions, QueryResult, Value, instant_query, range_query, system_time_ms,
};
pub use labels::Labels;
pub use store::{Skipped, Store};
