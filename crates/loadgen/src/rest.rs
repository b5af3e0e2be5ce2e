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
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            resolve: Resolve::new(),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// What every connection of a server shares.
struct Shared {
    resolve: Resolve,
    keepalive: Duration,
    /// Bumped by a stop request; each run stops when it changes.
    stop: watch::Sender<u64>,
    /// Runs in progress.
    running: AtomicUsize,
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

/// The next accepted connection. A failed accept (out of file descriptors and the like)
/// is logged and retried after a short pause instead of spinning.
pub async fn accept(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Serves the REST API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    let shared = Arc::new(Shared {
        resolve: options.resolve,
        keepalive: options.keepalive.max(Duration::from_millis(10)),
        stop: watch::channel(0).0,
        running: AtomicUsize::new(0),
    });
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            stream = accept(&listener) => stream,
            () = &mut shutdown => return,
        };
        let builder = builder.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, shared.clone()));
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
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
    };
    Ok(response)
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
async fn run(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let spec = match requested_spec(req, &shared.resolve).await {
        Ok(spec) => spec,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e})),
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
    shared.running.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(run_and_answer(spec, stop, shared, tx));
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

/// The load a run request asks for (query and JSON body), with `--resolve` applied.
async fn requested_spec(req: Request<Incoming>, resolve: &Resolve) -> Result<LoadSpec, String> {
    let query = req.uri().query().unwrap_or("").to_string();
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
    let mut options = options(&params(&query, &body)?)?;
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
    LoadSpec::try_new(options).map_err(|e| e.to_string())
}

/// Runs the load, sending a space every `keepalive` until the result, then the result.
async fn run_and_answer(
    spec: LoadSpec,
    stop: impl Future<Output = ()> + Send + 'static,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Bytes>,
) {
    let run = crate::run::run(spec, stop, crate::Live::default());
    tokio::pin!(run);
    let mut ticker = tokio::time::interval(shared.keepalive);
    ticker.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = ticker.tick() => {
                let _ = tx.send(Bytes::from_static(b" ")).await;
            }
        }
    };
    shared.running.fetch_sub(1, Ordering::SeqCst);
    let body = match outcome {
        Ok(result) => serde_json::to_string(&result.to_fortio())
            .unwrap_or_else(|e| json!({"error": e.to_string()}).to_string()),
        Err(e) => json!({"error": e.to_string()}).to_string(),
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
    // Fortio: a negative qps (-1) or 0 means as fast as possible.
    let qps = number("qps")?.map_or(defaults.qps, |q| q.max(0.0));
    let connections = number("c")?.map_or(Ok(defaults.connections), |c| {
        if c >= 1.0 && c.fract() == 0.0 {
            Ok(c as usize)
        } else {
            Err(format!("c: {c} is not a number of connections"))
        }
    })?;
    let requests = number("n")?.filter(|n| *n > 0.0).map(|n| n as u64);
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
            ca_file: one("cacert").filter(|c| !c.is_empty()).map(Into::into),
            insecure: flag("https-insecure") || flag("k"),
        },
        coarse_pacing: false,
        std_client: flag("stdclient"),
        connect_to: Vec::new(),
    })
}

/// `10s`, `1m30s`, `500ms`; a bare number is seconds (Fortio accepts both).
fn parse_fortio_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    humantime::parse_duration(s).ok()
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
