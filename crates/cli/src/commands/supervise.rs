//! `meshload supervise -- CMD...` (hidden): runs a command until meshload stops it
//! (SIGTERM, SIGINT) or dies (its parent pid changes), then kills it. This keeps helpers
//! that cannot watch meshload themselves, such as a spawned Prometheus, from becoming
//! orphans.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::{ProbeArgs, SuperviseArgs};

/// Runs the command under watch.
pub fn run(args: &SuperviseArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let (program, rest) = args.command.split_first().expect("clap requires a command");
        // Killed with the supervisor, even a SIGKILLed one (which could not stop it).
        let mut command = meshload_process::lifecycle::dies_with_parent(program);
        command
            .args(rest)
            .env_remove(meshload_process::lifecycle::PARENT_PID_ENV)
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

/// How long a probe waits for its answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `meshload probe URL`: exit 0 when the URL answers 2xx within 2 s.
pub fn probe(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let answer = runtime.block_on(meshload_runner::http::get(
        &meshload_runner::http::client(),
        args.url.clone(),
        PROBE_TIMEOUT,
    ));
    Ok(match answer {
        Ok((status, _, _)) if (200..300).contains(&status) => ExitCode::SUCCESS,
        _ => ExitCode::from(crate::exit::THRESHOLD),
    })
}
