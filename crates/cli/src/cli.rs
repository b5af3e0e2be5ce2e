//! The command line: every command, flag and help text.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meshload_node::behaviour::{ErrorRate, Latency};
use meshload_node::config::{self, Backend, CallMode};

/// meshload: what does your service mesh cost under load?
///
/// meshload brings a microservice topology up, drives load through it with its own load
/// generator, measures latency, errors, memory and CPU, and stores every run.
#[derive(Debug, Parser)]
#[command(
    name = "meshload",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
#[command(after_help = "\
Examples:
  meshload node --listen 127.0.0.1:9080 --backends 127.0.0.1:9081,127.0.0.1:9082
  meshload node --help

Exit codes: 0 ok, 1 a threshold failed, 2 runtime error, 64 usage or configuration error,
130 interrupted.")]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every meshload command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node service that every topology node runs.
    Node(NodeArgs),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 500ms, 3s or 1m30s)"))
}

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
    /// Size in bytes of a successful response body (padded JSON).
    #[arg(
        long,
        value_name = "BYTES",
        env = "MESHLOAD_RESPONSE_SIZE",
        default_value_t = 0
    )]
    pub response_size: usize,
    /// Seed of injected latency and errors: the same seed gives the same n-th request fate.
    /// Default: random, logged at start.
    #[arg(long, env = "MESHLOAD_SEED")]
    pub seed: Option<u64>,
    /// Timeout of each backend call (connect, response and body).
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How backends are called: parallel or sequential.
    #[arg(
        long,
        value_name = "MODE",
        env = "MESHLOAD_CALL_MODE",
        default_value = "parallel"
    )]
    pub call_mode: CallMode,
    /// Connections served at once.
    #[arg(long, value_name = "N", env = "MESHLOAD_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest request head accepted, in bytes (at least 8192 for HTTP/1.1).
    #[arg(long, value_name = "BYTES", env = "MESHLOAD_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Longest time one request may take, backend calls included, before a 504.
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest wait for in-flight requests when stopping.
    #[arg(long, value_name = "DURATION", env = "MESHLOAD_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}
