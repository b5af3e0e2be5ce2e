//! Label sets: sorted `name=value` pairs with cheaply cloned, interned strings.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

/// A set of labels, sorted by name, without duplicates or empty values.
///
/// Cloning is one reference-count increment and hashing writes a hash computed once:
/// the evaluator clones and hashes label sets at every step of every query.
#[derive(Clone)]
pub struct Labels {
    pairs: Arc<[(Arc<str>, Arc<str>)]>,
    hash: u64,
}

impl Default for Labels {
    fn default() -> Self {
        Labels::new(Vec::new())
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && (Arc::ptr_eq(&self.pairs, &other.pairs) || self.pairs == other.pairs)
    }
}

impl Eq for Labels {}

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.pairs.cmp(&other.pairs)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Labels {
    /// Wraps sorted, de-duplicated pairs.
    fn new(pairs: Vec<(Arc<str>, Arc<str>)>) -> Labels {
        let mut h = twox_hash::XxHash64::with_seed(0);
        for (n, v) in &pairs {
            h.write(n.as_bytes());
            h.write_u8(0xff);
            h.write(v.as_bytes());
            h.write_u8(0xff);
        }
        Labels {
            hash: h.finish(),
            pairs: pairs.into(),
        }
    }

    /// Builds a label set from pairs in any order; empty values are dropped (an empty
    /// label value means "no such label" in Prometheus) and a later duplicate wins.
    pub fn from_pairs<N: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Labels {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Arc<str>, Arc<str>)> = Vec::with_capacity(v.len());
        for pair in v {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Labels::new(out)
    }

    /// The label set's hash (computed once, when it was built).
    pub fn hash_value(&self) -> u64 {
        self.hash
    }

    /// The value of label `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        let pairs = &self.pairs;
        pairs
            .binary_search_by(|(n, _)| n.as_ref().cmp(name))
            .ok()
            .map(|i| pairs[i].1.as_ref())
    }

    /// The value of `name`, or "" when unset (how matchers see a missing label).
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// The metric name, if any.
    pub fn name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// Iterates the pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// The pairs with their shared strings.
    pub fn pairs(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.pairs
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Sets (or, with an empty value, removes) one label.
    pub fn set(&mut self, name: &str, value: &str) {
        let mut pairs = self.pairs.to_vec();
        match pairs.binary_search_by(|(n, _)| n.as_ref().cmp(name)) {
            Ok(i) if value.is_empty() => {
                pairs.remove(i);
            }
            Ok(i) if pairs[i].1.as_ref() == value => return,
            Ok(i) => pairs[i].1 = value.into(),
            Err(_) if value.is_empty() => return,
            Err(i) => pairs.insert(i, (name.into(), value.into())),
        }
        *self = Labels::new(pairs);
    }

    /// Removes one label.
    pub fn remove(&mut self, name: &str) {
        self.set(name, "");
    }

    /// A copy without the metric name.
    pub fn without_name(&self) -> Labels {
        self.filtered(|n| n != METRIC_NAME)
    }

    /// Only the listed labels.
    pub fn keep(&self, names: &[String]) -> Labels {
        self.filtered(|n| names.iter().any(|k| k == n))
    }

    /// All but the listed labels.
    pub fn drop_all(&self, names: &[String]) -> Labels {
        self.filtered(|n| !names.iter().any(|k| k == n))
    }
}

impl Labels {
    /// The labels whose names `keep` accepts (the same set, shared, when all are kept).
    fn filtered(&self, keep: impl Fn(&str) -> bool) -> Labels {
        if self.pairs.iter().all(|(n, _)| keep(n)) {
            return self.clone();
        }
        Labels::new(
            self.pairs
                .iter()
                .filter(|(n, _)| keep(n))
                .cloned()
                .collect(),
        )
    }
}

/// A hasher for maps keyed by [`Labels`], whose hash is already computed: it passes that
/// hash through instead of hashing it again.
#[derive(Debug, Default, Clone, Copy)]
pub struct LabelsHasher(u64);

impl Hasher for LabelsHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached by keys other than `Labels`; FNV-1a keeps it correct for them.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// A hash map keyed by label sets.
pub type LabelsMap<V> =
    std::collections::HashMap<Labels, V, std::hash::BuildHasherDefault<LabelsHasher>>;

/// A hash set of label sets.
pub type LabelsSet = std::collections::HashSet<Labels, std::hash::BuildHasherDefault<LabelsHasher>>;

impl fmt::Display for Labels {
    /// Prometheus style: `name{a="1", b="2"}`, or `{...}` without a name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.name() {
            write!(f, "{name}")?;
        }
        let rest: Vec<String> = self
            .iter()
            .filter(|(n, _)| *n != METRIC_NAME)
            .map(|(n, v)| format!("{n}={}", quote(v)))
            .collect();
        if !rest.is_empty() || self.name().is_none() {
            write!(f, "{{{}}}", rest.join(", "))?;
        }
        Ok(())
    }
}

/// A double-quoted string with Go-style escapes.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_without_empty_values() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1"), ("c", ""), ("__name__", "m")]);
        assert_eq!(
            l.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["__name__", "a", "b"]
        );
        assert_eq!(l.to_string(), r#"m{a="1", b="2"}"#);
        assert_eq!(l.value("c"), "");
        let mut l2 = l.without_name();
        l2.set("z", "9");
        l2.remove("a");
        assert_eq!(l2.to_string(), r#"{b="2", z="9"}"#);
    }
}
