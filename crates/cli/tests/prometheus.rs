//! The embedded engine against a real Prometheus (the Debian `prometheus` binary, which
//! scripts/test installs) on the same samples: a node under load is scraped by
//! Prometheus, its raw samples are read back into the embedded store, and the seed-style
//! queries are answered by both.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{NodeProc, bin, start_prometheus};
use meshload_promql::client::PrometheusClient;
use meshload_promql::eval::{QueryOptions, RangeSeries, Value};
use meshload_promql::{Store, range_query};

fn matrix(v: Value) -> Vec<RangeSeries> {
    match v {
        Value::Matrix(m) => m,
        other => panic!("expected a matrix, got {other:?}"),
    }
}

fn assert_same(query: &str, ours: &[RangeSeries], theirs: &[RangeSeries]) {
    assert!(!theirs.is_empty(), "{query}: prometheus returned nothing");
    assert_eq!(ours.len(), theirs.len(), "{query}: series count");
    for t in theirs {
        let o = ours
            .iter()
            .find(|o| o.labels == t.labels)
            .unwrap_or_else(|| panic!("{query}: missing {}", t.labels));
        assert_eq!(
            o.points.len(),
            t.points.len(),
            "{query} {}: point count",
            t.labels
        );
        for (a, b) in o.points.iter().zip(&t.points) {
            assert_eq!(a.0, b.0, "{query}: timestamps");
            let same = (a.1.is_nan() && b.1.is_nan())
                || (a.1 - b.1).abs() <= 1e-9 * a.1.abs().max(b.1.abs()).max(1.0);
            assert!(
                same,
                "{query} {} at {}: ours {} prometheus {}",
                t.labels, a.0, a.1, b.1
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_agrees_with_prometheus_on_the_same_samples() {
    let node = NodeProc::start(&[
        "--latency",
        "uniform:0ms..3ms",
        "--error-rate",
        "0.05",
        "--seed",
        "1",
    ]);
    let prometheus = start_prometheus("node", node.addr, "{}");
    let mut load = bin()
        .args([
            "-q",
            "load",
            "--qps",
            "300",
            "-c",
            "4",
            "-t",
            "40s",
            &node.url(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = PrometheusClient::new(&prometheus.url).unwrap();
    // Scrape for a while (at most 40 s), then read every raw sample back.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let mut scraped = 0.0;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(r) = client.query("count_over_time(up[1m])", now()).await
            && let Value::Vector(v) = r.value
        {
            scraped = v.first().map_or(0.0, |s| s.value);
            if scraped >= 14.0 {
                break;
            }
        }
    }
    assert!(scraped >= 14.0, "prometheus scraped {scraped} times");
    let raw = matrix(
        client
            .query(r#"{job="node"}[1m]"#, now())
            .await
            .unwrap()
            .value,
    );
    let _ = load.kill();
    let _ = load.wait();
    let mut store = Store::new();
    for series in &raw {
        for &(t, v) in &series.points {
            store.append(&series.labels, t, v);
        }
    }
    // Evaluate midway between scrapes, so that no sample sits on a range boundary
    // (Prometheus 2.x ranges are closed on the left, 3.x ranges open).
    let scrapes = &raw
        .iter()
        .find(|s| s.labels.name() == Some("up"))
        .unwrap()
        .points;
    let start = scrapes[scrapes.len() - 4].0 - 2_500;
    let end = scrapes[scrapes.len() - 1].0 - 500;
    let queries = [
        "sum(rate(meshload_node_requests_total[10s])) by (code)",
        r#"sum(label_replace(process_resident_memory_bytes{job="node"}, "replica_set", "$1", "instance", "(.*):.*")) by (replica_set) / (1024*1024)"#,
        "histogram_quantile(0.99, sum(rate(meshload_node_request_duration_seconds_bucket[10s])) by (le))",
        "rate(process_cpu_seconds_total[5s])",
        "max_over_time(meshload_node_in_flight_requests[10s])",
        "increase(meshload_node_requests_total[8s]) / ignoring(code) group_left sum without (code) (increase(meshload_node_requests_total[8s]))",
    ];
    for q in queries {
        let theirs = matrix(client.query_range(q, start, end, 1000).await.unwrap().value);
        let ours = matrix(
            range_query(&store, q, start, end, 1000, QueryOptions::default())
                .unwrap()
                .value,
        );
        assert_same(q, &ours, &theirs);
    }
}
