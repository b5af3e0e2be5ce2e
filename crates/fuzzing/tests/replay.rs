//! Replays every committed fuzzing input (`fuzz/corpus/<target>/`) and every case a
//! fuzzer found (`fuzz/artifacts/<target>/`) through its target: a crash, a hang or
//! a blow-up found once stays fixed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The stack each input runs on. A release build runs every input on 2 MiB, the stack of
/// Tokio's blocking threads where meshload evaluates queries; a debug build's frames are
/// many times larger (the generated PromQL parser's above all), so it gets 64 MiB.
const STACK: usize = if cfg!(debug_assertions) {
    64 << 20
} else {
    2 << 20
};

/// An input this slow is a hang, even in a debug build.
const SLOW: Duration = Duration::from_secs(30);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_and_found_case_runs_cleanly() {
    let fuzz = fuzz_dir();
    for (name, target) in meshload_fuzzing::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is missing or empty: every target keeps its corpus"
        );
        let found = inputs(&fuzz.join("artifacts").join(name));
        for path in corpus.iter().chain(&found) {
            let data = std::fs::read(path).expect("a readable input");
            let started = Instant::now();
            std::thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || target(&data))
                .expect("a thread")
                .join()
                .unwrap_or_else(|_| panic!("{} panicked", path.display()));
            let took = started.elapsed();
            assert!(took < SLOW, "{} took {took:?}", path.display());
        }
    }
}

#[test]
fn every_target_has_a_fuzzer() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in meshload_fuzzing::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file()
        );
    }
}
