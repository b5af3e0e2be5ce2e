//! Limits on what a query may ask for before it is parsed: its length, how deeply it
//! nests and how many operators it chains. The parser and the evaluator recurse over the
//! expression, so an expression 10,000 calls deep (`abs(abs(...))`) or 30,000 terms long
//! (`up+up+...`) would overflow the stack and abort the process; these bounds refuse it
//! first with a clear error. They are far above what dashboards and the seed's queries
//! use (a handful of levels and operators).

/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The deepest nesting of parentheses and brackets (calls, grouping, subqueries).
pub const MAX_NESTING: usize = 64;
/// The most operators (binary and unary) in one expression.
pub const MAX_OPERATORS: usize = 256;

/// Checks `query` against the limits; `Err` names the one exceeded and by how much.
pub fn check(query: &str) -> Result<(), String> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query is {} bytes long; at most {MAX_QUERY_BYTES} are accepted",
            query.len()
        ));
    }
    let (nesting, operators) = shape(query);
    if nesting > MAX_NESTING {
        return Err(format!(
            "the query nests {nesting} levels deep; at most {MAX_NESTING} are accepted"
        ));
    }
    if operators > MAX_OPERATORS {
        return Err(format!(
            "the query has {operators} operators; at most {MAX_OPERATORS} are accepted"
        ));
    }
    Ok(())
}

/// The most evaluations a query's subqueries may ask for: a subquery evaluates its inner
/// expression once per step, and a nested one multiplies (an hour at a 1 ms step is 3.6
/// million; a day at 1 ms, 86 million, would take minutes).
pub const MAX_SUBQUERY_STEPS: i64 = 1_000_000;

/// Step of subqueries without one: Prometheus's default evaluation interval, 1 minute.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// How many steps the subqueries of `expr` evaluate, nested ones multiplied, at the default
/// step where none is given (0 with no subquery). Known before any evaluation, so
/// `max_over_time(up[30d:1ms])` is refused when the config is read, not after a test.
pub fn subquery_evaluations(expr: &promql_parser::parser::Expr) -> f64 {
    use promql_parser::parser::Expr;
    match expr {
        Expr::Subquery(sq) => {
            let step = sq
                .step
                .map_or(DEFAULT_SUBQUERY_STEP_MS as f64, |s| s.as_millis() as f64)
                .max(1.0);
            let steps = (sq.range.as_millis() as f64 / step).floor().max(1.0);
            steps * subquery_evaluations(&sq.expr).max(1.0)
        }
        Expr::Aggregate(a) => {
            subquery_evaluations(&a.expr) + a.param.as_deref().map_or(0.0, subquery_evaluations)
        }
        Expr::Unary(u) => subquery_evaluations(&u.expr),
        Expr::Binary(b) => subquery_evaluations(&b.lhs) + subquery_evaluations(&b.rhs),
        Expr::Paren(p) => subquery_evaluations(&p.expr),
        Expr::Call(c) => c
            .args
            .args
            .iter()
            .map(|a| subquery_evaluations(a))
            .sum::<f64>(),
        _ => 0.0,
    }
}

/// The longest duration a query may write (`x[300]`, `x[5m]`, `offset 60`), in seconds:
/// about 31,700 years. The parser aborts on plain numbers past about 1e18 s and wraps
/// unit durations (`up[9999999999999999y]` came out as "duration must be greater than
/// 0"), and the evaluator counts milliseconds in an `i64`: past this bound neither holds.
const MAX_PLAIN_SECONDS: f64 = 1e12;

/// A Prometheus duration with units (`5m`, `1h30m`, `9999999999999999y`) in seconds, or
/// `None` when `text` is not one.
fn unit_seconds(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "y" => 31_536_000.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Parses `query` within the limits. A panic of the parser (a case the checks here do not
/// foresee) becomes an error too, so a query can never take the process down.
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr, String> {
    check(query)?;
    plain_durations(query)?;
    match std::panic::catch_unwind(|| promql_parser::parser::parse(query)) {
        Ok(Ok(expr)) => {
            let evaluations = subquery_evaluations(&expr);
            if evaluations > MAX_SUBQUERY_STEPS as f64 {
                return Err(format!(
                    "the query's subqueries would evaluate {evaluations:.0} times; at most {MAX_SUBQUERY_STEPS} are accepted (use a larger subquery step or a shorter range)"
                ));
            }
            Ok(expr)
        }
        Ok(Err(e)) => Err(e.trim().to_string()),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown reason".to_string());
            Err(format!("the PromQL parser failed on this query: {why}"))
        }
    }
}

/// Refuses a range, subquery step or offset written as a plain number too large for a
/// duration (`x[1e300]`, `offset 18446744073709551616`).
fn plain_durations(query: &str) -> Result<(), String> {
    let bytes = query.as_bytes();
    let mut i = 0;
    let mut after_duration_start = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() || ((c == b'-' || c == b'+') && after_duration_start) {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &query[start..i];
            if after_duration_start && word.eq_ignore_ascii_case("inf") {
                return Err(format!("{word} is not a duration"));
            }
            after_duration_start = word.eq_ignore_ascii_case("offset");
            continue;
        }
        if (c.is_ascii_digit() || c == b'.') && after_duration_start {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'.'
                    || (matches!(bytes[i], b'+' | b'-') && matches!(bytes[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let number = &query[start..i];
            if let Some(secs) = number.parse::<f64>().ok().or_else(|| unit_seconds(number))
                && (secs.is_nan() || secs.abs() >= MAX_PLAIN_SECONDS)
            {
                return Err(format!(
                    "{number} seconds is out of range for a duration (at most {MAX_PLAIN_SECONDS:e})"
                ));
            }
            if let Some(hex) = number.strip_prefix("0x")
                && u128::from_str_radix(hex, 16).is_ok_and(|secs| secs as f64 >= MAX_PLAIN_SECONDS)
            {
                return Err(format!("{number} seconds is out of range for a duration"));
            }
            after_duration_start = false;
            continue;
        }
        after_duration_start = matches!(c, b'[' | b':');
        i += 1;
    }
    Ok(())
}

/// The deepest `(`/`[` nesting and the operator count, outside strings and label
/// matchers (`{...}`, where `=~` and `!=` are not operators). Keywords (`and`, `or`,
/// `unless`) count as operators; the count may be a little high (a `-` in `1e-3`), never
/// low.
fn shape(query: &str) -> (usize, usize) {
    let bytes = query.as_bytes();
    let (mut depth, mut deepest, mut operators, mut braces) = (0usize, 0usize, 0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' | b'\'' | b'`' => {
                // Skip the string; `\` escapes in all but backtick strings.
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    if bytes[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => braces += 1,
            b'}' => braces = braces.saturating_sub(1),
            _ if braces > 0 => {}
            b'(' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' => operators += 1,
            b'=' | b'!' | b'<' | b'>' => {
                operators += 1;
                // `==`, `!=`, `<=`, `>=` are one operator.
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 1;
                }
            }
            _ if c.is_ascii_alphabetic() => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if matches!(&query[start..i], "and" | "or" | "unless") {
                    operators += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    (deepest, operators)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_queries_pass() {
        let seed = r#"sum(label_replace(container_memory_working_set_bytes{container="envoy",pod=~"node-.*"}, "replica_set", "$1", "pod", "(node-.*-.*)-.*")) by (replica_set) / (1024*1024)"#;
        assert_eq!(check(seed), Ok(()));
        assert_eq!(shape(seed), (2, 2));
        assert_eq!(shape(r#"a{b!="(((", c=~"x+"} and on() d"#).1, 1);
    }

    #[test]
    fn deep_long_and_huge_queries_are_refused() {
        let deep = format!("{}up{}", "abs(".repeat(10_000), ")".repeat(10_000));
        assert!(check(&deep).expect_err("refused").contains("10000 levels"));
        let long = vec!["up"; 20_000].join("+");
        assert!(
            check(&long)
                .expect_err("refused")
                .contains("19999 operators")
        );
        // The issue's 30,000 terms are too long before they are too many.
        let longer = vec!["up"; 30_000].join("+");
        assert!(check(&longer).expect_err("refused").contains("bytes long"));
        let huge = "x".repeat(MAX_QUERY_BYTES + 1);
        assert!(check(&huge).expect_err("refused").contains("bytes long"));
        let at_the_limit = format!(
            "{}up{}",
            "sum(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert_eq!(check(&at_the_limit), Ok(()));
    }

    #[test]
    fn durations_the_parser_cannot_hold_are_refused_not_a_crash() {
        // Each of these aborted the parser (found by fuzzing the config loader).
        for q in [
            "x[1e300]",
            "x[888888888888888888888888]",
            "x offset 1e300",
            "x offset -1e300",
            "x offset Inf",
            "x[5m:1e300]",
            "x[1e400]",
            "rate(x[18446744073709551616])",
            "x[5m:18446744073709551615]",
            "up[9999999999999999y]",
            "up offset 99999999999w",
            "max_over_time(up[5m:1000000000000d])",
            "up[1y99999999999999h]",
        ] {
            let err = parse(q).expect_err(q);
            assert!(
                err.contains("out of range") || err.contains("not a duration"),
                "{q}: {err}"
            );
        }
        for q in [
            "x[300]",
            "x offset 60",
            "x[5m:30]",
            "x > 1e300",
            "x @ 1e10",
            "x[1.5]",
            "x[1h30m]",
            "x[30000y]",
            "x offset 1w",
        ] {
            assert!(parse(q).is_ok(), "{q}: {:?}", parse(q).err());
        }
    }
}
