//! Where each mesh's proxies run, as cAdvisor's container series name them: the presets
//! from which a run measures its proxies' CPU and memory without a hand-written query,
//! locally (where meshload names its own processes the same way) and on a cluster.
//!
//! Names follow each mesh's own: App Mesh's Envoy sidecar is the container `envoy`;
//! Istio's sidecar, ztunnel and waypoints are containers `istio-proxy` (ztunnel in
//! `istio-system`, pods `ztunnel-*`; waypoints in pods `waypoint-*`); Linkerd's is
//! `linkerd-proxy`.

use crate::Mesh;

/// A proxy shared by many pods rather than beside each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedProxy {
    /// What it is (`ztunnel`, `waypoint`): the name its figures carry.
    pub role: &'static str,
    /// The label matchers of its containers' series (without braces).
    pub matchers: &'static str,
    /// Whether it runs in the run's namespace (a waypoint), which its matchers cannot
    /// name: on a cluster its series are collected from there only.
    pub in_run_namespace: bool,
}

/// Where a mesh's proxies are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxies {
    /// The container of the sidecar beside each app container, if the mesh has sidecars.
    pub sidecar: Option<&'static str>,
    /// The proxies that pods share (ambient's node proxies and waypoints).
    pub shared: &'static [SharedProxy],
}

/// App Mesh's Envoy sidecar container, and the local mesh's (named alike, so that local
/// and cluster runs share their queries).
pub const ENVOY_SIDECAR: &str = "envoy";
/// Istio's proxy container: the sidecar, ztunnel and the waypoints alike.
pub const ISTIO_PROXY: &str = "istio-proxy";
/// Linkerd's proxy container.
pub const LINKERD_PROXY: &str = "linkerd-proxy";
/// A node's own container, in the pods of both backends.
pub const APP_CONTAINER: &str = "app";

/// cAdvisor's working set of a container, in bytes (what the OOM killer counts).
pub const MEMORY_SERIES: &str = "container_memory_working_set_bytes";
/// cAdvisor's CPU time of a container, in seconds (a counter).
pub const CPU_SERIES: &str = "container_cpu_usage_seconds_total";

/// The selector of the memory and CPU series of the containers that `matchers` select.
pub fn resource_series(matchers: &str) -> String {
    format!(r#"{{__name__=~"{MEMORY_SERIES}|{CPU_SERIES}", {matchers}}}"#)
}

/// Istio ambient's shared proxies.
const AMBIENT: [SharedProxy; 2] = [
    SharedProxy {
        role: "ztunnel",
        matchers: r#"namespace="istio-system", pod=~"ztunnel-.*", container="istio-proxy""#,
        in_run_namespace: false,
    },
    SharedProxy {
        role: "waypoint",
        matchers: r#"pod=~"waypoint-.*", container="istio-proxy""#,
        in_run_namespace: true,
    },
];

impl Mesh {
    /// Where this mesh's proxies are.
    pub fn proxies(self) -> Proxies {
        let sidecar = |container| Proxies {
            sidecar: Some(container),
            shared: &[],
        };
        match self {
            Mesh::None => Proxies {
                sidecar: None,
                shared: &[],
            },
            Mesh::Envoy | Mesh::AppMesh => sidecar(ENVOY_SIDECAR),
            Mesh::Istio => sidecar(ISTIO_PROXY),
            Mesh::Linkerd => sidecar(LINKERD_PROXY),
            Mesh::Ambient | Mesh::AmbientWaypoint | Mesh::IstioAmbient => Proxies {
                sidecar: None,
                shared: &AMBIENT,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mesh_but_none_has_proxies_and_their_matchers_parse() {
        for mesh in Mesh::ALL {
            let p = mesh.proxies();
            assert_eq!(
                mesh == Mesh::None,
                p.sidecar.is_none() && p.shared.is_empty(),
                "{mesh}"
            );
            for shared in p.shared {
                let query = resource_series(shared.matchers);
                assert!(crate::query_limits::parse(&query).is_ok(), "{query}");
            }
        }
        assert_eq!(Mesh::IstioAmbient.proxies().sidecar, None, "no sidecars");
    }
}
