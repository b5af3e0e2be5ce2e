//! Loopback ports for the processes a run starts (sidecars, a spawned Prometheus).

use std::net::SocketAddr;

/// A free loopback port for a process started later (a sidecar, Prometheus): bound, read
/// and released.
///
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`), which is where
/// `bind(:0)` and every outgoing connection draw their ports: a port from there, released
/// until the started process binds it, was taken meanwhile by some connection often enough
/// to fail a run ("Address already in use", seen in CI with the tests running side by
/// side). Below the range only a process that chooses its port itself can collide.
/// Candidates step through the ports below the range from an offset of this process's id,
/// each checked by binding it; `:0` is the fallback.
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
