//! What repeated runs of two arms can say about a figure: an estimate of B - A, a
//! distribution-free interval around it, and a verdict; and straight lines through
//! (rate, cost) points. Pure functions, no I/O.
//!
//! # Methods
//! - **Paired** ([`paired`]): when the arms ran in interleaved pairs (repeat `i` of A right
//!   beside repeat `i` of B), the differences `d_i = b_i - a_i` leave out what drifted on
//!   the host between pairs. The estimate is their median. The interval is the sign-test
//!   interval on that median, `[d_(k), d_(n+1-k)]` of the sorted differences, which holds
//!   the true median with probability `1 - 2 P(Bin(n, 1/2) <= k - 1)` whatever the
//!   differences' distribution (continuous; ties only widen it).
//! - **Unpaired** ([`shift`]): two series run apart (two tests, from two configs). The
//!   estimate is the Hodges-Lehmann shift, the median of the `m * n` differences
//!   `b_j - a_i`; the interval is `[D_(k), D_(mn+1-k)]` of those differences, which holds
//!   the shift with probability `1 - 2 P(U <= k - 1)` (`U` the Mann-Whitney statistic under
//!   no difference) when B's distribution is A's moved by a constant.
//!
//! Each takes the narrowest such interval whose confidence is at least 95%. Where the
//! repeats allow none, it takes the widest (the extremes) when its confidence still
//! reaches [`MIN_CONFIDENCE`], and gives no interval below that: five paired repeats give
//! 93.75%, six give 96.9%; unpaired, three against three reach 90% only (no interval),
//! four against four give 97.1%.
//!
//! # Layout
//! - [`Estimate`], [`Interval`], [`Verdict`]: what a comparison says of one figure.
//! - [`paired`], [`shift`]: the two methods.
//! - [`median`], [`Line`]: a median; a least-squares line through points.

use serde::Serialize;

/// The confidence an interval aims for.
pub const CONFIDENCE: f64 = 0.95;

/// The least confidence for which an interval is given at all (five paired repeats:
/// 1 - 2/32 = 93.75%).
pub const MIN_CONFIDENCE: f64 = 0.93;

/// A range that holds the true B - A with a known probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Its lower end.
    pub low: f64,
    /// Its upper end.
    pub high: f64,
    /// The probability that it holds the true value (exact for the method's model).
    pub confidence: f64,
}

impl Interval {
    /// Whether `v` lies in it.
    pub fn contains(&self, v: f64) -> bool {
        self.low <= v && v <= self.high
    }
}

/// What repeats say of B - A for one figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// The estimate of B - A (a median of differences).
    pub estimate: f64,
    /// The interval, when the repeats allow one.
    pub interval: Option<Interval>,
    /// Runs per arm that went into it (the smaller arm's, unpaired).
    pub repeats: usize,
}

impl Estimate {
    /// `higher` or `lower` when the interval leaves 0 out, `no difference detected` when
    /// it holds 0, `no interval` without one.
    pub fn verdict(&self) -> Verdict {
        match self.interval {
            None => Verdict::NoInterval,
            Some(i) if i.low > 0.0 => Verdict::Higher,
            Some(i) if i.high < 0.0 => Verdict::Lower,
            Some(_) => Verdict::NoDifference,
        }
    }
}

/// What a comparison says of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// B is higher than A: the interval lies above 0.
    #[serde(rename = "higher")]
    Higher,
    /// B is lower than A: the interval lies below 0.
    #[serde(rename = "lower")]
    Lower,
    /// The interval holds 0.
    #[serde(rename = "no difference detected")]
    NoDifference,
    /// Too few repeats for an interval (one run per arm, or a confidence under
    /// [`MIN_CONFIDENCE`]).
    #[serde(rename = "no interval")]
    NoInterval,
    /// The arms did not run at the same load, or the host was saturated.
    #[serde(rename = "not comparable")]
    NotComparable,
}

impl Verdict {
    /// The verdict as printed and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Higher => "higher",
            Verdict::Lower => "lower",
            Verdict::NoDifference => "no difference detected",
            Verdict::NoInterval => "no interval",
            Verdict::NotComparable => "not comparable",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The median of `values` (NaNs left out); `None` when none is left.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// B - A from interleaved pairs: `a[i]` and `b[i]` ran side by side. Pairs with a NaN
/// are left out; `None` when no pair is left.
pub fn paired(a: &[f64], b: &[f64]) -> Option<Estimate> {
    let mut d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| b - a)
        .filter(|d| !d.is_nan())
        .collect();
    d.sort_by(f64::total_cmp);
    let n = d.len();
    let estimate = median(&d)?;
    let cdf = binomial_half_cdf(n);
    let interval = order_interval(n, |j| cdf[j]).map(|(k, confidence)| Interval {
        low: d[k - 1],
        high: d[n - k],
        confidence,
    });
    Some(Estimate {
        estimate,
        interval,
        repeats: n,
    })
}

/// B - A from two series run apart: the Hodges-Lehmann shift with its Mann-Whitney
/// interval. NaNs are left out; `None` when either side is left empty.
pub fn shift(a: &[f64], b: &[f64]) -> Option<Estimate> {
    let a: Vec<f64> = a.iter().copied().filter(|x| !x.is_nan()).collect();
    let b: Vec<f64> = b.iter().copied().filter(|x| !x.is_nan()).collect();
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut d: Vec<f64> = b
        .iter()
        .flat_map(|y| a.iter().map(move |x| y - x))
        .collect();
    d.sort_by(f64::total_cmp);
    let total = d.len();
    let mut running = 0.0;
    let cdf: Vec<f64> = mann_whitney_pmf(a.len(), b.len())
        .into_iter()
        .map(|p| {
            running += p;
            running
        })
        .collect();
    let interval = order_interval(total, |j| cdf[j]).map(|(k, confidence)| Interval {
        low: d[k - 1],
        high: d[total - k],
        confidence,
    });
    Some(Estimate {
        estimate: median(&d)?,
        interval,
        repeats: a.len().min(b.len()),
    })
}

/// Which order statistics bound the interval: the largest `k` (at most `n / 2`) whose
/// confidence `1 - 2 cdf(k - 1)` is at least [`CONFIDENCE`]; else `k = 1` when its
/// confidence reaches [`MIN_CONFIDENCE`]; else none. Gives `k` and its confidence.
fn order_interval(n: usize, cdf: impl Fn(usize) -> f64) -> Option<(usize, f64)> {
    if n < 2 {
        return None;
    }
    let confidence = |k: usize| 1.0 - 2.0 * cdf(k - 1);
    let best = (1..=n / 2)
        .take_while(|&k| confidence(k) >= CONFIDENCE)
        .last();
    match best {
        Some(k) => Some((k, confidence(k))),
        None if confidence(1) >= MIN_CONFIDENCE => Some((1, confidence(1))),
        None => None,
    }
}

/// `P(Bin(n, 1/2) <= j)` for `j` in `0..=n`.
fn binomial_half_cdf(n: usize) -> Vec<f64> {
    let mut pmf = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
    let mut running = 0.0;
    let mut out = Vec::with_capacity(n + 1);
    for i in 0..=n {
        running += pmf;
        out.push(running.min(1.0));
        pmf *= (n - i) as f64 / (i + 1) as f64;
    }
    out
}

/// The distribution of the Mann-Whitney count `U` (pairs in which A's value is the
/// larger) for `m` values of A and `n` of B when both come from one distribution:
/// `P(U = u)` for `u` in `0..=m*n`. Built up from the largest value: it is A's with
/// probability `i / (i + j)` and then beats all `j` of B's, else it is B's.
fn mann_whitney_pmf(m: usize, n: usize) -> Vec<f64> {
    // `prev[j]`: the distribution for `i - 1` values of A and `j` of B.
    let mut prev: Vec<Vec<f64>> = vec![vec![1.0]; n + 1];
    for i in 1..=m {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
        cur.push(vec![1.0]);
        for j in 1..=n {
            let to_a = i as f64 / (i + j) as f64;
            let mut v = vec![0.0; i * j + 1];
            for (u, p) in prev[j].iter().enumerate() {
                v[u + j] += to_a * p;
            }
            for (u, p) in cur[j - 1].iter().enumerate() {
                v[u] += (1.0 - to_a) * p;
            }
            cur.push(v);
        }
        prev = cur;
    }
    prev.pop().unwrap_or_else(|| vec![1.0])
}

/// A straight line `y = intercept + slope * x`, fitted by least squares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Line {
    /// `y` at `x = 0`.
    pub intercept: f64,
    /// How much `y` grows per unit of `x`.
    pub slope: f64,
}

impl Line {
    /// The least-squares line through `points`; `None` with fewer than two distinct `x`
    /// (a slope needs two rates) or with a NaN.
    pub fn fit(points: &[(f64, f64)]) -> Option<Line> {
        if points.iter().any(|(x, y)| x.is_nan() || y.is_nan()) {
            return None;
        }
        let n = points.len() as f64;
        let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
        // Two distinct rates at least: spread in x relative to its size.
        if points.len() < 2 || sxx <= f64::EPSILON * mean_x.abs().max(1.0) {
            return None;
        }
        let slope = sxy / sxx;
        Some(Line {
            intercept: mean_y - slope * mean_x,
            slope,
        })
    }
}

#[cfg(test)]
mod tests;
