//! Meshes on the local backend: a real Envoy sidecar beside every replica and the load
//! generator, with TLS between sidecars from a CA made for the run; and ambient's
//! architecture, with Envoy as the node proxy.
//!
//! # Layout
//! - [`ambient`]: a host's node proxy (HBONE tunnels out and in), named as ztunnel, and
//!   a service's waypoint.
//! - [`envoy`]: finding Envoy, and each sidecar's bootstrap (App Mesh's names).
//! - [`certs`]: the run's CA and per-service certificates.
//! - [`sidecar`]: starting one sidecar process and waiting until it is ready.

pub mod ambient;
pub mod certs;
pub mod envoy;
pub mod sidecar;

use std::path::PathBuf;

pub use envoy::TlsMode;

/// The `job` label of the sidecars' `/stats/prometheus`, as the seed's Prometheus had it.
pub const ENVOY_JOB: &str = "appmesh-envoy";
/// The container name of a sidecar, as App Mesh's injector names it.
pub const ENVOY_CONTAINER: &str = meshload_config::proxies::ENVOY_SIDECAR;

/// How the local backend's mesh of Envoy sidecars is set up.
#[derive(Debug, Clone)]
pub struct EnvoyMesh {
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// Its version (`envoy --version`), recorded with each run.
    pub version: String,
    /// Worker threads per sidecar (`--concurrency`; Istio's sidecar default is 2).
    pub concurrency: u32,
    /// TLS between sidecars.
    pub tls: TlsMode,
    /// Sidecars, or ambient's node proxies.
    pub layout: Layout,
}

/// Where the local mesh's Envoys sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One sidecar beside every replica and the load generator.
    Sidecars,
    /// One node proxy per simulated host, shared by the host's replicas ([`ambient`]).
    Ambient {
        /// How many hosts the replicas are spread over.
        hosts: u32,
        /// Whether every service has a waypoint ([`ambient::Waypoint`]).
        waypoints: bool,
    },
}

impl Layout {
    /// The mesh it is.
    pub fn mesh(self) -> meshload_config::Mesh {
        match self {
            Layout::Sidecars => meshload_config::Mesh::Envoy,
            Layout::Ambient {
                waypoints: false, ..
            } => meshload_config::Mesh::Ambient,
            Layout::Ambient {
                waypoints: true, ..
            } => meshload_config::Mesh::AmbientWaypoint,
        }
    }
}

/// The hosts the local ambient mesh spreads replicas over, unless a config says.
pub const DEFAULT_HOSTS: u32 = 2;

impl EnvoyMesh {
    /// The same Envoy as ambient's node proxy on `hosts` hosts, and as every service's
    /// waypoint with `waypoints` (HBONE is always mutual TLS).
    pub fn ambient(mut self, hosts: u32, waypoints: bool) -> EnvoyMesh {
        self.layout = Layout::Ambient {
            hosts: hosts.max(1),
            waypoints,
        };
        self.tls = TlsMode::Mutual;
        self
    }
}

impl EnvoyMesh {
    /// Finds Envoy (`explicit`, else `MESHLOAD_ENVOY`, else PATH) and reads its version;
    /// the error says how to install it.
    pub fn find(
        explicit: Option<&std::path::Path>,
        concurrency: u32,
        tls: TlsMode,
    ) -> Result<EnvoyMesh, String> {
        let envoy = envoy::find(explicit).ok_or_else(|| envoy::INSTALL_HINT.to_string())?;
        let envoy = envoy::behind_script(&envoy).unwrap_or(envoy);
        let output = std::process::Command::new(&envoy)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {} --version: {e}; {}",
                    envoy.display(),
                    envoy::INSTALL_HINT
                )
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = envoy::parse_version(&text).ok_or_else(|| {
            format!(
                "{} --version printed no Envoy version: {:?}",
                envoy.display(),
                text.trim()
            )
        })?;
        Ok(EnvoyMesh {
            envoy,
            version,
            concurrency: concurrency.max(1),
            tls,
            layout: Layout::Sidecars,
        })
    }
}
