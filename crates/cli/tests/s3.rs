//! S3 stores against a real S3-compatible server (moto_server on loopback, installed by
//! scripts/test): write, list, read back byte for byte, and a server that goes away
//! mid-run (the run stays in the spool, then `results push` uploads it).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_port, run, temp_dir, write_config};
use serde_json::Value;

/// A moto_server child process, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(port: u16) -> Moto {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is installed by scripts/test (pip install \"moto[server]\")");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The AWS environment pointing at moto, and a spool folder of the test's own.
fn env(port: u16, spool: &Path) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        (
            "AWS_ENDPOINT_URL".into(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("MESHLOAD_SPOOL".into(), spool.display().to_string()),
    ]
}

fn run_env(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run(args, &pairs)
}

const TINY: &str = r#"{"backends_map": {"0": []}, "ConnectivityCheckPerURL": 1,
    "load_tests": [{"test_name": "tiny", "target": "0", "qps": 50, "t": "1s", "c": 1}]}"#;

fn spooled_runs(spool: &Path) -> usize {
    let test = spool.join("bucket-a/prefix/tiny");
    std::fs::read_dir(test).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

#[test]
fn runs_are_written_listed_and_read_back_byte_for_byte() {
    let dir = temp_dir("s3-write");
    let moto = Moto::start(free_port());
    let env = env(moto.port, &dir.join("spool"));
    let config = write_config(&dir, TINY);
    let store = "s3://bucket-a/prefix";
    let out = run_env(
        &["run", "--store", store, "--json", config.to_str().unwrap()],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let location = summary[0]["run_dir"].as_str().unwrap();
    assert!(
        location.starts_with("s3://bucket-a/prefix/tiny/"),
        "{location}"
    );
    assert_eq!(
        spooled_runs(&dir.join("spool")),
        0,
        "uploaded runs leave the spool"
    );

    let out = run_env(&["results", "list", "--store", store, "--json"], &env);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["test_name"], "tiny");
    // Reading an S3 store copies its runs into a private folder, removed afterwards; an
    // empty store is named by its address.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut with_tmp = env.clone();
    with_tmp.push(("TMPDIR".into(), tmp.display().to_string()));
    let out = run_env(&["results", "list", "--store", store], &with_tmp);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("tiny"));
    let out = run_env(
        &["results", "list", "--store", "s3://bucket-a/empty"],
        &with_tmp,
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("no runs in s3://bucket-a/empty"),
        "{listed}"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "nothing left in TMPDIR"
    );

    // A local run pushed through the spool and pulled back is the same, byte for byte.
    let local = dir.join("local");
    let out = run(
        &[
            "run",
            "--store",
            local.to_str().unwrap(),
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let original = std::fs::read_dir(local.join("tiny"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let id = original.file_name().unwrap().to_owned();
    let spooled = dir.join("spool/bucket-a/prefix/tiny").join(&id);
    std::fs::create_dir_all(&spooled).unwrap();
    for f in std::fs::read_dir(&original).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), spooled.join(f.file_name())).unwrap();
    }
    let out = run_env(&["results", "push", "--store", store], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled = dir.join("pulled");
    let out = run_env(
        &[
            "results",
            "pull",
            "--store",
            store,
            "--to",
            pulled.to_str().unwrap(),
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pulled 2 runs"));
    let back = pulled.join("tiny").join(&id);
    let mut files = 0;
    for f in std::fs::read_dir(&original).unwrap() {
        let f = f.unwrap();
        assert_eq!(
            std::fs::read(f.path()).unwrap(),
            std::fs::read(back.join(f.file_name())).unwrap(),
            "{:?}",
            f.file_name()
        );
        files += 1;
    }
    assert_eq!(files, 5, "config, fortio, metadata, per_second, samples");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_store_that_goes_away_mid_run_keeps_the_run_in_the_spool_until_push() {
    let dir = temp_dir("s3-away");
    let port = free_port();
    let mut moto = Moto::start(port);
    let spool = dir.join("spool");
    let env = env(port, &spool);
    let config = write_config(&dir, &TINY.replace("\"1s\"", "\"3s\""));
    let store = "s3://bucket-a/prefix";
    let mut cmd = bin();
    cmd.args(["run", "--store", store, config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // The store goes away while the test runs.
    let mut lines = common::StderrLines::of(&mut child);
    lines.wait_for("test 1/1");
    moto.stop();
    let status = child.wait().unwrap();
    let stderr = lines.rest().join("\n");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("kept in the spool"), "{stderr}");
    assert_eq!(spooled_runs(&spool), 1, "the run waits in the spool");

    let _moto = Moto::start(port);
    let out = run_env(&["results", "push", "--store", store], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 runs pushed"));
    assert_eq!(spooled_runs(&spool), 0);
    let out = run_env(&["results", "list", "--store", store, "--json"], &env);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "the bucket, recreated, holds the run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn results_serve_reads_an_s3_store_through_its_cache_and_sees_new_runs() {
    let dir = temp_dir("s3-serve");
    let moto = Moto::start(free_port());
    let mut env = env(moto.port, &dir.join("spool"));
    env.push((
        "MESHLOAD_CACHE".into(),
        dir.join("cache").display().to_string(),
    ));
    let config = write_config(&dir, TINY);
    let store = "s3://bucket-a/prefix";
    let out = run_env(&["run", "--store", store, config.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let listen = format!("127.0.0.1:{}", free_port());
    let server = common::NodeProc::spawn(
        &["results", "serve", "--store", store, "--listen", &listen],
        &pairs,
    );
    let runs_served = || {
        let url = format!(
            "http://{}/api/v1/label/run/values?match[]=meshload_load_responses_per_second",
            server.addr
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reply = rt.block_on(common::get(&url));
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        body["data"].as_array().unwrap().len()
    };
    assert_eq!(runs_served(), 1);
    // A second run uploaded while serving is copied and served within the sync interval.
    // Its id (its start's second) must be new: an id the bucket holds is refused.
    let second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let first_ended = second();
    common::wait_for("the clock's next second", || second() > first_ended);
    let out = run_env(&["run", "--store", store, config.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs_served() < 2 {
        assert!(Instant::now() < deadline, "the new run never appeared");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(dir.join("cache/bucket-a/prefix/tiny").is_dir());
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
