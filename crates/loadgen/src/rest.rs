//! The load-generator server: Fortio's REST call `GET/POST /fortio/rest/run`, answered
//! with the Fortio-compatible result, so the seed's driver and Fortio-minded tools can
//! drive meshload. Parameters come from the query string and from a JSON body (string
//! values, as Fortio takes them), optionally under `jsonPath` (`?jsonPath=.metadata`).
//! A run answers when it ends, as Fortio's synchronous mode does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use meshload_config::limits;

use crate::spec::{LoadOptions, LoadSpec};

/// The REST path Fortio serves runs on.
pub const RUN_PATH: &str = "/fortio/rest/run";
/// The REST path that stops the running runs (Fortio's; every run, whatever `runid`).
/// A stopped run's pending call answers with what was measured, marked interrupted.
pub const STOP_PATH: &str = "/fortio/rest/stop";

/// How a load-generator server behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Names sent to given addresses.
    pub resolve: Resolve,
    /// While a run goes on, a space (JSON allows leading whitespace) is sent this often,
    /// so that idle timeouts of proxies and port-forwards do not cut long runs.
    pub keepalive: Duration,
    /// The CA certificates (PEM text, read when the server started) that runs without a
    /// `cacert` of their own trust.
    pub ca: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            resolve: Resolve::new(),
            keepalive: Duration::from_secs(10),
            ca: None,
        }
    }
}

/// What every connection of a server shares.
struct Shared {
    resolve: Resolve,
    ca: Option<String>,
    keepalive: Duration,
    /// Bumped by a stop request; each run stops when it changes.
    stop: watch::Sender<u64>,
    /// Runs in progress.
    running: AtomicUsize,
    /// Their connections, all told.
    connections: AtomicUsize,
}

/// The most runs one server carries at once; more are answered 503.
pub const MAX_RUNS: usize = 64;

/// A run's claim on the server's capacity, given back when dropped (also when the run's
/// task panics), so that the counts never drift.
struct Claim {
    shared: Arc<Shared>,
    connections: usize,
}

impl Claim {
    /// Claims a run of `connections`, or says why the server cannot take it: more than
    /// [`MAX_RUNS`] runs, or more than `limits::MAX_CONNECTIONS` connections in all.
    fn take(shared: &Arc<Shared>, connections: usize) -> Result<Claim, String> {
        let runs = shared.running.fetch_add(1, Ordering::SeqCst);
        let open = shared.connections.fetch_add(connections, Ordering::SeqCst);
        let claim = Claim {
            shared: shared.clone(),
            connections,
        };
        if runs >= MAX_RUNS {
            return Err(format!(
                "busy: {runs} runs are in progress, the most this server takes at once is {MAX_RUNS}; try again later"
            ));
        }
        if open + connections > limits::MAX_CONNECTIONS as usize {
            return Err(format!(
                "busy: runs in progress hold {open} connections, and {connections} more would pass the most this server opens, {}; try again later",
                limits::MAX_CONNECTIONS
            ));
        }
        Ok(claim)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(1, Ordering::SeqCst);
        self.shared
            .connections
            .fetch_sub(self.connections, Ordering::SeqCst);
    }
}

/// Largest request body accepted (a run's parameters and payload).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Where loads for a `host:port` are sent instead of where DNS says (like curl's
/// `--resolve`); the URL's authority stays the `Host` header.
pub type Resolve = HashMap<String, Vec<SocketAddr>>;

/// One `HOST:PORT=ADDR[,ADDR...]` mapping.
pub fn parse_resolve(s: &str) -> Result<(String, Vec<SocketAddr>), String> {
    let bad = || {
        format!(
            "{s:?} is not HOST:PORT=ADDR[,ADDR...] (e.g. service-0.perf.svc.cluster.local:9080=127.0.0.1:9080)"
        )
    };
    let (authority, addrs) = s.split_once('=').ok_or_else(bad)?;
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    let addrs = addrs
        .split(',')
        .map(|a| a.trim().parse::<SocketAddr>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((authority.to_ascii_lowercase(), addrs))
}

/// The REST API: a request handler, served by whatever accepts its connections (the
/// CLI's `meshload serve` gives it a node's connection guards).
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
}

impl Api {
    /// An API with no run in progress.
    pub fn new(options: ServeOptions) -> Api {
        Api {
            shared: Arc::new(Shared {
                resolve: options.resolve,
                ca: options.ca,
                keepalive: options.keepalive.max(Duration::from_millis(10)),
                stop: watch::channel(0).0,
                running: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
            }),
        }
    }

    /// Answers one request.
    pub async fn handle<B>(self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        handle(req, self.shared).await
    }
}

/// The body of every answer.
pub type Body = BoxBody<Bytes, Infallible>;

async fn handle<B>(req: Request<B>, shared: Arc<Shared>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => reply(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET | &Method::POST, RUN_PATH) => run(req, shared).await,
        (&Method::GET | &Method::POST, STOP_PATH) => {
            let count = shared.running.load(Ordering::SeqCst);
            shared.stop.send_modify(|generation| *generation += 1);
            tracing::info!(count, "stop requested over REST");
            reply(
                StatusCode::OK,
                json!({"Message": "stopping", "RunID": 0, "Count": count}),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such endpoint; runs are on {RUN_PATH}")}),
        ),
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Starts a run and answers at once with a body that sends a space every `keepalive`
/// while it goes on, then the result (an `{"error": ...}` object if it failed). A client
/// that goes away stops the run.
async fn run<B>(req: Request<B>, shared: Arc<Shared>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let spec = match requested_spec(req, &shared).await {
        Ok(spec) => spec,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e})),
    };
    let claim = match Claim::take(&shared, spec.connections) {
        Ok(claim) => claim,
        Err(e) => return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e})),
    };
    tracing::info!(url = %spec.uri, "run requested over REST");
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let mut stop_requests = shared.stop.subscribe();
    let client = tx.clone();
    let stop = async move {
        tokio::select! {
            changed = stop_requests.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            () = client.closed() => tracing::info!("the client went away: stopping its run"),
        }
    };
    tokio::spawn(run_and_answer(spec, stop, claim, tx));
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    let mut r = Response::new(StreamBody::new(frames).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The load a run request asks for (query and JSON body).
async fn requested_spec<B>(req: Request<B>, shared: &Shared) -> Result<LoadSpec, String>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let query = req.uri().query().unwrap_or("").to_string();
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
    spec(
        &params(&query, &body)?,
        &shared.resolve,
        shared.ca.as_deref(),
    )
}

/// A run's parameters as the validated spec it runs, with `--resolve` and the server's CA
/// applied: every check a REST run gets, the CLI's and the config's bounds among them.
pub fn spec(
    params: &HashMap<String, Vec<String>>,
    resolve: &Resolve,
    ca: Option<&str>,
) -> Result<LoadSpec, String> {
    let mut options = options(params)?;
    if let Ok(uri) = options.url.parse::<http::Uri>() {
        let authority = format!(
            "{}:{}",
            uri.host().unwrap_or_default().to_ascii_lowercase(),
            uri.port_u16().unwrap_or(80)
        );
        if let Some(addrs) = resolve.get(&authority) {
            options.connect_to = addrs.clone();
        }
    }
    if options.tls.ca.is_none() {
        options.tls.ca = ca.map(|pem| crate::tls::Ca::Pem(pem.to_string()));
    }
    LoadSpec::try_new(options).map_err(|e| e.to_string())
}

/// Runs the load, sending a space every `keepalive` until the result, then the result.
/// The run is a task of its own: should it panic, the caller still gets an answer.
async fn run_and_answer(
    spec: LoadSpec,
    stop: impl Future<Output = ()> + Send + 'static,
    claim: Claim,
    tx: mpsc::Sender<Bytes>,
) {
    let run = tokio::spawn(crate::run::run(spec, stop, crate::Live::default()));
    tokio::pin!(run);
    let mut ticker = tokio::time::interval(claim.shared.keepalive);
    ticker.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = ticker.tick() => {
                let _ = tx.send(Bytes::from_static(b" ")).await;
            }
        }
    };
    drop(claim);
    let body = match outcome {
        Ok(Ok(result)) => serde_json::to_string(&result.to_fortio())
            .unwrap_or_else(|e| json!({"error": e.to_string()}).to_string()),
        Ok(Err(e)) => json!({"error": e.to_string()}).to_string(),
        Err(e) => {
            tracing::error!(error = %e, "a run failed inside");
            json!({"error": "the run failed inside the server (a bug: see its log)"}).to_string()
        }
    };
    let _ = tx.send(Bytes::from(body)).await;
}

/// Query parameters, overlaid by the JSON body's fields (at `jsonPath` when given).
pub fn params(query: &str, body: &[u8]) -> Result<HashMap<String, Vec<String>>, String> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut json_path = String::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "jsonPath" {
            json_path = v.into_owned();
        } else {
            out.entry(k.into_owned()).or_default().push(v.into_owned());
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(out);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let mut at = &value;
    for part in json_path.split('.').filter(|p| !p.is_empty()) {
        at = at
            .get(part)
            .ok_or_else(|| format!("jsonPath {json_path:?} is not in the body"))?;
    }
    let object = at
        .as_object()
        .ok_or_else(|| format!("the parameters at jsonPath {json_path:?} are not an object"))?;
    for (k, v) in object {
        let values = match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), String::from))
                .collect(),
            Value::Null => continue,
            other => vec![other.to_string()],
        };
        out.insert(k.clone(), values);
    }
    Ok(out)
}

/// Fortio's run parameters as load options.
pub fn options(params: &HashMap<String, Vec<String>>) -> Result<LoadOptions, String> {
    let one = |k: &str| {
        params
            .get(k)
            .and_then(|v| v.first())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let flag = |k: &str| one(k).is_some_and(|v| matches!(v.as_str(), "on" | "true" | "1" | "yes"));
    let number = |k: &str| -> Result<Option<f64>, String> {
        one(k)
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| format!("{k}: {v:?} is not a number"))
            })
            .transpose()
    };
    let duration = |k: &str| -> Result<Option<Duration>, String> {
        one(k)
            .map(|v| {
                parse_fortio_duration(&v)
                    .ok_or_else(|| format!("{k}: {v:?} is not a duration (such as 10s)"))
            })
            .transpose()
    };
    let url = one("url").ok_or("url: missing")?;
    let defaults = LoadOptions::default();
    // Fortio: -1 (or 0) is as fast as possible. Every other number goes to the bounds the
    // CLI and the config share (`LoadSpec::try_new`), so NaN and -5 are refused there.
    let qps = number("qps")?.map_or(defaults.qps, |q| if q == -1.0 { 0.0 } else { q });
    let whole = |k: &str, max: u64| -> Result<Option<u64>, String> {
        number(k)?
            .map(|v| limits::whole_f64(v, 1, max).map_err(|problem| format!("{k}: {problem}")))
            .transpose()
    };
    let connections =
        whole("c", limits::MAX_CONNECTIONS)?.map_or(defaults.connections, |c| c as usize);
    let requests = whole("n", limits::MAX_REQUESTS)?;
    let percentiles = match one("p") {
        Some(p) => p
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("p: {x:?} is not a percentile"))
            })
            .collect::<Result<_, _>>()?,
        None => defaults.percentiles.clone(),
    };
    let mut headers: Vec<String> = params.get("H").cloned().unwrap_or_default();
    headers.extend(params.get("headers").cloned().unwrap_or_default());
    Ok(LoadOptions {
        url,
        qps,
        connections,
        duration: Some(duration("t")?.unwrap_or(Duration::from_secs(5))),
        requests,
        percentiles,
        uniform: flag("uniform"),
        jitter: flag("jitter"),
        nocatchup: flag("nocatchup"),
        headers,
        payload: one("payload").map(Bytes::from),
        timeout: duration("timeout")?.unwrap_or(defaults.timeout),
        labels: one("labels").unwrap_or_default(),
        h2: flag("h2"),
        // Fortio's names for them.
        tls: crate::tls::TlsOptions {
            ca: one("cacert").map(ca_pem).transpose()?,
            insecure: flag("https-insecure") || flag("k"),
        },
        coarse_pacing: false,
        std_client: flag("stdclient"),
        connect_to: Vec::new(),
    })
}

/// A REST call's `cacert`: the CA certificates as PEM text, never a path on the server
/// (which would let a caller read, or learn of, the server's files).
fn ca_pem(text: String) -> Result<crate::tls::Ca, String> {
    if text.len() > crate::tls::MAX_CA_BYTES {
        return Err(format!(
            "cacert: {} bytes is more than the most accepted, {}",
            text.len(),
            crate::tls::MAX_CA_BYTES
        ));
    }
    if !text.contains("-----BEGIN ") {
        return Err(
            "cacert: give the CA certificates as PEM text (-----BEGIN CERTIFICATE-----...); \
                    a path on the server is never read"
                .to_string(),
        );
    }
    Ok(crate::tls::Ca::Pem(text))
}

/// `10s`, `1m30s`, `500ms` (Go's form, the one every duration takes); a bare number is
/// seconds (Fortio accepts both).
fn parse_fortio_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    meshload_config::reader::parse_go_duration(s)
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_style_json_bodies_become_options() {
        let body = br#"{"metadata": {"url": "http://127.0.0.1:9080/", "qps": "50000", "t": "10s", "c": "400", "jitter": "on"}}"#;
        let p = params("jsonPath=.metadata", body).expect("valid");
        let o = options(&p).expect("valid");
        assert_eq!(
            (o.qps, o.connections, o.duration),
            (50000.0, 400, Some(Duration::from_secs(10)))
        );
        assert!(o.jitter && !o.uniform && !o.std_client);
        // Fortio's name for hyper's client here.
        let p = params("url=http%3A%2F%2Fh%3A1%2F&stdclient=on", b"").expect("valid");
        assert!(options(&p).expect("valid").std_client);
        let p = params(
            "url=http%3A%2F%2Fh%3A1%2F&qps=-1&n=100&H=X-A%3A%201&H=X-B%3A%202",
            b"",
        )
        .expect("valid");
        let o = options(&p).expect("valid");
        assert_eq!((o.qps, o.requests, o.headers.len()), (0.0, Some(100), 2));
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad = |q: &str| options(&params(q, b"").expect("parses")).expect_err(q);
        assert!(bad("qps=10").contains("url"));
        assert!(bad("url=http://h/&qps=fast").starts_with("qps"));
        assert!(bad("url=http://h/&t=soon").starts_with("t:"));
        assert!(bad("url=http://h/&c=0").starts_with("c:"));
        assert!(params("jsonPath=.x", b"{}").is_err());
        assert!(params("", b"not json").is_err());
    }

    #[test]
    fn a_server_takes_at_most_its_runs_and_connections_and_gets_them_back() {
        let api = Api::new(ServeOptions::default());
        let claims: Vec<Claim> = (0..MAX_RUNS)
            .map(|_| Claim::take(&api.shared, 1).expect("room"))
            .collect();
        let refused = Claim::take(&api.shared, 1).err().expect("one run too many");
        assert!(refused.starts_with("busy"), "{refused}");
        drop(claims);
        let whole = Claim::take(&api.shared, limits::MAX_CONNECTIONS as usize).expect("room");
        assert!(Claim::take(&api.shared, 1).is_err(), "no connection left");
        drop(whole);
        assert_eq!(api.shared.running.load(Ordering::SeqCst), 0);
        assert_eq!(api.shared.connections.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn resolve_mappings_are_host_port_to_addresses() {
        let (authority, addrs) =
            parse_resolve("Service-0.perf.svc.cluster.local:9080=127.0.0.1:1,127.0.0.2:2")
                .expect("valid");
        assert_eq!(authority, "service-0.perf.svc.cluster.local:9080");
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1:1".parse::<SocketAddr>().expect("addr"),
                "127.0.0.2:2".parse().expect("addr")
            ]
        );
        for bad in ["h=127.0.0.1:1", "h:80", "h:80=nowhere", ":80=127.0.0.1:1"] {
            assert!(parse_resolve(bad).is_err(), "{bad}");
        }
    }
}
