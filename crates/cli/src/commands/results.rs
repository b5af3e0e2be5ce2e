//! `meshload results list|show` and `meshload compare`: the read side of a store.

use std::io::Write as _;
use std::process::ExitCode;

use meshload_report::compare::{self, fmt_value};
use meshload_report::runs::{self, Run};
use meshload_store::s3::S3Store;
use meshload_store::{FsStore, ResultStore};
use serde_json::json;

use crate::cli::{
    CompareArgs, ReportArgs, ResultsListArgs, ResultsPullArgs, ResultsPushArgs, ResultsShowArgs,
};
use crate::exit::{Exit, THRESHOLD};

/// A local view of a store: the folder itself, or for S3 a fresh copy of its runs in a
/// temporary folder (the read side then works the same on both).
fn open(address: &str) -> anyhow::Result<FsStore> {
    match ResultStore::open(address).map_err(|e| Exit::usage(e.to_string()))? {
        ResultStore::Fs(fs) => Ok(fs),
        ResultStore::S3(s3) => {
            let dir = std::env::temp_dir().join(format!("meshload-view-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            pull_all(&s3, &dir)?;
            Ok(FsStore::open(&dir.display().to_string())?)
        }
    }
}

/// Copies every run of an S3 store into a local folder store; returns how many.
fn pull_all(s3: &S3Store, to: &std::path::Path) -> anyhow::Result<usize> {
    let local = FsStore::open(&to.display().to_string())?;
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let runs = s3.list_runs().await?;
        for (test, id) in &runs {
            s3.download_run(test, id, &local).await?;
        }
        Ok(runs.len())
    })
}

/// Copies a store's runs to a local folder.
pub fn pull(args: &ResultsPullArgs) -> anyhow::Result<ExitCode> {
    let n = match ResultStore::open(&args.store).map_err(|e| Exit::usage(e.to_string()))? {
        ResultStore::S3(s3) => pull_all(&s3, &args.to)?,
        ResultStore::Fs(fs) => {
            let runs = fs.list_runs()?;
            for r in &runs {
                copy_dir(&r.dir, &args.to.join(&r.test_name).join(&r.id))?;
            }
            runs.len()
        }
    };
    println!("pulled {n} runs into {}", args.to.display());
    Ok(ExitCode::SUCCESS)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Uploads the runs an S3 store's spool holds.
pub fn push(args: &ResultsPushArgs) -> anyhow::Result<ExitCode> {
    let ResultStore::S3(s3) =
        ResultStore::open(&args.store).map_err(|e| Exit::usage(e.to_string()))?
    else {
        return Err(Exit::usage("push needs an s3:// store (folder stores have no spool)").into());
    };
    let runtime = super::runtime()?;
    let pushed = runtime.block_on(meshload_store::s3::push_spool(&s3))?;
    for location in &pushed {
        println!("pushed {location}");
    }
    println!(
        "{} runs pushed from {}",
        pushed.len(),
        s3.spool().root().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The run `name` names: `<test>/<id>` exactly, or `<test>`'s latest run that can be
/// read (runs that cannot, such as an empty folder a killed run left, are skipped with a
/// warning, as `list` skips them).
fn find(store: &FsStore, name: &str) -> anyhow::Result<Run> {
    if name.trim_end_matches('/').contains('/') {
        let run = store
            .find_run(name)
            .map_err(|e| Exit::usage(e.to_string()))?;
        return Ok(runs::load(&run)?);
    }
    let test = name.trim_end_matches('/');
    for r in store
        .list_runs()?
        .iter()
        .rev()
        .filter(|r| r.test_name == test)
    {
        match runs::load(r) {
            Ok(run) => return Ok(run),
            Err(e) => eprintln!("warning: skipping {}/{}: {e}", r.test_name, r.id),
        }
    }
    Err(Exit::usage(format!(
        "no readable run of {test} in {}",
        store.root().display()
    ))
    .into())
}

/// Lists every run of a store.
pub fn list(args: &ResultsListArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let mut loaded = Vec::new();
    for r in store.list_runs()? {
        match runs::load(&r) {
            Ok(run) => loaded.push(run),
            Err(e) => eprintln!("warning: skipping {}/{}: {e}", r.test_name, r.id),
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let rows: Vec<serde_json::Value> = loaded.iter().map(row).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if loaded.is_empty() {
        writeln!(out, "no runs in {}", store.root().display())?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<32} {:<14} {:>10} {:>10} {:>10} {:>8}  status",
        "test", "run", "requested", "achieved", "p99 ms", "errors"
    )?;
    for r in &loaded {
        writeln!(
            out,
            "{:<32} {:<14} {:>10} {:>10.1} {:>10.3} {:>8}  {}",
            r.run.test_name,
            r.run.id,
            r.fortio.requested_qps,
            r.fortio.actual_qps,
            r.response_ms(99.0).unwrap_or(f64::NAN),
            r.fortio.error_count(),
            r.status()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn row(r: &Run) -> serde_json::Value {
    json!({
        "test_name": r.run.test_name,
        "run": r.run.id,
        "dir": r.run.dir.display().to_string(),
        "started": r.metadata["start"],
        "requested_qps": r.fortio.requested_qps,
        "actual_qps": r.fortio.actual_qps,
        "response_p99_ms": r.response_ms(99.0),
        "errors": r.fortio.error_count(),
        "status": r.status(),
    })
}

/// Shows one run.
pub fn show(args: &ResultsShowArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let run = find(&store, &args.run)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "Run        {} ({})", run.name(), run.run.dir.display())?;
    writeln!(
        out,
        "Status     {}   started {}",
        run.status(),
        run.metadata["start"].as_str().unwrap_or("?")
    )?;
    if let Some(damage) = &run.damage {
        writeln!(
            out,
            "Damaged    {damage} (what it held, such as a replica's exit, is unknown)"
        )?;
    }
    let backend = run.backend();
    if !backend.is_empty() {
        writeln!(out, "Backend    {backend}")?;
    }
    meshload_loadgen::summary::write_summary(&mut out, &run.fortio)?;
    if let Some(metrics) = run.metadata["metrics"].as_object() {
        writeln!(out, "Metrics")?;
        for (name, m) in metrics {
            writeln!(out, "  {name:<40} {}", m["result"].as_str().unwrap_or(""))?;
        }
    }
    let resources = run.node_resources();
    if !resources.is_empty() {
        writeln!(out, "Nodes      max memory MiB   CPU cores")?;
        for (node, r) in &resources {
            writeln!(
                out,
                "  {node:<16} {:>12.1} {:>11.3}",
                r.max_memory_mib, r.cpu_cores
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Compares two runs; exit 1 when a threshold is passed.
pub fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let (a, b) = (find(&store, &args.run_a)?, find(&store, &args.run_b)?);
    let figures = compare::figures(&a, &b);
    let regressions = compare::regressions(&figures, &args.max_regression);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json!({"a": a.name(), "b": b.name(), "backend_a": a.backend(),
            "backend_b": b.backend(), "mesh_a": a.mesh(), "mesh_b": b.mesh(), "figures": figures, "regressions": regressions});
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(
            out,
            "{:<44} {:>16} {:>16} {:>12} {:>9}",
            "", "A", "B", "B - A", "change"
        )?;
        writeln!(out, "{:<44} {:>16} {:>16}", "run", a.run.id, b.run.id)?;
        writeln!(out, "{:<44} {:>16} {:>16}", "mesh", a.mesh(), b.mesh())?;
        for f in &figures {
            let show = |v: Option<f64>| v.map_or("-".to_string(), fmt_value);
            let change = f
                .change_percent()
                .map_or(String::new(), |c| format!("{c:+.1}%"));
            writeln!(
                out,
                "{:<44} {:>16} {:>16} {:>12} {:>9}",
                f.label,
                show(f.a),
                show(f.b),
                show(f.difference),
                change
            )?;
        }
        // Where each ran: the mesh is often the point of the comparison.
        for (label, run) in [("A", &a), ("B", &b)] {
            let backend = run.backend();
            if !backend.is_empty() {
                writeln!(out, "{label} ran on {backend}")?;
            }
        }
        for r in &regressions {
            writeln!(out, "REGRESSION {r}")?;
        }
    }
    Ok(if regressions.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(THRESHOLD)
    })
}

/// Writes the HTML report and the charts.
pub fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let pattern = args.tests.as_deref().map(glob).transpose()?;
    let mut runs = Vec::new();
    for r in store.list_runs()? {
        if pattern.as_ref().is_some_and(|p| !p.is_match(&r.test_name)) {
            continue;
        }
        match runs::load(&r) {
            Ok(run) => runs.push(run),
            Err(e) => eprintln!("warning: skipping {}/{}: {e}", r.test_name, r.id),
        }
    }
    let searches = searches(store.root(), pattern.as_ref());
    if runs.is_empty() && searches.is_empty() {
        return Err(Exit::usage(format!("no runs to report in {}", store.root().display())).into());
    }
    let written = meshload_report::report::write(
        &runs,
        &searches,
        &store.root().display().to_string(),
        &args.out,
    )?;
    println!(
        "{} ({} runs, {} charts as PNG and SVG beside it)",
        written.index.display(),
        runs.len(),
        written.charts.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The capacity searches of the store (`<test>/search-<id>.json`), oldest first; an
/// unreadable one is skipped with a warning.
fn searches(root: &std::path::Path, pattern: Option<&regex::Regex>) -> Vec<serde_json::Value> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|test| pattern.is_none_or(|p| p.is_match(&test.file_name().to_string_lossy())))
        .flat_map(|test| {
            std::fs::read_dir(test.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("search-") && n.ends_with(".json"))
        })
        .collect();
    files.sort_by_key(|p| p.file_name().map(std::ffi::OsStr::to_os_string));
    files
        .iter()
        .filter_map(|path| {
            let read = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
            read.map_err(|e| eprintln!("warning: skipping {}: {e}", path.display()))
                .ok()
        })
        .collect()
}

/// A `*`/`?` wildcard pattern as an anchored regular expression.
fn glob(pattern: &str) -> anyhow::Result<regex::Regex> {
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|e| Exit::usage(format!("--tests {pattern:?}: {e}")).into())
}
