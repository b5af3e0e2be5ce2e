//! How the topology names its services, in the Kubernetes form the seed uses
//! (`http://service-<node>.<namespace>.svc.cluster.local:9080/`), and how a node's
//! behaviour is passed to `meshload node`. Every backend (local processes, a cluster)
//! and the config's own URL checks build these names here, so they cannot drift apart.

use crate::behaviour::Behaviour;
use crate::reader::format_go_duration;

/// The port every node's service listens on (the seed's).
pub const SERVICE_PORT: u16 = 9080;

/// What a node's Service name starts with.
const SERVICE_PREFIX: &str = "service-";
/// What a node's workload name starts with.
const WORKLOAD_PREFIX: &str = "node-";

/// `service-<node>`: the name of a node's Service (and App Mesh VirtualService).
pub fn service_name(node: &str) -> String {
    format!("{SERVICE_PREFIX}{node}")
}

/// The node a Service or workload name (`service-<node>`, `node-<node>`) is of.
pub fn node_of_name(name: &str) -> Option<&str> {
    name.strip_prefix(SERVICE_PREFIX)
        .or_else(|| name.strip_prefix(WORKLOAD_PREFIX))
}

/// `service-<node>.<namespace>.svc.cluster.local`: the DNS name of a node's Service.
pub fn service_host(node: &str, namespace: &str) -> String {
    format!("{}.{}", service_name(node), namespace_domain(namespace))
}

/// `service-<node>.<namespace>.svc.cluster.local:9080`: how nodes and tests address a
/// node's service.
pub fn service_authority(node: &str, namespace: &str) -> String {
    format!("{}:{SERVICE_PORT}", service_host(node, namespace))
}

/// `http://service-<node>.<namespace>.svc.cluster.local:9080/`.
pub fn service_url(node: &str, namespace: &str) -> String {
    format!("http://{}/", service_authority(node, namespace))
}

/// `node-<node>`: a node's workload, as both backends name it (the Deployment and App
/// Mesh VirtualNode on a cluster, the pods and sidecars' virtual node locally). App Mesh's
/// Envoy names its clusters after it, so local and cluster runs share cluster names.
pub fn workload_name(node: &str) -> String {
    format!("{WORKLOAD_PREFIX}{node}")
}

/// `meshload-<run>`: the App Mesh mesh of a run (on a cluster), or the local sidecars'.
pub fn mesh_name(run: &str) -> String {
    format!("meshload-{run}")
}

/// `<namespace>.svc.cluster.local`: the domain the services of a namespace share.
pub fn namespace_domain(namespace: &str) -> String {
    format!("{namespace}.svc.cluster.local")
}

/// The `meshload node` flags (`--name=value`, one argument each) that give a node the
/// behaviour the config asks for. The local backend and the Kubernetes manifests both
/// start nodes with these.
pub fn behaviour_flags(b: &Behaviour) -> Vec<String> {
    let mut flags = Vec::new();
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            flags.push(format!("--{name}={v}"));
        }
    };
    flag("latency", b.latency.map(|v| v.to_string()));
    flag("error-rate", b.error_rate.map(|v| v.to_string()));
    flag("error-code", b.error_code.map(|v| v.to_string()));
    flag("response-size", b.response_size.map(|v| v.to_string()));
    flag("timeout", b.timeout.map(format_go_duration));
    flag("call-mode", b.call_mode.map(|v| v.to_string()));
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_follow_the_seed() {
        assert_eq!(
            service_url("0", "tls-e2e"),
            "http://service-0.tls-e2e.svc.cluster.local:9080/"
        );
        assert_eq!(service_host("a", "x"), "service-a.x.svc.cluster.local");
    }

    #[test]
    fn behaviour_becomes_single_argument_flags() {
        let b = Behaviour {
            latency: Some("uniform:5ms..15ms".parse().expect("valid")),
            error_rate: Some("0.01".parse().expect("valid")),
            timeout: Some(Duration::from_millis(1500)),
            ..Behaviour::default()
        };
        assert_eq!(
            behaviour_flags(&b),
            [
                "--latency=uniform:5ms..15ms",
                "--error-rate=0.01",
                "--timeout=1500ms"
            ]
        );
    }
}
