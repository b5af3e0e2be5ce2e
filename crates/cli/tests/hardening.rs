//! What a hostile user tried, each one a regression test: requests that name server files,
//! numbers past every bound, bodies and connections held against a server, and runs that
//! open what they cannot use.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{NodeProc, run, temp_dir, write_config};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// POSTs a REST run and reads its answer, in at most 20 s.
async fn rest(server: &NodeProc, query: &str, body: &str) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!("http://{}/fortio/rest/run?{query}", server.addr);
    let req = http::Request::post(url)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let answer = async {
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    };
    tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("the server answers")
}

fn serve(extra: &[&str]) -> NodeProc {
    let mut args = vec!["-q", "serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    NodeProc::spawn(&args, &[])
}

fn encoded(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn a_rest_cacert_is_pem_text_and_never_a_path_on_the_server() {
    let server = serve(&[]);
    let url = encoded("https://127.0.0.1:1/");
    let mut answers = Vec::new();
    // A file that reads forever, a readable one, a missing one: one answer for all, at
    // once, that says nothing of which exists.
    for path in ["/dev/zero", "/etc/passwd", "/no/such/file", "/root"] {
        let started = Instant::now();
        let (status, answer) = rest(&server, &format!("url={url}&cacert={path}"), "").await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
        answers.push(answer["error"].as_str().unwrap().to_string());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert!(answers[0].contains("PEM text"), "{}", answers[0]);
    let pem = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
    let (status, answer) = rest(&server, &format!("url={url}&cacert={}", encoded(pem)), "").await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("cacert: the PEM text"), "{error}");
    let (status, _) = rest(&server, "", "").await;
    assert_eq!(status, 400, "the server is alive");
}

#[tokio::test]
async fn every_rest_number_is_bounded_with_a_400_that_names_it() {
    let node = NodeProc::start(&[]);
    let server = serve(&[]);
    let url = encoded(&node.url());
    for (param, named) in [
        ("c=1e12", "c:"),
        ("c=1000000000", "c:"),
        ("c=100001", "c:"),
        ("c=2.5", "c:"),
        ("qps=1e-300", "qps:"),
        ("qps=NaN", "qps:"),
        ("qps=-5", "qps:"),
        ("qps=1e300", "qps:"),
        ("n=-3", "n:"),
        ("n=0", "n:"),
        ("n=18446744073709551616", "n:"),
        ("t=1000000h", "duration:"),
        ("timeout=0s", "timeout:"),
        ("timeout=2h", "timeout:"),
    ] {
        let (status, answer) = rest(&server, &format!("url={url}&{param}"), "").await;
        assert_eq!(status, 400, "{param}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(named), "{param}: {error}");
    }
    // Nothing was started, nothing is counted: a good run still runs.
    let (status, answer) = rest(&server, &format!("url={url}&n=5&c=1&qps=-1"), "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["RetCodes"]["200"], 5);
}

#[tokio::test]
async fn runs_past_the_servers_connection_budget_are_refused_with_503() {
    let node = NodeProc::start(&[]);
    let slow = NodeProc::start(&["--latency", "40s", "--request-timeout", "60s"]);
    let server = serve(&[]);
    let url = encoded(&node.url());
    // 100,000 connections at one request per 1,000 s: only the first has a request due
    // within the test, so only it is opened; its answer takes 40 s, and meanwhile the run
    // holds the server's whole connection budget.
    let (accepted, claimed) = tokio::sync::oneshot::channel();
    let big = {
        let query = format!(
            "url={}&c=100000&qps=0.001&t=30s&timeout=60s",
            encoded(&slow.url())
        );
        let server_addr = server.addr;
        tokio::spawn(async move {
            let started = Instant::now();
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let req = http::Request::post(format!("http://{server_addr}/fortio/rest/run?{query}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            // The answer's head comes as the run starts; its body when it ends.
            let _ = accepted.send(resp.status().as_u16());
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                started.elapsed(),
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        })
    };
    assert_eq!(claimed.await.unwrap(), 200);
    let (status, refused) = rest(&server, &format!("url={url}&n=1&c=1"), "").await;
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().starts_with("busy"),
        "{refused}"
    );
    let stop = format!("http://{}/fortio/rest/stop", server.addr);
    assert_eq!(common::get(&stop).await.status, 200);
    let (took, result) = big.await.unwrap();
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(result["Interrupted"], true, "{result}");
    assert!(result["SocketCount"].as_u64().unwrap() <= 2, "{result}");
    // The budget is given back.
    let (status, answer) = rest(&server, &format!("url={url}&n=1&c=1"), "").await;
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn the_cli_refuses_what_its_interval_or_memory_cannot_hold() {
    for (args, named) in [
        (vec!["--qps", "1e-300", "-n", "1"], "qps"),
        (vec!["--qps", "5000000"], "qps"),
        (vec!["-n", "0"], "requests"),
        (vec!["--timeout", "2h"], "timeout"),
        (vec!["--payload-file", "/dev/zero"], "--payload-file"),
        // Durations have one grammar everywhere: Go's, as configs and Fortio write them.
        (vec!["-t", "1min"], "is not a duration"),
    ] {
        let mut full = vec!["load"];
        full.extend(args.iter().copied());
        full.push("http://127.0.0.1:1/");
        let started = Instant::now();
        let out = run(&full, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?}");
    }
    let out = run(
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--response-size",
            "2000000000",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("response-size"));
}

#[test]
fn a_config_is_bounded_as_the_cli_is_with_the_json_path() {
    let dir = temp_dir("hardening-config");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"a": []},
            "load_tests": [{"test_name": "x", "target": "a", "qps": 1e-300, "t": "1000000h",
                            "timeout": "0s", "c": 100001}]}"#,
    );
    let out = run(&["validate", config.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for path in [
        "load_tests[0].qps: 1e-300 is not a rate",
        "load_tests[0].t:",
        "load_tests[0].timeout: 0s would fail",
        "load_tests[0].c: 100001",
    ] {
        assert!(stderr.contains(path), "{path} missing in {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The largest resident set a process has had, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The file descriptors a process holds.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A connection that sends a request head promising `length` body bytes, and `sent` of them.
fn partial_upload(addr: std::net::SocketAddr, length: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = sent;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    s
}

/// Reads the status code of the answer on `s`.
fn status_of(s: &mut TcpStream) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1)?.parse().ok()
}

#[test]
fn a_node_reads_request_bodies_without_keeping_them() {
    let mut node = NodeProc::start(&[]);
    let before = peak_rss(node.pid());
    // 24 uploads of 15 MiB each, all in the node at once: kept, they would be 360 MiB.
    let mut uploads: Vec<TcpStream> = (0..24)
        .map(|_| partial_upload(node.addr, 16 << 20, 15 << 20))
        .collect();
    for s in &mut uploads {
        s.write_all(&vec![b'x'; 1 << 20]).unwrap();
    }
    for s in &mut uploads {
        assert_eq!(status_of(s), Some(200));
    }
    let grown = peak_rss(node.pid()).saturating_sub(before);
    assert!(grown < 96 << 20, "the node grew by {} MiB", grown >> 20);
    // A body larger than a payload may be is refused from its head.
    let mut s = partial_upload(node.addr, 64 << 20, 0);
    assert_eq!(status_of(&mut s), Some(413));
    node.terminate();
    assert!(node.wait_exit(Duration::from_secs(15)).is_some());
}

/// The node's in-flight requests.
fn in_flight(addr: std::net::SocketAddr) -> Option<f64> {
    common::node_metric(addr, "meshload_node_in_flight_requests")
}

#[test]
fn a_stalled_upload_makes_way_for_a_new_client() {
    let node = NodeProc::start(&["--max-connections", "6"]);
    // Five connections, each stalled 10 bytes into a 10 MB body (within what a node
    // reads: a larger one is refused, 413, from its head)...
    let _held: Vec<TcpStream> = (0..5)
        .map(|_| partial_upload(node.addr, 10_000_000, 10))
        .collect();
    // ...once the node has started all five requests (its in-flight gauge says so)...
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight(node.addr) != Some(5.0) {
        assert!(Instant::now() < deadline, "the uploads never started");
    }
    // ...and an idle keep-alive client hold every slot: the stalled ones make way first.
    let mut idle = TcpStream::connect(node.addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&mut idle), Some(200));
    let started = Instant::now();
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(status_of(&mut s), Some(200));
    // Not after the body-read timeout (10 s) frees a slot.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A stalled upload made way, not the idle client: it is still served (what follows
    // the first answer's first 64 bytes, then the second answer).
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&text).contains("HTTP/1.1 200") {
        let n = idle.read(&mut buf).unwrap_or(0);
        assert!(
            n > 0,
            "the idle client was closed: {}",
            String::from_utf8_lossy(&text)
        );
        text.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_node_flooded_with_held_connections_stops_within_its_drain_timeout() {
    let mut node = NodeProc::start(&["--max-connections", "50", "--drain-timeout", "1s"]);
    let held: Vec<TcpStream> = (0..200)
        .filter_map(|i| {
            let mut s = TcpStream::connect(node.addr).ok()?;
            // Some silent, some mid-head, some mid-body.
            let _ = match i % 3 {
                0 => Ok(()),
                1 => s.write_all(b"GET / HTTP/1.1\r\nHo"),
                _ => s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nxx"),
            };
            Some(s)
        })
        .collect();
    assert!(held.len() > 100);
    let started = Instant::now();
    node.terminate();
    let status = node.wait_exit(Duration::from_secs(8));
    assert!(
        status.is_some(),
        "still running after {:?}",
        started.elapsed()
    );
    drop(held);
}

/// Opens `n` connections that never send anything.
fn silent(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

#[tokio::test]
async fn meshloads_own_servers_hold_a_bounded_number_of_connections() {
    let dir = temp_dir("hardening-guards");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let results = NodeProc::spawn(
        &[
            "-q",
            "results",
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "20",
        ],
        &[],
    );
    let rest = serve(&["--max-connections", "20"]);
    for (server, health) in [(&rest, "/health"), (&results, "/api/v1/labels")] {
        let baseline = descriptors(server.pid());
        let _silent = silent(server.addr, 60);
        // A new client still gets an answer: a silent connection made way for it.
        let reply = common::get(&format!("http://{}{health}", server.addr)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        // Silent connections make way for each other too: wait for that to settle.
        let deadline = Instant::now() + Duration::from_secs(5);
        while descriptors(server.pid()) > baseline + 21 {
            let held = descriptors(server.pid());
            assert!(
                Instant::now() < deadline,
                "{held} descriptors (from {baseline})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_std_client_counts_an_endless_body_without_keeping_it() {
    // A server that answers every request with a chunked body that never ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                while s.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let mut child = common::bin()
        .args([
            "load",
            "--std-client",
            "-c",
            "2",
            "-n",
            "2",
            "--timeout",
            "3s",
        ])
        .arg(format!("http://{addr}/"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the load did not end");
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for l in status.lines() {
                if let Some(v) = l.strip_prefix("VmRSS:") {
                    let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kb << 10);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
    assert!(
        peak < 200 << 20,
        "the load generator reached {} MiB",
        peak >> 20
    );
}

#[test]
fn connections_that_the_rate_cannot_use_are_not_opened() {
    let node = NodeProc::start(&[]);
    let dir = temp_dir("hardening-lazy");
    let json = dir.join("r.json");
    let started = Instant::now();
    let out = run(
        &[
            "load",
            "--qps",
            "10",
            "-c",
            "20000",
            "-t",
            "1s",
            "--json",
            json.to_str().unwrap(),
            &node.url(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let result = common::json(&json);
    assert!(result["SocketCount"].as_u64().unwrap() <= 10, "{result}");
    assert_eq!(result["RetCodes"]["200"], 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

const TINY: &str = r#"{"backends_map": {"a": []}, "ConnectivityCheckPerURL": 1,
    "load_tests": [{"test_name": "tiny", "target": "a", "qps": 20, "t": "1s", "c": 1}]}"#;

#[test]
fn two_runs_into_one_store_at_once_both_keep_their_runs() {
    let dir = temp_dir("hardening-same-second");
    let config = write_config(&dir, TINY);
    let store = dir.join("store");
    let start = || {
        common::bin()
            .args([
                "run",
                "--store",
                store.to_str().unwrap(),
                config.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let names: Vec<String> = std::fs::read_dir(store.join("tiny"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_where_a_tests_folder_belongs_stops_the_run_before_it_starts() {
    let dir = temp_dir("hardening-test-file");
    let config = write_config(&dir, TINY);
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("tiny"), "not a folder").unwrap();
    let started = Instant::now();
    let out = run(
        &[
            "run",
            "--store",
            store.to_str().unwrap(),
            config.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("tiny"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "nothing ran");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metadata_of_the_wrong_shape_is_listed_as_damaged() {
    let dir = temp_dir("hardening-shape");
    let config = write_config(&dir, TINY);
    let store = dir.join("store");
    common::run_ok(&config, &store);
    let run_dir = common::run_dir(&store, "tiny");
    let metadata = run_dir.join("metadata.json");
    let good = common::json(&metadata);
    let mut status_five = good.clone();
    status_five["status"] = 5.into();
    for bad in [
        serde_json::json!([1, 2, 3]),
        status_five,
        Value::from("complete"),
    ] {
        std::fs::write(&metadata, bad.to_string()).unwrap();
        let out = run(
            &[
                "results",
                "list",
                "--store",
                store.to_str().unwrap(),
                "--json",
            ],
            &[],
        );
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows[0]["status"], "damaged", "{bad}");
    }
    std::fs::write(&metadata, good.to_string()).unwrap();
    let out = run(
        &[
            "results",
            "list",
            "--store",
            store.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["status"], "complete");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_prometheus_that_fails_to_start_leaves_no_folder_behind() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("hardening-prometheus");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("prometheus");
    std::fs::write(&fake, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let config = write_config(
        &dir,
        r#"{"backends_map": {"a": []}, "prometheus": "spawn",
            "load_tests": [{"test_name": "tiny", "target": "a", "qps": 20, "t": "1s", "c": 1}]}"#,
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = run(
        &[
            "run",
            "--store",
            dir.join("store").to_str().unwrap(),
            config.to_str().unwrap(),
        ],
        &[("PATH", &path), ("TMPDIR", tmp.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("prometheus"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_load_generator_pod_listens_on_loopback_and_probes_itself() {
    let node = NodeProc::start(&[]);
    let health = format!("http://{}/health", node.addr);
    assert_eq!(run(&["probe", &health], &[]).status.code(), Some(0));
    let nothing = format!("http://127.0.0.1:{}/health", common::free_port());
    assert_eq!(run(&["probe", &nothing], &[]).status.code(), Some(1));
    let dir = temp_dir("hardening-render");
    let config = write_config(&dir, TINY);
    let out = run(&["k8s", "render", config.to_str().unwrap()], &[]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("--listen=127.0.0.1:8080"), "{yaml}");
    assert!(!yaml.contains("0.0.0.0:8080"), "{yaml}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_while_the_last_tests_metrics_are_evaluated_interrupts_the_run() {
    let dir = temp_dir("hardening-ctrl-c-metrics");
    // A million evaluations at each of the window's 100 ms steps: tens of seconds.
    let config = write_config(
        &dir,
        r#"{"backends_map": {"a": []}, "ConnectivityCheckPerURL": 1, "metrics_step": "100ms",
            "metrics": {"slow": "max_over_time(up[1000s:1ms])"},
            "load_tests": [{"test_name": "tiny", "target": "a", "qps": 20, "t": "1s", "c": 1}]}"#,
    );
    let store = dir.join("store");
    let (mut child, lines) = common::run_until(&config, &store, &[], "evaluating 1 metric(s)");
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let rest = lines.rest();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let metadata = common::json(&common::run_dir(&store, "tiny").join("metadata.json"));
    assert_eq!(metadata["status"], "interrupted");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn huge_steps_and_times_answer_at_once_without_a_panic() {
    let dir = temp_dir("hardening-steps");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let server = NodeProc::spawn(
        &[
            "-q",
            "results",
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    for (params, status) in [
        ("start=-1e300&end=1e300&step=1e296", 400),
        ("start=0&end=100&step=1e18", 200),
        ("start=0&end=1e15&step=1", 400),
    ] {
        let started = Instant::now();
        let url = format!(
            "http://{}/api/v1/query_range?query=up&{params}",
            server.addr
        );
        let reply = common::get(&url).await;
        // A refused time is a client error (400 or Prometheus's 422), never a 500.
        assert_eq!(reply.status / 100, status / 100, "{params}: {}", reply.body);
        assert!(started.elapsed() < Duration::from_secs(2), "{params}");
    }
    let url = format!("http://{}/api/v1/query?query=up&time=1e300", server.addr);
    assert_eq!(common::get(&url).await.status / 100, 4);
    // An `@` far out, moved further by a negative offset: no overflow, an answer.
    let far = encoded("max_over_time(up[5m:1m] @ 100000000000000000 offset -5m)");
    let url = format!("http://{}/api/v1/query?query={far}&time=0", server.addr);
    let started = Instant::now();
    assert_eq!(common::get(&url).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_in_a_runs_samples_is_warned_of_and_fails_a_gate_on_its_figures() {
    let dir = temp_dir("hardening-garbage");
    let config = write_config(&dir, TINY);
    let store = dir.join("store");
    for _ in 0..2 {
        // Comparable whatever else the machine is doing: the gate is what is tested.
        let flags = ["--max-host-busy", "1", "--max-schedule-lag", "1s"];
        common::run_ok_with(&config, &store, &flags);
    }
    let mut ids: Vec<String> = std::fs::read_dir(store.join("tiny"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    let (a, b) = (format!("tiny/{}", ids[0]), format!("tiny/{}", ids[1]));
    let samples = store.join(&b).join("samples.jsonl");
    let good = std::fs::read(&samples).unwrap();
    let store_arg = store.to_str().unwrap();
    // The gate passes on the good runs, so what fails below is the garbage. Its bounds are
    // absolute (MiB, cores): a relative one fails on a node whose CPU went from 0 to 0.01.
    let bounds = "memory=1000,cpu=100";
    let gate = |extra: &[&str]| {
        let mut args = vec!["compare", "--store", store_arg, &a, &b];
        args.extend_from_slice(extra);
        run(&args, &[])
    };
    let out = gate(&["--max-regression", bounds]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for garbage in [
        b"\x00\xff\x13 random bytes, no format line".to_vec(),
        good[..good.len().min(3000)].to_vec(),
        [
            &good[..good.iter().position(|&c| c == b'\n').unwrap() + 1],
            b"NaN\n",
        ]
        .concat(),
    ] {
        std::fs::write(&samples, &garbage).unwrap();
        let out = gate(&["--max-regression", bounds]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning:") && stderr.contains("samples.jsonl"),
            "{stderr}"
        );
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("cannot be checked"), "{stdout}");
        let out = run(&["results", "show", "--store", store_arg, &b], &[]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("samples.jsonl"));
        let out = run(
            &[
                "report",
                "--store",
                store_arg,
                "--out",
                dir.join("report").to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("samples.jsonl"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_s3_error_never_prints_the_presigned_url() {
    let dir = temp_dir("hardening-s3-redact");
    let config = write_config(&dir, TINY);
    let endpoint = format!("http://127.0.0.1:{}", common::free_port());
    let spool = dir.join("spool");
    let out = run(
        &[
            "run",
            "--store",
            "s3://bucket/prefix",
            config.to_str().unwrap(),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDHARDENINGTEST"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("MESHLOAD_SPOOL", spool.to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kept in the spool"), "{stderr}");
    for secret in ["AKIDHARDENINGTEST", "X-Amz-Signature", "X-Amz-Credential"] {
        assert!(!stderr.contains(secret), "{secret} in {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_report_covers_the_latest_runs_unless_asked_for_every_one() {
    let dir = temp_dir("hardening-report-bound");
    let config = write_config(&dir, TINY);
    let store = dir.join("store");
    common::run_ok(&config, &store);
    let first = common::run_dir(&store, "tiny");
    // Two more runs, as if later: copies under later ids.
    for id in ["29990101000000", "29990101000001"] {
        let to = store.join("tiny").join(id);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&first).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    let report = dir.join("report");
    let out = run(
        &[
            "report",
            "--store",
            store.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
            "--latest",
            "2",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        html.contains("2 runs from") && html.contains("the latest 2 of 3"),
        "{html}"
    );
    assert!(
        html.contains("29990101000001")
            && !html.contains(&*first.file_name().unwrap().to_string_lossy())
    );
    let out = run(
        &[
            "report",
            "--store",
            store.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
            "--latest",
            "0",
        ],
        &[],
    );
    assert!(out.status.success());
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("3 runs from"), "{html}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_that_cannot_store_its_second_test_still_prints_the_first() {
    let dir = temp_dir("hardening-store-fails");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"a": []}, "ConnectivityCheckPerURL": 1, "sleep_between_tests": "0s",
            "load_tests": [{"test_name": "first", "target": "a", "qps": 20, "t": "1s", "c": 1},
                           {"test_name": "second", "target": "a", "qps": 20, "t": "1s", "c": 1}]}"#,
    );
    let store = dir.join("store");
    let (child, lines) = common::run_until(&config, &store, &[], "first complete");
    // The second test's folder becomes a file while it runs: it cannot be stored.
    let _ = std::fs::remove_dir_all(store.join("second"));
    std::fs::write(store.join("second"), "in the way").unwrap();
    let rest = lines.rest();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{rest:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("first") && stdout.contains("complete"),
        "{stdout}"
    );
    assert!(
        common::run_dir(&store, "first")
            .join("metadata.json")
            .exists()
    );
    let hidden: Vec<_> = std::fs::read_dir(store.join("first"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    assert!(hidden.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_rest_run_streaming_its_answer_is_busy_not_idle() {
    let node = NodeProc::start(&[]);
    let server = serve(&["--max-connections", "2", "--keepalive", "100ms"]);
    let url = encoded(&node.url());
    let addr = server.addr;
    // A run of 3 s: its answer streams spaces until the result.
    let run = tokio::spawn(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = http::Request::post(format!(
            "http://{addr}/fortio/rest/run?url={url}&qps=20&t=3s&c=1"
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
        let resp = client.request(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&bytes)
    });
    // The run has started once its answer's head came: wait for that event.
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::sample(
        &common::get(&format!("http://{}/metrics", node.addr))
            .await
            .body,
        "meshload_node_requests_total{code=\"200\"}",
    )
    .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "the run never started");
        tokio::task::yield_now().await;
    }
    // A keep-alive client, idle after one request: the second connection of two.
    let idle = tokio::task::spawn_blocking(move || {
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let status = status_of(&mut idle);
        (idle, status)
    });
    let (_idle, status) = idle.await.unwrap();
    assert_eq!(status, Some(200));
    // A third client: the idle one makes way for it, never the streaming run.
    let reply = common::get(&format!("http://{addr}/health")).await;
    assert_eq!(reply.status, 200);
    let result = run.await.unwrap().expect("the run's whole answer");
    assert_eq!(result["Interrupted"], false, "{result}");
    assert!(result["RetCodes"]["200"].as_u64().unwrap() > 0, "{result}");
}
