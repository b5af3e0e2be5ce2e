//! Aggregation operators, with `by` and `without`.

use std::collections::HashMap;

use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_LIMIT_RATIO, T_LIMITK, T_MAX, T_MIN,
    T_QUANTILE, T_STDDEV, T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::evaluator::{EvalResult, Evaluator, S, Val, err};
use crate::labels::{Labels, LabelsMap, METRIC_NAME};

/// Neumaier's improvement of Kahan summation, as Prometheus's `kahanSumInc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Sum with compensation.
pub(crate) fn kahan_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in values {
        (sum, c) = kahan_inc(v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

/// Mean as Prometheus computes it: a compensated sum divided by the count, switching to
/// an incremental mean if the sum would overflow.
pub(crate) fn mean(values: &[f64]) -> f64 {
    let (mut sum, mut c, mut mean_v, mut incremental) = (0.0, 0.0, 0.0, false);
    for (i, &v) in values.iter().enumerate() {
        let count = (i + 1) as f64;
        if !incremental {
            let (s, nc) = kahan_inc(v, sum, c);
            // The first value always starts a plain sum, even when it is infinite.
            if i == 0 || !s.is_infinite() {
                (sum, c) = (s, nc);
                continue;
            }
            incremental = true;
            mean_v = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean_v, c) = kahan_inc(v / count, q * mean_v, q * c);
    }
    let n = values.len() as f64;
    if incremental {
        mean_v + c
    } else {
        sum / n + c / n
    }
}

/// Population variance by Welford's method, as Prometheus's `stdvar`.
pub(crate) fn variance(values: &[f64]) -> f64 {
    let (mut count, mut m, mut m2) = (0.0, 0.0, 0.0);
    for &v in values {
        count += 1.0;
        let delta = v - m;
        m += delta / count;
        m2 += delta * (v - m);
    }
    m2 / count
}

/// The φ-quantile of `values` by linear interpolation between closest ranks.
pub(crate) fn quantile(phi: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || phi.is_nan() {
        return f64::NAN;
    }
    if phi < 0.0 {
        return f64::NEG_INFINITY;
    }
    if phi > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as Go's sort of float64 does.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = phi * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Formats a float as Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        (if v > 0.0 { "+Inf" } else { "-Inf" }).into()
    } else {
        format!("{v}")
    }
}

/// Go's `labels.Hash()`: xxhash64 of `name 0xff value 0xff ...`.
fn labels_hash(labels: &Labels) -> u64 {
    use std::hash::Hasher as _;
    let mut h = twox_hash::XxHash64::with_seed(0);
    for (n, v) in labels.iter() {
        h.write(n.as_bytes());
        h.write(&[0xff]);
        h.write(v.as_bytes());
        h.write(&[0xff]);
    }
    h.finish()
}

/// The group a sample belongs to, and whether the group keeps `__name__`.
fn group_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        Some(LabelModifier::Include(by)) => labels.keep(&by.labels),
        Some(LabelModifier::Exclude(without)) => labels.drop_all(&without.labels).without_name(),
        None => Labels::default(),
    }
}

struct Group {
    labels: Labels,
    samples: Vec<S>,
}

fn groups(samples: Vec<S>, key_of: impl Fn(&Labels) -> Labels) -> Vec<Group> {
    let mut index: LabelsMap<usize> = LabelsMap::default();
    let mut out: Vec<Group> = Vec::new();
    for s in samples {
        let key = key_of(&s.labels);
        let i = *index.entry(key.clone()).or_insert_with(|| {
            out.push(Group {
                labels: key,
                samples: Vec::new(),
            });
            out.len() - 1
        });
        out[i].samples.push(s);
    }
    out
}

impl<'a> Evaluator<'a> {
    pub(crate) fn eval_aggregate(&self, agg: &AggregateExpr, t: i64) -> EvalResult<Val<'a>> {
        let id = agg.op.id();
        let modifier = agg.modifier.as_ref();
        let samples = self.eval_vector(&agg.expr, t)?;
        let param = match &agg.param {
            Some(p) if id == T_COUNT_VALUES => Param::Label(self.eval_string(p, t)?),
            Some(p) => Param::Number(self.eval_scalar(p, t)?),
            None => Param::None,
        };
        let groups = groups(samples, |l| {
            self.memo(agg, l, |l| group_labels(l, modifier))
        });
        let keeps_name = matches!(modifier, Some(LabelModifier::Include(by)) if by.labels.iter().any(|l| l == METRIC_NAME));
        let out = match id {
            T_TOPK | T_BOTTOMK => self.top_bottom(groups, param.number()?, id == T_TOPK)?,
            T_LIMITK => limitk(groups, param.number()?)?,
            T_LIMIT_RATIO => {
                let at = agg
                    .param
                    .as_deref()
                    .map(|p| self.position_of(p))
                    .unwrap_or_default();
                self.limit_ratio(groups, param.number()?, &at)?
            }
            T_COUNT_VALUES => count_values(groups, &param.label()?)?,
            _ => {
                if id == T_QUANTILE {
                    let phi = param.number()?;
                    if !(0.0..=1.0).contains(&phi) {
                        let at = agg
                            .param
                            .as_deref()
                            .map(|p| self.position_of(p))
                            .unwrap_or_default();
                        self.warn(format!(
                            "quantile value should be between 0 and 1, got {} {at}",
                            go_float(phi)
                        ));
                    }
                }
                groups
                    .into_iter()
                    .map(|g| {
                        // Grouping by the name keeps it, unless any member is to lose it.
                        let drop_name = keeps_name && g.samples.iter().any(|s| s.drop_name);
                        let values: Vec<f64> = g.samples.iter().map(|s| s.v).collect();
                        let v = simple(id, values, &param);
                        S {
                            labels: g.labels,
                            v,
                            t,
                            drop_name,
                        }
                    })
                    .collect()
            }
        };
        Ok(Val::Vector(out))
    }

    fn top_bottom(&self, groups: Vec<Group>, k: f64, top: bool) -> EvalResult<Vec<S>> {
        let k = count_param(k)?;
        let mut out = Vec::new();
        for mut g in groups {
            // NaN ranks below every number for topk and above every number for bottomk.
            g.samples
                .sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if top => b.v.total_cmp(&a.v),
                    _ => a.v.total_cmp(&b.v),
                });
            out.extend(g.samples.into_iter().take(k));
        }
        Ok(out)
    }

    fn limit_ratio(&self, groups: Vec<Group>, ratio: f64, at: &str) -> EvalResult<Vec<S>> {
        if ratio.is_nan() {
            return err("Ratio value is NaN");
        }
        let capped = ratio.clamp(-1.0, 1.0);
        if capped != ratio {
            self.warn(format!(
                "ratio value should be between -1 and 1, got {}, capping to {} {at}",
                go_float(ratio),
                go_float(capped)
            ));
        }
        let keep = |s: &S| {
            let offset = labels_hash(&s.labels) as f64 / u64::MAX as f64;
            (capped >= 0.0 && offset < capped) || (capped < 0.0 && offset >= 1.0 + capped)
        };
        Ok(groups
            .into_iter()
            .flat_map(|g| g.samples.into_iter().filter(keep))
            .collect())
    }
}

enum Param {
    None,
    Number(f64),
    Label(String),
}

impl Param {
    fn number(&self) -> EvalResult<f64> {
        match self {
            Param::Number(v) => Ok(*v),
            _ => err("aggregation needs a numeric parameter"),
        }
    }

    fn label(&self) -> EvalResult<String> {
        match self {
            Param::Label(l) => Ok(l.clone()),
            _ => err("count_values needs a label name"),
        }
    }
}

/// `k` of topk/bottomk/limitk as a count (fractions truncate, as Go's conversion does).
fn count_param(k: f64) -> EvalResult<usize> {
    if k.is_nan() {
        return err("Parameter value is NaN");
    }
    if k >= 9.223_372_036_854_776e18 {
        return err(format!("Scalar value {} overflows int64", go_float(k)));
    }
    Ok(if k < 1.0 { 0 } else { k as usize })
}

fn limitk(groups: Vec<Group>, k: f64) -> EvalResult<Vec<S>> {
    let k = count_param(k)?;
    Ok(groups
        .into_iter()
        .flat_map(|g| g.samples.into_iter().take(k))
        .collect())
}

fn count_values(groups: Vec<Group>, label: &str) -> EvalResult<Vec<S>> {
    if !is_valid_label_name(label) {
        return err(format!("invalid label name {label:?}"));
    }
    let mut out: Vec<S> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for g in groups {
        for s in g.samples {
            let mut labels = g.labels.clone();
            labels.set(label, &go_float(s.v));
            let i = *index.entry(labels.clone()).or_insert_with(|| {
                out.push(S {
                    labels,
                    v: 0.0,
                    t: s.t,
                    drop_name: false,
                });
                out.len() - 1
            });
            out[i].v += 1.0;
        }
    }
    Ok(out)
}

/// A label name Prometheus 3 accepts: any non-empty valid UTF-8 string.
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('\u{FFFD}')
}

fn simple(id: promql_parser::parser::token::TokenId, mut values: Vec<f64>, param: &Param) -> f64 {
    match id {
        T_SUM => kahan_sum(values.iter().copied()),
        T_AVG => mean(&values),
        T_COUNT => values.len() as f64,
        T_GROUP => 1.0,
        T_MIN => {
            values.iter().copied().fold(
                f64::NAN,
                |acc, v| if acc.is_nan() || v < acc { v } else { acc },
            )
        }
        T_MAX => {
            values.iter().copied().fold(
                f64::NAN,
                |acc, v| if acc.is_nan() || v > acc { v } else { acc },
            )
        }
        T_STDVAR => variance(&values),
        T_STDDEV => variance(&values).sqrt(),
        T_QUANTILE => quantile(param.number().unwrap_or(f64::NAN), &mut values),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kahan_keeps_small_terms() {
        let v = [1e100, 1.0, -1e100];
        assert_eq!(kahan_sum(v), 1.0);
    }

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(0.5, &mut [1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(1.5, &mut [1.0]), f64::INFINITY);
        assert_eq!(quantile(-1.0, &mut [1.0]), f64::NEG_INFINITY);
    }

    #[test]
    fn go_float_formatting() {
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(0.1), "0.1");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
    }
}
