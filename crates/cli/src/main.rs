//! `meshload`: load-testing harness for service meshes and microservice topologies.
//!
//! # Layout
//! - [`cli`]: the command line (clap types, help texts, examples).
//! - [`commands`]: one module per command; each returns an [`ExitCode`] or an error.
//! - [`exit`]: exit codes and how errors become them.
//! - [`progress`]: the live progress bar of load tests.

// Only the binary prints: the libraries deny printing and log with `tracing`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod commands;
mod exit;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse_from(cli::fortio_style_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(err) => return exit::usage(&err),
    };
    init_tracing(cli.verbose, cli.quiet);
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level that `-v`/`-q` choose.
fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
