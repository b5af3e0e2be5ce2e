//! The Kubernetes objects of a config, for no mesh, Istio (sidecars or ambient), Linkerd or
//! App Mesh: what the seed's controller test created (per node a Deployment `node-<name>`,
//! Services `node-<name>` and `service-<name>` on 9080, and for App Mesh a Mesh,
//! VirtualNode and VirtualService), plus the load generator; for Istio's sidecars with
//! `IsmTLSEnabled` a STRICT PeerAuthentication, and for ambient with a waypoint its
//! Gateway. Every object carries `app.kubernetes.io/managed-by: meshload` and the run's id.

use std::fmt;
use std::str::FromStr;

use meshload_config::service::{self, SERVICE_PORT};
use meshload_config::{Behaviour, Config};
use serde_json::{Map, Value, json};
/// The load generator's port.
pub const LOADGEN_PORT: u16 = 8080;
/// The label naming the tool that manages an object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The label naming the run an object belongs to.
pub const RUN_LABEL: &str = "meshload.io/run";
/// The load generator's name.
pub const LOADGEN: &str = "meshload-loadgen";

/// Which service mesh the topology runs in on a cluster: [`meshload_config::Mesh`]
/// narrowed to what a cluster runs (not the local backend's `envoy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mesh {
    /// Plain Kubernetes.
    None,
    /// Istio (sidecar injection by namespace label).
    Istio,
    /// Istio's ambient mode (the namespace labelled for ambient; a waypoint with
    /// [`RenderOptions::waypoint`]).
    IstioAmbient,
    /// Linkerd (injection by namespace annotation).
    Linkerd,
    /// AWS App Mesh (Mesh, VirtualNodes, VirtualServices; injection by namespace labels).
    AppMesh,
}

impl TryFrom<meshload_config::Mesh> for Mesh {
    type Error = String;

    fn try_from(mesh: meshload_config::Mesh) -> Result<Mesh, String> {
        use meshload_config::Mesh as Any;
        match mesh {
            Any::None => Ok(Mesh::None),
            Any::Istio => Ok(Mesh::Istio),
            Any::IstioAmbient => Ok(Mesh::IstioAmbient),
            Any::Linkerd => Ok(Mesh::Linkerd),
            Any::AppMesh => Ok(Mesh::AppMesh),
            Any::Ambient => Err("--mesh ambient is the local backend's (Envoy as the node proxy); on Kubernetes use istio-ambient".to_string()),
            Any::AmbientWaypoint => Err("--mesh ambient-waypoint is the local backend's (Envoy as the node proxy and waypoint); on Kubernetes use istio-ambient --waypoint".to_string()),
            Any::Envoy => Err("--mesh envoy is the local backend's mesh; on Kubernetes use appmesh (App Mesh's Envoy), istio, istio-ambient or linkerd".to_string()),
        }
    }
}

impl From<Mesh> for meshload_config::Mesh {
    fn from(mesh: Mesh) -> meshload_config::Mesh {
        match mesh {
            Mesh::None => meshload_config::Mesh::None,
            Mesh::Istio => meshload_config::Mesh::Istio,
            Mesh::IstioAmbient => meshload_config::Mesh::IstioAmbient,
            Mesh::Linkerd => meshload_config::Mesh::Linkerd,
            Mesh::AppMesh => meshload_config::Mesh::AppMesh,
        }
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        meshload_config::Mesh::from(*self).fmt(f)
    }
}

/// Which load generator runs in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadGen {
    /// `meshload serve` (Fortio's REST API).
    Meshload,
    /// The official Fortio image, as the seed did.
    Fortio,
}

impl FromStr for LoadGen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "meshload" => Ok(LoadGen::Meshload),
            "fortio" => Ok(LoadGen::Fortio),
            other => Err(format!(
                "{other:?} is not a load generator: use meshload or fortio"
            )),
        }
    }
}

/// Container resources (Kubernetes quantities, e.g. `100m`, `64Mi`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// CPU request.
    pub cpu_request: Option<String>,
    /// Memory request.
    pub memory_request: Option<String>,
    /// CPU limit.
    pub cpu_limit: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
}

/// How to render.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// The mesh.
    pub mesh: Mesh,
    /// The namespace (default: the config's).
    pub namespace: String,
    /// The meshload image the nodes and the load generator run.
    pub image: String,
    /// The load generator.
    pub loadgen: LoadGen,
    /// The run's id, in a label of every object.
    pub run_id: String,
    /// Node container resources.
    pub resources: Resources,
    /// With [`Mesh::IstioAmbient`]: a waypoint (an L7 proxy) for the namespace's services.
    pub waypoint: bool,
    /// With [`Mesh::Linkerd`]: Linkerd's proxy as a native sidecar (an init container
    /// that keeps running, Kubernetes 1.29 and later), else as a classic one.
    pub linkerd_native_sidecar: bool,
}

impl RenderOptions {
    /// Options that do not fit the mesh, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.waypoint && self.mesh != Mesh::IstioAmbient {
            out.push(format!(
                "--waypoint applies to --mesh istio-ambient, not {}",
                self.mesh
            ));
        }
        if !self.linkerd_native_sidecar && self.mesh != Mesh::Linkerd {
            out.push(format!(
                "--linkerd-classic-sidecar applies to --mesh linkerd, not {}",
                self.mesh
            ));
        }
        out
    }
}

/// The waypoint's name (`istioctl waypoint apply`'s default), as the namespace's
/// `istio.io/use-waypoint` names it.
pub const WAYPOINT: &str = "waypoint";
/// Istio's port for HBONE, the waypoint's one listener.
pub const HBONE_PORT: u16 = 15008;

/// The Fortio image used with `--loadgen fortio`.
pub const FORTIO_IMAGE: &str = "fortio/fortio:latest";

fn labels(opts: &RenderOptions, extra: &[(&str, &str)]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(MANAGED_BY.into(), "meshload".into());
    m.insert(RUN_LABEL.into(), opts.run_id.clone().into());
    for (k, v) in extra {
        m.insert((*k).into(), (*v).into());
    }
    m
}

fn meta(name: &str, opts: &RenderOptions, extra: &[(&str, &str)]) -> Value {
    json!({"name": name, "namespace": opts.namespace, "labels": labels(opts, extra)})
}

/// `node-<name>`: the Deployment, app label and VirtualNode of a node.
pub fn deployment_name(node: &str) -> String {
    service::workload_name(node)
}

/// The App Mesh mesh's name.
pub fn mesh_name(opts: &RenderOptions) -> String {
    service::mesh_name(&opts.run_id)
}

/// Every object, in apply order (namespace and mesh first).
pub fn render(config: &Config, opts: &RenderOptions) -> Vec<Value> {
    let mut out = vec![namespace(opts)];
    if opts.mesh == Mesh::Istio && config.mtls {
        // IsmTLSEnabled: plain text refused between the workloads (Istio's default,
        // PERMISSIVE, takes both). Not in ambient: ztunnel carries every call of the mesh
        // in mutual TLS anyway, and STRICT would only shut out what is outside the mesh,
        // the cluster's Prometheus scraping the nodes among it.
        out.push(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": meta("default", opts, &[]),
            "spec": {"mtls": {"mode": "STRICT"}},
        }));
    }
    if opts.mesh == Mesh::IstioAmbient && opts.waypoint {
        out.push(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": meta(WAYPOINT, opts, &[("istio.io/waypoint-for", "service")]),
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE"}],
            },
        }));
    }
    if opts.mesh == Mesh::AppMesh {
        out.push(json!({
            "apiVersion": "appmesh.k8s.aws/v1beta2",
            "kind": "Mesh",
            "metadata": {"name": mesh_name(opts), "labels": labels(opts, &[])},
            "spec": {"namespaceSelector": {"matchLabels": {"mesh": mesh_name(opts)}}},
        }));
    }
    for (name, spec) in &config.nodes {
        out.push(deployment(
            name,
            spec.replicas,
            &spec.backends,
            &spec.behaviour,
            opts,
        ));
        for service in [deployment_name(name), service::service_name(name)] {
            out.push(service_object(
                &service,
                &deployment_name(name),
                SERVICE_PORT,
                opts,
            ));
        }
        if opts.mesh == Mesh::AppMesh {
            out.push(virtual_node(
                &deployment_name(name),
                &spec.backends,
                config,
                opts,
            ));
            out.push(virtual_service(name, opts));
        }
    }
    out.extend(loadgen(config, opts));
    out
}

fn namespace(opts: &RenderOptions) -> Value {
    let mut metadata = json!({"name": opts.namespace, "labels": labels(opts, &[])});
    match opts.mesh {
        Mesh::None => {}
        Mesh::Istio => {
            metadata["labels"]["istio-injection"] = "enabled".into();
        }
        Mesh::IstioAmbient => {
            metadata["labels"]["istio.io/dataplane-mode"] = "ambient".into();
            if opts.waypoint {
                metadata["labels"]["istio.io/use-waypoint"] = WAYPOINT.into();
            }
        }
        Mesh::Linkerd => {
            metadata["annotations"] = json!({"linkerd.io/inject": "enabled"});
            if opts.linkerd_native_sidecar {
                metadata["annotations"]["config.alpha.linkerd.io/proxy-enable-native-sidecar"] =
                    "true".into();
            }
        }
        Mesh::AppMesh => {
            metadata["labels"]["mesh"] = mesh_name(opts).into();
            metadata["labels"]["appmesh.k8s.aws/sidecarInjectorWebhook"] = "enabled".into();
        }
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
}

fn resources(r: &Resources) -> Value {
    let pick = |cpu: &Option<String>, mem: &Option<String>| {
        let mut m = Map::new();
        if let Some(c) = cpu {
            m.insert("cpu".into(), c.clone().into());
        }
        if let Some(x) = mem {
            m.insert("memory".into(), x.clone().into());
        }
        m
    };
    let mut out = Map::new();
    let requests = pick(&r.cpu_request, &r.memory_request);
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    let limits = pick(&r.cpu_limit, &r.memory_limit);
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(out)
}

fn deployment(
    name: &str,
    replicas: u32,
    backends: &[String],
    behaviour: &Behaviour,
    opts: &RenderOptions,
) -> Value {
    let app = deployment_name(name);
    let mut args = vec![
        "node".to_string(),
        format!("--listen=0.0.0.0:{SERVICE_PORT}"),
        format!("--name={name}"),
    ];
    args.extend(service::behaviour_flags(behaviour));
    let backends: Vec<String> = backends
        .iter()
        .map(|b| service::service_authority(b, &opts.namespace))
        .collect();
    let pod_labels = labels(opts, &[("app", &app), ("meshload.io/node", name)]);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(&app, opts, &[("app", &app)]),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": SERVICE_PORT.to_string(), "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "containers": [{
                        "name": "app",
                        "image": opts.image,
                        "args": args,
                        "env": [{"name": "BACKENDS", "value": backends.join(",")}],
                        "ports": [{"name": "http", "containerPort": SERVICE_PORT}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": SERVICE_PORT}, "periodSeconds": 2},
                        "resources": resources(&opts.resources),
                    }],
                },
            },
        },
    })
}

fn service_object(name: &str, app: &str, port: u16, opts: &RenderOptions) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, opts, &[("app", app)]),
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": port, "targetPort": port}]},
    })
}

fn virtual_node(name: &str, backends: &[String], config: &Config, opts: &RenderOptions) -> Value {
    let mut listener = json!({"portMapping": {"port": SERVICE_PORT, "protocol": "http"}});
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": name}},
        "listeners": [],
        "serviceDiscovery": {"dns": {"hostname": format!("{name}.{}", service::namespace_domain(&opts.namespace))}},
        "backends": backends.iter().map(|b| json!({"virtualService": {"virtualServiceRef": {"name": service::service_name(b)}}})).collect::<Vec<_>>(),
    });
    if config.mtls {
        let trust = json!({"sds": {"secretName": "spiffe://meshload.local"}});
        listener["tls"] = json!({"mode": "STRICT", "certificate": {"sds": {"secretName": format!("spiffe://meshload.local/{name}")}}, "validation": {"trust": trust}});
        spec["backendDefaults"] = json!({"clientPolicy": {"tls": {"enforce": true, "certificate": {"sds": {"secretName": format!("spiffe://meshload.local/{name}")}}, "validation": {"trust": trust}}}});
    } else if config.tls {
        listener["tls"] = json!({"mode": "STRICT", "certificate": {"file": {"certificateChain": format!("/certs/{name}_cert_chain.pem"), "privateKey": format!("/certs/{name}_key.pem")}}});
        spec["backendDefaults"] = json!({"clientPolicy": {"tls": {"enforce": true, "validation": {"trust": {"file": {"certificateChain": "/certs/ca_cert.pem"}}}}}});
    }
    spec["listeners"] = json!([listener]);
    json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "VirtualNode", "metadata": meta(name, opts, &[]), "spec": spec})
}

fn virtual_service(node: &str, opts: &RenderOptions) -> Value {
    let name = service::service_name(node);
    json!({
        "apiVersion": "appmesh.k8s.aws/v1beta2",
        "kind": "VirtualService",
        "metadata": meta(&name, opts, &[]),
        "spec": {
            "awsName": service::service_host(node, &opts.namespace),
            "provider": {"virtualNode": {"virtualNodeRef": {"name": deployment_name(node)}}},
        },
    })
}

fn loadgen(config: &Config, opts: &RenderOptions) -> Vec<Value> {
    let (image, args) = match opts.loadgen {
        LoadGen::Meshload => (
            opts.image.clone(),
            vec![
                "serve".to_string(),
                // Loopback only: reached by port-forward, never by another pod (it sends
                // load wherever it is asked to).
                format!("--listen=127.0.0.1:{LOADGEN_PORT}"),
            ],
        ),
        LoadGen::Fortio => (FORTIO_IMAGE.to_string(), vec!["server".to_string()]),
    };
    // A server on loopback cannot be probed from the kubelet: the image probes itself.
    let probe = match opts.loadgen {
        LoadGen::Meshload => json!({"exec": {"command": [
            "/meshload", "probe", format!("http://127.0.0.1:{LOADGEN_PORT}/health")
        ]}, "periodSeconds": 2}),
        LoadGen::Fortio => {
            json!({"httpGet": {"path": "/fortio/", "port": LOADGEN_PORT}, "periodSeconds": 2})
        }
    };
    let mut out = vec![
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(LOADGEN, opts, &[("app", LOADGEN)]),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": LOADGEN}},
                "template": {
                    "metadata": {"labels": labels(opts, &[("app", LOADGEN)])},
                    "spec": {"containers": [{
                        "name": "app",
                        "image": image,
                        "args": args,
                        "ports": [{"name": "http", "containerPort": LOADGEN_PORT}],
                        "readinessProbe": probe,
                    }]},
                },
            },
        }),
        service_object(LOADGEN, LOADGEN, LOADGEN_PORT, opts),
    ];
    if opts.mesh == Mesh::AppMesh {
        // The load generator sits in the mesh too, allowed to call every service (as the
        // seed's Fortio did).
        let all: Vec<String> = config.nodes.keys().cloned().collect();
        let mut vn = virtual_node(LOADGEN, &all, config, opts);
        vn["spec"]["listeners"][0]["portMapping"]["port"] = LOADGEN_PORT.into();
        if let Some(l) = vn["spec"]["listeners"][0].as_object_mut() {
            l.remove("tls");
        }
        out.push(vn);
    }
    out
}

/// Objects as a multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(o).map_err(|e| e.to_string())?);
    }
    Ok(out)
}
