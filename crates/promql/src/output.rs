//! Query results written out: the seed's CSV layout and the Prometheus API's JSON shape.

use std::collections::BTreeSet;
use std::io::{self, Write};

use serde_json::{Value as Json, json};

use crate::eval::format_value;
use crate::eval::{QueryResult, RangeSeries, Value};

/// Writes a range result as the seed's CSV: one column per label, named
/// `metric.<label>`, then `timestamp` (Unix seconds), a value column named after the
/// metric, and `normalized_ts` (seconds since that series' first point). The seed's
/// analysis read the value as the third column of a one-label result.
pub fn write_csv(w: &mut impl Write, metric_name: &str, series: &[RangeSeries]) -> io::Result<()> {
    let names: BTreeSet<&str> = series
        .iter()
        .flat_map(|s| s.labels.iter().map(|(n, _)| n))
        .collect();
    let mut header: Vec<String> = names
        .iter()
        .map(|n| csv_field(&format!("metric.{n}")))
        .collect();
    header.extend([
        "timestamp".to_string(),
        csv_field(metric_name),
        "normalized_ts".to_string(),
    ]);
    writeln!(w, "{}", header.join(","))?;
    for s in series {
        let first = s.points.first().map_or(0, |p| p.0);
        for &(t, v) in &s.points {
            let mut row: Vec<String> = names.iter().map(|n| csv_field(s.labels.value(n))).collect();
            row.push(format_seconds(t));
            row.push(format_value(v));
            row.push(format_seconds(t - first));
            writeln!(w, "{}", row.join(","))?;
        }
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Milliseconds as seconds, without trailing zeros (`1700000000.5`, `12`).
pub fn format_seconds(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", format_seconds(-ms));
    }
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    if frac == 0 {
        format!("{secs}")
    } else {
        format!("{secs}.{frac:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

fn seconds_json(ms: i64) -> Json {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

/// The Prometheus HTTP API response for a result evaluated at `t_ms` (instant queries;
/// range results carry their own timestamps).
pub fn api_json(result: &QueryResult, t_ms: i64) -> Json {
    let (kind, data) = match &result.value {
        Value::Scalar(v) => ("scalar", json!([seconds_json(t_ms), format_value(*v)])),
        Value::String(s) => ("string", json!([seconds_json(t_ms), s])),
        Value::Vector(samples) => (
            "vector",
            Json::Array(
                samples
                    .iter()
                    .map(|s| json!({"metric": labels_json(&s.labels), "value": [seconds_json(t_ms), format_value(s.value)]}))
                    .collect(),
            ),
        ),
        Value::Matrix(series) => (
            "matrix",
            Json::Array(
                series
                    .iter()
                    .map(|s| {
                        let values: Vec<Json> =
                            s.points.iter().map(|&(t, v)| json!([seconds_json(t), format_value(v)])).collect();
                        json!({"metric": labels_json(&s.labels), "values": values})
                    })
                    .collect(),
            ),
        ),
    };
    let mut out = json!({"status": "success", "data": {"resultType": kind, "result": data}});
    if !result.warnings.is_empty() {
        out["warnings"] = json!(result.warnings);
    }
    if !result.infos.is_empty() {
        out["infos"] = json!(result.infos);
    }
    out
}

fn labels_json(labels: &crate::labels::Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(n, v)| (n.to_string(), Json::from(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;

    #[test]
    fn csv_has_the_seed_layout() {
        let series = vec![RangeSeries {
            labels: Labels::from_pairs([("replica_set", "node-0-abc")]),
            points: vec![(1_700_000_000_000, 12.5), (1_700_000_010_000, 13.0)],
        }];
        let mut out = Vec::new();
        write_csv(&mut out, "envoy_memory_MB_by_replica_set", &series).expect("in memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "metric.replica_set,timestamp,envoy_memory_MB_by_replica_set,normalized_ts\n\
             node-0-abc,1700000000,12.5,0\nnode-0-abc,1700000010,13,10\n"
        );
    }

    #[test]
    fn json_has_the_api_shape() {
        let r = QueryResult {
            value: Value::Matrix(vec![RangeSeries {
                labels: Labels::from_pairs([("a", "b")]),
                points: vec![(1500, f64::INFINITY)],
            }]),
            warnings: vec![],
            infos: vec!["PromQL info: x".into()],
        };
        let j = api_json(&r, 0);
        assert_eq!(j["data"]["resultType"], "matrix");
        assert_eq!(j["data"]["result"][0]["values"][0], json!([1.5, "+Inf"]));
        assert_eq!(j["infos"][0], "PromQL info: x");
        assert_eq!(format_seconds(1500), "1.5");
        assert_eq!(format_seconds(-500), "-0.5");
    }
}
