//! `meshload query`: PromQL over a stored run (embedded engine) or a live Prometheus.

use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use meshload_promql::client::PrometheusClient;
use meshload_promql::eval::{QueryError, QueryOptions, QueryResult, Value};
use meshload_promql::output::{api_json, format_seconds, write_csv};
use meshload_promql::{Store, instant_query, range_query};

use crate::cli::{QueryArgs, QueryFormat};
use crate::exit::Exit;

/// When to evaluate.
enum Timing {
    Instant(i64),
    Range { start: i64, end: i64, step: i64 },
}

/// Evaluates and prints.
pub fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let step = i64::try_from(args.step.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let started = Instant::now();
    let (result, timing) = match &args.run {
        Some(path) => {
            let store = load_store(path)?;
            let timing = timing(&args, step, Some(&store))?;
            let loaded = started.elapsed();
            let mut times = Vec::with_capacity(args.repeat as usize);
            let mut result = None;
            for _ in 0..args.repeat {
                let eval_started = Instant::now();
                result = Some(evaluate(&store, &args.expr, &timing, args.timeout)?);
                times.push(eval_started.elapsed());
            }
            if args.stats {
                times.sort();
                let median = times[times.len() / 2];
                eprintln!(
                    "loaded {} samples in {loaded:?}; evaluated in {median:?} (median of {})",
                    store.sample_count(),
                    times.len()
                );
            }
            let result = result.expect("evaluated at least once");
            (result, timing)
        }
        None => {
            let url = args
                .prometheus
                .as_deref()
                .expect("clap requires --run or --prometheus");
            let timing = timing(&args, step, None)?;
            let client = PrometheusClient::new(url)?;
            let runtime = super::runtime()?;
            let result = runtime.block_on(async {
                match timing {
                    Timing::Instant(t) => client.query(&args.expr, t).await,
                    Timing::Range { start, end, step } => {
                        client.query_range(&args.expr, start, end, step).await
                    }
                }
            })?;
            if args.stats {
                eprintln!("answered in {:?}", started.elapsed());
            }
            (result, timing)
        }
    };
    print(&args, &result, &timing)?;
    Ok(ExitCode::SUCCESS)
}

fn evaluate(
    store: &Store,
    expr: &str,
    timing: &Timing,
    timeout: std::time::Duration,
) -> anyhow::Result<QueryResult> {
    let opts = QueryOptions {
        timeout,
        ..QueryOptions::default()
    };
    match *timing {
        Timing::Instant(t) => instant_query(store, expr, t, opts),
        Timing::Range { start, end, step } => range_query(store, expr, start, end, step, opts),
    }
    .map_err(query_error)
}

fn query_error(e: QueryError) -> anyhow::Error {
    match e {
        QueryError::Parse(_) | QueryError::Limit(_) => Exit::usage(e.to_string()).into(),
        other => anyhow::Error::new(other),
    }
}

/// Reads a run's samples (the folder's samples.jsonl, or the file given).
fn load_store(path: &Path) -> anyhow::Result<Store> {
    let file: PathBuf = if path.is_dir() {
        path.join(meshload_store::layout::SAMPLES)
    } else {
        path.to_path_buf()
    };
    let f = std::fs::File::open(&file)
        .map_err(|e| Exit::usage(format!("cannot open {}: {e}", file.display())))?;
    let (store, skipped) = Store::read_jsonl(BufReader::new(f))
        .with_context(|| format!("cannot read {}", file.display()))?;
    if let Some(warning) = skipped.warning() {
        eprintln!("meshload: warning: {}: {warning}", file.display());
    }
    Ok(store)
}

fn timing(args: &QueryArgs, step: i64, store: Option<&Store>) -> anyhow::Result<Timing> {
    let now = now_ms();
    let parse = |s: &str| {
        parse_time(s, now).ok_or_else(|| {
            Exit::usage(format!(
                "invalid time {s:?}: expected RFC 3339, Unix seconds, now or now-5m"
            ))
        })
    };
    if let Some(at) = &args.at {
        return Ok(Timing::Instant(parse(at)?));
    }
    let span = store.and_then(sample_span);
    let start = args.start.as_deref().map(parse).transpose()?;
    let end = args.end.as_deref().map(parse).transpose()?;
    match (start, end, span) {
        (Some(start), Some(end), _) => Ok(Timing::Range { start, end, step }),
        (None, None, None) => Ok(Timing::Instant(now)),
        (s, e, Some((first, last))) => Ok(Timing::Range {
            start: s.unwrap_or(first),
            end: e.unwrap_or(last),
            step,
        }),
        _ => Err(Exit::usage("a range query needs both --start and --end").into()),
    }
}

/// First and last sample times of a store.
fn sample_span(store: &Store) -> Option<(i64, i64)> {
    let series = store.series();
    let first = series
        .iter()
        .filter_map(|s| s.samples.first())
        .map(|p| p.0)
        .min()?;
    let last = series
        .iter()
        .filter_map(|s| s.samples.last())
        .map(|p| p.0)
        .max()?;
    Some((first, last))
}

fn now_ms() -> i64 {
    meshload_promql::system_time_ms(&SystemTime::now())
}

/// RFC 3339, Unix seconds (with fractions), `now`, or `now-DURATION`.
fn parse_time(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if s == "now" {
        return Some(now);
    }
    if let Some(ago) = s.strip_prefix("now-") {
        return meshload_config::reader::parse_go_duration(ago).map(|d| now - d.as_millis() as i64);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Some((secs * 1000.0).round() as i64);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(meshload_promql::system_time_ms(&t))
}

fn print(args: &QueryArgs, result: &QueryResult, timing: &Timing) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let t = match timing {
        Timing::Instant(t) => *t,
        Timing::Range { end, .. } => *end,
    };
    match args.format {
        QueryFormat::Json => writeln!(out, "{}", api_json(result, t))?,
        QueryFormat::Csv => match &result.value {
            Value::Matrix(m) => write_csv(&mut out, &args.name, m)?,
            _ => {
                return Err(
                    Exit::usage("--format csv needs a range result (use --start/--end)").into(),
                );
            }
        },
        QueryFormat::Table => print_table(&mut out, &result.value, t)?,
    }
    for w in result.warnings.iter().chain(&result.infos) {
        eprintln!("{w}");
    }
    Ok(())
}

fn print_table(out: &mut impl std::io::Write, value: &Value, t: i64) -> std::io::Result<()> {
    use meshload_promql::eval::format_value;
    match value {
        Value::Scalar(v) => writeln!(out, "scalar {} @{}", format_value(*v), format_seconds(t)),
        Value::String(s) => writeln!(out, "string {s:?} @{}", format_seconds(t)),
        Value::Vector(samples) if samples.is_empty() => writeln!(out, "(empty vector)"),
        Value::Vector(samples) => {
            for s in samples {
                writeln!(out, "{} {}", s.labels, format_value(s.value))?;
            }
            Ok(())
        }
        Value::Matrix(series) if series.is_empty() => writeln!(out, "(no series)"),
        Value::Matrix(series) => {
            for s in series {
                writeln!(out, "{}", s.labels)?;
                for &(pt, v) in &s.points {
                    writeln!(out, "  {} {}", format_seconds(pt), format_value(v))?;
                }
            }
            Ok(())
        }
    }
}
