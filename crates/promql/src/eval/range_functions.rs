//! Functions over range vectors: `rate` and friends, `*_over_time`, regression,
//! smoothing.

use promql_parser::parser::Expr;

use super::aggregate::{go_float, kahan_inc, kahan_sum, mean, quantile};
use super::evaluator::{EvalResult, Evaluator, M, S, Val, err};
use super::functions::unwrap_parens;

/// Whether a function keeps the metric name of its input series.
fn keeps_name(f: RangeFn) -> bool {
    matches!(f, RangeFn::LastOverTime | RangeFn::FirstOverTime)
}

impl<'a> Evaluator<'a> {
    /// Evaluates `name` if it is a range-vector function; `None` otherwise.
    pub(crate) fn eval_range_function(
        &self,
        name: &str,
        args: &[&Expr],
        t: i64,
    ) -> EvalResult<Option<Val<'a>>> {
        let Some(f) = RangeFn::from_name(name) else {
            return Ok(None);
        };
        let matrix_arg = usize::from(f == RangeFn::QuantileOverTime);
        let arg = args[matrix_arg];
        let matrix = self.eval_matrix(arg, t)?;
        if f == RangeFn::AbsentOverTime {
            return Ok(Some(self.absent(arg, matrix.is_empty(), t)));
        }
        let scalar = |i: usize| -> EvalResult<f64> { self.eval_scalar(args[i], t) };
        let op = match f {
            RangeFn::QuantileOverTime => {
                let phi = scalar(0)?;
                if !(0.0..=1.0).contains(&phi) {
                    self.warn(format!(
                        "quantile value should be between 0 and 1, got {} {}",
                        go_float(phi),
                        self.position_of(args[0])
                    ));
                }
                Op::Quantile(phi)
            }
            RangeFn::PredictLinear => Op::PredictLinear(scalar(1)?),
            RangeFn::DoubleExponentialSmoothing => {
                let (sf, tf) = (scalar(1)?, scalar(2)?);
                if !(sf > 0.0 && sf < 1.0) {
                    return err(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                    ));
                }
                if !(tf > 0.0 && tf < 1.0) {
                    return err(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
                    ));
                }
                Op::Smoothing(sf, tf)
            }
            _ => Op::Plain,
        };
        if matches!(f, RangeFn::Rate | RangeFn::Increase) {
            self.note_non_counters(&matrix, arg);
        }
        let (window_start, window_end) = self.matrix_window(arg, t);
        let mut out = Vec::with_capacity(matrix.len());
        for series in matrix {
            let w = Window {
                start: window_start,
                end: window_end,
                eval: t,
            };
            if let Some(v) = apply(f, &op, &series.points, w) {
                let drop_name = series.drop_name || !keeps_name(f);
                out.push(S {
                    labels: series.labels,
                    v,
                    t,
                    drop_name,
                });
            }
        }
        Ok(Some(Val::Vector(out)))
    }

    /// Prometheus's info annotation for `rate`/`increase` over a metric whose name does
    /// not look like a counter's.
    fn note_non_counters(&self, matrix: &[M<'a>], arg: &Expr) {
        for series in matrix {
            let Some(name) = series.labels.name() else {
                continue;
            };
            if !["_total", "_sum", "_count", "_bucket"]
                .iter()
                .any(|s| name.ends_with(s))
            {
                self.info(format!(
                    "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {name:?} {}",
                    self.position_of(unwrap_parens(arg))
                ));
            }
        }
    }
}

/// The range-vector functions, resolved from the name once per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeFn {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Deriv,
    PredictLinear,
    Changes,
    Resets,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    LastOverTime,
    FirstOverTime,
    StddevOverTime,
    StdvarOverTime,
    PresentOverTime,
    AbsentOverTime,
    MadOverTime,
    TsOfMinOverTime,
    TsOfMaxOverTime,
    TsOfLastOverTime,
    TsOfFirstOverTime,
    DoubleExponentialSmoothing,
    QuantileOverTime,
}

impl RangeFn {
    fn from_name(name: &str) -> Option<RangeFn> {
        Some(match name {
            "rate" => RangeFn::Rate,
            "increase" => RangeFn::Increase,
            "delta" => RangeFn::Delta,
            "irate" => RangeFn::Irate,
            "idelta" => RangeFn::Idelta,
            "deriv" => RangeFn::Deriv,
            "predict_linear" => RangeFn::PredictLinear,
            "changes" => RangeFn::Changes,
            "resets" => RangeFn::Resets,
            "avg_over_time" => RangeFn::AvgOverTime,
            "min_over_time" => RangeFn::MinOverTime,
            "max_over_time" => RangeFn::MaxOverTime,
            "sum_over_time" => RangeFn::SumOverTime,
            "count_over_time" => RangeFn::CountOverTime,
            "last_over_time" => RangeFn::LastOverTime,
            "first_over_time" => RangeFn::FirstOverTime,
            "stddev_over_time" => RangeFn::StddevOverTime,
            "stdvar_over_time" => RangeFn::StdvarOverTime,
            "present_over_time" => RangeFn::PresentOverTime,
            "absent_over_time" => RangeFn::AbsentOverTime,
            "mad_over_time" => RangeFn::MadOverTime,
            "ts_of_min_over_time" => RangeFn::TsOfMinOverTime,
            "ts_of_max_over_time" => RangeFn::TsOfMaxOverTime,
            "ts_of_last_over_time" => RangeFn::TsOfLastOverTime,
            "ts_of_first_over_time" => RangeFn::TsOfFirstOverTime,
            "quantile_over_time" => RangeFn::QuantileOverTime,
            "double_exponential_smoothing" | "holt_winters" => RangeFn::DoubleExponentialSmoothing,
            _ => return None,
        })
    }
}

/// Extra arguments of some functions.
enum Op {
    Plain,
    Quantile(f64),
    PredictLinear(f64),
    Smoothing(f64, f64),
}

/// The time window a range function looks at.
#[derive(Clone, Copy)]
struct Window {
    /// Window start (exclusive) and end, ms.
    start: i64,
    end: i64,
    /// Evaluation time, ms.
    eval: i64,
}

fn apply(f: RangeFn, op: &Op, points: &[(i64, f64)], w: Window) -> Option<f64> {
    let values = || points.iter().map(|p| p.1);
    let last = points.last()?;
    Some(match f {
        RangeFn::Rate => extrapolated(points, w, true, true)?,
        RangeFn::Increase => extrapolated(points, w, true, false)?,
        RangeFn::Delta => extrapolated(points, w, false, false)?,
        RangeFn::Irate | RangeFn::Idelta => instant_delta(points, f == RangeFn::Irate)?,
        RangeFn::Deriv => {
            if points.len() < 2 {
                return None;
            }
            linear_regression(points, points[0].0).0
        }
        RangeFn::PredictLinear => {
            if points.len() < 2 {
                return None;
            }
            let Op::PredictLinear(secs) = op else {
                return None;
            };
            let (slope, intercept) = linear_regression(points, w.eval);
            slope * secs + intercept
        }
        RangeFn::Changes => points
            .windows(2)
            .filter(|p| !(p[0].1 == p[1].1 || (p[0].1.is_nan() && p[1].1.is_nan())))
            .count() as f64,
        RangeFn::Resets => points.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64,
        RangeFn::AvgOverTime => mean(&values().collect::<Vec<_>>()),
        RangeFn::SumOverTime => kahan_sum(values()),
        RangeFn::MinOverTime => {
            values().fold(f64::NAN, |a, v| if a.is_nan() || v < a { v } else { a })
        }
        RangeFn::MaxOverTime => {
            values().fold(f64::NAN, |a, v| if a.is_nan() || v > a { v } else { a })
        }
        RangeFn::CountOverTime => points.len() as f64,
        RangeFn::LastOverTime => last.1,
        RangeFn::FirstOverTime => points[0].1,
        RangeFn::PresentOverTime => 1.0,
        RangeFn::StdvarOverTime => variance_compensated(values()),
        RangeFn::StddevOverTime => variance_compensated(values()).sqrt(),
        RangeFn::QuantileOverTime => {
            let Op::Quantile(phi) = op else { return None };
            quantile(*phi, &mut values().collect::<Vec<_>>())
        }
        RangeFn::MadOverTime => {
            // A NaN sample makes the result NaN rather than being silently dropped.
            if values().any(f64::is_nan) {
                return Some(f64::NAN);
            }
            let mut v: Vec<f64> = values().collect();
            let median = quantile(0.5, &mut v);
            let mut deviations: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
            quantile(0.5, &mut deviations)
        }
        RangeFn::TsOfLastOverTime => last.0 as f64 / 1000.0,
        RangeFn::TsOfFirstOverTime => points[0].0 as f64 / 1000.0,
        RangeFn::TsOfMaxOverTime => extreme_time(points, |v, best| v >= best),
        RangeFn::TsOfMinOverTime => extreme_time(points, |v, best| v <= best),
        RangeFn::DoubleExponentialSmoothing => {
            let Op::Smoothing(sf, tf) = op else {
                return None;
            };
            smoothing(points, *sf, *tf)?
        }
        RangeFn::AbsentOverTime => return None,
    })
}

/// Prometheus's `extrapolatedRate`: the change over the window, counter resets
/// compensated, extrapolated to the window's edges (by at most half an average interval
/// where the data stops short, and never below zero for counters).
fn extrapolated(points: &[(i64, f64)], w: Window, counter: bool, per_second: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        for p in points.windows(2) {
            if p[1].1 < p[0].1 {
                result += p[0].1;
            }
        }
    }
    let mut to_start = (first.0 - w.start) as f64 / 1000.0;
    let mut to_end = (w.end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled / (points.len() - 1) as f64;
    let threshold = average * 1.1;
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if per_second {
        factor /= (w.end - w.start) as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples.
fn instant_delta(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (prev, last) = (points[points.len() - 2], points[points.len() - 1]);
    let mut delta = last.1 - prev.1;
    if !is_rate {
        return Some(delta);
    }
    if last.1 < prev.1 {
        // A counter reset: the new value is the increase since the reset.
        delta = last.1;
    }
    let interval = (last.0 - prev.0) as f64 / 1000.0;
    if interval == 0.0 {
        return None;
    }
    Some(delta / interval)
}

/// Least-squares slope and intercept (at `intercept_ms`), with compensated sums.
fn linear_regression(points: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
    let init = points[0].1;
    if points.iter().all(|p| p.1 == init) {
        return if init.is_infinite() {
            (f64::NAN, f64::NAN)
        } else {
            (0.0, init)
        };
    }
    let n = points.len() as f64;
    let (mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &(t, v) in points {
        let x = (t - intercept_ms) as f64 / 1000.0;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Variance with a compensated running mean, as `stdvar_over_time`.
fn variance_compensated(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut m, mut cm, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (m + cm);
        (m, cm) = kahan_inc(delta / count, m, cm);
        (aux, caux) = kahan_inc(delta * (v - (m + cm)), aux, caux);
    }
    (aux + caux) / count
}

/// Timestamp (seconds) of the extreme value; ties go to the latest sample.
fn extreme_time(points: &[(i64, f64)], better: impl Fn(f64, f64) -> bool) -> f64 {
    let mut best = points[0];
    for &p in &points[1..] {
        if better(p.1, best.1) || best.1.is_nan() {
            best = p;
        }
    }
    best.0 as f64 / 1000.0
}

/// Holt's double exponential smoothing, as Prometheus's `double_exponential_smoothing`.
fn smoothing(points: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, points[0].1);
    let mut b = points[1].1 - points[0].1;
    for (i, p) in points.iter().enumerate().skip(1) {
        let x = sf * p.1;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        (s0, s1) = (s1, x + y);
    }
    Some(s1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(step_s: i64, values: &[f64]) -> Vec<(i64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 * step_s * 1000, *v))
            .collect()
    }

    #[test]
    fn rate_extrapolates_like_prometheus() {
        // A counter rising 10 per 15 s, sampled over a 60 s window ending at the last sample.
        let p = pts(15, &[0.0, 10.0, 20.0, 30.0, 40.0]);
        let w = Window {
            start: 0,
            end: 60_000,
            eval: 60_000,
        };
        let r = extrapolated(&p, w, true, true).expect("enough samples");
        assert!((r - 40.0 / 60.0).abs() < 1e-9, "{r}");
        // A reset in the middle is compensated.
        let p = pts(15, &[0.0, 10.0, 5.0, 15.0, 25.0]);
        assert!(extrapolated(&p, w, true, false).expect("enough") > 0.0);
    }

    #[test]
    fn regression_and_irate() {
        let p = pts(10, &[1.0, 3.0, 5.0]);
        let (slope, intercept) = linear_regression(&p, 0);
        assert!((slope - 0.2).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
        assert_eq!(instant_delta(&pts(10, &[5.0, 2.0]), true), Some(0.2));
    }
}
