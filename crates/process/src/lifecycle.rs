//! A meshload process's life around its work: its async runtime, stopping on SIGINT or
//! SIGTERM, stopping when the parent that started it is gone, and helpers that die with
//! it.

use std::time::Duration;

/// The environment variable through which a parent process (the local backend) asks a
/// child (a node, a supervised helper) to exit when the parent dies: the child watches its
/// parent's process id.
pub const PARENT_PID_ENV: &str = "MESHLOAD_PARENT_PID";

/// A multi-threaded Tokio runtime for the commands that serve or send traffic.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A command for `program` that the kernel kills (SIGKILL) when the process starting it
/// dies, even by SIGKILL: it runs under util-linux's `setpriv --pdeathsig KILL`, since
/// setting the signal between fork and exec ourselves would take `unsafe`. For helpers
/// that cannot watch meshload themselves (Envoy, Prometheus).
pub fn dies_with_parent(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd
}

/// Completes when the parent named in [`PARENT_PID_ENV`] is gone (this process was
/// re-parented); never when the variable is unset.
pub async fn orphaned() {
    let parent: Option<u32> = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(parent, "parent process is gone; stopping");
            return;
        }
    }
}
