//! The results layout and the filesystem store.
//!
//! ```text
//! <store>/<test_name>/<YYYYMMDDHHMMSS, UTC>/
//!   config.json  fortio.json  <metric>.csv  metadata.json  per_second.csv  samples.jsonl
//! ```
//! A run is written into a hidden temporary folder beside its final place and renamed
//! into place when complete, so a reader never sees half a run; the rename fails rather
//! than overwrite an existing run.
//!
//! # Layout
//! - [`run_id`]: the timestamp folder name.
//! - [`FsStore`], [`RunWriter`]: writing runs to a folder.
//! - [`s3`]: S3 stores, with a local spool for runs not yet uploaded.
//! - [`ResultStore`]: either, as a store address names it.

pub mod s3;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Errors writing results.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Every run id of that test and second is taken already.
    #[error("run {0} exists already; runs are never overwritten")]
    Exists(String),
    /// No run matches a name.
    #[error("no run {0}")]
    NoRun(String),
    /// An S3 request failed (after retries).
    #[error("{address}")]
    S3 {
        /// The store.
        address: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A run could not be uploaded and stays in the local spool.
    #[error(
        "the run is kept in the spool at {spool} (upload it later with `meshload results push --store {address}`)"
    )]
    Spooled {
        /// The run's folder in the spool.
        spool: String,
        /// The store.
        address: String,
        /// Why the upload failed.
        #[source]
        source: Box<StoreError>,
    },
    /// The store address is not one this build can write.
    #[error("unsupported store {0:?}: use a folder path, file://PATH or s3://BUCKET/PREFIX")]
    Unsupported(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The store every command uses when none is given: `results` in the working folder.
pub const DEFAULT_STORE: &str = "results";

/// How a run ended, as `metadata.json` says it (`"complete"`, `"interrupted"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every planned request was sent (or the duration ran out).
    Complete,
    /// A stop request ended the test early; what was measured is stored.
    Interrupted,
}

impl RunStatus {
    /// The word stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Complete => "complete",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The run folder name for a start time: `YYYYMMDDHHMMSS` in UTC.
pub fn run_id(started: SystemTime) -> String {
    let rfc = humantime::format_rfc3339_seconds(started).to_string();
    rfc.chars().filter(char::is_ascii_digit).take(14).collect()
}

/// The most runs of one test that can start in one second: the first is `<id>`, the
/// next `<id>-02` up to `<id>-99` (repeats of a short test under several arms).
const RUNS_PER_SECOND: u32 = 99;

/// Every run folder this process began, by path.
static ISSUED: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether `id` names a run folder: `YYYYMMDDHHMMSS`, or that with `-NN` for a later run
/// of the same test in the same second (these sort after it and before the next second).
pub fn is_run_id(id: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('-') {
        None => digits(id, 14),
        Some((second, n)) => digits(second, 14) && digits(n, 2),
    }
}

/// A store in a local folder.
#[derive(Debug, Clone)]
pub struct FsStore {
    pub(crate) root: PathBuf,
}

/// Where runs go, as a store address names it.
#[derive(Debug, Clone)]
pub enum ResultStore {
    /// A local folder.
    Fs(FsStore),
    /// An S3 bucket and prefix (runs pass through a local spool).
    S3(s3::S3Store),
}

impl ResultStore {
    /// A folder path, `file://PATH` or `s3://BUCKET/PREFIX`.
    pub fn open(address: &str) -> Result<ResultStore, StoreError> {
        if address.starts_with("s3://") {
            Ok(ResultStore::S3(s3::S3Store::open(address)?))
        } else {
            Ok(ResultStore::Fs(FsStore::open(address)?))
        }
    }

    /// Where runs are written first: the folder itself, or the S3 store's spool.
    pub fn local(&self) -> FsStore {
        match self {
            ResultStore::Fs(fs) => fs.clone(),
            ResultStore::S3(s3) => s3.spool(),
        }
    }

    /// Checks that runs can be written: the folder (or, for S3, the local spool every run
    /// passes through) is created and a probe file written and removed. A run checks
    /// this before it starts anything, so no measurement is lost to an unwritable store.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let root = self.local().root;
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let probe = root.join(format!(".meshload-probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(io(&probe))?;
        std::fs::remove_file(&probe).map_err(io(&probe))
    }

    /// Where a run of `test_name` with id `run` lives once published: its folder, or its
    /// `s3://bucket/prefix/<test_name>/<run>` address.
    pub fn location(&self, test_name: &str, run: &str) -> String {
        match self {
            ResultStore::Fs(fs) => fs.root.join(test_name).join(run).display().to_string(),
            ResultStore::S3(s3) => {
                format!("{}/{test_name}/{run}", s3.address().trim_end_matches('/'))
            }
        }
    }

    /// Puts a committed local run in its final place and says where that is. For S3 the
    /// run is uploaded and then removed from the spool; if the upload fails, it stays in
    /// the spool and the error says so.
    pub async fn publish(&self, run: &RunRef) -> Result<String, StoreError> {
        match self {
            ResultStore::Fs(_) => Ok(run.dir.display().to_string()),
            ResultStore::S3(s3) => match s3.upload_run(run).await {
                Ok(location) => {
                    s3::remove_run(&run.dir)?;
                    Ok(location)
                }
                Err(e) => Err(StoreError::Spooled {
                    spool: run.dir.display().to_string(),
                    address: s3.address().to_string(),
                    source: Box::new(e),
                }),
            },
        }
    }
}

impl FsStore {
    /// A store at a folder path or `file://PATH`.
    pub fn open(address: &str) -> Result<FsStore, StoreError> {
        let path = address.strip_prefix("file://").unwrap_or(address);
        if path.contains("://") || path.is_empty() {
            return Err(StoreError::Unsupported(address.to_string()));
        }
        Ok(FsStore {
            root: PathBuf::from(path),
        })
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts writing the run of `test_name` that started at `started`.
    pub fn begin_run(&self, test_name: &str, started: SystemTime) -> Result<RunWriter, StoreError> {
        let second = run_id(started);
        let test_dir = self.root.join(test_name);
        std::fs::create_dir_all(&test_dir).map_err(io(&test_dir))?;
        // Ids this process gave out count as taken even once their folder has left the
        // spool (uploaded to S3).
        let mut issued = ISSUED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = |id: &str| {
            test_dir.join(id).exists()
                || issued.contains(&test_dir.join(id))
                || test_dir
                    .join(format!(".{id}.tmp-{}", std::process::id()))
                    .exists()
        };
        let id = std::iter::once(second.clone())
            .chain((2..=RUNS_PER_SECOND).map(|n| format!("{second}-{n:02}")))
            .find(|id| !taken(id))
            .ok_or_else(|| StoreError::Exists(test_dir.join(&second).display().to_string()))?;
        issued.insert(test_dir.join(&id));
        drop(issued);
        let final_dir = test_dir.join(&id);
        let tmp_dir = test_dir.join(format!(".{id}.tmp-{}", std::process::id()));
        std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        Ok(RunWriter {
            tmp_dir,
            final_dir,
            id,
        })
    }
}

/// A stored run: its test, its id and its folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunRef {
    /// The test's name.
    pub test_name: String,
    /// The run's id (`YYYYMMDDHHMMSS`).
    pub id: String,
    /// The run's folder.
    pub dir: PathBuf,
}

impl FsStore {
    /// Every committed run, by test name then id (oldest first).
    pub fn list_runs(&self) -> Result<Vec<RunRef>, StoreError> {
        let mut runs = Vec::new();
        let tests = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(runs),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for test in tests.flatten().filter(|e| e.path().is_dir()) {
            let test_name = test.file_name().to_string_lossy().into_owned();
            for run in std::fs::read_dir(test.path())
                .map_err(io(&test.path()))?
                .flatten()
            {
                let id = run.file_name().to_string_lossy().into_owned();
                if is_run_id(&id) && run.path().is_dir() {
                    runs.push(RunRef {
                        test_name: test_name.clone(),
                        id,
                        dir: run.path(),
                    });
                }
            }
        }
        runs.sort();
        Ok(runs)
    }

    /// The run a user names: `<test_name>/<id>`, or `<test_name>` for its latest run.
    pub fn find_run(&self, name: &str) -> Result<RunRef, StoreError> {
        let runs = self.list_runs()?;
        let (test, id) = match name.trim_end_matches('/').split_once('/') {
            Some((t, i)) => (t, Some(i)),
            None => (name.trim_end_matches('/'), None),
        };
        runs.into_iter()
            .rfind(|r| r.test_name == test && id.is_none_or(|i| r.id == i))
            .ok_or_else(|| StoreError::NoRun(format!("{name} in {}", self.root.display())))
    }
}

/// A run being written.
#[derive(Debug)]
pub struct RunWriter {
    tmp_dir: PathBuf,
    final_dir: PathBuf,
    id: String,
}

impl RunWriter {
    /// The run's id (`YYYYMMDDHHMMSS`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the run will be once committed.
    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }

    /// Writes one file of the run.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.tmp_dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    }

    /// Puts the run in place; fails if a run with the same name appeared meanwhile.
    pub fn commit(self) -> Result<PathBuf, StoreError> {
        if self.final_dir.exists() {
            return Err(StoreError::Exists(self.final_dir.display().to_string()));
        }
        std::fs::rename(&self.tmp_dir, &self.final_dir).map_err(io(&self.final_dir))?;
        Ok(self.final_dir.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meshload-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn run_ids_are_utc_timestamps() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_794_600);
        assert_eq!(run_id(t), "20261127155000");
    }

    #[test]
    fn run_ids_are_a_second_and_a_count_within_it() {
        assert!(is_run_id("20261127155000") && is_run_id("20261127155000-02"));
        for bad in [
            "2026112715500",
            "20261127155000-2",
            "20261127155000-002",
            "x0261127155000",
            "20261127155000-ab",
            "",
        ] {
            assert!(!is_run_id(bad), "{bad}");
        }
    }

    #[test]
    fn runs_appear_whole_and_are_never_overwritten() {
        let root = temp("write");
        let store = FsStore::open(&format!("file://{}", root.display())).expect("a path");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_794_600);
        let run = store.begin_run("exp1", t).expect("begins");
        run.write("fortio.json", b"{}").expect("writes");
        assert!(!run.final_dir().exists(), "invisible until committed");
        let dir = run.commit().expect("commits");
        assert_eq!(
            std::fs::read(dir.join("fortio.json")).expect("there"),
            b"{}"
        );
        let again = store
            .begin_run("exp1", t)
            .expect("a second run in that second");
        assert_eq!(
            again.id(),
            "20261127155000-02",
            "never the first one's folder"
        );
        again.commit().expect("commits");
        assert!(FsStore::open("s3://bucket/prefix").is_err());
        let later = store
            .begin_run("exp1", t + Duration::from_secs(60))
            .expect("begins");
        later.commit().expect("commits");
        let runs = store.list_runs().expect("lists");
        assert_eq!(
            runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["20261127155000", "20261127155000-02", "20261127155100"]
        );
        assert_eq!(store.find_run("exp1").expect("latest").id, "20261127155100");
        assert_eq!(
            store.find_run("exp1/20261127155000").expect("named").id,
            "20261127155000"
        );
        assert!(store.find_run("exp2").is_err());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
