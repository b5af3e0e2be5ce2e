//! `meshload results serve` as a Prometheus data source, with real clients: promtool
//! (Debian's `prometheus` package), requests shaped as Grafana's data source sends them,
//! and the shipped dashboard's every expression.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use common::{NodeProc, get, json, run, temp_dir, write_config};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A store with two tests (one node calling another, 2 s each) run under each mesh
/// (`none`, then real Envoy sidecars): four runs, made once.
fn store() -> &'static PathBuf {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = temp_dir("results-serve");
        let config = write_config(
            &dir,
            r#"{"backends_map": {"front": ["back"], "back": []},
                "ConnectivityCheckPerURL": 2, "sleep_between_tests": "0s",
                "scrape_interval": "1s", "metrics_step": "1s",
                "load_tests": [
                  {"test_name": "slow", "target": "front", "qps": 50, "t": "2s", "c": 2},
                  {"test_name": "fast", "target": "front", "qps": 200, "t": "2s", "c": 4}
                ]}"#,
        );
        let store = dir.join("store");
        common::run_ok_with(&config, &store, &["--mesh", "none,envoy"]);
        store
    })
}

/// The run of a test without a mesh: its folder and metadata.
fn the_run(store: &Path, test: &str) -> (PathBuf, Value) {
    std::fs::read_dir(store.join(test))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("metadata.json").is_file())
        .map(|dir| {
            let metadata = json(&dir.join("metadata.json"));
            (dir, metadata)
        })
        .find(|(_, m)| m["backend_facts"]["mesh"].as_str().unwrap_or("none") == "none")
        .expect("a run without a mesh")
}

fn serve(store: &Path, extra: &[&str]) -> NodeProc {
    let port = common::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "results",
        "serve",
        "--store",
        store.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    NodeProc::spawn(&args, &[])
}

/// POSTs a form as Grafana does; status and JSON body.
async fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn get_json(url: &str) -> (u16, Value) {
    let reply = get(url).await;
    (reply.status, serde_json::from_str(&reply.body).unwrap())
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is installed by scripts/test (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The values of a query's answer, by their series' labels, comparable across servers.
fn values(answer: &Value) -> Vec<(String, Vec<String>)> {
    let result = answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<(String, Vec<String>)> = result
        .iter()
        .map(|s| {
            let points = match (s.get("value"), s.get("values")) {
                (Some(v), _) => vec![v[1].as_str().unwrap().to_string()],
                (_, Some(vs)) => vs
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v[1].as_str().unwrap().to_string())
                    .collect(),
                _ => Vec::new(),
            };
            (s["metric"].to_string(), points)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn promtool_gets_what_meshload_query_gives_for_the_same_run() {
    let store = store();
    let server = serve(store, &[]);
    let url = format!("http://{}", server.addr);
    let (dir, metadata) = the_run(store, "fast");
    let id = metadata["run_id"].as_str().unwrap();
    let end_s = metadata["end_ms"].as_i64().unwrap() / 1000;
    let start_s = metadata["start_ms"].as_i64().unwrap() / 1000;
    let at = end_s.to_string();
    // The same expression over the run alone: the served one is narrowed to the run by
    // its labels, which the run's own samples do not have.
    let local = "sum by (node) (meshload_node_requests_total)";
    let served =
        format!("sum by (node) (meshload_node_requests_total{{run=\"{id}\", test_name=\"fast\"}})");
    let ours = run(
        &[
            "query",
            "--run",
            dir.to_str().unwrap(),
            "--at",
            &at,
            "--format",
            "json",
            local,
        ],
        &[],
    );
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let ours: Value = serde_json::from_slice(&ours.stdout).unwrap();
    let theirs: Value = serde_json::from_str(&promtool(&[
        "query", "instant", "-o", "json", "--time", &at, &url, &served,
    ]))
    .map(|data: Value| serde_json::json!({"data": {"result": data}}))
    .unwrap();
    assert!(!values(&ours).is_empty(), "{ours}");
    assert_eq!(values(&theirs), values(&ours));

    let (from, to) = (start_s.to_string(), end_s.to_string());
    let ours = run(
        &[
            "query",
            "--run",
            dir.to_str().unwrap(),
            "--start",
            &from,
            "--end",
            &to,
            "--step",
            "1s",
            "--format",
            "json",
            local,
        ],
        &[],
    );
    let ours: Value = serde_json::from_slice(&ours.stdout).unwrap();
    let theirs: Value = serde_json::from_str(&promtool(&[
        "query", "range", "-o", "json", "--start", &from, "--end", &to, "--step", "1s", &url,
        &served,
    ]))
    .map(|data: Value| serde_json::json!({"data": {"result": data}}))
    .unwrap();
    assert!(values(&ours).iter().any(|(_, v)| v.len() > 1), "{ours}");
    assert_eq!(values(&theirs), values(&ours));

    let tests = promtool(&["query", "labels", &url, "test_name"]);
    assert_eq!(
        tests.split_whitespace().collect::<Vec<_>>(),
        ["fast", "slow"]
    );
    let series = promtool(&[
        "query",
        "series",
        "--match",
        "meshload_load_responses_per_second",
        &url,
    ]);
    assert_eq!(series.lines().count(), 4, "{series}");
    for label in [
        "test_name=",
        "run=",
        "mesh=\"none\"",
        "mesh=\"envoy\"",
        "backend=\"local\"",
    ] {
        assert!(series.contains(label), "{series}");
    }
}

#[tokio::test]
async fn grafana_requests_get_prometheus_answers() {
    let server = serve(store(), &[]);
    let api = format!("http://{}/api/v1", server.addr);
    // "Test connection".
    let (status, body) =
        post_form(&format!("{api}/query"), &[("query", "1+1"), ("time", "4")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "success", "data": {"resultType": "scalar", "result": [4, "2"]}})
    );
    let (status, body) = get_json(&format!("{api}/query?query=1%2B1&time=4")).await;
    assert_eq!(
        (status, &body["data"]["result"][1]),
        (200, &serde_json::json!("2"))
    );
    let (status, body) = get_json(&format!("{api}/status/buildinfo")).await;
    assert_eq!(status, 200);
    assert!(body["data"]["version"].as_str().unwrap().starts_with('2'));
    // A range query as a panel sends it.
    let (_, metadata) = the_run(store(), "slow");
    let (start, end) = (
        (metadata["start_ms"].as_i64().unwrap() / 1000).to_string(),
        (metadata["end_ms"].as_i64().unwrap() / 1000 + 2).to_string(),
    );
    let (status, body) = post_form(
        &format!("{api}/query_range"),
        &[
            (
                "query",
                "sum by (test_name) (meshload_load_responses_per_second)",
            ),
            ("start", &start),
            ("end", &end),
            ("step", "1"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "matrix");
    assert!(
        !body["data"]["result"].as_array().unwrap().is_empty(),
        "{body}"
    );
    // Variables: label values with match[], labels, series by POST.
    let (_, body) = get_json(&format!(
        "{api}/label/run/values?match[]=meshload_load_responses_per_second%7Btest_name%3D~%22slow%22%7D"
    ))
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    let (_, body) = get_json(&format!("{api}/labels")).await;
    assert!(body["data"].as_array().unwrap().iter().any(|l| l == "mesh"));
    let (status, body) = post_form(
        &format!("{api}/series"),
        &[("match[]", "meshload_load_errors_per_second")],
    )
    .await;
    assert_eq!((status, body["data"].as_array().unwrap().len()), (200, 4));
    let (status, _) = get_json(&format!("{api}/metadata")).await;
    assert_eq!(status, 200);
    // Errors as Prometheus gives them.
    for bad in [
        "query?query=sum(",
        "query",
        "query_range?query=up&start=1&end=2",
        "series",
    ] {
        let (status, body) = get_json(&format!("{api}/{bad}")).await;
        assert_eq!(
            (status, body["errorType"].as_str()),
            (400, Some("bad_data")),
            "{bad}: {body}"
        );
        assert_eq!(body["status"], "error");
    }
    let (status, _) = get_json(&format!("{api}/nothing")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn aligned_runs_start_at_the_same_instant() {
    let first_points = |body: &Value| -> Vec<f64> {
        let mut firsts: Vec<f64> = body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["values"][0][0].as_f64().unwrap())
            .collect();
        firsts.sort_by(f64::total_cmp);
        firsts
    };
    let (start, end) = store_span();
    let form = [
        ("query", "meshload_load_responses_per_second"),
        ("start", start.as_str()),
        ("end", end.as_str()),
        ("step", "0.5"),
    ];
    let plain = serve(store(), &[]);
    let (_, body) = post_form(&format!("http://{}/api/v1/query_range", plain.addr), &form).await;
    let at_their_times = first_points(&body);
    assert_eq!(at_their_times.len(), 4);
    assert!(
        at_their_times[3] - at_their_times[0] >= 1.0,
        "{at_their_times:?}"
    );
    let aligned = serve(store(), &["--align-runs"]);
    let (_, body) = post_form(
        &format!("http://{}/api/v1/query_range", aligned.addr),
        &form,
    )
    .await;
    let overlaid = first_points(&body);
    assert!((overlaid[3] - overlaid[0]).abs() <= 0.5, "{overlaid:?}");
}

#[tokio::test]
async fn new_runs_appear_damaged_ones_are_skipped_and_nothing_outside_is_read() {
    let dir = temp_dir("results-serve-live");
    let live = dir.join("store");
    let (slow_dir, _) = the_run(store(), "slow");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in std::fs::read_dir(from).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    };
    copy(&slow_dir, &live.join("slow").join("20260101000000"));
    // A damaged run: its metadata cut short.
    let damaged = live.join("broken").join("20260101000001");
    copy(&slow_dir, &damaged);
    std::fs::write(damaged.join("metadata.json"), "{\"test_name\": ").unwrap();
    let server = serve(&live, &[]);
    let api = format!("http://{}/api/v1", server.addr);
    let (_, body) = get_json(&format!("{api}/label/test_name/values")).await;
    assert_eq!(body["data"], serde_json::json!(["slow"]));
    // A run written while serving shows up.
    copy(&slow_dir, &live.join("later").join("20260101000002"));
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        common::wait_for("the new run is served", || {
            common::http_get(addr, "/api/v1/label/test_name/values")
                .is_some_and(|body| body.contains(r#"["later","slow"]"#))
        })
    })
    .await
    .unwrap();
    // Paths and odd names read nothing: no endpoint takes a file name.
    for path in [
        "/../../../etc/passwd",
        "/api/v1/label/..%2F..%2Fetc%2Fpasswd/values",
        "/api/v1/query?query=up%7Brun%3D%22..%2F..%2Fetc%22%7D",
        "/api/v1/series?match[]=%7Btest_name%3D%22..%2F..%2F..%2Fetc%22%7D",
    ] {
        let reply = get(&format!("http://{}{path}", server.addr)).await;
        assert!(!reply.body.contains("root:"), "{path}: {}", reply.body);
        assert!(
            reply.status == 200 || reply.status == 404 || reply.status == 400,
            "{path}"
        );
        if reply.status == 200 {
            // Answered from the store alone: nothing matches such names.
            let body: Value = serde_json::from_str(&reply.body).unwrap();
            let data = &body["data"];
            let empty = data.as_array().is_some_and(Vec::is_empty)
                || data["result"].as_array().is_some_and(Vec::is_empty);
            assert!(empty, "{path}: {body}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn every_dashboard_expression_evaluates() {
    let dashboard: Value =
        json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/grafana/meshload.json"));
    let server = serve(store(), &[]);
    let api = format!("http://{}/api/v1", server.addr);
    let (start, end) = store_span();
    let mut sidecars = false;
    // Grafana's variables as it would fill them: every test and run, a 4 s rate interval.
    let fill = |expr: &str| {
        expr.replace("$test_name", ".*")
            .replace("$run", ".*")
            .replace("$__rate_interval", "4s")
    };
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = fill(target["expr"].as_str().unwrap());
            let (status, body) = post_form(
                &format!("{api}/query_range"),
                &[
                    ("query", &expr),
                    ("start", &start),
                    ("end", &end),
                    ("step", "1"),
                ],
            )
            .await;
            assert_eq!(
                (status, &body["status"]),
                (200, &serde_json::json!("success")),
                "{expr}: {body}"
            );
            let found = body["data"]["result"].as_array().unwrap();
            assert!(!found.is_empty(), "{}: no data for {expr}", panel["title"]);
            sidecars |= found.iter().any(|s| s["metric"]["container"] == "envoy");
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
    assert!(
        sidecars,
        "the memory and CPU panels show the Envoy sidecars"
    );
    // The variables' queries: label_values(metric{...}, label) is a label-values call.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["definition"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .unwrap()
            .strip_suffix(')')
            .unwrap();
        let (selector, label) = inner.rsplit_once(", ").unwrap();
        let selector = fill(selector);
        let encoded: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
        let (status, body) =
            get_json(&format!("{api}/label/{label}/values?match[]={encoded}")).await;
        assert_eq!(status, 200);
        assert!(!body["data"].as_array().unwrap().is_empty(), "{q}: {body}");
    }
}

/// The span of every run in the store, from 5 s before the first start to 5 s after the
/// last end, in Unix seconds (the runs are minutes apart at most).
fn store_span() -> (String, String) {
    let spans: Vec<(i64, i64)> = ["slow", "fast"]
        .iter()
        .flat_map(|t| std::fs::read_dir(store().join(t)).unwrap())
        .map(|e| json(&e.unwrap().path().join("metadata.json")))
        .map(|m| {
            (
                m["start_ms"].as_i64().unwrap(),
                m["end_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    let start = (spans.iter().map(|s| s.0).min().unwrap() / 1000 - 5).to_string();
    let end = (spans.iter().map(|s| s.1).max().unwrap() / 1000 + 5).to_string();
    (start, end)
}
