//! `meshload run`: bring the topology up, check it, run every load test while collecting
//! metrics, evaluate the metric queries over each test's window, store every run, tear
//! down. Teardown happens whatever happens: success, error or a stop request.

use std::future::Future;
use std::time::{Duration, SystemTime};

use meshload_config::{Config, LoadTest, PrometheusSetting};
use meshload_loadgen::{Live, LoadOptions};
use meshload_promql::QueryOptions;
use meshload_promql::client::PrometheusClient;
use meshload_store::{ResultStore, RunRef};
use tokio::sync::watch;

use crate::RunError;
use crate::backend::{Backend, Deployment};
use crate::collector::{Collector, SharedStore};
use crate::plan::Plan;
use crate::prometheus::SpawnedPrometheus;
use crate::results::{MetricResult, RunFiles, TestSummary, slo_failures, write_run};

/// How long the raw samples stored with a run reach back before its start: the default
/// lookback, so that any query over the window can be answered again later.
const SAMPLES_LOOKBACK: Duration = Duration::from_secs(300);

/// What a run reports as it goes (the binary draws it; this crate does not print).
pub trait Observer {
    /// A phase of the run began (`starting 7 replicas`, `connectivity check`, ...).
    fn phase(&self, text: &str);
    /// Test `index` of `total` started; `live` has its running figures, when the
    /// backend's load generator gives any before the end.
    fn test_started(&self, index: usize, total: usize, test: &LoadTest, live: Option<Live>);
    /// A test ended and was stored.
    fn test_finished(&self, summary: &TestSummary);
}

/// Settings of a run beyond the config.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The meshload executable (it runs `meshload supervise` for a spawned Prometheus).
    pub exe: std::path::PathBuf,
    /// Where runs are stored.
    pub store: ResultStore,
    /// Pause between tests.
    pub sleep_between_tests: Duration,
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// One summary per test that ran.
    pub tests: Vec<TestSummary>,
    /// The run was stopped before its end.
    pub interrupted: bool,
}

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

/// Runs every test of `config` on `backend`.
pub async fn run<B: Backend>(
    config: &Config,
    backend: &mut B,
    settings: &RunSettings,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<RunReport, RunError> {
    let run_tag = meshload_store::run_id(SystemTime::now());
    let plan = Plan::new(config, &run_tag);
    let replicas: u32 = config.nodes.values().map(|n| n.replicas).sum();
    observer.phase(&format!(
        "starting {} nodes ({replicas} replicas) on the {} backend",
        config.nodes.len(),
        backend.name()
    ));
    let deployment = tokio::select! {
        up = backend.up(&plan) => up,
        () = stop.stopped() => Err(RunError::Interrupted),
    };
    let outcome = match deployment {
        Ok(deployment) => {
            run_tests(
                config,
                backend,
                &plan,
                &deployment,
                settings,
                observer,
                &stop,
            )
            .await
        }
        Err(e) => Err(e),
    };
    observer.phase("stopping the nodes");
    backend.down().await;
    outcome
}

async fn run_tests<B: Backend>(
    config: &Config,
    backend: &mut B,
    plan: &Plan,
    deployment: &Deployment,
    settings: &RunSettings,
    observer: &dyn Observer,
    stop: &StopSignal,
) -> Result<RunReport, RunError> {
    let collector = Collector::start(deployment, &plan.namespace, config.scrape_interval);
    if config.prometheus == PrometheusSetting::Spawn {
        observer.phase("starting prometheus (prometheus: spawn)");
    }
    let backend_prometheus = backend.prometheus();
    let answerer = match Answerer::new(
        config,
        &collector,
        settings,
        deployment,
        &plan.namespace,
        backend_prometheus,
    )
    .await
    {
        Ok(answerer) => answerer,
        Err(e) => {
            collector.stop().await;
            return Err(e);
        }
    };
    let outcome = async {
        let answerer = &answerer;
        observer.phase(&format!(
            "connectivity check: {} requests to each service",
            config.connectivity_checks
        ));
        connectivity_check(config, backend, plan, deployment, stop).await?;
        let mut report = RunReport::default();
        let ctx = TestContext {
            config,
            deployment,
            settings,
            answerer,
            collector: &collector,
        };
        for (i, test) in config.tests.iter().enumerate() {
            if i > 0 && !settings.sleep_between_tests.is_zero() {
                observer.phase(&format!(
                    "sleeping {} between tests",
                    humantime::format_duration(settings.sleep_between_tests)
                ));
                tokio::select! {
                    () = tokio::time::sleep(settings.sleep_between_tests) => {}
                    () = stop.stopped() => {}
                }
            }
            if stop.is_stopped() {
                report.interrupted = true;
                break;
            }
            let Some(summary) = run_test(&ctx, backend, i, test, observer, stop).await? else {
                report.interrupted = true;
                break;
            };
            observer.test_finished(&summary);
            let interrupted = summary.status == "interrupted";
            report.tests.push(summary);
            if interrupted {
                report.interrupted = true;
                break;
            }
        }
        Ok(report)
    }
    .await;
    answerer.stop().await;
    collector.stop().await;
    outcome
}

/// Sends `ConnectivityCheckPerURL` requests to every service; every one must succeed.
async fn connectivity_check<B: Backend>(
    config: &Config,
    backend: &mut B,
    plan: &Plan,
    deployment: &Deployment,
    stop: &StopSignal,
) -> Result<(), RunError> {
    let n = u64::from(config.connectivity_checks);
    if n == 0 {
        return Ok(());
    }
    for node in &plan.nodes {
        let options = LoadOptions {
            url: format!("http://{}/", plan.service_authority(&node.name)),
            qps: 0.0,
            connections: n.min(8) as usize,
            requests: Some(n),
            headers: vec![format!("{}: 1", meshload_node::CHECK_HEADER)],
            connect_to: deployment.endpoints(&node.name),
            ..LoadOptions::default()
        };
        let check_error = |reason: String| RunError::Check {
            node: node.name.clone(),
            reason,
        };
        let fortio = match backend.drive(options, stop, Live::default()).await {
            Ok(Some(fortio)) if !fortio.interrupted => fortio,
            Ok(_) => return Err(RunError::Interrupted),
            Err(_) if stop.is_stopped() => return Err(RunError::Interrupted),
            Err(e) => return Err(check_error(e)),
        };
        let failed = fortio.error_count();
        if failed > 0 {
            let codes: Vec<String> = fortio
                .ret_codes
                .iter()
                .map(|(c, k)| format!("{c}: {k}"))
                .collect();
            return Err(check_error(format!(
                "{failed} of {n} requests failed (codes {})",
                codes.join(", ")
            )));
        }
    }
    Ok(())
}

/// Who answers the metric queries.
enum Answerer {
    Embedded(SharedStore),
    Prometheus(PrometheusClient, String),
    Spawned(PrometheusClient, Box<SpawnedPrometheus>),
}

impl Answerer {
    async fn new(
        config: &Config,
        collector: &Collector,
        settings: &RunSettings,
        deployment: &Deployment,
        namespace: &str,
        backend_prometheus: Option<String>,
    ) -> Result<Answerer, RunError> {
        let client =
            |url: &str| PrometheusClient::new(url).map_err(|e| RunError::Prometheus(e.to_string()));
        match &config.prometheus {
            // A backend with its own Prometheus (a cluster's) answers instead of the
            // embedded engine, which sees no samples there.
            PrometheusSetting::Embedded => match backend_prometheus {
                Some(url) => Ok(Answerer::Prometheus(client(&url)?, url)),
                None => Ok(Answerer::Embedded(collector.store())),
            },
            PrometheusSetting::Url(url) => Ok(Answerer::Prometheus(client(url)?, url.clone())),
            PrometheusSetting::Spawn => {
                let interval = config.scrape_interval;
                let spawned =
                    SpawnedPrometheus::start(&settings.exe, deployment, namespace, interval)
                        .await?;
                Ok(Answerer::Spawned(client(&spawned.url)?, Box::new(spawned)))
            }
        }
    }

    async fn stop(self) {
        if let Answerer::Spawned(_, spawned) = self {
            spawned.stop().await;
        }
    }

    fn describe(&self) -> String {
        match self {
            Answerer::Embedded(_) => "embedded".to_string(),
            Answerer::Prometheus(_, url) => url.clone(),
            Answerer::Spawned(_, spawned) => format!("spawn: {}", spawned.url),
        }
    }

    async fn range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<meshload_promql::eval::RangeSeries>, String> {
        let result = match self {
            Answerer::Embedded(store) => {
                let store = store.lock().expect("the store lock is never poisoned");
                meshload_promql::range_query(
                    &store,
                    query,
                    start,
                    end,
                    step,
                    QueryOptions::default(),
                )
                .map_err(|e| e.to_string())?
            }
            Answerer::Prometheus(client, _) | Answerer::Spawned(client, _) => client
                .query_range(query, start, end, step)
                .await
                .map_err(|e| e.to_string())?,
        };
        match result.value {
            meshload_promql::Value::Matrix(m) => Ok(m),
            other => Err(format!("expected a range result, got {other:?}")),
        }
    }
}

/// What every test of a run shares.
struct TestContext<'a> {
    config: &'a Config,
    deployment: &'a Deployment,
    settings: &'a RunSettings,
    answerer: &'a Answerer,
    collector: &'a Collector,
}

fn load_options(test: &LoadTest, deployment: &Deployment) -> LoadOptions {
    LoadOptions {
        url: test.url.clone(),
        qps: test.qps.unwrap_or(0.0),
        connections: test.connections as usize,
        duration: Some(test.duration),
        requests: test.requests,
        uniform: test.uniform,
        jitter: test.jitter,
        nocatchup: test.nocatchup,
        headers: test.headers.clone(),
        payload: test.payload.clone().map(bytes::Bytes::from),
        timeout: test.timeout.unwrap_or(Duration::from_secs(3)),
        labels: test.labels.clone(),
        connect_to: deployment.endpoints(&test.target),
        ..LoadOptions::default()
    }
}

/// Runs one test, evaluates its metrics and stores the run; `None` when a stop request
/// ended the test before the backend's load generator gave any result.
async fn run_test<B: Backend>(
    ctx: &TestContext<'_>,
    backend: &mut B,
    index: usize,
    test: &LoadTest,
    observer: &dyn Observer,
    stop: &StopSignal,
) -> Result<Option<TestSummary>, RunError> {
    let options = load_options(test, ctx.deployment);
    let live = Live::default();
    let shown = backend.live_figures().then(|| live.clone());
    observer.test_started(index, ctx.config.tests.len(), test, shown);
    let started = SystemTime::now();
    let fortio = match backend.drive(options, stop, live).await {
        Ok(Some(fortio)) => fortio,
        Ok(None) => return Ok(None),
        Err(_) if stop.is_stopped() => return Ok(None),
        Err(reason) => {
            return Err(RunError::Test {
                test: test.name.clone(),
                reason,
            });
        }
    };
    let ended = SystemTime::now();
    // The window's end needs samples: scrape now; a Prometheus scrapes on its own
    // schedule, so give it one interval (`scrape_interval`, which should match a cluster's
    // Prometheus; at most a minute).
    ctx.collector.scrape_now().await;
    if !fortio.interrupted && !matches!(ctx.answerer, Answerer::Embedded(_)) {
        let wait = ctx.config.scrape_interval.min(Duration::from_secs(60));
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    let ms = |t: SystemTime| meshload_promql::system_time_ms(&t);
    let (start_ms, end_ms) = (ms(started), ms(ended));
    let step = i64::try_from(ctx.config.metrics_step.as_millis())
        .unwrap_or(10_000)
        .max(1);
    // The queries' last step is now, just after the final scrape, so the window's last
    // samples count; the steps run back from there to the test's start.
    let query_end = ms(SystemTime::now()).max(end_ms);
    let query_start = query_end - (query_end - start_ms) / step * step;
    let mut metrics = Vec::with_capacity(ctx.config.metrics.len());
    for (name, query) in &ctx.config.metrics {
        let series = ctx
            .answerer
            .range(query, query_start, query_end, step)
            .await;
        metrics.push(MetricResult {
            name: name.clone(),
            query: query.clone(),
            series,
        });
    }
    let exits = backend.exited().await;
    let mut summary = TestSummary::new(test, &fortio, fortio.interrupted);
    summary.slo_failures = slo_failures(&test.slo, &summary, test.qps);
    summary.metrics = metrics.iter().map(|m| (m.name.clone(), m.note())).collect();
    summary.node_exits = exits
        .iter()
        .map(|e| format!("{} ({})", e.pod, e.status))
        .collect();
    let mut samples = Vec::new();
    {
        let store = ctx.collector.store();
        let store = store.lock().expect("the store lock is never poisoned");
        let lookback = SAMPLES_LOOKBACK.as_millis() as i64;
        store
            .write_jsonl_window(&mut samples, start_ms - lookback, end_ms + step)
            .expect("writing to memory");
    }
    let run = ctx.settings.store.local().begin_run(&test.name, started)?;
    let run_ref = RunRef {
        test_name: test.name.clone(),
        id: run.id().to_string(),
        dir: run.final_dir().to_path_buf(),
    };
    summary.run_dir = match &ctx.settings.store {
        ResultStore::Fs(_) => run.final_dir().display().to_string(),
        ResultStore::S3(s3) => format!(
            "{}/{}/{}",
            s3.address().trim_end_matches('/'),
            test.name,
            run.id()
        ),
    };
    let files = RunFiles {
        config: ctx.config,
        test,
        fortio: &fortio,
        metrics: &metrics,
        summary: &summary,
        backend: backend.name(),
        backend_facts: &backend.facts(),
        prometheus: &ctx.answerer.describe(),
        window: (started, ended),
        samples,
        exits: &exits,
    };
    write_run(&run, &files)?;
    run.commit()?;
    // Where the run ends up; a store that cannot take it now leaves it in the spool,
    // and the summary says where.
    match ctx.settings.store.publish(&run_ref).await {
        Ok(location) => summary.run_dir = location,
        Err(e) => {
            summary.run_dir = run_ref.dir.display().to_string();
            summary.storage_note = Some(e.to_string());
        }
    }
    Ok(Some(summary))
}
