//! A lenient parser of the Prometheus text exposition format (0.0.4) and OpenMetrics.
//!
//! Lenient with what real exporters emit: missing `HELP`/`TYPE`, blank lines, `\r\n`,
//! trailing commas in label sets, quoted (UTF-8) metric and label names, exemplars and
//! `# UNIT` lines (read and ignored). What it cannot read is an error naming the line and
//! column. It never panics, whatever the input.

use std::collections::HashMap;

use crate::labels::{Labels, METRIC_NAME};

/// The type a family declares with `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A classic histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
    /// An OpenMetrics gauge histogram.
    GaugeHistogram,
    /// A summary (quantiles, `_sum`, `_count`).
    Summary,
    /// An OpenMetrics info metric.
    Info,
    /// An OpenMetrics state set.
    StateSet,
    /// Untyped or unknown.
    Unknown,
}

impl MetricKind {
    fn parse(s: &str) -> MetricKind {
        match s {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            "histogram" => MetricKind::Histogram,
            "gaugehistogram" => MetricKind::GaugeHistogram,
            "summary" => MetricKind::Summary,
            "info" => MetricKind::Info,
            "stateset" => MetricKind::StateSet,
            _ => MetricKind::Unknown,
        }
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpoSample {
    /// Its labels, the metric name included.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
    /// Its timestamp in milliseconds, when the line has one.
    pub timestamp_ms: Option<i64>,
}

/// What a family's `# HELP` and `# TYPE` lines said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    /// The declared type.
    pub kind: Option<MetricKind>,
    /// The help text, unescaped.
    pub help: Option<String>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<ExpoSample>,
    /// Metadata by family name.
    pub families: HashMap<String, Family>,
}

/// Where and why the text could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ExpositionError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Which format the text is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: timestamps in milliseconds.
    Prometheus,
    /// OpenMetrics 1.0: timestamps in seconds, `# EOF` at the end.
    OpenMetrics,
}

impl Format {
    /// The format a `Content-Type` header names (Prometheus text when unsure).
    pub fn from_content_type(content_type: &str) -> Format {
        if content_type.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// Parses an exposition.
pub fn parse(text: &str, format: Format) -> Result<Exposition, ExpositionError> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let mut cur = Cursor {
            text: line,
            pos: 0,
            line: i + 1,
        };
        cur.skip_spaces();
        if cur.at_end() {
            continue;
        }
        if cur.peek() == Some('#') {
            parse_comment(&mut cur, &mut out);
            continue;
        }
        let sample = parse_sample(&mut cur, format)?;
        out.samples.push(sample);
    }
    Ok(out)
}

fn parse_comment(cur: &mut Cursor<'_>, out: &mut Exposition) {
    let rest = cur.rest().trim_start_matches('#').trim_start();
    let mut parts = rest.splitn(3, ' ');
    let (keyword, name, tail) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    match keyword {
        "HELP" if !name.is_empty() => {
            out.families.entry(name.to_string()).or_default().help = Some(unescape(tail, false));
        }
        "TYPE" if !name.is_empty() => {
            out.families.entry(name.to_string()).or_default().kind =
                Some(MetricKind::parse(tail.trim()));
        }
        // `# UNIT`, `# EOF` and free comments carry nothing the engine needs.
        _ => {}
    }
}

fn parse_sample(cur: &mut Cursor<'_>, format: Format) -> Result<ExpoSample, ExpositionError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if cur.peek() != Some('{') {
        let name = cur.take_while(is_name_char);
        if name.is_empty() {
            return Err(cur.error("expected a metric name"));
        }
        pairs.push((METRIC_NAME.to_string(), name.to_string()));
    }
    let before_spaces = cur.pos;
    cur.skip_spaces();
    if cur.peek() == Some('{') {
        cur.advance();
        parse_label_set(cur, &mut pairs)?;
    } else {
        cur.pos = before_spaces;
    }
    if !pairs.iter().any(|(n, _)| n == METRIC_NAME) {
        return Err(cur.error("sample has no metric name"));
    }
    if !cur.skip_spaces() {
        return Err(cur.error("expected a space before the value"));
    }
    let value_text = cur.take_while(|c| !c.is_whitespace());
    let value = parse_value(value_text)
        .ok_or_else(|| cur.error_back(value_text, format!("invalid value {value_text:?}")))?;
    cur.skip_spaces();
    let mut timestamp_ms = None;
    if !cur.at_end() && cur.peek() != Some('#') {
        let ts_text = cur.take_while(|c| !c.is_whitespace());
        timestamp_ms =
            Some(parse_timestamp(ts_text, format).ok_or_else(|| {
                cur.error_back(ts_text, format!("invalid timestamp {ts_text:?}"))
            })?);
        cur.skip_spaces();
    }
    // An OpenMetrics exemplar (` # {trace_id="..."} 1.0`) may follow; it is ignored.
    if !cur.at_end() && cur.peek() != Some('#') {
        return Err(cur.error("unexpected text after the sample"));
    }
    Ok(ExpoSample {
        labels: Labels::from_pairs(pairs),
        value,
        timestamp_ms,
    })
}

fn parse_label_set(
    cur: &mut Cursor<'_>,
    pairs: &mut Vec<(String, String)>,
) -> Result<(), ExpositionError> {
    loop {
        cur.skip_spaces();
        match cur.peek() {
            Some('}') => {
                cur.advance();
                return Ok(());
            }
            None => return Err(cur.error("unterminated label set (missing '}')")),
            _ => {}
        }
        let name = if cur.peek() == Some('"') {
            cur.quoted()?
        } else {
            let n = cur.take_while(is_name_char).to_string();
            if n.is_empty() {
                return Err(cur.error("expected a label name"));
            }
            n
        };
        cur.skip_spaces();
        if cur.peek() == Some('=') {
            cur.advance();
            cur.skip_spaces();
            if cur.peek() != Some('"') {
                return Err(cur.error("expected a quoted label value"));
            }
            let value = cur.quoted()?;
            pairs.push((name, value));
        } else {
            // A quoted metric name alone in the braces: {"my.metric", ...}.
            pairs.push((METRIC_NAME.to_string(), name));
        }
        cur.skip_spaces();
        match cur.peek() {
            Some(',') => cur.advance(),
            Some('}') => {}
            _ => return Err(cur.error("expected ',' or '}' in the label set")),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A float as exporters write it (Go's `ParseFloat`): also `NaN`, `+Inf`, `-Inf`, `Inf`.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ if s.is_empty() || s.contains(|c: char| c.is_alphabetic() && c != 'e' && c != 'E') => {
            None
        }
        _ => s.parse().ok(),
    }
}

fn parse_timestamp(s: &str, format: Format) -> Option<i64> {
    match format {
        Format::Prometheus => s.parse::<i64>().ok(),
        Format::OpenMetrics => {
            let secs: f64 = s.parse().ok()?;
            secs.is_finite().then(|| (secs * 1000.0).round() as i64)
        }
    }
}

/// Undoes `\\`, `\n` (and `\"` in label values).
fn unescape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') if quotes => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A position in one line.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn advance(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    /// Skips spaces and tabs; whether any were skipped.
    fn skip_spaces(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.advance();
        }
        self.pos > start
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.advance();
        }
        &self.text[start..self.pos]
    }

    /// A double-quoted string with escapes; the cursor is on the opening quote.
    fn quoted(&mut self) -> Result<String, ExpositionError> {
        let open = self.pos;
        self.advance();
        let start = self.pos;
        let mut escaped = false;
        while let Some(c) = self.peek() {
            if c == '"' && !escaped {
                let raw = &self.text[start..self.pos];
                self.advance();
                return Ok(unescape(raw, true));
            }
            escaped = c == '\\' && !escaped;
            self.advance();
        }
        self.pos = open;
        Err(self.error("unterminated quoted string"))
    }

    fn column(&self, byte: usize) -> usize {
        self.text[..byte.min(self.text.len())].chars().count() + 1
    }

    fn error(&self, message: &str) -> ExpositionError {
        ExpositionError {
            line: self.line,
            column: self.column(self.pos),
            message: message.to_string(),
        }
    }

    /// An error pointing at `token`, which was just consumed.
    fn error_back(&self, token: &str, message: String) -> ExpositionError {
        ExpositionError {
            line: self.line,
            column: self.column(self.pos - token.len()),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_text() {
        let text = "# HELP http_requests_total The total.\n# TYPE http_requests_total counter\n\
            http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
            http_requests_total{method=\"post\",code=\"400\",} 3\n\
            msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\r\n\
            metric_without_timestamp_and_labels 12.47\n\
            something_weird{problem=\"division by zero\"} +Inf -3982045\n\
            nan_value NaN\n";
        let e = parse(text, Format::Prometheus).expect("valid");
        assert_eq!(e.samples.len(), 6);
        assert_eq!(e.samples[0].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(e.samples[1].labels.value("code"), "400");
        assert_eq!(e.samples[2].labels.value("path"), "C:\\DIR\\FILE.TXT");
        assert_eq!(
            e.samples[2].labels.value("error"),
            "Cannot find file:\n\"FILE.TXT\""
        );
        assert_eq!(e.samples[4].value, f64::INFINITY);
        assert_eq!(e.samples[4].timestamp_ms, Some(-3_982_045));
        assert!(e.samples[5].value.is_nan());
        assert_eq!(
            e.families["http_requests_total"].kind,
            Some(MetricKind::Counter)
        );
        assert_eq!(
            e.families["http_requests_total"].help.as_deref(),
            Some("The total.")
        );
    }

    #[test]
    fn reads_openmetrics_with_exemplars_and_eof() {
        let text = "# TYPE foo counter\n# UNIT foo seconds\nfoo_total 17.0 1520879607.789 # {id=\"x\"} 1.0\n\
            {\"my.dotted.metric\",a=\"b\"} 1\n# EOF\n";
        let e = parse(text, Format::OpenMetrics).expect("valid");
        assert_eq!(e.samples[0].timestamp_ms, Some(1_520_879_607_789));
        assert_eq!(e.samples[1].labels.name(), Some("my.dotted.metric"));
    }

    #[test]
    fn errors_name_line_and_column() {
        let err = parse("ok 1\nbad{a=\"b\" 1\n", Format::Prometheus).expect_err("invalid");
        assert_eq!((err.line, err.column), (2, 11));
        let err = parse("x{a=\"b\"} one\n", Format::Prometheus).expect_err("invalid");
        assert_eq!(
            (err.line, err.column, err.message.as_str()),
            (1, 10, "invalid value \"one\"")
        );
        let err = parse("x 1 2 3\n", Format::Prometheus).expect_err("invalid");
        assert_eq!(err.line, 1);
    }

    #[test]
    fn never_panics_on_random_input() {
        // A deterministic xorshift over an alphabet of the characters the grammar cares
        // about: 20,000 random lines of up to 40 characters, in both formats.
        const ALPHABET: &[char] = &[
            'a', 'z', '_', ':', '{', '}', '"', '\\', '=', ',', ' ', '\t', '#', '1', '.', 'e', '-',
            '+', 'N', 'I', '\n', 'é', '\r',
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let line: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let _ = parse(&line, Format::Prometheus);
            let _ = parse(&line, Format::OpenMetrics);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let seeds = [
            "x{",
            "x{\"",
            "{",
            "x{a=\"\\",
            "# TYPE",
            "x 1e",
            "\u{fe0f}{a=\"é\"} 1",
            "x{,} 1",
            "x{a} 1",
            "\"q\" 1",
        ];
        for s in seeds {
            let _ = parse(s, Format::Prometheus);
            let _ = parse(s, Format::OpenMetrics);
        }
        // Every prefix of a valid exposition, cut at any byte that is a char boundary.
        let text = "# HELP a b\nmetric{l=\"v\\\"q\",m=\"ü\"} 1.5e3 123\n";
        for i in 0..=text.len() {
            if text.is_char_boundary(i) {
                let _ = parse(&text[..i], Format::Prometheus);
            }
        }
    }
}
