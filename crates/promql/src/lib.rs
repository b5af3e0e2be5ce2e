//! meshload's embedded PromQL engine: the seed's metric queries, answered without a
//! Prometheus server.
//!
//! # Layout
//! - [`labels`]: label sets.
//! - [`store`]: the in-memory time-series store and its on-disk form.
//! - [`eval`]: the evaluator (instant and range queries, Prometheus 3 semantics).

pub mod eval;
pub mod labels;
pub mod promqltest;
pub mod store;

pub use eval::{QueryError, QueryOptions, QueryResult, Value, instant_query, range_query};
pub use labels::Labels;
pub use store::Store;
