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
//! With waypoints, a host's pods reach each backend service through one outbound
//! listener that tunnels to the service's waypoint (pod `waypoint-<service>-0`, in the
//! run's namespace), which balances each request over the replicas and tunnels on to
//! their hosts' proxies.
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
use crate::mesh::ambient::{self, NAMESPACE, NodeProxy, Outbound, Tunnel, Waypoint};
use crate::mesh::sidecar;
use crate::plan::Plan;

/// The `job` label of the node proxies' `/stats/prometheus`.
pub const ZTUNNEL_JOB: &str = "ztunnel";

/// The `job` label of the waypoints' `/stats/prometheus`.
pub const WAYPOINT_JOB: &str = "waypoint";

/// The load generator's own host.
const LOADGEN_HOST: &str = "loadgen";

/// What a host's outbound listener leads to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    /// One replica (by pod), through its host's node proxy.
    Replica(String),
    /// A service (by node), through its waypoint.
    Service(String),
}

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
    /// Each host's outbound listeners, by destination.
    outbound: BTreeMap<String, BTreeMap<Destination, SocketAddr>>,
    /// Replicas placed so far (the next one goes to the next host).
    next: u32,
    /// Whether calls to a service cross its waypoint.
    waypoints: bool,
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

    /// The listener on `host`'s proxy for `to` (made when first asked for).
    fn outbound(&mut self, host: &str, to: Destination) -> std::io::Result<SocketAddr> {
        let listeners = self.outbound.entry(host.to_string()).or_default();
        if let Some(addr) = listeners.get(&to) {
            return Ok(*addr);
        }
        let addr = crate::ports::free_port()?;
        listeners.insert(to, addr);
        Ok(addr)
    }

    /// Where `host`'s pods reach each backend: its proxy's listeners, one per replica, or
    /// one per service with waypoints.
    fn routes(
        &mut self,
        host: &str,
        backends: &[String],
        deployment: &Deployment,
    ) -> std::io::Result<BTreeMap<String, Vec<SocketAddr>>> {
        let mut routes = BTreeMap::new();
        for b in backends {
            if self.waypoints {
                let addr = self.outbound(host, Destination::Service(b.clone()))?;
                routes.insert(b.clone(), vec![addr]);
                continue;
            }
            let pods: Vec<String> = deployment
                .replicas
                .iter()
                .filter(|r| &r.node == b)
                .map(|r| r.pod.clone())
                .collect();
            let mut addrs = Vec::new();
            for pod in pods {
                addrs.push(self.outbound(host, Destination::Replica(pod))?);
            }
            routes.insert(b.clone(), addrs);
        }
        Ok(routes)
    }
}

/// The facts of an ambient run.
pub(super) fn facts(mesh: &EnvoyMesh, hosts: u32, facts: &mut Facts) {
    let ambient = mesh.layout.mesh();
    facts.insert("mesh".into(), ambient.name().into());
    facts.insert("mesh_description".into(), ambient.description().into());
    facts.insert("hosts".into(), hosts.into());
    facts.insert("envoy_version".into(), mesh.version.clone().into());
    facts.insert("envoy_path".into(), mesh.envoy.display().to_string().into());
    facts.insert("node_proxy_concurrency".into(), mesh.concurrency.into());
    facts.insert("tls".into(), mesh.tls.as_str().into());
}

impl LocalBackend {
    /// Brings the topology up in ambient's layout on `hosts` hosts, with a waypoint per
    /// service when `waypoints`.
    pub(super) async fn up_ambient(
        &mut self,
        envoy: EnvoyMesh,
        (hosts, waypoints): (u32, bool),
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
            waypoints,
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
        let hbone = hbone_listeners(&at, plan)?;
        let mut proxies = self.start_node_proxies(&run, &at, &hbone, plan, &mut deployment)?;
        if waypoints {
            proxies.extend(self.start_waypoints(&run, &at, &hbone, plan, &mut deployment)?);
        }
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
        hbone: &HboneListeners,
        plan: &Plan,
        deployment: &mut Deployment,
    ) -> Result<Vec<(String, SocketAddr)>, RunError> {
        let ca = the_ca(run)?;
        let mut ready = Vec::new();
        for (index, (host, hbone_addr)) in hbone.hosts.iter().enumerate() {
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
            let workloads: Vec<String> = local
                .iter()
                .filter_map(|(pod, _)| deployment.replicas.iter().find(|r| &r.pod == *pod))
                .map(|r| spiffe(plan, &meshload_config::service::workload_name(&r.node)))
                .collect();
            let files = ca
                .issue_for(&pod, &pod, &workloads)
                .map_err(|e| fail(crate::error_chain(&e)))?;
            let outbound = at
                .outbound
                .get(host)
                .into_iter()
                .flatten()
                .map(|(to, listen)| Outbound {
                    listen: *listen,
                    tunnel: hbone.tunnel(to, at, plan),
                })
                .collect();
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
            let (node, observed_pod, namespace, labels) = match host == LOADGEN_HOST {
                true => (
                    crate::plan::LOADGEN,
                    plan.loadgen_pod(),
                    plan.namespace.as_str(),
                    &[][..],
                ),
                false => (
                    ZTUNNEL_JOB,
                    pod.clone(),
                    NAMESPACE,
                    &[("app", ZTUNNEL_JOB)][..],
                ),
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
                (namespace, labels),
            );
            let name = format!("{observed_pod}/{ISTIO_PROXY}");
            self.children.push((name.clone(), child));
            ready.push((name, admin));
        }
        Ok(ready)
    }

    /// One waypoint per service, in the run's namespace. Returns each one's name and
    /// admin listener.
    fn start_waypoints(
        &mut self,
        run: &super::MeshRun,
        at: &Hosts,
        hbone: &HboneListeners,
        plan: &Plan,
        deployment: &mut Deployment,
    ) -> Result<Vec<(String, SocketAddr)>, RunError> {
        let ca = the_ca(run)?;
        let mut ready = Vec::new();
        for (index, node) in plan.nodes.iter().enumerate() {
            let service = &node.name;
            let pod = ambient::waypoint_pod(service);
            let gateway = ambient::waypoint_gateway(service);
            let fail = |reason: String| RunError::Start {
                pod: pod.clone(),
                reason,
            };
            let files = ca
                .issue_for(&pod, &pod, &[spiffe(plan, &gateway)])
                .map_err(|e| fail(crate::error_chain(&e)))?;
            let replicas = at
                .placed
                .keys()
                .filter(|p| {
                    deployment
                        .replicas
                        .iter()
                        .any(|r| &r.pod == *p && &r.node == service)
                })
                .map(|p| hbone.tunnel(&Destination::Replica(p.clone()), at, plan))
                .collect();
            let admin = crate::ports::free_port().map_err(|e| fail(e.to_string()))?;
            let waypoint = Waypoint {
                service: service.clone(),
                authority: meshload_config::service::service_authority(service, &plan.namespace),
                admin,
                hbone: hbone.waypoints[service],
                replicas,
                files,
            };
            let child = sidecar::start_envoy(
                &run.mesh,
                &pod,
                WAYPOINT_JOB,
                &ambient::waypoint_bootstrap(&waypoint),
                &run.dir,
            )
            .map_err(|e| fail(format!("envoy did not start: {e}")))?;
            let replica = Replica {
                node: WAYPOINT_JOB.to_string(),
                index: index as u32,
                pod: pod.clone(),
                addr: admin,
            };
            observe_container(
                deployment,
                &replica,
                (admin, "/stats/prometheus", WAYPOINT_JOB),
                (child.id(), ISTIO_PROXY),
                (
                    plan.namespace.as_str(),
                    &[(GATEWAY_NAME_LABEL, gateway.as_str())],
                ),
            );
            let name = format!("{pod}/{ISTIO_PROXY}");
            self.children.push((name.clone(), child));
            ready.push((name, admin));
        }
        Ok(ready)
    }
}

/// A waypoint pod's `gateway.networking.k8s.io/gateway-name` label, as Prometheus's
/// Kubernetes discovery maps it to a label name.
pub const GATEWAY_NAME_LABEL: &str = "gateway_networking_k8s_io_gateway_name";

/// The run's CA, which ambient cannot do without.
fn the_ca(run: &super::MeshRun) -> Result<&crate::mesh::certs::RunCa, RunError> {
    run.ca.as_ref().ok_or_else(|| RunError::Start {
        pod: "mesh".into(),
        reason: "ambient needs the run's CA".into(),
    })
}

/// Istio's identity of a service account in the run's namespace.
fn spiffe(plan: &Plan, account: &str) -> String {
    format!("spiffe://cluster.local/ns/{}/sa/{account}", plan.namespace)
}

/// Every HBONE listener, chosen before any proxy starts (each proxy's tunnels name
/// others').
struct HboneListeners {
    /// Each host's node proxy's (the load generator's host's included).
    hosts: BTreeMap<String, SocketAddr>,
    /// Each service's waypoint's (none without waypoints).
    waypoints: BTreeMap<String, SocketAddr>,
}

impl HboneListeners {
    /// The tunnel to a destination.
    fn tunnel(&self, to: &Destination, at: &Hosts, plan: &Plan) -> Tunnel {
        match to {
            Destination::Replica(pod) => {
                let (host, replica) = &at.placed[pod];
                Tunnel {
                    authority: replica.to_string(),
                    peer: ambient::pod(host),
                    hbone: self.hosts[host],
                }
            }
            Destination::Service(service) => Tunnel {
                authority: meshload_config::service::service_authority(service, &plan.namespace),
                peer: ambient::waypoint_pod(service),
                hbone: self.waypoints[service],
            },
        }
    }
}

/// Chooses every HBONE listener.
fn hbone_listeners(at: &Hosts, plan: &Plan) -> Result<HboneListeners, RunError> {
    let port = |pod: String| {
        crate::ports::free_port().map_err(|e| RunError::Start {
            pod,
            reason: e.to_string(),
        })
    };
    let mut hosts = BTreeMap::new();
    for host in at.names.iter().cloned().chain([LOADGEN_HOST.to_string()]) {
        let addr = port(ambient::pod(&host))?;
        hosts.insert(host, addr);
    }
    let mut waypoints = BTreeMap::new();
    if at.waypoints {
        for node in &plan.nodes {
            waypoints.insert(node.name.clone(), port(ambient::waypoint_pod(&node.name))?);
        }
    }
    Ok(HboneListeners { hosts, waypoints })
}
