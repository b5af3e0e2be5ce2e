//! Metric collection during a run (the embedded Prometheus and kubelet): every scrape
//! interval, each of the deployment's scrape targets is scraped into the embedded store
//! (with the target labels Prometheus would add), and each local container's process is
//! sampled from `/proc` as cAdvisor does (`container_memory_working_set_bytes`,
//! `container_cpu_usage_seconds_total`). A target that stops answering gets `up 0` and
//! staleness markers, as in Prometheus.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshload_config::proxies::{CPU_SERIES, MEMORY_SERIES};
use meshload_promql::Store;
use meshload_promql::exposition::{self, Format};
use meshload_promql::labels::{Labels, METRIC_NAME};
use meshload_promql::store::{SeriesId, stale_nan};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Container, Deployment, ScrapeTarget};
use crate::http::{HttpClient, client, get};

/// The store shared between the collector and the queries.
pub type SharedStore = Arc<Mutex<Store>>;

/// A running scraper.
#[derive(Debug)]
pub struct Scraper {
    store: SharedStore,
    stop: watch::Sender<bool>,
    paused: watch::Sender<bool>,
    now: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Scraper {
    /// Starts scraping every target and sampling every container of `deployment` every
    /// `interval`.
    pub fn start(deployment: &Deployment, interval: Duration) -> Scraper {
        let store = SharedStore::default();
        let (stop, stopped) = watch::channel(false);
        let (paused, pause) = watch::channel(false);
        let (now, requests) = tokio::sync::mpsc::channel(4);
        let scrape_loop = ScrapeLoop::new(deployment, store.clone(), interval);
        let task = tokio::spawn(scrape_loop.run(stopped, pause, requests));
        Scraper {
            store,
            stop,
            paused,
            now,
            task,
        }
    }

    /// Pauses the scheduled scrapes (while another arm's test runs: scraping an idle arm
    /// would only disturb it) or resumes them; [`Scraper::scrape_now`] works either way.
    /// Resuming scrapes at once, so that the next test starts with fresh samples.
    pub async fn set_paused(&self, paused: bool) {
        let was = self.paused.send_replace(paused);
        if was && !paused {
            self.scrape_now().await;
        }
    }

    /// Scrapes every target now (outside the schedule) and returns when done: the end of
    /// a test window then has samples whatever the interval.
    pub async fn scrape_now(&self) {
        let (done, finished) = tokio::sync::oneshot::channel();
        if self.now.send(done).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// The samples collected so far.
    pub fn store(&self) -> SharedStore {
        self.store.clone()
    }

    /// Stops collecting.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One scrape target and what it reported last time.
struct Target {
    target: ScrapeTarget,
    /// Series written by the last successful scrape (to mark stale when they vanish).
    last_series: Vec<SeriesId>,
}

/// One sampled container and its series.
struct Sampled {
    container: Container,
    /// Series of the last sample (to mark stale when the process is gone).
    series: Vec<SeriesId>,
}

struct ScrapeLoop {
    targets: Vec<Target>,
    containers: Vec<Sampled>,
    store: SharedStore,
    interval: Duration,
    client: HttpClient,
}

impl ScrapeLoop {
    fn new(deployment: &Deployment, store: SharedStore, interval: Duration) -> ScrapeLoop {
        let targets = deployment
            .scrape_targets
            .iter()
            .map(|t| Target {
                target: t.clone(),
                last_series: Vec::new(),
            })
            .collect();
        let containers = deployment
            .containers
            .iter()
            .map(|c| Sampled {
                container: c.clone(),
                series: Vec::new(),
            })
            .collect();
        ScrapeLoop {
            targets,
            containers,
            store,
            interval,
            client: client(),
        }
    }

    async fn run(
        mut self,
        mut stopped: watch::Receiver<bool>,
        paused: watch::Receiver<bool>,
        mut requests: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if !*paused.borrow() {
                        self.scrape_all().await;
                    }
                }
                Some(done) = requests.recv() => {
                    self.scrape_all().await;
                    let _ = done.send(());
                }
                _ = stopped.changed() => return,
            }
        }
    }

    async fn scrape_all(&mut self) {
        let now = now_ms();
        let timeout = self.interval.min(Duration::from_secs(5));
        let client = &self.client;
        let fetches = self
            .targets
            .iter()
            .map(|t| get(client, t.target.url(), timeout));
        let answers = futures_util::future::join_all(fetches).await;
        // Parsing and storing a round (an Envoy's stats run to thousands of series) takes
        // milliseconds of CPU: on a blocking thread, so that the runtime's workers, which
        // drive the load, are not held for it.
        let mut targets = std::mem::take(&mut self.targets);
        let mut containers = std::mem::take(&mut self.containers);
        let store = self.store.clone();
        let record = move || {
            let mut store = store.lock().expect("the store lock is never poisoned");
            for (target, answer) in targets.iter_mut().zip(answers) {
                let scraped = match answer {
                    Ok((200, content_type, body)) => {
                        let text = String::from_utf8_lossy(&body);
                        exposition::parse(&text, Format::from_content_type(&content_type))
                            .map_err(|e| e.to_string())
                    }
                    Ok((status, _, _)) => Err(format!("status {status}")),
                    Err(e) => Err(e),
                };
                record_scrape(&mut store, target, scraped, now);
            }
            for container in &mut containers {
                record_process(&mut store, container, now);
            }
            drop(store);
            (targets, containers)
        };
        (self.targets, self.containers) = tokio::task::spawn_blocking(record)
            .await
            .expect("recording a scrape does not panic");
    }
}

/// Appends one target's scrape (or its failure) at `now`.
fn record_scrape(
    store: &mut Store,
    target: &mut Target,
    scraped: Result<exposition::Exposition, String>,
    now: i64,
) {
    let up = scraped.is_ok();
    let mut written = Vec::new();
    if let Ok(exposition) = scraped {
        for sample in exposition.samples {
            let mut pairs: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            for (n, v) in &target.target.labels {
                // As Prometheus without honor_labels: a clashing exported label is kept
                // under `exported_<name>`.
                if let Some(existing) = pairs.iter_mut().find(|(k, _)| k == n) {
                    existing.0 = format!("exported_{n}");
                }
                pairs.push((n.clone(), v.clone()));
            }
            let id = store.series_id(&Labels::from_pairs(pairs));
            store.append_to(id, sample.timestamp_ms.unwrap_or(now), sample.value);
            written.push(id);
        }
    } else {
        tracing::debug!(target = %target.target.url(), "scrape failed");
    }
    // Series that vanished since the last scrape (or all, when the target is down).
    for id in target.last_series.iter().filter(|id| !written.contains(id)) {
        store.append_to(*id, now, stale_nan());
    }
    target.last_series = written;
    let mut up_labels = target.target.labels.clone();
    up_labels.push((METRIC_NAME.into(), "up".into()));
    store.append(
        &Labels::from_pairs(up_labels),
        now,
        if up { 1.0 } else { 0.0 },
    );
}

/// Appends the cAdvisor-like samples of a local container's process.
fn record_process(store: &mut Store, sampled: &mut Sampled, now: i64) {
    let c = &sampled.container;
    let Some(sample) = meshload_process::resources::sample(c.pid as i32) else {
        for id in std::mem::take(&mut sampled.series) {
            store.append_to(id, now, stale_nan());
        }
        return;
    };
    let values = [
        (MEMORY_SERIES, sample.working_set_bytes as f64),
        ("container_memory_rss", sample.resident_bytes as f64),
        (CPU_SERIES, sample.cpu_seconds),
    ];
    let mut ids = Vec::with_capacity(values.len());
    for (name, value) in values {
        let labels = Labels::from_pairs([
            (METRIC_NAME, name),
            ("namespace", &c.namespace),
            ("pod", &c.pod),
            ("container", &c.container),
        ]);
        let id = store.series_id(&labels);
        store.append_to(id, now, value);
        ids.push(id);
    }
    sampled.series = ids;
}

fn now_ms() -> i64 {
    meshload_promql::system_time_ms(&SystemTime::now())
}
