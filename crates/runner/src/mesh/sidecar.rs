//! Starting one Envoy sidecar: its bootstrap is written beside the run's certificates,
//! it is started under `setpriv --pdeathsig KILL` (so that the kernel kills it should
//! meshload die, SIGKILL included: Envoy cannot watch meshload itself), and it is ready
//! once its admin answers `/ready`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Child;

use super::EnvoyMesh;
use super::envoy::{Sidecar, bootstrap};

/// Writes the sidecar's bootstrap to `dir/<pod>.json` and starts Envoy on it.
pub fn start(mesh: &EnvoyMesh, sidecar: &Sidecar, dir: &Path) -> std::io::Result<Child> {
    start_envoy(
        mesh,
        &sidecar.pod,
        &sidecar.virtual_node,
        &bootstrap(sidecar),
        dir,
    )
}

/// Writes `bootstrap` to `dir/<pod>.json` and starts Envoy on it as `pod` of `cluster`:
/// a sidecar, or ambient's node proxy.
pub fn start_envoy(
    mesh: &EnvoyMesh,
    pod: &str,
    cluster: &str,
    bootstrap: &serde_json::Value,
    dir: &Path,
) -> std::io::Result<Child> {
    let config = dir.join(format!("{pod}.json"));
    std::fs::write(&config, bootstrap.to_string())?;
    let mut cmd = meshload_process::lifecycle::dies_with_parent(&mesh.envoy);
    cmd.arg("-c")
        .arg(&config)
        // Two Envoys on one host collide on the hot-restart socket without it.
        .arg("--disable-hot-restart")
        .args(["--concurrency", &mesh.concurrency.to_string()])
        .args(["--log-level", "error"])
        .args(["--service-node", pod, "--service-cluster", cluster])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

/// Waits until the sidecar's admin says it is live (`/ready` answers 200), at most
/// `timeout`.
pub async fn wait_ready(admin: SocketAddr, timeout: Duration) -> bool {
    let client = crate::http::client();
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let url = format!("http://{admin}/ready");
        if let Ok((200, _, _)) = crate::http::get(&client, url, Duration::from_secs(1)).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
