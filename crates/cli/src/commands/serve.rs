//! `meshload serve`: the load generator behind Fortio's REST API.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::ServeArgs;

/// Serves until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let listener = meshload_loadgen::rest::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr().context("cannot read the bound address")?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "serving beyond loopback: anyone who reaches this port can send load anywhere");
        }
        // The first stdout line tells a parent process (or a script) the bound port.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
        drop(stdout);
        tracing::info!(%addr, "serving {}", meshload_loadgen::rest::RUN_PATH);
        let options = meshload_loadgen::rest::ServeOptions {
            resolve: args.resolve.iter().cloned().collect(),
            keepalive: args.keepalive,
        };
        meshload_loadgen::rest::serve(listener, super::shutdown_signal(), options).await;
        Ok(ExitCode::SUCCESS)
    })
}
