//! Exit codes and how a bad command line is reported, alike in every meshload binary.

use std::process::ExitCode;

use clap::error::ErrorKind;

/// Exit code of a usage error (as `meshload` uses it).
pub const USAGE: u8 = 64;
/// Exit code of a runtime error.
pub const RUNTIME: u8 = 2;

/// Reports a command-line parse error: help and version go to stdout with exit 0;
/// anything else is one line on stderr and exit 64.
pub fn usage_error(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(USAGE)
        }
        _ => {
            // One line: clap's message up to its first blank line (a list of missing
            // arguments continues on the next lines), without usage and tips.
            let rendered = err.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = if message.is_empty() {
                "error: invalid arguments".to_string()
            } else {
                message.join(" ")
            };
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{message} (see --help)");
            }
            ExitCode::from(USAGE)
        }
    }
}
