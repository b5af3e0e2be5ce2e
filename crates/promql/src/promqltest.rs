//! A runner for Prometheus's PromQL test scripts (`load`, `clear`, `eval` commands; the
//! format is described in the conformance suite's `FORMAT.md`), so the engine is checked
//! against Prometheus's own expectations.
//!
//! Cases that need native histograms or features this engine does not evaluate are
//! skipped and counted, never passed.

use std::fmt;

use regex::Regex;

use crate::eval::{QueryError, QueryOptions, QueryResult, Value, instant_query, range_query};
use crate::labels::{Labels, METRIC_NAME};
use crate::store::{Store, stale_nan};

/// Relative tolerance of float comparisons, as the Prometheus test framework uses.
const EPSILON: f64 = 1e-6;

/// What happened to one `eval` case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The result matched every expectation.
    Passed,
    /// A mismatch, explained.
    Failed(String),
    /// Not evaluated, with the reason (native histograms, unsupported features).
    Skipped(String),
}

/// One `eval` case and its outcome.
#[derive(Debug, Clone)]
pub struct Case {
    /// 1-based line of the `eval` command.
    pub line: usize,
    /// The query.
    pub query: String,
    /// Its outcome.
    pub outcome: Outcome,
}

/// The outcome of a whole script.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every case, in order.
    pub cases: Vec<Case>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| c.outcome == Outcome::Passed)
            .count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
            .count()
    }

    /// Cases skipped.
    pub fn skipped(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Skipped(_)))
            .count()
    }
}

impl fmt::Display for Report {
    /// `N passed, N failed, N skipped`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// A script that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ScriptError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Bounds on what one script may load and how long each evaluation may take.
#[derive(Debug, Clone)]
pub struct ScriptLimits {
    /// The most points the whole script may describe, loaded and expected together (the
    /// shipped scripts use a few thousand per series).
    pub max_points: usize,
    /// How long one `eval` may take.
    pub timeout: std::time::Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_points: 10_000_000,
            timeout: crate::eval::DEFAULT_TIMEOUT,
        }
    }
}

/// Runs a test script within the default [`ScriptLimits`].
pub fn run_script(text: &str) -> Result<Report, ScriptError> {
    run_script_with(text, &ScriptLimits::default())
}

/// Runs a test script within `limits`.
pub fn run_script_with(text: &str, limits: &ScriptLimits) -> Result<Report, ScriptError> {
    let mut points = Points {
        left: limits.max_points,
        max: limits.max_points,
    };
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim();
            if t.starts_with('#') {
                String::new()
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut store = Store::new();
    let mut report = Report::default();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        if line.is_empty() {
            i += 1;
            continue;
        }
        let block_end = (i + 1..lines.len())
            .find(|&j| lines[j].is_empty())
            .unwrap_or(lines.len());
        let body = &lines[i + 1..block_end];
        let bad = |problem: String| ScriptError {
            line: i + 1,
            problem,
        };
        let command = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if command == "clear" {
            store = Store::new();
            i += 1;
            continue;
        } else if command.starts_with("load") {
            load(
                &mut store,
                line,
                body,
                command == "load_with_nhcb",
                &mut points,
            )
            .map_err(bad)?;
        } else if command.starts_with("eval") {
            let eval = Eval::parse(line, body, &mut points).map_err(bad)?;
            report.cases.push(Case {
                line: i + 1,
                query: eval.query.clone(),
                outcome: eval.run(&store, limits.timeout),
            });
        } else {
            return Err(bad(format!("invalid command {line:?}")));
        }
        i = block_end;
    }
    Ok(report)
}

fn load(
    store: &mut Store,
    header: &str,
    body: &[String],
    nhcb: bool,
    budget: &mut Points,
) -> Result<(), String> {
    let interval = header
        .split_whitespace()
        .nth(1)
        .ok_or("load needs an interval")?;
    let interval =
        parse_duration_ms(interval).ok_or_else(|| format!("invalid interval {interval:?}"))?;
    for line in body {
        let (labels, points) = parse_series(line, budget)?;
        if points.iter().any(|p| matches!(p, Point::Histogram)) {
            store.mark_native_histogram(&labels);
            continue;
        }
        for (k, p) in points.iter().enumerate() {
            let t = k as i64 * interval;
            match p {
                Point::Value(v) => store.append(&labels, t, *v),
                Point::Stale => store.append(&labels, t, stale_nan()),
                Point::Missing | Point::Histogram => {}
            }
        }
        if nhcb {
            // load_with_nhcb also loads classic histograms as native ones with custom
            // buckets, named without the suffix: queries on those are unsupported.
            if let Some(native) = nhcb_labels(&labels) {
                store.mark_native_histogram(&native);
            }
        }
    }
    Ok(())
}

fn nhcb_labels(labels: &Labels) -> Option<Labels> {
    let name = labels.name()?;
    let base = ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))?;
    let mut native = labels.clone();
    native.set(METRIC_NAME, base);
    native.remove("le");
    Some(native)
}

/// An expected annotation or error message.
#[derive(Debug, Clone)]
enum Matcher {
    Any,
    Exact(String),
    Pattern(Regex),
}

impl Matcher {
    fn matches(&self, text: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Exact(s) => s == text,
            Matcher::Pattern(r) => r.is_match(text),
        }
    }

    fn parse(rest: &str) -> Result<Matcher, String> {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(Matcher::Any);
        }
        let (kind, text) = rest
            .split_once(':')
            .ok_or_else(|| format!("invalid expectation {rest:?}"))?;
        let text = unquote_message(text.trim());
        match kind.trim() {
            "msg" => Ok(Matcher::Exact(text)),
            "regex" => Regex::new(&text)
                .map(Matcher::Pattern)
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown match type {other:?}")),
        }
    }
}

/// Messages may be written in double quotes.
fn unquote_message(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\")
    } else {
        s.to_string()
    }
}

/// When an `eval` runs.
#[derive(Debug, Clone)]
enum Timing {
    Instant(i64),
    Range { start: i64, end: i64, step: i64 },
}

/// One parsed `eval` command.
#[derive(Debug, Clone)]
struct Eval {
    query: String,
    timing: Timing,
    fail: Option<Matcher>,
    warn: Vec<Matcher>,
    info: Vec<Matcher>,
    no_warn: bool,
    no_info: bool,
    ordered: bool,
    string: Option<String>,
    scalar: Option<f64>,
    series: Vec<(Labels, Vec<Point>)>,
    /// Expectations need native histograms.
    native: bool,
}

impl Eval {
    fn parse(header: &str, body: &[String], budget: &mut Points) -> Result<Eval, String> {
        let re = Regex::new(
            r"^eval(?:_(fail|warn|ordered|info))?\s+(?:instant\s+(?:at\s+)?(\S+)|range\s+from\s+(\S+)\s+to\s+(\S+)\s+step\s+(\S+))\s+(.+)$",
        )
        .expect("static regex");
        let caps = re
            .captures(header)
            .ok_or_else(|| format!("invalid eval command {header:?}"))?;
        let time = |i: usize| {
            let text = caps.get(i).map_or("", |m| m.as_str());
            parse_duration_ms(text).ok_or_else(|| format!("invalid time {text:?}"))
        };
        let timing = if caps.get(2).is_some() {
            Timing::Instant(time(2)?)
        } else {
            Timing::Range {
                start: time(3)?,
                end: time(4)?,
                step: time(5)?,
            }
        };
        let mut eval = Eval {
            query: caps[6].to_string(),
            timing,
            fail: None,
            warn: Vec::new(),
            info: Vec::new(),
            no_warn: false,
            no_info: false,
            ordered: false,
            string: None,
            scalar: None,
            series: Vec::new(),
            native: false,
        };
        match caps.get(1).map(|m| m.as_str()) {
            Some("fail") => eval.fail = Some(Matcher::Any),
            Some("warn") => eval.warn.push(Matcher::Any),
            Some("info") => eval.info.push(Matcher::Any),
            Some("ordered") => eval.ordered = true,
            _ => {}
        }
        for line in body {
            eval.parse_body_line(line, budget)?;
        }
        Ok(eval)
    }

    fn parse_body_line(&mut self, line: &str, budget: &mut Points) -> Result<(), String> {
        if let Some(rest) = line.strip_prefix("expected_fail_message") {
            self.fail = Some(Matcher::Exact(rest.trim().to_string()));
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("expected_fail_regexp") {
            self.fail = Some(
                Regex::new(rest.trim())
                    .map(Matcher::Pattern)
                    .map_err(|e| e.to_string())?,
            );
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("expect ") {
            let rest = rest.trim();
            let (kind, tail) = rest
                .split_once(|c: char| c.is_whitespace())
                .unwrap_or((rest, ""));
            match kind {
                "fail" => self.fail = Some(Matcher::parse(tail)?),
                "warn" => self.warn.push(Matcher::parse(tail)?),
                "info" => self.info.push(Matcher::parse(tail)?),
                "no_warn" => self.no_warn = true,
                "no_info" => self.no_info = true,
                "ordered" => self.ordered = true,
                "string" => self.string = Some(unquote_string(tail.trim())?),
                "range" => {} // instant range-vector results are compared point by point
                other => return Err(format!("unknown expectation {other:?}")),
            }
            return Ok(());
        }
        if line.contains("{{") {
            self.native = true;
            return Ok(());
        }
        if let Some(v) = parse_float(line) {
            self.scalar = Some(v);
            return Ok(());
        }
        let (labels, points) = parse_series(line, budget)?;
        if points.iter().any(|p| matches!(p, Point::Histogram)) {
            self.native = true;
        }
        self.series.push((labels, points));
        Ok(())
    }

    fn run(&self, store: &Store, timeout: std::time::Duration) -> Outcome {
        if self.native {
            return Outcome::Skipped("expects native histograms".into());
        }
        let opts = QueryOptions {
            timeout,
            ..QueryOptions::default()
        };
        let result = match self.timing {
            Timing::Instant(t) => instant_query(store, &self.query, t, opts),
            Timing::Range { start, end, step } => {
                range_query(store, &self.query, start, end, step, opts)
            }
        };
        let result = match (result, &self.fail) {
            (Err(QueryError::Unsupported(why)), _) => return Outcome::Skipped(why),
            (Err(e), Some(m)) => {
                let text = match &e {
                    QueryError::Eval(s) => s.clone(),
                    other => other.to_string(),
                };
                return if m.matches(&text)
                    || matches!(e, QueryError::Parse(_)) && matches!(m, Matcher::Any)
                {
                    Outcome::Passed
                } else {
                    Outcome::Failed(format!("error {text:?} does not match the expected one"))
                };
            }
            (Err(e), None) => return Outcome::Failed(format!("unexpected error: {e}")),
            (Ok(_), Some(_)) => {
                return Outcome::Failed("expected an error, the query succeeded".into());
            }
            (Ok(r), None) => r,
        };
        match self
            .check_annotations(&result)
            .and_then(|()| self.check_value(&result.value))
        {
            Ok(()) => Outcome::Passed,
            Err(why) => Outcome::Failed(why),
        }
    }

    fn check_annotations(&self, r: &QueryResult) -> Result<(), String> {
        check_kind("warning", &self.warn, &r.warnings, self.no_warn)?;
        check_kind("info", &self.info, &r.infos, self.no_info)
    }

    fn check_value(&self, value: &Value) -> Result<(), String> {
        match (value, &self.timing) {
            (Value::String(s), _) => match &self.string {
                Some(expected) if expected == s => Ok(()),
                other => Err(format!("got string {s:?}, expected {other:?}")),
            },
            (Value::Scalar(v), _) => match self.scalar {
                Some(e) if close(e, *v) => Ok(()),
                other => Err(format!("got scalar {v}, expected {other:?}")),
            },
            (Value::Vector(samples), _) => {
                let got: Vec<(Labels, Vec<Point>)> = samples
                    .iter()
                    .map(|s| (s.labels.clone(), vec![Point::Value(s.value)]))
                    .collect();
                self.compare_series(&got)
            }
            (Value::Matrix(series), Timing::Range { start, end, step }) => {
                let got: Vec<(Labels, Vec<Point>)> = series
                    .iter()
                    .map(|s| {
                        (
                            s.labels.clone(),
                            points_on_steps(&s.points, *start, *end, *step),
                        )
                    })
                    .collect();
                self.compare_series(&got)
            }
            (Value::Matrix(series), Timing::Instant(_)) => {
                // A range vector from an instant query: compare the raw points in order.
                let got: Vec<(Labels, Vec<Point>)> = series
                    .iter()
                    .map(|s| {
                        (
                            s.labels.clone(),
                            s.points.iter().map(|p| Point::Value(p.1)).collect(),
                        )
                    })
                    .collect();
                self.compare_series(&got)
            }
        }
    }

    fn compare_series(&self, got: &[(Labels, Vec<Point>)]) -> Result<(), String> {
        if self.scalar.is_some() || self.string.is_some() {
            return Err("expected a scalar or string, got a vector".into());
        }
        let expected: Vec<&(Labels, Vec<Point>)> = self.series.iter().collect();
        if got.len() != expected.len() {
            let names: Vec<String> = got.iter().map(|g| g.0.to_string()).collect();
            return Err(format!(
                "got {} series {names:?}, expected {}",
                got.len(),
                expected.len()
            ));
        }
        for (i, (labels, points)) in expected.iter().enumerate() {
            let found = if self.ordered {
                got.get(i).filter(|g| &g.0 == labels)
            } else {
                got.iter().find(|g| &g.0 == labels)
            };
            let Some((_, actual)) = found else {
                return Err(format!(
                    "expected series {labels} missing (or out of order)"
                ));
            };
            if !same_points(points, actual) {
                return Err(format!(
                    "series {labels}: got {actual:?}, expected {points:?}"
                ));
            }
        }
        Ok(())
    }
}

fn check_kind(
    kind: &str,
    expected: &[Matcher],
    actual: &[String],
    none: bool,
) -> Result<(), String> {
    if none && !actual.is_empty() {
        return Err(format!("unexpected {kind} annotations: {actual:?}"));
    }
    for m in expected {
        if !actual.iter().any(|a| m.matches(a)) {
            return Err(format!(
                "expected {kind} annotation {m:?} not among {actual:?}"
            ));
        }
    }
    // With only specific expectations, every annotation of the kind must be expected.
    let specific_only = expected.iter().any(|m| !matches!(m, Matcher::Any))
        && !expected.iter().any(|m| matches!(m, Matcher::Any));
    let unexpected = actual
        .iter()
        .find(|a| !expected.iter().any(|m| m.matches(a)));
    match unexpected {
        Some(extra) if specific_only => Err(format!("unexpected {kind} annotation {extra:?}")),
        _ => Ok(()),
    }
}

/// The points of a range-query series on each step (missing where it has none).
fn points_on_steps(points: &[(i64, f64)], start: i64, end: i64, step: i64) -> Vec<Point> {
    let mut out = Vec::new();
    let mut t = start;
    let mut i = 0;
    while t <= end {
        while i < points.len() && points[i].0 < t {
            i += 1;
        }
        out.push(match points.get(i) {
            Some(&(pt, v)) if pt == t => Point::Value(v),
            _ => Point::Missing,
        });
        t += step;
    }
    out
}

fn same_points(expected: &[Point], actual: &[Point]) -> bool {
    // Trailing missing points are not written out in expectations.
    let trim = |p: &[Point]| -> usize {
        p.iter()
            .rposition(|x| !matches!(x, Point::Missing))
            .map_or(0, |i| i + 1)
    };
    let (e, a) = (&expected[..trim(expected)], &actual[..trim(actual)]);
    e.len() == a.len()
        && e.iter().zip(a).all(|(x, y)| match (x, y) {
            (Point::Value(x), Point::Value(y)) => close(*x, *y),
            (Point::Missing, Point::Missing) => true,
            _ => false,
        })
}

fn close(expected: f64, actual: f64) -> bool {
    if expected.is_nan() || actual.is_nan() {
        return expected.is_nan() && actual.is_nan();
    }
    crate::eval::almost_equal(expected, actual, EPSILON)
}

/// One point of a series description.
#[derive(Debug, Clone, PartialEq)]
enum Point {
    Value(f64),
    Missing,
    Stale,
    Histogram,
}

/// The points a script may still describe.
#[derive(Debug)]
struct Points {
    left: usize,
    max: usize,
}

impl Points {
    fn take(&mut self, n: usize, tok: &str) -> Result<(), String> {
        // `0+1x100000000000` in a 75-byte script would fill memory.
        self.left = self.left.checked_sub(n).ok_or_else(|| self.exceeded(tok))?;
        Ok(())
    }

    fn exceeded(&self, tok: &str) -> String {
        format!(
            "{tok:?} takes the script past its limit of {} points",
            self.max
        )
    }
}

/// Parses `metric{a="b"} 1 2+3x4 _ stale` into labels and points, within the budget.
fn parse_series(line: &str, budget: &mut Points) -> Result<(Labels, Vec<Point>), String> {
    let (labels, rest) = parse_labels(line)?;
    let mut points = Vec::new();
    let mut tokens = rest.split_whitespace().peekable();
    while let Some(tok) = tokens.next() {
        if tok.starts_with("{{") {
            // Skip the rest of a native histogram point.
            let mut t = tok;
            while !t.ends_with("}}") {
                match tokens.next() {
                    Some(n) => t = n,
                    None => break,
                }
            }
            points.push(Point::Histogram);
            continue;
        }
        let before = points.len();
        expand_point(tok, &mut points, budget)?;
        budget.take(points.len() - before, tok)?;
    }
    Ok((labels, points))
}

/// Appends the points `tok` stands for; refuses to expand to more than `cap` points.
fn expand_point(tok: &str, out: &mut Vec<Point>, budget: &Points) -> Result<(), String> {
    let bad = || format!("invalid point {tok:?}");
    match tok {
        "_" => {
            out.push(Point::Missing);
            return Ok(());
        }
        "stale" => {
            out.push(Point::Stale);
            return Ok(());
        }
        _ => {}
    }
    if let Some(v) = parse_float(tok) {
        out.push(Point::Value(v));
        return Ok(());
    }
    let (head, times) = tok.rsplit_once('x').ok_or_else(bad)?;
    let n: usize = times.parse().map_err(|_| bad())?;
    if n >= budget.left {
        return Err(budget.exceeded(tok));
    }
    if head == "_" {
        out.extend(std::iter::repeat_n(Point::Missing, n));
        return Ok(());
    }
    if head == "stale" {
        out.extend(std::iter::repeat_n(Point::Stale, n));
        return Ok(());
    }
    // `a+b`, `a-b` or `a`; the operator is a sign not at the start nor after an exponent.
    let bytes = head.as_bytes();
    let split = (1..bytes.len())
        .find(|&i| (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E'));
    let (start, delta) = match split {
        Some(i) => {
            let d = parse_float(&head[i + 1..]).ok_or_else(bad)?;
            (
                parse_float(&head[..i]).ok_or_else(bad)?,
                if bytes[i] == b'-' { -d } else { d },
            )
        }
        None => (parse_float(head).ok_or_else(bad)?, 0.0),
    };
    for k in 0..=n {
        out.push(Point::Value(start + delta * k as f64));
    }
    Ok(())
}

/// A float as series descriptions write it: also `Inf`, `+Inf`, `-Inf` and `NaN`
/// (`0x59` is an expansion, not hex).
fn parse_float(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    let (sign, body) = match lower.strip_prefix('-') {
        Some(b) => (-1.0, b),
        None => (1.0, lower.strip_prefix('+').unwrap_or(&lower)),
    };
    match body {
        "inf" | "infinity" => return Some(sign * f64::INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if body.is_empty() || !body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    body.parse::<f64>().ok().map(|v| sign * v)
}

/// Parses the label part of a series description; returns it and the rest of the line.
fn parse_labels(line: &str) -> Result<(Labels, &str), String> {
    let line = line.trim_start();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !name.is_empty() {
        pairs.push((METRIC_NAME.to_string(), name.to_string()));
    }
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let consumed;
        loop {
            while chars
                .peek()
                .is_some_and(|(_, c)| c.is_whitespace() || *c == ',')
            {
                chars.next();
            }
            let Some(&(i, c)) = chars.peek() else {
                return Err(format!("unterminated labels in {line:?}"));
            };
            if c == '}' {
                consumed = i + 1;
                break;
            }
            let key = if c == '"' || c == '\'' || c == '`' {
                read_quoted(inner, &mut chars)?
            } else {
                let mut k = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' || c.is_whitespace() || c == ',' || c == '}' {
                        break;
                    }
                    k.push(c);
                    chars.next();
                }
                k
            };
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_some_and(|(_, c)| *c == '=') {
                chars.next();
                while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
                    chars.next();
                }
                let value = read_quoted(inner, &mut chars)?;
                pairs.push((key, value));
            } else {
                // A quoted metric name inside the braces: {"my.metric", a="b"}.
                pairs.push((METRIC_NAME.to_string(), key));
            }
        }
        rest = &inner[consumed..];
    }
    Ok((Labels::from_pairs(pairs), rest))
}

fn read_quoted(
    _src: &str,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<String, String> {
    let Some((_, quote)) = chars.next() else {
        return Err("expected a quoted string".into());
    };
    if !matches!(quote, '"' | '\'' | '`') {
        return Err(format!("expected a quoted string, found {quote:?}"));
    }
    let mut out = String::new();
    while let Some((_, c)) = chars.next() {
        if c == quote {
            return Ok(out);
        }
        if c == '\\' && quote != '`' {
            let Some((_, e)) = chars.next() else { break };
            out.push(match e {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                other => other,
            });
        } else {
            out.push(c);
        }
    }
    Err("unterminated string".into())
}

fn unquote_string(s: &str) -> Result<String, String> {
    let mut chars = s.char_indices().peekable();
    read_quoted(s, &mut chars)
}

/// Prometheus duration syntax (`1h30m`, `5m`, `10s`, `100ms`, `0`), optionally negative,
/// in milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if s == "0" {
        return Some(0);
    }
    let mut total: i64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[unit_len..];
    }
    Some(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(n: usize) -> Points {
        Points { left: n, max: n }
    }

    #[test]
    fn the_point_budget_covers_the_whole_script() {
        let series: String = (0..5)
            .map(|i| format!("  m{{i=\"{i}\"}} 0+1x9\n"))
            .collect();
        let script = format!("load 1s\n{series}\neval instant at 1s m\n");
        let limits = ScriptLimits {
            max_points: 49,
            ..ScriptLimits::default()
        };
        let err = run_script_with(&script, &limits).expect_err("50 points over 49");
        assert!(err.problem.contains("limit of 49 points"), "{err}");
        let limits = ScriptLimits {
            max_points: 50,
            ..ScriptLimits::default()
        };
        run_script_with(&script, &limits).expect("50 points fit");
    }

    #[test]
    fn expands_series_descriptions() {
        let (labels, points) = parse_series(
            r#"m{a="x", b="y\"z"} 1 2+3x2 _ stale _x2 -1-1x1 1e3"#,
            &mut budget(100),
        )
        .expect("valid");
        assert_eq!(labels.to_string(), r#"m{a="x", b="y\"z"}"#);
        let v = |x: f64| Point::Value(x);
        assert_eq!(
            points,
            [
                v(1.0),
                v(2.0),
                v(5.0),
                v(8.0),
                Point::Missing,
                Point::Stale,
                Point::Missing,
                Point::Missing,
                v(-1.0),
                v(-2.0),
                v(1000.0)
            ]
        );
        let (labels, _) = parse_series(r#"{"my.metric", a="b"} 1"#, &mut budget(1)).expect("valid");
        assert_eq!(labels.name(), Some("my.metric"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms("-5m"), Some(-300_000));
        assert_eq!(parse_duration_ms("10"), None);
    }

    #[test]
    fn a_small_script_passes_and_a_wrong_one_fails() {
        let script = "load 1m\n  up{job=\"a\"} 1+1x10\n\neval instant at 5m up\n  up{job=\"a\"} 6\n\neval instant at 5m up\n  up{job=\"a\"} 7\n";
        let report = run_script(script).expect("valid script");
        assert_eq!(
            (report.passed(), report.failed(), report.skipped()),
            (1, 1, 0)
        );
    }
}
