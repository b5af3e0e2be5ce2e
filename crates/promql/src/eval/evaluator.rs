//! Expression dispatch, selectors, subqueries and the final clean-up of results.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use regex::Regex;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};

use super::{Annotations, QueryError, QueryOptions, QueryResult, RangeSeries, Sample, Value};

/// The most steps a range query may have: Prometheus refuses more than 11,000 points per
/// series.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;
use crate::labels::{Labels, LabelsHasher, LabelsMap, METRIC_NAME};
use crate::store::{SeriesId, Store, is_stale};
/// The most steps one subquery may evaluate (the bound the parser already checks nested
/// subqueries against, kept here for a default step set smaller than Prometheus's).
pub use meshload_config::query_limits::MAX_SUBQUERY_STEPS;

/// Step of subqueries without one: Prometheus's default evaluation interval, 1 minute.
pub use meshload_config::query_limits::DEFAULT_SUBQUERY_STEP_MS;

/// One sample during evaluation.
#[derive(Debug, Clone)]
pub(crate) struct S {
    pub labels: Labels,
    pub v: f64,
    /// Timestamp of the underlying sample (what `timestamp()` returns).
    pub t: i64,
    /// `__name__` is to be removed at the end (delayed name removal).
    pub drop_name: bool,
}

/// One series of a range vector during evaluation. Points are borrowed from the store
/// when a selector reads them (no copy per step), owned when computed (subqueries).
#[derive(Debug, Clone)]
pub(crate) struct M<'a> {
    pub labels: Labels,
    pub points: Cow<'a, [(i64, f64)]>,
    pub drop_name: bool,
}

/// A value during evaluation.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Scalar(f64),
    Str(String),
    Vector(Vec<S>),
    Matrix(Vec<M<'a>>),
}

pub(crate) type EvalResult<T> = Result<T, QueryError>;

pub(crate) fn err<T>(msg: impl Into<String>) -> EvalResult<T> {
    Err(QueryError::Eval(msg.into()))
}

/// Evaluates one query.
pub(crate) struct Evaluator<'a> {
    pub store: &'a Store,
    pub query: &'a str,
    /// Query start and end (what `@ start()` and `@ end()` mean).
    pub start: i64,
    pub end: i64,
    pub opts: QueryOptions,
    /// When the evaluation gives up (`opts.timeout` after it began).
    deadline: std::time::Instant,
    pub annotations: RefCell<Annotations>,
    selections: RefCell<HashMap<*const VectorSelector, Rc<Selection>>>,
    /// Label sets with their name removed, remembered across steps.
    nameless: RefCell<LabelsMap<Labels>>,
    /// Label sets computed by an expression node from an input label set (grouping
    /// keys, match signatures, relabelling), remembered across steps: the same series
    /// come through every step of a range query.
    memo: RefCell<HashMap<MemoKey, Labels, BuildHasherDefault<LabelsHasher>>>,
    /// Compiled regular expressions by pattern.
    regexes: RefCell<HashMap<String, Regex>>,
}

/// The series a selector matches (sorted by labels, as Prometheus's storage returns
/// them), with each series' last search bounds.
struct Selection {
    ids: Vec<SeriesId>,
    hints: Vec<std::cell::Cell<(usize, usize)>>,
}

impl Selection {
    /// The samples of the `i`-th series in `(mint, maxt]`.
    fn range<'s>(&self, store: &'s Store, i: usize, mint: i64, maxt: i64) -> &'s [(i64, f64)] {
        let mut hint = self.hints[i].get();
        let samples = store.get(self.ids[i]).range_from(mint, maxt, &mut hint);
        self.hints[i].set(hint);
        samples
    }
}

/// A memo key: an expression node (by address) and an input label set.
#[derive(PartialEq, Eq)]
struct MemoKey {
    node: usize,
    labels: Labels,
}

impl Hash for MemoKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.labels.hash_value() ^ (self.node as u64).rotate_left(29));
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(store: &'a Store, query: &'a str, start: i64, end: i64, opts: QueryOptions) -> Self {
        Evaluator {
            store,
            query,
            start,
            end,
            deadline: std::time::Instant::now() + opts.timeout,
            opts,
            annotations: RefCell::new(Annotations::default()),
            selections: RefCell::new(HashMap::new()),
            nameless: RefCell::new(LabelsMap::default()),
            memo: RefCell::new(HashMap::default()),
            regexes: RefCell::new(HashMap::new()),
        }
    }

    fn finish(&self, value: super::Value) -> QueryResult {
        let a = self.annotations.borrow();
        QueryResult {
            value,
            warnings: a.warnings.iter().cloned().collect(),
            infos: a.infos.iter().cloned().collect(),
        }
    }

    pub fn warn(&self, msg: String) {
        self.annotations
            .borrow_mut()
            .warnings
            .insert(format!("PromQL warning: {msg}"));
    }

    pub fn info(&self, msg: String) {
        self.annotations
            .borrow_mut()
            .infos
            .insert(format!("PromQL info: {msg}"));
    }

    /// An instant query's result.
    pub fn instant(&self, expr: &Expr, t: i64) -> Result<QueryResult, QueryError> {
        let value = match self.eval(expr, t)? {
            Val::Scalar(v) => Value::Scalar(v),
            Val::Str(s) => Value::String(s),
            Val::Vector(v) => Value::Vector(
                self.finish_vector(v)?
                    .into_iter()
                    .map(|s| Sample {
                        labels: s.labels,
                        value: s.v,
                    })
                    .collect(),
            ),
            Val::Matrix(m) => Value::Matrix(finish_matrix(m)?),
        };
        Ok(self.finish(value))
    }

    /// A range query's result: the expression at every step, series joined by labels.
    pub fn range(
        &self,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<QueryResult, QueryError> {
        let points = (end - start) / step + 1;
        if points > MAX_POINTS_PER_SERIES {
            // Prometheus's own limit and wording.
            return err(format!(
                "exceeded maximum resolution of {MAX_POINTS_PER_SERIES} points per timeseries. Try decreasing the query resolution (?step=XX)"
            ));
        }
        let mut series: LabelsMap<Vec<(i64, f64)>> = LabelsMap::default();
        let mut order: Vec<Labels> = Vec::new();
        let mut t = start;
        while t <= end {
            let samples = match self.eval(expr, t)? {
                Val::Scalar(v) => vec![S {
                    labels: Labels::default(),
                    v,
                    t,
                    drop_name: false,
                }],
                Val::Vector(v) => self.finish_vector(v)?,
                Val::Str(_) | Val::Matrix(_) => {
                    return err(format!(
                        "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                        type_name(expr)
                    ));
                }
            };
            for s in samples {
                let points = series.entry(s.labels.clone()).or_insert_with(|| {
                    order.push(s.labels.clone());
                    Vec::new()
                });
                points.push((t, s.v));
            }
            t += step;
        }
        let matrix = order
            .into_iter()
            .map(|labels| {
                let points = series.remove(&labels).unwrap_or_default();
                RangeSeries { labels, points }
            })
            .collect();
        Ok(self.finish(Value::Matrix(matrix)))
    }

    /// Evaluates `expr` at time `t`.
    pub fn eval(&self, expr: &Expr, t: i64) -> EvalResult<Val<'a>> {
        // Every (sub)expression at every step passes here: the one place to give up.
        if std::time::Instant::now() > self.deadline {
            return err("query timed out in expression evaluation".to_string());
        }
        if let Some(cancel) = &self.opts.cancel
            && cancel.load(std::sync::atomic::Ordering::Relaxed)
        {
            return err("query stopped: the run is stopping".to_string());
        }
        match expr {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(v) => Ok(Val::Vector(
                    v.into_iter()
                        .map(|s| S {
                            v: -s.v,
                            drop_name: true,
                            ..s
                        })
                        .collect(),
                )),
                _ => err("unary expression only allowed on expressions of type scalar or vector"),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.select_instant(vs, t)?)),
            Expr::MatrixSelector(ms) => Ok(Val::Matrix(self.select_range(&ms.vs, ms.range, t)?)),
            Expr::Subquery(sq) => Ok(Val::Matrix(self.eval_subquery(sq, t)?)),
            Expr::Call(call) => self.eval_call(call, t),
            Expr::Aggregate(agg) => self.eval_aggregate(agg, t),
            Expr::Binary(b) => self.eval_binary(b, t),
            Expr::Extension(_) => Err(QueryError::Unsupported("extension expressions".into())),
        }
    }

    /// Evaluates an expression expected to give a scalar.
    pub fn eval_scalar(&self, expr: &Expr, t: i64) -> EvalResult<f64> {
        match self.eval(expr, t)? {
            Val::Scalar(v) => Ok(v),
            _ => err(format!("expected scalar, got {}", type_name(expr))),
        }
    }

    /// Evaluates an expression expected to give an instant vector.
    pub fn eval_vector(&self, expr: &Expr, t: i64) -> EvalResult<Vec<S>> {
        match self.eval(expr, t)? {
            Val::Vector(v) => Ok(v),
            _ => err(format!("expected instant vector, got {}", type_name(expr))),
        }
    }

    /// Evaluates an expression expected to give a range vector.
    pub fn eval_matrix(&self, expr: &Expr, t: i64) -> EvalResult<Vec<M<'a>>> {
        match self.eval(expr, t)? {
            Val::Matrix(m) => Ok(m),
            _ => err(format!("expected range vector, got {}", type_name(expr))),
        }
    }

    /// Evaluates an expression expected to give a string.
    pub fn eval_string(&self, expr: &Expr, t: i64) -> EvalResult<String> {
        match self.eval(expr, t)? {
            Val::Str(s) => Ok(s),
            _ => err(format!("expected string, got {}", type_name(expr))),
        }
    }

    /// The time a selector reads at: `@` replaces `t`, `offset` moves it back.
    pub fn reference_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, t: i64) -> i64 {
        let base = match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(time)) => system_time_ms(time),
        };
        let moved = match offset {
            None => base,
            Some(Offset::Pos(d)) => base.saturating_sub(duration_ms(d)),
            Some(Offset::Neg(d)) => base.saturating_add(duration_ms(d)),
        };
        // An `@` as far out as a query may name any time (±2^53 ms, as the query's own
        // start and end): nothing after it, a range or a step, overflows.
        moved.clamp(-super::MAX_TIME_MS, super::MAX_TIME_MS)
    }

    fn series_for(&self, vs: &VectorSelector) -> EvalResult<Rc<Selection>> {
        let key = vs as *const VectorSelector;
        if let Some(ids) = self.selections.borrow().get(&key) {
            return Ok(ids.clone());
        }
        let ids = self.store.select_vector(vs);
        if let Some(&native) = ids.iter().find(|&&id| self.store.get(id).native_histogram) {
            let name = self.store.get(native).labels.to_string();
            return Err(QueryError::Unsupported(format!(
                "native histograms (series {name})"
            )));
        }
        let hints = ids.iter().map(|_| std::cell::Cell::new((0, 0))).collect();
        let selection = Rc::new(Selection { ids, hints });
        self.selections.borrow_mut().insert(key, selection.clone());
        Ok(selection)
    }

    /// The newest sample of each matching series in `(t - lookback, t]`.
    pub fn select_instant(&self, vs: &VectorSelector, t: i64) -> EvalResult<Vec<S>> {
        let rt = self.reference_time(&vs.at, &vs.offset, t);
        let sel = self.series_for(vs)?;
        let mut out = Vec::with_capacity(sel.ids.len());
        for (i, &id) in sel.ids.iter().enumerate() {
            let series = self.store.get(id);
            let Some(&(ts, v)) = sel
                .range(self.store, i, rt - self.opts.lookback_ms, rt)
                .last()
            else {
                continue;
            };
            if is_stale(v) {
                continue;
            }
            out.push(S {
                labels: series.labels.clone(),
                v,
                t: ts,
                drop_name: false,
            });
        }
        Ok(out)
    }

    /// The samples of each matching series in `(t - range, t]`, staleness markers dropped.
    pub fn select_range(
        &self,
        vs: &VectorSelector,
        range: Duration,
        t: i64,
    ) -> EvalResult<Vec<M<'a>>> {
        let rt = self.reference_time(&vs.at, &vs.offset, t);
        let sel = self.series_for(vs)?;
        let mut out = Vec::with_capacity(sel.ids.len());
        for (i, &id) in sel.ids.iter().enumerate() {
            let series = self.store.get(id);
            let slice = sel.range(self.store, i, rt - duration_ms(&range), rt);
            // Borrow the store's samples unless staleness markers must be dropped.
            let points: Cow<'a, [(i64, f64)]> =
                if series.has_stale && slice.iter().any(|(_, v)| is_stale(*v)) {
                    Cow::Owned(
                        slice
                            .iter()
                            .filter(|(_, v)| !is_stale(*v))
                            .copied()
                            .collect(),
                    )
                } else {
                    Cow::Borrowed(slice)
                };
            if !points.is_empty() {
                out.push(M {
                    labels: series.labels.clone(),
                    points,
                    drop_name: false,
                });
            }
        }
        Ok(out)
    }

    /// `expr[range:step]`: the inner expression at every step-aligned time in the window.
    /// A subquery evaluates its expression once per step: `x[1y:1ms]` would be 31 billion
    /// evaluations, so the steps are bounded.
    fn eval_subquery(&self, sq: &SubqueryExpr, t: i64) -> EvalResult<Vec<M<'a>>> {
        let rt = self.reference_time(&sq.at, &sq.offset, t);
        let step = sq
            .step
            .as_ref()
            .map_or(self.opts.default_subquery_step_ms, duration_ms)
            .max(1);
        let window_start = rt - duration_ms(&sq.range);
        let steps = (rt - window_start) / step;
        if steps > MAX_SUBQUERY_STEPS {
            return err(format!(
                "query processing would load too many samples into memory: a subquery of {steps} steps (at most {MAX_SUBQUERY_STEPS}); use a larger subquery step"
            ));
        }
        // The first step-aligned time after the window's (open) start, as Prometheus does
        // it (Go's division truncates toward zero, as Rust's does).
        let mut ts = step * (window_start / step);
        if ts <= window_start {
            ts += step;
        }
        let mut series: HashMap<Labels, (M<'a>, Vec<(i64, f64)>)> = HashMap::new();
        let mut order = Vec::new();
        while ts <= rt {
            let samples = match self.eval(&sq.expr, ts)? {
                Val::Scalar(v) => vec![S {
                    labels: Labels::default(),
                    v,
                    t: ts,
                    drop_name: false,
                }],
                Val::Vector(v) => v,
                _ => {
                    return err("subquery is only allowed on instant vector or scalar expressions");
                }
            };
            for s in samples {
                let entry = series.entry(s.labels.clone()).or_insert_with(|| {
                    order.push(s.labels.clone());
                    let m = M {
                        labels: s.labels.clone(),
                        points: Cow::Borrowed(&[]),
                        drop_name: s.drop_name,
                    };
                    (m, Vec::new())
                });
                entry.1.push((ts, s.v));
            }
            ts += step;
        }
        Ok(order
            .into_iter()
            .filter_map(|l| series.remove(&l))
            .map(|(m, points)| M {
                points: Cow::Owned(points),
                ..m
            })
            .collect())
    }

    /// `f(labels)` for expression node `node`, computed once per input label set.
    pub(crate) fn memo<N>(
        &self,
        node: &N,
        labels: &Labels,
        f: impl FnOnce(&Labels) -> Labels,
    ) -> Labels {
        let key = MemoKey {
            node: node as *const N as usize,
            labels: labels.clone(),
        };
        if let Some(found) = self.memo.borrow().get(&key) {
            return found.clone();
        }
        let value = f(labels);
        self.memo.borrow_mut().insert(key, value.clone());
        value
    }

    /// The compiled, anchored form of a PromQL regular expression, compiled once.
    pub(crate) fn regex(&self, pattern: &str) -> Result<Regex, regex::Error> {
        if let Some(re) = self.regexes.borrow().get(pattern) {
            return Ok(re.clone());
        }
        let re = Regex::new(&format!("^(?s:{pattern})$"))?;
        self.regexes
            .borrow_mut()
            .insert(pattern.to_string(), re.clone());
        Ok(re)
    }

    /// Drops to-be-dropped names and rejects duplicate label sets.
    pub(crate) fn finish_vector(&self, mut v: Vec<S>) -> EvalResult<Vec<S>> {
        let mut any_dropped = false;
        let mut nameless = self.nameless.borrow_mut();
        for s in &mut v {
            if s.drop_name {
                let without = nameless
                    .entry(s.labels.clone())
                    .or_insert_with(|| s.labels.without_name());
                s.labels = without.clone();
                s.drop_name = false;
                any_dropped = true;
            }
        }
        if any_dropped {
            check_unique(v.iter().map(|s| &s.labels))?;
        }
        Ok(v)
    }

    /// The `(start, end)` window a range-vector argument covers at `t` (what `rate`
    /// extrapolates to).
    pub fn matrix_window(&self, arg: &Expr, t: i64) -> (i64, i64) {
        match arg {
            Expr::MatrixSelector(ms) => {
                let end = self.reference_time(&ms.vs.at, &ms.vs.offset, t);
                (end - duration_ms(&ms.range), end)
            }
            Expr::Subquery(sq) => {
                let end = self.reference_time(&sq.at, &sq.offset, t);
                (end - duration_ms(&sq.range), end)
            }
            Expr::Paren(p) => self.matrix_window(&p.expr, t),
            _ => (t, t),
        }
    }
}

fn finish_matrix(mut m: Vec<M<'_>>) -> EvalResult<Vec<RangeSeries>> {
    let mut any_dropped = false;
    for s in &mut m {
        if s.drop_name {
            s.labels.remove(METRIC_NAME);
            any_dropped = true;
        }
    }
    if any_dropped {
        check_unique(m.iter().map(|s| &s.labels))?;
    }
    Ok(m.into_iter()
        .map(|s| RangeSeries {
            labels: s.labels,
            points: s.points.into_owned(),
        })
        .collect())
}

/// Fails when two series share a label set.
pub(crate) fn check_unique<'l>(
    labels: impl ExactSizeIterator<Item = &'l Labels>,
) -> EvalResult<()> {
    let mut seen =
        crate::labels::LabelsSet::with_capacity_and_hasher(labels.len(), Default::default());
    for l in labels {
        if !seen.insert(l.clone()) {
            return err("vector cannot contain metrics with the same labelset");
        }
    }
    Ok(())
}

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A time as PromQL timestamps are: milliseconds since the Unix epoch (negative before).
pub fn system_time_ms(t: &std::time::SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => -duration_ms(&e.duration()),
    }
}

/// The PromQL type name of an expression, as error messages give it.
pub(crate) fn type_name(expr: &Expr) -> &'static str {
    use promql_parser::parser::value::ValueType;
    match expr.value_type() {
        ValueType::Vector => "instant vector",
        ValueType::Scalar => "scalar",
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    }
}
