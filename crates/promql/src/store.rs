//! The in-memory time-series store: samples appended from scrapes (or test scripts),
//! label strings interned, and an inverted index from label pairs to series.
//!
//! # On-disk form
//! [`Store::write_jsonl`] writes one JSON object per line, one line per series:
//! `{"labels":{"__name__":"up","job":"node"},"samples":[[1700000000000,1],[1700000001000,"NaN"]]}`
//! Timestamps are milliseconds since the Unix epoch; values are JSON numbers, or the
//! strings `"NaN"`, `"+Inf"`, `"-Inf"` and `"stale"` (a Prometheus staleness marker).
//! A first line `{"format":"meshload-tsdb","version":1}` names the format.
//! [`Store::read_jsonl`] reads it back, so a stored run can be queried later.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::sync::Arc;

use promql_parser::label::{MatchOp, Matcher};

use crate::labels::{Labels, METRIC_NAME};

/// The bit pattern Prometheus uses to mark a series stale (a NaN that is not the NaN).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A staleness marker value.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `v` is a staleness marker (and not an ordinary NaN).
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Index of a series in the store.
pub type SeriesId = usize;

/// One series: its labels and its samples in time order.
#[derive(Debug, Clone)]
pub struct Series {
    /// The labels.
    pub labels: Labels,
    /// `(timestamp ms, value)` in increasing time order, staleness markers included.
    /// Pairs rather than two arrays: range functions read them as one slice.
    pub samples: Vec<(i64, f64)>,
    /// The series holds native histogram samples, which the engine does not evaluate.
    pub native_histogram: bool,
    /// The series holds staleness markers (most do not, and then range selections can
    /// borrow its samples without filtering them).
    pub has_stale: bool,
}

impl Series {
    /// The samples with `mint < t <= maxt` (Prometheus 3 ranges are left-open).
    pub fn range(&self, mint: i64, maxt: i64) -> &[(i64, f64)] {
        self.range_from(mint, maxt, &mut (0, 0))
    }

    /// As [`Series::range`], starting the search from `hint` (the bounds a previous,
    /// earlier window found) and leaving the new bounds there. A range query moves its
    /// window forward step by step, so the bounds usually move by a sample or two.
    pub fn range_from(&self, mint: i64, maxt: i64, hint: &mut (usize, usize)) -> &[(i64, f64)] {
        let lo = position(&self.samples, hint.0, mint);
        let hi = position(&self.samples, hint.1.max(lo), maxt);
        *hint = (lo, hi);
        &self.samples[lo..hi]
    }
}

/// The number of samples with `t <= bound`, searching forward from `from` when that is
/// a valid start (everything before it is `<= bound`), else by bisection.
fn position(samples: &[(i64, f64)], from: usize, bound: i64) -> usize {
    if from > samples.len() || (from > 0 && samples[from - 1].0 > bound) {
        return samples.partition_point(|&(t, _)| t <= bound);
    }
    let mut i = from;
    for _ in 0..8 {
        if i >= samples.len() || samples[i].0 > bound {
            return i;
        }
        i += 1;
    }
    i + samples[i..].partition_point(|&(t, _)| t <= bound)
}

/// Errors reading the on-disk form.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading failed.
    #[error("cannot read samples")]
    Io(#[from] std::io::Error),
    /// A line is not what the format says.
    #[error("line {line}: {problem}")]
    Format {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// The store.
#[derive(Debug, Default, Clone)]
pub struct Store {
    series: Vec<Series>,
    by_labels: HashMap<Labels, SeriesId>,
    postings: HashMap<(Arc<str>, Arc<str>), Vec<SeriesId>>,
    strings: HashSet<Arc<str>>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Every series.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// One series.
    pub fn get(&self, id: SeriesId) -> &Series {
        &self.series[id]
    }

    /// Number of samples held.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }

    fn intern(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(existing) = self.strings.get(s) {
            return existing.clone();
        }
        self.strings.insert(s.clone());
        s.clone()
    }

    /// The id of the series with exactly these labels, created when missing.
    pub fn series_id(&mut self, labels: &Labels) -> SeriesId {
        if let Some(&id) = self.by_labels.get(labels) {
            return id;
        }
        let pairs: Vec<(Arc<str>, Arc<str>)> = labels
            .pairs()
            .iter()
            .map(|(n, v)| (self.intern(n), self.intern(v)))
            .collect();
        let labels = Labels::from_pairs(pairs);
        let id = self.series.len();
        for (n, v) in labels.pairs() {
            self.postings
                .entry((n.clone(), v.clone()))
                .or_default()
                .push(id);
        }
        self.by_labels.insert(labels.clone(), id);
        self.series.push(Series {
            labels,
            samples: Vec::new(),
            native_histogram: false,
            has_stale: false,
        });
        id
    }

    /// Appends a sample; a sample at an existing timestamp replaces it, an out-of-order
    /// one is inserted in place.
    pub fn append(&mut self, labels: &Labels, t_ms: i64, value: f64) {
        let id = self.series_id(labels);
        self.append_to(id, t_ms, value);
    }

    /// Appends a sample to a known series.
    pub fn append_to(&mut self, id: SeriesId, t_ms: i64, value: f64) {
        let series = &mut self.series[id];
        series.has_stale |= is_stale(value);
        let samples = &mut series.samples;
        match samples.last() {
            Some(&(last, _)) if last >= t_ms => {
                match samples.binary_search_by_key(&t_ms, |s| s.0) {
                    Ok(i) => samples[i].1 = value,
                    Err(i) => samples.insert(i, (t_ms, value)),
                }
            }
            _ => samples.push((t_ms, value)),
        }
    }

    /// Marks a series as holding native histograms (which queries report as unsupported).
    pub fn mark_native_histogram(&mut self, labels: &Labels) {
        let id = self.series_id(labels);
        self.series[id].native_histogram = true;
    }

    /// Ids of the series a vector selector names (its name and matchers, its `or`
    /// groups united), sorted by their labels.
    pub fn select_vector(&self, vs: &promql_parser::parser::VectorSelector) -> Vec<SeriesId> {
        let mut groups: Vec<Vec<Matcher>> = if vs.matchers.or_matchers.is_empty() {
            vec![vs.matchers.matchers.clone()]
        } else {
            vs.matchers.or_matchers.clone()
        };
        if let Some(name) = &vs.name {
            for g in &mut groups {
                g.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
            }
        }
        let mut ids: Vec<SeriesId> = groups.iter().flat_map(|g| self.select(g)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.sort_by(|a, b| self.get(*a).labels.cmp(&self.get(*b).labels));
        ids
    }

    /// Ids of the series that every matcher accepts.
    pub fn select(&self, matchers: &[Matcher]) -> Vec<SeriesId> {
        // Start from the smallest posting list of an equality matcher on a non-empty value.
        let seed = matchers
            .iter()
            .filter(|m| m.op == MatchOp::Equal && !m.value.is_empty())
            .map(|m| {
                let key: (Arc<str>, Arc<str>) = (m.name.as_str().into(), m.value.as_str().into());
                self.postings.get(&key).map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|p| p.len());
        let accept = |id: &SeriesId| {
            let labels = &self.series[*id].labels;
            matchers.iter().all(|m| m.is_match(labels.value(&m.name)))
        };
        match seed {
            Some(ids) => ids.iter().copied().filter(accept).collect(),
            None => (0..self.series.len()).filter(accept).collect(),
        }
    }

    /// Writes the documented JSON Lines form.
    pub fn write_jsonl(&self, w: &mut impl Write) -> std::io::Result<()> {
        self.write_jsonl_window(w, i64::MIN, i64::MAX)
    }

    /// Writes the samples with `mint <= t <= maxt` in the JSON Lines form; series without
    /// samples there are left out.
    pub fn write_jsonl_window(
        &self,
        w: &mut impl Write,
        mint: i64,
        maxt: i64,
    ) -> std::io::Result<()> {
        writeln!(w, r#"{{"format":"meshload-tsdb","version":1}}"#)?;
        for s in &self.series {
            let window = s.range(mint.saturating_sub(1), maxt);
            if window.is_empty() {
                continue;
            }
            let labels: serde_json::Map<String, serde_json::Value> = s
                .labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.into()))
                .collect();
            let samples: Vec<serde_json::Value> = window
                .iter()
                .map(|(t, v)| serde_json::json!([t, encode_value(*v)]))
                .collect();
            let line = serde_json::json!({"labels": labels, "samples": samples});
            writeln!(w, "{line}")?;
        }
        Ok(())
    }

    /// Reads the JSON Lines form into a new store. Only a missing or wrong format line
    /// fails the whole file; a line that is not a series (cut short, not UTF-8, nested too
    /// deep, a bad sample) is skipped and counted, so one bad line does not lose the rest.
    pub fn read_jsonl(mut r: impl BufRead) -> Result<(Store, Skipped), StoreError> {
        let mut store = Store::new();
        let mut skipped = Skipped::default();
        let mut buf = Vec::new();
        let mut number = 0usize;
        loop {
            buf.clear();
            if r.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            number += 1;
            let parsed = std::str::from_utf8(&buf)
                .map_err(|_| "not UTF-8 text".to_string())
                .and_then(|line| {
                    if line.trim().is_empty() {
                        return Ok(None);
                    }
                    serde_json::from_str::<serde_json::Value>(line)
                        .map(Some)
                        .map_err(|e| e.to_string())
                });
            if number == 1 {
                match parsed {
                    Ok(Some(v)) if v["format"] == "meshload-tsdb" => continue,
                    _ => {
                        return Err(StoreError::Format {
                            line: 1,
                            problem: "not a meshload-tsdb file (no format line)".into(),
                        });
                    }
                }
            }
            let series = parsed.and_then(|v| v.map(|v| series_of(&v)).transpose());
            match series {
                Ok(None) => {}
                Ok(Some((labels, samples))) => {
                    let id = store.series_id(&labels);
                    for (t, v) in samples {
                        store.append_to(id, t, v);
                    }
                }
                Err(problem) => skipped.add(number, problem),
            }
        }
        Ok((store, skipped))
    }
}

/// Lines of a samples file that were skipped, and the first one's problem.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Skipped {
    /// How many lines.
    pub lines: usize,
    /// The first skipped line, and what was wrong with it.
    pub first: Option<(usize, String)>,
}

impl Skipped {
    fn add(&mut self, line: usize, problem: String) {
        self.lines += 1;
        if self.first.is_none() {
            self.first = Some((line, problem));
        }
    }

    /// `None` when nothing was skipped, else a warning in words.
    pub fn warning(&self) -> Option<String> {
        let (line, problem) = self.first.as_ref()?;
        Some(format!(
            "{} bad line(s) skipped (the first, line {line}: {problem})",
            self.lines
        ))
    }
}

/// One series line: its labels and samples, or what is wrong with it.
#[allow(clippy::type_complexity)]
fn series_of(v: &serde_json::Value) -> Result<(Labels, Vec<(i64, f64)>), String> {
    let labels = v["labels"].as_object().ok_or("no labels object")?;
    let labels = Labels::from_pairs(
        labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str().unwrap_or_default())),
    );
    let samples = v["samples"]
        .as_array()
        .ok_or("no samples array")?
        .iter()
        .map(|sample| {
            let t = sample[0]
                .as_i64()
                .ok_or_else(|| format!("bad timestamp in {sample}"))?;
            let value = decode_value(&sample[1]).ok_or_else(|| format!("bad value in {sample}"))?;
            Ok((t, value))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((labels, samples))
}

fn encode_value(v: f64) -> serde_json::Value {
    if is_stale(v) {
        "stale".into()
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        (if v > 0.0 { "+Inf" } else { "-Inf" }).into()
    } else {
        v.into()
    }
}

fn decode_value(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.as_str() {
            "stale" => Some(stale_nan()),
            "NaN" => Some(f64::NAN),
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// The metric-name label, for callers that build matchers.
pub fn name_matcher(name: &str) -> Matcher {
    Matcher::new(MatchOp::Equal, METRIC_NAME, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn selects_by_index_and_matchers() {
        let mut s = Store::new();
        s.append(&l(&[("__name__", "up"), ("job", "a")]), 0, 1.0);
        s.append(&l(&[("__name__", "up"), ("job", "b")]), 0, 0.0);
        s.append(&l(&[("__name__", "down"), ("job", "a")]), 0, 1.0);
        assert_eq!(s.select(&[name_matcher("up")]).len(), 2);
        let not_b = Matcher::new(MatchOp::NotEqual, "job", "b");
        assert_eq!(s.select(&[name_matcher("up"), not_b]).len(), 1);
        let missing = Matcher::new(MatchOp::Equal, "zone", "");
        assert_eq!(
            s.select(&[missing]).len(),
            3,
            "a missing label matches the empty value"
        );
    }

    #[test]
    fn ranges_are_left_open() {
        let mut s = Store::new();
        let id = s.series_id(&l(&[("__name__", "x")]));
        for t in [0, 10, 20, 30] {
            s.append_to(id, t, t as f64);
        }
        assert_eq!(s.get(id).range(10, 30), [(20, 20.0), (30, 30.0)]);
        assert_eq!(s.get(id).range(-1, 0), [(0, 0.0)]);
        s.append_to(id, 15, 1.5);
        let times: Vec<i64> = s.get(id).samples.iter().map(|p| p.0).collect();
        assert_eq!(times, [0, 10, 15, 20, 30]);
    }

    #[test]
    fn hinted_ranges_agree_with_bisection() {
        let mut s = Store::new();
        let id = s.series_id(&l(&[("__name__", "x")]));
        for t in 0..100 {
            s.append_to(id, t * 10, t as f64);
        }
        let series = s.get(id);
        let mut hint = (0, 0);
        // Forward, backward and far jumps, as range queries, subqueries and @ produce.
        for (mint, maxt) in [
            (-5, 5),
            (0, 50),
            (5, 55),
            (300, 400),
            (10, 20),
            (995, 2000),
            (-100, -50),
        ] {
            assert_eq!(
                series.range_from(mint, maxt, &mut hint),
                series.range(mint, maxt),
                "({mint}, {maxt}]"
            );
            let expected: Vec<(i64, f64)> = series
                .samples
                .iter()
                .copied()
                .filter(|&(t, _)| t > mint && t <= maxt)
                .collect();
            assert_eq!(series.range(mint, maxt), expected.as_slice());
        }
    }

    #[test]
    fn jsonl_round_trips_special_values() {
        let mut s = Store::new();
        let labels = l(&[("__name__", "x"), ("a", "b")]);
        for (t, v) in [
            (1, 1.5),
            (2, f64::NAN),
            (3, stale_nan()),
            (4, f64::NEG_INFINITY),
        ] {
            s.append(&labels, t, v);
        }
        let mut buf = Vec::new();
        s.write_jsonl(&mut buf).expect("in memory");
        let (back, skipped) = Store::read_jsonl(buf.as_slice()).expect("valid");
        assert_eq!(skipped, Skipped::default());
        let series = &back.series()[0];
        assert_eq!(series.labels, labels);
        let values: Vec<f64> = series.samples.iter().map(|p| p.1).collect();
        assert_eq!(values[0], 1.5);
        assert!(values[1].is_nan() && !is_stale(values[1]));
        assert!(is_stale(values[2]));
        assert_eq!(values[3], f64::NEG_INFINITY);
        assert!(Store::read_jsonl("{}\n".as_bytes()).is_err());
    }

    #[test]
    fn bad_lines_are_skipped_and_counted_and_the_rest_is_kept() {
        let mut s = Store::new();
        s.append(&Labels::from_pairs([("__name__", "up")]), 1, 1.0);
        let mut good = Vec::new();
        s.write_jsonl(&mut good).expect("in memory");
        let mut text = good.clone();
        text.extend_from_slice(b"\xff\xfe garbage\n");
        text.extend_from_slice(format!("{}\n", "[".repeat(300)).as_bytes());
        text.extend_from_slice(b"{\"labels\": {\"__name__\": \"x\"}, \"samples\": [[1, \"x\"]]}\n");
        text.extend_from_slice(b"null\nNaN\n");
        text.extend_from_slice(&good[good.len() / 2..]);
        let (back, skipped) = Store::read_jsonl(text.as_slice()).expect("a format line");
        assert_eq!(back.series().len(), 1, "the good series is kept");
        assert_eq!(skipped.lines, 6, "{skipped:?}");
        assert_eq!(skipped.first.as_ref().map(|f| f.0), Some(3));
        assert!(
            skipped
                .warning()
                .expect("a warning")
                .starts_with("6 bad line(s) skipped")
        );
    }
}
