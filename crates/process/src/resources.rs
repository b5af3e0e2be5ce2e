//! Resource figures of a process read from `/proc`, and the standard `process_*` metrics.
//!
//! The same sample serves the node's own `/metrics` (as the official client libraries'
//! process collectors do) and the local backend, which reads its children as cAdvisor does.

use procfs::WithCurrentSystemInfo;
use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size in bytes.
    pub resident_bytes: u64,
    /// Working set in bytes as cAdvisor reports it: resident memory less clean file pages
    /// that the kernel could drop (approximated per process by RSS less shared file pages).
    pub working_set_bytes: u64,
    /// Virtual memory size in bytes.
    pub virtual_bytes: u64,
    /// Start time in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`u64::MAX` when unlimited).
    pub max_fds: u64,
    /// Threads in the process.
    pub threads: u64,
}

/// Reads a process's sample; `None` when it is gone or `/proc` cannot be read.
pub fn sample(pid: i32) -> Option<ProcessSample> {
    read(Process::new(pid).ok()?)
}

/// Reads this process's own sample.
pub fn sample_self() -> Option<ProcessSample> {
    read(Process::myself().ok()?)
}

fn read(process: Process) -> Option<ProcessSample> {
    let stat = process.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let resident_bytes = stat.rss_bytes().get();
    let shared_bytes = process
        .statm()
        .ok()
        .map_or(0, |m| m.shared * procfs::page_size());
    let boot = procfs::boot_time_secs().unwrap_or(0) as f64;
    let max_fds = process
        .limits()
        .ok()
        .map_or(0, |l| match l.max_open_files.soft_limit {
            LimitValue::Unlimited => u64::MAX,
            LimitValue::Value(v) => v,
        });
    Some(ProcessSample {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes,
        working_set_bytes: resident_bytes.saturating_sub(shared_bytes),
        virtual_bytes: stat.vsize,
        start_time_seconds: boot + stat.starttime as f64 / ticks,
        open_fds: process.fd_count().map_or(0, |n| n as u64),
        max_fds,
        threads: stat.num_threads.max(0) as u64,
    })
}

/// Exposes this process's `process_*` metrics, read afresh on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = sample_self() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                s.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                s.max_fds as f64,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                s.threads as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample_self().expect("/proc is readable");
        assert!(s.resident_bytes > 0);
        assert!(s.working_set_bytes <= s.resident_bytes);
        assert!(s.open_fds > 0);
        assert!(s.threads >= 1);
        assert!(s.start_time_seconds > 1.0e9);
    }

    #[test]
    fn a_missing_process_has_no_sample() {
        assert_eq!(sample(i32::MAX), None);
    }
}
