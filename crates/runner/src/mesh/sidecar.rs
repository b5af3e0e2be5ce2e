//! Starting one Envoy sidecar: its bootstrap is written beside the run's certificates,
//! it is started under `setpriv --pdeathsig KILL` (so that the kernel kills it should
//! meshload die, SIGKILL included: Envoy cannot watch meshload itself), and it is ready
//! once its admin answers `/ready`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::EnvoyMesh;
use super::envoy::{Sidecar, bootstrap};

/// A free loopback port for a process started later (a sidecar, Prometheus): bound, read
/// and released.
///
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`), which is where
/// `bind(:0)` and every outgoing connection draw their ports: a port from there, released
/// until Envoy binds it a few hundred milliseconds later, was taken meanwhile by some
/// connection often enough to fail a run ("Address already in use", seen in CI with the
/// tests running side by side). Below the range only a process that chooses its port
/// itself can collide. Candidates step through the range from an offset of this
/// process's id, each checked by binding it; `:0` is the fallback.
pub fn free_port() -> std::io::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = u32::from(ephemeral_low());
    // The ports from 10000 (above most services' well-known ones) up to the range.
    let low = 10_000u32;
    if ephemeral_low > low + 1000 {
        let span = ephemeral_low - low;
        let offset = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..64 {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = low + (offset + step.wrapping_mul(61)) % span;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return listener.local_addr();
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The first port of the kernel's ephemeral range (32768, Linux's default, if unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Writes the sidecar's bootstrap to `dir/<pod>.json` and starts Envoy on it.
pub fn start(mesh: &EnvoyMesh, sidecar: &Sidecar, dir: &Path) -> std::io::Result<Child> {
    let config = dir.join(format!("{}.json", sidecar.pod));
    std::fs::write(&config, bootstrap(sidecar).to_string())?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"])
        .arg(&mesh.envoy)
        .arg("-c")
        .arg(&config)
        // Two Envoys on one host collide on the hot-restart socket without it.
        .arg("--disable-hot-restart")
        .args(["--concurrency", &mesh.concurrency.to_string()])
        .args(["--log-level", "error"])
        .args([
            "--service-node",
            &sidecar.pod,
            "--service-cluster",
            &sidecar.virtual_node,
        ])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<SocketAddr> = (0..20).map(|_| free_port().expect("a port")).collect();
        let mut distinct: Vec<u16> = ports.iter().map(SocketAddr::port).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for addr in &ports {
            // (A host whose ephemeral range starts near 10000 leaves no room below it.)
            if low > 11_000 {
                assert!(addr.port() < low, "{addr} is in the ephemeral range");
            }
        }
    }
}
