//! `meshload node`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use meshload_node::behaviour::Behaviour;
use meshload_node::{Limits, NodeConfig, Server};

use crate::cli::NodeArgs;

/// Serves until SIGINT or SIGTERM.
pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let config = config(args);
    runtime_serve(config)
}

fn config(args: NodeArgs) -> NodeConfig {
    let seed = args.seed.unwrap_or_else(rand_seed);
    let mut backends = args.backends.0;
    meshload_node::config::apply_resolves(&mut backends, &args.resolve);
    NodeConfig {
        name: args.name,
        listen: args.listen,
        backends,
        call_mode: args.call_mode,
        call_timeout: args.timeout,
        behaviour: Behaviour {
            latency: args.latency,
            error_rate: args.error_rate,
            error_code: args.error_code,
            response_size_bytes: args.response_size,
            seed,
        },
        capacity: args.capacity.map(|rate| meshload_node::capacity::Capacity {
            rate,
            mode: args.capacity_mode,
        }),
        limits: Limits {
            max_connections: args.max_connections as usize,
            max_header_bytes: args.max_header_bytes,
            request_timeout: args.request_timeout,
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            body_read_timeout: args.body_read_timeout,
            drain_timeout: args.drain_timeout,
        },
    }
}

/// A seed from the clock, for runs that did not ask for one (it is logged).
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn runtime_serve(config: NodeConfig) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let name = config.name.clone();
        let backends: Vec<String> = config.backends.iter().map(ToString::to_string).collect();
        let seed = config.behaviour.seed;
        let server = Server::bind(config)
            .await
            .context("cannot start the node")?;
        let addr = server.local_addr();
        // The first stdout line tells a parent process (or a script) the bound port.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
        drop(stdout);
        tracing::info!(node = %name, %addr, ?backends, seed, "node serving");
        server.run(stop_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGINT, SIGTERM, or the death of the parent named in `MESHLOAD_PARENT_PID`.
async fn stop_signal() {
    tokio::select! {
        () = super::shutdown_signal() => {}
        () = super::orphaned() => {}
    }
}
