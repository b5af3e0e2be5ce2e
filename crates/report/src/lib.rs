//! meshload's read side: stored runs read back, compared, plotted and reported.
//!
//! # Layout
//! - [`runs`]: a run's files read back, and per-node resources from its samples.
//! - [`compare`]: two series of runs side by side (B - A with intervals and verdicts, or
//!   why they are not comparable), how cost grows with rate, and thresholds for CI.
//! - [`mesh_cost`]: what each mesh costs against the first, per test and of capacity.
//! - [`plot`]: line charts to SVG and PNG.
//! - [`report`]: the charts of a set of runs and the HTML page.
//! - [`serve`]: stored runs as a read-only Prometheus HTTP API (`meshload results serve`).

pub mod compare;
pub mod mesh_cost;
pub mod plot;
pub mod report;
pub mod runs;
pub mod serve;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A stored file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stored file is not what meshload writes.
    #[error("cannot use {path}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A chart could not be drawn (plotters' backends' errors are not `Send`, so they
    /// are kept as text).
    #[error("cannot draw {chart}: {reason}")]
    Draw {
        /// The chart's id.
        chart: String,
        /// Why.
        reason: String,
    },
    /// The page could not be rendered.
    #[error("cannot render the report page")]
    Page(#[source] minijinja::Error),
    /// A report file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be listed.
    #[error(transparent)]
    Store(#[from] meshload_store::StoreError),
}
