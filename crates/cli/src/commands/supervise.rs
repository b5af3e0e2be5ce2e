//! `meshload supervise -- CMD...` (hidden): runs a command until meshload stops it
//! (SIGTERM, SIGINT) or dies (its parent pid changes), then kills it. This keeps helpers
//! that cannot watch meshload themselves, such as a spawned Prometheus, from becoming
//! orphans.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::SuperviseArgs;

/// Runs the command under watch.
pub fn run(args: &SuperviseArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let (program, rest) = args.command.split_first().expect("clap requires a command");
        // Killed with the supervisor, even a SIGKILLed one (which could not stop it).
        let mut command = meshload_node::cli::dies_with_parent(program);
        command
            .args(rest)
            .env_remove(meshload_node::PARENT_PID_ENV)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
        let status = tokio::select! {
            status = child.wait() => Some(status.context("cannot wait for the command")?),
            () = super::shutdown_signal() => None,
            () = super::orphaned() => None,
        };
        match status {
            Some(status) => Ok(ExitCode::from(
                u8::try_from(status.code().unwrap_or(2)).unwrap_or(2),
            )),
            None => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
