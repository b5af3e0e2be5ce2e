//! `meshload load`: one load test, printed and optionally written as Fortio JSON.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use meshload_loadgen::spec::Stop;
use meshload_loadgen::{FortioResult, Live, LoadOptions, LoadSpec};

use crate::cli::LoadArgs;
use crate::exit::Exit;
use crate::progress::{Progress, Total};

/// Runs the load test and reports it.
pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let json_path = args.json.clone();
    let spec = spec(args)?;
    for warning in spec.warnings() {
        eprintln!("meshload: warning: {warning}");
    }
    let runtime = super::runtime()?;
    let result = runtime.block_on(drive(spec))?;
    let fortio = result.to_fortio();
    report(&fortio, json_path.as_deref())?;
    Ok(if result.interrupted {
        ExitCode::from(crate::exit::INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Turns flags into a validated spec; every problem is reported, exit 64.
fn spec(args: LoadArgs) -> anyhow::Result<LoadSpec> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => Some(bytes::Bytes::from(text.clone())),
        (None, Some(path)) => Some(read_payload(path)?),
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
        tls: meshload_loadgen::tls::TlsOptions {
            ca: args.cacert.map(meshload_loadgen::tls::Ca::File),
            insecure: args.insecure,
        },
        coarse_pacing: args.coarse_pacing,
        std_client: args.std_client,
        connect_to: Vec::new(),
    };
    LoadSpec::try_new(options).map_err(|errors| Exit::usage(errors.to_string()).into())
}

/// A payload file, read up to one byte past the most a payload may be (so that a huge
/// file, or `/dev/zero`, is refused rather than read whole).
fn read_payload(path: &std::path::Path) -> anyhow::Result<bytes::Bytes> {
    use std::io::Read as _;
    let max = meshload_config::limits::MAX_PAYLOAD_BYTES;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|e| Exit::usage(format!("--payload-file {}: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(Exit::usage(format!(
            "--payload-file {}: larger than the most a payload may be, {max} bytes",
            path.display()
        ))
        .into());
    }
    Ok(bytes.into())
}

async fn drive(spec: LoadSpec) -> anyhow::Result<meshload_loadgen::LoadResult> {
    let live = Live::default();
    let total = match spec.stop {
        Stop::Requests(n) => Total::Requests(n),
        Stop::Duration(d) => Total::Time(d),
        Stop::Never => Total::Unbounded,
    };
    let progress = Progress::start(total, Some(live.clone()));
    let outcome = meshload_loadgen::run(spec, super::shutdown_signal(), live).await;
    progress.finish();
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
