//! `meshload serve`: the load generator behind Fortio's REST API.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::ServeArgs;

/// Serves until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    // Read once, here: a request never names a file on this server.
    let ca = match &args.cacert {
        Some(path) => Some(
            meshload_loadgen::tls::Ca::File(path.clone())
                .pem()
                .map_err(|e| crate::exit::Exit::usage(e.to_string()))?
                .into_owned(),
        ),
        None => None,
    };
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
            ca,
        };
        let api = meshload_loadgen::rest::Api::new(options);
        meshload_node::server::serve_guarded(
            listener,
            &super::server_limits(&args.guards),
            super::shutdown_signal(),
            move |req| api.clone().handle(req),
        )
        .await;
        Ok(ExitCode::SUCCESS)
    })
}
