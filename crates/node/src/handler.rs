//! Serving one request: `/health`, `/metrics`, and the fan-out to backends on any other path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connections::TrackedBody;
use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meshload_process::{ErrorKind, error_chain};
use serde::Serialize;

use crate::behaviour::{Dice, Latency};
use crate::capacity::{Admission, Gate};
use crate::config::{Backend, CallMode, NodeConfig};
use crate::delays::Delays;
use crate::metrics::{self, NodeMetrics};

/// Headers that carry a trace or request identity, forwarded to every backend so that a
/// tracing system (W3C Trace Context, Zipkin B3, Envoy's request id) sees one trace.
const FORWARDED_HEADERS: [&str; 10] = [
    CHECK_HEADER,
    "traceparent",
    "tracestate",
    "x-request-id",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// A request carrying this header is a connectivity check: injected latency and errors
/// are skipped (the check tests the wiring, not the faults), and the header travels on
/// to the backends.
pub const CHECK_HEADER: &str = "x-meshload-check";

/// Largest request body read (and discarded as it arrives); larger bodies get 413. The
/// most a load test sends, so that every payload meshload accepts reaches a node whole.
const MAX_BODY_BYTES: u64 = meshload_config::limits::MAX_PAYLOAD_BYTES;

/// Largest backend answer read (and discarded): the most a node is told to send.
const MAX_BACKEND_BODY_BYTES: u64 = meshload_config::limits::MAX_RESPONSE_BYTES;

/// Why a body was not read to its end.
#[derive(Debug, PartialEq)]
enum BodyProblem {
    /// It is (or says it is) larger than allowed.
    TooLarge,
    /// It broke off.
    Broken,
}

/// Reads a body to its end, keeping none of it: memory stays at one frame however large
/// the body, and however many arrive at once.
async fn discard<B>(mut body: B, max: u64) -> Result<(), BodyProblem>
where
    B: hyper::body::Body + Unpin,
{
    if body.size_hint().lower() > max {
        return Err(BodyProblem::TooLarge);
    }
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyProblem::Broken)?;
        if let Some(data) = frame.data_ref() {
            seen += hyper::body::Buf::remaining(data) as u64;
            if seen > max {
                return Err(BodyProblem::TooLarge);
            }
        }
    }
    Ok(())
}

type ResponseBody = Full<Bytes>;
type BackendClient = Client<HttpConnector, Empty<Bytes>>;

/// A backend call that did not answer 200.
#[derive(Debug, Serialize)]
struct Failure {
    backend: String,
    reason: String,
}

/// The JSON body of every answer on the fan-out path.
#[derive(Debug, Serialize)]
struct Reply<'a> {
    node: &'a str,
    code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed: Vec<Failure>,
    #[serde(skip_serializing_if = "str::is_empty")]
    padding: &'a str,
}

/// The state shared by every connection of one node.
#[derive(Debug)]
pub(crate) struct Node {
    config: NodeConfig,
    client: BackendClient,
    metrics: NodeMetrics,
    dice: Dice,
    /// The 200 body, built once: it never changes.
    ok_body: Bytes,
    /// The known capacity, if one was set.
    gate: Option<Gate>,
    /// Where injected latency waits (finer than tokio's timer); `None` without latency,
    /// or when its thread could not start (tokio's timer then keeps the delay).
    delays: Option<Delays>,
}

impl Node {
    pub(crate) fn new(config: NodeConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.call_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let ok_body = ok_body(&config.name, config.behaviour.response_size_bytes);
        let dice = Dice::new(config.behaviour.clone());
        let gate = config.capacity.map(Gate::new);
        let delays = match config.behaviour.latency {
            Latency::None => None,
            _ => Delays::start()
                .inspect_err(|e| tracing::warn!("injected latency on tokio's timer: {e}"))
                .ok(),
        };
        Node {
            gate,
            delays,
            config,
            client,
            metrics: NodeMetrics::new(),
            dice,
            ok_body,
        }
    }

    /// The node's resource bounds.
    pub(crate) fn limits(&self) -> &crate::config::Limits {
        &self.config.limits
    }

    /// Routes one request. Never fails: every problem becomes a status code.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<TrackedBody>,
    ) -> Response<ResponseBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/health") => plain(StatusCode::OK, "ok\n"),
            (&Method::GET, "/metrics") => self.metrics_response(req.headers()),
            _ => self.serve(req).await,
        }
    }

    /// OpenMetrics for scrapers that ask for it (Prometheus does), else text format 0.0.4.
    fn metrics_response(&self, headers: &HeaderMap) -> Response<ResponseBody> {
        let wants_openmetrics = headers.get_all(http::header::ACCEPT).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.contains("application/openmetrics-text"))
        });
        let (body, content_type) = if wants_openmetrics {
            (self.metrics.encode(), metrics::OPENMETRICS_CONTENT_TYPE)
        } else {
            (
                self.metrics.encode_prometheus_text(),
                metrics::PROMETHEUS_CONTENT_TYPE,
            )
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    async fn serve(&self, req: Request<TrackedBody>) -> Response<ResponseBody> {
        let started = Instant::now();
        let _in_flight = self.metrics.start_request();
        let (parts, body) = req.into_parts();
        let limits = &self.config.limits;
        // The body counts against the request timeout too, and has its own bound.
        let body_wait = limits.body_read_timeout.min(limits.request_timeout);
        let read = tokio::time::timeout(body_wait, discard(body, MAX_BODY_BYTES));
        let response = match read.await {
            Err(_) => self.reply(
                StatusCode::REQUEST_TIMEOUT,
                Some("request body not received in time"),
                vec![],
            ),
            Ok(Err(BodyProblem::TooLarge)) => self.reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("request body too large"),
                vec![],
            ),
            Ok(Err(BodyProblem::Broken)) => self.reply(
                StatusCode::BAD_REQUEST,
                Some("request body broken off"),
                vec![],
            ),
            Ok(Ok(())) => {
                let left = limits.request_timeout.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, self.respond(&parts.headers)).await {
                    Ok(response) => response,
                    Err(_) => {
                        self.reply(StatusCode::GATEWAY_TIMEOUT, Some("request timeout"), vec![])
                    }
                }
            }
        };
        self.metrics
            .observe_request(response.status().as_u16(), started.elapsed());
        response
    }

    async fn respond(&self, incoming: &HeaderMap) -> Response<ResponseBody> {
        if let Some(gate) = &self.gate
            && !incoming.contains_key(CHECK_HEADER)
        {
            match gate.admit(Instant::now()) {
                Admission::Now => {}
                Admission::At(when) => tokio::time::sleep_until(when.into()).await,
                Admission::Refuse => {
                    return self.reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some("over capacity"),
                        vec![],
                    );
                }
            }
        }
        if self.dice.is_active() && !incoming.contains_key(CHECK_HEADER) {
            let fate = self.dice.roll();
            match (&self.delays, fate.delay.is_zero()) {
                (_, true) => {}
                (Some(delays), false) => delays.sleep(fate.delay).await,
                (None, false) => tokio::time::sleep(fate.delay).await,
            }
            if fate.fail {
                let code = StatusCode::from_u16(self.dice.behaviour().error_code)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return self.reply(code, Some("injected error"), vec![]);
            }
        }
        let headers = forwarded(incoming);
        let failed = self.call_backends(&headers).await;
        if failed.is_empty() {
            json(StatusCode::OK, self.ok_body.clone())
        } else {
            self.reply(StatusCode::INTERNAL_SERVER_ERROR, None, failed)
        }
    }

    async fn call_backends(&self, headers: &HeaderMap) -> Vec<Failure> {
        let backends = &self.config.backends;
        let outcomes = match self.config.call_mode {
            CallMode::Parallel => join_all(backends.iter().map(|b| self.call(b, headers))).await,
            CallMode::Sequential => {
                let mut outcomes = Vec::with_capacity(backends.len());
                for backend in backends {
                    outcomes.push(self.call(backend, headers).await);
                }
                outcomes
            }
        };
        outcomes.into_iter().filter_map(Result::err).collect()
    }

    /// Calls one backend; `Ok` only for a 200 whose body arrived whole.
    async fn call(&self, backend: &Backend, headers: &HeaderMap) -> Result<(), Failure> {
        let started = Instant::now();
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = backend.next_uri();
        *req.headers_mut() = headers.clone();
        if !backend.endpoints().is_empty()
            && let Ok(host) = HeaderValue::from_str(backend.authority())
        {
            // Called by address, but named as the service, as behind a Kubernetes Service.
            req.headers_mut().insert(http::header::HOST, host);
        }
        let exchange = async {
            let response = self.client.request(req).await?;
            let status = response.status();
            discard(response.into_body(), MAX_BACKEND_BODY_BYTES)
                .await
                .map_err(|problem| format!("answer body {problem:?}"))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        };
        let (code, reason) = match tokio::time::timeout(self.config.call_timeout, exchange).await {
            Ok(Ok(status)) if status == StatusCode::OK => (status.as_str().to_string(), None),
            Ok(Ok(status)) => (
                status.as_str().to_string(),
                Some(format!("status {status}")),
            ),
            Ok(Err(err)) => {
                let kind = ErrorKind::of_error(err.as_ref());
                (
                    kind.to_string(),
                    Some(format!("{kind}: {}", error_chain(err.as_ref()))),
                )
            }
            Err(_) => {
                let after = humantime::format_duration(self.config.call_timeout);
                (
                    ErrorKind::Timeout.to_string(),
                    Some(format!("timeout after {after}")),
                )
            }
        };
        self.metrics
            .observe_backend_call(backend.authority(), &code, started.elapsed());
        match reason {
            None => Ok(()),
            Some(reason) => Err(Failure {
                backend: backend.to_string(),
                reason,
            }),
        }
    }

    fn reply(
        &self,
        code: StatusCode,
        error: Option<&str>,
        failed: Vec<Failure>,
    ) -> Response<ResponseBody> {
        let reply = Reply {
            node: &self.config.name,
            code: code.as_u16(),
            error,
            failed,
            padding: "",
        };
        json(code, Bytes::from(to_json(&reply)))
    }
}

fn to_json(reply: &Reply<'_>) -> Vec<u8> {
    serde_json::to_vec(reply).expect("a reply always serializes")
}

/// The success body, padded with a `padding` field to `size` bytes when asked.
fn ok_body(name: &str, size: usize) -> Bytes {
    let mut reply = Reply {
        node: name,
        code: 200,
        error: None,
        failed: vec![],
        padding: "",
    };
    let bare = to_json(&reply);
    // `,"padding":"x"` adds 14 bytes for one character of padding.
    let overhead = r#","padding":"""#.len();
    if size <= bare.len() + overhead {
        return Bytes::from(bare);
    }
    let pad = "x".repeat(size - bare.len() - overhead);
    reply.padding = &pad;
    Bytes::from(to_json(&reply))
}

fn json(code: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(code: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn forwarded(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        for value in incoming.get_all(name) {
            out.append(HeaderName::from_static(name), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_body_is_padded_to_the_requested_size() {
        assert_eq!(ok_body("0", 0).as_ref(), br#"{"node":"0","code":200}"#);
        // Below the bare document plus the padding field's overhead, no padding fits.
        assert_eq!(ok_body("node-1", 40).len(), 28);
        for size in [42, 100, 4096] {
            let body = ok_body("node-1", size);
            assert_eq!(body.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
            assert_eq!(v["node"], "node-1");
        }
    }

    #[test]
    fn only_trace_headers_are_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        h.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba8-e457b5a2e4d86bd1-1"),
        );
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        h.insert("cookie", HeaderValue::from_static("secret"));
        let out = forwarded(&h);
        assert_eq!(out.len(), 3);
        assert!(out.get("cookie").is_none());
    }
}
