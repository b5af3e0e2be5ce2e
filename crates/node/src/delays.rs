//! Injected delays finer than a millisecond. tokio's timer fires on millisecond ticks, so a
//! node asked for 0.5 ms of latency added about 1.3 ms (`bench/trust.sh` measured 1.0-2.1
//! ms of added p50 for a leaf with `"latency": "500us"`). Here one thread keeps the
//! deadlines and wakes each waiter from a timed wait on its channel (with no timer slack),
//! which the kernel's high-resolution timers end within tens of microseconds; a waiter is
//! never woken early.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A waiter: when it is due, and how to wake it.
type Request = (Instant, oneshot::Sender<()>);

/// The handle of the delay thread; the thread ends once every handle is dropped.
#[derive(Debug, Clone)]
pub struct Delays {
    requests: mpsc::Sender<Request>,
}

impl Delays {
    /// Starts the delay thread.
    pub fn start() -> std::io::Result<Delays> {
        let (requests, incoming) = mpsc::channel();
        std::thread::Builder::new()
            .name("node-delays".into())
            .spawn(move || serve(&incoming))?;
        Ok(Delays { requests })
    }

    /// Waits `delay` (at least; tens of microseconds more at most, on an idle host).
    pub async fn sleep(&self, delay: Duration) {
        let (wake, woken) = oneshot::channel();
        let due = Instant::now() + delay;
        if self.requests.send((due, wake)).is_err() || woken.await.is_err() {
            // The thread is gone: tokio's coarser timer still keeps the delay.
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A waiter in the heap, earliest first (ties by arrival).
struct Waiter {
    due: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    /// Reversed: `BinaryHeap` pops the largest, and the earliest is wanted.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Wakes each waiter at its time, until every handle is dropped (then at once).
fn serve(incoming: &mpsc::Receiver<Request>) {
    // Linux lets a timed wait end up to 50 µs late by default (timer slack), to group
    // wake-ups: this thread exists to be on time.
    if let Err(e) = nix::sys::prctl::set_timerslack(1) {
        tracing::debug!("timer slack stays at its default: {e}");
    }
    let mut heap = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|w: &Waiter| w.due <= now) {
            if let Some(w) = heap.pop() {
                // A waiter that gave up (its request was cancelled) is no error.
                let _ = w.wake.send(());
            }
        }
        let next = match heap.peek() {
            Some(w) => incoming.recv_timeout(w.due - now),
            None => incoming
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((due, wake)) => {
                seq += 1;
                heap.push(Waiter { due, seq, wake });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_waiter_is_woken_early_and_each_is_woken() {
        let delays = Delays::start().expect("a thread");
        let mut waits = Vec::new();
        for i in 0..50u64 {
            let delays = delays.clone();
            // Out of order on purpose: 3.0, 0.1, 2.9, 0.2, ... ms.
            let micros = if i % 2 == 0 {
                3_000 - i * 50
            } else {
                100 + i * 50
            };
            waits.push(tokio::spawn(async move {
                let delay = Duration::from_micros(micros);
                let started = Instant::now();
                delays.sleep(delay).await;
                (delay, started.elapsed())
            }));
        }
        for w in waits {
            let (asked, took) = w.await.expect("the waiter ends");
            assert!(took >= asked, "woken after {took:?} of {asked:?}");
        }
    }

    #[tokio::test]
    async fn without_its_thread_a_delay_is_still_kept() {
        let (requests, incoming) = mpsc::channel();
        drop(incoming);
        let delays = Delays { requests };
        let started = Instant::now();
        delays.sleep(Duration::from_millis(2)).await;
        assert!(started.elapsed() >= Duration::from_millis(2));
    }
}
