//! `meshload run`: the main job.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context as _;
use meshload_config::{Config, LoadTest, PrometheusSetting};
use meshload_k8s::cluster::{Cluster, ServiceRef};
use meshload_k8s::{K8sBackend, K8sSettings, Mesh};
use meshload_loadgen::Live;
use meshload_runner::{LocalBackend, Observer, RunError, RunSettings, StopSignal, TestSummary};
use meshload_store::ResultStore;

use crate::cli::{BackendKind, DEFAULT_IMAGE, DEFAULT_ROLLOUT_TIMEOUT, RunArgs};
use crate::exit::{Exit, INTERRUPTED, THRESHOLD};
use crate::progress::{Progress, Total};

/// Runs every test of the config locally.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = super::validate::load(&args.config)?;
    // On a cluster `--namespace` moves the services, and the test URLs naming them.
    let config = match &args.deploy.namespace {
        Some(ns) if args.backend == BackendKind::K8s => loaded.config.in_namespace(ns),
        _ => loaded.config,
    };
    let store_address = args
        .store
        .clone()
        .or_else(|| config.store.clone())
        .unwrap_or_else(|| "results".to_string());
    let store = ResultStore::open(&store_address).map_err(|e| Exit::usage(e.to_string()))?;
    let exe = std::env::current_exe().context("cannot find the meshload executable")?;
    let sleep_between_tests = args
        .sleep_between_tests
        .unwrap_or(config.sleep_between_tests);
    let settings = RunSettings {
        exe: exe.clone(),
        store,
        sleep_between_tests,
    };
    let k8s = match args.backend {
        BackendKind::Local => {
            let ignored = k8s_flags_given(&args);
            if !ignored.is_empty() {
                return Err(Exit::usage(format!(
                    "{} only apply with --backend k8s",
                    ignored.join(", ")
                ))
                .into());
            }
            None
        }
        BackendKind::K8s => Some(k8s_settings(&args, &config)?),
    };
    let runtime = super::runtime()?;
    let observer = Printer::default();
    let mut cleanup_failed = None;
    let outcome = runtime.block_on(async {
        // Quitting at once leaves a cluster's objects behind: say how to delete them.
        let quit_note = k8s.as_ref().map(|k| {
            format!(
                "meshload: quitting without deleting the run's objects: `meshload k8s cleanup --run {}` deletes them",
                k.render.run_id
            )
        });
        let stop = StopSignal::new(async {
            super::shutdown_signal().await;
            eprintln!("meshload: stopping: storing what was measured, stopping the nodes (again to quit at once)");
            // A second Ctrl-C quits at once; local nodes notice and exit by themselves.
            tokio::spawn(async move {
                super::shutdown_signal().await;
                if let Some(note) = quit_note {
                    eprintln!("{note}");
                }
                std::process::exit(i32::from(INTERRUPTED));
            });
        });
        let Some(k8s) = k8s else {
            let mut backend = LocalBackend::new(exe);
            return meshload_runner::run(&config, &mut backend, &settings, &observer, stop).await;
        };
        observer.phase("connecting to the cluster");
        let cluster = Cluster::connect(args.context.as_deref())
            .await
            .map_err(|e| RunError::Backend(e.to_string()))?;
        observer.phase(&format!(
            "cluster {}, run {1} (objects labelled meshload.io/run={1})",
            cluster.name, k8s.render.run_id
        ));
        let mut backend = K8sBackend::new(cluster, config.clone(), k8s);
        backend.on_phase(|text| eprintln!("meshload: {text}"));
        let outcome = meshload_runner::run(&config, &mut backend, &settings, &observer, stop).await;
        if let Some(cleanup) = backend.cleanup() {
            if !cleanup.deleted.is_empty() {
                observer.phase(&format!("deleted {}", cleanup.deleted.join(", ")));
            }
            if let Some(e) = &cleanup.error {
                cleanup_failed = Some(format!(
                    "could not delete what the run created: {e}; run `meshload k8s cleanup --run {}`",
                    backend.run_id()
                ));
            }
        }
        outcome
    });
    if let Some(message) = &cleanup_failed {
        eprintln!("meshload: {message}");
    }
    let report = match outcome {
        Ok(report) => report,
        Err(RunError::Interrupted) => {
            eprintln!("interrupted before any test ran; every node was stopped");
            return Ok(ExitCode::from(INTERRUPTED));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context("the run failed; every node was stopped"));
        }
    };
    print_report(&report.tests, args.json)?;
    if let Some(message) = cleanup_failed {
        anyhow::bail!(message);
    }
    let missed = report.tests.iter().any(|t| !t.slo_failures.is_empty());
    Ok(if report.interrupted {
        ExitCode::from(INTERRUPTED)
    } else if missed {
        ExitCode::from(THRESHOLD)
    } else {
        ExitCode::SUCCESS
    })
}

/// The Kubernetes flags given other values than their defaults.
fn k8s_flags_given(args: &RunArgs) -> Vec<&'static str> {
    let d = &args.deploy;
    [
        ("--context", args.context.is_some()),
        ("--prometheus-service", args.prometheus_service.is_some()),
        (
            "--rollout-timeout",
            humantime::parse_duration(DEFAULT_ROLLOUT_TIMEOUT).ok() != Some(args.rollout_timeout),
        ),
        ("--namespace", d.namespace.is_some()),
        ("--mesh", d.mesh != Mesh::None),
        ("--image", d.image != DEFAULT_IMAGE),
        ("--loadgen", d.loadgen != meshload_k8s::LoadGen::Meshload),
        ("--cpu-request", d.cpu_request.is_some()),
        ("--memory-request", d.memory_request.is_some()),
        ("--cpu-limit", d.cpu_limit.is_some()),
        ("--memory-limit", d.memory_limit.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

/// The Kubernetes settings of a run, checked before anything is started.
fn k8s_settings(args: &RunArgs, config: &Config) -> Result<K8sSettings, Exit> {
    if config.prometheus == PrometheusSetting::Spawn {
        return Err(Exit::usage(
            "prometheus: \"spawn\" starts a Prometheus on this machine for local nodes; with \
             --backend k8s the cluster's Prometheus answers (--prometheus-service NS/SERVICE:PORT)",
        ));
    }
    let prometheus = args.prometheus_service.clone().or_else(|| {
        (args.deploy.mesh == Mesh::AppMesh).then(|| ServiceRef {
            namespace: "appmesh-system".into(),
            name: "appmesh-prometheus".into(),
            port: 9090,
        })
    });
    if prometheus.is_none()
        && config.prometheus == PrometheusSetting::Embedded
        && !config.metrics.is_empty()
    {
        return Err(Exit::usage(format!(
            "the config has {} metric queries, and on a cluster they need the cluster's \
             Prometheus: give --prometheus-service NS/SERVICE:PORT (e.g. \
             istio-system/prometheus:9090), or a Prometheus URL as \"prometheus\" in the config",
            config.metrics.len()
        )));
    }
    let run_id = meshload_store::run_id(std::time::SystemTime::now());
    Ok(K8sSettings {
        render: super::k8s::render_options(&args.deploy, config.namespace.clone(), run_id),
        rollout_timeout: args.rollout_timeout,
        prometheus,
    })
}

/// Draws the run's progress on stderr.
#[derive(Default)]
struct Printer {
    progress: Mutex<Option<Progress>>,
}

impl Observer for Printer {
    fn phase(&self, text: &str) {
        eprintln!("meshload: {text}");
    }

    fn test_started(&self, index: usize, total: usize, test: &LoadTest, live: Option<Live>) {
        let rate = test
            .qps
            .map_or("max rate".to_string(), |q| format!("{q} req/s"));
        eprintln!(
            "meshload: test {}/{total} {} -> {} at {rate}, c={}, {}",
            index + 1,
            test.name,
            test.target,
            test.connections,
            test.requests.map_or(
                humantime::format_duration(test.duration).to_string(),
                |n| format!("{n} requests")
            )
        );
        let bar_total = match (test.requests, &live) {
            (Some(n), Some(_)) => Total::Requests(n),
            // Without live figures a request count cannot be followed.
            (Some(_), None) => Total::Unbounded,
            (None, _) => Total::Time(test.duration),
        };
        *self.progress.lock().expect("not poisoned") = Some(Progress::start(bar_total, live));
    }

    fn test_finished(&self, s: &TestSummary) {
        if let Some(p) = self.progress.lock().expect("not poisoned").take() {
            p.finish();
        }
        eprintln!(
            "meshload: {} {}: {:.1} req/s, p99 {:.2} ms, {} errors -> {}",
            s.test_name, s.status, s.actual_qps, s.response_p99_ms, s.errors, s.run_dir
        );
        for m in s
            .metrics
            .iter()
            .filter(|(_, note)| note == "no data" || note.starts_with("error"))
        {
            eprintln!("meshload:   metric {}: {}", m.0, m.1);
        }
        for f in &s.slo_failures {
            eprintln!("meshload:   SLO missed: {f}");
        }
        for e in &s.node_exits {
            eprintln!("meshload:   replica exited during the test: {e}");
        }
        if let Some(note) = &s.storage_note {
            eprintln!("meshload:   not stored in the store: {note}");
        }
    }
}

fn print_report(tests: &[TestSummary], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(tests)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<11} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}  run",
        "test", "status", "requested", "achieved", "p50 ms", "p99 ms", "errors", "SLO"
    )?;
    for t in tests {
        let slo = if t.slo_failures.is_empty() {
            "ok"
        } else {
            "MISSED"
        };
        writeln!(
            out,
            "{:<32} {:<11} {:>10} {:>10.1} {:>9.3} {:>9.3} {:>9} {:>7}  {}",
            t.test_name,
            t.status,
            t.requested_qps,
            t.actual_qps,
            t.response_p50_ms,
            t.response_p99_ms,
            t.errors,
            slo,
            t.run_dir
        )?;
    }
    Ok(())
}
