//! Prometheus's own PromQL test scripts (the shared conformance suite) against the engine.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::PathBuf;

use meshload_promql::promqltest::{Outcome, run_script};

fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/promql-testdata")
}

#[test]
fn conformance_suite_passes_at_least_98_percent() {
    let dir = suite_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the suite is in shared/ beside the checkout)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for file in &files {
        let report = run_script(&std::fs::read_to_string(file).unwrap()).unwrap();
        eprintln!("{}: {report}", file.file_name().unwrap().to_string_lossy());
        for case in &report.cases {
            if let Outcome::Failed(why) = &case.outcome {
                eprintln!("  FAIL line {}: {}\n    {why}", case.line, case.query);
            }
        }
        passed += report.passed();
        failed += report.failed();
        skipped += report.skipped();
    }
    eprintln!("total: {passed} passed, {failed} failed, {skipped} skipped");
    let ratio = passed as f64 / (passed + failed) as f64;
    assert!(ratio >= 0.98, "pass ratio {ratio:.4} is under 0.98");
}
