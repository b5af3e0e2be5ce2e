//! `meshload promql test` and `meshload query` end to end.
#![allow(clippy::unwrap_used)]

mod common;

use common::run;

fn shared_suite() -> String {
    common::shared("promql-testdata").display().to_string()
}

fn own_scripts() -> String {
    format!("{}/../promql/testdata", env!("CARGO_MANIFEST_DIR"))
}

/// `(passed, failed, skipped)` from a `N passed, N failed, N skipped` line.
fn counts(line: &str) -> (u64, u64, u64) {
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

/// What the shipped suite gives, file by file, with every known failure: a case that
/// starts failing, or starts being skipped (a function now `Unsupported`), changes it.
/// After a change that makes more cases pass, regenerate it with
/// `meshload promql test ../shared/promql-testdata | sed 's#^.*/promql-testdata/##'`.
const CONFORMANCE: &str = include_str!("promql-conformance.expected");

#[test]
fn the_shipped_conformance_suite_gives_exactly_its_pinned_counts_and_failures() {
    let out = run(
        &[
            "promql",
            "test",
            "--min-pass-ratio",
            "0.98",
            &shared_suite(),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let prefix = format!("{}/", shared_suite());
    let got: Vec<String> = text.lines().map(|l| l.replace(&prefix, "")).collect();
    let want: Vec<&str> = CONFORMANCE.lines().collect();
    assert_eq!(got, want, "the suite's results moved from the pinned ones");
    let (passed, failed, skipped) = counts(got.last().unwrap());
    assert!(passed as f64 / (passed + failed) as f64 >= 0.98);
    assert!(skipped > 0, "native-histogram cases are counted as skipped");
}

#[test]
fn scripts_outside_the_shipped_suite_run_too() {
    let out = run(&["promql", "test", &own_scripts()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let (passed, failed, _) = counts(text.lines().last().unwrap());
    assert!(passed >= 10 && failed == 0, "{text}");
}

#[test]
fn a_failing_case_fails_the_run_and_a_broken_script_is_a_usage_error() {
    let dir = std::env::temp_dir().join(format!("meshload-promql-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong.test");
    std::fs::write(&wrong, "load 1m\n  up 1\n\neval instant at 0m up\n  up 2\n").unwrap();
    let out = run(&["promql", "test", wrong.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL line 4: up"));
    let broken = dir.join("broken.test");
    std::fs::write(&broken, "frobnicate everything\n").unwrap();
    let out = run(&["promql", "test", broken.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: invalid command"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn query_over_stored_samples_writes_the_seed_csv_and_api_json() {
    let dir = std::env::temp_dir().join(format!("meshload-query-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = vec![r#"{"format":"meshload-tsdb","version":1}"#.to_string()];
    for (pod, base) in [("node-0-abc-1", 1048576.0), ("node-1-def-1", 2097152.0)] {
        let samples: Vec<String> = (0..31)
            .map(|i| format!("[{},{}]", 1_700_000_000_000i64 + i * 1000, base))
            .collect();
        lines.push(format!(
            r#"{{"labels":{{"__name__":"container_memory_working_set_bytes","pod":"{pod}","container":"app"}},"samples":[{}]}}"#,
            samples.join(",")
        ));
    }
    std::fs::write(dir.join("samples.jsonl"), lines.join("\n")).unwrap();
    let q = r#"sum(label_replace(container_memory_working_set_bytes, "replica_set", "$1", "pod", "(node-.*-.*)-.*")) by (replica_set) / (1024*1024)"#;
    let run_dir = dir.to_str().unwrap();
    let out = run(
        &[
            "query",
            "--run",
            run_dir,
            "--format",
            "csv",
            "--name",
            "memory_MB",
            q,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "metric.replica_set",
            "timestamp",
            "memory_MB",
            "normalized_ts"
        ]
    );
    assert_eq!(rows.len(), 1 + 2 * 4, "two series, steps 0, 10, 20, 30 s");
    // The seed's analysis: rows whose first column names node-0, value in the third.
    let node0: Vec<&str> = rows
        .iter()
        .filter(|r| r[0].contains("node-0"))
        .map(|r| r[2])
        .collect();
    assert_eq!(node0, ["1", "1", "1", "1"]);
    assert_eq!(rows[2][3], "10");

    let out = run(
        &[
            "query",
            "--run",
            run_dir,
            "--at",
            "1700000030",
            "--format",
            "json",
            q,
        ],
        &[],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "success");
    assert_eq!(json["data"]["resultType"], "vector");
    assert_eq!(json["data"]["result"].as_array().unwrap().len(), 2);

    let out = run(&["query", "--run", run_dir, "sum(("], &[]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a query that does not parse is a usage error"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deep_long_and_unbounded_queries_are_refused_not_crashed() {
    let dir = std::env::temp_dir().join(format!("meshload-query-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lines = [
        r#"{"format":"meshload-tsdb","version":1}"#,
        r#"{"labels":{"__name__":"up"},"samples":[[1700000000000,1],[1700000010000,1]]}"#,
    ];
    std::fs::write(dir.join("samples.jsonl"), lines.join("\n")).unwrap();
    let run_dir = dir.to_str().unwrap();
    let query = |q: &str, extra: &[&str]| {
        let mut args = vec!["query", "--run", run_dir];
        args.extend_from_slice(extra);
        args.push(q);
        let out = run(&args, &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // These aborted the process with a stack overflow (exit 134).
    for q in [
        format!("{}up{}", "abs(".repeat(10_000), ")".repeat(10_000)),
        format!("{}up{}", "sum(".repeat(20_000), ")".repeat(20_000)),
        vec!["up"; 30_000].join("+"),
    ] {
        let (code, stderr) = query(&q, &[]);
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains("query too large"), "{stderr}");
    }
    // These ran for minutes: refused before any evaluation.
    let (code, stderr) = query("max_over_time(up[1d:1ms])", &["--at", "1700000010"]);
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("subqueries would evaluate 86400000 times"),
        "{stderr}"
    );
    let (code, stderr) = query(
        "up",
        &[
            "--start",
            "1700000000",
            "--end",
            "1700086400",
            "--step",
            "1ms",
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("maximum resolution of 11000 points"),
        "{stderr}"
    );
    // Within the limits but slow: the timeout ends it.
    let (code, stderr) = query(
        // 1,000 outer steps of 1,000 inner ones: the most the limits let through.
        "count_over_time(count_over_time(up[1s:1ms])[1000s:1s])",
        &["--at", "1700000010", "--timeout", "50ms"],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("query timed out in expression evaluation"),
        "{stderr}"
    );
    // A 75-byte script that filled memory.
    let script = dir.join("bomb.test");
    std::fs::write(
        &script,
        "load 1ms\n  m{a=\"1\"} 0+1x100000000000\n\neval instant at 1ms m\n  m{a=\"1\"} 1\n",
    )
    .unwrap();
    let out = run(&["promql", "test", script.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("past its limit of 10000000 points"),
        "{out:?}"
    );
    // The bound is on the whole script: many series under any one series' share.
    let series: String = (0..2_000)
        .map(|i| format!("  m{{i=\"{i}\"}} 0+1x9999\n"))
        .collect();
    std::fs::write(&script, format!("load 1ms\n{series}")).unwrap();
    let out = run(&["promql", "test", script.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("limit of 10000000 points"),
        "{out:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
