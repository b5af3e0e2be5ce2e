//! `meshload search URL`: a capacity search with the load generator against any URL.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use meshload_config::search::{DEFAULT_MIN_RATE_RATIO, SearchSpec};
use meshload_loadgen::{Live, LoadOptions, LoadSpec};
use meshload_runner::BoxError;
use meshload_runner::search::{self, Outcome, SearchReport, Trial, TrialPlan, TrialRunner};
use meshload_runner::stop::StopSignal;
use meshload_store::ResultStore;
use serde_json::json;

use crate::cli::SearchArgs;
use crate::exit::Exit;

/// Runs the search and prints it.
pub fn run(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let spec = spec(&args)?;
    let base = base_options(&args);
    // Every problem with the URL and options is found before any load.
    LoadSpec::try_new(LoadOptions {
        qps: spec.start_qps,
        ..base.clone()
    })
    .map_err(|errors| Exit::usage(errors.to_string()))?;
    let store = if args.no_store {
        None
    } else {
        let store = ResultStore::open(&args.store).map_err(|e| Exit::usage(e.to_string()))?;
        store
            .check_writable(&[args.name.as_str()])
            .map_err(|e| Exit::usage(format!("the store cannot be written: {e}")))?;
        Some(store)
    };
    let runtime = super::runtime()?;
    let report = runtime.block_on(async {
        let stop = StopSignal::new(super::shutdown_signal());
        let search_id = meshload_store::run_id(SystemTime::now());
        let mut trials = UrlTrials {
            base,
            spec: spec.clone(),
            store: store.clone(),
            name: args.name.clone(),
            search_id: search_id.clone(),
            stop: stop.clone(),
        };
        let progress = |line: &str| eprintln!("meshload: {line}");
        let report = search::run(&spec, &mut trials, &stop, &progress).await;
        report.map(|r| (r, search_id))
    });
    let (report, search_id) = report.map_err(|e| anyhow::anyhow!(e))?;
    let document = search::document(&args.name, &args.url, "none", &search_id, &spec, &report);
    if let Some(store) = &store {
        let path = search::write_document(store, &args.name, &search_id, &document)
            .with_context(|| format!("cannot write the search of {}", args.name))?;
        eprintln!("meshload: search stored in {}", path.display());
    }
    print(&report, &spec, &document, args.json)?;
    Ok(ExitCode::from(exit_code(&report)))
}

/// The exit status of a search: 0 with a capacity, 1 when even the start failed, 130
/// when interrupted.
pub fn exit_code(report: &SearchReport) -> u8 {
    match report.outcome {
        Outcome::FailsAtStart => crate::exit::THRESHOLD,
        Outcome::Interrupted => crate::exit::INTERRUPTED,
        _ => 0,
    }
}

fn spec(args: &SearchArgs) -> anyhow::Result<SearchSpec> {
    let mut slo = args.slo.clone().unwrap_or_default();
    if slo.min_rate_ratio.is_none() {
        slo.min_rate_ratio = Some(DEFAULT_MIN_RATE_RATIO);
    }
    let spec = SearchSpec {
        slo,
        thresholds: Vec::new(),
        start_qps: args.start_qps,
        max_qps: args.max_qps,
        precision: args.precision,
        max_steps: args.max_steps,
        trials: args.trials,
        trial_duration: args.trial_duration,
        warmup: args.warmup,
        connections: args.connections,
    };
    let problems: Vec<String> = spec
        .problems()
        .into_iter()
        .map(|(key, problem)| format!("--{}: {problem}", key.replace('_', "-")))
        .collect();
    if !problems.is_empty() {
        return Err(Exit::usage(problems.join("; ")).into());
    }
    Ok(spec)
}

fn base_options(args: &SearchArgs) -> LoadOptions {
    LoadOptions {
        url: args.url.clone(),
        headers: args.headers.clone(),
        timeout: args.timeout,
        h2: args.h2,
        tls: meshload_loadgen::tls::TlsOptions {
            ca: args.cacert.clone().map(meshload_loadgen::tls::Ca::File),
            insecure: args.insecure,
        },
        labels: format!("search {}", args.name),
        ..LoadOptions::default()
    }
}

/// Trials with the load generator, each stored as a run of its own.
struct UrlTrials {
    base: LoadOptions,
    spec: SearchSpec,
    store: Option<ResultStore>,
    name: String,
    search_id: String,
    stop: StopSignal,
}

impl UrlTrials {
    async fn load(
        &self,
        plan: &TrialPlan,
        duration: std::time::Duration,
    ) -> Result<meshload_loadgen::LoadResult, BoxError> {
        let options = LoadOptions {
            qps: plan.qps,
            connections: plan.connections as usize,
            duration: Some(duration),
            percentiles: meshload_runner::run::with_slo_percentiles(&self.spec.slo),
            ..self.base.clone()
        };
        let spec = LoadSpec::try_new(options).map_err(|e| e.to_string())?;
        let stop = self.stop.clone();
        let result =
            meshload_loadgen::run(spec, async move { stop.stopped().await }, Live::default())
                .await?;
        Ok(result)
    }
}

impl TrialRunner for UrlTrials {
    async fn run_trial(&mut self, plan: TrialPlan) -> Result<Option<Trial>, BoxError> {
        if !plan.warmup.is_zero() {
            let warm = self.load(&plan, plan.warmup).await?;
            if warm.interrupted || self.stop.is_stopped() {
                return Ok(None);
            }
        }
        let started = SystemTime::now();
        let result = self.load(&plan, plan.duration).await?;
        let fortio = result.to_fortio();
        let mut trial = Trial::of(&fortio, plan.qps, plan.connections);
        if let Some(store) = &self.store {
            let search = json!({"id": self.search_id, "step": plan.step, "trial": plan.trial, "qps": plan.qps});
            let run = store.local().begin_run(&self.name, started)?;
            let run_ref = meshload_store::RunRef {
                test_name: self.name.clone(),
                id: run.id().to_string(),
                dir: run.final_dir().to_path_buf(),
            };
            meshload_runner::results::write_url_trial(
                &run,
                &self.name,
                &fortio,
                &search,
                (started, SystemTime::now()),
            )?;
            run.commit()?;
            trial.run_dir = Some(match store.publish(&run_ref).await {
                Ok(location) => location,
                Err(e) => {
                    eprintln!("meshload: warning: {}", meshload_runner::error_chain(&e));
                    run_ref.dir.display().to_string()
                }
            });
        }
        Ok(Some(trial))
    }
}

/// The steps as a table, then the verdict; with `json` the document goes to stdout and
/// the table to stderr.
fn print(
    report: &SearchReport,
    spec: &SearchSpec,
    document: &serde_json::Value,
    json: bool,
) -> anyhow::Result<()> {
    let mut table = Vec::new();
    write_table(&mut table, report, spec).context("formatting the table")?;
    if json {
        std::io::stderr()
            .write_all(&table)
            .context("cannot write to stderr")?;
        let text = serde_json::to_string_pretty(document).context("encoding the search")?;
        writeln!(std::io::stdout(), "{text}").context("cannot write to stdout")?;
    } else {
        std::io::stdout()
            .write_all(&table)
            .context("cannot write to stdout")?;
    }
    Ok(())
}

/// One line per step: rate, achieved rate, median figures of each bound, verdict.
pub fn write_table(
    out: &mut impl std::io::Write,
    report: &SearchReport,
    spec: &SearchSpec,
) -> std::io::Result<()> {
    let keys: Vec<String> = report
        .steps
        .first()
        .map(|s| s.checks.iter().map(|c| c.key.clone()).collect())
        .unwrap_or_default();
    write!(
        out,
        "{:>5} {:>11} {:>11} {:>9}",
        "step", "qps", "achieved", "p99 ms"
    )?;
    for k in &keys {
        write!(out, " {k:>16}")?;
    }
    writeln!(out, "  verdict")?;
    for step in &report.steps {
        write!(
            out,
            "{:>5} {:>11.1} {:>11.1} {:>9}",
            step.index,
            step.qps,
            step.achieved_qps().unwrap_or(0.0),
            step.response_ms(99.0)
                .map_or("-".to_string(), |v| format!("{v:.3}"))
        )?;
        for c in &step.checks {
            let v = c.value.map_or("no data".to_string(), |v| format!("{v:.4}"));
            write!(out, " {v:>16}")?;
        }
        writeln!(out, "  {}", if step.passed { "pass" } else { "FAIL" })?;
    }
    writeln!(out, "SLO: {}", spec.slo)?;
    writeln!(out, "{}", report.verdict())
}
