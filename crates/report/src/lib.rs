//! meshload's read side: stored runs read back, compared, plotted and reported.
//!
//! # Layout
//! - [`runs`]: a run's files read back, and per-node resources from its samples.
//! - [`compare`]: two runs side by side, and thresholds for CI.
//! - [`plot`]: line charts to SVG and PNG.
//! - [`report`]: the charts of a set of runs and the HTML page.

pub mod compare;
pub mod plot;
pub mod report;
pub mod runs;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A stored file could not be read.
    #[error("cannot read {0}")]
    Read(String),
    /// A chart or the page could not be drawn.
    #[error("cannot draw {0}")]
    Draw(String),
    /// A report file could not be written.
    #[error("cannot write {0}")]
    Write(String),
    /// The store could not be listed.
    #[error(transparent)]
    Store(#[from] meshload_store::StoreError),
}
