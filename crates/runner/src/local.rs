//! The local backend: every replica of every node is a child `meshload node` process on
//! a loopback port. Children are started leaves first, each told where its backends'
//! replicas are (`--resolve`), in their own process group (a Ctrl-C in the terminal
//! reaches only meshload, which tears down in order), killed when dropped, and told to
//! exit should meshload itself die (`MESHLOAD_PARENT_PID`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::RunError;
use crate::backend::{Backend, Container, Deployment, Replica, ReplicaExit, ScrapeTarget};
use crate::plan::{Plan, PlannedNode};

/// The `job` label of the nodes' own `/metrics`.
pub const NODE_JOB: &str = "meshload-node";
/// The container name of a node's process, as a pod's app container.
pub const APP_CONTAINER: &str = "app";

/// How long a replica may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the replicas may take to answer `/health` once started.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs nodes as child processes of this one.
#[derive(Debug)]
pub struct LocalBackend {
    exe: PathBuf,
    children: Vec<(Replica, Child)>,
    exited: Vec<String>,
}

impl LocalBackend {
    /// A backend that runs `exe node ...` for every replica (normally the running
    /// `meshload` binary).
    pub fn new(exe: PathBuf) -> LocalBackend {
        LocalBackend {
            exe,
            children: Vec::new(),
            exited: Vec::new(),
        }
    }

    async fn start_replica(
        &self,
        node: &PlannedNode,
        index: u32,
        plan: &Plan,
        deployment: &Deployment,
    ) -> Result<(Replica, Child), RunError> {
        let pod = node.pod(index);
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "-q",
            "node",
            "--listen",
            "127.0.0.1:0",
            "--name",
            &node.name,
        ]);
        cmd.args(node_args(node, index, plan, deployment));
        cmd.env(
            meshload_node::PARENT_PID_ENV,
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
            (Ok(Ok(_)), Some(addr)) => Ok((
                Replica {
                    node: node.name.clone(),
                    index,
                    pod,
                    addr,
                },
                child,
            )),
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

/// The `meshload node` flags of one replica.
fn node_args(node: &PlannedNode, index: u32, plan: &Plan, deployment: &Deployment) -> Vec<String> {
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
        let addrs: Vec<String> = deployment
            .endpoints(b)
            .iter()
            .map(ToString::to_string)
            .collect();
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
        let mut deployment = Deployment::default();
        for node in &plan.nodes {
            // The replicas of a node start together; its backends are all up already.
            let starts =
                (0..node.spec.replicas).map(|i| self.start_replica(node, i, plan, &deployment));
            let started = futures_util::future::join_all(starts).await;
            let mut failure = None;
            for s in started {
                match s {
                    Ok((replica, child)) => {
                        observe(&mut deployment, &replica, child.id(), &plan.namespace);
                        deployment.replicas.push(replica.clone());
                        self.children.push((replica, child));
                    }
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        wait_healthy(&deployment).await?;
        for node in &plan.nodes {
            let endpoints = deployment.endpoints(&node.name);
            deployment.entries.insert(node.name.clone(), endpoints);
        }
        Ok(deployment)
    }

    async fn exited(&mut self) -> Vec<ReplicaExit> {
        let mut out = Vec::new();
        for (replica, child) in &mut self.children {
            if self.exited.contains(&replica.pod) {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                self.exited.push(replica.pod.clone());
                out.push(ReplicaExit {
                    pod: replica.pod.clone(),
                    status: status.to_string(),
                });
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
    }
}

/// Adds what is collected of a started replica: its `/metrics` and its process.
fn observe(deployment: &mut Deployment, replica: &Replica, pid: Option<u32>, namespace: &str) {
    deployment.scrape_targets.push(ScrapeTarget::of_pod(
        replica.addr,
        "/metrics",
        NODE_JOB,
        namespace,
        replica,
    ));
    if let Some(pid) = pid {
        deployment.containers.push(Container {
            pid,
            namespace: namespace.to_string(),
            pod: replica.pod.clone(),
            container: APP_CONTAINER.to_string(),
        });
    }
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
