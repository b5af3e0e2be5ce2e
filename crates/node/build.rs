//! Hashes the node crate's sources, and those of the meshload crates it builds on (its
//! behaviour is parsed by `meshload-config`, its process plumbing is `meshload-process`'s),
//! into `MESHLOAD_NODE_SOURCES`, part of `meshload_node::cli::BUILD`: two binaries built
//! from the same node code report the same identity, and a `meshload-node` left over from
//! older sources reports another.

use std::hash::{DefaultHasher, Hasher as _};
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut files = vec![root.join("build.rs")];
    for krate in [
        root.clone(),
        root.join("../config"),
        root.join("../process"),
    ] {
        files.push(krate.join("Cargo.toml"));
        collect(&krate.join("src"), &mut files);
    }
    files.sort();
    // SipHash with fixed keys: the same within a toolchain (a new toolchain gives another
    // identity, which only makes an older `meshload-node` count as stale).
    let mut hash = DefaultHasher::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap_or(file);
        hash.write(relative.to_string_lossy().as_bytes());
        hash.write(&std::fs::read(file).unwrap_or_default());
        println!("cargo:rerun-if-changed={}", file.display());
    }
    for krate in [
        root.clone(),
        root.join("../config"),
        root.join("../process"),
    ] {
        println!("cargo:rerun-if-changed={}", krate.join("src").display());
    }
    println!(
        "cargo:rustc-env=MESHLOAD_NODE_SOURCES={:016x}",
        hash.finish()
    );
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
