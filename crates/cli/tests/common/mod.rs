//! Helpers for tests that run the real `meshload` binary against real servers on loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshload"))
}

/// The node-only binary (`meshload node` alone).
pub fn node_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshload-node"))
}

/// Runs the binary to completion with a bounded wait.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A `meshload node` child process on a free loopback port; killed when dropped.
pub struct NodeProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl NodeProc {
    /// Starts `meshload node --listen 127.0.0.1:0 ARGS...` and waits until it listens.
    pub fn start(args: &[&str]) -> NodeProc {
        Self::start_with_env(args, &[])
    }

    /// As [`NodeProc::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let mut full = vec!["-q", "node", "--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        Self::spawn(&full, env)
    }

    /// Starts any meshload server command that prints `listening on http://ADDR` first.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> NodeProc {
        Self::spawn_program(bin(), args, env)
    }

    /// Starts `meshload-node --listen 127.0.0.1:0 ARGS...` (the node-only binary).
    pub fn start_node_binary(args: &[&str]) -> NodeProc {
        let mut full = vec!["-q", "--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        Self::spawn_program(node_bin(), &full, &[])
    }

    fn spawn_program(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> NodeProc {
        cmd.args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("node did not start: stdout {line:?}, stderr {err:?}");
        };
        NodeProc {
            addr: addr.parse().unwrap(),
            child,
        }
    }

    /// `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `ADDR` as a backend entry.
    pub fn backend(&self) -> String {
        self.addr.to_string()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(status.unwrap().success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as tests look at it.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// GET `url` with extra headers over HTTP/1.1 (or h2c with `h2`), 10 s at most.
pub async fn get_with(url: &str, headers: &[(&str, &str)], h2: bool) -> Reply {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<Empty<Bytes>>();
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let fut = async {
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("request took over 10s")
}

/// GET `url` over HTTP/1.1.
pub async fn get(url: &str) -> Reply {
    get_with(url, &[], false).await
}

/// The value of one sample line (`name{labels} value`) in a text exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A fresh folder for one test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `config.json` into `dir`.
pub fn write_config(dir: &std::path::Path, json: &str) -> std::path::PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    path
}

/// `meshload run --store STORE CONFIG`, which must succeed.
pub fn run_ok(config: &std::path::Path, store: &std::path::Path) -> Output {
    run_ok_with(config, store, &[])
}

/// `meshload run FLAGS --store STORE CONFIG`, which must succeed.
pub fn run_ok_with(config: &std::path::Path, store: &std::path::Path, flags: &[&str]) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["--store", store.to_str().unwrap(), config.to_str().unwrap()]);
    let out = run(&args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The only run folder of a test.
pub fn run_dir(store: &std::path::Path, test: &str) -> std::path::PathBuf {
    let runs: Vec<std::path::PathBuf> = std::fs::read_dir(store.join(test))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// A JSON file.
pub fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A loopback port that was free a moment ago, for a process a test starts: the runner's
/// choice (below the ephemeral range, where `bind(:0)` would race the tests' own
/// connections).
pub fn free_port() -> u16 {
    meshload_runner::ports::free_port().unwrap().port()
}

/// A file or folder under the team's shared folder: `$MESHLOAD_SHARED` when set, otherwise
/// `shared/` beside the checkout. Panics naming the path when it is missing.
pub fn shared(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("MESHLOAD_SHARED").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
        std::path::PathBuf::from,
    );
    let path = root.join(rel);
    assert!(
        path.exists(),
        "{} is missing: these tests read the shared folder beside the checkout \
         (or set MESHLOAD_SHARED to it)",
        path.display()
    );
    path
}

/// A Prometheus server (the Debian binary scripts/test installs), killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://ADDR`.
    pub url: String,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts Prometheus scraping `target` every second as job `job`, with `labels` (YAML
/// flow mapping, e.g. `{pod: node-0-abcde-0}`) on its series.
pub fn start_prometheus(job: &str, target: SocketAddr, labels: &str) -> Prometheus {
    start_prometheus_jobs(&[(job, target, labels)])
}

/// Starts Prometheus scraping every (job, target, labels) every second.
pub fn start_prometheus_jobs(jobs: &[(&str, SocketAddr, &str)]) -> Prometheus {
    // One folder per server: tests run in parallel.
    let dir = temp_dir(&format!("prometheus-{}", jobs[0].1.port()));
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, target, labels) in jobs {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n        labels: {labels}\n"
        ));
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the prometheus binary is installed by scripts/test (Debian package prometheus)");
    Prometheus {
        child,
        addr,
        url: format!("http://{addr}"),
        dir,
    }
}

/// `meshload report --store STORE --out OUT`, which must succeed; the page it wrote.
pub fn report_page(store: &std::path::Path, out: &std::path::Path) -> String {
    let done = run(
        &[
            "report",
            "--store",
            store.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    std::fs::read_to_string(out.join("index.html")).unwrap()
}

/// Starts `meshload run FLAGS --store STORE CONFIG` and waits for the first line of its
/// stderr that contains `event` (a test starting, finishing, its metrics being
/// evaluated): the child, and its stderr. Panics if stderr ends first.
pub fn run_until(
    config: &std::path::Path,
    store: &std::path::Path,
    flags: &[&str],
    event: &str,
) -> (Child, StderrLines) {
    let mut child = bin()
        .arg("run")
        .args(flags)
        .arg("--store")
        .arg(store)
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = StderrLines::of(&mut child);
    lines.wait_for(event);
    (child, lines)
}

/// The longest any test waits for an event: a deadline that fails the test, not a pace.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(90);

/// How often a wait for an event looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `happened` until it holds, every [`POLL`]; panics naming `what` after
/// [`EVENT_DEADLINE`].
pub fn wait_for(what: &str, mut happened: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    while !happened() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// The body of `GET path` from `addr`, over a connection of its own (closed after);
/// `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// One series of a node's metrics (`meshload_node_requests_total{code="200"}`); `None`
/// when the node does not answer or has no such series yet.
pub fn node_metric(addr: SocketAddr, series: &str) -> Option<f64> {
    sample(&http_get(addr, "/metrics")?, series)
}

/// The requests a node has answered with 200.
pub fn node_served(addr: SocketAddr) -> f64 {
    node_metric(addr, "meshload_node_requests_total{code=\"200\"}").unwrap_or(0.0)
}

/// The TCP sockets of process `pid`, from `/proc`: (local port, remote port, state as
/// the kernel writes it: `0A` listening, `01` established).
pub fn tcp_sockets(pid: u32) -> Vec<(u16, u16, String)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| {
                let link = std::fs::read_link(fd.ok()?.path()).ok()?;
                let link = link.to_string_lossy();
                Some(
                    link.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string(),
                )
            })
            .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st, ..., inode.
            let (local, remote, state, inode) = (
                fields.get(1)?,
                fields.get(2)?,
                fields.get(3)?,
                fields.get(9)?,
            );
            inodes
                .iter()
                .any(|i| i == inode)
                .then(|| Some((port(local)?, port(remote)?, state.to_string())))?
        })
        .collect()
}

/// The loopback TCP ports process `pid` listens on (a node that meshload started on port
/// 0 says its port nowhere else).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    tcp_sockets(pid)
        .into_iter()
        .filter(|(_, _, state)| state == "0A")
        .map(|(port, _, _)| port)
        .collect()
}

/// How many connections process `pid` has open to `port`.
pub fn connections_to(pid: u32, port: u16) -> usize {
    tcp_sockets(pid)
        .into_iter()
        .filter(|(_, remote, state)| *remote == port && state == "01")
        .count()
}

/// A child's stderr read on a thread, line by line (so that the child never blocks on a
/// full pipe), for tests that wait for what it says.
pub struct StderrLines {
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl StderrLines {
    /// Takes `child`'s stderr, which must be piped.
    pub fn of(child: &mut Child) -> StderrLines {
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end even when nobody listens any more.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        StderrLines {
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that contains `event`; panics with what was said if stderr ends or
    /// [`EVENT_DEADLINE`] passes first.
    pub fn wait_for(&mut self, event: &str) {
        let deadline = std::time::Instant::now() + EVENT_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(event);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => panic!("no line with {event:?} ({e}): {:#?}", self.seen),
            }
        }
    }

    /// Every line until the child (and whatever inherited its stderr) closes it, or
    /// [`EVENT_DEADLINE`] passes.
    pub fn rest(mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + EVENT_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return self.seen,
            }
        }
    }
}
