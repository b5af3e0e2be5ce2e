//! `meshload serve` driven the way the seed's driver drove Fortio: a JSON body of
//! strings, against a real node.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::NodeProc;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Waits until `node` has answered `n` requests.
async fn until_served(node: &NodeProc, n: f64) {
    let addr = node.addr;
    tokio::task::spawn_blocking(move || {
        common::wait_for(&format!("{n} requests answered"), || {
            common::node_served(addr) >= n
        })
    })
    .await
    .unwrap();
}

async fn post(url: &str, body: &str) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(url)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_seed_driver_style_request_runs_a_load_test() {
    let node = NodeProc::start(&[]);
    let server = NodeProc::spawn(&["-q", "serve", "--listen", "127.0.0.1:0"], &[]);
    let run_url = format!("http://{}/fortio/rest/run", server.addr);
    let body = format!(
        r#"{{"metadata": {{"url": "{}", "qps": "100", "t": "1s", "c": "2"}}}}"#,
        node.url()
    );
    let (status, result) = post(&format!("{run_url}?jsonPath=.metadata"), &body).await;
    assert_eq!(status, 200, "{result}");
    let ok = result["RetCodes"]["200"].as_u64().unwrap();
    assert!((95..=102).contains(&ok), "{ok} requests at 100/s for 1s");
    assert!((80.0..=110.0).contains(&result["ActualQPS"].as_f64().unwrap()));
    assert_eq!(result["RequestedQPS"], "100");
    assert_eq!(result["NumThreads"], 2);

    // Parameters in the query string, exact count, max rate.
    let url = format!("{run_url}?url={}&qps=-1&n=50&c=5", node.url());
    let (status, result) = post(&url, "").await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["RetCodes"]["200"], 50);
    assert_eq!(result["RequestedQPS"], "max");

    let (status, result) = post(&run_url, r#"{"url": "http://127.0.0.1:1/", "qps": "fast"}"#).await;
    assert_eq!(status, 400);
    assert!(
        result["error"].as_str().unwrap().starts_with("qps"),
        "{result}"
    );
}

#[tokio::test]
async fn a_stop_request_ends_a_run_which_answers_with_what_it_measured() {
    let node = NodeProc::start(&[]);
    let server = NodeProc::spawn(&["-q", "serve", "--listen", "127.0.0.1:0"], &[]);
    let base = format!("http://{}/fortio/rest", server.addr);
    let body = format!(
        r#"{{"url": "{}", "qps": "50", "t": "60s", "c": "1", "headers": ["x-test: 1"]}}"#,
        node.url()
    );
    let run_url = format!("{base}/run");
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { post(&run_url, &body).await });
    until_served(&node, 20.0).await;
    let (status, reply) = post(&format!("{base}/stop"), "").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["Count"], 1, "one run was going: {reply}");
    let (status, result) = run.await.unwrap();
    assert_eq!(status, 200, "{result}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the 60 s run ended at the stop request"
    );
    assert_eq!(result["Interrupted"], true, "{result}");
    let ok = result["RetCodes"]["200"].as_u64().unwrap();
    assert!(
        (15..=120).contains(&ok),
        "stopped once 20 of 50 req/s for 60 s were answered: {ok}"
    );
    // Nothing runs any more: a second stop counts none.
    let (_, reply) = post(&format!("{base}/stop"), "").await;
    assert_eq!(reply["Count"], 0, "{reply}");
}

#[tokio::test]
async fn a_long_run_keeps_its_call_alive_with_leading_spaces() {
    let node = NodeProc::start(&[]);
    let server = NodeProc::spawn(
        &[
            "-q",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--keepalive",
            "200ms",
        ],
        &[],
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = format!(
        r#"{{"url": "{}", "qps": "20", "t": "1s", "c": "1"}}"#,
        node.url()
    );
    let req = http::Request::post(format!("http://{}/fortio/rest/run", server.addr))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = client.request(req).await.unwrap();
    // The answer starts at once, long before the run ends.
    assert!(started.elapsed() < std::time::Duration::from_millis(800));
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks.push((started.elapsed(), data));
        }
    }
    let spaces: Vec<_> = chunks
        .iter()
        .filter(|(_, d)| d.iter().all(|b| *b == b' '))
        .collect();
    assert!(
        spaces.len() >= 3,
        "a space about every 200 ms of a 1 s run: {spaces:?}"
    );
    let whole: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.to_vec()).collect();
    let result: Value = serde_json::from_slice(&whole).unwrap();
    assert_eq!(result["RetCodes"]["200"], 20, "{result}");
}

#[tokio::test]
async fn a_client_that_goes_away_stops_its_run() {
    let node = NodeProc::start(&[]);
    let server = NodeProc::spawn(&["-q", "serve", "--listen", "127.0.0.1:0"], &[]);
    let base = format!("http://{}/fortio/rest", server.addr);
    let body = format!(
        r#"{{"url": "{}", "qps": "20", "t": "60s", "c": "1"}}"#,
        node.url()
    );
    let run_url = format!("{base}/run");
    let call = tokio::spawn(async move { post(&run_url, &body).await });
    until_served(&node, 5.0).await;
    call.abort();
    let _ = call.await;
    // The run notices within moments: its connection to the node closes. A run that went
    // on would keep it open (c=1, kept alive) and this wait would fail at its deadline.
    let (server_pid, node_port) = (server.pid(), node.addr.port());
    tokio::task::spawn_blocking(move || {
        common::wait_for("the run's connection to the node closed", || {
            common::connections_to(server_pid, node_port) == 0
        })
    })
    .await
    .unwrap();
}
