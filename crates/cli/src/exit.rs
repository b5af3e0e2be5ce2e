//! Exit codes (0 ok, 1 a threshold failed, 2 runtime error, 64 usage or configuration
//! error, 130 interrupted) and how errors turn into them.

use std::process::ExitCode;

/// A usage or configuration error: the command could not start.
pub const USAGE: u8 = meshload_process::exit::USAGE;
/// A runtime error.
pub const RUNTIME: u8 = meshload_process::exit::RUNTIME;
/// A run finished but a threshold (SLO) was missed.
pub const THRESHOLD: u8 = 1;
/// Stopped by Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: u8 = 130;

/// An error that asks for a particular exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The code to exit with.
    pub code: u8,
    /// What to print after `error: `.
    pub message: String,
}

impl Exit {
    /// A usage or configuration error (exit 64).
    pub fn usage(message: impl Into<String>) -> Self {
        Exit {
            code: USAGE,
            message: message.into(),
        }
    }
}

/// Reports a command-line parse error: help and version go to stdout with exit 0;
/// anything else is one line on stderr and exit 64.
pub fn usage(err: &clap::Error) -> ExitCode {
    meshload_process::exit::usage_error(err)
}

/// Reports a failed command with its whole context chain and picks the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    let code = err.downcast_ref::<Exit>().map_or(RUNTIME, |e| e.code);
    ExitCode::from(code)
}
