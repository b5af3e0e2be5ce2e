//! The files of a run folder, named once: every writer and reader of a stored run takes
//! the names from here.

/// The config the run was started with, as given.
pub const CONFIG: &str = "config.json";
/// The load result, Fortio-compatible.
pub const FORTIO: &str = "fortio.json";
/// Everything about the run besides the load result; written last, so a run with it is
/// whole (an upload's marker too).
pub const METADATA: &str = "metadata.json";
/// Requests, errors and percentiles per second.
pub const PER_SECOND: &str = "per_second.csv";
/// The raw samples scraped over the run's window (meshload-tsdb JSON Lines).
pub const SAMPLES: &str = "samples.jsonl";

/// A metric's table: `<metric>.csv`.
pub fn metric_csv(metric: &str) -> String {
    format!("{metric}.csv")
}
