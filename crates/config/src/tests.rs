use std::time::Duration;

use super::*;

fn seed_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seed.json");
    std::fs::read_to_string(path).expect("examples/seed.json is committed")
}

fn errors_of(text: &str) -> Vec<String> {
    match from_str(text, false, "test.json") {
        Err(LoadError::Invalid { errors, .. }) => errors.iter().map(ToString::to_string).collect(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

/// `errors` are exactly `expect`, each given by how its message starts.
fn assert_problems(errors: &[String], expect: &[&str]) {
    for e in expect {
        assert!(
            errors.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
}

#[test]
fn the_seed_config_parses_unchanged() {
    let loaded = from_str(&seed_text(), false, "seed.json").expect("the seed's config is valid");
    let c = loaded.config;
    assert!(c.tls && !c.mtls);
    assert_eq!(c.connectivity_checks, 400);
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(c.nodes["0"].replicas, 1);
    let t = &c.tests[0];
    assert_eq!(t.name, "experiment16-qps50000-t10-c400");
    assert_eq!((t.target.as_str(), t.path.as_str()), ("0", "/"));
    assert_eq!(
        (t.qps, t.duration, t.connections),
        (Some(50000.0), Duration::from_secs(10), 400)
    );
    assert_eq!(c.metrics.len(), 6);
    assert_eq!(
        c.metrics[0].0, "envoy_ingress_rate_by_replica_set",
        "metrics keep file order"
    );
    assert_eq!(c.sleep_between_tests, Duration::from_secs(10));
    assert_eq!(c.metrics_step, Duration::from_secs(10));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = r#"{
      "backends_map": {"0": ["1"], "1": ["2"], "2": ["0"]},
      "load_tests": [
        {"test_name": "a", "url": "http://service-9.ns.svc.cluster.local:9080/", "qps": "10", "t": "10s", "c": "4"},
        {"test_name": "b", "target": "0", "qps": "fast", "t": "soon", "c": 0}
      ],
      "metrics": {"bad": "sum(rate(x[5m]) by (", "ok": "up"},
      "slo": {"error_ratio": 2}
    }"#;
    let errors = errors_of(text);
    let expect = [
        "backends_map: cycle 0 -> 1 -> 2 -> 0: a request would loop forever",
        r#"load_tests[0].url: "http://service-9.ns.svc.cluster.local:9080/" names no node"#,
        r#"load_tests[1].qps: "fast" is not a number"#,
        r#"load_tests[1].t: "soon" is not a duration"#,
        "load_tests[1].c: 0 is not a whole number from 1 to 100000",
        r#"metrics.bad: "sum(rate(x[5m]) by (" does not parse"#,
        "slo.error_ratio: 2 is out of range",
    ];
    assert_problems(&errors, &expect);
}

#[test]
fn an_empty_topology_is_an_error() {
    let errors = errors_of(r#"{"backends_map": {}}"#);
    assert!(
        errors[0].starts_with("backends_map: {} is empty"),
        "{errors:?}"
    );
    let errors = errors_of(r#"{"load_tests": []}"#);
    assert!(errors[0].starts_with("backends_map: missing"), "{errors:?}");
}

#[test]
fn extensions_and_yaml() {
    let yaml = r#"
backends_map:
  "0": ["1", "2"]
  "1": []
ReplicasPerVirtualNode: 2
defaults: {latency: 1ms}
nodes:
  "1": {replicas: 3, error_rate: 0.01, latency: "uniform:1ms..2ms"}
load_tests:
  - {test_name: t1, target: "0", qps: max, t: 2s, c: 2, jitter: true, stdclient: true, compression: true}
sleep_between_tests: 0
scrape_interval: 500ms
slo: {p99_ms: 50}
prometheus: spawn
frobnicate: 1
"#;
    let loaded = from_str(yaml, true, "c.yaml").expect("valid");
    let c = &loaded.config;
    assert_eq!(c.nodes["0"].replicas, 2);
    assert_eq!(c.nodes["1"].replicas, 3);
    assert_eq!(
        c.nodes["2"]
            .behaviour
            .latency
            .map(|l| l.to_string())
            .as_deref(),
        Some("1ms"),
        "defaults apply"
    );
    assert_eq!(
        c.nodes["1"]
            .behaviour
            .latency
            .map(|l| l.to_string())
            .as_deref(),
        Some("uniform:1ms..2ms"),
        "nodes override defaults"
    );
    assert_eq!(c.tests[0].qps, None, "qps max");
    assert!(c.tests[0].jitter && c.tests[0].std_client);
    assert_eq!(c.tests[0].slo.p99_ms(), Some(50.0));
    assert_eq!(c.sleep_between_tests, Duration::ZERO);
    assert_eq!(c.prometheus, PrometheusSetting::Spawn);
    let w = loaded.warnings.join("\n");
    assert!(w.contains("frobnicate") && w.contains("compression"), "{w}");
    assert!(!w.contains("stdclient"), "stdclient is supported: {w}");
}

#[test]
fn urls_map_to_nodes() {
    let nodes: std::collections::BTreeMap<String, NodeSpec> = ["0", "frontend"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                NodeSpec {
                    backends: vec![],
                    replicas: 1,
                    behaviour: Default::default(),
                    host: None,
                },
            )
        })
        .collect();
    let ok = |u: &str| parse::node_of_url(u, &nodes).expect(u);
    assert_eq!(
        ok("http://service-0.tls-e2e.svc.cluster.local:9080/"),
        ("0".into(), "/".into())
    );
    assert_eq!(
        ok("http://node-frontend:9080/api?x=1"),
        ("frontend".into(), "/api?x=1".into())
    );
    assert_eq!(ok("http://frontend"), ("frontend".into(), "/".into()));
    assert!(parse::node_of_url("http://127.0.0.1:9080/", &nodes).is_err());
    assert!(parse::node_of_url("https://service-0/", &nodes).is_err());
}

#[test]
fn a_namespace_override_carries_the_test_urls_along() {
    let config = crate::from_str(&seed_text(), false, "seed.json")
        .expect("the seed parses")
        .config
        .in_namespace("perf-2");
    assert_eq!(config.namespace, "perf-2");
    assert_eq!(
        config.tests[0].url,
        "http://service-0.perf-2.svc.cluster.local:9080/"
    );
    assert_eq!(
        config.raw["load_tests"][0]["url"],
        "http://service-0.tls-e2e.svc.cluster.local:9080/"
    );
    // A URL that does not name the namespace, or names it only in its path, is left alone.
    let text = r#"{"backends_map": {"0": []}, "namespace": "a", "load_tests": [
        {"test_name": "t1", "url": "http://service-0:9080/x.a.svc.cluster.local"}]}"#;
    let config = crate::from_str(text, false, "t")
        .expect("valid")
        .config
        .in_namespace("b");
    assert_eq!(
        config.tests[0].url,
        "http://service-0:9080/x.a.svc.cluster.local"
    );
}

#[test]
fn meshes_are_read_as_a_word_a_list_or_an_array() {
    let read = |mesh: &str| {
        crate::from_str(
            &format!(r#"{{"backends_map": {{"0": []}}, "mesh": {mesh}}}"#),
            false,
            "t",
        )
    };
    use crate::Mesh;
    assert_eq!(
        read(r#""envoy""#).expect("valid").config.meshes,
        [Mesh::Envoy]
    );
    assert_eq!(
        read(r#""none, envoy""#).expect("valid").config.meshes,
        [Mesh::None, Mesh::Envoy]
    );
    // A mesh named again is another arm of it (an A/A comparison).
    assert_eq!(
        read(r#"["none", "envoy", "none"]"#)
            .expect("valid")
            .config
            .meshes,
        [Mesh::None, Mesh::Envoy, Mesh::None]
    );
    let err = read(r#"["none", "cilium"]"#)
        .expect_err("cilium is not a mesh")
        .to_string();
    assert!(err.contains("mesh[1]") && err.contains("cilium"), "{err}");
}

#[test]
fn repeats_come_from_the_test_else_the_config_else_one() {
    let read = |top: &str, test: &str| {
        crate::from_str(
            &format!(
                r#"{{"backends_map": {{"0": []}}{top}, "load_tests": [{{"test_name": "a", "target": "0"{test}}}, {{"test_name": "b", "target": "0"}}]}}"#
            ),
            false,
            "t",
        )
    };
    let repeats = |top: &str, test: &str| -> Vec<u32> {
        let config = read(top, test).expect("valid").config;
        config.tests.iter().map(|t| t.repeat).collect()
    };
    assert_eq!(repeats("", ""), [1, 1]);
    assert_eq!(repeats(r#", "repeat": 5"#, ""), [5, 5]);
    assert_eq!(repeats(r#", "repeat": "5""#, r#", "repeat": 7"#), [7, 5]);
    for (top, test, path) in [
        (r#", "repeat": 0"#, "", "repeat"),
        ("", r#", "repeat": 101"#, "load_tests[0].repeat"),
        ("", r#", "repeat": "often""#, "load_tests[0].repeat"),
    ] {
        let err = read(top, test).expect_err("out of range").to_string();
        assert!(err.contains(path), "{err}");
    }
}

#[test]
fn metric_queries_beyond_the_limits_are_refused_before_parsing() {
    // 10,000 nested calls would overflow the parser's stack: refused by the limits first.
    let deep = format!("{}up{}", "abs(".repeat(10_000), ")".repeat(10_000));
    let text = format!(r#"{{"backends_map": {{"0": []}}, "metrics": {{"deep": "{deep}"}}}}"#);
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("metrics.deep:") && errors[0].contains("10000 levels deep"),
        "{errors:?}"
    );
}

#[test]
fn amplification_saturates_instead_of_wrapping() {
    // Each of 70 layers calls both nodes of the next: 2^70 requests and more.
    let mut map = serde_json::Map::new();
    for layer in 0..70 {
        let next = |i: u32| serde_json::Value::from(format!("n{}-{i}", layer + 1));
        for i in 0..2 {
            map.insert(
                format!("n{layer}-{i}"),
                serde_json::Value::from(vec![next(0), next(1)]),
            );
        }
    }
    let text = serde_json::json!({ "backends_map": map }).to_string();
    let config = from_str(&text, false, "t").expect("valid").config;
    let shape = crate::topology::shape(&config.nodes);
    assert_eq!(shape.backend_requests["n0-0"], u64::MAX);
    assert_eq!(shape.backend_requests["n69-0"], 2);
}

#[test]
fn duplicate_keys_are_errors_in_json_and_yaml() {
    let errors = errors_of(
        r#"{"backends_map": {"a": ["b"]}, "backends_map": {"c": []},
            "load_tests": [{"test_name": "x", "target": "a", "qps": 10, "qps": 1000}]}"#,
    );
    assert_eq!(
        errors,
        [
            "backends_map: is given more than once (which one counts would be a guess)",
            "load_tests[0].qps: is given more than once (which one counts would be a guess)"
        ]
    );
    let yaml = from_str("backends_map:\n  a: [b]\n  a: []\n", true, "t.yaml");
    assert!(
        matches!(&yaml, Err(LoadError::Syntax { message, .. })
            if message.starts_with("line 3 column 3: duplicate mapping key `a`")
                && !message.contains("DuplicateKeyPolicy")),
        "{yaml:?}"
    );
}

#[test]
fn node_names_are_dns_labels_once_prefixed_and_never_fold_together() {
    for (name, hint) in [
        ("A", "use lower case: \"a\""),
        ("-x", "not first or last"),
        ("x-", "not first or last"),
        ("a_b", "lower-case letters"),
        ("a.b", "lower-case letters"),
    ] {
        let text = format!(
            r#"{{"backends_map": {{"{name}": []}}, "load_tests": [{{"test_name": "t", "target": "{name}"}}]}}"#
        );
        let errors = errors_of(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("backends_map") && e.contains(hint)),
            "{name}: {errors:?}"
        );
    }
    // As a backend too; and "A" beside "a" cannot collide: it is refused.
    let errors = errors_of(r#"{"backends_map": {"a": ["A"], "A": []}}"#);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"A\" is not a valid node name")),
        "{errors:?}"
    );
    assert!(from_str(r#"{"backends_map": {"0": ["a-1"], "a-1": []}}"#, false, "t").is_ok());
}

#[test]
fn a_metric_whose_subqueries_cannot_finish_is_refused_with_its_path() {
    for query in [
        "max_over_time(up[30d:1ms])",
        "max_over_time(max_over_time(up[1h:1s])[1d:1s])",
        "max_over_time(up[1h:1s]) + max_over_time(rate(up[1m])[2h:1ms])",
    ] {
        let text = format!(r#"{{"backends_map": {{"a": []}}, "metrics": {{"m": "{query}"}}}}"#);
        let errors = errors_of(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("metrics.m:") && e.contains("subqueries would evaluate")),
            "{query}: {errors:?}"
        );
    }
    let fine = r#"{"backends_map": {"a": []}, "metrics": {"m": "max_over_time(rate(up[1m])[1h:1m]) + rate(up[5m])"}}"#;
    assert!(from_str(fine, false, "t").is_ok());
}

#[test]
fn amplification_names_every_node_past_the_limit() {
    let loaded = from_str(
        r#"{"backends_map": {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}}"#,
        false,
        "t",
    )
    .expect("valid");
    let found = crate::topology::amplification(&loaded.config.nodes, 3);
    assert_eq!(found.refused.len(), 1, "{found:?}");
    assert!(
        found.refused[0].contains("node \"a\" causes 4 backend requests"),
        "{found:?}"
    );
    assert!(
        crate::topology::amplification(&loaded.config.nodes, 4)
            .refused
            .is_empty()
    );
}

#[test]
fn node_behaviour_is_checked_where_the_config_is_read() {
    let errors = errors_of(
        r#"{"backends_map": {"a": ["b"], "b": []},
            "defaults": {"latency": "fast"},
            "nodes": {"b": {"call_mode": "both", "latency": "uniform:3ms..1ms", "error_rate": 1.5}}}"#,
    );
    let expect = [
        r#"defaults.latency: invalid latency "fast""#,
        r#"nodes.b.latency: invalid latency "uniform:3ms..1ms""#,
        r#"nodes.b.call_mode: invalid call mode "both""#,
        "nodes.b.error_rate: 1.5 is not a fraction from 0 to 1",
    ];
    assert_problems(&errors, &expect);
}

#[test]
fn ambient_hosts_are_a_count_and_a_name_per_node() {
    let text = r#"{"backends_map": {"a": ["b"], "b": []}, "hosts": 3, "nodes": {"b": {"host": "edge-1"}}}"#;
    let c = from_str(text, false, "t.json").expect("valid").config;
    assert_eq!(c.hosts, Some(3));
    assert_eq!(c.nodes["b"].host.as_deref(), Some("edge-1"));
    assert_eq!(c.nodes["a"].host, None);
    let errors =
        errors_of(r#"{"backends_map": {"a": []}, "hosts": 0, "nodes": {"a": {"host": "Edge_1"}}}"#);
    let expect = [
        "hosts: 0 is not a whole number from 1 to 64",
        r#"nodes.a.host: "Edge_1" is not a valid host name"#,
    ];
    assert_problems(&errors, &expect);
}
