//! `meshload load` and `meshload serve` against an `https://` target: a real Envoy on
//! loopback terminates TLS (with a certificate from a CA made here, offering h2 and
//! http/1.1 by ALPN) in front of a `meshload node`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeProc, free_port, run, temp_dir};
use meshload_runner::mesh::certs::RunCa;
use serde_json::{Value, json};

/// An Envoy serving `https://localhost:PORT/` in front of a node; killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
    _node: NodeProc,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TlsServer {
    fn start(name: &str, alpn: &[&str]) -> TlsServer {
        let node = NodeProc::start(&[]);
        let dir = temp_dir(name);
        let ca = RunCa::new(&dir).unwrap();
        let files = ca.issue("server", "localhost").unwrap();
        let (port, admin) = (free_port(), free_port());
        let socket =
            |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
        let config = json!({
            "admin": {"address": socket(admin)},
            "static_resources": {
                "listeners": [{
                    "name": "https",
                    "address": socket(port),
                    "filter_chains": [{
                        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "common_tls_context": {
                                "alpn_protocols": alpn,
                                "tls_certificates": [{"certificate_chain": {"filename": files.cert}, "private_key": {"filename": files.key}}],
                            },
                        }},
                        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "https", "codec_type": "AUTO",
                            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "node"}}]}]},
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                        }}],
                    }],
                }],
                "clusters": [{"name": "node", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "node", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": socket(node.addr.port())}}]}]}}],
            },
        });
        let path = dir.join("envoy.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let envoy =
            meshload_runner::mesh::envoy::find(None).expect("envoy (scripts/test installs it)");
        let child = Command::new(envoy)
            .args([
                "--disable-hot-restart",
                "--log-level",
                "error",
                "--concurrency",
                "1",
                "-c",
            ])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "envoy did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsServer {
            child,
            port,
            dir,
            _node: node,
        }
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/", self.port)
    }
}

fn load(args: &[&str]) -> (Option<i32>, Value, String) {
    let mut full = vec!["load", "--json", "-", "-n", "20", "-c", "2"];
    full.extend_from_slice(args);
    let out = run(&full, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), value, stderr)
}

#[test]
fn https_is_trusted_by_cacert_or_k_and_refused_otherwise_with_the_reason() {
    let server = TlsServer::start("https-trust", &["h2", "http/1.1"]);
    let url = server.url("localhost");
    let ca = server.ca();
    // Trusted through --cacert: h2 negotiated, handshakes measured apart.
    let (code, r, stderr) = load(&["--cacert", &ca, &url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(r["RetCodes"]["200"], 20, "{r}");
    assert_eq!(r["AlpnProtocols"]["h2"], r["SocketCount"], "{r}");
    assert!(
        r["TlsHandshakeHistogram"]["Count"].as_u64().unwrap() >= 2,
        "{r}"
    );
    assert!(r["ConnectionStats"]["Count"].as_u64().unwrap() >= 2, "{r}");
    // Accepted with -k.
    let (code, r, stderr) = load(&["-k", &url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(r["RetCodes"]["200"], 20, "{r}");
    // Refused without either: one line naming the host and the reason, nothing counted.
    let (code, r, stderr) = load(&[&url]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(r.is_null());
    assert!(
        stderr.contains("TLS to localhost: certificate refused: unknown issuer"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // A name the certificate does not carry.
    let (code, _, stderr) = load(&["--cacert", &ca, &server.url("127.0.0.1")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("TLS to 127.0.0.1: certificate refused: wrong name"),
        "{stderr}"
    );
}

#[test]
fn alpn_falls_back_to_http1_and_h2_can_be_required() {
    let server = TlsServer::start("https-h1", &["http/1.1"]);
    let url = server.url("localhost");
    let (code, r, stderr) = load(&["--cacert", &server.ca(), &url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(r["AlpnProtocols"]["http/1.1"], r["SocketCount"], "{r}");
    // --h2 offers only h2, which this server does not choose; HTTP/2 is spoken anyway
    // (Envoy's automatic codec takes its preface).
    let (code, r, stderr) = load(&["--cacert", &server.ca(), "--h2", &url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(r["AlpnProtocols"]["none"], r["SocketCount"], "{r}");
    assert_eq!(r["RetCodes"]["200"], 20, "{r}");
}

#[test]
fn the_rest_server_takes_https_urls_too() {
    let server = TlsServer::start("https-rest", &["h2", "http/1.1"]);
    // The CA travels as PEM text in the request, or is the server's own --cacert.
    let pem = std::fs::read_to_string(server.ca()).unwrap();
    let body =
        json!({"url": server.url("localhost"), "qps": "-1", "n": "10", "c": "1", "cacert": pem});
    let rest = NodeProc::spawn(&["-q", "serve", "--listen", "127.0.0.1:0"], &[]);
    let post = |rest: &NodeProc, body: &Value| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-d", &body.to_string()])
            .arg(format!("http://{}/fortio/rest/run", rest.addr))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let answer = post(&rest, &body);
    assert_eq!(answer["RetCodes"]["200"], 10, "{answer}");
    let without = json!({"url": server.url("localhost"), "qps": "-1", "n": "10", "c": "1"});
    let answer = post(&rest, &without);
    assert!(
        answer["error"].as_str().unwrap().contains("unknown issuer"),
        "{answer}"
    );
    let trusting = NodeProc::spawn(
        &[
            "-q",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cacert",
            &server.ca(),
        ],
        &[],
    );
    let answer = post(&trusting, &without);
    assert_eq!(answer["RetCodes"]["200"], 10, "{answer}");
}
