//! `meshload validate`: check a config and print the plan.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use meshload_config::{Config, LoadError, Loaded, topology};

use crate::cli::ValidateArgs;
use crate::exit::Exit;

/// Loads, validates and prints the plan.
pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.config)?;
    check_amplification(&loaded.config, args.max_amplification)?;
    let mut out = std::io::stdout().lock();
    write_plan(&mut out, &loaded.config)?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses a topology where one request to a node causes more than `limit` backend
/// requests (exit 64, every such node named), and warns of the large ones
/// (`topology::amplification`).
pub fn check_amplification(config: &Config, limit: u64) -> Result<(), Exit> {
    let found = topology::amplification(&config.nodes, limit);
    for warning in &found.warnings {
        eprintln!("warning: {warning}");
    }
    if found.refused.is_empty() {
        Ok(())
    } else {
        Err(Exit::usage(found.refused.join("\n")))
    }
}

/// Loads a config for any command: problems become exit 64, warnings go to stderr.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let loaded = meshload_config::load(path).map_err(|e| match e {
        LoadError::Io { .. } => Exit::usage(format!("{:#}", anyhow::Error::new(e))),
        other => Exit::usage(other.to_string()),
    })?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

/// The plan as text.
pub fn write_plan(w: &mut impl Write, c: &Config) -> std::io::Result<()> {
    let shape = topology::shape(&c.nodes);
    let replicas: u32 = c.nodes.values().map(|n| n.replicas).sum();
    writeln!(
        w,
        "Topology: {} nodes ({replicas} replicas), {} edges, depth {}",
        c.nodes.len(),
        shape.edges,
        shape.depth
    )?;
    writeln!(
        w,
        "  {:<16} {:>8}  {:<24} {:>16}  behaviour",
        "node", "replicas", "backends", "backend calls"
    )?;
    for (name, n) in &c.nodes {
        let backends = if n.backends.is_empty() {
            "-".to_string()
        } else {
            n.backends.join(", ")
        };
        writeln!(
            w,
            "  {:<16} {:>8}  {:<24} {:>16}  {}",
            name,
            n.replicas,
            backends,
            shape.backend_requests[name],
            behaviour(&n.behaviour)
        )?;
    }
    writeln!(w, "Entry points: {}", shape.entry_points.join(", "))?;
    for e in &shape.entry_points {
        writeln!(
            w,
            "  one request to {e} causes {} backend requests",
            shape.backend_requests[e]
        )?;
    }
    writeln!(w, "Load tests: {}", c.tests.len())?;
    for t in &c.tests {
        let rate = t.qps.map_or("max".to_string(), |q| format!("{q}/s"));
        let length = match t.requests {
            Some(n) => format!("for {n} requests"),
            // As Fortio's -t 0: no end of its own.
            None if t.duration.is_zero() => "until stopped".to_string(),
            None => format!("for {}", humantime::format_duration(t.duration)),
        };
        writeln!(
            w,
            "  {:<32} -> {:<10} {rate:>10} {length}, c={}",
            t.name, t.target, t.connections
        )?;
    }
    let names: Vec<&str> = c.metrics.iter().map(|(n, _)| n.as_str()).collect();
    writeln!(
        w,
        "Metrics: {}{}",
        names.len(),
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    )?;
    writeln!(
        w,
        "Between tests: {}; scrape every {}; metric step {}",
        humantime::format_duration(c.sleep_between_tests),
        humantime::format_duration(c.scrape_interval),
        humantime::format_duration(c.metrics_step)
    )
}

fn behaviour(b: &meshload_config::Behaviour) -> String {
    let mut parts = Vec::new();
    if let Some(l) = &b.latency {
        parts.push(format!("latency {l}"));
    }
    if let Some(e) = b.error_rate {
        parts.push(format!("errors {e}"));
    }
    if let Some(s) = b.response_size {
        parts.push(format!("{s} B bodies"));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}
