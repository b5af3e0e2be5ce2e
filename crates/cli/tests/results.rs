//! `meshload results list|show` and `meshload compare` over runs made by `meshload run`,
//! and the seed's analysis reading our files the way it read its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{json, run, run_dir, run_ok, temp_dir, write_config};
use serde_json::Value;

/// Two short tests at different rates stored in a fresh folder (made once, shared by the
/// tests of this file).
fn store_with_two_runs() -> PathBuf {
    static STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STORE.get_or_init(make_store).clone()
}

fn make_store() -> PathBuf {
    let dir = temp_dir("results");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 2, "sleep_between_tests": "0s",
            "load_tests": [
              {"test_name": "fast", "target": "0", "qps": 100, "t": "2s", "c": 2},
              {"test_name": "busy", "target": "0", "qps": 200, "t": "2s", "c": 2}
            ],
            "metrics": {"envoy_memory_MB_by_replica_set": "sum(label_replace(container_memory_working_set_bytes{container=\"app\",pod=~\"node-.*\"}, \"replica_set\", \"$1\", \"pod\", \"(node-.*-.*)-.*\")) by (replica_set) / (1024*1024)"}}"#,
    );
    let store = dir.join("results");
    run_ok(&config, &store);
    store
}

#[test]
fn list_show_compare_and_the_seed_analysis_read_stored_runs() {
    let store = store_with_two_runs();
    let s = store.to_str().unwrap();

    let out = run(&["results", "list", "--store", s, "--json"], &[]);
    assert!(out.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["test_name"], "fast", "sorted by test name");
    assert_eq!(rows[1]["status"], "complete");
    assert!(rows[1]["actual_qps"].as_f64().unwrap() > 80.0);
    let table =
        String::from_utf8_lossy(&run(&["results", "list", "--store", s], &[]).stdout).into_owned();
    assert!(
        table.lines().count() == 3 && table.contains("busy"),
        "{table}"
    );

    let out = run(&["results", "show", "--store", s, "fast"], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "Run        fast/",
        "Backend    local",
        "Achieved",
        "envoy_memory_MB_by_replica_set",
        "max memory MiB",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing in\n{shown}");
    }

    let out = run(&["compare", "--store", s, "fast", "busy", "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = doc["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for key in ["rate", "p99", "error_ratio", "memory:0", "cpu:1"] {
        assert!(keys.contains(&key), "{key} missing in {keys:?}");
    }
    assert_eq!(doc["backend_a"], "local");
    // 100 against 200 req/s is not a comparison at equal load: no verdict, and why.
    assert_eq!(doc["comparable"], false, "{doc}");
    assert!(
        doc["reason"].as_str().unwrap().contains("different rates"),
        "{doc}"
    );
    assert!(
        doc["figures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["verdict"] == "not comparable"),
        "{doc}"
    );
    // Half the rate of the baseline fails a 10% gate: exit 1, the figure named.
    let out = run(
        &[
            "compare",
            "--store",
            s,
            "busy",
            "fast",
            "--max-regression",
            "rate=10%",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("REGRESSION achieved req/s"), "{table}");
    assert!(
        table.contains("REGRESSION could not compare: the runs asked for different rates"),
        "{table}"
    );
    assert!(table.contains("A ran on local\nB ran on local"), "{table}");
    let out = run(&["compare", "--store", s, "fast", "nosuchtest"], &[]);
    assert_eq!(out.status.code(), Some(64));

    // The seed's analysis: ActualQPS from fortio.json; in the memory CSV, rows whose first
    // column names node-0, the third column parsed as a number.
    let dir = run_dir(&store, "fast");
    let fortio = json(&dir.join("fortio.json"));
    assert!(fortio["ActualQPS"].as_f64().unwrap() > 80.0);
    let csv = std::fs::read_to_string(dir.join("envoy_memory_MB_by_replica_set.csv")).unwrap();
    let node0: Vec<f64> = csv
        .lines()
        .map(|l| l.split(',').map(str::trim).collect::<Vec<_>>())
        .filter(|cols| cols[0].contains("node-0"))
        .map(|cols| cols[2].parse().unwrap())
        .collect();
    assert!(!node0.is_empty(), "{csv}");
    assert!(
        node0.iter().all(|mib| *mib > 0.1 && *mib < 1000.0),
        "{node0:?}"
    );
}

/// Chromium as the report test starts it (as root, offline, a fresh profile).
fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium is installed by scripts/test (Debian package chromium)")
}

#[test]
fn the_report_renders_every_chart_in_a_browser() {
    let store = store_with_two_runs();
    let out_dir = store.parent().unwrap().join("report");
    let out = run(
        &[
            "report",
            "--store",
            store.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "…/index.html (2 runs, N charts as PNG and SVG beside it)"
    let charts: usize = said
        .split(" runs, ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(charts, 4 + 2 * 2, "four across runs, two per run: {said}");
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    // Self-contained: nothing is fetched (SVG's xmlns is a name, not a fetch).
    for fetch in ["src=\"http", "href=\"http", "url(http", "<link", "@import"] {
        assert!(
            !html.contains(fetch),
            "the report fetches something: {fetch}"
        );
    }
    assert!(
        html.contains("<th>where</th>") && html.contains("<td class=\"name\">local</td>"),
        "each run says where it ran"
    );
    for title in [
        "Maximum memory of each node against achieved rate",
        "Latency percentiles against achieved rate",
    ] {
        assert!(html.contains(title), "{title}");
    }
    let page = format!("file://{}", out_dir.join("index.html").display());
    let dom = chromium(&["--dump-dom", &page], &out_dir.join("profile"));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(&format!("data-charts-rendered=\"{charts}\"")),
        "not every chart rendered: {}",
        dom.len()
    );
    let pngs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    assert_eq!(pngs.len(), charts);
    for path in pngs {
        let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (900, 480), "{}", path.display());
        let pixels = &buf[..info.buffer_size()];
        let step = info.color_type.samples();
        let colors: std::collections::HashSet<&[u8]> = pixels.chunks(step).collect();
        assert!(
            colors.len() > 20,
            "{} has only {} colours",
            path.display(),
            colors.len()
        );
    }
}

#[test]
fn damaged_runs_say_so_and_show_skips_unreadable_ones() {
    let dir = temp_dir("damaged");
    let config = write_config(
        &dir,
        r#"{"backends_map": {"0": []}, "ConnectivityCheckPerURL": 0,
            "load_tests": [{"test_name": "quickstart-qps200", "target": "0", "qps": 20, "t": "1s"}]}"#,
    );
    let store = dir.join("results");
    run_ok(&config, &store);
    let test_dir = store.join("quickstart-qps200");
    let good = std::fs::read_dir(&test_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // A truncated metadata.json: the run is listed as damaged, not complete.
    let metadata = good.join("metadata.json");
    let text = std::fs::read_to_string(&metadata).unwrap();
    std::fs::write(&metadata, &text[..text.len() / 2]).unwrap();
    let s = store.to_str().unwrap();
    let listed = run(&["results", "list", "--store", s], &[]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let line = listed
        .lines()
        .find(|l| l.starts_with("quickstart-qps200"))
        .unwrap();
    assert!(line.ends_with("damaged"), "{listed}");
    let shown = run(&["results", "show", "--store", s, "quickstart-qps200"], &[]);
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).contains("Damaged    "));
    // An empty run folder newer than the good one (a killed run's): show skips it.
    std::fs::create_dir_all(test_dir.join("29991231235959")).unwrap();
    let shown = run(&["results", "show", "--store", s, "quickstart-qps200"], &[]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        String::from_utf8_lossy(&shown.stderr)
            .contains("skipping quickstart-qps200/29991231235959")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
