//! meshload's read side: stored runs read back, compared, plotted and reported.
//!
//! # Layout
//! - [`runs`]: a run's files read back, and per-node resources from its samples.
//! - [`compare`]: two runs side by side, and thresholds for CI.

pub mod compare;
pub mod runs;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A stored file could not be read.
    #[error("cannot read {0}")]
    Read(String),
    /// The store could not be listed.
    #[error(transparent)]
    Store(#[from] meshload_store::StoreError),
}
