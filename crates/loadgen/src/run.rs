//! Orchestration of one load test: resolve, connect, pace, send, collect.
//!
//! Pacing: Tokio's timer fires about a millisecond late (1.3 ms at the median, measured on
//! this kind of machine), which at 0.1 ms service times would skew both rate and latency. A dedicated pacer thread sleeps
//! with `std::thread::sleep` (tens of microseconds late) and *releases* due slots to the
//! connections; each connection owns a counter of released slots and sends slot `k` once
//! it is released and the connection is free. Due times come from [`Schedule`], computed
//! from the start, so lateness never accumulates. Slots are released a little early (the
//! wake lead): the connection gets its request ready at once, and only the socket write
//! waits for the due time, spinning (`wire::Stamps::hold_until`), so the runtime's wake-up
//! and the HTTP client's work are done before the request is due rather than after.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::collector::{Collector, Live, Sample};
use crate::executor::{Connection, SharedStats, Target, lock_stats};
use crate::result::LoadResult;
use crate::schedule::{Schedule, quota};
use crate::spec::{LoadSpec, Stop};

/// Errors that prevent a run from starting.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target's certificate was refused: nothing was measured.
    #[error("TLS to {host}: certificate refused: {reason}")]
    Certificate {
        /// The host the certificate had to name.
        host: String,
        /// Why (`expired`, `unknown issuer`, `wrong name`, ...).
        reason: String,
    },
    /// The target's host name did not resolve.
    #[error("cannot resolve {authority}")]
    Resolve {
        /// `host:port` of the target.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Longest the pacer sleeps at once, so that a stop is noticed promptly.
const PACER_MAX_SLEEP: Duration = Duration::from_millis(20);

/// The last stretch before a due time that the pacer waits by spinning rather than
/// sleeping: a thread's sleep overshoots by tens of microseconds even with its timer
/// slack at 1 ns (about 80 µs at the default 50 µs slack, measured here), a spin by well
/// under one. At rates where slots are closer than this, the pacer never sleeps and spins
/// between them. With the connections' waits for their due times (the wake lead), fine
/// pacing cost about 4% of a core at 1,000 req/s here (`/usr/bin/time`: 0.63 s of CPU for
/// a 5 s test, 0.43 s with `--coarse-pacing`).
const PACER_SPIN: Duration = Duration::from_micros(50);

/// How early the pacer releases a slot, at most: waking a connection's task on the runtime
/// takes 15-20 µs here, and getting the request ready (the HTTP client's encoding and its
/// hand-off to the connection's I/O task) 5-10 µs more. Released this early, the request
/// is ready before its due time and only its write waits, spinning out the rest, so it
/// leaves on time even when one of those steps is slow.
const MAX_WAKE_LEAD: Duration = Duration::from_micros(50);

/// The wake lead of a schedule: [`MAX_WAKE_LEAD`], or a quarter of the gap between two
/// slots of the whole run when that is less, so that the connections' waits (which hold
/// a runtime thread) take at most a quarter of it at any rate.
fn wake_lead(schedule: &Schedule) -> Duration {
    (schedule.gap() / 4).min(MAX_WAKE_LEAD)
}

/// One connection's slot counter, shared with the pacer.
#[derive(Debug, Default)]
struct Slots {
    /// Slots released so far: slot `k` may be sent once `released > k`.
    released: AtomicU64,
    /// The pacer releases no more slots.
    closed: AtomicBool,
    /// The connection has finished and wants no more slots.
    finished: AtomicBool,
    /// Wakes the connection when a slot is released or the pacer closes.
    notify: Notify,
}

/// State shared by the pacer and every connection of a run.
struct Shared {
    start: Instant,
    /// Spin the last stretch before each due time (see [`PACER_SPIN`]).
    fine: bool,
    stopping: AtomicBool,
    slots: Vec<Slots>,
}

impl Shared {
    fn close_all(&self) {
        for s in &self.slots {
            s.closed.store(true, Ordering::Release);
            s.notify.notify_one();
        }
    }
}

/// Runs one load test until it ends by itself or `stop` completes (then it is marked
/// interrupted). `live` receives running figures for a progress display.
pub async fn run(
    spec: LoadSpec,
    stop: impl Future<Output = ()>,
    live: Live,
) -> Result<LoadResult, LoadError> {
    let addrs = match spec.options.connect_to.as_slice() {
        [] => vec![resolve(&spec.authority).await?],
        pinned => pinned.to_vec(),
    };
    let targets: Vec<Arc<Target>> = addrs
        .iter()
        .map(|a| Arc::new(Target::new(&spec, *a)))
        .collect();
    let stats = SharedStats::default();
    let schedule = spec
        .qps
        .map(|qps| Schedule::new(qps, spec.connections, spec.jitter));
    // Only connections with something to send are made; those due in the first moments
    // are opened now, the others by their own task shortly before their first request,
    // so that `-c 100000 --qps 10 -t 1s` opens 10 sockets and ends on time.
    let mut connections: Vec<(usize, Connection)> = (0..spec.connections)
        .filter(|&i| sends_anything(&spec, schedule.as_ref(), i))
        .map(|i| {
            let target = targets[i % targets.len()].clone();
            (i, Connection::new(target, stats.clone()))
        })
        .collect();
    // The earliest is always among them, so that a refused certificate is found before
    // the start (below) even when jitter puts every first request later.
    let earliest = connections
        .iter()
        .map(|(i, _)| first_due(schedule.as_ref(), *i))
        .min()
        .unwrap_or_default();
    futures_util::future::join_all(
        connections
            .iter_mut()
            .filter(|(i, _)| {
                let due = first_due(schedule.as_ref(), *i);
                due < CONNECT_AHEAD || due == earliest
            })
            .map(|(_, c)| c.warm_up()),
    )
    .await;
    // A refused certificate fails every request the same way: say why, once, rather than
    // counting a whole test of errors.
    let refused = lock_stats(&stats).certificate_problem.clone();
    if let (Some(reason), Some(tls)) = (refused, &spec.tls) {
        return Err(LoadError::Certificate {
            host: tls.host.clone(),
            reason,
        });
    }

    let shared = Arc::new(Shared {
        start: Instant::now(),
        fine: !spec.options.coarse_pacing,
        stopping: AtomicBool::new(false),
        slots: (0..spec.connections).map(|_| Slots::default()).collect(),
    });
    // Connections that were not made have finished: the pacer releases them nothing.
    let made: std::collections::HashSet<usize> = connections.iter().map(|(i, _)| *i).collect();
    for (i, slots) in shared.slots.iter().enumerate() {
        if !made.contains(&i) {
            slots.finished.store(true, Ordering::Release);
        }
    }
    let start_time = SystemTime::now();
    let (tx, rx) = unbounded_channel();
    let collector = tokio::spawn(Collector::new(live).run(rx));
    let pacer = schedule
        .clone()
        .map(|s| spawn_pacer(s, &spec, shared.clone()));

    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in connections {
        let plan = ConnectionPlan {
            index: i,
            quota: quota_of(&spec, i),
            schedule: schedule.clone(),
            nocatchup: spec.nocatchup,
            deadline: deadline_of(&spec),
        };
        tasks.spawn(drive(conn, plan, shared.clone(), tx.clone()));
    }
    drop(tx);
    let interrupted = wait_or_stop(&mut tasks, stop, &shared).await;
    let stats = lock_stats(&stats).clone();
    if let Some(pacer) = pacer {
        shared.stopping.store(true, Ordering::Release);
        let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    }
    let collected = collector.await.expect("the collector does not panic");
    Ok(LoadResult::new(
        spec,
        start_time,
        shared.start.elapsed(),
        collected,
        stats,
        interrupted,
    ))
}

async fn resolve(authority: &str) -> Result<SocketAddr, LoadError> {
    let err = |source| LoadError::Resolve {
        authority: authority.to_string(),
        source,
    };
    let mut addrs = tokio::net::lookup_host(authority).await.map_err(err)?;
    addrs.next().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        ))
    })
}

/// Waits for every connection to finish, or for `stop`; says whether the run was stopped.
async fn wait_or_stop(
    tasks: &mut tokio::task::JoinSet<()>,
    stop: impl Future<Output = ()>,
    shared: &Shared,
) -> bool {
    async fn join_all(tasks: &mut tokio::task::JoinSet<()>) {
        while tasks.join_next().await.is_some() {}
    }
    let interrupted = tokio::select! {
        () = stop => {
            shared.stopping.store(true, Ordering::Release);
            shared.close_all();
            true
        }
        () = join_all(tasks) => return false,
    };
    join_all(tasks).await;
    interrupted
}

/// How long before its first due time a connection that was not opened with the others
/// opens its socket (and does its TLS handshake), so that the request does not pay for it.
const CONNECT_AHEAD: Duration = Duration::from_millis(250);

/// When connection `conn` sends its first request, from the start (at once unpaced).
fn first_due(schedule: Option<&Schedule>, conn: usize) -> Duration {
    schedule.map_or(Duration::ZERO, |s| s.due(conn, 0))
}

/// Whether connection `conn` has a request to send before the run ends.
fn sends_anything(spec: &LoadSpec, schedule: Option<&Schedule>, conn: usize) -> bool {
    quota_of(spec, conn) != Some(0)
        && deadline_of(spec).is_none_or(|d| first_due(schedule, conn) < d)
}

fn quota_of(spec: &LoadSpec, conn: usize) -> Option<u64> {
    match spec.stop {
        Stop::Requests(n) => Some(quota(n, spec.connections, conn)),
        _ => None,
    }
}

fn deadline_of(spec: &LoadSpec) -> Option<Duration> {
    match spec.stop {
        Stop::Duration(d) => Some(d),
        _ => None,
    }
}

/// What one connection is to do.
struct ConnectionPlan {
    index: usize,
    quota: Option<u64>,
    schedule: Option<Schedule>,
    nocatchup: bool,
    deadline: Option<Duration>,
}

/// Drives one connection to the end of its plan; returns what its sockets cost.
async fn drive(
    mut conn: Connection,
    plan: ConnectionPlan,
    shared: Arc<Shared>,
    tx: UnboundedSender<Vec<Sample>>,
) {
    let slots = &shared.slots[plan.index];
    let first = first_due(plan.schedule.as_ref(), plan.index);
    if first >= CONNECT_AHEAD && !conn.is_open() {
        // Opened late (see `run`): wait until shortly before the first slot, then connect.
        // A stop (or the end of the run) notifies and ends either wait; a slot the pacer
        // released meanwhile is still sent (`wait_for_slot` looks at the count first).
        let open_at = shared.start + (first - CONNECT_AHEAD);
        let ended = || {
            shared.stopping.load(Ordering::Acquire)
                || (slots.closed.load(Ordering::Acquire)
                    && slots.released.load(Ordering::Acquire) == 0)
        };
        let until_end = async {
            match plan.deadline {
                Some(d) => tokio::time::sleep_until((shared.start + d).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_end);
        let wait = tokio::time::sleep_until(open_at.into());
        tokio::pin!(wait);
        let mut connected = false;
        let connect = conn.warm_up();
        tokio::pin!(connect);
        loop {
            if ended() {
                slots.finished.store(true, Ordering::Release);
                return;
            }
            tokio::select! {
                () = &mut wait, if !wait.is_elapsed() => {}
                () = &mut connect, if wait.is_elapsed() && !connected => connected = true,
                () = slots.notify.notified() => {}
                () = &mut until_end => {
                    slots.finished.store(true, Ordering::Release);
                    return;
                }
            }
            if connected {
                break;
            }
        }
    }
    let mut sent = 0u64;
    let mut k = 0u64;
    let mut batch = Batch::new(tx);
    loop {
        if shared.stopping.load(Ordering::Acquire) || plan.quota.is_some_and(|q| sent >= q) {
            break;
        }
        // A timed run ends at its duration, as Fortio's does: slots a slow target left
        // unsent by then are not sent afterwards (that would stretch the run).
        if plan.deadline.is_some_and(|d| shared.start.elapsed() >= d) {
            break;
        }
        let due = match &plan.schedule {
            Some(schedule) => {
                if !wait_for_slot(slots, k).await {
                    break;
                }
                if plan.nocatchup {
                    // Behind by more than one slot: skip to the latest due one.
                    let now = shared.start.elapsed();
                    let latest = schedule
                        .first_slot_at_or_after(plan.index, now)
                        .saturating_sub(1);
                    if latest > k {
                        k = latest;
                        continue;
                    }
                }
                // Released up to a wake lead early: the request is made ready now and
                // its write waits out the rest (see `wire::Stamps::hold_until`).
                Some(shared.start + schedule.due(plan.index, k))
            }
            None => None,
        };
        let before = Instant::now();
        let exchange = conn.send(due).await;
        // The socket's own stamps when the request got that far; the client's before
        // and after otherwise (a failure, or HTTP/2, whose writes are another task's).
        let (sent_at, done) = exchange.wire.unwrap_or((before, Instant::now()));
        let sample = Sample {
            code: exchange.code,
            error: exchange.error,
            service: done - sent_at,
            response: due.map_or(done - sent_at, |d| done.saturating_duration_since(d)),
            lag: due.map(|d| sent_at.saturating_duration_since(d)),
            completed: done - shared.start,
            size_bytes: exchange.size_bytes,
            header_bytes: exchange.header_bytes,
        };
        if !batch.push(sample, done) {
            break;
        }
        sent += 1;
        k += 1;
    }
    batch.flush();
    slots.finished.store(true, Ordering::Release);
}

/// Samples on their way to the collector, sent in batches: one channel message (and one
/// collector wake-up) per batch rather than per request, which matters at 100k req/s.
struct Batch {
    tx: UnboundedSender<Vec<Sample>>,
    samples: Vec<Sample>,
    last_flush: Instant,
}

impl Batch {
    /// Most samples held back at once.
    const SIZE: usize = 64;
    /// Longest a sample is held back (the live figures lag by at most this).
    const DELAY: Duration = Duration::from_millis(50);

    fn new(tx: UnboundedSender<Vec<Sample>>) -> Batch {
        Batch {
            tx,
            samples: Vec::with_capacity(Self::SIZE),
            last_flush: Instant::now(),
        }
    }

    /// Adds a sample; `false` once the collector is gone.
    fn push(&mut self, sample: Sample, now: Instant) -> bool {
        self.samples.push(sample);
        if self.samples.len() >= Self::SIZE || now.duration_since(self.last_flush) >= Self::DELAY {
            self.last_flush = now;
            return self.flush();
        }
        true
    }

    /// Sends what is held back; `false` once the collector is gone.
    fn flush(&mut self) -> bool {
        if self.samples.is_empty() {
            return true;
        }
        let samples = std::mem::replace(&mut self.samples, Vec::with_capacity(Self::SIZE));
        self.tx.send(samples).is_ok()
    }
}

/// Waits until slot `k` is released; `false` when the pacer closed first.
async fn wait_for_slot(slots: &Slots, k: u64) -> bool {
    loop {
        let notified = slots.notify.notified();
        if slots.released.load(Ordering::Acquire) > k {
            return true;
        }
        if slots.closed.load(Ordering::Acquire) {
            return slots.released.load(Ordering::Acquire) > k;
        }
        notified.await;
    }
}

/// Asks the kernel to wake this thread when its sleep ends rather than up to 50 µs later
/// (the default timer slack, which lets it batch wake-ups): `/proc/<tid>/timerslack_ns`,
/// written for the calling thread. Best effort: without it the pacer is only coarser.
fn fine_timer_slack() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    // `/proc/thread-self` -> `<pid>/task/<tid>`.
    let Some(tid) = link.file_name() else {
        return;
    };
    let path = std::path::Path::new("/proc")
        .join(tid)
        .join("timerslack_ns");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(error = %e, "cannot lower the pacer's timer slack");
    }
}

/// Starts the pacer thread.
fn spawn_pacer(
    schedule: Schedule,
    spec: &LoadSpec,
    shared: Arc<Shared>,
) -> std::thread::JoinHandle<()> {
    let quotas: Vec<Option<u64>> = (0..spec.connections)
        .map(|i| {
            if spec.nocatchup {
                None
            } else {
                quota_of(spec, i)
            }
        })
        .collect();
    let deadline = deadline_of(spec);
    std::thread::Builder::new()
        .name("meshload-pacer".into())
        .spawn(move || pace(&schedule, &quotas, deadline, &shared))
        .expect("the pacer thread starts")
}

/// Releases slots at their due times until the deadline, the quotas, or a stop.
fn pace(schedule: &Schedule, quotas: &[Option<u64>], deadline: Option<Duration>, shared: &Shared) {
    if shared.fine {
        fine_timer_slack();
    }
    let mut heap: BinaryHeap<Reverse<(Duration, usize, u64)>> = (0..quotas.len())
        .filter(|&i| quotas[i] != Some(0))
        .map(|i| Reverse((schedule.due(i, 0), i, 0)))
        .collect();
    let (lead, spin) = if shared.fine {
        (wake_lead(schedule), PACER_SPIN)
    } else {
        (Duration::ZERO, Duration::ZERO)
    };
    while let Some(&Reverse((due, i, k))) = heap.peek() {
        if shared.stopping.load(Ordering::Acquire) || deadline.is_some_and(|d| due >= d) {
            break;
        }
        let now = shared.start.elapsed() + lead;
        if due > now {
            let wait = due - now;
            if wait > spin {
                std::thread::sleep((wait - spin).min(PACER_MAX_SLEEP));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        heap.pop();
        let slots = &shared.slots[i];
        if slots.finished.load(Ordering::Acquire) {
            continue;
        }
        slots.released.store(k + 1, Ordering::Release);
        slots.notify.notify_one();
        if quotas[i].is_none_or(|q| k + 1 < q) {
            heap.push(Reverse((schedule.due(i, k + 1), i, k + 1)));
        }
    }
    shared.close_all();
}
