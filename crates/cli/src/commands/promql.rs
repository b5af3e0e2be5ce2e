//! `meshload promql test`: Prometheus-format PromQL test scripts against the engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use meshload_promql::promqltest::{Outcome, Report, run_script};

use crate::cli::PromqlTestArgs;
use crate::exit::Exit;

/// Runs every script and prints per-file and total counts.
pub fn test(args: PromqlTestArgs) -> anyhow::Result<ExitCode> {
    let files = script_files(&args.paths)?;
    let verbose = tracing::enabled!(tracing::Level::DEBUG);
    let mut total = Report::default();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let report =
            run_script(&text).map_err(|e| Exit::usage(format!("{}: {e}", file.display())))?;
        println!("{}: {report}", file.display());
        for case in &report.cases {
            match &case.outcome {
                Outcome::Failed(why) => {
                    println!("  FAIL line {}: {}\n       {why}", case.line, case.query)
                }
                Outcome::Skipped(why) if verbose => {
                    println!("  skip line {}: {}\n       {why}", case.line, case.query)
                }
                _ => {}
            }
        }
        total.cases.extend(report.cases);
    }
    println!("total: {total}");
    let judged = total.passed() + total.failed();
    let ratio = if judged == 0 {
        1.0
    } else {
        total.passed() as f64 / judged as f64
    };
    Ok(if ratio >= args.min_pass_ratio {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The files named, and the `*.test` files of the directories named, sorted.
fn script_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect_dir(path, &mut files)?;
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(
                Exit::usage(format!("{}: no such file or directory", path.display())).into(),
            );
        }
    }
    Ok(files)
}

fn collect_dir(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    found.sort();
    for path in found {
        if path.is_dir() {
            collect_dir(&path, files)?;
        } else if path.extension().is_some_and(|x| x == "test") {
            files.push(path);
        }
    }
    Ok(())
}
