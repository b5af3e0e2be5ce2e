//! One module per command.

mod k8s;
mod load;
mod mesh_cost;
mod node;
mod promql;
mod query;
mod results;
mod results_serve;
mod run;
mod search;
mod serve;
mod supervise;
mod validate;

use std::process::ExitCode;

use meshload_process::lifecycle::{orphaned, shutdown_signal};

use crate::cli::Command;

/// Runs a parsed command (`matches` are the whole command line's).
pub fn run(command: Command, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    match command {
        Command::Node(args) => node::run(args),
        Command::Serve(args) => serve::run(&args),
        Command::Load(args) => load::run(args),
        Command::Search(args) => search::run(args),
        Command::Query(args) => query::run(args),
        Command::Validate(args) => validate::run(&args),
        Command::Run(args) => {
            let given = matches
                .subcommand_matches("run")
                .map(crate::cli::k8s_flags_given)
                .unwrap_or_default();
            run::run(args, given)
        }
        Command::Results(crate::cli::ResultsCommand::List(args)) => results::list(&args),
        Command::Results(crate::cli::ResultsCommand::Show(args)) => results::show(&args),
        Command::Results(crate::cli::ResultsCommand::Pull(args)) => results::pull(&args),
        Command::Results(crate::cli::ResultsCommand::Serve(args)) => results_serve::run(&args),
        Command::Results(crate::cli::ResultsCommand::Push(args)) => results::push(&args),
        Command::Compare(args) => results::compare(&args),
        Command::Report(args) => results::report(&args),
        Command::K8s(crate::cli::K8sCommand::Render(args)) => k8s::render(&args),
        Command::K8s(crate::cli::K8sCommand::Cleanup(args)) => k8s::cleanup(&args),
        Command::Supervise(args) => supervise::run(&args),
        Command::Probe(args) => supervise::probe(&args),
        Command::Promql(crate::cli::PromqlCommand::Test(args)) => promql::test(args),
    }
}

/// A multi-threaded Tokio runtime for the commands that serve or send traffic.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    meshload_process::lifecycle::runtime().context("cannot start the async runtime")
}

/// The connection guards of meshload's own servers (the REST API and `results serve`): a
/// node's (a request head within 10 s, idle connections closed, and at the limit the
/// longest-idle or a stalled one makes way), with their own connection limit and a short
/// drain.
fn server_limits(guards: &crate::cli::ServerGuards) -> meshload_node::Limits {
    meshload_node::Limits {
        max_connections: guards.max_connections as usize,
        drain_timeout: std::time::Duration::from_secs(2),
        ..meshload_node::Limits::default()
    }
}
