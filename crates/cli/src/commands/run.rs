//! `meshload run`: the main job.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context as _;
use meshload_config::LoadTest;
use meshload_loadgen::Live;
use meshload_runner::{LocalBackend, Observer, RunError, RunSettings, StopSignal, TestSummary};
use meshload_store::ResultStore;

use crate::cli::RunArgs;
use crate::exit::{Exit, INTERRUPTED, THRESHOLD};
use crate::progress::{Progress, Total};

/// Runs every test of the config locally.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = super::validate::load(&args.config)?;
    let config = loaded.config;
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
    let runtime = super::runtime()?;
    let observer = Printer::default();
    let outcome = runtime.block_on(async {
        let stop = StopSignal::new(async {
            super::shutdown_signal().await;
            eprintln!("meshload: stopping: storing what was measured, stopping the nodes (again to quit at once)");
            // A second Ctrl-C quits at once; the nodes notice and exit by themselves.
            tokio::spawn(async {
                super::shutdown_signal().await;
                std::process::exit(i32::from(INTERRUPTED));
            });
        });
        let mut backend = LocalBackend::new(exe);
        meshload_runner::run(&config, &mut backend, &settings, &observer, stop).await
    });
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
    let missed = report.tests.iter().any(|t| !t.slo_failures.is_empty());
    Ok(if report.interrupted {
        ExitCode::from(INTERRUPTED)
    } else if missed {
        ExitCode::from(THRESHOLD)
    } else {
        ExitCode::SUCCESS
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

    fn test_started(&self, index: usize, total: usize, test: &LoadTest, live: Live) {
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
        let bar_total = test
            .requests
            .map_or(Total::Time(test.duration), Total::Requests);
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
