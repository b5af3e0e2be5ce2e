//! Talking to a cluster through kube-rs (no kubectl): server-side apply of rendered
//! objects, waiting for rollouts (naming the pods not ready and their last events on
//! timeout), and deleting what a run created, by label.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::render::{MANAGED_BY, RUN_LABEL};

/// The field manager of meshload's server-side applies.
pub const FIELD_MANAGER: &str = "meshload";

/// Errors talking to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The API server answered with an error, or could not be reached.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// The kubeconfig cannot be used.
    #[error("kubeconfig")]
    Config(#[source] kube::config::KubeconfigError),
    /// Neither a kubeconfig nor the pod's own service account could be used.
    #[error("no cluster to connect to")]
    Infer(#[source] kube::config::InferConfigError),
    /// A rendered object cannot be applied.
    #[error("cannot apply {0}")]
    Object(String),
    /// The namespace cannot be used for the run.
    #[error("namespace {namespace}: {reason}")]
    Namespace {
        /// The namespace.
        namespace: String,
        /// Why.
        reason: String,
    },
    /// Something the run needs is not in the cluster (a ready pod, a Service's port).
    #[error("{0}")]
    Missing(String),
    /// A local port for a port-forward could not be opened.
    #[error("cannot listen for a port-forward to {pod}")]
    Forward {
        /// The pod.
        pod: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Deployments did not become ready in time.
    #[error("not ready after {timeout:?}: {details}")]
    RolloutTimeout {
        /// How long was waited.
        timeout: Duration,
        /// The pods not ready and their last events.
        details: String,
    },
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> K8sError {
    let action = action.into();
    move |source| K8sError::Api { action, source }
}

/// A cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    /// The kubeconfig context and API server, for the records (empty when unknown).
    pub name: String,
}

/// Per (pod, container) of a run: how many times it restarted and how it last ended
/// (`OOMKilled (exit code 137)`).
pub type Restarts = std::collections::BTreeMap<(String, String), (i32, String)>;

/// A Service's port in another namespace: `NAMESPACE/NAME:PORT` (e.g. the seed's
/// `appmesh-system/appmesh-prometheus:9090`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its port.
    pub port: u16,
}

impl std::str::FromStr for ServiceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not NAMESPACE/SERVICE:PORT (e.g. appmesh-system/appmesh-prometheus:9090)"
            )
        };
        let (namespace, rest) = s.split_once('/').ok_or_else(bad)?;
        let (name, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        if namespace.is_empty() || name.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(ServiceRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// The resource an object's `apiVersion` and `kind` name, and whether it is namespaced.
fn resource_of(obj: &Value) -> Result<(ApiResource, bool), K8sError> {
    let api_version = obj["apiVersion"]
        .as_str()
        .ok_or_else(|| K8sError::Object(format!("no apiVersion in {obj}")))?;
    let kind = obj["kind"]
        .as_str()
        .ok_or_else(|| K8sError::Object(format!("no kind in {obj}")))?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Ok((ar, !matches!(kind, "Namespace" | "Mesh")))
}

impl Cluster {
    /// A cluster behind `client`.
    pub fn new(client: Client) -> Cluster {
        Cluster {
            client,
            name: String::new(),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The cluster of the kubeconfig's current (or named) context, or, inside a pod
    /// without a kubeconfig, the pod's own cluster.
    pub async fn connect(context: Option<&str>) -> Result<Cluster, K8sError> {
        let options = kube::config::KubeConfigOptions {
            context: context.map(String::from),
            ..Default::default()
        };
        // Without a context: the kubeconfig's current one, or the pod's service account
        // when meshload itself runs in a cluster.
        let config = match context {
            Some(_) => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(K8sError::Config)?,
            None => kube::Config::infer().await.map_err(K8sError::Infer)?,
        };
        let kubeconfig = kube::config::Kubeconfig::read().ok();
        let context = context
            .map(String::from)
            .or_else(|| kubeconfig.as_ref().and_then(|k| k.current_context.clone()));
        let name = match context {
            Some(c) => format!("{c} ({})", config.cluster_url),
            None => config.cluster_url.to_string(),
        };
        let client = Client::try_from(config).map_err(api_err("connect"))?;
        Ok(Cluster { client, name })
    }

    /// The API server's Kubernetes version (`v1.33.1`).
    pub async fn version(&self) -> Result<String, K8sError> {
        let info = self
            .client
            .apiserver_version()
            .await
            .map_err(api_err("get the Kubernetes version"))?;
        Ok(info.git_version)
    }

    /// Refuses a namespace that exists but is not meshload's (deleting it at the end
    /// would delete someone else's objects); waits (at most `timeout`) for one that a
    /// previous run's clean-up is still deleting, calling `waiting` first.
    pub async fn check_namespace(
        &self,
        namespace: &str,
        timeout: Duration,
        waiting: impl FnOnce(),
    ) -> Result<(), K8sError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let Some(ns) = api
            .get_opt(namespace)
            .await
            .map_err(api_err(format!("get namespace {namespace}")))?
        else {
            return Ok(());
        };
        let ours = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY))
            .is_some_and(|v| v == "meshload");
        if !ours {
            return Err(K8sError::Namespace {
                namespace: namespace.to_string(),
                reason: "it exists and meshload did not create it; a run deletes its namespace at the end, so choose a new one (\"namespace\" in the config)".to_string(),
            });
        }
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(());
        }
        waiting();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::time::sleep(Duration::from_secs(1).min(timeout)).await;
            let gone = api
                .get_opt(namespace)
                .await
                .map_err(api_err(format!("get namespace {namespace}")))?
                .is_none();
            if gone {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(K8sError::Namespace {
                    namespace: namespace.to_string(),
                    reason: format!(
                        "a previous run's namespace is still being deleted after {}; try again when `kubectl get namespace {namespace}` finds nothing",
                        humantime::format_duration(timeout)
                    ),
                });
            }
        }
    }

    /// The restarts of every container of the run's pods (native sidecars included).
    pub async fn restarts(&self, namespace: &str, run: &str) -> Result<Restarts, K8sError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={run}")))
            .await
            .map_err(api_err(format!("list the run's pods in {namespace}")))?;
        let mut out = Restarts::new();
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            // Native sidecars (Linkerd's proxy by default) are init containers that keep
            // running: their restarts count too.
            let statuses = pod
                .status
                .map(|s| {
                    let mut all = s.container_statuses.unwrap_or_default();
                    all.extend(s.init_container_statuses.unwrap_or_default());
                    all
                })
                .unwrap_or_default();
            for c in statuses {
                let last = c.last_state.and_then(|s| s.terminated).map_or_else(
                    || "unknown".to_string(),
                    |t| {
                        format!(
                            "{} (exit code {})",
                            t.reason.unwrap_or_else(|| "terminated".into()),
                            t.exit_code
                        )
                    },
                );
                out.insert((name.clone(), c.name), (c.restart_count, last));
            }
        }
        Ok(out)
    }

    /// A ready pod among those `selector` picks in `namespace`.
    pub async fn ready_pod(&self, namespace: &str, selector: &str) -> Result<Pod, K8sError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(api_err(format!("list pods {selector} in {namespace}")))?;
        list.items
            .into_iter()
            .find(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| {
                K8sError::Missing(format!(
                    "no ready pod with labels {selector} in {namespace}"
                ))
            })
    }

    /// The pod name and container port behind a Service's port, as `kubectl
    /// port-forward svc/...` picks them.
    pub async fn service_backend(&self, service: &ServiceRef) -> Result<(String, u16), K8sError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace);
        let svc = api
            .get(&service.name)
            .await
            .map_err(api_err(format!("get service {service}")))?;
        let spec = svc.spec.unwrap_or_default();
        let selector = spec
            .selector
            .filter(|s| !s.is_empty())
            .ok_or_else(|| K8sError::Missing(format!("service {service} has no pod selector")))?;
        let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pod = self
            .ready_pod(&service.namespace, &selector.join(","))
            .await?;
        let target = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.port == i32::from(service.port))
            .ok_or_else(|| {
                K8sError::Missing(format!("service {service} has no port {}", service.port))
            })?
            .target_port;
        let port = match target {
            None => Some(service.port),
            Some(IntOrString::Int(p)) => u16::try_from(p).ok(),
            Some(IntOrString::String(name)) => pod
                .spec
                .as_ref()
                .into_iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }
        .ok_or_else(|| {
            K8sError::Missing(format!(
                "service {service}: cannot find the container port behind it"
            ))
        })?;
        let name = pod.metadata.name.unwrap_or_default();
        Ok((name, port))
    }

    fn api(&self, obj: &Value) -> Result<(Api<DynamicObject>, String), K8sError> {
        let (ar, namespaced) = resource_of(obj)?;
        let name = obj["metadata"]["name"]
            .as_str()
            .ok_or_else(|| K8sError::Object(format!("no name in {obj}")))?
            .to_string();
        let api = if namespaced {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        Ok((api, name))
    }

    /// Server-side applies every object, in order; returns how many.
    pub async fn apply(&self, objects: &[Value]) -> Result<usize, K8sError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for obj in objects {
            let (api, name) = self.api(obj)?;
            let dynamic: DynamicObject =
                serde_json::from_value(obj.clone()).map_err(|e| K8sError::Object(e.to_string()))?;
            api.patch(&name, &params, &Patch::Apply(&dynamic))
                .await
                .map_err(api_err(format!(
                    "apply {} {name}",
                    obj["kind"].as_str().unwrap_or("?")
                )))?;
            tracing::debug!(kind = %obj["kind"], %name, "applied");
        }
        Ok(objects.len())
    }

    /// Waits until every named Deployment has all its replicas ready; on timeout, names
    /// the pods not ready and their last events.
    pub async fn wait_ready(
        &self,
        namespace: &str,
        deployments: &[String],
        timeout: Duration,
    ) -> Result<(), K8sError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // One list per poll, whatever the number of nodes.
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(api_err(format!("list deployments in {namespace}")))?;
            let mut pending = Vec::new();
            for name in deployments {
                let found = list
                    .items
                    .iter()
                    .find(|d| d.metadata.name.as_deref() == Some(name.as_str()));
                let ready = found.is_some_and(|d| {
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let ready = d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    ready >= want
                });
                if !ready {
                    pending.push(name.clone());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let details = self.not_ready_details(namespace, &pending).await?;
                return Err(K8sError::RolloutTimeout { timeout, details });
            }
            tokio::time::sleep(Duration::from_millis(500).min(timeout)).await;
        }
    }

    async fn not_ready_details(
        &self,
        namespace: &str,
        deployments: &[String],
    ) -> Result<String, K8sError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let mut out = Vec::new();
        for d in deployments {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={d}")))
                .await
                .map_err(api_err(format!("list pods of {d}")))?;
            let not_ready: Vec<String> = list
                .items
                .iter()
                .filter(|p| !is_ready(p))
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            if not_ready.is_empty() {
                out.push(format!("{d} (no pod yet)"));
            }
            for pod in not_ready {
                let selector = format!("involvedObject.name={pod}");
                let list = events
                    .list(&ListParams::default().fields(&selector))
                    .await
                    .map_err(api_err(format!("list events of {pod}")))?;
                let last = list
                    .items
                    .iter()
                    .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
                    .and_then(|e| {
                        Some(format!(
                            "{}: {}",
                            e.reason.clone()?,
                            e.message.clone().unwrap_or_default()
                        ))
                    })
                    .unwrap_or_else(|| "no events".to_string());
                out.push(format!("pod {pod} not ready (last event {last})"));
            }
        }
        Ok(out.join("; "))
    }

    /// Deletes what meshload created, by label: namespaces (their objects go with them)
    /// and App Mesh meshes, of one run or of every run. Returns what was deleted.
    pub async fn cleanup(&self, run: Option<&str>) -> Result<Vec<String>, K8sError> {
        let mut selector = format!("{MANAGED_BY}=meshload");
        if let Some(run) = run {
            selector.push_str(&format!(",{RUN_LABEL}={run}"));
        }
        let lp = ListParams::default().labels(&selector);
        let mut deleted = Vec::new();
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let list = namespaces
            .list(&lp)
            .await
            .map_err(api_err("list namespaces"))?;
        delete_each(&namespaces, list.items, "namespace", &mut deleted).await?;
        let mesh =
            ApiResource::from_gvk(&GroupVersionKind::gvk("appmesh.k8s.aws", "v1beta2", "Mesh"));
        let meshes: Api<DynamicObject> = Api::all_with(self.client.clone(), &mesh);
        match meshes.list(&lp).await {
            Ok(list) => delete_each(&meshes, list.items, "mesh", &mut deleted).await?,
            // No App Mesh CRD in this cluster: nothing to delete.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(api_err("list meshes")(e)),
        }
        Ok(deleted)
    }
}

/// Deletes each of `items` (foreground), adding `kind/name` to `deleted`.
async fn delete_each<K>(
    api: &Api<K>,
    items: Vec<K>,
    kind: &str,
    deleted: &mut Vec<String>,
) -> Result<(), K8sError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for item in items {
        let name = item.name_any();
        api.delete(&name, &DeleteParams::foreground())
            .await
            .map_err(api_err(format!("delete {kind} {name}")))?;
        deleted.push(format!("{kind}/{name}"));
    }
    Ok(())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
