//! meshload on Kubernetes: the same config deployed with or without a service mesh.
//!
//! # Layout
//! - [`render`]: the manifests of a config for no mesh, Istio, Linkerd or App Mesh.
//! - [`cluster`]: apply, rollout wait and cleanup through kube-rs.
//! - [`forward`]: port-forwards exposed as local loopback ports.
//! - [`checks`]: what a run asks of the backend, checked before anything starts.
//! - [`backend`]: `meshload run --backend k8s` (the runner's `Backend` on a cluster).

pub mod backend;
pub mod checks;
pub mod cluster;
pub mod forward;
pub mod render;

pub use backend::{K8sBackend, K8sSettings};

pub use render::{LoadGen, Mesh, RenderOptions, Resources, render, to_yaml};
