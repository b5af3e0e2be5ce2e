//! `meshload load`: one load test, printed and optionally written as Fortio JSON.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use meshload_loadgen::spec::Stop;
use meshload_loadgen::{FortioResult, Live, LoadOptions, LoadSpec};

use crate::cli::LoadArgs;
use crate::exit::Exit;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
const INTERRUPTED: u8 = 130;

/// Runs the load test and reports it.
pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let json_path = args.json.clone();
    let spec = spec(args)?;
    let runtime = super::runtime()?;
    let result = runtime.block_on(drive(spec))?;
    let fortio = result.to_fortio();
    report(&fortio, json_path.as_deref())?;
    Ok(if result.interrupted {
        ExitCode::from(INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Turns flags into a validated spec; every problem is reported, exit 64.
fn spec(args: LoadArgs) -> anyhow::Result<LoadSpec> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => Some(bytes::Bytes::from(text.clone())),
        (None, Some(path)) => Some(
            std::fs::read(path)
                .map(bytes::Bytes::from)
                .map_err(|e| Exit::usage(format!("--payload-file {}: {e}", path.display())))?,
        ),
        (None, None) => None,
    };
    let options = LoadOptions {
        url: args.url,
        qps: args.qps,
        connections: args.connections as usize,
        duration: Some(args.duration),
        requests: args.requests,
        percentiles: args.percentiles.0,
        uniform: args.uniform,
        jitter: args.jitter,
        nocatchup: args.nocatchup,
        headers: args.headers,
        payload,
        timeout: args.timeout,
        labels: args.labels,
        h2: args.h2,
        connect_to: Vec::new(),
    };
    LoadSpec::try_new(options).map_err(|errors| Exit::usage(errors.to_string()).into())
}

async fn drive(spec: LoadSpec) -> anyhow::Result<meshload_loadgen::LoadResult> {
    let live = Live::default();
    let progress = Progress::start(&spec, live.clone());
    let outcome = meshload_loadgen::run(spec, super::shutdown_signal(), live).await;
    progress.finish().await;
    outcome.context("cannot run the load test")
}

/// Prints the summary and writes the JSON where asked.
fn report(fortio: &FortioResult, json_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(fortio).context("cannot encode the result")?;
    let to_stdout = json_path.is_some_and(|p| p.as_os_str() == "-");
    let mut summary = Vec::new();
    meshload_loadgen::summary::write_summary(&mut summary, fortio)
        .context("cannot format the summary")?;
    if to_stdout {
        std::io::stderr()
            .write_all(&summary)
            .context("cannot write to stderr")?;
        writeln!(std::io::stdout(), "{json}").context("cannot write to stdout")?;
    } else {
        std::io::stdout()
            .write_all(&summary)
            .context("cannot write to stdout")?;
        if let Some(path) = json_path {
            std::fs::write(path, format!("{json}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// A progress bar on stderr while the test runs, when stderr is a terminal.
struct Progress {
    task: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Progress {
    fn start(spec: &LoadSpec, live: Live) -> Progress {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress { task: None };
        }
        let (bar, by_count) = match spec.stop {
            Stop::Requests(n) => (indicatif::ProgressBar::new(n), true),
            Stop::Duration(d) => (indicatif::ProgressBar::new(d.as_secs().max(1)), false),
            Stop::Never => (indicatif::ProgressBar::new_spinner(), false),
        };
        let template = if by_count {
            "{elapsed_precise} [{bar:30}] {pos}/{len} requests  {msg}"
        } else {
            "{elapsed_precise} [{bar:30}] {pos}/{len}s  {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let started = std::time::Instant::now();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                let stats = live.lock().map(|s| s.clone()).unwrap_or_default();
                bar.set_position(if by_count {
                    stats.requests
                } else {
                    started.elapsed().as_secs()
                });
                bar.set_message(format!(
                    "{} req/s  p99 {:.2}ms  errors {}",
                    stats.last_second_requests,
                    stats.last_second_p99 * 1e3,
                    stats.errors
                ));
            }
            bar.finish_and_clear();
        });
        Progress {
            task: Some((task, tx)),
        }
    }

    async fn finish(self) {
        if let Some((task, tx)) = self.task {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}
