//! Capacity search end to end: `meshload search` against nodes of known capacity on
//! 127.0.0.1, and a config's `"search"` block decided by a PromQL threshold.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::{NodeProc, bin, temp_dir, write_config};

/// `search --json`, one 1 s trial per step without warm-up, `flags`, the store, `url`.
fn search_args<'a>(url: &'a str, flags: &[&'a str], store: &'a std::path::Path) -> Vec<&'a str> {
    let mut args = vec![
        "search",
        "--json",
        "--trials",
        "1",
        "--trial-duration",
        "1s",
        "--warmup",
        "0s",
        "--store",
        store.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    args.push(url);
    args
}

/// `meshload search --json ...`: exit code and the JSON document.
fn search(
    url: &str,
    flags: &[&str],
    store: &std::path::Path,
) -> (Option<i32>, serde_json::Value, String) {
    let args = search_args(url, flags, store);
    let out = bin().args(&args).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {stderr}"));
    (out.status.code(), doc, stderr)
}

fn rate(doc: &serde_json::Value, key: &str) -> f64 {
    doc[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {doc}"))
}

#[test]
fn finds_a_rate_limited_targets_capacity_within_the_precision() {
    let store = temp_dir("search-reject");
    let node = NodeProc::start(&["--capacity", "600"]);
    let (code, doc, stderr) = search(
        &node.url(),
        // The rate bound relaxed: with 1 s trials one late response is 1% of a step.
        &[
            "--slo",
            "error_ratio=0.01,min_rate_ratio=0.95",
            "--precision",
            "0.05",
        ],
        &store,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(doc["outcome"]["kind"], "found", "{doc}");
    let (max, failed) = (rate(&doc, "max_rate"), rate(&doc, "failed_at"));
    // Beyond 600 req/s the node refuses; its 50 ms burst lets a 1 s trial pass a little
    // above. The interval closed to the precision.
    assert!((570.0..=680.0).contains(&max), "found {max}: {stderr}");
    assert!((failed - max) / max <= 0.05 + 1e-9, "{max}..{failed}");
    assert!(
        doc["first_failure"][0]
            .as_str()
            .unwrap()
            .starts_with("error_ratio")
    );
    // Every step is there with its trial, stored as a run; the summary file too.
    let steps = doc["steps"].as_array().unwrap();
    assert!(steps.len() >= 5, "{doc}");
    let trial = &steps[0]["trials"][0];
    let run_dir = std::path::PathBuf::from(trial["run_dir"].as_str().unwrap());
    let metadata = common::json(&run_dir.join("metadata.json"));
    assert_eq!(metadata["search"]["id"], doc["search_id"]);
    assert_eq!(metadata["search"]["step"], 1);
    let id = doc["search_id"].as_str().unwrap();
    assert!(
        store
            .join("search")
            .join(format!("search-{id}.json"))
            .is_file()
    );
    // Progress on stderr shows the interval.
    assert!(stderr.contains("interval: pass"), "{stderr}");
    // The report lists the search and draws its knee, with the rate found marked.
    let out_dir = store.join("report");
    let out = bin()
        .args([
            "report",
            "--store",
            store.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    assert!(
        html.contains("Capacity searches") && html.contains(id),
        "{html}"
    );
    let svg =
        std::fs::read_to_string(out_dir.join(format!("search_search_none_{id}.svg"))).unwrap();
    assert!(svg.contains(&format!("capacity {max:.1} req/s")), "{svg}");
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn a_percentile_bound_finds_where_a_queue_starts_to_grow() {
    let store = temp_dir("search-queue");
    let node = NodeProc::start(&["--capacity", "400", "--capacity-mode", "queue"]);
    let (code, doc, stderr) = search(
        &node.url(),
        // Enough connections that requests queue at the node, not in the generator; the
        // rate bound is relaxed so the percentile decides.
        &[
            "--slo",
            "p99_ms=50,min_rate_ratio=0.5",
            "--precision",
            "0.05",
            "--start-qps",
            "50",
            "-c",
            "64",
        ],
        &store,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let max = rate(&doc, "max_rate");
    // One worker at 2.5 ms a request: above 400 req/s the wait grows by the excess each
    // second, past 50 ms within the trial.
    assert!((320.0..=420.0).contains(&max), "found {max}: {stderr}");
    let first = doc["first_failure"][0].as_str().unwrap();
    assert!(first.starts_with("p99_ms"), "{first}");
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn a_failing_start_exits_1_and_an_unbounded_target_blames_the_limit() {
    let store = temp_dir("search-ends");
    let slow = NodeProc::start(&["--capacity", "20"]);
    let (code, doc, _) = search(&slow.url(), &["--slo", "error_ratio=0.01"], &store);
    assert_eq!(code, Some(1));
    assert_eq!(doc["outcome"]["kind"], "fails_at_start");
    assert!(doc["verdict"].as_str().unwrap().contains("starting rate"));
    assert_eq!(doc["steps"].as_array().unwrap().len(), 1);

    let fast = NodeProc::start(&[]);
    let (code, doc, _) = search(
        &fast.url(),
        &[
            "--slo",
            "min_rate_ratio=0.95",
            "--max-qps",
            "300",
            "--no-store",
        ],
        &store,
    );
    assert_eq!(code, Some(0));
    assert_eq!(doc["outcome"]["kind"], "never_failed");
    assert_eq!(rate(&doc, "max_rate"), 300.0);
    assert!(doc["verdict"].as_str().unwrap().contains("not the target"));
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn bad_search_options_are_usage_errors() {
    for (flags, says) in [
        (&["--slo", "p99_ms"][..], "not KEY=VALUE"),
        (&["--slo", "p99=5"][..], "unknown SLO key"),
        (&["--trials", "0"][..], "--trials"),
        (&["--trial-duration", "100ms"][..], "at least 1s"),
        (&["--max-qps", "10"][..], "--max-qps"),
        (&["--precision", "2"][..], "--precision"),
    ] {
        let mut args = vec!["search"];
        args.extend_from_slice(flags);
        args.push("http://127.0.0.1:1/");
        let out = bin().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}

#[test]
fn an_interrupted_search_keeps_its_finished_steps_and_exits_130() {
    let store = temp_dir("search-stop");
    let node = NodeProc::start(&[]);
    let mut child = bin()
        .args(search_args(
            &node.url(),
            &["--slo", "min_rate_ratio=0.95"],
            &store,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two steps finish, the third is cut.
    let mut lines = common::StderrLines::of(&mut child);
    lines.wait_for("step 3:");
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let stderr = lines.rest().join("\n");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["outcome"]["kind"], "interrupted");
    let steps = doc["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{doc}");
    assert!(steps.iter().all(|s| s["passed"] == true));
    let id = doc["search_id"].as_str().unwrap();
    assert!(
        store
            .join("search")
            .join(format!("search-{id}.json"))
            .is_file()
    );
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn a_config_search_is_decided_by_its_promql_threshold() {
    let dir = temp_dir("search-config");
    let store = dir.join("store");
    // The back node's request rate, scraped from its /metrics every second, may not pass
    // 330 req/s: the topology itself could go much further.
    let config = write_config(
        &dir,
        r#"{
          "backends_map": {"front": ["back"], "back": []},
          "scrape_interval": "1s",
          "metrics_step": "1s",
          "sleep_between_tests": "0s",
          "load_tests": [
            {"test_name": "cap", "target": "front",
             "search": {"slo": {"p99_ms": 100, "min_rate_ratio": 0.9}, "start_qps": 100, "max_qps": 2000,
                        "precision": 0.1, "trials": 1, "trial_duration": "3s", "warmup": "1s",
                        "promql": [{"name": "back_rate",
                                    "query": "sum(rate(meshload_node_requests_total{node=\"back\"}[2s]))",
                                    "max": 330}]}}
          ]
        }"#,
    );
    let out = bin()
        .args([
            "run",
            "--json",
            "--store",
            store.to_str().unwrap(),
            config.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let search = &doc["searches"][0];
    let max = rate(search, "max_rate");
    assert!((280.0..=330.0).contains(&max), "found {max}: {stderr}");
    let first = search["first_failure"][0].as_str().unwrap();
    assert!(first.starts_with("promql:back_rate"), "{first}");
    // Each trial is a run of the test, with the threshold's value in its metadata.
    let trial = &search["steps"][0]["trials"][0];
    let value = trial["thresholds"][0][1].as_f64().unwrap();
    // The window reaches back over the warm-up's tail: a little over the rate at times.
    assert!((90.0..=130.0).contains(&value), "{trial}");
    let run_dir = std::path::PathBuf::from(trial["run_dir"].as_str().unwrap());
    let metadata = common::json(&run_dir.join("metadata.json"));
    assert_eq!(metadata["search"]["step"], 1);
    assert!(metadata["search"]["thresholds"]["back_rate"].is_number());
    std::fs::remove_dir_all(&dir).unwrap();
}
