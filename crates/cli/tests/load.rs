//! `meshload load` end to end, against real `meshload node` processes on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{NodeProc, bin, run};
use serde_json::Value;

/// Runs `meshload load ARGS --json -` and returns the parsed result, checked against the
/// committed schema.
fn load_json(args: &[&str]) -> Value {
    let mut full = vec!["-q", "load", "--json", "-"];
    full.extend_from_slice(args);
    let out = run(&full, &[]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_valid(&value);
    value
}

fn assert_valid(value: &Value) {
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schema/fortio-result.schema.json"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "schema violations: {errors:#?}");
}

fn code(result: &Value, code: &str) -> u64 {
    result["RetCodes"][code].as_u64().unwrap_or(0)
}

fn percentile(hist: &Value, p: f64) -> f64 {
    hist["Percentiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["Percentile"].as_f64() == Some(p))
        .unwrap()["Value"]
        .as_f64()
        .unwrap()
}

#[test]
fn the_schema_rejects_a_broken_result() {
    let node = NodeProc::start(&[]);
    let mut r = load_json(&["-n", "3", "-c", "1", &node.url()]);
    r["ActualQPS"] = Value::from("fast");
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schema/fortio-result.schema.json"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    assert!(!jsonschema::validator_for(&schema).unwrap().is_valid(&r));
}

#[test]
fn exactly_n_requests_are_sent() {
    let node = NodeProc::start(&[]);
    let r = load_json(&["--qps", "0", "-c", "7", "-n", "1003", &node.url()]);
    assert_eq!(code(&r, "200"), 1003);
    assert_eq!(r["DurationHistogram"]["Count"], 1003);
    assert_eq!(r["RequestedQPS"], "max");
    assert_eq!(r["Exactly"], 1003);
    assert_eq!(r["NumThreads"], 7);
    assert_eq!(r["SocketCount"], 7, "keep-alive: one socket per connection");
    assert!(
        r["ScheduleLagHistogram"].is_null(),
        "no schedule at max rate"
    );
    let service = &r["DurationHistogram"];
    let response = &r["ResponseTimeHistogram"];
    assert_eq!(
        percentile(service, 99.0),
        percentile(response, 99.0),
        "unpaced: response = service"
    );
}

#[test]
fn paced_rate_is_close_to_the_requested_one() {
    let node = NodeProc::start(&[]);
    let r = load_json(&["--qps", "50", "-c", "2", "-t", "2s", &node.url()]);
    let count = code(&r, "200");
    assert!(
        (97..=102).contains(&count),
        "{count} requests at 50/s for 2s"
    );
    let qps = r["ActualQPS"].as_f64().unwrap();
    assert!((45.0..=55.0).contains(&qps), "ActualQPS {qps}");
    assert_eq!(r["RequestedQPS"], "50");
    let per_second: u64 = r["PerSecond"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        per_second, count,
        "the per-second series accounts for every request"
    );
    assert!(r["ScheduleLagHistogram"]["Count"].as_u64().unwrap() == count);
}

#[test]
fn injected_errors_are_counted_by_code() {
    let node = NodeProc::start(&["--error-rate", "0.5", "--seed", "3"]);
    let r = load_json(&["--qps", "0", "-c", "4", "-n", "200", &node.url()]);
    let (ok, failed) = (code(&r, "200"), code(&r, "500"));
    assert_eq!(ok + failed, 200);
    assert!(
        (60..=140).contains(&failed),
        "{failed} of 200 at a 50% error rate"
    );
    assert_eq!(r["ErrorsDurationHistogram"]["Count"].as_u64(), Some(failed));
}

#[test]
fn a_down_target_counts_minus_one_with_its_kind() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let r = load_json(&["--qps", "0", "-c", "2", "-n", "20", &url]);
    assert_eq!(code(&r, "-1"), 20);
    assert_eq!(r["ErrorKinds"]["refused"], 20);
    assert_eq!(r["DurationHistogram"]["Count"], 20);
}

#[test]
fn a_stalled_target_shows_far_more_in_corrected_percentiles() {
    let node = NodeProc::start(&[]);
    let pid = node.pid().to_string();
    let url = node.url();
    let addr = node.addr;
    let load =
        std::thread::spawn(move || load_json(&["--qps", "100", "-c", "2", "-t", "3s", &url]));
    // Stalled once a fifth of the test's requests are answered...
    common::wait_for("the load reached the node", || {
        common::node_served(addr) >= 60.0
    });
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // ...for a second: the stall itself, not a wait for something.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let r = load.join().unwrap();
    let service_p90 = percentile(&r["DurationHistogram"], 90.0);
    let response_p90 = percentile(&r["ResponseTimeHistogram"], 90.0);
    let lag_p90 = percentile(&r["ScheduleLagHistogram"], 90.0);
    assert!(service_p90 < 0.05, "service p90 {service_p90}s");
    assert!(response_p90 > 0.2, "response p90 {response_p90}s");
    assert!(lag_p90 > 0.2, "lag p90 {lag_p90}s");
    assert!(response_p90 > 10.0 * service_p90);
}

#[test]
fn fortio_single_dash_options_work() {
    let node = NodeProc::start(&[]);
    let r = load_json(&[
        "-qps",
        "200",
        "-uniform",
        "-jitter",
        "-stdclient",
        "-n",
        "20",
        "-c",
        "2",
        &node.url(),
    ]);
    assert_eq!(code(&r, "200"), 20);
    assert_eq!(r["Uniform"], true);
    assert_eq!(r["Jitter"], true);
}

#[test]
fn h2c_headers_and_payload_reach_the_node() {
    let node = NodeProc::start(&[]);
    let r = load_json(&[
        "--h2",
        "--payload",
        "hello",
        "-H",
        "X-Test: 1",
        "-n",
        "10",
        "-c",
        "1",
        &node.url(),
    ]);
    assert_eq!(code(&r, "200"), 10);
    assert_eq!(r["H2"], true);
}

/// A keep-alive HTTP/1.1 server on loopback, a thread per connection: for each request
/// (its body read by `Content-Length`), `answer(connection, body, socket)` writes what it
/// likes and says whether to go on. Returns the server's URL.
fn http1_server(
    answer: impl Fn(usize, &[u8], &mut std::net::TcpStream) -> bool + Send + Sync + 'static,
) -> String {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for (i, socket) in listener.incoming().enumerate() {
            let Ok(mut socket) = socket else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(socket.try_clone().unwrap());
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() || !answer(i, &body, &mut socket) {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn http1_payload_reaches_the_server_whole_on_every_request() {
    // 3 KiB, so head and body do not fit one small write by chance.
    let body: Vec<u8> = (0..3072u32).map(|i| b'a' + (i % 26) as u8).collect();
    let payload = String::from_utf8(body.clone()).unwrap();
    let url = http1_server(move |_, got, socket| {
        use std::io::Write;
        let status = if got == body {
            "200 OK"
        } else {
            "400 Bad Request"
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        socket.write_all(answer.as_bytes()).is_ok()
    });
    for client in [None, Some("--std-client")] {
        let mut args = vec!["--payload", &payload, "-n", "40", "-c", "2"];
        args.extend(client);
        args.push(&url);
        let r = load_json(&args);
        assert_eq!(code(&r, "200"), 40, "{client:?}: {}", r["RetCodes"]);
    }
}

#[test]
fn text_summary_shows_both_latencies() {
    let node = NodeProc::start(&[]);
    let out = run(
        &["-q", "load", "--qps", "100", "-n", "20", &node.url()],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "Achieved",
        "of requested",
        "200: 20",
        "service",
        "response",
        "lag",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
}

#[test]
fn bad_options_give_one_line_and_exit_64() {
    let cases: [&[&str]; 6] = [
        &["load", "--qps", "fast", "http://127.0.0.1:1/"],
        &["load", "-c", "0", "http://127.0.0.1:1/"],
        &["load", "ftp://127.0.0.1/"],
        &["load", "-H", "nocolon", "http://127.0.0.1:1/"],
        &["load", "-t", "soon", "http://127.0.0.1:1/"],
        &["load", "-p", "50,101", "http://127.0.0.1:1/"],
    ];
    for args in cases {
        let out = run(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn ctrl_c_keeps_what_was_measured_and_exits_130() {
    let node = NodeProc::start(&[]);
    let dir = std::env::temp_dir().join(format!("meshload-load-int-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let mut child = bin()
        .args(["-q", "load", "--qps", "100", "-t", "30s", "--json"])
        .arg(&json)
        .arg(node.url())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for("the load reached the node", || {
        common::node_served(node.addr) >= 50.0
    });
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_valid(&r);
    assert_eq!(r["Interrupted"], true);
    let count = code(&r, "200");
    assert!(
        (40..=160).contains(&count),
        "{count} requests, interrupted once the node had answered 50 (some in flight)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_timed_run_ends_on_time_even_when_the_target_cannot_keep_up() {
    // 20 req/s at most (50 ms each, one connection) against 200 requested: the backlog of
    // due requests is not sent after the 1 s duration.
    let node = NodeProc::start(&["--latency", "50ms"]);
    let started = std::time::Instant::now();
    let r = load_json(&["--qps", "200", "-c", "1", "-t", "1s", &node.url()]);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    let count = code(&r, "200");
    assert!(
        (15..=22).contains(&count),
        "{count} requests in 1 s at 50 ms each"
    );
    let actual_ns = r["ActualDuration"].as_u64().unwrap();
    assert!(actual_ns < 1_200_000_000, "ActualDuration {actual_ns} ns");
}

/// `ActualQPS` against the requested rate.
fn rate_ratio(result: &Value, requested: f64) -> f64 {
    result["ActualQPS"].as_f64().unwrap() / requested
}

#[test]
fn short_tests_and_request_counts_report_the_requested_rate() {
    let node = NodeProc::start(&[]);
    let url = node.url();
    // The default 8 req/s for 2 s: 16 requests over 2 s, not over the 1.875 s to the
    // last send (which reported 133% of the rate).
    let r = load_json(&["-t", "2s", &url]);
    assert_eq!(code(&r, "200"), 16);
    assert!(
        (rate_ratio(&r, 8.0) - 1.0).abs() < 0.02,
        "{}",
        r["ActualQPS"]
    );
    let r = load_json(&["--qps", "1", "-c", "1", "-t", "5s", &url]);
    assert!(
        (rate_ratio(&r, 1.0) - 1.0).abs() < 0.02,
        "{}",
        r["ActualQPS"]
    );
    let r = load_json(&["--qps", "50", "-n", "40", &url]);
    assert_eq!(code(&r, "200"), 40);
    assert!(
        (rate_ratio(&r, 50.0) - 1.0).abs() < 0.02,
        "{}",
        r["ActualQPS"]
    );
}

#[test]
fn more_connections_than_the_rate_still_hold_the_rate() {
    let node = NodeProc::start(&[]);
    let url = node.url();
    // 10 requests over 100 connections at 8 req/s take 1.25 s, not 6 ms.
    let out = run(&["load", "--json", "-", "-n", "10", "-c", "100", &url], &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("c=100 is more connections than 8 req/s"),
        "{stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (rate_ratio(&r, 8.0) - 1.0).abs() < 0.02,
        "{}",
        r["ActualQPS"]
    );
    let span = percentile(&r["ResponseTimeHistogram"], 50.0);
    assert!(span < 0.5, "requests were not sent late: {span}");
    // 1 s at 10 req/s with 200 connections: 10 requests, not one per connection.
    let r = load_json(&["--qps", "10", "-c", "200", "-t", "1s", &url]);
    assert_eq!(code(&r, "200"), 10, "{}", r["RetCodes"]);
}

/// nginx on loopback (a server none of us wrote), as HTTP/1.1 servers commonly run:
/// `/page.txt` framed by `Content-Length`, `/gz/page.txt` gzipped and so chunked, `/none`
/// a 204; every 5th answer on a connection closes it (`keepalive_requests 5`), and a
/// connection idle for 100 ms is closed (`keepalive_timeout 100ms`).
struct Nginx {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start() -> Nginx {
        let port = common::free_port();
        // A folder of its own: tests run side by side in one process.
        let dir = common::temp_dir(&format!("nginx-{port}"));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let page: String = (0..2000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        std::fs::write(dir.join("www/page.txt"), page).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1;
             error_log {d}/error.log; pid {d}/nginx.pid;
             events {{ worker_connections 256; }}
             http {{
               access_log off; default_type text/plain;
               client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
               fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
               keepalive_requests 5; keepalive_timeout 100ms;
               server {{
                 listen 127.0.0.1:{port};
                 root {d}/www;
                 location = /none {{ return 204; }}
                 location /gz/ {{ alias {d}/www/; gzip on; gzip_min_length 0; gzip_types *; }}
               }}
             }}"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian package nginx; scripts/test installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port, dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fast HTTP/1.1 exchange reads what nginx sends as hyper's client does: the same
/// answers and sizes, and a new socket whenever nginx closes one.
#[test]
fn the_fast_client_reads_nginx_as_hypers_client_does() {
    let nginx = Nginx::start();
    let page = nginx.url("/page.txt");
    // As fast as it goes: at the default 8 req/s nginx would close each idle connection.
    let fast = load_json(&["--qps", "0", "-n", "30", "-c", "1", &page]);
    let std = load_json(&["--std-client", "--qps", "0", "-n", "30", "-c", "1", &page]);
    for r in [&fast, &std] {
        assert_eq!(code(r, "200"), 30, "{}", r["RetCodes"]);
        // nginx closes every 5th answer's connection: 6 sockets, no failed request.
        assert_eq!(r["SocketCount"], 6, "{}", r["SocketCount"]);
    }
    // hyper's client counts the head from the headers it parsed (nginx writes them in the
    // usual form) and the body it collected; the fast one counts the bytes read.
    assert_eq!(fast["Sizes"]["Avg"], std["Sizes"]["Avg"]);
    assert!(fast["Sizes"]["Avg"].as_f64().unwrap() > 2000.0);
    assert_eq!(fast["HeaderSizes"]["Avg"], std["HeaderSizes"]["Avg"]);

    let gzip = [
        "-H",
        "Accept-Encoding: gzip",
        "--qps",
        "0",
        "-n",
        "20",
        "-c",
        "2",
    ];
    let url = nginx.url("/gz/page.txt");
    let chunked = load_json(&[&gzip[..], &[url.as_str()]].concat());
    assert_eq!(code(&chunked, "200"), 20, "{}", chunked["RetCodes"]);
    assert_eq!(chunked["SocketCount"], 4);
    // Compressed, the page of 2,000 repeating letters is far smaller than it.
    assert!(chunked["Sizes"]["Avg"].as_f64().unwrap() < 1000.0);

    let none = load_json(&["--qps", "0", "-n", "10", "-c", "1", &nginx.url("/none")]);
    assert_eq!(code(&none, "204"), 10, "{}", none["RetCodes"]);
    assert_eq!(none["SocketCount"], 2);
}

/// A connection the server closed while it was idle is reopened before the next request
/// rather than written to and counted as an error.
#[test]
fn connections_closed_while_idle_are_reopened_without_errors() {
    let nginx = Nginx::start();
    // 5 req/s on one connection: 200 ms between requests, nginx closes after 100 ms.
    for client in [None, Some("--std-client")] {
        let mut args = vec!["--qps", "5", "-c", "1", "-n", "4"];
        args.extend(client);
        let url = nginx.url("/page.txt");
        args.push(&url);
        let r = load_json(&args);
        assert_eq!(code(&r, "200"), 4, "{client:?}: {}", r["RetCodes"]);
        assert_eq!(r["SocketCount"], 4, "{client:?}");
    }
}

/// Bytes a server sends while its connection is idle answer no request: the connection is
/// replaced rather than the bytes taken for the next request's answer.
#[test]
fn bytes_sent_while_idle_are_not_taken_for_the_next_answer() {
    let url = http1_server(|connection, _, socket| {
        use std::io::Write;
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if socket.write_all(ok).is_err() {
            return false;
        }
        if connection == 0 {
            // The first connection's server then speaks out of turn.
            std::thread::sleep(Duration::from_millis(50));
            let _ = socket.write_all(b"HTTP/1.1 500 Stale\r\ncontent-length: 0\r\n\r\n");
        }
        true
    });
    // 5 req/s: 200 ms between requests, the stray answer comes 50 ms after the first.
    let r = load_json(&["--qps", "5", "-c", "1", "-n", "3", &url]);
    assert_eq!(code(&r, "200"), 3, "{}", r["RetCodes"]);
    assert_eq!(r["SocketCount"], 2);
}
