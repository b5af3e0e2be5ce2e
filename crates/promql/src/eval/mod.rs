//! The PromQL evaluator: instant and range queries over a [`Store`], with Prometheus 3
//! semantics (left-open ranges and lookback, delayed `__name__` removal, extrapolated
//! `rate`, ...). Native histograms and `info()` are reported as unsupported.
//!
//! A range query is evaluated as an instant query at every step (Prometheus's range
//! evaluation is defined to agree with that), with the series each selector matches
//! looked up once per query.

mod aggregate;
mod binary;
mod evaluator;
pub use evaluator::system_time_ms;
mod functions;
mod range_functions;

pub(crate) use functions::almost_equal;

/// A float as Prometheus prints sample values (`1`, `0.5`, `+Inf`, `NaN`).
pub use aggregate::go_float as format_value;

use std::collections::BTreeSet;

use crate::labels::Labels;
use crate::store::Store;

pub use evaluator::DEFAULT_SUBQUERY_STEP_MS;

/// Prometheus's default lookback delta: 5 minutes.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// One series of a range result.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// Its labels.
    pub labels: Labels,
    /// `(timestamp ms, value)` in time order.
    pub points: Vec<(i64, f64)>,
}

/// A query's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar at the evaluation time.
    Scalar(f64),
    /// A string literal.
    String(String),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector (an instant query of `x[5m]`) or a range query's result.
    Matrix(Vec<RangeSeries>),
}

/// A query's value and the annotations it raised.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// The value.
    pub value: Value,
    /// `PromQL warning: ...` annotations.
    pub warnings: Vec<String>,
    /// `PromQL info: ...` annotations.
    pub infos: Vec<String>,
}

/// Why a query gave no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The expression does not parse.
    #[error("parse error: {0}")]
    Parse(String),
    /// The expression is longer, deeper or has more operators than accepted.
    #[error("query too large: {0}")]
    Limit(String),
    /// The expression needs a feature this engine does not evaluate.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Evaluation failed (Prometheus's wording where practical).
    #[error("{0}")]
    Eval(String),
}

/// Annotations collected during evaluation.
#[derive(Debug, Default)]
pub(crate) struct Annotations {
    pub warnings: BTreeSet<String>,
    pub infos: BTreeSet<String>,
}

/// Options of a query.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// How far back an instant selector looks for a sample.
    pub lookback_ms: i64,
    /// Step of subqueries without one.
    pub default_subquery_step_ms: i64,
    /// How long one evaluation may take (Prometheus's default: 2 minutes).
    pub timeout: std::time::Duration,
    /// Set from elsewhere (Ctrl-C, SIGTERM) to stop the evaluation at its next step.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Prometheus's default query timeout.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            lookback_ms: DEFAULT_LOOKBACK_MS,
            default_subquery_step_ms: DEFAULT_SUBQUERY_STEP_MS,
            timeout: DEFAULT_TIMEOUT,
            cancel: None,
        }
    }
}

/// Parses a query within [`meshload_config::query_limits`], mapping the parser's error.
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr, QueryError> {
    meshload_config::query_limits::check(query).map_err(QueryError::Limit)?;
    meshload_config::query_limits::parse(query).map_err(QueryError::Parse)
}

/// The series a selector such as `up{job="node"}` names (as `match[]` of the series and
/// labels APIs); an error when the text is not a plain series selector.
pub fn select_series(store: &Store, selector: &str) -> Result<Vec<usize>, QueryError> {
    match parse(selector)? {
        promql_parser::parser::Expr::VectorSelector(vs) => Ok(store.select_vector(&vs)),
        _ => Err(QueryError::Parse(format!(
            "{selector:?} is not a series selector"
        ))),
    }
}

/// The earliest and latest time a query may be evaluated at, ms from the epoch: ±2^53
/// (about 285,000 years), so that no time, less any range and offset a query may write
/// (`query_limits` bounds those), overflows.
pub const MAX_TIME_MS: i64 = 1 << 53;

fn check_time(what: &str, t_ms: i64) -> Result<(), QueryError> {
    if !(-MAX_TIME_MS..=MAX_TIME_MS).contains(&t_ms) {
        return Err(QueryError::Eval(format!(
            "{what} {} s is out of range (at most {} s from 1970)",
            t_ms / 1000,
            MAX_TIME_MS / 1000
        )));
    }
    Ok(())
}

/// Evaluates `query` at `t_ms`.
pub fn instant_query(
    store: &Store,
    query: &str,
    t_ms: i64,
    opts: QueryOptions,
) -> Result<QueryResult, QueryError> {
    check_time("the time", t_ms)?;
    let expr = parse(query)?;
    evaluator::Evaluator::new(store, query, t_ms, t_ms, opts).instant(&expr, t_ms)
}

/// Evaluates `query` at every `step_ms` from `start_ms` to `end_ms` (inclusive).
pub fn range_query(
    store: &Store,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    opts: QueryOptions,
) -> Result<QueryResult, QueryError> {
    if step_ms <= 0 {
        return Err(QueryError::Eval(
            "zero or negative query resolution step widths are not accepted".into(),
        ));
    }
    if end_ms < start_ms {
        return Err(QueryError::Eval(
            "end timestamp must not be before start time".into(),
        ));
    }
    check_time("the start", start_ms)?;
    check_time("the end", end_ms)?;
    // A step past the whole span evaluates one point, as any step that long does.
    let step_ms = step_ms.min(end_ms - start_ms + 1);
    let expr = parse(query)?;
    evaluator::Evaluator::new(store, query, start_ms, end_ms, opts)
        .range(&expr, start_ms, end_ms, step_ms)
}
