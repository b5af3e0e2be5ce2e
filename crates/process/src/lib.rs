//! Plumbing every meshload binary and library shares, in one place: `meshload`, the
//! node-only `meshload-node`, and the crates under them.
//!
//! The light parts (an error chain, why an exchange failed) are always here; what only a
//! running process needs comes with the `process` feature (exit codes and usage errors,
//! the runtime and signals, logs, `/proc` resource samples), so that the load generator
//! and the fuzz targets build without it.
//!
//! # Layout
//! - [`error_chain`]: an error and its causes on one line.
//! - [`failure`]: why an HTTP exchange got no answer ([`ErrorKind`]), one vocabulary for
//!   the load generator's results and the nodes' metrics.
//! - `exit`: exit codes (64 usage, 2 runtime) and one-line usage errors.
//! - `lifecycle`: the async runtime, SIGINT/SIGTERM, dying with the parent.
//! - `logging`: logs to stderr at the level `-v`/`-q` choose.
//! - `resources`: a process's CPU, memory and descriptors from `/proc`, and the standard
//!   `process_*` metrics.

#[cfg(feature = "process")]
pub mod exit;
pub mod failure;
#[cfg(feature = "process")]
pub mod lifecycle;
#[cfg(feature = "process")]
pub mod logging;
#[cfg(feature = "process")]
pub mod resources;

pub use failure::ErrorKind;

/// An error and its causes on one line (`outer: inner: innermost`), as `anyhow` prints
/// them with `{:#}`; a cause whose text the line already holds is not repeated (hyper and
/// io errors often quote their source).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read samples")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_follow_the_error_once_each() {
        let e = Wrapped(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&e), "cannot read samples: disk full");
        let plain = std::io::Error::other("alone");
        assert_eq!(error_chain(&plain), "alone");
    }
}
