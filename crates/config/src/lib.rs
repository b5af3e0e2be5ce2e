//! meshload's config file: the seed's `config.json` (string numbers and all) plus optional,
//! additive extensions, in JSON or YAML.
//!
//! Loading is two stages, as ripgrep and Vector do it: the text becomes a JSON value, then
//! [`parse::config`] reads that value into the validated [`Config`], collecting every
//! problem with its JSON path and bad value (`load_tests[2].qps: "fast" is not a number`)
//! and warnings for unknown keys. Nothing here does I/O beyond [`load`] reading the file.
//!
//! # Layout
//! - [`behaviour`]: a node's injected latency, errors and call mode, parsed for the node.
//! - [`duplicates`]: keys a JSON file gives twice, named by path.
//! - [`limits`]: the bounds of every number of a load test (flags, config, REST).
//! - [`mesh`]: the meshes, one type for configs, flags, backends and results.
//! - [`model`]: the validated types the rest of meshload takes.
//! - [`parse`]: value to config, with every problem reported.
//! - [`proxies`]: where each mesh's proxies run (their containers' series), the presets
//!   a run measures proxies by.
//! - [`query_limits`]: how long, deep and operator-heavy a PromQL query may be (the
//!   config's metrics and every query the engine parses).
//! - [`reader`]: path-tracking helpers and Go-style durations.
//! - [`search`]: a test's capacity search (`search`): rates, precision, trials, PromQL
//!   thresholds.
//! - [`service`]: the services' names and port, and a node's behaviour as node flags.
//! - [`slo`]: service level objectives: the keys, their parsing and checks.
//! - [`topology`]: cycles, entry points, depth, fan-out, start order.

pub mod behaviour;
pub mod duplicates;
pub mod limits;
pub mod mesh;
pub mod model;
pub mod parse;
pub mod proxies;
pub mod query_limits;
pub mod reader;
pub mod search;
pub mod service;
pub mod slo;
pub mod topology;

use std::path::Path;

pub use behaviour::Behaviour;
pub use mesh::Mesh;
pub use model::{Config, LoadTest, NodeSpec, PrometheusSetting};
pub use reader::ConfigError;
pub use slo::Slo;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON or YAML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The content has problems: every one of them.
    #[error("{} problem(s) in {path}:\n  {}", .errors.len(), .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem.
        errors: Vec<ConfigError>,
    },
}

/// A validated config and the warnings reading it raised.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Unknown keys, unsupported options.
    pub warnings: Vec<String>,
}

/// Reads and validates a config file (`.yaml`/`.yml` as YAML, anything else as JSON).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: shown.clone(),
        source,
    })?;
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    from_str(&text, yaml, &shown)
}

/// Validates config text; `name` is used in messages.
pub fn from_str(text: &str, yaml: bool, name: &str) -> Result<Loaded, LoadError> {
    let value: serde_json::Value = if yaml {
        serde_saphyr::from_str(text).map_err(|e| LoadError::Syntax {
            path: name.to_string(),
            // The wording meant for people (not "set DuplicateKeyPolicy in Options"), with
            // the line and the snippet; without the leading "error:" the CLI adds.
            message: e
                .render_with_formatter(&serde_saphyr::UserMessageFormatter)
                .trim_start_matches("error: ")
                .to_string(),
        })?
    } else {
        let value = serde_json::from_str(text).map_err(|e| LoadError::Syntax {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        let duplicates = duplicates::in_json(text);
        if !duplicates.is_empty() {
            return Err(LoadError::Invalid {
                path: name.to_string(),
                errors: duplicates
                    .into_iter()
                    .map(|path| ConfigError {
                        path,
                        message: "is given more than once (which one counts would be a guess)"
                            .to_string(),
                    })
                    .collect(),
            });
        }
        value
    };
    let mut reader = reader::Reader::default();
    let config = parse::config(&value, &mut reader);
    match config {
        Some(config) if reader.errors.is_empty() => Ok(Loaded {
            config,
            warnings: reader.warnings,
        }),
        _ => Err(LoadError::Invalid {
            path: name.to_string(),
            errors: reader.errors,
        }),
    }
}

#[cfg(test)]
mod tests;
