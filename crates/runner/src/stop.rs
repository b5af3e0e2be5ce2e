//! The stop request of a run (Ctrl-C, SIGTERM, a test's own trigger): made from any
//! future, so callers and tests choose what stops a run, and awaited by every part of it.

use std::future::Future;

use tokio::sync::watch;

/// A stop request that can be awaited many times.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// A signal that fires when `trigger` completes.
    pub fn new(trigger: impl Future<Output = ()> + Send + 'static) -> StopSignal {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = tx.send(true);
        });
        StopSignal(rx)
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when a stop is requested.
    pub async fn stopped(&self) {
        let mut rx = self.0.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
