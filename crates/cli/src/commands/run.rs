//! `meshload run`: the main job.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context as _;
use meshload_config::{Config, LoadTest};
use meshload_k8s::checks::{RunChoice, check_run};
use meshload_k8s::cluster::Cluster;
use meshload_k8s::{K8sBackend, K8sSettings};
use meshload_loadgen::Live;
use meshload_runner::run::{Arm, SeriesPosition};
use meshload_runner::{
    LocalBackend, Observer, RunError, RunReport, RunSettings, StopSignal, TestSummary,
};
use meshload_store::ResultStore;

use meshload_runner::mesh::{EnvoyMesh, Layout, TlsMode};

use crate::cli::{BackendKind, RunArgs};
use crate::exit::{Exit, INTERRUPTED, THRESHOLD};
use crate::progress::{Progress, Total};
use crate::table::Table;
use meshload_config::Mesh;

/// A run's settings, resolved and checked before anything starts: the config (moved to
/// `--namespace` on a cluster), where results go, and the backend's settings. Made by
/// [`RunRequest::new`], a pure step, as ripgrep turns its flags into `HiArgs`.
struct RunRequest {
    config: Config,
    settings: RunSettings,
    /// `None`: the local backend.
    k8s: Option<K8sSettings>,
    /// Locally, the meshes to run under in turn: `None` for no mesh, or Envoy sidecars.
    local_meshes: Vec<Option<EnvoyMesh>>,
    context: Option<String>,
    json: bool,
}

impl RunRequest {
    /// Resolves and checks a run in named steps: the config (moved to `--namespace` on a
    /// cluster), the meshes, every problem of the choices at once, then the store, the
    /// run's settings, Envoy for local sidecars, and the cluster's settings.
    /// `flags_given` are the Kubernetes-only flags given on the command line.
    fn new(
        args: RunArgs,
        config: Config,
        flags_given: &[String],
        exe: std::path::PathBuf,
        run_id: String,
    ) -> Result<RunRequest, Exit> {
        let on_cluster = args.backend == BackendKind::K8s;
        // On a cluster `--namespace` moves the services, and the test URLs naming them.
        let config = match &args.deploy.namespace {
            Some(ns) if on_cluster => config.in_namespace(ns),
            _ => config,
        };
        let meshes = meshes_of(&args, &config);
        let mut problems = choice_problems(&args, &meshes, on_cluster);
        let mesh = if on_cluster {
            super::k8s::cluster_mesh(meshes[0])?
        } else {
            meshload_k8s::Mesh::None
        };
        let choice = RunChoice {
            on_cluster,
            flags_given,
            mesh,
            prometheus_service: args.prometheus_service.clone(),
        };
        let prometheus = match check_run(&config, &choice) {
            Ok(prometheus) => prometheus,
            Err(more) => {
                problems.extend(more);
                None
            }
        };
        let render =
            super::k8s::render_options(&args.deploy, mesh, config.namespace.clone(), run_id);
        if on_cluster {
            problems.extend(render.problems());
        }
        if !problems.is_empty() {
            return Err(Exit::usage(problems.join("\n")));
        }
        let settings = run_settings(&args, &config, exe)?;
        let local_meshes = local_meshes(&args, &config, &meshes, on_cluster)?;
        let k8s = on_cluster.then_some(K8sSettings {
            render,
            rollout_timeout: args.rollout_timeout,
            prometheus,
        });
        Ok(RunRequest {
            config,
            settings,
            k8s,
            local_meshes,
            context: args.context,
            json: args.json,
        })
    }
}

/// The meshes to run under: the flag's; else the config's `"mesh"`; else none.
fn meshes_of(args: &RunArgs, config: &Config) -> Vec<Mesh> {
    if !args.deploy.mesh.is_empty() {
        args.deploy.mesh.clone()
    } else if !config.meshes.is_empty() {
        config.meshes.clone()
    } else {
        vec![Mesh::None]
    }
}

/// What is wrong with the meshes and pinning chosen for this backend, every problem.
fn choice_problems(args: &RunArgs, meshes: &[Mesh], on_cluster: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for m in meshes {
        if !on_cluster && !m.runs_locally() {
            problems.push(format!(
                "--mesh {m} runs on Kubernetes (--backend k8s); locally the meshes are none, envoy and ambient"
            ));
        }
    }
    if on_cluster && meshes.len() > 1 {
        problems.push("--backend k8s runs one mesh at a time: give one --mesh".to_string());
    }
    if let Some(cpus) = &args.loadgen_cpus
        && let Err(e) = meshload_runner::host::check_cpus(cpus)
    {
        problems.push(e);
    }
    if on_cluster && args.loadgen_cpus.is_some() {
        problems.push(
            "--loadgen-cpus pins the local load generator; on a cluster it runs in a pod"
                .to_string(),
        );
    }
    problems
}

/// Where results go (the flag, else the config's `store`, else the default) and how the
/// run paces itself: repeats, sleeps, pinning, when the host counts as saturated.
fn run_settings(
    args: &RunArgs,
    config: &Config,
    exe: std::path::PathBuf,
) -> Result<RunSettings, Exit> {
    let store_address = args
        .store
        .clone()
        .or_else(|| config.store.clone())
        .unwrap_or_else(|| meshload_store::DEFAULT_STORE.to_string());
    let store = ResultStore::open(&store_address).map_err(|e| Exit::usage(e.to_string()))?;
    Ok(RunSettings {
        exe,
        store,
        sleep_between_tests: args
            .sleep_between_tests
            .unwrap_or(config.sleep_between_tests),
        repeat: args.repeat,
        loadgen_cpus: args.loadgen_cpus.clone().unwrap_or_default(),
        saturation: meshload_runner::host::Limits {
            busy: args.max_host_busy,
            lag_p99_ms: args.max_schedule_lag.as_secs_f64() * 1e3,
        },
    })
}

/// Locally, per mesh in turn: `None` for no mesh, or the Envoy its sidecars run (found
/// once, when any mesh is `envoy`).
fn local_meshes(
    args: &RunArgs,
    config: &Config,
    meshes: &[Mesh],
    on_cluster: bool,
) -> Result<Vec<Option<EnvoyMesh>>, Exit> {
    let wants_envoy = meshes
        .iter()
        .any(|m| matches!(m, Mesh::Envoy | Mesh::Ambient | Mesh::AmbientWaypoint));
    let envoy = match wants_envoy && !on_cluster {
        true => Some(
            EnvoyMesh::find(
                args.envoy.as_deref(),
                args.sidecar_concurrency,
                TlsMode::of(config.tls, config.mtls),
            )
            .map_err(Exit::usage)?,
        ),
        false => None,
    };
    Ok(meshes
        .iter()
        .map(|m| match m {
            Mesh::Envoy => envoy.clone(),
            Mesh::Ambient | Mesh::AmbientWaypoint => envoy.clone().map(|e| {
                e.ambient(
                    config.hosts.unwrap_or(meshload_runner::mesh::DEFAULT_HOSTS),
                    *m == Mesh::AmbientWaypoint,
                )
            }),
            _ => None,
        })
        .collect())
}

/// Runs every test of the config, on the local backend or a cluster.
pub fn run(args: RunArgs, k8s_flags_given: Vec<String>) -> anyhow::Result<ExitCode> {
    let loaded = super::validate::load(&args.config)?;
    super::validate::check_amplification(&loaded.config, args.max_amplification)?;
    let exe = std::env::current_exe().context("cannot find the meshload executable")?;
    let run_id = meshload_store::run_id(std::time::SystemTime::now());
    let request = RunRequest::new(args, loaded.config, &k8s_flags_given, exe, run_id)?;
    let tests: Vec<&str> = request
        .config
        .tests
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    request
        .settings
        .store
        .check_writable(&tests)
        .map_err(|e| Exit::usage(format!("{:#}", anyhow::Error::new(e))))?;
    let runtime = super::runtime()?;
    let observer = Printer::default();
    let (outcome, cleanup_failed) = runtime.block_on(run_on_backend(&request, &observer));
    let report = match outcome {
        Ok(report) => report,
        Err(RunError::Interrupted) => {
            eprintln!("interrupted before any test ran; every node was stopped");
            return Ok(ExitCode::from(INTERRUPTED));
        }
        Err(e) => {
            // What finished before the failure was stored: its table is printed still.
            let finished = std::mem::take(&mut *observer.finished.lock().expect("not poisoned"));
            if !finished.is_empty() {
                let partial = meshload_runner::run::RunReport {
                    tests: finished,
                    ..Default::default()
                };
                print_report(&partial, request.json)?;
            }
            // The run's error is the one returned; the cleanup's is said once, before it.
            if let Some(cleanup) = cleanup_failed {
                eprintln!("meshload: {cleanup}");
            }
            return Err(anyhow::Error::new(e).context("the run failed; every node was stopped"));
        }
    };
    print_report(&report, request.json)?;
    if let Some(message) = cleanup_failed {
        anyhow::bail!(message);
    }
    let missed = report.tests.iter().any(|t| !t.slo_failures.is_empty())
        || report
            .searches
            .iter()
            .any(|s| super::search::exit_code(&s.report) == THRESHOLD);
    Ok(if report.interrupted {
        ExitCode::from(INTERRUPTED)
    } else if missed {
        ExitCode::from(THRESHOLD)
    } else {
        ExitCode::SUCCESS
    })
}

/// The stop signal of a run: the first Ctrl-C (or SIGTERM) stops it in order; a second
/// quits at once, printing `quit_note` (how to delete what a cluster run left).
fn two_stage_stop(quit_note: Option<String>) -> StopSignal {
    StopSignal::new(async {
        super::shutdown_signal().await;
        eprintln!(
            "meshload: stopping: storing what was measured, stopping the nodes (again to quit at once)"
        );
        // Local nodes notice that meshload is gone and exit by themselves.
        tokio::spawn(async move {
            super::shutdown_signal().await;
            if let Some(note) = quit_note {
                eprintln!("{note}");
            }
            std::process::exit(i32::from(INTERRUPTED));
        });
    })
}

/// Runs every test locally on one arm per mesh named, all up at once.
async fn run_locally(request: &RunRequest, observer: &Printer) -> Result<RunReport, RunError> {
    let RunRequest {
        config, settings, ..
    } = request;
    let stop = two_stage_stop(None);
    let mut backends = Vec::new();
    for mesh in &request.local_meshes {
        let backend = LocalBackend::new(settings.exe.clone());
        backends.push(match mesh {
            Some(envoy) => backend.with_mesh(envoy.clone()),
            None => backend,
        });
    }
    for envoy in request.local_meshes.iter().flatten() {
        observer.phase(&match envoy.layout {
            Layout::Sidecars => format!(
                "mesh envoy {} ({}, {} workers per sidecar, {} between sidecars)",
                envoy.version,
                envoy.envoy.display(),
                envoy.concurrency,
                envoy.tls.as_str()
            ),
            Layout::Ambient { hosts, waypoints } => format!(
                "mesh {} on {hosts} hosts: Envoy {} as each host's node proxy{} ({} workers), calls tunnelled in HBONE over mutual TLS",
                envoy.layout.mesh().description(),
                envoy.version,
                if waypoints {
                    " and each service's waypoint"
                } else {
                    ""
                },
                envoy.concurrency
            ),
        });
    }
    let mut arms = Arm::named(&mut backends);
    if arms.len() > 1 {
        let names: Vec<&str> = arms.iter().map(|a| a.label.as_str()).collect();
        observer.phase(&format!(
            "arms {}, all up at once; each test runs on them in turn",
            names.join(", ")
        ));
    }
    meshload_runner::run::run_arms(config, &mut arms, settings, observer, stop).await
}

/// Runs the request on its backend; the second value says why deleting what a cluster
/// run created failed, when it did (printed once, by the caller).
async fn run_on_backend(
    request: &RunRequest,
    observer: &Printer,
) -> (Result<RunReport, RunError>, Option<String>) {
    let RunRequest {
        config, settings, ..
    } = request;
    let Some(k8s) = &request.k8s else {
        return (run_locally(request, observer).await, None);
    };
    let run_id = &k8s.render.run_id;
    let stop = two_stage_stop(Some(format!(
        "meshload: quitting without deleting the run's objects: `meshload k8s cleanup --run {run_id}` deletes them"
    )));
    observer.phase("connecting to the cluster");
    let cluster = match Cluster::connect(request.context.as_deref()).await {
        Ok(cluster) => cluster,
        Err(e) => {
            let source = e.into();
            return (
                Err(RunError::Backend {
                    backend: "k8s",
                    source,
                }),
                None,
            );
        }
    };
    observer.phase(&format!(
        "cluster {}, run {run_id} (objects labelled meshload.io/run={run_id})",
        cluster.name
    ));
    let mut backend = K8sBackend::new(cluster, config.clone(), k8s.clone());
    backend.on_phase(|text| eprintln!("meshload: {text}"));
    let outcome = meshload_runner::run(config, &mut backend, settings, observer, stop).await;
    let mut cleanup_failed = None;
    if let Some(cleanup) = backend.cleanup() {
        if !cleanup.deleted.is_empty() {
            observer.phase(&format!("deleted {}", cleanup.deleted.join(", ")));
        }
        if let Some(e) = &cleanup.error {
            cleanup_failed = Some(format!(
                "could not delete what the run created: {e}; run `meshload k8s cleanup --run {run_id}`"
            ));
        }
    }
    (outcome, cleanup_failed)
}

/// Draws the run's progress on stderr.
#[derive(Default)]
struct Printer {
    progress: Mutex<Option<Progress>>,
    /// Every test that finished (and was stored), for the table should a later one fail.
    finished: Mutex<Vec<TestSummary>>,
}

impl Observer for Printer {
    fn phase(&self, text: &str) {
        eprintln!("meshload: {text}");
    }

    fn test_started(
        &self,
        index: usize,
        total: usize,
        test: &LoadTest,
        position: &SeriesPosition,
        live: Option<Live>,
    ) {
        let rate = test
            .qps
            .map_or("max rate".to_string(), |q| format!("{q} req/s"));
        let of_series = match position.repeats {
            1 => format!(" [{}]", position.arm),
            n => format!(" [{}, repeat {}/{n}]", position.arm, position.repeat),
        };
        eprintln!(
            "meshload: test {}/{total} {}{of_series} -> {} at {rate}, c={}, {}",
            index + 1,
            test.name,
            test.target,
            test.connections,
            match test.requests {
                Some(n) => format!("{n} requests"),
                None if test.duration.is_zero() => "until stopped (Ctrl-C)".to_string(),
                None => humantime::format_duration(test.duration).to_string(),
            }
        );
        let bar_total = match (test.requests, &live) {
            (Some(n), Some(_)) => Total::Requests(n),
            // Without live figures a request count cannot be followed.
            (Some(_), None) => Total::Unbounded,
            (None, _) if test.duration.is_zero() => Total::Unbounded,
            (None, _) => Total::Time(test.duration),
        };
        *self.progress.lock().expect("not poisoned") = Some(Progress::start(bar_total, live));
    }

    fn test_finished(&self, s: &TestSummary) {
        if let Some(p) = self.progress.lock().expect("not poisoned").take() {
            p.finish();
        }
        self.finished.lock().expect("not poisoned").push(s.clone());
        eprintln!(
            "meshload: {} {}: {:.1} req/s, p99 {:.2} ms, {} errors -> {}",
            s.test_name, s.status, s.actual_qps, s.response_p99_ms, s.errors, s.run_dir
        );
        for (name, note) in s
            .metrics
            .iter()
            .filter(|(name, _)| s.metric_problems.contains(name))
        {
            eprintln!("meshload:   metric {name}: {note}");
        }
        for f in &s.slo_failures {
            eprintln!("meshload:   SLO missed: {f}");
        }
        for reason in &s.host.reasons {
            eprintln!("meshload:   host saturated: {reason}");
        }
        for e in &s.node_exits {
            eprintln!("meshload:   replica not running in the test: {e}");
        }
        if let Some(note) = &s.storage_note {
            eprintln!("meshload:   not stored in the store: {note}");
        }
    }
}

/// The summary table (or JSON); after several arms, what the mesh costs. JSON is the
/// list of test summaries, or with several arms or a capacity search an object:
/// `{"tests": [...], "mesh_cost": [...], "scaling": [...], "searches": [...],
/// "capacity_cost": [...]}`.
fn print_report(report: &RunReport, json: bool) -> anyhow::Result<()> {
    let tests = &report.tests;
    let several = tests
        .iter()
        .any(|t| t.series.as_ref().is_some_and(|s| s.arms.len() > 1));
    let runs = super::mesh_cost::load(tests);
    let costs = if several {
        meshload_report::mesh_cost::costs(&runs)
    } else {
        Vec::new()
    };
    let scaling = meshload_report::compare::scaling(&runs);
    let searched: Vec<meshload_report::mesh_cost::Capacity> = report
        .searches
        .iter()
        .map(|s| meshload_report::mesh_cost::Capacity {
            test_name: &s.test_name,
            mesh: &s.mesh,
            max_rate: s.report.max_rate,
        })
        .collect();
    let capacity = meshload_report::mesh_cost::capacity_costs(&searched);
    let mut out = std::io::stdout().lock();
    if json {
        let doc = if several || !report.searches.is_empty() {
            let searches: Vec<&serde_json::Value> =
                report.searches.iter().map(|s| &s.document).collect();
            serde_json::json!({"tests": tests, "mesh_cost": costs, "scaling": scaling,
                "searches": searches, "capacity_cost": capacity})
        } else {
            serde_json::to_value(tests)?
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    for s in &report.searches {
        writeln!(out, "capacity search: {} (mesh {})", s.test_name, s.mesh)?;
        super::search::write_table(&mut out, &s.report, &s.spec)?;
        if let Some(file) = &s.file {
            writeln!(out, "stored: {}", file.display())?;
        }
        writeln!(out)?;
    }
    super::mesh_cost::print_capacity(&mut out, &capacity)?;
    if tests.is_empty() {
        return Ok(());
    }
    summary_table(tests).write(&mut out)?;
    if several {
        super::mesh_cost::print(&mut out, &costs)?;
    }
    super::mesh_cost::print_scaling(&mut out, &scaling)?;
    Ok(())
}

/// One row per run: its arm and repeat, rates, latency, errors, SLO (`-` without one)
/// and whether the host was saturated (`-` when not recorded).
fn summary_table(tests: &[TestSummary]) -> Table {
    let mut table = Table::new(&[
        "test",
        "arm",
        "repeat",
        "status",
        "requested",
        "achieved",
        "p50 ms",
        "p99 ms",
        "errors",
        "SLO",
        "host",
        "run",
    ])
    .left(&[1, 3, 9, 10, 11]);
    for t in tests {
        let slo = match (t.slo_set, t.slo_failures.is_empty()) {
            (false, _) => "-",
            (true, true) => "ok",
            (true, false) => "MISSED",
        };
        let host = match (&t.host.busy, &t.host.schedule_lag_p99_ms) {
            _ if t.host.saturated => "SATURATED".to_string(),
            (Some(busy), _) => format!("{:.0}% busy", busy * 100.0),
            (None, Some(_)) => "ok".to_string(),
            (None, None) => "-".to_string(),
        };
        let (arm, repeat) = match &t.series {
            Some(s) => (s.arm.clone(), format!("{}/{}", s.repeat, s.repeats)),
            None => (t.mesh.to_string(), "-".to_string()),
        };
        table.row(vec![
            t.test_name.clone(),
            arm,
            repeat,
            t.status.to_string(),
            t.requested_qps.clone(),
            format!("{:.1}", t.actual_qps),
            format!("{:.3}", t.response_p50_ms),
            format!("{:.3}", t.response_p99_ms),
            t.errors.to_string(),
            slo.to_string(),
            host,
            t.run_dir.clone(),
        ]);
    }
    table
}
