//! `meshload run`: bring the topology up, check it, run every load test while collecting
//! metrics, evaluate the metric queries over each test's window, store every run, tear
//! down. Teardown happens whatever happens: success, error or a stop request.

use std::time::{Duration, SystemTime};

use meshload_config::proxies::{APP_CONTAINER, CPU_SERIES, MEMORY_SERIES, resource_series};
use meshload_config::search::{SearchSpec, Threshold};
use meshload_config::{Config, LoadTest, PrometheusSetting};
use meshload_loadgen::FortioResult;
use meshload_loadgen::{Live, LoadOptions};
use meshload_promql::QueryOptions;
use meshload_promql::client::PrometheusClient;
use meshload_store::{ResultStore, RunRef, RunStatus};

use crate::backend::{Backend, Deployment, ReplicaExit};
use crate::host::HostMark;
use crate::plan::Plan;
use crate::prometheus::SpawnedPrometheus;
pub use crate::results::SeriesPosition;
use crate::results::{MetricResult, RunFiles, TestSummary, slo_failures, write_run};
use crate::scrape::{Scraper, SharedStore};
use crate::search::{Outcome, SearchReport, Trial, TrialPlan, TrialRunner};
use crate::stop::StopSignal;
use crate::{BoxError, RunError, error_chain};

/// How long the raw samples stored with a run reach back before its start: the default
/// lookback, so that any query over the window can be answered again later.
const SAMPLES_LOOKBACK: Duration = Duration::from_secs(300);

/// What a run reports as it goes (the binary draws it; this crate does not print).
pub trait Observer {
    /// A phase of the run began (`starting 7 replicas`, `connectivity check`, ...).
    fn phase(&self, text: &str);
    /// Test `index` of `total` started, as run `position` of its series; `live` has its
    /// running figures, when the backend's load generator gives any before the end.
    fn test_started(
        &self,
        index: usize,
        total: usize,
        test: &LoadTest,
        position: &SeriesPosition,
        live: Option<Live>,
    );
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
    /// Runs of every test per arm, over what the config says (`--repeat`).
    pub repeat: Option<u32>,
    /// CPUs that this process (the load generator) is pinned to once every arm is up
    /// (`--loadgen-cpus`); empty: not pinned.
    pub loadgen_cpus: Vec<usize>,
    /// Where the host counts as saturated.
    pub saturation: crate::host::Limits,
}

/// One arm of a comparison: a backend, and the name its runs carry (the mesh: `none`,
/// `envoy`; `none#2` for the second arm of a mesh named twice).
#[derive(Debug)]
pub struct Arm<'a, B> {
    /// The arm's name.
    pub label: String,
    /// Where its topology runs.
    pub backend: &'a mut B,
}

impl<B: Backend> Arm<'_, B> {
    /// Arms for backends in order, named by their mesh (`#2`, `#3` for a mesh again).
    pub fn named(backends: &mut [B]) -> Vec<Arm<'_, B>> {
        let mut seen: Vec<meshload_config::Mesh> = Vec::new();
        backends
            .iter_mut()
            .map(|backend| {
                let mesh = mesh_of(backend);
                seen.push(mesh);
                let n = seen.iter().filter(|m| **m == mesh).count();
                let label = if n == 1 {
                    mesh.to_string()
                } else {
                    format!("{mesh}#{n}")
                };
                Arm { label, backend }
            })
            .collect()
    }
}

/// The mesh a backend runs (`none` when it names none).
fn mesh_of<B: Backend>(backend: &B) -> meshload_config::Mesh {
    backend
        .facts()
        .get("mesh")
        .and_then(|m| m.as_str()?.parse().ok())
        .unwrap_or(meshload_config::Mesh::None)
}

/// The order of the arms in repeat `r` (from 0): rotated by one each repeat (A B, B A,
/// A B, ... for two arms), so that a drift of the host falls on every arm alike and no
/// arm always runs first.
pub fn arm_order(r: u32, arms: usize) -> Vec<usize> {
    (0..arms).map(|j| (r as usize + j) % arms).collect()
}

/// A capacity search that a run performed for one of its tests.
#[derive(Debug, Clone)]
pub struct SearchRun {
    /// The test searched.
    pub test_name: String,
    /// The arm it ran in: its mesh (`none#2` for a mesh named again).
    pub mesh: String,
    /// The search's id (the start time, as run ids are).
    pub search_id: String,
    /// The search's objectives and method.
    pub spec: SearchSpec,
    /// What it found.
    pub report: SearchReport,
    /// The search as stored (`search-<id>.json`) and printed by `--json`.
    pub document: serde_json::Value,
    /// Where its summary (`search-<id>.json`) was written.
    pub file: Option<std::path::PathBuf>,
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// One summary per test run (every arm and repeat; a search's trials are in
    /// `searches`).
    pub tests: Vec<TestSummary>,
    /// One per test that is a capacity search, per arm.
    pub searches: Vec<SearchRun>,
    /// The run was stopped before its end.
    pub interrupted: bool,
}

/// Runs every test of `config` on `backend`.
pub async fn run<B: Backend>(
    config: &Config,
    backend: &mut B,
    settings: &RunSettings,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<RunReport, RunError> {
    let label = mesh_of(backend).to_string();
    let arm = Arm { label, backend };
    run_arms(config, &mut [arm], settings, observer, stop).await
}

/// Runs every test of `config` on every arm: all arms are brought up first, then each
/// test runs `repeat` times per arm in the order [`arm_order`] gives, then all go down
/// (whatever happens: success, error or a stop request).
pub async fn run_arms<B: Backend>(
    config: &Config,
    arms: &mut [Arm<'_, B>],
    settings: &RunSettings,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<RunReport, RunError> {
    let now = SystemTime::now();
    let run_tag = meshload_store::run_id(now);
    let series = series_id(now);
    let outcome = up_and_run(config, arms, &run_tag, &series, settings, observer, &stop).await;
    observer.phase("stopping the nodes");
    for arm in arms.iter_mut() {
        arm.backend.down().await;
    }
    outcome
}

/// A series id for a `meshload run` that started at `now`: its second, milliseconds and
/// process id (`YYYYMMDDHHMMSS.mmm-PID`), so that two runs never share one, and ids sort
/// by start time.
fn series_id(now: SystemTime) -> String {
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    format!(
        "{}.{millis:03}-{}",
        meshload_store::run_id(now),
        std::process::id()
    )
}

/// What one arm brought up, and what observes it.
struct ArmState {
    plan: Plan,
    deployment: Deployment,
    scraper: Option<Scraper>,
    samples: SharedStore,
    answerer: Answerer,
}

/// Readies arm `k` for its test: its scraper runs (with a fresh scrape), every other
/// arm's pauses. An idle arm's scrapes (every Envoy's stats, every second) would only
/// disturb the arm under load: they showed as schedule lag on a 2-core host.
async fn focus(states: &[ArmState], k: usize) {
    if states.len() < 2 {
        return;
    }
    for (j, state) in states.iter().enumerate() {
        if let Some(scraper) = &state.scraper {
            scraper.set_paused(j != k).await;
        }
    }
}

impl ArmState {
    async fn stop(self) {
        self.answerer.stop().await;
        if let Some(scraper) = self.scraper {
            scraper.stop().await;
        }
    }
}

/// Brings every arm up with what observes it, pins the load generator, runs the tests,
/// and stops the observers (the caller takes the arms down).
async fn up_and_run<B: Backend>(
    config: &Config,
    arms: &mut [Arm<'_, B>],
    run_tag: &str,
    series: &str,
    settings: &RunSettings,
    observer: &dyn Observer,
    stop: &StopSignal,
) -> Result<RunReport, RunError> {
    let mut states = Vec::with_capacity(arms.len());
    let mut outcome = Ok(RunReport::default());
    // One arm is not named in progress lines.
    let named = arms.len() > 1;
    for (k, arm) in arms.iter_mut().enumerate() {
        // Arms after the first get a tag of their own: their pods and files are apart.
        let tag = match k {
            0 => run_tag.to_string(),
            _ => format!("{run_tag}-{k}"),
        };
        match bring_up(
            config,
            &mut *arm.backend,
            &tag,
            &arm.label,
            named,
            settings,
            observer,
            stop,
        )
        .await
        {
            Ok(state) => states.push(state),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if outcome.is_ok() && !settings.loadgen_cpus.is_empty() {
        // After every child started: children inherit the affinity of their parent.
        let children: Vec<u32> = states
            .iter()
            .flat_map(|s| s.deployment.containers.iter().map(|c| c.pid))
            .collect();
        match crate::host::isolate(&settings.loadgen_cpus, &children) {
            Ok(()) => observer.phase(&format!(
                "load generator pinned to CPUs {:?}; nodes and sidecars to the others",
                settings.loadgen_cpus
            )),
            Err(e) => {
                outcome = Err(RunError::Backend {
                    backend: "local",
                    source: e.into(),
                })
            }
        }
    }
    if outcome.is_ok() {
        outcome = run_each_test(config, arms, &states, series, settings, observer, stop).await;
    }
    for state in states {
        state.stop().await;
    }
    outcome
}

/// Brings one arm up: its topology, its scraper and query answerer, its connectivity
/// check.
#[allow(clippy::too_many_arguments)]
async fn bring_up<B: Backend>(
    config: &Config,
    backend: &mut B,
    tag: &str,
    label: &str,
    named: bool,
    settings: &RunSettings,
    observer: &dyn Observer,
    stop: &StopSignal,
) -> Result<ArmState, RunError> {
    let plan = Plan::new(config, tag);
    let replicas: u32 = config.nodes.values().map(|n| n.replicas).sum();
    let arm = if named {
        format!(" for arm {label}")
    } else {
        String::new()
    };
    observer.phase(&format!(
        "starting {} nodes ({replicas} replicas) on the {} backend{arm}",
        config.nodes.len(),
        backend.name()
    ));
    let deployment = tokio::select! {
        up = backend.up(&plan) => up?,
        () = stop.stopped() => return Err(RunError::Interrupted),
    };
    // Nothing to scrape or sample (a cluster's pods): no scraper, and an empty store.
    let scraper = deployment
        .observable()
        .then(|| Scraper::start(&deployment, config.scrape_interval));
    if config.prometheus == PrometheusSetting::Spawn {
        observer.phase("starting prometheus (prometheus: spawn)");
    }
    let samples = scraper.as_ref().map(Scraper::store).unwrap_or_default();
    let answerer = Answerer::new(
        config,
        samples.clone(),
        settings,
        &deployment,
        backend.prometheus(),
    )
    .await;
    let answerer = match answerer {
        Ok(answerer) => answerer,
        Err(e) => {
            if let Some(scraper) = scraper {
                scraper.stop().await;
            }
            return Err(e);
        }
    };
    let state = ArmState {
        plan,
        deployment,
        scraper,
        samples,
        answerer,
    };
    observer.phase(&format!(
        "connectivity check{arm}: {} requests to each service",
        config.connectivity_checks
    ));
    match connectivity_check(config, backend, &state.plan, &state.deployment, stop).await {
        Ok(()) => Ok(state),
        Err(e) => {
            state.stop().await;
            Err(e)
        }
    }
}

/// Every test in order, with the pauses between them: each one `repeat` times per arm,
/// the arms interleaved; a search once per arm.
async fn run_each_test<B: Backend>(
    config: &Config,
    arms: &mut [Arm<'_, B>],
    states: &[ArmState],
    series: &str,
    settings: &RunSettings,
    observer: &dyn Observer,
    stop: &StopSignal,
) -> Result<RunReport, RunError> {
    let labels: Vec<String> = arms.iter().map(|a| a.label.clone()).collect();
    let ctx = |k: usize| TestContext {
        arm: &labels[k],
        config,
        deployment: &states[k].deployment,
        settings,
        answerer: &states[k].answerer,
        scraper: states[k].scraper.as_ref(),
        samples: states[k].samples.clone(),
    };
    let mut report = RunReport::default();
    'tests: for (i, test) in config.tests.iter().enumerate() {
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
        if let Some(spec) = &test.search {
            for (k, arm) in arms.iter_mut().enumerate() {
                focus(states, k).await;
                let searched =
                    run_search(&ctx(k), &mut *arm.backend, i, test, spec, observer, stop).await?;
                let interrupted = searched.report.outcome == Outcome::Interrupted;
                report.searches.push(searched);
                if interrupted {
                    report.interrupted = true;
                    break 'tests;
                }
            }
            continue;
        }
        let repeats = settings.repeat.unwrap_or(test.repeat).max(1);
        for r in 0..repeats {
            for k in arm_order(r, arms.len()) {
                let position = SeriesPosition {
                    id: series.to_string(),
                    arm: arms[k].label.clone(),
                    repeat: r + 1,
                    repeats,
                    arms: labels.clone(),
                };
                focus(states, k).await;
                let backend = &mut *arms[k].backend;
                let outcome =
                    run_test(&ctx(k), backend, i, test, observer, stop, &position, None).await?;
                let Some(TestOutcome { summary, .. }) = outcome else {
                    report.interrupted = true;
                    break 'tests;
                };
                observer.test_finished(&summary);
                let interrupted = summary.status == RunStatus::Interrupted;
                report.tests.push(summary);
                if interrupted {
                    report.interrupted = true;
                    break 'tests;
                }
            }
        }
    }
    Ok(report)
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
            connect_to: deployment.entry(&node.name),
            ..LoadOptions::default()
        };
        let check_error = |source: BoxError| RunError::Check {
            node: node.name.clone(),
            source,
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
            return Err(check_error(
                format!(
                    "{failed} of {n} requests failed (codes {})",
                    codes.join(", ")
                )
                .into(),
            ));
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
        samples: SharedStore,
        settings: &RunSettings,
        deployment: &Deployment,
        backend_prometheus: Option<String>,
    ) -> Result<Answerer, RunError> {
        let client =
            |url: &str| PrometheusClient::new(url).map_err(|e| RunError::Prometheus(e.into()));
        match &config.prometheus {
            // A backend with its own Prometheus (a cluster's) answers instead of the
            // embedded engine, which sees no samples there.
            PrometheusSetting::Embedded => match backend_prometheus {
                Some(url) => Ok(Answerer::Prometheus(client(&url)?, url)),
                None => Ok(Answerer::Embedded(samples)),
            },
            PrometheusSetting::Url(url) => Ok(Answerer::Prometheus(client(url)?, url.clone())),
            PrometheusSetting::Spawn => {
                let spawned =
                    SpawnedPrometheus::start(&settings.exe, deployment, config.scrape_interval)
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

    /// A server that scrapes on its own schedule (not at the end of a test).
    fn scrapes_by_itself(&self) -> bool {
        !matches!(self, Answerer::Embedded(_))
    }

    async fn range(
        &self,
        query: &str,
        window: QueryWindow,
        stop: &StopSignal,
    ) -> Result<Vec<meshload_promql::eval::RangeSeries>, String> {
        let QueryWindow { start, end, step } = window;
        let result = match self {
            Answerer::Embedded(store) => embedded_range(store, query, window, stop).await?,
            Answerer::Prometheus(client, _) | Answerer::Spawned(client, _) => client
                .query_range(query, start, end, step)
                .await
                .map_err(|e| error_chain(&e))?,
        };
        match result.value {
            meshload_promql::Value::Matrix(m) => Ok(m),
            other => Err(format!("expected a range result, got {other:?}")),
        }
    }
}

/// How long a query still runs when the run was stopping before it began (an
/// interrupted test, whose metrics are still wanted): most take milliseconds, and a slow
/// one must not hold a user who pressed Ctrl-C for the engine's whole timeout.
const STOPPED_QUERY_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A range query on the embedded engine, on a blocking thread so that the runtime (and
/// with it Ctrl-C and SIGTERM) stays responsive. A stop that arrives while it evaluates
/// ends it at its next step; one that came before gives it [`STOPPED_QUERY_GRACE`].
async fn embedded_range(
    store: &SharedStore,
    query: &str,
    QueryWindow { start, end, step }: QueryWindow,
    stop: &StopSignal,
) -> Result<meshload_promql::QueryResult, String> {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = QueryOptions {
        cancel: Some(cancel.clone()),
        ..QueryOptions::default()
    };
    let (store, query) = (store.clone(), query.to_string());
    let job = tokio::task::spawn_blocking(move || {
        let store = store.lock().expect("the store lock is never poisoned");
        meshload_promql::range_query(&store, &query, start, end, step, opts)
    });
    tokio::pin!(job);
    let joined = if stop.is_stopped() {
        tokio::select! {
            joined = &mut job => joined,
            () = tokio::time::sleep(STOPPED_QUERY_GRACE) => {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                job.await
            }
        }
    } else {
        tokio::select! {
            joined = &mut job => joined,
            () = stop.stopped() => {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                job.await
            }
        }
    };
    joined
        .map_err(|e| format!("the query's thread failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// What every test of a run on one arm shares.
struct TestContext<'a> {
    /// The arm's name.
    arm: &'a str,
    config: &'a Config,
    deployment: &'a Deployment,
    settings: &'a RunSettings,
    answerer: &'a Answerer,
    /// The embedded scraper, when anything is observable from here.
    scraper: Option<&'a Scraper>,
    /// What it collected (empty without one).
    samples: SharedStore,
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
        std_client: test.std_client,
        headers: test.headers.clone(),
        payload: test.payload.clone().map(bytes::Bytes::from),
        timeout: test
            .timeout
            .unwrap_or(meshload_loadgen::spec::DEFAULT_TIMEOUT),
        labels: test.labels.clone(),
        connect_to: deployment.entry(&test.target),
        percentiles: with_slo_percentiles(&test.slo),
        ..LoadOptions::default()
    }
}

/// The default percentiles and those the SLO bounds, so the result reports each one.
pub fn with_slo_percentiles(slo: &meshload_config::Slo) -> Vec<f64> {
    let mut percentiles = LoadOptions::default().percentiles;
    for bound in &slo.latency {
        if !percentiles
            .iter()
            .any(|p| (p - bound.percentile).abs() < 1e-9)
        {
            percentiles.push(bound.percentile);
        }
    }
    percentiles.sort_by(f64::total_cmp);
    percentiles
}

/// The range the metric queries of one test cover, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryWindow {
    /// First step.
    pub start: i64,
    /// Last step.
    pub end: i64,
    /// Between steps (at least 1 ms).
    pub step: i64,
}

/// The query window of a test that ran from `started` to `ended` (ms), queried at `now`
/// after a final scrape. The last step is `now`, so the samples of that final scrape
/// count; the steps run back from it by whole `step`s, and the first is the earliest
/// one not before the test's start. A short test (under one step) is a single step.
pub fn query_window(started: i64, ended: i64, now: i64, step: Duration) -> QueryWindow {
    let step = i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1);
    let end = now.max(ended);
    let whole_steps = (end - started).max(0) / step;
    QueryWindow {
        start: end - whole_steps * step,
        end,
        step,
    }
}

/// What one test gave.
struct TestOutcome {
    summary: TestSummary,
    fortio: FortioResult,
    /// The search's PromQL thresholds over the test's window (for a search trial).
    thresholds: Vec<(String, Option<f64>)>,
}

/// A search trial's identity and thresholds, for [`run_test`].
struct TrialOf<'a> {
    search: serde_json::Value,
    thresholds: &'a [Threshold],
}

/// Runs one test, evaluates its metrics and stores the run; `None` when a stop request
/// ended the test before the backend's load generator gave any result.
#[allow(clippy::too_many_arguments)]
async fn run_test<B: Backend>(
    ctx: &TestContext<'_>,
    backend: &mut B,
    index: usize,
    test: &LoadTest,
    observer: &dyn Observer,
    stop: &StopSignal,
    position: &SeriesPosition,
    trial: Option<TrialOf<'_>>,
) -> Result<Option<TestOutcome>, RunError> {
    let live = Live::default();
    let shown = backend.live_figures().then(|| live.clone());
    observer.test_started(index, ctx.config.tests.len(), test, position, shown);
    let started = SystemTime::now();
    let options = load_options(test, ctx.deployment);
    let host = HostMark::now();
    let driven = backend.drive(options, stop, live).await;
    let lag_p99_ms = driven.as_ref().ok().and_then(Option::as_ref).and_then(|f| {
        let lag = f.schedule_lag_histogram.as_ref()?;
        // Below this many requests p99 is the largest one or two: one late wake-up.
        (lag.count >= crate::host::LAG_SAMPLES_FOR_P99)
            .then(|| lag.percentile(99.0).map(|s| s * 1e3))
            .flatten()
    });
    let host = host.finish(backend.drives_here(), lag_p99_ms, ctx.settings.saturation);
    let fortio = match driven {
        Ok(Some(fortio)) => fortio,
        Ok(None) => return Ok(None),
        Err(_) if stop.is_stopped() => return Ok(None),
        Err(source) => {
            return Err(RunError::Test {
                test: test.name.clone(),
                source,
            });
        }
    };
    let window = (started, SystemTime::now());
    if !ctx.config.metrics.is_empty() {
        observer.phase(&format!(
            "{}: evaluating {} metric(s) over the test's window",
            test.name,
            ctx.config.metrics.len()
        ));
    }
    let (metrics, query_window) = measure(ctx, &fortio, window, stop).await;
    if ctx.deployment.containers.is_empty() && ctx.answerer.scrapes_by_itself() {
        let note = match collect_containers(ctx, mesh_of(backend), query_window, stop).await {
            Ok(0) => format!(
                "{}: the cluster's Prometheus has no {MEMORY_SERIES} or {CPU_SERIES} of the run's containers (is cAdvisor scraped?): no CPU or memory figures",
                test.name
            ),
            Ok(n) => format!(
                "{}: {n} container series (CPU, memory) copied from the cluster's Prometheus",
                test.name
            ),
            Err(e) => format!("{}: container CPU and memory: {e}", test.name),
        };
        observer.phase(&note);
    }
    for m in &metrics {
        if let Err(e) = &m.series {
            // Named, so that a metric that timed out or was refused is found at once.
            observer.phase(&format!("metric {}: {e}", m.name));
        }
    }
    let mut thresholds = Vec::new();
    let mut search = serde_json::Value::Null;
    if let Some(trial) = trial {
        for t in trial.thresholds {
            let value = match ctx.answerer.range(&t.query, query_window, stop).await {
                Ok(series) => threshold_value(&series, t.max.is_some()),
                Err(e) => {
                    observer.phase(&format!("threshold {}: {e}", t.name));
                    None
                }
            };
            thresholds.push((t.name.clone(), value));
        }
        search = trial.search;
        search["thresholds"] = thresholds
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let exits = backend.exited().await;
    // Stopped while its metrics were evaluated: the run is interrupted too (130), what
    // was measured is kept.
    let interrupted = fortio.interrupted || stop.is_stopped();
    let mut summary = TestSummary::new(test, &fortio, interrupted);
    summary.mesh = mesh_of(backend);
    summary.series = Some(position.clone());
    summary.host = host;
    summary.slo_failures = slo_failures(&test.slo, &summary, &fortio, test.qps);
    summary.metrics = metrics.iter().map(|m| (m.name.clone(), m.note())).collect();
    summary.metric_problems = metrics
        .iter()
        .filter(|m| !m.has_data())
        .map(|m| m.name.clone())
        .collect();
    summary.node_exits = exits
        .iter()
        .map(|e| format!("{} ({})", e.pod, e.status))
        .collect();
    let stored = Stored {
        test,
        fortio: &fortio,
        metrics: &metrics,
        exits: &exits,
        window,
        search,
    };
    store_run(ctx, backend, stored, &mut summary).await?;
    Ok(Some(TestOutcome {
        summary,
        fortio,
        thresholds,
    }))
}

/// The figure a threshold compares: the largest value of any series at any step (for a
/// `max`), else the smallest; `None` without data.
fn threshold_value(series: &[meshload_promql::eval::RangeSeries], largest: bool) -> Option<f64> {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, v)| *v))
        .filter(|v| !v.is_nan());
    if largest {
        values.reduce(f64::max)
    } else {
        values.reduce(f64::min)
    }
}

/// Trials of a search over the run's topology: each one a test of the run, stored as a
/// run of the test, with its PromQL thresholds evaluated over its window.
struct RunTrials<'c, 'a, B> {
    ctx: &'c TestContext<'a>,
    backend: &'c mut B,
    index: usize,
    test: &'c LoadTest,
    spec: &'c SearchSpec,
    observer: &'c dyn Observer,
    stop: &'c StopSignal,
    search_id: String,
}

impl<B: Backend> TrialRunner for RunTrials<'_, '_, B> {
    async fn run_trial(&mut self, plan: TrialPlan) -> Result<Option<Trial>, crate::BoxError> {
        let mut test = self.test.clone();
        test.qps = Some(plan.qps);
        test.connections = plan.connections;
        test.requests = None;
        test.slo = self.spec.slo.clone();
        test.search = None;
        if !plan.warmup.is_zero() {
            let warm = LoadTest {
                duration: plan.warmup,
                ..test.clone()
            };
            let options = load_options(&warm, self.ctx.deployment);
            match self
                .backend
                .drive(options, self.stop, Live::default())
                .await
            {
                Ok(Some(result)) if !result.interrupted => {}
                Ok(_) => return Ok(None),
                Err(_) if self.stop.is_stopped() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        test.duration = plan.duration;
        let of = TrialOf {
            search: serde_json::json!({
                "id": self.search_id, "step": plan.step, "trial": plan.trial, "qps": plan.qps,
            }),
            thresholds: &self.spec.thresholds,
        };
        let arm = self.ctx.arm.to_string();
        let position = SeriesPosition {
            id: self.search_id.clone(),
            arm: arm.clone(),
            repeat: 1,
            repeats: 1,
            arms: vec![arm],
        };
        let outcome = run_test(
            self.ctx,
            self.backend,
            self.index,
            &test,
            self.observer,
            self.stop,
            &position,
            Some(of),
        )
        .await?;
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        self.observer.test_finished(&outcome.summary);
        let mut trial = Trial::of(&outcome.fortio, plan.qps, plan.connections);
        trial.thresholds = outcome.thresholds;
        trial.run_dir = Some(outcome.summary.run_dir.clone());
        Ok(Some(trial))
    }
}

/// Runs the capacity search of one test and writes its summary beside its trials.
async fn run_search<B: Backend>(
    ctx: &TestContext<'_>,
    backend: &mut B,
    index: usize,
    test: &LoadTest,
    spec: &SearchSpec,
    observer: &dyn Observer,
    stop: &StopSignal,
) -> Result<SearchRun, RunError> {
    let search_id = meshload_store::run_id(SystemTime::now());
    let mesh = ctx.arm.to_string();
    observer.phase(&format!(
        "capacity search for {} (SLO {}; {} trials of {} per step)",
        test.name,
        spec.slo,
        spec.trials,
        humantime::format_duration(spec.trial_duration)
    ));
    let mut trials = RunTrials {
        ctx,
        backend,
        index,
        test,
        spec,
        observer,
        stop,
        search_id: search_id.clone(),
    };
    let progress = |line: &str| observer.phase(line);
    let report = crate::search::run(spec, &mut trials, stop, &progress)
        .await
        .map_err(|source| RunError::Test {
            test: test.name.clone(),
            source,
        })?;
    observer.phase(&format!("{}: {}", test.name, report.verdict()));
    let document = crate::search::document(&test.name, &test.url, &mesh, &search_id, spec, &report);
    let file =
        match crate::search::write_document(&ctx.settings.store, &test.name, &search_id, &document)
        {
            Ok(path) => Some(path),
            Err(e) => {
                observer.phase(&format!("cannot write the search of {}: {e}", test.name));
                None
            }
        };
    Ok(SearchRun {
        test_name: test.name.clone(),
        mesh,
        search_id,
        spec: spec.clone(),
        report,
        document,
        file,
    })
}

/// Evaluates every metric query of the config over the test's window, and says which
/// window that was (a search trial's thresholds use the same).
async fn measure(
    ctx: &TestContext<'_>,
    fortio: &FortioResult,
    (started, ended): (SystemTime, SystemTime),
    stop: &StopSignal,
) -> (Vec<MetricResult>, QueryWindow) {
    // The window's end needs samples: scrape now; a Prometheus scrapes on its own
    // schedule, so give it one interval (`scrape_interval`, which should match a cluster's
    // Prometheus; at most a minute).
    if let Some(scraper) = ctx.scraper {
        scraper.scrape_now().await;
    }
    if !fortio.interrupted && ctx.answerer.scrapes_by_itself() {
        let wait = ctx.config.scrape_interval.min(Duration::from_secs(60));
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    let ms = |t: SystemTime| meshload_promql::system_time_ms(&t);
    let window = query_window(
        ms(started),
        ms(ended),
        ms(SystemTime::now()),
        ctx.config.metrics_step,
    );
    let mut metrics = Vec::with_capacity(ctx.config.metrics.len());
    for (name, query) in &ctx.config.metrics {
        metrics.push(MetricResult {
            name: name.clone(),
            query: query.clone(),
            series: ctx.answerer.range(query, window, stop).await,
        });
    }
    (metrics, window)
}

/// The most points a range query asks a Prometheus for per series (Prometheus refuses
/// more than 11,000).
const MAX_POINTS: i64 = 10_000;

/// On a cluster nothing is sampled here: the containers' CPU and memory are cAdvisor's
/// series in the cluster's Prometheus. Copies those of the nodes' app containers and of
/// the mesh's proxies (its preset: sidecars in the run's namespace, ztunnel, waypoints)
/// over the test's window into the run's samples, at the scrape interval, so that the
/// stored run answers the report's and the mesh cost's figures as a local run does.
/// Returns how many series were copied.
async fn collect_containers(
    ctx: &TestContext<'_>,
    mesh: meshload_config::Mesh,
    window: QueryWindow,
    stop: &StopSignal,
) -> Result<usize, String> {
    let namespace = &ctx.config.namespace;
    let proxies = mesh.proxies();
    let containers: Vec<&str> = std::iter::once(APP_CONTAINER)
        .chain(proxies.sidecar)
        .collect();
    let mut selectors = vec![resource_series(&format!(
        r#"namespace="{namespace}", container=~"{}""#,
        containers.join("|")
    ))];
    for shared in proxies.shared {
        selectors.push(resource_series(&match shared.in_run_namespace {
            true => format!(r#"{}, namespace="{namespace}""#, shared.matchers),
            false => shared.matchers.to_string(),
        }));
    }
    // From a few scrapes before the start (a counter's increase needs the one before).
    let interval = (ctx.config.scrape_interval.as_millis() as i64).max(1000);
    let start = window.start - 3 * interval;
    let step = interval.max((window.end - start) / MAX_POINTS + 1);
    let range = QueryWindow {
        start,
        end: window.end,
        step,
    };
    let mut copied = Vec::new();
    for selector in &selectors {
        copied.extend(ctx.answerer.range(selector, range, stop).await?);
    }
    let mut store = ctx
        .samples
        .lock()
        .expect("the store lock is never poisoned");
    for series in &copied {
        for (t, v) in &series.points {
            store.append(&series.labels, *t, *v);
        }
    }
    Ok(copied.len())
}

/// What one test stores beside its summary.
struct Stored<'a> {
    test: &'a LoadTest,
    fortio: &'a FortioResult,
    metrics: &'a [MetricResult],
    exits: &'a [ReplicaExit],
    window: (SystemTime, SystemTime),
    /// The search this run is a trial of, or `null`.
    search: serde_json::Value,
}

/// Writes the test's run folder, publishes it, and records in `summary` where it is.
async fn store_run<B: Backend>(
    ctx: &TestContext<'_>,
    backend: &B,
    stored: Stored<'_>,
    summary: &mut TestSummary,
) -> Result<(), RunError> {
    let (started, ended) = stored.window;
    let ms = |t: SystemTime| meshload_promql::system_time_ms(&t);
    let mut samples = Vec::new();
    {
        let store = ctx
            .samples
            .lock()
            .expect("the store lock is never poisoned");
        let lookback = SAMPLES_LOOKBACK.as_millis() as i64;
        let step = ctx.config.metrics_step.as_millis() as i64;
        store
            .write_jsonl_window(&mut samples, ms(started) - lookback, ms(ended) + step)
            .expect("writing to memory");
    }
    let test = stored.test;
    let run = ctx.settings.store.local().begin_run(&test.name, started)?;
    summary.run_dir = ctx.settings.store.location(&test.name, run.id());
    let run_ref = RunRef {
        test_name: test.name.clone(),
        id: run.id().to_string(),
        dir: run.final_dir().to_path_buf(),
    };
    let files = RunFiles {
        config: ctx.config,
        test,
        fortio: stored.fortio,
        metrics: stored.metrics,
        summary,
        backend: backend.name(),
        backend_facts: &backend.facts(),
        prometheus: &ctx.answerer.describe(),
        window: stored.window,
        samples,
        exits: stored.exits,
        search: stored.search.clone(),
    };
    write_run(&run, &files)?;
    run.commit()?;
    // A store that cannot take the run now leaves it in the spool, and the summary says
    // where.
    if let Err(e) = ctx.settings.store.publish(&run_ref).await {
        summary.run_dir = run_ref.dir.display().to_string();
        summary.storage_note = Some(error_chain(&e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_steps_back_from_now_to_the_start() {
        let w = query_window(1_000, 26_000, 26_300, Duration::from_secs(10));
        assert_eq!(
            w,
            QueryWindow {
                start: 6_300,
                end: 26_300,
                step: 10_000
            }
        );
    }

    #[test]
    fn a_test_shorter_than_a_step_is_one_step() {
        let w = query_window(1_000, 3_000, 3_100, Duration::from_secs(10));
        assert_eq!((w.start, w.end), (3_100, 3_100));
    }

    #[test]
    fn the_end_is_never_before_the_test_ended() {
        // A clock read after the end that is earlier (it cannot be, but the arithmetic
        // must not produce a window ending before the samples).
        let w = query_window(0, 5_000, 4_000, Duration::from_millis(1_000));
        assert_eq!((w.start, w.end, w.step), (0, 5_000, 1_000));
    }

    #[test]
    fn a_zero_step_is_one_millisecond() {
        assert_eq!(query_window(0, 3, 3, Duration::ZERO).step, 1);
    }
}
