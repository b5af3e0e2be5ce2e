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

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let args = cli::fortio_style_args(std::env::args_os());
    // The matches are kept beside the parsed values: `run` asks them which flags were
    // given (clap's value source) rather than comparing values with defaults.
    let parsed = cli::Cli::command()
        .try_get_matches_from(args)
        .and_then(|m| cli::Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return exit::usage(&err),
    };
    init_tracing(cli.verbose, cli.quiet);
    match commands::run(cli.command, &matches) {
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
