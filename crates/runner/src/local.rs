//! The local backend: every replica of every node is a child `meshload node` process on
//! a loopback port (`meshload-node` when it sits beside `meshload`: see [`NodeProgram`]). Children are started leaves first, each told where its backends'
//! replicas are (`--resolve`), in their own process group (a Ctrl-C in the terminal
//! reaches only meshload, which tears down in order), killed when dropped, and told to
//! exit should meshload itself die (`MESHLOAD_PARENT_PID`).
//!
//! With a mesh ([`EnvoyMesh`]), every replica gets an Envoy sidecar: callers reach the
//! replica through its sidecar's ingress, the replica's backend calls go out through its
//! sidecar's egress (`--resolve` points every backend at it), and the load generator
//! reaches the entry node through a sidecar of its own (see [`crate::mesh`]). With ambient's
//! layout, replicas are spread over simulated hosts, each with one shared node proxy
//! (`ambient`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use std::collections::BTreeMap;

use crate::RunError;
use crate::backend::{Backend, Container, Deployment, Facts, Replica, ReplicaExit, ScrapeTarget};
use crate::mesh::envoy::{Sidecar, TlsFiles, Upstream, virtual_node};
use crate::mesh::{ENVOY_CONTAINER, ENVOY_JOB, EnvoyMesh, Layout, TlsMode, certs::RunCa, sidecar};

mod ambient;
use crate::node_program::NodeProgram;
use crate::plan::{Plan, PlannedNode};

/// The `job` label of the nodes' own `/metrics`.
pub const NODE_JOB: &str = "meshload-node";
pub use meshload_config::proxies::APP_CONTAINER;

/// How long a replica may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the replicas may take to answer `/health` once started.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs nodes as child processes of this one.
#[derive(Debug)]
pub struct LocalBackend {
    node: NodeProgram,
    mesh: Option<EnvoyMesh>,
    /// Every child, named as its exit is reported (`<pod>`, `<pod>/envoy`).
    children: Vec<(String, Child)>,
    /// Children that exited, with how, as first seen.
    exited: Vec<ReplicaExit>,
    /// The run's sidecar configs and certificates, removed by `down`.
    mesh_dir: Option<tempfile::TempDir>,
}

/// What a mesh run shares while it starts: where its files go, its CA, and the
/// sidecars' ingress listeners of every node started so far.
struct MeshRun {
    mesh: EnvoyMesh,
    name: String,
    dir: PathBuf,
    ca: Option<RunCa>,
    ingress: BTreeMap<String, Vec<SocketAddr>>,
}

/// One started replica: its app, and its sidecar with the sidecar's ingress and admin.
struct Started {
    replica: Replica,
    app: Child,
    sidecar: Option<(Child, SocketAddr, SocketAddr)>,
}

impl LocalBackend {
    /// A backend that runs a node for every replica: `meshload-node` beside `exe` (the
    /// running `meshload` binary, normally) when it is the same node build, else
    /// `exe node ...` (a `meshload-node` of another build is not used, with a warning).
    pub fn new(exe: PathBuf) -> LocalBackend {
        let (node, note) = NodeProgram::beside(&exe);
        if let Some(note) = note {
            tracing::warn!("{note}");
        }
        tracing::debug!(exe = %node.exe.display(), "local nodes");
        LocalBackend {
            node,
            mesh: None,
            children: Vec::new(),
            exited: Vec::new(),
            mesh_dir: None,
        }
    }

    /// The same, with an Envoy sidecar beside every replica and the load generator.
    pub fn with_mesh(mut self, mesh: EnvoyMesh) -> LocalBackend {
        self.mesh = Some(mesh);
        self
    }

    /// Starts replica `index` of `node`: a `meshload node` child on a port of its own
    /// (its first stdout line says which), told its backends (through its own sidecar's
    /// egress listener when `mesh` is given, else by address), and with a mesh its Envoy
    /// sidecar in front of it (ingress, egress and admin ports chosen first, so that the
    /// node can be told its egress). Long because the two starts depend on each other: the
    /// sidecar needs the node's address, the node the sidecar's egress port. A node that
    /// prints no address in time is killed and named.
    async fn start_replica(
        &self,
        node: &PlannedNode,
        index: u32,
        plan: &Plan,
        deployment: &Deployment,
        mesh: Option<&MeshRun>,
        via: Option<&BTreeMap<String, Vec<SocketAddr>>>,
    ) -> Result<Started, RunError> {
        let pod = node.pod(index);
        let fail = |reason: String| RunError::Start {
            pod: pod.clone(),
            reason,
        };
        let ports = match mesh {
            Some(_) => {
                let port = || crate::ports::free_port().map_err(|e| fail(e.to_string()));
                Some((port()?, port()?, port()?))
            }
            None => None,
        };
        let route = match (via, ports) {
            (Some(via), _) => Route::Via(via),
            (None, Some((_, egress, _))) => Route::Egress(egress),
            (None, None) => Route::Direct,
        };
        let mut cmd = Command::new(&self.node.exe);
        cmd.arg("-q").args(&self.node.prefix);
        cmd.args(["--listen", "127.0.0.1:0", "--name", &node.name]);
        cmd.args(node_args(node, index, plan, deployment, &route));
        cmd.env(
            meshload_process::lifecycle::PARENT_PID_ENV,
            std::process::id().to_string(),
        );
        cmd.env_remove("BACKENDS");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.process_group(0).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| RunError::Start {
            pod: pod.clone(),
            reason: e.to_string(),
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read =
            tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
        let addr: Option<SocketAddr> = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok());
        match (read, addr) {
            (Ok(Ok(_)), Some(addr)) => {
                let replica = Replica {
                    node: node.name.clone(),
                    index,
                    pod: pod.clone(),
                    addr,
                };
                let sidecar = match (mesh, ports) {
                    (Some(mesh), Some((ingress, egress, admin))) => {
                        let config =
                            node_sidecar(mesh, plan, node, &pod, (ingress, addr), egress, admin)
                                .map_err(fail)?;
                        let child = sidecar::start(&mesh.mesh, &config, &mesh.dir)
                            .map_err(|e| fail(format!("envoy did not start: {e}")))?;
                        Some((child, ingress, admin))
                    }
                    _ => None,
                };
                Ok(Started {
                    replica,
                    app: child,
                    sidecar,
                })
            }
            _ => {
                let _ = child.start_kill();
                let status = child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map_or("no address printed".to_string(), |s| s.to_string());
                Err(RunError::Start {
                    pod,
                    reason: format!("did not start ({status})"),
                })
            }
        }
    }
}

/// Where a replica's backend calls go.
enum Route<'a> {
    /// To the backends' replicas themselves.
    Direct,
    /// To its sidecar's egress listener, for every backend.
    Egress(SocketAddr),
    /// To these addresses per backend (its host's node proxy's outbound listeners).
    Via(&'a BTreeMap<String, Vec<SocketAddr>>),
}

/// The `meshload node` flags of one replica; its backends resolve as `route` says.
fn node_args(
    node: &PlannedNode,
    index: u32,
    plan: &Plan,
    deployment: &Deployment,
    route: &Route<'_>,
) -> Vec<String> {
    let mut args = Vec::new();
    let backends: Vec<String> = node
        .spec
        .backends
        .iter()
        .map(|b| format!("http://{}/", plan.service_authority(b)))
        .collect();
    if !backends.is_empty() {
        args.push(format!("--backends={}", backends.join(",")));
    }
    for b in &node.spec.backends {
        let addrs: Vec<String> = match route {
            Route::Egress(egress) => vec![egress.to_string()],
            Route::Via(via) => via
                .get(b)
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect(),
            Route::Direct => deployment
                .endpoints(b)
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        args.push(format!(
            "--resolve={}={}",
            plan.service_authority(b),
            addrs.join(",")
        ));
    }
    args.extend(meshload_config::service::behaviour_flags(
        &node.spec.behaviour,
    ));
    // A fixed seed per replica: the same config injects the same faults run after run.
    let seed = crate::plan::fnv1a(node.name.as_bytes()) ^ u64::from(index);
    args.push(format!("--seed={seed}"));
    args
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn up(&mut self, plan: &Plan) -> Result<Deployment, RunError> {
        if let Some(envoy) = self.mesh.clone()
            && let Layout::Ambient { hosts, waypoints } = envoy.layout
        {
            return self.up_ambient(envoy, (hosts, waypoints), plan).await;
        }
        let mut mesh = match self.mesh.clone() {
            Some(m) => Some(self.prepare_mesh(m, plan)?),
            None => None,
        };
        let mut deployment = Deployment::default();
        let mut sidecars = Vec::new();
        for node in &plan.nodes {
            // The replicas of a node start together; its backends are all up already.
            let starts = (0..node.spec.replicas)
                .map(|i| self.start_replica(node, i, plan, &deployment, mesh.as_ref(), None));
            let started = futures_util::future::join_all(starts).await;
            let mut failure = None;
            for s in started {
                match s {
                    Ok(started) => {
                        let r = started.replica;
                        observe(&mut deployment, &r, started.app.id(), &plan.namespace);
                        if let (Some((child, ingress, admin)), Some(mesh)) =
                            (started.sidecar, &mut mesh)
                        {
                            observe_sidecar(
                                &mut deployment,
                                &r,
                                child.id(),
                                admin,
                                &plan.namespace,
                            );
                            mesh.ingress
                                .entry(r.node.clone())
                                .or_default()
                                .push(ingress);
                            sidecars.push((format!("{}/{ENVOY_CONTAINER}", r.pod), admin));
                            self.children
                                .push((format!("{}/{ENVOY_CONTAINER}", r.pod), child));
                        }
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
        match &mesh {
            Some(mesh) => {
                let egress =
                    self.start_loadgen_sidecar(mesh, plan, &mut sidecars, &mut deployment)?;
                for node in &plan.nodes {
                    deployment.entries.insert(node.name.clone(), vec![egress]);
                }
            }
            None => {
                for node in &plan.nodes {
                    let endpoints = deployment.endpoints(&node.name);
                    deployment.entries.insert(node.name.clone(), endpoints);
                }
            }
        }
        wait_healthy(&deployment).await?;
        wait_sidecars(&sidecars).await?;
        Ok(deployment)
    }

    fn facts(&self) -> Facts {
        // Without a mesh there is nothing to add: a plain local run reads as `local`.
        let mut facts = Facts::new();
        match &self.mesh {
            None => {}
            Some(m) if let Layout::Ambient { hosts, .. } = m.layout => {
                ambient::facts(m, hosts, &mut facts)
            }
            Some(m) => {
                facts.insert("mesh".into(), "envoy".into());
                facts.insert("envoy_version".into(), m.version.clone().into());
                facts.insert("envoy_path".into(), m.envoy.display().to_string().into());
                facts.insert("sidecar_concurrency".into(), m.concurrency.into());
                facts.insert("tls".into(), m.tls.as_str().into());
            }
        }
        facts
    }

    /// Every replica (and sidecar) not running: those that exited since the last call,
    /// and, marked so, those already gone before it (a test that ran without them is
    /// recorded as such, not only the one during which they died).
    async fn exited(&mut self) -> Vec<ReplicaExit> {
        let mut out: Vec<ReplicaExit> = self
            .exited
            .iter()
            .map(|e| ReplicaExit {
                pod: e.pod.clone(),
                status: format!("{}, before this test", e.status),
            })
            .collect();
        for (name, child) in &mut self.children {
            if self.exited.iter().any(|e| &e.pod == name) {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let exit = ReplicaExit {
                    pod: name.clone(),
                    status: status.to_string(),
                };
                self.exited.push(exit.clone());
                out.push(exit);
            }
        }
        out
    }

    async fn down(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.start_kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait().await;
        }
        self.children.clear();
        if let Some(dir) = self.mesh_dir.take() {
            let _ = dir.close();
        }
    }
}

/// How long sidecars may take to report ready.
const SIDECAR_TIMEOUT: Duration = Duration::from_secs(20);

impl LocalBackend {
    /// The run's mesh folder (sidecar configs, certificates) and CA.
    fn prepare_mesh(&mut self, mesh: EnvoyMesh, plan: &Plan) -> Result<MeshRun, RunError> {
        let fail = |reason: String| RunError::Start {
            pod: "mesh".into(),
            reason,
        };
        // Private (0700), fresh (a random suffix, refused if it exists), under TMPDIR, and
        // removed when the topology comes down: it holds the run's CA key.
        let folder = tempfile::Builder::new()
            .prefix(&format!(
                "meshload-mesh-{}-{}-",
                std::process::id(),
                plan.run_tag
            ))
            .tempdir()
            .map_err(|e| fail(format!("cannot create a private temporary folder: {e}")))?;
        let dir = folder.path().to_path_buf();
        self.mesh_dir = Some(folder);
        let ca = match mesh.tls {
            TlsMode::Plain => None,
            _ => Some(RunCa::new(&dir).map_err(|e| fail(crate::error_chain(&e)))?),
        };
        Ok(MeshRun {
            mesh,
            name: meshload_config::service::mesh_name(&plan.run_tag),
            dir,
            ca,
            ingress: BTreeMap::new(),
        })
    }

    /// The load generator's own sidecar: one egress listener routing to every node's
    /// service. Returns that listener, where loads go.
    fn start_loadgen_sidecar(
        &mut self,
        mesh: &MeshRun,
        plan: &Plan,
        sidecars: &mut Vec<(String, SocketAddr)>,
        deployment: &mut Deployment,
    ) -> Result<SocketAddr, RunError> {
        let pod = plan.loadgen_pod();
        let fail = |reason: String| RunError::Start {
            pod: pod.clone(),
            reason,
        };
        let port = || crate::ports::free_port().map_err(|e| fail(e.to_string()));
        let (egress, admin) = (port()?, port()?);
        let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
        let config = Sidecar {
            mesh: mesh.name.clone(),
            pod: pod.clone(),
            virtual_node: crate::plan::LOADGEN.to_string(),
            admin,
            ingress: None,
            egress,
            upstreams: upstreams(mesh, plan, &names),
            tls: mesh.mesh.tls,
            files: identity(
                mesh,
                &pod,
                &format!(
                    "{}.{}",
                    crate::plan::LOADGEN,
                    meshload_config::service::namespace_domain(&plan.namespace)
                ),
            )
            .map_err(fail)?,
        };
        let child = sidecar::start(&mesh.mesh, &config, &mesh.dir)
            .map_err(|e| fail(format!("envoy did not start: {e}")))?;
        let replica = Replica {
            node: crate::plan::LOADGEN.to_string(),
            index: 0,
            pod: pod.clone(),
            addr: egress,
        };
        observe_sidecar(deployment, &replica, child.id(), admin, &plan.namespace);
        sidecars.push((format!("{pod}/{ENVOY_CONTAINER}"), admin));
        self.children
            .push((format!("{pod}/{ENVOY_CONTAINER}"), child));
        Ok(egress)
    }
}

/// The egress upstreams towards `nodes`: each node's service, over its sidecars.
fn upstreams(mesh: &MeshRun, plan: &Plan, nodes: &[String]) -> Vec<Upstream> {
    nodes
        .iter()
        .map(|b| Upstream {
            node: b.clone(),
            host: meshload_config::service::service_host(b, &plan.namespace),
            endpoints: mesh.ingress.get(b).cloned().unwrap_or_default(),
        })
        .collect()
}

/// A sidecar's certificate (naming `dns_name`), when the mesh uses TLS.
fn identity(mesh: &MeshRun, stem: &str, dns_name: &str) -> Result<Option<TlsFiles>, String> {
    match &mesh.ca {
        None => Ok(None),
        Some(ca) => ca
            .issue(stem, dns_name)
            .map(Some)
            .map_err(|e| crate::error_chain(&e)),
    }
}

/// The bootstrap of a node replica's sidecar: ingress in front of `app`, egress to the
/// node's backends.
fn node_sidecar(
    mesh: &MeshRun,
    plan: &Plan,
    node: &PlannedNode,
    pod: &str,
    (ingress, app): (SocketAddr, SocketAddr),
    egress: SocketAddr,
    admin: SocketAddr,
) -> Result<Sidecar, String> {
    let host = meshload_config::service::service_host(&node.name, &plan.namespace);
    Ok(Sidecar {
        mesh: mesh.name.clone(),
        pod: pod.to_string(),
        virtual_node: virtual_node(&node.name),
        admin,
        ingress: Some((ingress, app)),
        egress,
        upstreams: upstreams(mesh, plan, &node.spec.backends),
        tls: mesh.mesh.tls,
        files: identity(mesh, pod, &host)?,
    })
}

/// Adds what is collected of a sidecar: its admin's `/stats/prometheus` (job
/// `appmesh-envoy`) and its process as the pod's `envoy` container.
fn observe_sidecar(
    deployment: &mut Deployment,
    replica: &Replica,
    pid: Option<u32>,
    admin: SocketAddr,
    namespace: &str,
) {
    let target = (admin, "/stats/prometheus", ENVOY_JOB);
    observe_container(
        deployment,
        replica,
        target,
        (pid, ENVOY_CONTAINER),
        (namespace, &[]),
    );
}

/// Adds one container of a pod in `namespace` with the pod's `labels` (as Prometheus's
/// Kubernetes discovery maps them): its scrape target (address, path, job) and its
/// process.
fn observe_container(
    deployment: &mut Deployment,
    replica: &Replica,
    (addr, path, job): (SocketAddr, &str, &str),
    (pid, container): (Option<u32>, &str),
    (namespace, labels): (&str, &[(&str, &str)]),
) {
    let mut target = ScrapeTarget::of_pod(addr, path, job, namespace, replica);
    target
        .labels
        .extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    deployment.scrape_targets.push(target);
    if let Some(pid) = pid {
        deployment.containers.push(Container {
            pid,
            namespace: namespace.to_string(),
            pod: replica.pod.clone(),
            container: container.to_string(),
        });
    }
}

/// Waits until every Envoy (`<pod>/<container>`, admin) is ready, naming those that are
/// not.
async fn wait_sidecars(sidecars: &[(String, SocketAddr)]) -> Result<(), RunError> {
    let checks = sidecars
        .iter()
        .map(|(_, admin)| sidecar::wait_ready(*admin, SIDECAR_TIMEOUT));
    let ready = futures_util::future::join_all(checks).await;
    let pending: Vec<String> = sidecars
        .iter()
        .zip(ready)
        .filter(|(_, ok)| !ok)
        .map(|((name, _), _)| name.clone())
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(RunError::NotReady {
            waited: SIDECAR_TIMEOUT,
            pods: pending.join(", "),
        })
    }
}

/// Adds what is collected of a started replica: its `/metrics` and its process.
fn observe(deployment: &mut Deployment, replica: &Replica, pid: Option<u32>, namespace: &str) {
    let target = (replica.addr, "/metrics", NODE_JOB);
    observe_container(
        deployment,
        replica,
        target,
        (pid, APP_CONTAINER),
        (namespace, &[]),
    );
}

/// Waits until every replica answers `/health` (at most [`HEALTH_TIMEOUT`]), naming those
/// that do not.
pub async fn wait_healthy(deployment: &Deployment) -> Result<(), RunError> {
    let client = crate::http::client();
    let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
    let mut pending: Vec<&Replica> = deployment.replicas.iter().collect();
    while !pending.is_empty() {
        let checks = pending.iter().map(|r| {
            crate::http::get(
                &client,
                format!("http://{}/health", r.addr),
                Duration::from_secs(1),
            )
        });
        let results = futures_util::future::join_all(checks).await;
        pending = pending
            .into_iter()
            .zip(results)
            .filter(|(_, r)| !matches!(r, Ok((200, _, _))))
            .map(|(p, _)| p)
            .collect();
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let pods: Vec<&str> = pending.iter().map(|r| r.pod.as_str()).collect();
            return Err(RunError::NotReady {
                waited: HEALTH_TIMEOUT,
                pods: pods.join(", "),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
