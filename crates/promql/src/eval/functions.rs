//! Function calls: dispatch, and the functions over instant vectors and scalars.
//! Functions over range vectors are in `range_functions`.

use std::collections::HashMap;

use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};

use super::aggregate::{go_float, is_valid_label_name};
use super::evaluator::{EvalResult, Evaluator, S, Val, err};
use crate::eval::QueryError;
use crate::labels::{Labels, METRIC_NAME};

/// Functions that need native histograms, or that this engine does not evaluate.
const UNSUPPORTED: [&str; 9] = [
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "histogram_quantiles",
    "info",
    "integral",
];

impl<'a> Evaluator<'a> {
    pub(crate) fn eval_call(&self, call: &Call, t: i64) -> EvalResult<Val<'a>> {
        let name = call.func.name;
        let args: Vec<&Expr> = call.args.args.iter().map(|b| b.as_ref()).collect();
        if UNSUPPORTED.contains(&name) {
            return Err(QueryError::Unsupported(format!(
                "function {name}() (native histograms or experimental)"
            )));
        }
        if let Some(result) = self.eval_range_function(name, &args, t)? {
            return Ok(result);
        }
        let result = match name {
            "time" => Val::Scalar(t as f64 / 1000.0),
            "pi" => Val::Scalar(std::f64::consts::PI),
            "start" => Val::Scalar(self.start as f64 / 1000.0),
            "end" => Val::Scalar(self.end as f64 / 1000.0),
            "range" => Val::Scalar((self.end - self.start) as f64 / 1000.0),
            "vector" => Val::Vector(vec![S {
                labels: Labels::default(),
                v: self.eval_scalar(args[0], t)?,
                t,
                drop_name: false,
            }]),
            "scalar" => {
                let v = self.eval_vector(args[0], t)?;
                Val::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN })
            }
            "timestamp" => self.timestamp(args[0], t)?,
            "absent" => self.absent(args[0], self.eval_vector(args[0], t)?.is_empty(), t),
            "sort" | "sort_desc" => Val::Vector(sort_by_value(
                self.eval_vector(args[0], t)?,
                name == "sort_desc",
            )),
            "sort_by_label" | "sort_by_label_desc" => {
                self.sort_by_label(&args, t, name == "sort_by_label_desc")?
            }
            // Only relabelling can make two series' labels equal.
            "label_replace" => self.checked(self.label_replace(&args, t)?)?,
            "label_join" => self.checked(self.label_join(&args, t)?)?,
            "histogram_quantile" => self.histogram_quantile(&args, t)?,
            "round" => {
                let to_nearest = match args.get(1) {
                    Some(e) => self.eval_scalar(e, t)?,
                    None => 1.0,
                };
                let inverse = 1.0 / to_nearest;
                self.map_values(args[0], t, |v| (v * inverse + 0.5).floor() / inverse)?
            }
            "clamp" => {
                let (lo, hi) = (self.eval_scalar(args[1], t)?, self.eval_scalar(args[2], t)?);
                if hi < lo {
                    Val::Vector(Vec::new())
                } else {
                    self.map_values(args[0], t, |v| go_max(lo, go_min(hi, v)))?
                }
            }
            "clamp_min" => {
                let lo = self.eval_scalar(args[1], t)?;
                self.map_values(args[0], t, |v| go_max(lo, v))?
            }
            "clamp_max" => {
                let hi = self.eval_scalar(args[1], t)?;
                self.map_values(args[0], t, |v| go_min(hi, v))?
            }
            "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour"
            | "minute" | "month" | "year" => self.date_function(name, &args, t)?,
            _ => match math_function(name) {
                Some(f) => self.map_values(args[0], t, f)?,
                None => return Err(QueryError::Unsupported(format!("function {name}()"))),
            },
        };
        Ok(result)
    }

    /// Rejects an output vector with two series of the same labels, as Prometheus checks
    /// every function's output (names still pending removal count: with delayed name
    /// removal, a later `label_replace` may still tell such series apart).
    fn checked(&self, v: Val<'a>) -> EvalResult<Val<'a>> {
        if let Val::Vector(samples) = &v {
            super::evaluator::check_unique(samples.iter().map(|s| &s.labels))?;
        }
        Ok(v)
    }

    /// Applies `f` to every value of a vector argument; the metric name is dropped.
    fn map_values(&self, arg: &Expr, t: i64, f: impl Fn(f64) -> f64) -> EvalResult<Val<'a>> {
        let v = self.eval_vector(arg, t)?;
        Ok(Val::Vector(
            v.into_iter()
                .map(|s| S {
                    v: f(s.v),
                    drop_name: true,
                    ..s
                })
                .collect(),
        ))
    }

    fn timestamp(&self, arg: &Expr, t: i64) -> EvalResult<Val<'a>> {
        // Only a plain selector has the samples' own timestamps; anything computed is
        // stamped with the evaluation time.
        let from_selector = matches!(unwrap_parens(arg), Expr::VectorSelector(_));
        let v = self.eval_vector(arg, t)?;
        Ok(Val::Vector(
            v.into_iter()
                .map(|s| {
                    let ts = if from_selector { s.t } else { t };
                    S {
                        v: ts as f64 / 1000.0,
                        drop_name: true,
                        ..s
                    }
                })
                .collect(),
        ))
    }

    /// `absent()` and `absent_over_time()`: 1 with the labels of the selector's equality
    /// matchers when nothing matched.
    pub(crate) fn absent(&self, arg: &Expr, empty: bool, t: i64) -> Val<'a> {
        if !empty {
            return Val::Vector(Vec::new());
        }
        let labels = match unwrap_parens(arg) {
            Expr::VectorSelector(vs) => absent_labels(vs),
            Expr::MatrixSelector(ms) => absent_labels(&ms.vs),
            _ => Labels::default(),
        };
        Val::Vector(vec![S {
            labels,
            v: 1.0,
            t,
            drop_name: false,
        }])
    }

    fn sort_by_label(&self, args: &[&Expr], t: i64, desc: bool) -> EvalResult<Val<'a>> {
        let mut v = self.eval_vector(args[0], t)?;
        let names: Vec<String> = args[1..]
            .iter()
            .map(|e| self.eval_string(e, t))
            .collect::<EvalResult<_>>()?;
        v.sort_by(|a, b| {
            let mut ord = std::cmp::Ordering::Equal;
            for n in &names {
                ord = natural_cmp(a.labels.value(n), b.labels.value(n));
                if ord.is_ne() {
                    break;
                }
            }
            // Ties fall back to the whole label set, so the order is total.
            let ord = ord.then_with(|| a.labels.cmp(&b.labels));
            if desc { ord.reverse() } else { ord }
        });
        Ok(Val::Vector(v))
    }

    fn label_replace(&self, args: &[&Expr], t: i64) -> EvalResult<Val<'a>> {
        let v = self.eval_vector(args[0], t)?;
        let dst = self.eval_string(args[1], t)?;
        let replacement = self.eval_string(args[2], t)?;
        let src = self.eval_string(args[3], t)?;
        let pattern = self.eval_string(args[4], t)?;
        let re = self.regex(&pattern).map_err(|e| {
            QueryError::Eval(format!(
                "invalid regular expression in label_replace(): {e}"
            ))
        })?;
        if !is_valid_label_name(&dst) {
            return err(format!(
                "invalid destination label name in label_replace(): {dst}"
            ));
        }
        let mut out = Vec::with_capacity(v.len());
        for mut s in v {
            // The new labels depend only on the old ones: computed once per series.
            s.labels = self.memo(args[0], &s.labels, |l| {
                let mut l = l.clone();
                if let Some(caps) = re.captures(l.value(&src)) {
                    let mut value = String::new();
                    // Go's template syntax ($1, ${1}, $name) is the regex crate's too.
                    caps.expand(&replacement, &mut value);
                    l.set(&dst, &value);
                }
                l
            });
            if dst == METRIC_NAME && re.is_match(s.labels.value(&src)) {
                s.drop_name = false;
            }
            out.push(s);
        }
        Ok(Val::Vector(out))
    }

    fn label_join(&self, args: &[&Expr], t: i64) -> EvalResult<Val<'a>> {
        let v = self.eval_vector(args[0], t)?;
        let dst = self.eval_string(args[1], t)?;
        let sep = self.eval_string(args[2], t)?;
        let srcs: Vec<String> = args[3..]
            .iter()
            .map(|e| self.eval_string(e, t))
            .collect::<EvalResult<_>>()?;
        if !is_valid_label_name(&dst) {
            return err(format!(
                "invalid destination label name in label_join(): {dst}"
            ));
        }
        let out = v
            .into_iter()
            .map(|mut s| {
                let joined: Vec<&str> = srcs.iter().map(|n| s.labels.value(n)).collect();
                let joined = joined.join(&sep);
                s.labels.set(&dst, &joined);
                if dst == METRIC_NAME {
                    s.drop_name = false;
                }
                s
            })
            .collect();
        Ok(Val::Vector(out))
    }

    fn date_function(&self, name: &str, args: &[&Expr], t: i64) -> EvalResult<Val<'a>> {
        let f = move |secs: f64| {
            if !secs.is_finite() {
                return f64::NAN;
            }
            let c = Civil::from_unix(secs.floor() as i64);
            f64::from(match name {
                "days_in_month" => c.days_in_month(),
                "day_of_month" => c.day,
                "day_of_week" => c.weekday,
                "day_of_year" => c.day_of_year,
                "hour" => c.hour,
                "minute" => c.minute,
                "month" => c.month,
                _ => return c.year as f64,
            })
        };
        match args.first() {
            Some(arg) => self.map_values(arg, t, f),
            None => Ok(Val::Vector(vec![S {
                labels: Labels::default(),
                v: f(t as f64 / 1000.0),
                t,
                drop_name: false,
            }])),
        }
    }

    fn histogram_quantile(&self, args: &[&Expr], t: i64) -> EvalResult<Val<'a>> {
        let phi = self.eval_scalar(args[0], t)?;
        let v = self.eval_vector(args[1], t)?;
        if !(0.0..=1.0).contains(&phi) {
            self.warn(format!(
                "quantile value should be between 0 and 1, got {} {}",
                go_float(phi),
                self.position_of(args[0])
            ));
        }
        // Per group: its buckets (upper bound, count) and its metric name.
        type Buckets = (Vec<(f64, f64)>, String);
        let mut groups: HashMap<Labels, Buckets> = HashMap::new();
        let mut order = Vec::new();
        for s in v {
            let metric = s.labels.name().unwrap_or("").to_string();
            let le = s.labels.value("le");
            let Some(bound) = parse_go_float(le) else {
                self.warn(format!(
                    "bucket label \"le\" is missing or has a malformed value of {le:?} for metric name {metric:?} {}",
                    self.position_of(args[1])
                ));
                continue;
            };
            // Buckets group by every label but `le`, the name included: two histograms
            // that differ only by name collide when the name is dropped at the end.
            let mut key = s.labels.clone();
            key.remove("le");
            let entry = groups.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                (Vec::new(), metric)
            });
            entry.0.push((bound, s.v));
        }
        let mut out = Vec::new();
        for key in order {
            let Some((mut buckets, metric)) = groups.remove(&key) else {
                continue;
            };
            let (q, forced_monotonic) = bucket_quantile(phi, &mut buckets);
            if forced_monotonic {
                self.info(format!(
                    "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {metric:?} {}",
                    self.position_of(args[1])
                ));
            }
            out.push(S {
                labels: key,
                v: q,
                t,
                drop_name: true,
            });
        }
        Ok(Val::Vector(out))
    }

    /// `(line:column)` of an argument in the query text, as annotations end with it.
    /// The parser keeps no positions, so the argument's printed form is searched for.
    pub(crate) fn position_of(&self, arg: &Expr) -> String {
        let text = arg.to_string();
        let col = self.query.find(&text).map_or(1, |i| i + 1);
        format!("(1:{col})")
    }
}

/// Go's math.Max/Min: NaN in, NaN out.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn math_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        "deg" => f64::to_degrees,
        "rad" => f64::to_radians,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        _ => return None,
    })
}

pub(crate) fn unwrap_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

fn absent_labels(vs: &promql_parser::parser::VectorSelector) -> Labels {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &vs.matchers.matchers {
        *counts.entry(m.name.as_str()).or_default() += 1;
    }
    let pairs = vs
        .matchers
        .matchers
        .iter()
        .filter(|m| m.op == MatchOp::Equal && m.name != METRIC_NAME && counts[m.name.as_str()] == 1)
        .map(|m| (m.name.as_str(), m.value.as_str()));
    Labels::from_pairs(pairs)
}

/// Sorts by value; NaN last in both directions, as Prometheus does.
fn sort_by_value(mut v: Vec<S>, desc: bool) -> Vec<S> {
    v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ if desc => b.v.total_cmp(&a.v),
        _ => a.v.total_cmp(&b.v),
    });
    v
}

/// Natural order: runs of digits compare as numbers ("a2" < "a10").
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.chars().next(), y.chars().next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let xn = x.len() - x.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let yn = y.len() - y.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let (xd, yd) = (
                    x[..xn].trim_start_matches('0'),
                    y[..yn].trim_start_matches('0'),
                );
                let ord = xd.len().cmp(&yd.len()).then_with(|| xd.cmp(yd));
                if ord.is_ne() {
                    return ord;
                }
                (x, y) = (&x[xn..], &y[yn..]);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(&d);
                }
                (x, y) = (&x[c.len_utf8()..], &y[d.len_utf8()..]);
            }
        }
    }
}

/// Go's `strconv.ParseFloat` for bucket bounds: also `+Inf`, `Inf`, `NaN` in any case.
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => return Some(f64::INFINITY),
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok()
}

/// The φ-quantile of classic buckets `(upper bound, cumulative count)`, as Prometheus's
/// `BucketQuantile`; also whether counts had to be forced monotonic.
pub(crate) fn bucket_quantile(phi: f64, buckets: &mut [(f64, f64)]) -> (f64, bool) {
    if phi.is_nan() {
        return (f64::NAN, false);
    }
    if phi < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if phi > 1.0 {
        return (f64::INFINITY, false);
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return (f64::NAN, false);
    }
    // Coalesce buckets with the same bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(bound, count) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => merged.push((bound, count)),
        }
    }
    let forced = ensure_monotonic(&mut merged);
    if merged.len() < 2 {
        return (f64::NAN, forced);
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = phi * observations;
    let b = merged[..merged.len() - 1].partition_point(|x| x.1 < rank);
    if b == merged.len() - 1 {
        return (merged[merged.len() - 2].0, forced);
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return (merged[0].0, forced);
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

/// Makes cumulative counts non-decreasing; tiny float deltas (relative 1e-12) are
/// smoothed silently. Returns whether a real decrease was fixed.
fn ensure_monotonic(buckets: &mut [(f64, f64)]) -> bool {
    let mut forced = false;
    let Some(first) = buckets.first() else {
        return false;
    };
    let mut prev = first.1;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) {
            b.1 = prev;
            continue;
        }
        if curr < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = curr;
    }
    forced
}

/// Relative comparison as Prometheus's `almost.Equal`.
pub(crate) fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || (a.abs() + b.abs()) < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / (a.abs() + b.abs()) < epsilon
}

/// A UTC calendar date and time of day.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    weekday: u32,
    day_of_year: u32,
}

impl Civil {
    /// Howard Hinnant's days-to-civil algorithm.
    fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = is_leap(year);
        let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let day_of_year = cumulative[(month - 1) as usize] + day + u32::from(leap && month > 2);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: ((rem % 3600) / 60) as u32,
            weekday: (days + 4).rem_euclid(7) as u32,
            day_of_year,
        }
    }

    fn days_in_month(&self) -> u32 {
        match self.month {
            2 if is_leap(self.year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let c = Civil::from_unix(0);
        assert_eq!(
            (c.year, c.month, c.day, c.weekday, c.day_of_year),
            (1970, 1, 1, 4, 1)
        );
        let c = Civil::from_unix(951_782_400); // 2000-02-29
        assert_eq!(
            (c.year, c.month, c.day, c.days_in_month(), c.day_of_year),
            (2000, 2, 29, 29, 60)
        );
        let c = Civil::from_unix(-1); // 1969-12-31 23:59:59
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute),
            (1969, 12, 31, 23, 59)
        );
    }

    #[test]
    fn classic_bucket_quantiles() {
        let mut b = vec![(0.1, 10.0), (0.5, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(bucket_quantile(0.5, &mut b).0, 0.1);
        let mut b = vec![(0.1, 0.0), (0.5, 20.0), (f64::INFINITY, 20.0)];
        assert!((bucket_quantile(0.5, &mut b).0 - 0.3).abs() < 1e-12);
        let mut no_inf = vec![(0.1, 1.0)];
        assert!(bucket_quantile(0.5, &mut no_inf).0.is_nan());
        let mut non_monotonic = vec![(0.1, 10.0), (0.5, 5.0), (f64::INFINITY, 10.0)];
        assert!(bucket_quantile(0.5, &mut non_monotonic).1);
    }

    #[test]
    fn natural_order() {
        assert!(natural_cmp("a2", "a10").is_lt());
        assert!(natural_cmp("b", "a10").is_gt());
        assert!(natural_cmp("a01", "a1").is_eq());
    }
}
