//! Envoy as ambient's node proxy: the architecture of Istio's first ambient releases
//! (1.15 to 1.17, before ztunnel was rewritten in Rust), where one shared proxy per host
//! carries every call of the host's pods in HBONE tunnels.
//!
//! HBONE is HTTP/2 `CONNECT` over mutual TLS (Istio's port 15008), the destination
//! workload's `IP:port` in the `:authority`. Each host's node proxy has:
//! - *outbound* listeners, one per destination replica its pods call (a local stand-in
//!   for the pod IP that ztunnel captures): a `tcp_proxy` that opens a `CONNECT` tunnel
//!   to the destination host's node proxy, `:authority` the replica's address;
//! - one *HBONE* listener that terminates tunnels: TLS demanding a client certificate
//!   from the run's CA, an HTTP/2 connection manager that accepts `CONNECT` and routes
//!   by `:authority` to the local replica named (an unknown one gets 404).
//!
//! With waypoints, a service's callers tunnel to its *waypoint* instead ([`Waypoint`]):
//! an L7 Envoy that balances each request over the replicas and tunnels on to their
//! hosts' node proxies, HBONE on both legs.
//!
//! Named as Istio names them, so that queries written for a cluster answer locally: pod
//! `ztunnel-<host>`, container `istio-proxy`, namespace `istio-system`; waypoints pods
//! `waypoint-<service>-0` of the Gateway `waypoint-<service>`. Each proxy's certificate
//! names its pod (checked by the callers) and the workloads it speaks for (SPIFFE URIs,
//! as Istio's identities are).

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::envoy::{TlsFiles, certificate, http_filters, socket, static_cluster};

/// The namespace of the node proxies, as Istio installs ztunnel.
pub const NAMESPACE: &str = "istio-system";

/// `ztunnel-<host>`: the node proxy's pod (and Envoy node id).
pub fn pod(host: &str) -> String {
    format!("ztunnel-{host}")
}

/// The HBONE tunnels' stat prefix: `http.<prefix>.downstream_cx_upgrades_total` counts the
/// `CONNECT` streams a node proxy terminated.
pub const HBONE_STATS: &str = "hbone_inbound";

/// The outbound tunnels' stat prefix, shared by every outbound listener of a proxy:
/// `tcp.<prefix>.downstream_cx_total` counts the connections it tunnelled.
pub const OUTBOUND_STATS: &str = "outbound";

/// A tunnel's far end: the proxy that terminates it and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunnel {
    /// The `CONNECT` authority: a replica's `IP:port`, or a service's name and port (to
    /// its waypoint).
    pub authority: String,
    /// The terminating proxy's pod (`ztunnel-<host>`, `waypoint-<service>-0`): its
    /// certificate must name it.
    pub peer: String,
    /// The terminating proxy's HBONE listener.
    pub hbone: SocketAddr,
}

/// One destination a host's pods call: a replica (or, with waypoints, a service).
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    /// Where the host's pods connect for it (the stand-in for its pod IP or service VIP).
    pub listen: SocketAddr,
    /// Where each connection is tunnelled.
    pub tunnel: Tunnel,
}

/// Everything one node proxy's bootstrap needs.
#[derive(Debug, Clone)]
pub struct NodeProxy {
    /// The host it serves.
    pub host: String,
    /// Its admin listener (`/stats`, `/ready`).
    pub admin: SocketAddr,
    /// Its HBONE listener.
    pub hbone: SocketAddr,
    /// The replicas on its host, which its tunnels reach.
    pub local: Vec<SocketAddr>,
    /// The replicas its host's pods call.
    pub outbound: Vec<Outbound>,
    /// Its identity from the run's CA (mutual TLS always: HBONE has no plain form).
    pub files: TlsFiles,
}

/// A service's waypoint: an L7 proxy (Envoy, as Istio's is) that every call to the
/// service crosses. It terminates the callers' tunnels for the service's authority, hands
/// the stream to an internal listener that parses HTTP and balances each request over
/// the replicas, and carries each upstream connection in a tunnel of its own to the
/// replica's host's node proxy: HBONE on both legs.
#[derive(Debug, Clone)]
pub struct Waypoint {
    /// The service (a node's name): its pod is `waypoint-<service>-0`.
    pub service: String,
    /// The service's authority that callers' tunnels name.
    pub authority: String,
    /// Its admin listener.
    pub admin: SocketAddr,
    /// Its HBONE listener.
    pub hbone: SocketAddr,
    /// One tunnel per replica of the service, to the replica's host's node proxy.
    pub replicas: Vec<Tunnel>,
    /// Its identity from the run's CA.
    pub files: TlsFiles,
}

/// `waypoint-<service>`: a service's waypoint, as its Gateway is named (the pods'
/// `gateway.networking.k8s.io/gateway-name` label).
pub fn waypoint_gateway(service: &str) -> String {
    format!("waypoint-{service}")
}

/// `waypoint-<service>-0`: the waypoint's pod (and Envoy node id).
pub fn waypoint_pod(service: &str) -> String {
    format!("{}-0", waypoint_gateway(service))
}

/// The waypoints' HTTP stat prefix: `http.<prefix>.downstream_rq_total` counts the
/// requests a waypoint routed.
pub const WAYPOINT_STATS: &str = "waypoint";

/// The internal listener between a waypoint's tunnels and its HTTP routing.
const MAIN_INTERNAL: &str = "main_internal";

fn tunnel_cluster_name(peer: &str) -> String {
    format!("hbone_{peer}")
}

fn local_cluster(replica: SocketAddr) -> String {
    format!("inbound_{replica}")
}

/// The client side of tunnels to `peer`: HTTP/2 over TLS, the peer's certificate checked
/// for its name, this proxy's own presented.
fn tunnel_cluster(peer: &str, hbone: SocketAddr, files: &TlsFiles) -> Value {
    let mut cluster = static_cluster(&tunnel_cluster_name(peer), &[hbone], None);
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        },
    });
    cluster["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": peer,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": certificate(files),
                "validation_context": {
                    "trusted_ca": {"filename": files.ca.display().to_string()},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": peer}}],
                },
            },
        },
    });
    cluster
}

/// One tunnel cluster per peer the tunnels go to.
fn tunnel_clusters<'a>(tunnels: impl Iterator<Item = &'a Tunnel>, files: &TlsFiles) -> Vec<Value> {
    let mut peers: Vec<(&str, SocketAddr)> = tunnels.map(|t| (t.peer.as_str(), t.hbone)).collect();
    peers.sort();
    peers.dedup();
    peers
        .into_iter()
        .map(|(peer, hbone)| tunnel_cluster(peer, hbone, files))
        .collect()
}

/// A virtual host that accepts `CONNECT` for `authority` and hands the stream to
/// `cluster`.
fn connect_route(authority: &str, cluster: &str) -> Value {
    json!({
        "name": authority,
        "domains": [authority],
        "routes": [{
            "match": {"connect_matcher": {}},
            "route": {
                "cluster": cluster,
                "timeout": "0s",
                "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
            },
        }],
    })
}

/// An HBONE listener: mutual TLS, then `CONNECT` routed by `:authority`.
fn hbone_listener(addr: SocketAddr, files: &TlsFiles, virtual_hosts: Vec<Value>) -> Value {
    json!({
        "name": "hbone",
        "address": socket(addr),
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": certificate(files),
                        "validation_context": {"trusted_ca": {"filename": files.ca.display().to_string()}},
                    },
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": HBONE_STATS,
                    "codec_type": "HTTP2",
                    // A tunnel lives as long as its connection, idle or not (Envoy's
                    // default would reset it after 5 idle minutes; ztunnel does not).
                    "stream_idle_timeout": "0s",
                    "http2_protocol_options": {"allow_connect": true},
                    "upgrade_configs": [{"upgrade_type": "CONNECT"}],
                    "route_config": {"name": "hbone", "virtual_hosts": virtual_hosts},
                    "http_filters": http_filters(),
                },
            }],
        }],
    })
}

/// A `tcp_proxy` that carries each connection in a tunnel.
fn tunnel_filter(tunnel: &Tunnel) -> Value {
    json!({"filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": OUTBOUND_STATS,
            "cluster": tunnel_cluster_name(&tunnel.peer),
            "tunneling_config": {"hostname": tunnel.authority},
        },
    }]})
}

/// An outbound listener: every connection becomes one tunnel.
fn outbound_listener(o: &Outbound) -> Value {
    json!({
        "name": format!("outbound_{}", o.tunnel.authority),
        "address": socket(o.listen),
        "filter_chains": [tunnel_filter(&o.tunnel)],
    })
}

/// The node proxy's static bootstrap.
pub fn bootstrap(p: &NodeProxy) -> Value {
    let routes = p
        .local
        .iter()
        .map(|replica| connect_route(&replica.to_string(), &local_cluster(*replica)))
        .collect();
    let mut listeners = vec![hbone_listener(p.hbone, &p.files, routes)];
    listeners.extend(p.outbound.iter().map(outbound_listener));
    let mut clusters: Vec<Value> = p
        .local
        .iter()
        .map(|replica| static_cluster(&local_cluster(*replica), &[*replica], None))
        .collect();
    clusters.extend(tunnel_clusters(
        p.outbound.iter().map(|o| &o.tunnel),
        &p.files,
    ));
    json!({
        "node": {"id": pod(&p.host), "cluster": "ztunnel"},
        "admin": {"address": socket(p.admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// A cluster whose endpoints are internal listeners of the same Envoy.
fn internal_cluster(name: &str, listeners: &[String]) -> Value {
    let lb_endpoints: Vec<Value> = listeners
        .iter()
        .map(|l| json!({"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": l}}}}))
        .collect();
    let mut cluster = static_cluster(name, &[], None);
    cluster["load_assignment"]["endpoints"] = json!([{"lb_endpoints": lb_endpoints}]);
    cluster
}

/// The internal listener that originates the tunnel to one replica.
fn originate_listener(tunnel: &Tunnel) -> String {
    format!("connect_originate_{}", tunnel.authority)
}

/// A waypoint's static bootstrap: its HBONE listener hands the service's tunnels to the
/// internal `main_internal` listener (HTTP, stat prefix [`WAYPOINT_STATS`]), whose route
/// balances requests round robin over one internal listener per replica, each of which
/// tunnels to the replica's host's node proxy.
pub fn waypoint_bootstrap(w: &Waypoint) -> Value {
    let service_cluster = format!("service_{}", w.service);
    let route = connect_route(&w.authority, MAIN_INTERNAL);
    let mut listeners = vec![hbone_listener(w.hbone, &w.files, vec![route])];
    listeners.push(json!({
        "name": MAIN_INTERNAL,
        "internal_listener": {},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": WAYPOINT_STATS,
                "codec_type": "AUTO",
                "route_config": {"name": "waypoint", "virtual_hosts": [{
                    "name": w.service,
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": service_cluster, "timeout": "0s"}}],
                }]},
                "http_filters": http_filters(),
            },
        }]}],
    }));
    listeners.extend(w.replicas.iter().map(|t| {
        json!({
            "name": originate_listener(t),
            "internal_listener": {},
            "filter_chains": [tunnel_filter(t)],
        })
    }));
    let originate: Vec<String> = w.replicas.iter().map(originate_listener).collect();
    let mut clusters = vec![
        internal_cluster(MAIN_INTERNAL, &[MAIN_INTERNAL.to_string()]),
        internal_cluster(&service_cluster, &originate),
    ];
    clusters.extend(tunnel_clusters(w.replicas.iter(), &w.files));
    json!({
        "node": {"id": waypoint_pod(&w.service), "cluster": "waypoint"},
        "admin": {"address": socket(w.admin)},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
        }],
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> TlsFiles {
        TlsFiles {
            ca: "/run/ca.pem".into(),
            cert: "/run/a.pem".into(),
            key: "/run/a-key.pem".into(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn tunnel(authority: &str, peer: &str, port: u16) -> Tunnel {
        Tunnel {
            authority: authority.into(),
            peer: peer.into(),
            hbone: addr(port),
        }
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .expect("a list")
            .iter()
            .map(|c| c["name"].as_str().expect("a name"))
            .collect()
    }

    #[test]
    fn a_node_proxy_tunnels_out_per_replica_and_terminates_by_authority() {
        let proxy = NodeProxy {
            host: "a".into(),
            admin: addr(15000),
            hbone: addr(15008),
            local: vec![addr(20001)],
            outbound: vec![
                Outbound {
                    listen: addr(21001),
                    tunnel: tunnel("127.0.0.1:20002", "ztunnel-b", 15108),
                },
                Outbound {
                    listen: addr(21002),
                    tunnel: tunnel("127.0.0.1:20003", "ztunnel-b", 15108),
                },
            ],
            files: files(),
        };
        let b = bootstrap(&proxy);
        assert_eq!(b["node"]["id"], "ztunnel-a");
        let listeners = b["static_resources"]["listeners"]
            .as_array()
            .expect("listeners");
        assert_eq!(listeners.len(), 3, "HBONE and one per destination replica");
        let hbone = &listeners[0]["filter_chains"][0];
        assert_eq!(
            hbone["transport_socket"]["typed_config"]["require_client_certificate"],
            true
        );
        let route = &hbone["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0];
        assert_eq!(route["domains"], json!(["127.0.0.1:20001"]));
        let tunnel = &listeners[1]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(tunnel["cluster"], "hbone_ztunnel-b");
        assert_eq!(tunnel["tunneling_config"]["hostname"], "127.0.0.1:20002");
        let clusters = &b["static_resources"]["clusters"];
        assert_eq!(
            names(clusters),
            ["inbound_127.0.0.1:20001", "hbone_ztunnel-b"],
            "one tunnel cluster per peer"
        );
        let san = &clusters[1]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
            ["match_typed_subject_alt_names"][0];
        assert_eq!(san["matcher"]["exact"], "ztunnel-b");
    }

    #[test]
    fn a_waypoint_terminates_its_service_and_tunnels_each_replica_on() {
        let w = Waypoint {
            service: "db".into(),
            authority: "service-db.perf.svc.cluster.local:9080".into(),
            admin: addr(15000),
            hbone: addr(15008),
            replicas: vec![
                tunnel("127.0.0.1:20001", "ztunnel-a", 15108),
                tunnel("127.0.0.1:20002", "ztunnel-b", 15208),
            ],
            files: files(),
        };
        let b = waypoint_bootstrap(&w);
        assert_eq!(b["node"]["id"], "waypoint-db-0");
        let listeners = &b["static_resources"]["listeners"];
        assert_eq!(
            names(listeners),
            [
                "hbone",
                "main_internal",
                "connect_originate_127.0.0.1:20001",
                "connect_originate_127.0.0.1:20002"
            ]
        );
        let accepted = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0];
        assert_eq!(accepted["domains"], json!([w.authority]));
        assert_eq!(accepted["routes"][0]["route"]["cluster"], "main_internal");
        let http = &listeners[1]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(http["stat_prefix"], WAYPOINT_STATS);
        let clusters = &b["static_resources"]["clusters"];
        assert_eq!(
            names(clusters),
            [
                "main_internal",
                "service_db",
                "hbone_ztunnel-a",
                "hbone_ztunnel-b"
            ]
        );
        let endpoints = &clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"];
        assert_eq!(
            endpoints[1]["endpoint"]["address"]["envoy_internal_address"]["server_listener_name"],
            "connect_originate_127.0.0.1:20002"
        );
    }
}
