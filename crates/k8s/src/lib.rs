//! meshload on Kubernetes: the same config deployed with or without a service mesh.
//!
//! # Layout
//! - [`render`]: the manifests of a config for no mesh, Istio, Linkerd or App Mesh.
//! - [`cluster`]: apply, rollout wait and cleanup through kube-rs.

pub mod cluster;
pub mod render;

pub use render::{LoadGen, Mesh, RenderOptions, Resources, render, to_yaml};
