//! The meshes meshload runs a topology in: one type for the config's `"mesh"`, the CLI's
//! `--mesh`, the Kubernetes backend (which narrows it to what a cluster runs) and every
//! stored run's summary.

use std::fmt;
use std::str::FromStr;

/// A service mesh, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mesh {
    /// No mesh.
    None,
    /// Envoy sidecars on the local backend.
    Envoy,
    /// Ambient's architecture on the local backend: one shared node proxy per simulated
    /// host (Envoy in ztunnel's place), calls tunnelled between hosts in HBONE.
    Ambient,
    /// The same, plus an L7 waypoint (Envoy) per service that every call to the service
    /// crosses, over HBONE on both legs.
    AmbientWaypoint,
    /// Istio with sidecars (Kubernetes).
    Istio,
    /// Istio's ambient mode (Kubernetes): a ztunnel per node, waypoints with `--waypoint`.
    IstioAmbient,
    /// Linkerd (Kubernetes).
    Linkerd,
    /// AWS App Mesh (Kubernetes).
    AppMesh,
}

impl Mesh {
    /// Every mesh, in the order help lists them.
    pub const ALL: [Mesh; 8] = [
        Mesh::None,
        Mesh::Envoy,
        Mesh::Ambient,
        Mesh::AmbientWaypoint,
        Mesh::Istio,
        Mesh::IstioAmbient,
        Mesh::Linkerd,
        Mesh::AppMesh,
    ];

    /// Its name in configs, flags and results.
    pub fn name(self) -> &'static str {
        match self {
            Mesh::None => "none",
            Mesh::Envoy => "envoy",
            Mesh::Ambient => "ambient",
            Mesh::AmbientWaypoint => "ambient-waypoint",
            Mesh::Istio => "istio",
            Mesh::IstioAmbient => "istio-ambient",
            Mesh::Linkerd => "linkerd",
            Mesh::AppMesh => "appmesh",
        }
    }

    /// Every name, for help and errors.
    pub fn names() -> Vec<&'static str> {
        Mesh::ALL.iter().map(|m| m.name()).collect()
    }

    /// Whether the local backend runs it (no mesh, its own Envoy sidecars, or ambient
    /// with Envoy as the node proxy, with or without waypoints).
    pub fn runs_locally(self) -> bool {
        matches!(
            self,
            Mesh::None | Mesh::Envoy | Mesh::Ambient | Mesh::AmbientWaypoint
        )
    }

    /// What it is, in words for output and results: the local ambient is not ztunnel.
    pub fn description(self) -> &'static str {
        match self {
            Mesh::Ambient => "ambient (Envoy as the node proxy)",
            Mesh::AmbientWaypoint => {
                "ambient with waypoints (Envoy as the node proxy and waypoint)"
            }
            Mesh::Envoy => "Envoy sidecars",
            Mesh::IstioAmbient => "Istio ambient",
            other => other.name(),
        }
    }
}

impl FromStr for Mesh {
    type Err = String;

    fn from_str(s: &str) -> Result<Mesh, String> {
        Mesh::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("{s:?} is not a mesh: use {}", Mesh::names().join(", ")))
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Mesh {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_its_mesh() {
        for m in Mesh::ALL {
            assert_eq!(m.name().parse::<Mesh>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
        }
        let err = "kuma".parse::<Mesh>().expect_err("not a mesh");
        assert!(
            err.contains(
                "none, envoy, ambient, ambient-waypoint, istio, istio-ambient, linkerd, appmesh"
            ),
            "{err}"
        );
    }
}
