//! `meshload-node`: `meshload node` alone, in a binary without the Kubernetes, S3,
//! plotting and PromQL code, so that a node's resident memory is mostly its own.
//! `meshload run` starts its local nodes with it when it sits beside `meshload` and
//! reports the same node build (`--version`).

// Only the binaries print: the libraries deny printing and log with `tracing`.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use meshload_node::cli::NodeArgs;

/// The node service that every meshload topology node runs (`meshload node`, alone).
#[derive(Debug, Parser)]
#[command(
    name = "meshload-node",
    version = meshload_node::cli::BUILD,
    about = "The node service that every meshload topology node runs",
    long_about = "The node service that every meshload topology node runs: `meshload node` \
in a binary of its own, without the rest of meshload, so a node takes less memory. It takes \
the same flags and environment as `meshload node` (see `meshload node --help` for what a \
node does); `meshload run` uses it for local nodes when it is installed beside `meshload`.",
    after_help = "\
Examples:
  # Node 0 calling nodes 1 and 2 in parallel
  meshload-node --name 0 --listen 127.0.0.1:9080 \\
      --backends http://127.0.0.1:9081/,http://127.0.0.1:9082/

Exit codes: 0 stopped by SIGINT or SIGTERM, 2 runtime error, 64 usage error."
)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    #[command(flatten)]
    node: NodeArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return meshload_process::exit::usage_error(&err),
    };
    meshload_process::logging::init_tracing(cli.verbose, cli.quiet);
    match meshload_node::cli::serve(cli.node) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", meshload_process::error_chain(&err));
            ExitCode::from(meshload_process::exit::RUNTIME)
        }
    }
}
