//! `meshload`: load-testing harness for service meshes and microservice topologies.
//!
//! # Layout
//! - [`cli`]: the command line (clap types, help texts, examples).
//! - [`commands`]: one module per command; each returns an [`ExitCode`] or an error.
//! - [`exit`]: exit codes and how errors become them.
//! - [`progress`]: the live progress bar of load tests.
//! - [`table`]: text tables whose columns stay aligned.

// Only the binary prints: the libraries deny printing and log with `tracing`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod commands;
mod exit;
mod progress;
mod table;

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
    meshload_process::logging::init_tracing(cli.verbose, cli.quiet);
    match commands::run(cli.command, &matches) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}
