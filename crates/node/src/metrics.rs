//! The node's Prometheus metrics and their text exposition.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use meshload_process::resources::ProcessCollector;

/// Content type of [`NodeMetrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of [`NodeMetrics::encode_prometheus_text`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds in seconds, from 100 µs to 10 s: a loopback call takes ~100 µs, and
/// injected latencies and timeouts reach seconds.
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    code: u16,
}

/// Labels of a backend call: `code` is the status, or the failure kind (`timeout`,
/// `refused`, `reset`, `error`) when no response arrived.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendCallLabels {
    backend: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

/// All metrics of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histogram,
    in_flight: Gauge,
    backend_calls: Family<BackendCallLabels, Counter>,
    backend_duration: Family<BackendLabels, Histogram, fn() -> Histogram>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Registers every metric, the `process_*` ones included.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "meshload_node_requests",
            "Requests served, by status code",
            requests.clone(),
        );
        let request_duration = duration_histogram();
        registry.register(
            "meshload_node_request_duration_seconds",
            "Time from request to response, backend calls included",
            request_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "meshload_node_in_flight_requests",
            "Requests being served now",
            in_flight.clone(),
        );
        let backend_calls = Family::<BackendCallLabels, Counter>::default();
        registry.register(
            "meshload_node_backend_calls",
            "Calls to backends, by backend and status code (or failure kind when no response came)",
            backend_calls.clone(),
        );
        let backend_duration: Family<BackendLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "meshload_node_backend_call_duration_seconds",
            "Duration of calls to backends, failures included",
            backend_duration.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        NodeMetrics {
            registry,
            requests,
            request_duration,
            in_flight,
            backend_calls,
            backend_duration,
        }
    }

    /// Records a served request.
    pub fn observe_request(&self, code: u16, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { code }).inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// Records a backend call; `code` is a status or a failure kind.
    pub fn observe_backend_call(&self, backend: &str, code: &str, elapsed: Duration) {
        let labels = BackendCallLabels {
            backend: backend.to_string(),
            code: code.to_string(),
        };
        self.backend_calls.get_or_create(&labels).inc();
        let labels = BackendLabels {
            backend: backend.to_string(),
        };
        self.backend_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn start_request(&self) -> InFlightGuard<'_> {
        self.in_flight.inc();
        InFlightGuard {
            gauge: &self.in_flight,
        }
    }

    /// The Prometheus text format (0.0.4) exposition, for scrapers that do not ask for
    /// OpenMetrics (curl, `promtool check metrics`, older agents).
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Decrements the in-flight gauge when a request ends, however it ends.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    gauge: &'a Gauge,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: counter families are named
/// with their `_total` suffix (OpenMetrics names the family without it), and the `# UNIT`
/// and `# EOF` lines, which 0.0.4 does not have, are dropped.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match descriptor {
            Some(rewritten) => out.push_str(&rewritten),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = NodeMetrics::new();
        m.observe_request(200, Duration::from_millis(3));
        m.observe_backend_call("127.0.0.1:1", "refused", Duration::from_millis(1));
        {
            let _guard = m.start_request();
            assert!(m.encode().contains("meshload_node_in_flight_requests 1"));
        }
        let text = m.encode();
        for needle in [
            "meshload_node_requests_total{code=\"200\"} 1",
            "meshload_node_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "meshload_node_in_flight_requests 0",
            "meshload_node_backend_calls_total{backend=\"127.0.0.1:1\",code=\"refused\"} 1",
            "meshload_node_backend_call_duration_seconds_count{backend=\"127.0.0.1:1\"} 1",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let m = NodeMetrics::new();
        m.observe_request(500, Duration::from_millis(1));
        let text = m.encode_prometheus_text();
        assert!(
            text.contains("# TYPE meshload_node_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP meshload_node_requests_total Requests served"),
            "{text}"
        );
        assert!(text.contains("# TYPE meshload_node_request_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"));
    }
}
