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
//! Named as Istio names them, so that queries written for a cluster answer locally: pod
//! `ztunnel-<host>`, container `istio-proxy`, namespace `istio-system`. Each proxy's
//! certificate names its host's proxy (`ztunnel-<host>`, checked by the callers) and the
//! workloads it speaks for (SPIFFE URIs, as Istio's identities are).

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

/// One destination replica a host's pods call.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    /// Where the host's pods connect for it (the stand-in for its pod IP).
    pub listen: SocketAddr,
    /// The replica's own address: the tunnel's `:authority`.
    pub replica: SocketAddr,
    /// The destination host's name.
    pub host: String,
    /// The destination host's node proxy's HBONE listener.
    pub hbone: SocketAddr,
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

fn hbone_cluster(host: &str) -> String {
    format!("hbone_{host}")
}

fn local_cluster(replica: SocketAddr) -> String {
    format!("inbound_{replica}")
}

/// The client side of a tunnel: HTTP/2 over TLS, the destination proxy's certificate
/// checked for its name, this proxy's own presented.
fn tunnel_cluster(host: &str, hbone: SocketAddr, files: &TlsFiles) -> Value {
    let name = pod(host);
    let mut cluster = static_cluster(&hbone_cluster(host), &[hbone], None);
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
            "sni": name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": certificate(files),
                "validation_context": {
                    "trusted_ca": {"filename": files.ca.display().to_string()},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": name}}],
                },
            },
        },
    });
    cluster
}

/// The HBONE listener: mutual TLS, then `CONNECT` routed by `:authority` to a local
/// replica.
fn hbone_listener(p: &NodeProxy) -> Value {
    let virtual_hosts: Vec<Value> = p
        .local
        .iter()
        .map(|replica| {
            json!({
                "name": replica.to_string(),
                "domains": [replica.to_string()],
                "routes": [{
                    "match": {"connect_matcher": {}},
                    "route": {
                        "cluster": local_cluster(*replica),
                        "timeout": "0s",
                        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                    },
                }],
            })
        })
        .collect();
    json!({
        "name": "hbone",
        "address": socket(p.hbone),
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": certificate(&p.files),
                        "validation_context": {"trusted_ca": {"filename": p.files.ca.display().to_string()}},
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

/// An outbound listener: every connection becomes one tunnel to the replica.
fn outbound_listener(o: &Outbound) -> Value {
    let name = format!("outbound_{}", o.replica);
    json!({
        "name": name,
        "address": socket(o.listen),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": OUTBOUND_STATS,
                "cluster": hbone_cluster(&o.host),
                "tunneling_config": {"hostname": o.replica.to_string()},
            },
        }]}],
    })
}

/// The node proxy's static bootstrap.
pub fn bootstrap(p: &NodeProxy) -> Value {
    let mut listeners = vec![hbone_listener(p)];
    listeners.extend(p.outbound.iter().map(outbound_listener));
    let mut clusters: Vec<Value> = p
        .local
        .iter()
        .map(|replica| static_cluster(&local_cluster(*replica), &[*replica], None))
        .collect();
    let mut hosts: Vec<(&str, SocketAddr)> = p
        .outbound
        .iter()
        .map(|o| (o.host.as_str(), o.hbone))
        .collect();
    hosts.sort();
    hosts.dedup();
    clusters.extend(
        hosts
            .into_iter()
            .map(|(host, hbone)| tunnel_cluster(host, hbone, &p.files)),
    );
    json!({
        "node": {"id": pod(&p.host), "cluster": "ztunnel"},
        "admin": {"address": socket(p.admin)},
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
                    replica: addr(20002),
                    host: "b".into(),
                    hbone: addr(15108),
                },
                Outbound {
                    listen: addr(21002),
                    replica: addr(20003),
                    host: "b".into(),
                    hbone: addr(15108),
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
        assert_eq!(tunnel["cluster"], "hbone_b");
        assert_eq!(tunnel["tunneling_config"]["hostname"], "127.0.0.1:20002");
        let clusters = b["static_resources"]["clusters"]
            .as_array()
            .expect("clusters");
        let names: Vec<&str> = clusters
            .iter()
            .map(|c| c["name"].as_str().expect("a name"))
            .collect();
        assert_eq!(
            names,
            ["inbound_127.0.0.1:20001", "hbone_b"],
            "one tunnel cluster per host"
        );
        let san = &clusters[1]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
            ["match_typed_subject_alt_names"][0];
        assert_eq!(san["matcher"]["exact"], "ztunnel-b");
    }
}
