//! Binary operators: arithmetic, comparisons (filtering or `bool`), set operators, and
//! vector matching with `on`/`ignoring` and `group_left`/`group_right`.

use std::collections::HashMap;

use promql_parser::parser::token::{
    T_ADD, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD, T_MUL,
    T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinModifier, BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::evaluator::{EvalResult, Evaluator, S, Val, err};
use crate::labels::{Labels, LabelsMap, LabelsSet};

/// `atan2` has no token constant of its own in the parser; it is matched by name.
fn is_atan2(op: &promql_parser::parser::token::TokenType) -> bool {
    op.to_string() == "atan2"
}

/// Applies `op` to two floats: `(value, keep)`. For comparisons the value is the left
/// operand and `keep` says whether the comparison held.
pub(crate) fn apply(b: &BinaryExpr, l: f64, r: f64) -> (f64, bool) {
    let id = b.op.id();
    match id {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ if is_atan2(&b.op) => (l.atan2(r), true),
        _ => (f64::NAN, false),
    }
}

fn is_comparison(b: &BinaryExpr) -> bool {
    b.op.is_comparison_operator()
}

fn return_bool(b: &BinaryExpr) -> bool {
    b.modifier.as_ref().is_some_and(|m| m.return_bool)
}

/// Arithmetic drops the metric name; comparisons without `bool` keep it.
fn drops_name(b: &BinaryExpr) -> bool {
    !is_comparison(b) || return_bool(b)
}

impl<'a> Evaluator<'a> {
    pub(crate) fn eval_binary(&self, b: &BinaryExpr, t: i64) -> EvalResult<Val<'a>> {
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let (v, keep) = apply(b, l, r);
                Ok(Val::Scalar(if is_comparison(b) {
                    f64::from(u8::from(keep))
                } else {
                    v
                }))
            }
            (Val::Vector(l), Val::Scalar(r)) => Ok(Val::Vector(vector_scalar(b, l, r, false))),
            (Val::Scalar(l), Val::Vector(r)) => Ok(Val::Vector(vector_scalar(b, r, l, true))),
            (Val::Vector(l), Val::Vector(r)) => {
                let m = b.modifier.as_ref();
                let sig = |labels: &Labels| self.memo(b, labels, |l| signature(l, m));
                match b.op.id() {
                    T_LAND => Ok(Val::Vector(and_unless(l, &r, true, &sig))),
                    T_LUNLESS => Ok(Val::Vector(and_unless(l, &r, false, &sig))),
                    T_LOR => Ok(Val::Vector(or(l, r, &sig))),
                    _ => vector_vector(b, l, r, &sig).map(Val::Vector),
                }
            }
            _ => err("binary expression must contain only scalar and instant vector types"),
        }
    }
}

fn vector_scalar(b: &BinaryExpr, vector: Vec<S>, scalar: f64, scalar_on_left: bool) -> Vec<S> {
    let mut out = Vec::with_capacity(vector.len());
    for s in vector {
        let (l, r) = if scalar_on_left {
            (scalar, s.v)
        } else {
            (s.v, scalar)
        };
        let (mut v, mut keep) = apply(b, l, r);
        if is_comparison(b) && scalar_on_left {
            // The output is always the vector's value, even when it is on the right.
            v = r;
        }
        if return_bool(b) {
            v = f64::from(u8::from(keep));
            keep = true;
        }
        if keep {
            out.push(S {
                v,
                drop_name: s.drop_name || drops_name(b),
                ..s
            });
        }
    }
    out
}

/// The labels two samples are matched on.
fn signature(labels: &Labels, modifier: Option<&BinModifier>) -> Labels {
    match modifier.and_then(|m| m.matching.as_ref()) {
        Some(LabelModifier::Include(on)) => labels.keep(&on.labels),
        Some(LabelModifier::Exclude(ignoring)) => labels.drop_all(&ignoring.labels).without_name(),
        None => labels.without_name(),
    }
}

/// The match signature of a label set (see [`signature`], memoised by the caller).
type Sig<'s> = &'s dyn Fn(&Labels) -> Labels;

fn and_unless(lhs: Vec<S>, rhs: &[S], keep_matching: bool, sig: Sig<'_>) -> Vec<S> {
    let right: LabelsSet = rhs.iter().map(|s| sig(&s.labels)).collect();
    lhs.into_iter()
        .filter(|s| right.contains(&sig(&s.labels)) == keep_matching)
        .collect()
}

fn or(lhs: Vec<S>, rhs: Vec<S>, sig: Sig<'_>) -> Vec<S> {
    let left: LabelsSet = lhs.iter().map(|s| sig(&s.labels)).collect();
    let mut out = lhs;
    out.extend(rhs.into_iter().filter(|s| !left.contains(&sig(&s.labels))));
    out
}

/// `{a="1", b="2"}` with every label, the metric name included (Go's `Labels.String()`).
fn raw(labels: &Labels) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|(n, v)| format!("{n}={}", crate::labels::quote(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn vector_vector(b: &BinaryExpr, lhs: Vec<S>, rhs: Vec<S>, sig_of: Sig<'_>) -> EvalResult<Vec<S>> {
    let m = b.modifier.as_ref();
    let card = m.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
    let swapped = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let one_side = if swapped { "left" } else { "right" };

    let mut one_by_sig: LabelsMap<S> = Default::default();
    for s in one {
        let sig = sig_of(&s.labels);
        if let Some(prev) = one_by_sig.get(&sig) {
            return err(format!(
                "found duplicate series for the match group {} on the {one_side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                raw(&sig),
                raw(&prev.labels),
                raw(&s.labels)
            ));
        }
        one_by_sig.insert(sig, s);
    }

    let mut out = Vec::new();
    let mut matched: HashMap<Labels, LabelsSet> = Default::default();
    for s in many {
        let sig = sig_of(&s.labels);
        let Some(o) = one_by_sig.get(&sig) else {
            continue;
        };
        let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
        // One-to-one matching must be unique even for pairs a comparison filters away.
        if one_to_one && matched.insert(sig.clone(), LabelsSet::default()).is_some() {
            return err(
                "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
            );
        }
        let (l, r) = if swapped { (o.v, s.v) } else { (s.v, o.v) };
        let (mut v, keep) = apply(b, l, r);
        if return_bool(b) {
            v = f64::from(u8::from(keep));
        } else if !keep {
            continue;
        }
        let labels = result_labels(&s.labels, &o.labels, m, card);
        if !one_to_one && !matched.entry(sig).or_default().insert(labels.clone()) {
            return err("multiple matches for labels: grouping labels must ensure unique matches");
        }
        out.push(S {
            labels,
            v,
            t: s.t,
            drop_name: drops_name(b) || s.drop_name,
        });
    }
    Ok(out)
}

fn result_labels(
    many: &Labels,
    one: &Labels,
    m: Option<&BinModifier>,
    card: &VectorMatchCardinality,
) -> Labels {
    let mut labels = many.clone();
    if matches!(card, VectorMatchCardinality::OneToOne) {
        match m.and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(on)) => labels = labels.keep(&on.labels),
            Some(LabelModifier::Exclude(ignoring)) => labels = labels.drop_all(&ignoring.labels),
            None => {}
        }
    }
    let include = match card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
            l.labels.as_slice()
        }
        _ => &[],
    };
    for name in include {
        labels.set(name, one.value(name));
    }
    labels
}
