//! Stored runs as a read-only Prometheus HTTP API, for Grafana's Prometheus data source,
//! `promtool query` and any Prometheus client (`meshload results serve`).
//!
//! The runs' raw samples (`samples.jsonl`) and the load generator's per-second figures
//! are loaded into one embedded store, every series labelled with its run (`test_name`,
//! `run`, `mesh`, `backend`); queries are answered by the embedded engine, within its
//! limits. The store is re-read when its runs change. [`Catalog`] holds the runs and
//! [`handle`] answers one request; the command serves it behind a node's connection
//! guards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use meshload_promql::{Labels, QueryError, QueryOptions, Store};
use meshload_store::{FsStore, RunRef};
use serde_json::{Value as Json, json};

use crate::runs::Run;

/// How often at most the store is looked at for new runs.
const RESCAN: Duration = Duration::from_secs(1);
/// The largest form body read.
const MAX_BODY: usize = 1024 * 1024;
/// How long one query may take here (Prometheus's default is 2 minutes; a dashboard
/// wants answers sooner).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The runs of a store, loaded into one embedded store.
pub struct Catalog {
    root: FsStore,
    align: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runs: Vec<RunRef>,
    store: Arc<Store>,
    checked: Option<Instant>,
    /// Metric names and their types, from the runs' exposition (`# TYPE` is not kept
    /// in samples; the load figures are gauges).
    metadata: BTreeMap<String, &'static str>,
}

impl Catalog {
    /// The runs of `root`, each starting at its own time or, `align`ed, all when the
    /// earliest did; loaded by the first [`Catalog::refresh`].
    pub fn new(root: FsStore, align: bool) -> Catalog {
        Catalog {
            root,
            align,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The folder the runs are read from.
    pub fn root(&self) -> &std::path::Path {
        self.root.root()
    }

    /// How many runs are loaded.
    pub fn run_count(&self) -> usize {
        self.lock().runs.len()
    }

    /// The store now, re-read first when the store's runs changed (looked at once a
    /// second at most, or now when `force`).
    pub fn refresh(&self, force: bool) -> Arc<Store> {
        let mut state = self.lock();
        if !force && state.checked.is_some_and(|t| t.elapsed() < RESCAN) {
            return state.store.clone();
        }
        state.checked = Some(Instant::now());
        let runs = match self.root.list_runs() {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the store's runs");
                return state.store.clone();
            }
        };
        if runs != state.runs || force {
            let (store, metadata) = load(&runs, self.align);
            state.store = Arc::new(store);
            state.metadata = metadata;
            state.runs = runs;
        }
        state.store.clone()
    }
}

/// The load generator's per-second figures, served as series.
const LOAD_SERIES: [(&str, &str); 4] = [
    (
        "meshload_load_responses_per_second",
        "responses in each second of the test",
    ),
    (
        "meshload_load_errors_per_second",
        "failed responses in each second",
    ),
    (
        "meshload_load_response_p50_seconds",
        "median response time of each second",
    ),
    (
        "meshload_load_response_p99_seconds",
        "p99 of response time of each second",
    ),
];

/// Loads every readable run (through the report's reader of stored runs); a damaged one
/// is skipped with a warning.
fn load(runs: &[RunRef], align: bool) -> (Store, BTreeMap<String, &'static str>) {
    let mut store = Store::new();
    let mut metadata = BTreeMap::new();
    let loaded: Vec<Run> = runs
        .iter()
        .filter_map(|r| match crate::runs::load(r) {
            Ok(run) if run.damage.is_none() => Some(run),
            Ok(run) => {
                let damage = run.damage.as_deref().unwrap_or_default();
                tracing::warn!("skipping {}: {damage}", run.name());
                None
            }
            Err(e) => {
                tracing::warn!("skipping {}/{}: {e}", r.test_name, r.id);
                None
            }
        })
        .collect();
    // Aligned, every run starts when the earliest one did.
    let anchor = loaded.iter().filter_map(Run::start_ms).min();
    for run in &loaded {
        let shift = match (align, anchor, run.start_ms()) {
            (true, Some(anchor), Some(start)) => anchor - start,
            _ => 0,
        };
        let identity = [
            ("test_name", run.run.test_name.clone()),
            ("run", run.run.id.clone()),
            ("mesh", run.mesh()),
            (
                "backend",
                run.metadata["backend"]
                    .as_str()
                    .unwrap_or("local")
                    .to_string(),
            ),
        ];
        let with_run = |labels: &Labels| {
            let mut labels = labels.clone();
            for (k, v) in &identity {
                labels.set(k, v);
            }
            labels
        };
        match run.samples() {
            Ok((samples, skipped)) => {
                if let Some(warning) = skipped.warning() {
                    tracing::warn!("{}: samples.jsonl: {warning}", run.name());
                }
                for series in samples.series() {
                    let labels = with_run(&series.labels);
                    for &(t, v) in &series.samples {
                        store.append(&labels, t + shift, v);
                    }
                }
            }
            Err(e) => tracing::warn!("{}: samples.jsonl: {e}", run.name()),
        }
        if let Some(start) = run.start_ms() {
            for (name, _) in LOAD_SERIES {
                metadata.insert(name.to_string(), "gauge");
            }
            let series: Vec<Labels> = LOAD_SERIES
                .iter()
                .map(|(name, _)| {
                    let mut l = Labels::default();
                    l.set("__name__", name);
                    with_run(&l)
                })
                .collect();
            for s in &run.fortio.per_second {
                let t = start + (s.second as i64 + 1) * 1000 + shift;
                let values = [s.requests as f64, s.errors as f64, s.p50, s.p99];
                for (labels, v) in series.iter().zip(values) {
                    store.append(labels, t, v);
                }
            }
        }
    }
    (store, metadata)
}

/// A Prometheus API answer.
fn answer(status: StatusCode, body: &Json) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn success(data: Json) -> Response<Full<Bytes>> {
    answer(StatusCode::OK, &json!({"status": "success", "data": data}))
}

/// An error as Prometheus gives it: `bad_data` 400, `execution` 422, `timeout` 503,
/// `not_found` 404.
fn failure(kind: &str, message: &str) -> Response<Full<Bytes>> {
    let status = match kind {
        "bad_data" => StatusCode::BAD_REQUEST,
        "execution" => StatusCode::UNPROCESSABLE_ENTITY,
        "timeout" => StatusCode::SERVICE_UNAVAILABLE,
        "not_found" => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    answer(
        status,
        &json!({"status": "error", "errorType": kind, "error": message}),
    )
}

type Params = Vec<(String, String)>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Answers one request of the Prometheus HTTP API (a form body at most 1 MiB).
pub async fn handle<B>(req: Request<B>, catalog: Arc<Catalog>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST {
        return failure("bad_data", "only GET and POST are served (read-only)");
    }
    let mut params: Params = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    if method == Method::POST {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => params.extend(form_urlencoded::parse(&body.to_bytes()).into_owned()),
            Err(e) => return failure("bad_data", &format!("cannot read the body: {e}")),
        }
    }
    let store = catalog.refresh(false);
    let now_ms = meshload_promql::system_time_ms(&SystemTime::now());
    let outcome = match path.as_str() {
        "/api/v1/query" => query(&store, &params, now_ms).await,
        "/api/v1/query_range" => query_range(&store, &params).await,
        "/api/v1/labels" => labels(&store, &params).map(success),
        "/api/v1/series" => series(&store, &params).map(success),
        "/api/v1/metadata" => {
            let metadata = catalog.lock().metadata.clone();
            Ok(success(
                metadata
                    .iter()
                    .map(|(name, kind)| {
                        let help = LOAD_SERIES
                            .iter()
                            .find(|(n, _)| n == name)
                            .map_or("", |(_, h)| h);
                        (
                            name.clone(),
                            json!([{"type": kind, "help": help, "unit": ""}]),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            ))
        }
        "/api/v1/status/buildinfo" => Ok(success(json!({
            // The Prometheus version whose API this answers like; clients such as Grafana
            // choose features by it.
            "version": "2.53.0",
            "revision": concat!("meshload-", env!("CARGO_PKG_VERSION")),
            "branch": "meshload",
            "buildUser": "meshload",
            "buildDate": "",
            "goVersion": "none (meshload, Rust)",
        }))),
        // Grafana asks for these too: nothing to show, but not an error.
        "/api/v1/query_exemplars" => Ok(success(json!([]))),
        "/api/v1/rules" => Ok(success(json!({"groups": []}))),
        "/api/v1/alerts" => Ok(success(json!({"alerts": []}))),
        p if p.starts_with("/api/v1/label/") && p.ends_with("/values") => {
            let name = &p["/api/v1/label/".len()..p.len() - "/values".len()];
            label_values(&store, name, &params).map(success)
        }
        "/" | "/-/healthy" | "/-/ready" => Ok(Response::new(Full::new(Bytes::from_static(
            b"meshload results serve: a Prometheus API over stored runs\n",
        )))),
        _ => Err(("not_found", format!("no such endpoint {path}"))),
    };
    outcome.unwrap_or_else(|(kind, message)| failure(kind, &message))
}

type Failure = (&'static str, String);

/// Prometheus's time parameter: Unix seconds (with a fraction) or RFC 3339.
fn time_ms(text: &str, name: &str) -> Result<i64, Failure> {
    if let Ok(secs) = text.parse::<f64>()
        && secs.is_finite()
    {
        return Ok((secs * 1000.0).round() as i64);
    }
    humantime::parse_rfc3339_weak(text)
        .map(|t| meshload_promql::system_time_ms(&t))
        .map_err(|_| {
            (
                "bad_data",
                format!(
                    "invalid parameter \"{name}\": cannot parse \"{text}\" to a valid timestamp"
                ),
            )
        })
}

/// A step or timeout: seconds (`15`, `0.5`) or a duration (`15s`, `1m`).
fn duration_ms(text: &str, name: &str) -> Result<i64, Failure> {
    if let Ok(secs) = text.parse::<f64>()
        && secs.is_finite()
    {
        return Ok((secs * 1000.0).round() as i64);
    }
    meshload_promql::promqltest::parse_duration_ms(text).ok_or_else(|| {
        (
            "bad_data",
            format!("invalid parameter \"{name}\": cannot parse \"{text}\" to a valid duration"),
        )
    })
}

fn query_failure(e: QueryError) -> Failure {
    match e {
        QueryError::Parse(m) | QueryError::Limit(m) => ("bad_data", m),
        QueryError::Eval(m) if m.contains("timed out") => ("timeout", m),
        QueryError::Eval(m) if m.contains("step") || m.contains("resolution") => ("bad_data", m),
        other => ("execution", other.to_string()),
    }
}

fn result_json(result: &meshload_promql::QueryResult, t_ms: i64) -> Response<Full<Bytes>> {
    let mut body = meshload_promql::output::api_json(result, t_ms);
    body["status"] = json!("success");
    answer(StatusCode::OK, &body)
}

async fn query(
    store: &Arc<Store>,
    params: &Params,
    now_ms: i64,
) -> Result<Response<Full<Bytes>>, Failure> {
    let q = param(params, "query")
        .ok_or((
            "bad_data",
            "invalid parameter \"query\": missing".to_string(),
        ))?
        .to_string();
    let t = match param(params, "time") {
        Some(t) => time_ms(t, "time")?,
        None => now_ms,
    };
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || {
        meshload_promql::instant_query(&store, &q, t, options())
    })
    .await
    .map_err(|e| ("internal", e.to_string()))?
    .map_err(query_failure)?;
    Ok(result_json(&result, t))
}

async fn query_range(
    store: &Arc<Store>,
    params: &Params,
) -> Result<Response<Full<Bytes>>, Failure> {
    let need = |name: &str| {
        param(params, name).ok_or(("bad_data", format!("invalid parameter \"{name}\": missing")))
    };
    let q = need("query")?.to_string();
    let start = time_ms(need("start")?, "start")?;
    let end = time_ms(need("end")?, "end")?;
    let step = duration_ms(need("step")?, "step")?;
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || {
        meshload_promql::range_query(&store, &q, start, end, step, options())
    })
    .await
    .map_err(|e| ("internal", e.to_string()))?
    .map_err(query_failure)?;
    Ok(result_json(&result, end))
}

fn options() -> QueryOptions {
    QueryOptions {
        timeout: QUERY_TIMEOUT,
        ..QueryOptions::default()
    }
}

/// The series that `match[]` selectors name (every series without one) with a sample in
/// `[start, end]` (all time without them).
fn matching(store: &Store, params: &Params, required: bool) -> Result<Vec<usize>, Failure> {
    let start = param(params, "start")
        .map(|t| time_ms(t, "start"))
        .transpose()?;
    let end = param(params, "end")
        .map(|t| time_ms(t, "end"))
        .transpose()?;
    let selectors: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, v)| v.as_str())
        .collect();
    if selectors.is_empty() && required {
        return Err(("bad_data", "no match[] parameter provided".to_string()));
    }
    let mut ids: BTreeSet<usize> = BTreeSet::new();
    if selectors.is_empty() {
        ids.extend(0..store.series().len());
    }
    for selector in selectors {
        ids.extend(meshload_promql::eval::select_series(store, selector).map_err(query_failure)?);
    }
    let (lo, hi) = (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX));
    Ok(ids
        .into_iter()
        .filter(|&id| {
            store.series()[id]
                .samples
                .iter()
                .any(|&(t, _)| t >= lo && t <= hi)
        })
        .collect())
}

fn labels(store: &Store, params: &Params) -> Result<Json, Failure> {
    let names: BTreeSet<&str> = matching(store, params, false)?
        .into_iter()
        .flat_map(|id| store.series()[id].labels.iter().map(|(k, _)| k))
        .collect();
    Ok(json!(names))
}

fn label_values(store: &Store, name: &str, params: &Params) -> Result<Json, Failure> {
    let values: BTreeSet<&str> = matching(store, params, false)?
        .into_iter()
        .filter_map(|id| store.series()[id].labels.get(name))
        .filter(|v| !v.is_empty())
        .collect();
    Ok(json!(values))
}

fn series(store: &Store, params: &Params) -> Result<Json, Failure> {
    let ids = matching(store, params, true)?;
    Ok(Json::Array(
        ids.into_iter()
            .map(|id| {
                let labels: serde_json::Map<String, Json> = store.series()[id]
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                Json::Object(labels)
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(catalog: &Arc<Catalog>, method: Method, uri: &str, body: &str) -> (u16, Json) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a request");
        let response = handle(req, catalog.clone()).await;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("a body");
        (
            status,
            serde_json::from_slice(&body.to_bytes()).expect("JSON"),
        )
    }

    #[tokio::test]
    async fn answers_the_prometheus_api_and_skips_a_damaged_run() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let run = dir.path().join("t").join("20261203120000");
        std::fs::create_dir_all(&run).expect("a run folder");
        std::fs::write(run.join(meshload_store::layout::METADATA), "[1, 2]").expect("written");
        let catalog = Arc::new(Catalog::new(
            FsStore::open(dir.path().to_str().expect("UTF-8")).expect("a store"),
            false,
        ));
        catalog.refresh(true);
        assert_eq!(catalog.run_count(), 1, "listed");

        let (status, v) = ask(
            &catalog,
            Method::GET,
            "/api/v1/query?query=1%2B1&time=10",
            "",
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["resultType"], "scalar");
        assert_eq!(v["data"]["result"][1], "2");

        let form = "query=vector(3)&start=0&end=20&step=10";
        let (status, v) = ask(&catalog, Method::POST, "/api/v1/query_range", form).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["data"]["result"][0]["values"].as_array().map(Vec::len),
            Some(3)
        );

        let (status, v) = ask(&catalog, Method::GET, "/api/v1/labels", "").await;
        assert_eq!((status, &v["status"]), (200, &json!("success")), "{v}");

        let (status, v) = ask(&catalog, Method::GET, "/api/v1/query?query=sum(", "").await;
        assert_eq!((status, &v["errorType"]), (400, &json!("bad_data")), "{v}");
        let (status, _) = ask(&catalog, Method::PUT, "/api/v1/query", "").await;
        assert_eq!(status, 400);
        let (status, v) = ask(&catalog, Method::GET, "/etc/passwd", "").await;
        assert_eq!((status, &v["errorType"]), (404, &json!("not_found")), "{v}");
        let big = "x".repeat(MAX_BODY + 1);
        let (status, _) = ask(&catalog, Method::POST, "/api/v1/query", &big).await;
        assert_eq!(status, 400, "a body past the limit");
    }
}
