//! Reading a JSON value with paths: every problem is collected with the JSON path and the
//! bad value, so validation reports them all at once.

use std::time::Duration;

use serde_json::Value;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// JSON path of the bad value (`load_tests[2].qps`).
    pub path: String,
    /// What is wrong, quoting the bad value.
    pub message: String,
}

/// Collects problems and warnings while reading.
#[derive(Debug, Default)]
pub struct Reader {
    /// Problems: the config is rejected if there is any.
    pub errors: Vec<ConfigError>,
    /// Things worth saying that do not stop a run (unknown keys, unsupported options).
    pub warnings: Vec<String>,
}

/// `a.b`, or `a["b c"]` when the key is not a plain identifier.
pub fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (_, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::from(key)),
    }
}

/// `a[3]`.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl Reader {
    /// Records a problem.
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Warns about keys of `object` not in `known`.
    pub fn unknown_keys(
        &mut self,
        path: &str,
        object: &serde_json::Map<String, Value>,
        known: &[&str],
    ) {
        let unknown: Vec<&str> = object
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if !unknown.is_empty() {
            let at = if path.is_empty() {
                "the top level".to_string()
            } else {
                path.to_string()
            };
            self.warnings.push(format!(
                "unknown keys at {at} (ignored): {}",
                unknown.join(", ")
            ));
        }
    }

    /// A number, also given as a string (`"50000"`), as the seed writes them.
    pub fn number(&mut self, path: &str, v: &Value) -> Option<f64> {
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() => Some(n),
            _ => {
                self.error(path, format!("{v} is not a number"));
                None
            }
        }
    }

    /// A whole number in `min..=max`.
    pub fn integer(&mut self, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        let n = self.number(path, v)?;
        self.check(path, crate::limits::whole_f64(n, min, max))
    }

    /// The value of a check, or its problem recorded at `path`.
    pub fn check<T>(&mut self, path: &str, checked: Result<T, String>) -> Option<T> {
        checked.map_err(|problem| self.error(path, problem)).ok()
    }

    /// A string.
    pub fn string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        match v.as_str() {
            Some(s) => Some(s),
            None => {
                self.error(path, format!("{v} is not a string"));
                None
            }
        }
    }

    /// A boolean, also `"true"`/`"false"`.
    pub fn boolean(&mut self, path: &str, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => {
                self.error(path, format!("{v} is not true or false"));
                None
            }
        }
    }

    /// A Go/Fortio duration (`10s`, `1m30s`, `500ms`, `0`); a bare number is seconds.
    pub fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        let parsed = match v {
            Value::Number(n) => n
                .as_f64()
                .filter(|s| *s >= 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok()),
            Value::String(s) => parse_go_duration(s),
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                path,
                format!("{v} is not a duration (such as 10s, 1m30s or 500ms)"),
            );
        }
        parsed
    }

    /// An object.
    pub fn object<'v>(
        &mut self,
        path: &str,
        v: &'v Value,
    ) -> Option<&'v serde_json::Map<String, Value>> {
        match v.as_object() {
            Some(o) => Some(o),
            None => {
                self.error(path, format!("{} is not an object", short(v)));
                None
            }
        }
    }

    /// An array.
    pub fn array<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v Vec<Value>> {
        match v.as_array() {
            Some(a) => Some(a),
            None => {
                self.error(path, format!("{} is not a list", short(v)));
                None
            }
        }
    }
}

/// A value as quoted in messages, shortened when long.
pub fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

/// A duration flag or parameter, in Go's form (`parse_go_duration`): the one grammar of
/// every duration meshload reads, as Fortio and the seed write them.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).ok_or_else(|| {
        format!("{s:?} is not a duration (such as 500ms, 3s, 1m30s or 1.5h; 0 for none)")
    })
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units (`ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`), such as `300ms`, `1.5h` or `2h45m`; `0` alone is zero.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0.0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A duration in Go's form, exactly, as one word `parse_go_duration` reads back: whole
/// milliseconds when it has no finer part (`1500ms`), else microseconds or nanoseconds.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", d.as_micros())
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "ten seconds", "5d", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn formatted_durations_read_back_exactly() {
        for nanos in [0, 1, 999, 1_000, 1_500_000, 1_000_000_000, 90_000_000_001] {
            let d = Duration::from_nanos(nanos);
            assert_eq!(
                parse_go_duration(&format_go_duration(d)),
                Some(d),
                "{nanos}"
            );
        }
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_go_duration(Duration::from_micros(1500)), "1500us");
    }

    #[test]
    fn numbers_may_be_strings() {
        let mut r = Reader::default();
        assert_eq!(r.number("qps", &Value::from("50000")), Some(50000.0));
        assert_eq!(r.number("qps", &Value::from(12.5)), Some(12.5));
        assert_eq!(r.number("qps", &Value::from("fast")), None);
        assert_eq!(r.errors[0].to_string(), r#"qps: "fast" is not a number"#);
    }

    #[test]
    fn paths_quote_odd_keys() {
        assert_eq!(join("", "metrics"), "metrics");
        assert_eq!(join("metrics", "my metric"), r#"metrics["my metric"]"#);
        assert_eq!(index("load_tests", 2), "load_tests[2]");
    }
}
