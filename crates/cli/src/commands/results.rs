//! `meshload results list|show` and `meshload compare`: the read side of a store.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
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
/// private temporary folder (the read side then works the same on both), removed when
/// the view is dropped.
struct View {
    store: FsStore,
    /// The store as the user named it.
    address: String,
    _copy: Option<tempfile::TempDir>,
}

impl std::ops::Deref for View {
    type Target = FsStore;

    fn deref(&self) -> &FsStore {
        &self.store
    }
}

fn open(address: &str) -> anyhow::Result<View> {
    match ResultStore::open(address).map_err(|e| Exit::usage(e.to_string()))? {
        ResultStore::Fs(store) => Ok(View {
            address: store.root().display().to_string(),
            store,
            _copy: None,
        }),
        ResultStore::S3(s3) => {
            let copy = tempfile::Builder::new()
                .prefix("meshload-view-")
                .tempdir()
                .context("cannot make a temporary folder for the S3 store's runs")?;
            pull_all(&s3, copy.path())?;
            Ok(View {
                store: FsStore::open(&copy.path().display().to_string())?,
                address: address.to_string(),
                _copy: Some(copy),
            })
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
        writeln!(out, "no runs in {}", store.address)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = crate::table::Table::new(&[
        "test",
        "run",
        "requested",
        "achieved",
        "p99 ms",
        "errors",
        "status",
    ])
    .left(&[1, 6]);
    for r in &loaded {
        table.row(vec![
            r.run.test_name.clone(),
            r.run.id.clone(),
            r.fortio.requested_qps.clone(),
            format!("{:.1}", r.fortio.actual_qps),
            r.response_ms(99.0)
                .map_or("-".to_string(), |v| format!("{v:.3}")),
            r.fortio.error_count().to_string(),
            r.status(),
        ]);
    }
    table.write(&mut out)?;
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
    if let Some(series) = run.series_id() {
        writeln!(
            out,
            "Series     {series}: arm {}, repeat {} of {} (arms {})",
            run.arm(),
            run.repeat(),
            run.metadata["series"]["repeats"].as_u64().unwrap_or(1),
            run.series_arms().join(", ")
        )?;
    }
    let host = &run.metadata["summary"]["host"];
    if let Some(busy) = host["busy"].as_f64() {
        let lag = host["schedule_lag_p99_ms"]
            .as_f64()
            .map_or(String::new(), |l| format!(", schedule lag p99 {l:.3} ms"));
        let own = host["loadgen_cpu_cores"]
            .as_f64()
            .map_or(String::new(), |c| format!(", meshload {c:.2} cores"));
        writeln!(out, "Host       {:.0}% busy{own}{lag}", busy * 100.0)?;
    }
    for reason in run.saturation() {
        writeln!(out, "SATURATED  {reason}")?;
    }
    meshload_loadgen::summary::write_summary(&mut out, &run.fortio)?;
    if let Some(metrics) = run.metadata["metrics"].as_object() {
        writeln!(out, "Metrics")?;
        for (name, m) in metrics {
            writeln!(out, "  {name:<40} {}", m["result"].as_str().unwrap_or(""))?;
        }
    }
    let read = run.resources();
    if let Some(warning) = &read.warning {
        eprintln!("meshload: warning: {warning}");
    }
    let proxies = read
        .sidecars
        .iter()
        .map(|(node, r)| (format!("{node}'s sidecars"), r))
        .chain(
            read.shared
                .iter()
                .map(|(role, r)| (format!("{role} (shared)"), r)),
        )
        .chain(read.proxies.iter().map(|r| ("all, summed".to_string(), r)));
    let tables = [
        (
            "Nodes",
            read.nodes.iter().map(|(n, r)| (n.clone(), r)).collect(),
        ),
        ("Proxies", proxies.collect::<Vec<_>>()),
    ];
    let width = tables
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|(n, _)| n.len()))
        .max()
        .unwrap_or(0)
        .max(8);
    for (title, rows) in tables {
        if rows.is_empty() {
            continue;
        }
        writeln!(
            out,
            "{title:<width$} max memory MiB   CPU cores",
            width = width + 2
        )?;
        for (name, r) in rows {
            writeln!(
                out,
                "  {name:<width$} {:>14.1} {:>11.3}",
                r.max_memory_mib, r.cpu_cores
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `compare` takes for A or B: `<test>/<id>` (that run), `<test>` (the latest
/// series of the test: all its repeats, of its one arm) or `<test>@<arm>` (one arm of
/// that series). Gives a name for people and the runs, by repeat.
fn find_series(store: &FsStore, name: &str) -> anyhow::Result<(String, Vec<Run>)> {
    if name.trim_end_matches('/').contains('/') {
        let run = find(store, name)?;
        return Ok((run.name(), vec![run]));
    }
    let name = name.trim_end_matches('/');
    let all = store.list_runs()?;
    // A test may have `@` in its name: the whole name first, then `<test>@<arm>`.
    let (test, arm) = match name.rsplit_once('@') {
        Some((t, a)) if !all.iter().any(|r| r.test_name == name) => (t, Some(a)),
        _ => (name, None),
    };
    let mut loaded = Vec::new();
    for r in all.iter().filter(|r| r.test_name == test) {
        match runs::load(r) {
            Ok(run) => loaded.push(run),
            Err(e) => eprintln!("warning: skipping {}/{}: {e}", r.test_name, r.id),
        }
    }
    let latest = compare::latest_series(&loaded);
    let Some(arms) = latest.get(test) else {
        return Err(Exit::usage(format!(
            "no readable run of {test:?} in {}",
            store.root().display()
        ))
        .into());
    };
    let names: Vec<&str> = arms.iter().map(|a| a.arm.as_str()).collect();
    let chosen = match arm {
        Some(arm) => arms.iter().find(|a| a.arm == arm),
        None if arms.len() == 1 => arms.first(),
        None => {
            return Err(Exit::usage(format!(
                "the latest series of {test} ran under {}: name one, as {test}@{}",
                names.join(" and "),
                names[0]
            ))
            .into());
        }
    };
    let Some(chosen) = chosen else {
        return Err(Exit::usage(format!(
            "the latest series of {test} has no arm {:?}: it has {}",
            arm.unwrap_or_default(),
            names.join(", ")
        ))
        .into());
    };
    let label = match (arm, chosen.runs.len()) {
        (Some(a), n) => format!("{test}@{a} ({n} runs)"),
        (None, 1) => chosen.runs[0].name(),
        (None, n) => format!("{test} ({n} runs)"),
    };
    Ok((label, chosen.runs.clone()))
}

/// Compares two series (or runs); exit 1 when a threshold is passed, or when thresholds
/// were given and the two are not comparable.
pub fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let (name_a, a) = find_series(&store, &args.run_a)?;
    let (name_b, b) = find_series(&store, &args.run_b)?;
    let paired = compare::are_paired(&a, &b);
    let c = compare::compare(&a, &b, paired);
    for warning in &c.warnings {
        eprintln!("meshload: warning: {warning}");
    }
    let mut regressions = compare::regressions(&c.figures, &args.max_regression);
    if let (Some(reason), false) = (&c.reason, args.max_regression.is_empty()) {
        regressions.insert(0, format!("could not compare: {reason}"));
    }
    let mut out = std::io::stdout().lock();
    let (first_a, first_b) = (&a[0], &b[0]);
    if args.json {
        let names = |runs: &[Run]| runs.iter().map(Run::name).collect::<Vec<_>>();
        let doc = json!({"a": name_a, "b": name_b, "runs_a": names(&a), "runs_b": names(&b),
            "backend_a": first_a.backend(), "backend_b": first_b.backend(),
            "mesh_a": first_a.mesh(), "mesh_b": first_b.mesh(), "method": c.method,
            "comparable": c.comparable, "reason": c.reason, "suggestion": c.suggestion,
            "figures": c.figures, "regressions": regressions});
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(out, "A  {name_a}, mesh {}", first_a.mesh())?;
        writeln!(out, "B  {name_b}, mesh {}", first_b.mesh())?;
        writeln!(out, "B - A: {}", c.method)?;
        if let Some(reason) = &c.reason {
            writeln!(out, "NOT COMPARABLE: {reason}")?;
        }
        write_figures(&mut out, &c.figures)?;
        // Where each ran: the mesh is often the point of the comparison.
        for (label, run) in [("A", first_a), ("B", first_b)] {
            let backend = run.backend();
            if !backend.is_empty() {
                writeln!(out, "{label} ran on {backend}")?;
            }
        }
        if let Some(s) = &c.suggestion {
            writeln!(out, "To measure instead: {s}")?;
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

/// The figures of a comparison as an aligned table.
fn write_figures(
    out: &mut impl std::io::Write,
    figures: &[compare::Figure],
) -> std::io::Result<()> {
    let show = |v: Option<f64>| v.map_or("-".to_string(), fmt_value);
    let mut table = crate::table::Table::new(&[
        "figure", "A", "B", "B - A", "change", "interval", "conf.", "verdict",
    ])
    .left(&[7]);
    for f in figures {
        table.row(vec![
            f.label.clone(),
            show(f.a),
            show(f.b),
            show(f.estimate),
            f.change_percent()
                .map_or(String::new(), |c| format!("{c:+.1}%")),
            f.ci95.map_or("-".to_string(), |[l, h]| {
                format!("[{}, {}]", fmt_value(l), fmt_value(h))
            }),
            f.confidence
                .map_or("-".to_string(), |c| format!("{:.1}%", c * 100.0)),
            f.verdict.to_string(),
        ]);
    }
    table.write(out)
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
        return Err(Exit::usage(format!("no runs to report in {}", store.address)).into());
    }
    let total = runs.len();
    let mut described = store.address.clone();
    if args.latest > 0 && total > args.latest {
        // Run ids are start times: the latest N over every test (ties by test name),
        // kept in store order.
        let mut ranked: Vec<(&str, &str)> = runs
            .iter()
            .map(|r| (r.run.id.as_str(), r.run.test_name.as_str()))
            .collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(a.0).then(a.1.cmp(b.1)));
        let keep: std::collections::HashSet<(String, String)> = ranked[..args.latest]
            .iter()
            .map(|(id, test)| (id.to_string(), test.to_string()))
            .collect();
        runs.retain(|r| keep.contains(&(r.run.id.clone(), r.run.test_name.clone())));
        described = format!(
            "{} (the latest {} of {total}; `meshload report --latest 0` reports every run)",
            store.address,
            runs.len()
        );
        eprintln!(
            "meshload: reporting the latest {} of {total} runs (--latest 0 for every run)",
            runs.len()
        );
    }
    let written = meshload_report::report::write(&runs, &searches, &described, &args.out)?;
    for warning in &written.warnings {
        eprintln!("meshload: warning: {warning}");
    }
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
