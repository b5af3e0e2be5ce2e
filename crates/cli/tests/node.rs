//! `meshload node` end to end: real node processes on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{NodeProc, get, get_with, node_bin, run, sample};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::test]
async fn three_node_topology_answers_200_and_names_a_dead_backend() {
    let n1 = NodeProc::start(&["--name", "1"]);
    let mut n2 = NodeProc::start(&["--name", "2"]);
    let backends = format!("{},{}", n1.backend(), n2.backend());
    let n0 = NodeProc::start(&["--name", "0", "--backends", &backends]);

    let ok = get(&n0.url()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let body: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(body["node"], "0");

    n2.terminate();
    n2.wait_exit(Duration::from_secs(5))
        .expect("node 2 stops on SIGTERM");
    let failed = get(&n0.url()).await;
    assert_eq!(failed.status, 500);
    let body: serde_json::Value = serde_json::from_str(&failed.body).unwrap();
    let failures = body["failed"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{}", failed.body);
    assert_eq!(failures[0]["backend"], n2.url());
    assert!(
        failures[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{}",
        failed.body
    );

    let metrics = get(&format!("{}metrics", n0.url())).await.body;
    let dead = format!(
        "meshload_node_backend_calls_total{{backend=\"{}\",code=\"refused\"}}",
        n2.addr
    );
    assert_eq!(sample(&metrics, &dead), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn a_backend_slower_than_the_timeout_yields_500_within_the_timeout() {
    let slow = NodeProc::start(&["--latency", "3s"]);
    let root = NodeProc::start(&["--backends", &slow.backend(), "--timeout", "300ms"]);
    let started = Instant::now();
    let reply = get(&root.url()).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("timeout after 300ms"), "{}", reply.body);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
}

async fn codes(node: &NodeProc, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(&node.url()).await.status);
    }
    out
}

#[tokio::test]
async fn error_injection_is_reproducible_with_a_seed() {
    let args = ["--error-rate", "0.3", "--error-code", "503", "--seed", "7"];
    let first = codes(&NodeProc::start(&args), 60).await;
    let again = codes(&NodeProc::start(&args), 60).await;
    let other = codes(
        &NodeProc::start(&["--error-rate", "0.3", "--seed", "8"]),
        60,
    )
    .await;
    assert_eq!(first, again);
    assert_ne!(
        first.iter().map(|&c| c == 200).collect::<Vec<_>>(),
        other.iter().map(|&c| c == 200).collect::<Vec<_>>()
    );
    let failures = first.iter().filter(|&&c| c == 503).count();
    assert!(
        (5..=35).contains(&failures),
        "{failures} of 60 failed at a 30% rate"
    );
    assert!(first.iter().all(|&c| c == 200 || c == 503));
}

#[tokio::test]
async fn injected_latency_shows_in_the_duration_histogram() {
    let node = NodeProc::start(&["--latency", "30ms"]);
    for _ in 0..5 {
        assert_eq!(get(&node.url()).await.status, 200);
    }
    let metrics = get(&format!("{}metrics", node.url())).await.body;
    let bucket = |le: &str| {
        sample(
            &metrics,
            &format!("meshload_node_request_duration_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("0.025"), Some(0.0), "{metrics}");
    assert_eq!(bucket("0.05"), Some(5.0), "{metrics}");
    let sum = sample(&metrics, "meshload_node_request_duration_seconds_sum").unwrap();
    assert!(sum >= 0.15, "sum {sum}");
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    let leaf = NodeProc::start(&[]);
    let root = NodeProc::start(&["--backends", &format!("{},127.0.0.1:1", leaf.backend())]);
    assert_eq!(get(&root.url()).await.status, 500);
    let metrics = get(&format!("{}metrics", root.url())).await.body;
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/test (Debian package prometheus)");
    use std::io::Write as _;
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "meshload_node_in_flight_requests",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing"
        );
    }
}

/// A backend that answers 200 and records the headers of every request it gets.
async fn recording_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                record.lock().unwrap().push(req.headers().clone());
                async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn trace_headers_arrive_at_the_backends() {
    let (addr, seen) = recording_backend().await;
    let root = NodeProc::start(&["--backends", &addr.to_string()]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [
        ("traceparent", traceparent),
        ("x-request-id", "req-42"),
        ("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1"),
        ("cookie", "c"),
    ];
    assert_eq!(get_with(&root.url(), &headers, false).await.status, 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["traceparent"], traceparent);
    assert_eq!(seen[0]["x-request-id"], "req-42");
    assert_eq!(seen[0]["b3"], "80f198ee56343ba8-e457b5a2e4d86bd1-1");
    assert!(
        seen[0].get("cookie").is_none(),
        "only trace headers are forwarded"
    );
}

#[tokio::test]
async fn serves_h2c_on_the_same_port_and_reads_backends_from_the_environment() {
    let leaf = NodeProc::start(&[]);
    let root = NodeProc::start_with_env(&[], &[("BACKENDS", &format!("http://{}/", leaf.addr))]);
    assert_eq!(get_with(&root.url(), &[], true).await.status, 200);
    assert_eq!(get_with(&root.url(), &[], false).await.status, 200);
    let metrics = get(&format!("{}metrics", root.url())).await.body;
    let call = format!(
        "meshload_node_backend_calls_total{{backend=\"{}\",code=\"200\"}}",
        leaf.addr
    );
    assert_eq!(sample(&metrics, &call), Some(2.0), "{metrics}");
    let health = get(&format!("{}health", root.url())).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let mut node = NodeProc::start(&["--latency", "600ms"]);
    let url = node.url();
    let pending = tokio::spawn(async move { get(&url).await });
    let addr = node.addr;
    tokio::task::spawn_blocking(move || {
        common::wait_for("the request is in flight", || {
            common::node_metric(addr, "meshload_node_in_flight_requests") == Some(1.0)
        })
    })
    .await
    .unwrap();
    node.terminate();
    let reply = pending.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request finishes");
    let status = node
        .wait_exit(Duration::from_secs(5))
        .expect("exits after draining");
    assert!(status.success());
}

/// Sends `request` on a new connection and reads until the node closes it or `limit`
/// passes; returns what arrived and when the connection ended (`None`: still open).
async fn exchange(
    addr: std::net::SocketAddr,
    request: &[u8],
    limit: Duration,
) -> (String, Option<Duration>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
            Ok(Ok(0) | Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_by_their_timeouts() {
    let node = NodeProc::start(&[
        "--header-read-timeout",
        "1s",
        "--idle-timeout",
        "3s",
        "--body-read-timeout",
        "1s",
        "--request-timeout",
        "20s",
    ]);
    let limit = Duration::from_secs(8);
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (silent, partial_head, partial_body, idle) = tokio::join!(
        exchange(node.addr, b"", limit),
        exchange(node.addr, b"GET / HTTP/1.1\r\nHo", limit),
        exchange(
            node.addr,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
            limit
        ),
        exchange(node.addr, head, limit),
    );
    let near = |got: Option<Duration>, secs: f64| {
        let got = got.expect("the node closes the connection").as_secs_f64();
        assert!(
            (got - secs).abs() < 0.6,
            "closed after {got:.2}s, expected {secs}s"
        );
    };
    near(silent.1, 1.0);
    assert_eq!(silent.0, "");
    near(partial_head.1, 1.0);
    assert!(
        partial_body.0.starts_with("HTTP/1.1 408"),
        "{}",
        partial_body.0
    );
    near(partial_body.1, 1.0);
    // An answered keep-alive connection waits for its next request for the idle timeout,
    // not the header-read one.
    assert!(idle.0.starts_with("HTTP/1.1 200"), "{}", idle.0);
    near(idle.1, 3.0);
}

#[tokio::test]
async fn silent_connections_at_the_limit_make_way_for_clients() {
    let node = NodeProc::start(&["--max-connections", "50"]);
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(tokio::net::TcpStream::connect(node.addr).await.unwrap());
    }
    // And one keep-alive client in the middle: it answers, then idles at the limit.
    let started = Instant::now();
    for _ in 0..5 {
        let reply = tokio::time::timeout(Duration::from_secs(3), get(&node.url()))
            .await
            .expect("a client is served while 60 silent sockets are held");
        assert_eq!(reply.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let metrics = get(&format!("{}metrics", node.url())).await;
    assert_eq!(metrics.status, 200);
    drop(silent);
}

#[test]
fn bad_flags_and_backends_give_one_line_and_exit_64() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 5] = [
        (&["node", "--listen", "nowhere"], &[]),
        (&["node", "--backends", "http://a b/"], &[]),
        (&["node", "--no-such-flag"], &[]),
        (&["node", "--error-rate", "2"], &[]),
        (&["node"], &[("BACKENDS", "https://secure:443/")]),
    ];
    for (args, env) in cases {
        let out = run(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
}

#[test]
fn help_teaches_with_examples() {
    let out = run(&["node", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("--backends"), "{help}");
}

#[tokio::test]
async fn the_node_binary_serves_as_meshload_node_does() {
    let leaf = NodeProc::start(&["--name", "1"]);
    let mut entry = NodeProc::start_node_binary(&["--name", "0", "--backends", &leaf.backend()]);
    let ok = get(&entry.url()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let body: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(body["node"], "0");
    let metrics = get(&format!("{}metrics", entry.url())).await;
    assert!(
        metrics.body.contains("meshload_node_requests_total"),
        "{}",
        metrics.body
    );
    entry.terminate();
    let status = entry
        .wait_exit(Duration::from_secs(5))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn the_node_binary_names_its_build_and_refuses_bad_flags() {
    let out = node_bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("meshload-node "), "{version}");
    assert!(version.contains("(node sources "), "{version}");
    let out = node_bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--backends") && help.contains("Examples:"),
        "{help}"
    );
    for args in [
        &["--listen", "nowhere"][..],
        &["node"],
        &["--error-rate", "2"],
    ] {
        let out = node_bin().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
}
