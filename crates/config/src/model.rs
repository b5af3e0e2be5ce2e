//! The validated configuration that the rest of meshload takes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::behaviour::Behaviour;
use crate::search::SearchSpec;
use crate::slo::Slo;

/// One node of the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Backends it calls (node names), in order.
    pub backends: Vec<String>,
    /// Replicas (processes or pods).
    pub replicas: u32,
    /// Injected behaviour.
    pub behaviour: Behaviour,
    /// With `--mesh ambient`, the simulated host its replicas run on (`"host"`; `None`:
    /// spread over the hosts in turn).
    pub host: Option<String>,
}

/// Where a load test sends its load.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadTest {
    /// `test_name`: the results folder's name.
    pub name: String,
    /// The node the URL (or `target`) names.
    pub target: String,
    /// The URL as written (Kubernetes form), or one built from `target`.
    pub url: String,
    /// Path and query of the URL.
    pub path: String,
    /// Requests per second; `None` is as fast as possible.
    pub qps: Option<f64>,
    /// Duration.
    pub duration: Duration,
    /// Connections.
    pub connections: u32,
    /// Exact request count, if given.
    pub requests: Option<u64>,
    /// Fortio's `uniform`.
    pub uniform: bool,
    /// Fortio's `jitter`.
    pub jitter: bool,
    /// Fortio's `nocatchup`.
    pub nocatchup: bool,
    /// Fortio's `stdclient`: HTTP/1.1 through hyper's client rather than the fast one.
    pub std_client: bool,
    /// Per-request timeout.
    pub timeout: Option<Duration>,
    /// Extra headers, `Name: value`.
    pub headers: Vec<String>,
    /// POST body.
    pub payload: Option<String>,
    /// Labels stored with the result.
    pub labels: String,
    /// Thresholds that fail the run (exit 1) when missed.
    pub slo: Slo,
    /// When set, the test is a capacity search: its rate is ramped and bisected, and
    /// `qps`, `t` (and `c`, unless the search sets it) are the search's to choose.
    pub search: Option<SearchSpec>,
    /// Runs of the test per arm (`repeat`, the test's or the config's; 1 by default).
    pub repeat: u32,
}

/// Which Prometheus answers the metric queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrometheusSetting {
    /// The embedded engine over the samples meshload collects (the default).
    Embedded,
    /// Start the `prometheus` binary with a generated scrape config.
    Spawn,
    /// An existing server.
    Url(String),
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The meshes to run under (`"mesh"`), in order; empty: the command line's choice,
    /// else none.
    pub meshes: Vec<crate::Mesh>,
    /// With `--mesh ambient`, how many simulated hosts the replicas spread over
    /// (`"hosts"`; `None`: the default).
    pub hosts: Option<u32>,
    /// The seed's `IsTLSEnabled`.
    pub tls: bool,
    /// The seed's `IsmTLSEnabled`.
    pub mtls: bool,
    /// Requests per service in the connectivity check (`ConnectivityCheckPerURL`).
    pub connectivity_checks: u32,
    /// The nodes by name.
    pub nodes: BTreeMap<String, NodeSpec>,
    /// The load tests, in order.
    pub tests: Vec<LoadTest>,
    /// Metric queries by name, in file order.
    pub metrics: Vec<(String, String)>,
    /// Pause between tests.
    pub sleep_between_tests: Duration,
    /// How often samples are collected during a test.
    pub scrape_interval: Duration,
    /// Step of the metric range queries.
    pub metrics_step: Duration,
    /// Where results go (`None`: the command's default).
    pub store: Option<String>,
    /// Who answers the metric queries.
    pub prometheus: PrometheusSetting,
    /// The Kubernetes namespace the URLs name (`tls-e2e` in the seed).
    pub namespace: String,
    /// The whole file as read, stored with every run.
    pub raw: serde_json::Value,
}

impl Config {
    /// The config with its services in namespace `namespace` instead: test URLs that
    /// name the old one (`http://service-<node>.<old>.svc.cluster.local:9080/`) name the
    /// new one. `raw` stays the file as written.
    pub fn in_namespace(mut self, namespace: &str) -> Config {
        let old = format!(".{}", crate::service::namespace_domain(&self.namespace));
        let new = format!(".{}", crate::service::namespace_domain(namespace));
        for test in &mut self.tests {
            let Some(rest) = test.url.strip_prefix("http://") else {
                continue;
            };
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            test.url = format!("http://{}{path}", authority.replacen(&old, &new, 1));
        }
        self.namespace = namespace.to_string();
        self
    }
}
