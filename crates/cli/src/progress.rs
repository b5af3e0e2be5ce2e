//! A live progress bar on stderr (only when stderr is a terminal) for a running load
//! test: elapsed against total, live rate, p99 and errors.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use meshload_loadgen::Live;

/// What the bar counts towards.
#[derive(Debug, Clone, Copy)]
pub enum Total {
    /// An exact number of requests.
    Requests(u64),
    /// A duration.
    Time(Duration),
    /// Until stopped.
    Unbounded,
}

/// A progress bar and the task refreshing it.
pub struct Progress {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts a bar (a no-op when stderr is not a terminal). Call inside a Tokio runtime.
    /// Without `live` figures (a load generator in a cluster) it shows the time only.
    pub fn start(total: Total, live: Option<Live>) -> Progress {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress {
                bar: None,
                task: None,
            };
        }
        let (bar, template) = match total {
            Total::Requests(n) => (
                ProgressBar::new(n),
                "{elapsed_precise} [{bar:30}] {pos}/{len} requests  {msg}",
            ),
            Total::Time(d) => (
                ProgressBar::new(d.as_secs().max(1)),
                "{elapsed_precise} [{bar:30}] {pos}/{len}s  {msg}",
            ),
            Total::Unbounded => (
                ProgressBar::new_spinner(),
                "{elapsed_precise} {spinner}  {msg}",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let by_count = matches!(total, Total::Requests(_));
        let started = Instant::now();
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(live) = &live else {
                    shown.set_position(started.elapsed().as_secs());
                    shown.set_message("load generator in the cluster: figures at the end");
                    continue;
                };
                let stats = live.lock().map(|s| s.clone()).unwrap_or_default();
                shown.set_position(if by_count {
                    stats.requests
                } else {
                    started.elapsed().as_secs()
                });
                shown.set_message(format!(
                    "{} req/s  p99 {:.2}ms  errors {}",
                    stats.last_second_requests,
                    stats.last_second_p99 * 1e3,
                    stats.errors
                ));
            }
        });
        Progress {
            bar: Some(bar),
            task: Some(task),
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
