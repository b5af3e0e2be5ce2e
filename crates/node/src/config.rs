//! What a node is told: its name, address, backends, behaviour and limits.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use http::Uri;

use crate::behaviour::Behaviour;

/// An error in a backend address.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BackendError {
    /// The entry is not a URL or `host:port`.
    #[error("invalid backend {0:?}: expected http://HOST:PORT/PATH or HOST:PORT")]
    Invalid(String),
    /// The URL uses a scheme the node cannot call.
    #[error(
        "invalid backend {0:?}: only http:// is supported (a mesh sidecar terminates TLS for the app)"
    )]
    Scheme(String),
}

/// One backend a node calls on every request.
#[derive(Debug, Clone)]
pub struct Backend {
    uri: Uri,
    /// Where the backend's service name resolves to (its replicas), when pinned with
    /// `--resolve`; empty means DNS. Calls go round-robin over these endpoints, as a
    /// Kubernetes Service spreads them over its pods.
    endpoints: Vec<SocketAddr>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri && self.endpoints == other.endpoints
    }
}

impl Eq for Backend {}

impl Backend {
    /// The full URL called, path included.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The replicas this backend's name resolves to (empty: DNS).
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Pins the backend's name to these addresses.
    pub fn resolve_to(&mut self, endpoints: Vec<SocketAddr>) {
        self.endpoints = endpoints;
    }

    /// The URI of the next call: the next replica's address when resolved by `--resolve`,
    /// else the backend's own URI. The caller keeps the backend's authority as `Host`.
    pub fn next_uri(&self) -> Uri {
        if self.endpoints.is_empty() {
            return self.uri.clone();
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.endpoints.len();
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        Uri::builder()
            .scheme("http")
            .authority(self.endpoints[i].to_string())
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| self.uri.clone())
    }

    /// `host:port`, as used in metric labels and error reports.
    pub fn authority(&self) -> &str {
        self.uri.authority().map_or("", |a| a.as_str())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

impl FromStr for Backend {
    type Err = BackendError;

    /// Accepts `http://host:port/path`, `http://host:port` (path `/`), and the
    /// Kubernetes-service style `host:port` (scheme `http`).
    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let invalid = || BackendError::Invalid(entry.to_string());
        let text = entry.trim();
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = with_scheme.parse().map_err(|_| invalid())?;
        if uri.scheme_str() != Some("http") {
            return Err(BackendError::Scheme(entry.to_string()));
        }
        let host = uri.host().ok_or_else(invalid)?;
        if host.is_empty() {
            return Err(invalid());
        }
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme("http")
            .authority(format!(
                "{}:{port}",
                uri.authority().map_or(host, |a| a.host())
            ))
            .path_and_query(path)
            .build()
            .map_err(|_| invalid())?;
        Ok(Backend {
            uri,
            endpoints: Vec::new(),
            next: Default::default(),
        })
    }
}

/// One `--resolve HOST:PORT=ADDR[,ADDR...]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    /// `host:port` as backends name it.
    pub authority: String,
    /// The addresses it resolves to.
    pub addrs: Vec<SocketAddr>,
}

impl FromStr for Resolve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid resolve entry {s:?}: expected HOST:PORT=ADDR[,ADDR...]");
        let (authority, addrs) = s.split_once('=').ok_or_else(bad)?;
        let addrs: Vec<SocketAddr> = addrs
            .split(',')
            .map(|a| a.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        if authority.trim().is_empty() || addrs.is_empty() {
            return Err(bad());
        }
        Ok(Resolve {
            authority: authority.trim().to_string(),
            addrs,
        })
    }
}

/// Pins every backend whose `host:port` has a resolve entry to that entry's addresses.
pub fn apply_resolves(backends: &mut [Backend], resolves: &[Resolve]) {
    for b in backends {
        if let Some(r) = resolves.iter().find(|r| r.authority == b.authority()) {
            b.resolve_to(r.addrs.clone());
        }
    }
}

/// Parses a comma-separated backend list as `BACKENDS` holds it. Empty entries are
/// skipped (`"a,,b"` and a trailing comma are common in generated values); an empty
/// list means a leaf node.
pub fn parse_backends(list: &str) -> Result<Vec<Backend>, BackendError> {
    list.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(str::parse)
        .collect()
}

pub use meshload_config::behaviour::CallMode;

/// Default header-read timeout: hyper's own default for HTTP/1 servers is 30 s; a node
/// answers machines, not people typing, so it gives them a third of that.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keep-alive idle timeout: 5 minutes, Envoy's default `stream_idle_timeout`;
/// shorter than the hour of Envoy's connection `idle_timeout`, since at the connection
/// limit idle connections make way anyway.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default body-read timeout, as long as the header-read one.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds that keep a node alive under abuse.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; further connections wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Longest time one request may take, backend calls included, before a 504.
    pub request_timeout: Duration,
    /// Time a new connection has to send a whole request head before it is closed
    /// (slow and silent clients alike).
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may stay idle between requests before it is closed.
    pub idle_timeout: Duration,
    /// Time a client has to send a request body once its head arrived, before a 408.
    pub body_read_timeout: Duration,
    /// Longest time to wait for in-flight requests on shutdown.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Name reported in bodies and logs (the topology node's name).
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Backends called on every request.
    pub backends: Vec<Backend>,
    /// Parallel or sequential calls.
    pub call_mode: CallMode,
    /// Timeout of one backend call (connect, response and body).
    pub call_timeout: Duration,
    /// Injected latency, errors and response size.
    pub behaviour: Behaviour,
    /// Resource bounds.
    pub limits: Limits,
    /// A known capacity (`--capacity`), for capacity searches to find.
    pub capacity: Option<crate::capacity::Capacity>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_accept_urls_and_host_port() {
        let b: Backend = "http://127.0.0.1:9081/x?y=1".parse().expect("valid");
        assert_eq!(b.uri().to_string(), "http://127.0.0.1:9081/x?y=1");
        assert_eq!(b.authority(), "127.0.0.1:9081");
        let b: Backend = "service-1.tls-e2e.svc.cluster.local:9080"
            .parse()
            .expect("valid");
        assert_eq!(
            b.uri().to_string(),
            "http://service-1.tls-e2e.svc.cluster.local:9080/"
        );
        let b: Backend = "http://localhost".parse().expect("valid");
        assert_eq!(b.authority(), "localhost:80");
    }

    #[test]
    fn bad_backends_are_rejected_with_the_value() {
        for bad in [
            "http://",
            "a b:80",
            "https://x:1/",
            "ftp://x/",
            "http://:80/",
        ] {
            let err = bad.parse::<Backend>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn resolved_backends_go_round_robin_over_replicas() {
        let mut backends =
            parse_backends("http://service-1.ns.svc.cluster.local:9080/x").expect("valid");
        let resolve: Resolve = "service-1.ns.svc.cluster.local:9080=127.0.0.1:1,127.0.0.1:2"
            .parse()
            .expect("valid");
        apply_resolves(&mut backends, &[resolve]);
        let uris: Vec<String> = (0..3).map(|_| backends[0].next_uri().to_string()).collect();
        assert_eq!(
            uris,
            [
                "http://127.0.0.1:1/x",
                "http://127.0.0.1:2/x",
                "http://127.0.0.1:1/x"
            ]
        );
        assert!("nonsense".parse::<Resolve>().is_err());
        assert!("a:1=notanaddr".parse::<Resolve>().is_err());
    }

    #[test]
    fn backend_lists_skip_empty_entries() {
        let list = parse_backends("127.0.0.1:1, ,http://127.0.0.1:2/,").expect("valid");
        assert_eq!(list.len(), 2);
        assert!(parse_backends("").expect("empty is a leaf").is_empty());
        assert!(parse_backends("127.0.0.1:1,not a url").is_err());
    }
}
