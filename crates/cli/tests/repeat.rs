//! Repeats, intervals and equal load end to end: `meshload run --repeat` interleaves the
//! arms and gives every figure B - A with an interval and a verdict in the JSON contract;
//! an arm that cannot hold the rate is `not comparable`, on stdout and in `compare`; a
//! test without an SLO shows `-`; `compare` of two tests' series run from two configs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run, temp_dir, write_config};
use serde_json::Value;

/// The verdicts the contract allows.
const VERDICTS: [&str; 5] = [
    "higher",
    "lower",
    "no difference detected",
    "no interval",
    "not comparable",
];

/// What a test that checks figures, not the host, passes to `run`: these tests run side by
/// side on a small machine with debug builds, where the host can be busy and wake-ups late;
/// the saturation flag has a test of its own.
const LENIENT: [&str; 4] = ["--max-host-busy", "1", "--max-schedule-lag", "1s"];

/// `meshload run ARGS --store STORE CONFIG` with `env`; its output.
fn run_config(
    config: &std::path::Path,
    store: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend(["--store", store.to_str().unwrap(), config.to_str().unwrap()]);
    run(&all, env)
}

/// A config of one node, `0`, and one test of it: `test` is the test's own keys.
fn one_node(dir: &std::path::Path, test: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"{{"backends_map": {{"0": []}}, "ConnectivityCheckPerURL": 1, "sleep_between_tests": "0s",
                "load_tests": [{{"target": "0", {test}}}]}}"#
        ),
    )
}

/// `meshload compare --store STORE A B --json`, which must succeed; its document.
fn compare_json(store: &std::path::Path, a: &str, b: &str) -> Value {
    let s = store.to_str().unwrap();
    let out = run(&["compare", "--store", s, a, b, "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The figure `name` of a `figures[]` array.
fn figure<'a>(figures: &'a Value, name: &str) -> &'a Value {
    figures
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {figures}"))
}

/// Every figure of a `figures[]` array has the contract's fields and types.
fn check_contract(figures: &Value, repeats: u64) {
    let figures = figures.as_array().unwrap();
    assert!(!figures.is_empty());
    for f in figures {
        assert!(f["name"].is_string() && f["label"].is_string(), "{f}");
        assert!(f["estimate"].is_number(), "{f}");
        match &f["ci95"] {
            Value::Null => assert!(f["reason"].is_string(), "{f}"),
            Value::Array(ends) => {
                let (low, high) = (ends[0].as_f64().unwrap(), ends[1].as_f64().unwrap());
                assert!(ends.len() == 2 && low <= high, "{f}");
            }
            other => panic!("ci95 is {other}"),
        }
        assert_eq!(f["repeats"], repeats, "{f}");
        assert!(VERDICTS.contains(&f["verdict"].as_str().unwrap()), "{f}");
        assert!(f["comparable"].is_boolean(), "{f}");
    }
}

#[test]
fn repeats_interleave_the_arms_and_give_intervals_in_the_json_contract() {
    let dir = temp_dir("repeat-aa");
    let config = one_node(
        &dir,
        r#""test_name": "aa", "t": "1s", "qps": 40, "c": 2, "repeat": 5"#,
    );
    let store = dir.join("results");
    let out = run_config(
        &config,
        &store,
        &[&["--mesh", "none,none", "--json"][..], &LENIENT].concat(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    // A B, B A, A B, ...: each repeat's first arm alternates.
    let order: Vec<(String, u64)> = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = &t["series"];
            (
                s["arm"].as_str().unwrap().to_string(),
                s["repeat"].as_u64().unwrap(),
            )
        })
        .collect();
    let arms: Vec<&str> = order.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        arms,
        [
            "none", "none#2", "none#2", "none", "none", "none#2", "none#2", "none", "none",
            "none#2"
        ]
    );
    assert_eq!(order[9].1, 5);
    // Every run records its series and the host in metadata.json.
    let first = doc["tests"][0]["run_dir"].as_str().unwrap();
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{first}/metadata.json")).unwrap())
            .unwrap();
    assert_eq!(
        meta["series"]["arms"],
        serde_json::json!(["none", "none#2"])
    );
    assert_eq!(meta["series"]["repeats"], 5);
    let busy = meta["host"]["busy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&busy), "{meta}");
    assert!(meta["host"]["loadgen_cpu_cores"].as_f64().unwrap() > 0.0);
    assert!(meta["host"]["saturated"].is_boolean());

    let cost = &doc["mesh_cost"][0];
    assert_eq!(
        (cost["baseline"].as_str(), cost["mesh"].as_str()),
        (Some("none"), Some("none#2"))
    );
    assert_eq!(cost["comparable"], true, "{cost}");
    check_contract(&cost["figures"], 5);
    let p50 = figure(&cost["figures"], "p50");
    assert_eq!(p50["confidence"].as_f64(), Some(1.0 - 2.0 / 32.0), "{p50}");
    assert!(p50["ci95"].is_array(), "{p50}");

    // compare of the two arms, named as test@arm, gives the same figures, paired.
    let compared = compare_json(&store, "aa@none", "aa@none#2");
    check_contract(&compared["figures"], 5);
    assert!(
        compared["method"].as_str().unwrap().contains("paired"),
        "{compared}"
    );
    assert_eq!(figure(&compared["figures"], "p50")["ci95"], p50["ci95"]);
    // A bare test name is ambiguous with two arms: the error names them.
    let s = store.to_str().unwrap();
    let out = run(&["compare", "--store", s, "aa", "aa@none"], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("aa@none") && err.contains("none#2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_arm_that_cannot_hold_the_rate_is_not_comparable() {
    let dir = temp_dir("repeat-behind");
    let config = one_node(
        &dir,
        r#""test_name": "behind", "t": "1s", "qps": 100, "c": 2"#,
    );
    let store = dir.join("results");
    // Every node serves 20 requests a second, one at a time: 100 req/s cannot be held.
    let env = [
        ("MESHLOAD_CAPACITY", "20"),
        ("MESHLOAD_CAPACITY_MODE", "queue"),
    ];
    let out = run_config(
        &config,
        &store,
        &["--mesh", "none,none", "--repeat", "3"],
        &env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("NOT COMPARABLE: "), "{stdout}");
    assert!(
        stdout.contains("achieved") && stdout.contains("of 100 req/s"),
        "{stdout}"
    );
    assert!(stdout.contains("meshload search"), "a suggestion: {stdout}");
    // No SLO: the SLO column says `-`, never `ok`.
    let header = stdout.lines().find(|l| l.starts_with("test ")).unwrap();
    let slo_at = header.find("SLO").unwrap();
    for row in stdout.lines().filter(|l| l.starts_with("behind ")) {
        assert_eq!(&row[slo_at..slo_at + 1], "-", "{stdout}");
    }

    // compare says the same, and a gate that cannot be judged fails.
    let doc = compare_json(&store, "behind@none", "behind@none#2");
    assert_eq!(doc["comparable"], false, "{doc}");
    check_contract(&doc["figures"], 3);
    assert!(
        doc["figures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["verdict"] == "not comparable" && f["reason"].is_string()),
        "{doc}"
    );
    let s = store.to_str().unwrap();
    let out = run(
        &[
            "compare",
            "--store",
            s,
            "behind@none",
            "behind@none#2",
            "--max-regression",
            "p99=1000%",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("REGRESSION could not compare: "), "{text}");
    // The report draws such a test apart, with the reason, not as a cost.
    let page = common::report_page(&store, &dir.join("report"));
    let costs = page.split("What the mesh costs").nth(1).unwrap();
    assert!(
        costs.contains("Not comparable: behind, none#2 against none") && costs.contains("achieved"),
        "{costs}"
    );
    assert!(
        !costs.contains("<th>B - A</th>"),
        "no figures for it: {costs}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_tests_series_from_two_configs_compare_with_intervals() {
    let dir = temp_dir("repeat-two-tests");
    let store = dir.join("results");
    for (name, latency) in [("fx-base", "0ms"), ("fx-slow", "20ms")] {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let config = write_config(
            &sub,
            &format!(
                r#"{{"backends_map": {{"0": []}}, "nodes": {{"0": {{"latency": "{latency}"}}}},
                    "ConnectivityCheckPerURL": 1, "sleep_between_tests": "0s", "repeat": 4,
                    "load_tests": [{{"test_name": "{name}", "target": "0", "qps": 20, "t": "1s", "c": 2}}]}}"#
            ),
        );
        let out = run_config(&config, &store, &LENIENT, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let doc = compare_json(&store, "fx-base", "fx-slow");
    assert_eq!(doc["runs_a"].as_array().unwrap().len(), 4);
    assert!(
        doc["method"].as_str().unwrap().contains("Hodges-Lehmann"),
        "{doc}"
    );
    check_contract(&doc["figures"], 4);
    let p50 = figure(&doc["figures"], "p50");
    // 20 ms more per request: found, and the interval holds it (within a few ms).
    assert_eq!(p50["verdict"], "higher", "{p50}");
    let [low, high] = [
        p50["ci95"][0].as_f64().unwrap(),
        p50["ci95"][1].as_f64().unwrap(),
    ];
    assert!(low > 10.0 && high < 30.0, "{p50}");
    // The text table: columns aligned, whatever the labels' lengths.
    let s = store.to_str().unwrap();
    let out = run(&["compare", "--store", s, "fx-base", "fx-slow"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("figure"))
        .take_while(|l| !l.ends_with("ran on local") && !l.is_empty())
        .collect();
    let verdict_at = rows[0].find("verdict").unwrap();
    for row in &rows[1..] {
        let v = &row[verdict_at..];
        assert!(VERDICTS.iter().any(|w| v.starts_with(w)), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_saturated_host_is_flagged_in_every_output_and_not_compared() {
    let dir = temp_dir("repeat-saturated");
    let config = one_node(&dir, r#""test_name": "sat", "t": "1s", "qps": 20, "c": 1"#);
    let store = dir.join("results");
    // No host is 0% busy while it runs a test: every run is flagged.
    let out = run_config(
        &config,
        &store,
        &["--mesh", "none,none", "--max-host-busy", "0"],
        &[],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("host saturated: the host was"), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("sat ") && l.contains("SATURATED"))
            .count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains("NOT COMPARABLE: ") && stdout.contains("busy (over 0%)"),
        "{stdout}"
    );
    let s = store.to_str().unwrap();
    let listed: Value =
        serde_json::from_slice(&run(&["results", "list", "--store", s, "--json"], &[]).stdout)
            .unwrap();
    let first = listed[0]["run"].as_str().unwrap();
    let shown = run(
        &["results", "show", "--store", s, &format!("sat/{first}")],
        &[],
    );
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("SATURATED  the host was"), "{shown}");
    let doc = compare_json(&store, "sat@none", "sat@none#2");
    assert_eq!(doc["comparable"], false, "{doc}");
    assert!(doc["reason"].as_str().unwrap().contains("busy"), "{doc}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A process's (or thread's) allowed CPUs, as `/proc/.../status` lists them.
fn cpus_allowed(status: &std::path::Path) -> String {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// `0-2,5` as CPU numbers.
fn cpu_list(s: &str) -> Vec<usize> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap(),
            None => p.parse::<usize>().unwrap()..=p.parse::<usize>().unwrap(),
        })
        .collect()
}

#[test]
fn the_load_generator_and_the_nodes_are_pinned_apart() {
    use std::io::BufRead;
    let dir = temp_dir("repeat-pinned");
    let config = one_node(
        &dir,
        r#""test_name": "pinned", "qps": 20, "t": "3s", "c": 1"#,
    );
    let store = dir.join("results");
    let ours = cpus_allowed(std::path::Path::new("/proc/self/status"));
    let mut child = common::bin()
        .args(["run", "--loadgen-cpus", "0", "--store"])
        .args([store.to_str().unwrap(), config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // The line comes once every node is up; the run then goes on for 3 s.
    let pinned = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("load generator pinned to CPUs [0]"));
    assert!(pinned.is_some(), "no pinning line");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for task in tasks.flatten() {
        assert_eq!(cpus_allowed(&task.path().join("status")), "0", "{task:?}");
    }
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    let node = String::from_utf8_lossy(&children.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .expect("a node process");
    // The node has the others (all of them on a machine of one CPU).
    let others: Vec<usize> = cpu_list(&ours).into_iter().filter(|c| *c != 0).collect();
    let expected = if others.is_empty() {
        cpu_list(&ours)
    } else {
        others
    };
    assert_eq!(
        cpu_list(&cpus_allowed(
            &std::path::Path::new("/proc").join(node).join("status")
        )),
        expected,
        "the node keeps the other CPUs"
    );
    for _ in lines.by_ref() {}
    assert!(child.wait().unwrap().success());
    let out = run(
        &["run", "--loadgen-cpus", "0-x", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid CPU list \"0-x\""), "{err}");
    // A CPU this machine does not give: refused before anything starts.
    let out = run(
        &["run", "--loadgen-cpus", "1023", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CPU 1023 is not one"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The timestamps of the `up` samples of a stored run's samples (every target's).
fn up_times(run: &std::path::Path) -> Vec<i64> {
    let text = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    let mut times: Vec<i64> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|s| s["labels"]["__name__"] == "up")
        .flat_map(|s| {
            s["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[0].as_i64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    times.sort();
    times
}

#[test]
fn an_idle_arm_is_not_scraped_while_another_arm_is_loaded() {
    let dir = temp_dir("repeat-idle");
    let config = one_node(&dir, r#""test_name": "idle", "qps": 50, "t": "3s""#);
    let store = dir.join("store");
    let out = run_config(&config, &store, &["--mesh", "none,none", "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir_of = |arm: &str| {
        let test = doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["series"]["arm"] == arm)
            .unwrap();
        std::path::PathBuf::from(test["run_dir"].as_str().unwrap())
    };
    let (first, second) = (dir_of("none"), dir_of("none#2"));
    let window = |run: &std::path::Path| {
        let m = common::json(&run.join("metadata.json"));
        (
            m["start_ms"].as_i64().unwrap(),
            m["end_ms"].as_i64().unwrap(),
        )
    };
    let (start, end) = window(&first);
    // The second arm's samples reach back over the first arm's test: it was not scraped
    // during it (scraped every second, it would have been 3 times).
    let during: Vec<i64> = up_times(&second)
        .into_iter()
        .filter(|t| *t > start && *t < end)
        .collect();
    assert!(during.is_empty(), "scraped while idle at {during:?}");
    // ...and was scraped through its own test, from its start.
    let (start, end) = window(&second);
    let own = up_times(&second);
    assert!(own.iter().any(|t| *t <= start), "a scrape before its start");
    assert!(
        own.iter().filter(|t| **t > start && **t < end).count() >= 2,
        "{own:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
