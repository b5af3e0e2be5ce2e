//! A client of the Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`) that
//! returns results in the engine's own model, so a real Prometheus and the embedded
//! engine answer through the same types.

use std::time::Duration;

use serde_json::Value as Json;

use crate::eval::{QueryResult, RangeSeries, Sample, Value};
use crate::labels::Labels;
use crate::output::format_seconds;

/// Why a query to a Prometheus server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or answered garbage.
    #[error("cannot query {url}")]
    Http {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("prometheus answered {error_type}: {error}")]
    Api {
        /// Prometheus's `errorType`.
        error_type: String,
        /// Prometheus's `error`.
        error: String,
    },
    /// The answer does not have the API's shape.
    #[error("unexpected answer from prometheus: {0}")]
    Shape(String),
}

/// A Prometheus server.
#[derive(Debug, Clone)]
pub struct PrometheusClient {
    base: String,
    http: reqwest::Client,
}

impl PrometheusClient {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:9090`).
    pub fn new(base_url: &str) -> Result<PrometheusClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| ClientError::Http {
                url: base_url.to_string(),
                source,
            })?;
        Ok(PrometheusClient {
            base: base_url.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// An instant query at `t_ms`.
    pub async fn query(&self, expr: &str, t_ms: i64) -> Result<QueryResult, ClientError> {
        let form = [("query", expr.to_string()), ("time", format_seconds(t_ms))];
        self.post("/api/v1/query", &form).await
    }

    /// A range query.
    pub async fn query_range(
        &self,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, ClientError> {
        let form = [
            ("query", expr.to_string()),
            ("start", format_seconds(start_ms)),
            ("end", format_seconds(end_ms)),
            ("step", format_seconds(step_ms)),
        ];
        self.post("/api/v1/query_range", &form).await
    }

    async fn post(&self, path: &str, form: &[(&str, String)]) -> Result<QueryResult, ClientError> {
        let url = format!("{}{path}", self.base);
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let response = self.http.post(&url).form(form).send().await.map_err(http)?;
        let body: Json = response.json().await.map_err(http)?;
        parse_response(&body)
    }
}

/// Reads an API response body into the engine's model.
pub fn parse_response(body: &Json) -> Result<QueryResult, ClientError> {
    if body["status"] != "success" {
        return Err(ClientError::Api {
            error_type: body["errorType"].as_str().unwrap_or("unknown").to_string(),
            error: body["error"].as_str().unwrap_or("no message").to_string(),
        });
    }
    let data = &body["data"];
    let result = &data["result"];
    let value = match data["resultType"].as_str() {
        Some("scalar") => Value::Scalar(point(result)?.1),
        Some("string") => Value::String(result[1].as_str().unwrap_or_default().to_string()),
        Some("vector") => Value::Vector(
            items(result)?
                .iter()
                .map(|r| {
                    Ok(Sample {
                        labels: labels(&r["metric"]),
                        value: point(&r["value"])?.1,
                    })
                })
                .collect::<Result<_, ClientError>>()?,
        ),
        Some("matrix") => Value::Matrix(
            items(result)?
                .iter()
                .map(|r| {
                    let points = items(&r["values"])?
                        .iter()
                        .map(point)
                        .collect::<Result<_, _>>()?;
                    Ok(RangeSeries {
                        labels: labels(&r["metric"]),
                        points,
                    })
                })
                .collect::<Result<_, ClientError>>()?,
        ),
        other => return Err(ClientError::Shape(format!("resultType {other:?}"))),
    };
    let strings = |key: &str| -> Vec<String> {
        body[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(QueryResult {
        value,
        warnings: strings("warnings"),
        infos: strings("infos"),
    })
}

fn items(v: &Json) -> Result<&Vec<Json>, ClientError> {
    v.as_array()
        .ok_or_else(|| ClientError::Shape(format!("expected an array, got {v}")))
}

fn labels(v: &Json) -> Labels {
    Labels::from_pairs(
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())),
    )
}

/// `[1700000000.123, "1.5"]` as `(ms, value)`.
fn point(v: &Json) -> Result<(i64, f64), ClientError> {
    let bad = || ClientError::Shape(format!("expected [time, \"value\"], got {v}"));
    let t = v[0].as_f64().ok_or_else(bad)?;
    let value = v[1]
        .as_str()
        .and_then(crate::exposition::parse_value)
        .ok_or_else(bad)?;
    Ok(((t * 1000.0).round() as i64, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_api_shapes() {
        let body: Json = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"b"},"values":[[1.5,"2"],[2.5,"NaN"]]}]},"warnings":["w"]}"#,
        )
        .expect("json");
        let r = parse_response(&body).expect("valid");
        let Value::Matrix(m) = r.value else {
            panic!("matrix expected")
        };
        assert_eq!(m[0].points[0], (1500, 2.0));
        assert!(m[0].points[1].1.is_nan());
        assert_eq!(r.warnings, ["w"]);
        let err: Json = serde_json::from_str(
            r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        )
        .expect("json");
        assert!(matches!(parse_response(&err), Err(ClientError::Api { .. })));
    }
}
