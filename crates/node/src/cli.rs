//! A node as a process: `meshload node`'s flags (shared by the `meshload-node` binary),
//! and [`serve`], which runs one until SIGINT, SIGTERM or its parent's end (the plumbing
//! every meshload process shares is `meshload_process`'s).
//!
//! The flags live here rather than in the `meshload` binary so that `meshload-node`, the
//! node alone (a binary without the Kubernetes, S3, plotting and PromQL code, so a node's
//! resident memory is mostly its own), parses exactly what `meshload node` parses.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use meshload_config::reader::duration_arg;
use meshload_process::lifecycle::{orphaned, runtime, shutdown_signal};

use crate::behaviour::{Behaviour, ErrorRate, Latency};
use crate::config::{self, Backend, CallMode};
use crate::{Limits, NodeConfig, Server};

/// Build identity of the node code: the crate version and a hash of the node crate's
/// sources (from `build.rs`). `meshload` starts nodes with a `meshload-node` found beside
/// it only when that binary reports the same identity, so a stale one is never used.
pub const BUILD: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (node sources ",
    env!("MESHLOAD_NODE_SOURCES"),
    ")"
);

/// A comma-separated backend list (a newtype: clap would read a `Vec` as a repeated flag).
#[derive(Debug, Clone)]
pub struct BackendList(pub Vec<Backend>);

fn parse_backend_list(s: &str) -> Result<BackendList, String> {
    config::parse_backends(s)
        .map(BackendList)
        .map_err(|e| e.to_string())
}

/// `meshload node`: the seed's request handler, rebuilt.
#[derive(Debug, Args)]
#[command(
    about = "Run the node service that every topology node runs",
    long_about = "Run the node service that every topology node runs.

On any path but /health and /metrics the node calls each of its backends and answers 200 if \
every backend answered 200, else 500 with a JSON body naming the backends that failed and why \
(timeouts, refused connections and resets are failures). With no backends it answers 200.
GET /health answers 200 while the node serves; GET /metrics answers Prometheus text.
HTTP/1.1 and h2c are served on the same port. SIGTERM or Ctrl-C stops it after in-flight \
requests finish.

Every flag can also be set from the environment (shown as [env: ...]); flags win. BACKENDS is \
read as the seed's request handler read it.

The first line on stdout is `listening on http://ADDR`, so a parent process that asked for \
port 0 learns the port.",
    after_help = "\
Examples:
  # A leaf node on the seed's port
  meshload node --name 2

  # Node 0 calling nodes 1 and 2 in parallel, each call timing out after 500ms
  meshload node --name 0 --listen 127.0.0.1:9080 \\
      --backends http://127.0.0.1:9081/,http://127.0.0.1:9082/ --timeout 500ms

  # A slow, flaky leaf: 5-15ms added latency, 1% of requests fail with 503, reproducibly
  meshload node --latency uniform:5ms..15ms --error-rate 0.01 --error-code 503 --seed 42

  # Seed style: settings from the environment
  BACKENDS=service-1.tls-e2e.svc.cluster.local:9080 meshload node"
)]
pub struct NodeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(
        long,
        value_name = "ADDR",
        env = "MESHLOAD_LISTEN",
        default_value = "0.0.0.0:9080"
    )]
    pub listen: SocketAddr,
    /// Node name, reported in response bodies and logs.
    #[arg(long, env = "MESHLOAD_NAME", default_value = "node")]
    pub name: String,
    /// Backends called on every request: comma-separated http://HOST:PORT/PATH or HOST:PORT.
    #[arg(long, value_name = "URL,...", env = "BACKENDS", value_parser = parse_backend_list, default_value = "")]
    pub backends: BackendList,
    /// Added latency: a duration (10ms), uniform:MIN..MAX, normal:MEAN,STDDEV or exp:MEAN.
    #[arg(
        long,
        value_name = "SPEC",
        env = "MESHLOAD_LATENCY",
        default_value = "none"
    )]
    pub latency: Latency,
    /// Fraction of requests that fail with --error-code without calling backends (0.01 or 1%).
    #[arg(
        long,
        value_name = "P",
        env = "MESHLOAD_ERROR_RATE",
        default_value = "0"
    )]
    pub error_rate: ErrorRate,
    /// Status code of injected errors.
    #[arg(long, value_name = "CODE", env = "MESHLOAD_ERROR_CODE", default_value_t = 500,
          value_parser = clap::value_parser!(u16).range(100..=599))]
    pub error_code: u16,
    /// Size in bytes of a successful response body (padded JSON), at most 1 GiB.
    #[arg(
        long,
        value_name = "BYTES",
        env = "MESHLOAD_RESPONSE_SIZE",
        default_value_t = 0,
        value_parser = parse_response_size
    )]
    pub response_size: usize,
    /// Seed of injected latency and errors: the same seed gives the same n-th request fate.
    /// Default: random, logged at start.
    #[arg(long, env = "MESHLOAD_SEED")]
    pub seed: Option<u64>,
    /// Timeout of each backend call (connect, response and body).
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_TIMEOUT", default_value = "3s", value_parser = duration_arg)]
    pub timeout: Duration,
    /// How backends are called: parallel or sequential.
    #[arg(
        long,
        value_name = "MODE",
        env = "MESHLOAD_CALL_MODE",
        default_value = "parallel"
    )]
    pub call_mode: CallMode,
    /// Connections served at once. At the limit, an idle or silent connection makes way
    /// for a new client; when all are busy, new clients wait in the listen backlog.
    #[arg(long, value_name = "N", env = "MESHLOAD_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest request head accepted, in bytes (at least 8192 for HTTP/1.1).
    #[arg(long, value_name = "BYTES", env = "MESHLOAD_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Longest time one request may take, backend calls included, before a 504.
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration_arg)]
    pub request_timeout: Duration,
    /// Time a new connection has to send a whole request head; a silent or slow client is
    /// disconnected after it.
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may stay idle between requests. At --max-connections,
    /// the longest-idle connection is closed at once to make way for a new client.
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_IDLE_TIMEOUT", default_value = "5m", value_parser = duration_arg)]
    pub idle_timeout: Duration,
    /// Time a client has to send a request body once its head arrived, before a 408.
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_BODY_READ_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub body_read_timeout: Duration,
    /// Pin a backend's HOST:PORT to addresses (its replicas), called round-robin with the
    /// name kept as Host, like a Kubernetes Service: HOST:PORT=ADDR[,ADDR...] (repeatable;
    /// in the environment, entries are separated by `;`).
    #[arg(
        long,
        value_name = "HOST:PORT=ADDRS",
        env = "MESHLOAD_RESOLVE",
        value_delimiter = ';'
    )]
    pub resolve: Vec<crate::Resolve>,
    /// Longest wait for in-flight requests when stopping.
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub drain_timeout: Duration,
    /// Serve at most this many requests per second (a target of known capacity, for
    /// `meshload search` to find); beyond it see --capacity-mode.
    #[arg(long, value_name = "RATE", env = "MESHLOAD_CAPACITY", value_parser = parse_capacity)]
    pub capacity: Option<f64>,
    /// Beyond --capacity: `reject` answers 503 at once (a rate limiter), `queue` serves
    /// one request at a time, 1/RATE each (a single worker: response times grow).
    #[arg(
        long,
        value_name = "MODE",
        env = "MESHLOAD_CAPACITY_MODE",
        default_value = "reject"
    )]
    pub capacity_mode: crate::capacity::Mode,
}

fn parse_response_size(s: &str) -> Result<usize, String> {
    let bytes = s
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    meshload_config::limits::response_size(bytes).map(|b| b as usize)
}

fn parse_capacity(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive rate (requests per second)"
        )),
    }
}

impl NodeArgs {
    /// The node's settings (a random seed is drawn from the clock when none was given).
    pub fn into_config(self) -> NodeConfig {
        let seed = self.seed.unwrap_or_else(clock_seed);
        let mut backends = self.backends.0;
        config::apply_resolves(&mut backends, &self.resolve);
        NodeConfig {
            name: self.name,
            listen: self.listen,
            backends,
            call_mode: self.call_mode,
            call_timeout: self.timeout,
            behaviour: Behaviour {
                latency: self.latency,
                error_rate: self.error_rate,
                error_code: self.error_code,
                response_size_bytes: self.response_size,
                seed,
            },
            capacity: self.capacity.map(|rate| crate::capacity::Capacity {
                rate,
                mode: self.capacity_mode,
            }),
            limits: Limits {
                max_connections: self.max_connections as usize,
                max_header_bytes: self.max_header_bytes,
                request_timeout: self.request_timeout,
                header_read_timeout: self.header_read_timeout,
                idle_timeout: self.idle_timeout,
                body_read_timeout: self.body_read_timeout,
                drain_timeout: self.drain_timeout,
            },
        }
    }
}

/// A seed from the clock, for runs that did not ask for one (it is logged).
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Why a node process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The node could not start: its address could not be bound. (Once bound, a node
    /// serves until it is stopped: a failed accept or connection is logged, not fatal.)
    #[error("cannot start the node")]
    Start(#[source] crate::NodeError),
    /// The first line (the bound address) could not be written.
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
}

/// Runs a node until SIGINT, SIGTERM, or the death of the parent named in
/// [`meshload_process::lifecycle::PARENT_PID_ENV`]: the whole of `meshload node` and of `meshload-node`.
pub fn serve(args: NodeArgs) -> Result<(), RunError> {
    let config = args.into_config();
    let runtime = runtime().map_err(RunError::Runtime)?;
    let drain = config.limits.drain_timeout;
    let served = runtime.block_on(async move {
        let name = config.name.clone();
        let backends: Vec<String> = config.backends.iter().map(ToString::to_string).collect();
        let seed = config.behaviour.seed;
        let server = Server::bind(config).await.map_err(RunError::Start)?;
        let addr = server.local_addr();
        // The first stdout line tells a parent process (or a script) the bound port.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}").map_err(RunError::Stdout)?;
        stdout.flush().map_err(RunError::Stdout)?;
        drop(stdout);
        tracing::info!(node = %name, %addr, ?backends, seed, "node serving");
        let stop = async {
            tokio::select! {
                () = shutdown_signal() => {}
                () = orphaned() => {}
            }
            exit_after(drain + SHUTDOWN_MARGIN);
        };
        server.run(stop).await;
        Ok(())
    });
    // Tasks still holding connections are dropped here, without waiting for them.
    runtime.shutdown_timeout(SHUTDOWN_MARGIN);
    served
}

/// How long a stopping node may take beyond its drain timeout before it exits anyway.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// Ends the process after `limit` whatever the runtime is doing: a stop, once asked for,
/// always ends (a runtime thread blocked or swamped by a connection flood cannot hold it,
/// and a second SIGTERM, which the signal handler swallows, is not needed).
fn exit_after(limit: Duration) {
    let watchdog = std::thread::Builder::new()
        .name("node-stop-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(?limit, "stopping took longer than this; exiting now");
            std::process::exit(1);
        });
    if let Err(e) = watchdog {
        tracing::warn!(error = %e, "cannot start the stop watchdog");
    }
}
