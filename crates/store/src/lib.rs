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
//! - [`layout`]: the names of a run folder's files.
//! - [`run_id`]: the timestamp folder name.
//! - [`FsStore`], [`RunWriter`]: writing runs to a folder.
//! - [`s3`]: S3 stores, with a local spool for runs not yet uploaded.
//! - [`ResultStore`]: either, as a store address names it.

pub mod layout;
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

    /// Checks that runs of these tests can be written: each test's folder (or, for S3, its
    /// folder in the local spool every run passes through) is created and a probe file
    /// written and removed. A run checks this before it starts anything, so no measurement
    /// is lost to an unwritable store, or to a file where a test's folder should be.
    pub fn check_writable(&self, test_names: &[&str]) -> Result<(), StoreError> {
        let root = self.local().root;
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        for dir in std::iter::once(root.clone()).chain(test_names.iter().map(|t| root.join(t))) {
            let made = !dir.exists();
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let probe = dir.join(format!(".meshload-probe-{}", std::process::id()));
            std::fs::write(&probe, b"").map_err(io(&probe))?;
            std::fs::remove_file(&probe).map_err(io(&probe))?;
            if made && dir != root {
                // A test's folder appears with its first run, as before the check.
                let _ = std::fs::remove_dir(&dir);
            }
        }
        Ok(())
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
        // An id is claimed by creating its hidden folder, which fails if another process
        // (another `meshload run` into the same store, in the same second) claimed it
        // first: two writers never share an id, and neither finds it taken at the end.
        for id in std::iter::once(second.clone())
            .chain((2..=RUNS_PER_SECOND).map(|n| format!("{second}-{n:02}")))
        {
            let final_dir = test_dir.join(&id);
            if final_dir.exists() || issued.contains(&final_dir) {
                continue;
            }
            let tmp_dir = test_dir.join(format!(".{id}.tmp"));
            let made = std::fs::create_dir(&tmp_dir).or_else(|e| {
                // The test's folder went away meanwhile (another run's check removes the
                // folders it made): make it again, once.
                if e.kind() == std::io::ErrorKind::NotFound {
                    std::fs::create_dir_all(&test_dir)?;
                    std::fs::create_dir(&tmp_dir)
                } else {
                    Err(e)
                }
            });
            match made {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&tmp_dir)(e)),
            }
            if final_dir.exists() {
                // Committed by another writer between the check above and the claim.
                let _ = std::fs::remove_dir(&tmp_dir);
                continue;
            }
            issued.insert(final_dir.clone());
            return Ok(RunWriter {
                tmp_dir,
                final_dir,
                id,
                done: false,
            });
        }
        Err(StoreError::Exists(
            test_dir.join(&second).display().to_string(),
        ))
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

/// A run being written, in a hidden folder that becomes the run when committed. Dropped
/// uncommitted (a write failed: the disk is full, say), its partial files are removed.
#[derive(Debug)]
pub struct RunWriter {
    tmp_dir: PathBuf,
    final_dir: PathBuf,
    id: String,
    /// Committed, or kept on purpose: not to be removed when dropped.
    done: bool,
}

impl Drop for RunWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
    }
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

    /// Writes one file of the run, on disk (synced) before the run is committed.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        write_synced(&self.tmp_dir.join(name), bytes)
    }

    /// Puts the run in place, durably: one rename that never replaces what is there (a
    /// folder someone made meanwhile included), then the test's folder synced. Should the
    /// name be taken, the run stays whole in its hidden folder, which the error names.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        match rename_new(&self.tmp_dir, &self.final_dir) {
            Ok(()) => {
                self.done = true;
                if let Some(parent) = self.final_dir.parent() {
                    sync_dir(parent)?;
                }
                Ok(self.final_dir.clone())
            }
            Err(e) => {
                // Kept, whatever the reason: what was measured is never removed.
                self.done = true;
                let kept = format!("the run is kept whole in {}", self.tmp_dir.display());
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Err(StoreError::Exists(format!(
                        "{} ({kept})",
                        self.final_dir.display()
                    )))
                } else {
                    Err(StoreError::Io {
                        path: format!("{} ({kept})", self.final_dir.display()),
                        source: e,
                    })
                }
            }
        }
    }
}

/// Renames `from` to `to` unless `to` exists (`renameat2` with `RENAME_NOREPLACE`, through
/// rustix, which has it on glibc and musl alike): no check-then-rename race, and no rename
/// onto an empty folder. A filesystem without it (NFS, some FUSE mounts: EINVAL) gets a
/// check, then a plain rename.
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            if to.exists() {
                return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes a file and syncs it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    std::fs::File::create(path)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(io(path))
}

/// Syncs a folder, so that a rename into it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Writes `bytes` as `path` all at once: to a hidden file beside it, synced, then renamed
/// over it, so that a reader never sees half a file and a crash never leaves one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    write_synced(&tmp, bytes)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
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

    #[test]
    fn an_id_claimed_by_another_writer_is_skipped_and_nothing_is_replaced() {
        let root = temp("claims");
        let store = FsStore::open(&root.display().to_string()).expect("a path");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_794_700);
        // Another process writing the second's first run holds its claim.
        std::fs::create_dir_all(root.join("exp").join(".20261127155140.tmp")).expect("mkdir");
        let run = store.begin_run("exp", t).expect("begins");
        assert_eq!(run.id(), "20261127155140-02");
        // A folder made meanwhile (empty, so a plain rename would replace it) stays, and
        // the run stays whole in its hidden folder, which the error names.
        run.write("fortio.json", b"{}").expect("writes");
        std::fs::create_dir(run.final_dir()).expect("mkdir");
        let error = run.commit().expect_err("never replaces").to_string();
        let kept = root.join("exp").join(".20261127155140-02.tmp");
        assert!(error.contains(&kept.display().to_string()), "{error}");
        assert_eq!(
            std::fs::read(kept.join("fortio.json")).expect("kept"),
            b"{}"
        );
        // A run dropped uncommitted (a write failed) leaves nothing behind.
        let failed = store.begin_run("exp", t).expect("begins");
        let hidden = root.join("exp").join(format!(".{}.tmp", failed.id()));
        assert!(hidden.exists());
        drop(failed);
        assert!(!hidden.exists());
        // A file where a test's folder belongs is found before anything runs.
        std::fs::write(root.join("clash"), b"").expect("write");
        let address = root.display().to_string();
        let store = ResultStore::open(&address).expect("opens");
        assert!(store.check_writable(&["exp"]).is_ok());
        assert!(store.check_writable(&["exp", "clash"]).is_err());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_file_written_atomically_leaves_no_temporary_file() {
        let root = temp("atomic");
        std::fs::create_dir_all(&root).expect("mkdir");
        let path = root.join("search-1.json");
        write_atomically(&path, b"one").expect("writes");
        write_atomically(&path, b"two").expect("replaces");
        assert_eq!(std::fs::read(&path).expect("there"), b"two");
        let names: Vec<_> = std::fs::read_dir(&root)
            .expect("lists")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["search-1.json"]);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
