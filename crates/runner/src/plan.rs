//! What a backend brings up: every node with its replicas, pod names and service name.

use meshload_config::{Config, NodeSpec, service, topology};

/// One node to bring up.
#[derive(Debug, Clone)]
pub struct PlannedNode {
    /// The node's name.
    pub name: String,
    /// What the config says of it.
    pub spec: NodeSpec,
    /// `node-<name>-<id>`: its replica set, as Kubernetes names a Deployment's ReplicaSet.
    pub replica_set: String,
}

impl PlannedNode {
    /// The pod name of replica `i`: `node-<name>-<id>-<i>`, so that the seed's
    /// `label_replace(..., "(node-.*-.*)-.*")` finds the replica set.
    pub fn pod(&self, i: u32) -> String {
        format!("{}-{i}", self.replica_set)
    }
}

/// The load generator's name (its pod's, and its sidecar's virtual node).
pub const LOADGEN: &str = "meshload-loadgen";

/// Everything to bring up, leaves first.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What makes this run's names unique (its start time).
    pub run_tag: String,
    /// The namespace the services live in.
    pub namespace: String,
    /// The nodes, each after all of its backends.
    pub nodes: Vec<PlannedNode>,
}

impl Plan {
    /// The plan of a (validated, cycle-free) config; `run_tag` makes replica-set names
    /// unique per run, as a Deployment's hash does.
    pub fn new(config: &Config, run_tag: &str) -> Plan {
        let nodes = topology::leaves_first(&config.nodes)
            .into_iter()
            .map(|name| {
                let spec = config.nodes[&name].clone();
                let replica_set = format!(
                    "{}-{}",
                    service::workload_name(&name),
                    short_hash(&format!("{run_tag}/{name}"))
                );
                PlannedNode {
                    name,
                    spec,
                    replica_set,
                }
            })
            .collect();
        Plan {
            run_tag: run_tag.to_string(),
            namespace: config.namespace.clone(),
            nodes,
        }
    }

    /// The load generator's pod name (`meshload-loadgen-<id>-0`).
    pub fn loadgen_pod(&self) -> String {
        format!(
            "{LOADGEN}-{}-0",
            short_hash(&format!("{}/{LOADGEN}", self.run_tag))
        )
    }

    /// `service-<node>.<namespace>.svc.cluster.local:9080`: how nodes and tests name a
    /// service.
    pub fn service_authority(&self, node: &str) -> String {
        service::service_authority(node, &self.namespace)
    }
}

/// The 64-bit FNV-1a hash: stable across runs and Rust versions (unlike std's hasher),
/// for names and seeds derived from config text.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Five lowercase letters and digits from a string, like a pod-template hash.
fn short_hash(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = fnv1a(s.as_bytes());
    (0..5)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_fit_the_seed_regex() {
        let config =
            meshload_config::from_str(r#"{"backends_map": {"front-end": ["0"]}}"#, false, "t")
                .expect("valid")
                .config;
        let plan = Plan::new(&config, "run1");
        assert_eq!(
            plan.nodes.last().map(|n| n.name.as_str()),
            Some("front-end"),
            "leaves first"
        );
        let pod = plan.nodes[1].pod(0);
        let rs = &plan.nodes[1].replica_set;
        assert!(
            pod.starts_with("node-front-end-") && pod.ends_with("-0"),
            "{pod}"
        );
        // The seed's regex, greedy: (node-.*-.*)-.* captures everything before the last '-'.
        assert_eq!(&pod[..pod.rfind('-').expect("a dash")], rs);
        assert_eq!(
            plan.service_authority("0"),
            "service-0.tls-e2e.svc.cluster.local:9080"
        );
        assert_ne!(
            Plan::new(&config, "run2").nodes[0].replica_set,
            plan.nodes[0].replica_set
        );
    }
}
