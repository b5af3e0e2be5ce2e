//! `meshload node` (the same as the `meshload-node` binary).

use std::process::ExitCode;

use meshload_node::cli::NodeArgs;

/// Serves until SIGINT or SIGTERM.
pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    meshload_node::cli::serve(args)?;
    Ok(ExitCode::SUCCESS)
}
