//! The host in every run: how busy all its cores were during a test (`/proc/stat`), how
//! much CPU meshload's own process took (the load generator, with the scraper beside it),
//! the generator's schedule lag, and whether these make the host saturated: a run on a
//! saturated host measures the host, not the mesh, and is not compared. Also pins
//! meshload's threads to CPUs (`--loadgen-cpus`).

use std::time::Instant;

use procfs::CurrentSI as _;
use serde::Serialize;

/// Where a host counts as saturated: over `busy` of all cores, or with the load
/// generator's p99 schedule lag over `lag_p99_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// The most busy share of all cores (0 to 1).
    pub busy: f64,
    /// The most p99 schedule lag, ms.
    pub lag_p99_ms: f64,
}

impl Default for Limits {
    /// 95% busy; 1 ms of lag at p99.
    fn default() -> Limits {
        Limits {
            busy: 0.95,
            lag_p99_ms: 1.0,
        }
    }
}

/// The fewest requests whose schedule lag is judged at p99: with fewer, p99 is the largest
/// one or two, and a single late wake-up of this machine's threads (1-2 ms here now and
/// then) would flag the host.
pub const LAG_SAMPLES_FOR_P99: u64 = 200;

/// What the host did during one test.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostLoad {
    /// The busy share of all cores over the test (0 to 1): wall time less idle time, so
    /// stolen time counts as busy;
    /// `None` when `/proc/stat` cannot be read.
    pub busy: Option<f64>,
    /// The host's cores.
    pub cores: Option<usize>,
    /// CPU used by meshload's process over the test (the load generator and the scraper),
    /// in cores; `None` when the load generator ran elsewhere.
    pub loadgen_cpu_cores: Option<f64>,
    /// p99 of the load generator's schedule lag, ms (`None` at max rate, or with fewer
    /// than [`LAG_SAMPLES_FOR_P99`] requests).
    pub schedule_lag_p99_ms: Option<f64>,
    /// The limits it was judged by.
    pub limits: Option<Limits>,
    /// The host was over its limits' busy share, or the generator lagged over their p99.
    pub saturated: bool,
    /// Why it is saturated, in words (empty when it is not).
    pub reasons: Vec<String>,
}

/// Idle ticks of all cores, and how many cores there are.
///
/// Busy is wall time less idle time, not the sum of `/proc/stat`'s busy fields: idle time
/// is measured exactly (the kernel's tickless idle accounting), but busy time is sampled
/// at ticks, and on a loaded VM ticks go missing. Seen here: with meshload running, the
/// fields of two cores summed to 128 ticks in a second instead of 200, while idle kept
/// counting, so the busy share from the fields read 2-5% where it was 37%.
fn idle_ticks() -> Option<(u64, usize)> {
    let stat = procfs::KernelStats::current().ok()?;
    let t = stat.total;
    Some((t.idle + t.iowait.unwrap_or(0), stat.cpu_time.len()))
}

/// Readings at a test's start, to be set against those at its end.
#[derive(Debug, Clone)]
pub struct HostMark {
    idle: Option<(u64, usize)>,
    own_cpu_seconds: Option<f64>,
    at: Instant,
}

impl HostMark {
    /// Reads the host and this process now.
    pub fn now() -> HostMark {
        HostMark {
            idle: idle_ticks(),
            own_cpu_seconds: meshload_process::resources::sample_self().map(|s| s.cpu_seconds),
            at: Instant::now(),
        }
    }

    /// What the host did since this mark. `loadgen_here`: the load generator ran in this
    /// process (its CPU is then meshload's, and this host is the one loaded; else only
    /// the schedule lag is known); `lag_p99_ms`: its schedule lag.
    pub fn finish(&self, loadgen_here: bool, lag_p99_ms: Option<f64>, limits: Limits) -> HostLoad {
        let end = idle_ticks().filter(|_| loadgen_here);
        let seconds = self.at.elapsed().as_secs_f64();
        let busy = self.idle.zip(end).and_then(|((a, _), (b, cores))| {
            let available = seconds * cores as f64 * procfs::ticks_per_second() as f64;
            let idle = b.checked_sub(a)? as f64;
            (available > 0.0).then(|| (1.0 - idle / available).clamp(0.0, 1.0))
        });
        let own = meshload_process::resources::sample_self().map(|s| s.cpu_seconds);
        let loadgen_cpu_cores = match (loadgen_here, self.own_cpu_seconds, own) {
            (true, Some(a), Some(b)) if seconds > 0.0 => Some((b - a).max(0.0) / seconds),
            _ => None,
        };
        let mut load = HostLoad {
            busy,
            cores: end.map(|(_, cores)| cores),
            loadgen_cpu_cores,
            schedule_lag_p99_ms: lag_p99_ms,
            limits: Some(limits),
            saturated: false,
            reasons: Vec::new(),
        };
        load.judge();
        load
    }
}

impl HostLoad {
    /// Sets `saturated` and its reasons from the figures and the limits.
    pub fn judge(&mut self) {
        self.reasons.clear();
        let limits = self.limits.unwrap_or_default();
        if let Some(busy) = self.busy.filter(|b| *b > limits.busy) {
            self.reasons.push(format!(
                "the host was {:.0}% busy (over {:.0}%)",
                busy * 100.0,
                limits.busy * 100.0
            ));
        }
        if let Some(lag) = self.schedule_lag_p99_ms.filter(|l| *l > limits.lag_p99_ms) {
            self.reasons.push(format!(
                "the load generator lagged its schedule by {lag:.2} ms at p99 (over {} ms)",
                limits.lag_p99_ms
            ));
        }
        self.saturated = !self.reasons.is_empty();
    }
}

/// Parses a CPU list as `taskset -c` takes it: `0`, `0,2`, `0-3,6`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("invalid CPU list {s:?}: expected numbers and ranges such as 0,2-3");
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let from: usize = from.parse().map_err(|_| bad())?;
        let to: usize = to.parse().map_err(|_| bad())?;
        if from > to || to >= nix::sched::CpuSet::count() {
            return Err(bad());
        }
        out.extend(from..=to);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| format!("cannot read this process's CPUs: {e}"))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Checks that `cpus` are CPUs this process may run on, and leave at least one to the
/// rest when there is more than one.
pub fn check_cpus(cpus: &[usize]) -> Result<(), String> {
    let allowed = allowed_cpus()?;
    let list = |l: &[usize]| {
        l.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(format!(
            "--loadgen-cpus: CPU {bad} is not one this process may use ({})",
            list(&allowed)
        ));
    }
    Ok(())
}

/// Pins every thread of this process (the load generator) to `loadgen`, and every thread
/// of each of `children` (nodes and sidecars) to the CPUs this process may use less those,
/// when any are left. Call it once they all started: threads started later inherit the
/// affinity of the thread that starts them.
pub fn isolate(loadgen: &[usize], children: &[u32]) -> Result<(), String> {
    let rest: Vec<usize> = allowed_cpus()?
        .into_iter()
        .filter(|c| !loadgen.contains(c))
        .collect();
    pin_threads("self", loadgen)?;
    if !rest.is_empty() {
        for pid in children {
            pin_threads(&pid.to_string(), &rest)?;
        }
    }
    Ok(())
}

/// Pins every thread of process `pid` (`self` for this one) to `cpus`. A thread that ended
/// meanwhile is passed over.
fn pin_threads(pid: &str, cpus: &[usize]) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("cannot list the threads of process {pid}: {e}"))?;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("cannot pin thread {tid} to CPUs {cpus:?}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_host_or_a_lagging_generator_is_saturated() {
        let mut load = HostLoad {
            busy: Some(0.97),
            schedule_lag_p99_ms: Some(0.2),
            ..HostLoad::default()
        };
        load.judge();
        assert!(load.saturated);
        assert_eq!(load.reasons, ["the host was 97% busy (over 95%)"]);
        load.busy = Some(0.5);
        load.schedule_lag_p99_ms = Some(3.0);
        load.judge();
        assert!(load.saturated && load.reasons[0].contains("3.00 ms at p99"));
        load.schedule_lag_p99_ms = None;
        load.judge();
        assert!(!load.saturated && load.reasons.is_empty());
    }

    #[test]
    fn a_mark_reads_the_host() {
        let mark = HostMark::now();
        // Some work, so that this process's CPU time moves.
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let load = mark.finish(true, None, Limits::default());
        let busy = load.busy.expect("/proc/stat is readable here");
        assert!((0.0..=1.0).contains(&busy), "{busy}");
        assert!(load.cores.expect("cores") >= 1);
        assert!(load.loadgen_cpu_cores.expect("own CPU") >= 0.0);
        let elsewhere = mark.finish(false, None, Limits::default());
        assert_eq!((elsewhere.loadgen_cpu_cores, elsewhere.busy), (None, None));
    }

    #[test]
    fn only_cpus_this_process_may_use_are_taken() {
        let allowed = allowed_cpus().expect("readable");
        assert!(!allowed.is_empty());
        assert_eq!(check_cpus(&allowed[..1]), Ok(()));
        let err = check_cpus(&[1023]).expect_err("no such CPU here");
        assert!(err.contains("CPU 1023 is not one"), "{err}");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("3,0-1, 1"), Ok(vec![0, 1, 3]));
        for bad in ["", "a", "2-1", "-1", "0,,1", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }
}
