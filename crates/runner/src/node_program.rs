//! Which program the local backend starts for a node: `meshload-node` (the node alone,
//! a binary without the rest of meshload, so a node's resident memory is mostly its own)
//! when it sits beside `meshload` and reports the same node build, else `meshload node`.
//!
//! `cargo run` builds only the `meshload` binary, so a `meshload-node` beside it may be
//! left over from older sources; its `--version` names the node sources it was built from
//! ([`meshload_node::cli::BUILD`]), and one that differs is not used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The file name of the node-only binary.
pub const NODE_BINARY: &str = "meshload-node";

/// How long `meshload-node --version` may take before it counts as unusable.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// A program that runs a node, and the arguments that come before the node's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProgram {
    /// The executable.
    pub exe: PathBuf,
    /// `["node"]` for `meshload node`, nothing for `meshload-node`.
    pub prefix: Vec<String>,
}

impl NodeProgram {
    /// `meshload node`, run by the given `meshload` executable.
    pub fn subcommand(meshload: &Path) -> NodeProgram {
        NodeProgram {
            exe: meshload.to_path_buf(),
            prefix: vec!["node".to_string()],
        }
    }

    /// `meshload-node` from the folder of `meshload` when it is the same node build,
    /// else `meshload node`; the second value says why a `meshload-node` found there was
    /// not used.
    pub fn beside(meshload: &Path) -> (NodeProgram, Option<String>) {
        let Some(dir) = meshload.parent() else {
            return (NodeProgram::subcommand(meshload), None);
        };
        let candidate = dir.join(NODE_BINARY);
        if !candidate.is_file() {
            return (NodeProgram::subcommand(meshload), None);
        }
        let expected = format!("{NODE_BINARY} {}", meshload_node::cli::BUILD);
        match version_of(&candidate) {
            Ok(version) if version == expected => (
                NodeProgram {
                    exe: candidate,
                    prefix: Vec::new(),
                },
                None,
            ),
            Ok(version) => (
                NodeProgram::subcommand(meshload),
                Some(format!(
                    "{} is another build ({version:?}, this meshload's nodes are {expected:?}; \
                     `cargo build --release` builds both); nodes run as `meshload node`",
                    candidate.display()
                )),
            ),
            Err(reason) => (
                NodeProgram::subcommand(meshload),
                Some(format!(
                    "{} cannot be used ({reason}); nodes run as `meshload node`",
                    candidate.display()
                )),
            ),
        }
    }
}

/// The first line `exe --version` prints.
fn version_of(exe: &Path) -> Result<String, String> {
    let mut child = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => break,
            Some(status) => return Err(format!("--version: {status}")),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("--version did not answer in {VERSION_TIMEOUT:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read as _;
        stdout.read_to_string(&mut out).map_err(|e| e.to_string())?;
    }
    Ok(out.lines().next().unwrap_or_default().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A scratch folder, removed when dropped.
    struct Folder(PathBuf);

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Folder {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    /// A folder holding a `meshload` (never run) and a `meshload-node` script that prints
    /// `version`.
    fn folder(version: Option<&str>) -> (Folder, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Folder(
            std::env::temp_dir().join(format!("meshload-node-program-{}-{n}", std::process::id())),
        );
        std::fs::create_dir_all(dir.path()).expect("mkdir");
        let meshload = dir.path().join("meshload");
        std::fs::write(&meshload, "").expect("write");
        if let Some(version) = version {
            let node = dir.path().join(NODE_BINARY);
            std::fs::write(&node, format!("#!/bin/sh\necho '{version}'\n")).expect("write");
            std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        (dir, meshload)
    }

    #[test]
    fn the_same_build_beside_meshload_is_used() {
        let (dir, meshload) = folder(Some(&format!(
            "{NODE_BINARY} {}",
            meshload_node::cli::BUILD
        )));
        let (program, note) = NodeProgram::beside(&meshload);
        assert_eq!(program.exe, dir.path().join(NODE_BINARY));
        assert!(program.prefix.is_empty());
        assert_eq!(note, None);
    }

    #[test]
    fn a_stale_build_is_not_used_and_said_why() {
        let (_dir, meshload) = folder(Some("meshload-node 0.0.1 (node sources 0)"));
        let (program, note) = NodeProgram::beside(&meshload);
        assert_eq!(program, NodeProgram::subcommand(&meshload));
        let note = note.expect("a note");
        assert!(note.contains("another build"), "{note}");
        assert!(note.contains("0.0.1"), "{note}");
    }

    #[test]
    fn without_one_meshload_node_runs_the_nodes() {
        let (_dir, meshload) = folder(None);
        assert_eq!(
            NodeProgram::beside(&meshload),
            (NodeProgram::subcommand(&meshload), None)
        );
    }

    #[test]
    fn one_that_cannot_run_is_not_used() {
        let (dir, meshload) = folder(None);
        let node = dir.path().join(NODE_BINARY);
        std::fs::write(&node, "not a program").expect("write");
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (program, note) = NodeProgram::beside(&meshload);
        assert_eq!(program, NodeProgram::subcommand(&meshload));
        assert!(note.expect("a note").contains("cannot be used"));
    }
}
