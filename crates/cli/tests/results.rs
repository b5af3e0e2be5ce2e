//! `meshload results list|show` and `meshload compare` over runs made by `meshload run`,
//! and the seed's analysis reading our files the way it read its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::run;
use serde_json::Value;

/// Two short tests at different rates stored in a fresh folder.
fn store_with_two_runs() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshload-results-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"backends_map": {"0": ["1"]}, "ConnectivityCheckPerURL": 2, "sleep_between_tests": "0s",
            "load_tests": [
              {"test_name": "fast", "target": "0", "qps": 100, "t": "2s", "c": 2},
              {"test_name": "busy", "target": "0", "qps": 200, "t": "2s", "c": 2}
            ],
            "metrics": {"envoy_memory_MB_by_replica_set": "sum(label_replace(container_memory_working_set_bytes{container=\"app\",pod=~\"node-.*\"}, \"replica_set\", \"$1\", \"pod\", \"(node-.*-.*)-.*\")) by (replica_set) / (1024*1024)"}}"#,
    )
    .unwrap();
    let store = dir.join("results");
    let out = run(
        &[
            "run",
            "--store",
            store.to_str().unwrap(),
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    store
}

fn run_dir(store: &Path, test: &str) -> PathBuf {
    std::fs::read_dir(store.join(test))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
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
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    for key in ["rate", "p99", "error_ratio", "memory:0", "cpu:1"] {
        assert!(keys.contains(&key), "{key} missing in {keys:?}");
    }
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("REGRESSION achieved req/s"));
    let out = run(&["compare", "--store", s, "fast", "nosuchtest"], &[]);
    assert_eq!(out.status.code(), Some(64));

    // The seed's analysis: ActualQPS from fortio.json; in the memory CSV, rows whose first
    // column names node-0, the third column parsed as a number.
    let dir = run_dir(&store, "fast");
    let fortio: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fortio.json")).unwrap()).unwrap();
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
    std::fs::remove_dir_all(store.parent().unwrap()).unwrap();
}
