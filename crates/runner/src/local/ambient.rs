//! Ambient on the local backend: replicas spread over simulated hosts (`host-1`,
//! `host-2`, ... in turn, in start order, or the host a node's `"host"` names), no
//! sidecars, and per host one node proxy
//! (Envoy in ztunnel's place, [`crate::mesh::ambient`]) that every call from or to the
//! host's pods passes: a replica resolves each backend to its own host's outbound
//! listeners, one per backend replica, and the proxy tunnels each connection in HBONE to
//! the destination host's proxy. The load generator sits in the mesh as it does with
//! sidecars: on a host of its own (`loadgen`), whose proxy counts as the load generator's
//! (container `istio-proxy` of its pod), not as the mesh's shared cost, as its sidecar
//! does not count as a node's.
//!
//! The proxies start once every replica is up (their tunnels need the replicas'
//! addresses); the replicas call nothing before the health checks, which go to them
//! directly, as a kubelet's do.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use meshload_config::proxies::ISTIO_PROXY;

use super::{LocalBackend, observe, observe_container, wait_healthy, wait_sidecars};
use crate::RunError;
use crate::backend::{Deployment, Facts, Replica};
use crate::mesh::EnvoyMesh;
use crate::mesh::ambient::{self, NAMESPACE, NodeProxy, Outbound};
use crate::mesh::sidecar;
use crate::plan::Plan;

/// The `job` label of the node proxies' `/stats/prometheus`.
pub const ZTUNNEL_JOB: &str = "ztunnel";

/// The load generator's own host.
const LOADGEN_HOST: &str = "loadgen";

/// `host-<n>` (1-based).
fn host_name(n: u32) -> String {
    format!("host-{n}")
}

/// What is known of the hosts while the replicas start.
struct Hosts {
    /// Every host: `host-1` .. `host-<n>`, then those nodes name.
    names: Vec<String>,
    /// The hosts replicas are spread over in turn.
    count: u32,
    /// Each started replica: its host and address, by pod.
    placed: BTreeMap<String, (String, SocketAddr)>,
    /// Each host's outbound listeners, by destination pod.
    outbound: BTreeMap<String, BTreeMap<String, SocketAddr>>,
    /// Replicas placed so far (the next one goes to the next host).
    next: u32,
}

impl Hosts {
    /// The host of the next replica of a node that names `host`, or of none.
    fn place(&mut self, named: Option<&str>) -> String {
        if let Some(host) = named {
            if !self.names.iter().any(|n| n == host) {
                self.names.push(host.to_string());
            }
            return host.to_string();
        }
        let host = host_name(self.next % self.count + 1);
        self.next += 1;
        host
    }

    /// The listener on `host`'s proxy for `pod` (made when first asked for).
    fn outbound(&mut self, host: &str, pod: &str) -> std::io::Result<SocketAddr> {
        let listeners = self.outbound.entry(host.to_string()).or_default();
        if let Some(addr) = listeners.get(pod) {
            return Ok(*addr);
        }
        let addr = crate::ports::free_port()?;
        listeners.insert(pod.to_string(), addr);
        Ok(addr)
    }

    /// Where `host`'s pods reach each backend: its proxy's listeners, one per replica.
    fn routes(
        &mut self,
        host: &str,
        backends: &[String],
        deployment: &Deployment,
    ) -> std::io::Result<BTreeMap<String, Vec<SocketAddr>>> {
        let mut routes = BTreeMap::new();
        for b in backends {
            let pods: Vec<String> = deployment
                .replicas
                .iter()
                .filter(|r| &r.node == b)
                .map(|r| r.pod.clone())
                .collect();
            let mut addrs = Vec::new();
            for pod in pods {
                addrs.push(self.outbound(host, &pod)?);
            }
            routes.insert(b.clone(), addrs);
        }
        Ok(routes)
    }
}

/// The facts of an ambient run.
pub(super) fn facts(mesh: &EnvoyMesh, hosts: u32, facts: &mut Facts) {
    let ambient = meshload_config::Mesh::Ambient;
    facts.insert("mesh".into(), ambient.name().into());
    facts.insert("mesh_description".into(), ambient.description().into());
    facts.insert("hosts".into(), hosts.into());
    facts.insert("envoy_version".into(), mesh.version.clone().into());
    facts.insert("envoy_path".into(), mesh.envoy.display().to_string().into());
    facts.insert("node_proxy_concurrency".into(), mesh.concurrency.into());
    facts.insert("tls".into(), mesh.tls.as_str().into());
}

impl LocalBackend {
    /// Brings the topology up in ambient's layout on `hosts` hosts.
    pub(super) async fn up_ambient(
        &mut self,
        envoy: EnvoyMesh,
        hosts: u32,
        plan: &Plan,
    ) -> Result<Deployment, RunError> {
        let run = self.prepare_mesh(envoy, plan)?;
        let fail = |pod: &str, reason: String| RunError::Start {
            pod: pod.to_string(),
            reason,
        };
        let mut deployment = Deployment::default();
        let count = hosts.max(1);
        let mut at = Hosts {
            names: (1..=count).map(host_name).collect(),
            count,
            placed: BTreeMap::new(),
            outbound: BTreeMap::new(),
            next: 0,
        };
        for node in &plan.nodes {
            let mut placed = Vec::new();
            for i in 0..node.spec.replicas {
                let host = at.place(node.spec.host.as_deref());
                let routes = at
                    .routes(&host, &node.spec.backends, &deployment)
                    .map_err(|e| fail(&node.pod(i), e.to_string()))?;
                placed.push((i, host, routes));
            }
            let starts = placed.iter().map(|(i, _, routes)| {
                self.start_replica(node, *i, plan, &deployment, None, Some(routes))
            });
            let started = futures_util::future::join_all(starts).await;
            let mut failure = None;
            for (s, (_, host, _)) in started.into_iter().zip(&placed) {
                match s {
                    Ok(started) => {
                        let r = started.replica;
                        observe(&mut deployment, &r, started.app.id(), &plan.namespace);
                        at.placed.insert(r.pod.clone(), (host.clone(), r.addr));
                        self.children.push((r.pod.clone(), started.app));
                        deployment.replicas.push(r);
                    }
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        // The load generator, on its own host, reaches every node through its proxy.
        let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
        let loadgen_routes = at
            .routes(LOADGEN_HOST, &names, &deployment)
            .map_err(|e| fail(&plan.loadgen_pod(), e.to_string()))?;
        deployment.entries.extend(loadgen_routes);
        let proxies = self.start_node_proxies(&run, &at, plan, &mut deployment)?;
        wait_healthy(&deployment).await?;
        wait_sidecars(&proxies).await?;
        Ok(deployment)
    }

    /// One node proxy per host (and the load generator's), with every outbound listener
    /// its pods were given. Returns each one's name and admin listener.
    fn start_node_proxies(
        &mut self,
        run: &super::MeshRun,
        at: &Hosts,
        plan: &Plan,
        deployment: &mut Deployment,
    ) -> Result<Vec<(String, SocketAddr)>, RunError> {
        let ca = run.ca.as_ref().ok_or_else(|| RunError::Start {
            pod: "mesh".into(),
            reason: "ambient needs the run's CA".into(),
        })?;
        let mut hbone = BTreeMap::new();
        for host in at.names.iter().cloned().chain([LOADGEN_HOST.to_string()]) {
            let addr = crate::ports::free_port().map_err(|e| RunError::Start {
                pod: ambient::pod(&host),
                reason: e.to_string(),
            })?;
            hbone.insert(host, addr);
        }
        let mut ready = Vec::new();
        for (index, (host, hbone_addr)) in hbone.iter().enumerate() {
            let pod = ambient::pod(host);
            let fail = |reason: String| RunError::Start {
                pod: pod.clone(),
                reason,
            };
            let local: Vec<(&String, SocketAddr)> = at
                .placed
                .iter()
                .filter(|(_, (h, _))| h == host)
                .map(|(pod, (_, addr))| (pod, *addr))
                .collect();
            // Istio's identities: a workload's service account in its namespace.
            let workloads: Vec<String> = local
                .iter()
                .filter_map(|(pod, _)| deployment.replicas.iter().find(|r| &r.pod == *pod))
                .map(|r| {
                    let account = meshload_config::service::workload_name(&r.node);
                    format!("spiffe://cluster.local/ns/{}/sa/{account}", plan.namespace)
                })
                .collect();
            let files = ca
                .issue_for(&pod, &pod, &workloads)
                .map_err(|e| fail(crate::error_chain(&e)))?;
            let mut outbound = Vec::new();
            for (dest, listen) in at.outbound.get(host).into_iter().flatten() {
                let (dest_host, replica) = &at.placed[dest];
                outbound.push(Outbound {
                    listen: *listen,
                    replica: *replica,
                    host: dest_host.clone(),
                    hbone: hbone[dest_host],
                });
            }
            let admin = crate::ports::free_port().map_err(|e| fail(e.to_string()))?;
            let proxy = NodeProxy {
                host: host.clone(),
                admin,
                hbone: *hbone_addr,
                local: local.iter().map(|(_, addr)| *addr).collect(),
                outbound,
                files,
            };
            let child = sidecar::start_envoy(
                &run.mesh,
                &pod,
                ZTUNNEL_JOB,
                &ambient::bootstrap(&proxy),
                &run.dir,
            )
            .map_err(|e| fail(format!("envoy did not start: {e}")))?;
            // The load generator's proxy is its pod's, in the run's namespace.
            let (node, observed_pod, namespace) = match host == LOADGEN_HOST {
                true => (
                    crate::plan::LOADGEN,
                    plan.loadgen_pod(),
                    plan.namespace.as_str(),
                ),
                false => (ZTUNNEL_JOB, pod.clone(), NAMESPACE),
            };
            let replica = Replica {
                node: node.to_string(),
                index: index as u32,
                pod: observed_pod.clone(),
                addr: admin,
            };
            observe_container(
                deployment,
                &replica,
                (admin, "/stats/prometheus", ZTUNNEL_JOB),
                (child.id(), ISTIO_PROXY),
                namespace,
            );
            let name = format!("{observed_pod}/{ISTIO_PROXY}");
            self.children.push((name.clone(), child));
            ready.push((name, admin));
        }
        Ok(ready)
    }
}
