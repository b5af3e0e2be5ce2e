//! `meshload k8s render`: golden files per mesh, core objects checked by
//! kubernetes-validate --strict (PyPI, offline schemas, installed by scripts/test), App Mesh,
//! Istio and Gateway API objects checked against the openAPIV3Schema of their CRDs
//! (../shared/k8s).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::path::PathBuf;

use common::run;
use serde_json::Value;

const MESHES: [&str; 5] = ["none", "istio", "istio-ambient", "linkerd", "appmesh"];
const CONFIGS: [&str; 2] = ["seed", "quickstart"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn render(config: &str, mesh: &str) -> String {
    let path = repo().join(format!("examples/{config}.json"));
    let out = run(
        &[
            "k8s",
            "render",
            path.to_str().unwrap(),
            "--mesh",
            mesh,
            "--run-id",
            "golden",
            "--image",
            "meshload:test",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap())
        .collect()
}

/// Rewrite the goldens with UPDATE_GOLDEN=1 after a deliberate change, and review the diff.
#[test]
fn manifests_match_the_golden_files() {
    for mesh in MESHES {
        for config in CONFIGS {
            let yaml = render(config, mesh);
            let golden = repo().join(format!("crates/k8s/tests/golden/{mesh}-{config}.yaml"));
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden, &yaml).unwrap();
            }
            let expected = std::fs::read_to_string(&golden)
                .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
            assert_eq!(
                yaml,
                expected,
                "{mesh}/{config} differs from {}",
                golden.display()
            );
        }
    }
}

#[test]
fn every_object_is_labelled_and_meshes_get_their_injection() {
    for mesh in MESHES {
        let docs = documents(&render("quickstart", mesh));
        for d in &docs {
            assert_eq!(
                d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "meshload",
                "{d}"
            );
            assert_eq!(d["metadata"]["labels"]["meshload.io/run"], "golden", "{d}");
        }
        let ns = &docs[0];
        assert_eq!(ns["kind"], "Namespace");
        match mesh {
            "istio" => assert_eq!(ns["metadata"]["labels"]["istio-injection"], "enabled"),
            "istio-ambient" => {
                assert_eq!(
                    ns["metadata"]["labels"]["istio.io/dataplane-mode"],
                    "ambient"
                );
                assert!(ns["metadata"]["labels"]["istio.io/use-waypoint"].is_null());
            }
            "linkerd" => {
                let annotations = &ns["metadata"]["annotations"];
                assert_eq!(annotations["linkerd.io/inject"], "enabled");
                assert_eq!(
                    annotations["config.alpha.linkerd.io/proxy-enable-native-sidecar"],
                    "true"
                );
            }
            "appmesh" => assert_eq!(
                ns["metadata"]["labels"]["appmesh.k8s.aws/sidecarInjectorWebhook"],
                "enabled"
            ),
            _ => assert!(ns["metadata"]["annotations"].is_null()),
        }
        let kinds = |k: &str| docs.iter().filter(|d| d["kind"] == k).count();
        assert_eq!(
            kinds("Deployment"),
            5 + 1,
            "five nodes and the load generator"
        );
        assert_eq!(kinds("Service"), 2 * 5 + 1);
        let frontend = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "node-frontend")
            .unwrap();
        let env = &frontend["spec"]["template"]["spec"]["containers"][0]["env"][0];
        assert_eq!(
            env["value"],
            "service-cart.tls-e2e.svc.cluster.local:9080,service-catalog.tls-e2e.svc.cluster.local:9080"
        );
        let db = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "node-db")
            .unwrap();
        assert_eq!(db["spec"]["replicas"], 2);
        if mesh == "appmesh" {
            assert_eq!(kinds("Mesh"), 1);
            assert_eq!(kinds("VirtualNode"), 5 + 1);
            assert_eq!(kinds("VirtualService"), 5);
        }
    }
}

#[test]
fn core_objects_pass_kubernetes_validate_strict() {
    let dir = common::temp_dir("k8s-validate");
    for mesh in MESHES {
        let core: Vec<String> = render("quickstart", mesh)
            .split("\n---\n")
            .filter(|d| !d.contains("apiVersion: appmesh.k8s.aws/"))
            .map(|d| d.trim_start_matches("---\n").to_string())
            .collect();
        let file = dir.join(format!("{mesh}.yaml"));
        std::fs::write(&file, core.join("\n---\n")).unwrap();
        let out = std::process::Command::new("kubernetes-validate")
            .arg("--strict")
            .arg(&file)
            .output()
            .expect("kubernetes-validate is installed by scripts/test (pip install kubernetes-validate)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{mesh}: {said}");
        assert_eq!(
            said.matches("passed for resource").count(),
            core.len(),
            "{said}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The openAPIV3Schema of every version of every CRD in `file` (../shared/k8s), by
/// (apiVersion, kind).
fn crd_schemas(file: &str) -> std::collections::HashMap<(String, String), Value> {
    let crds = std::fs::read_to_string(common::shared(file)).unwrap();
    let mut schemas = std::collections::HashMap::new();
    for doc in crds
        .split("\n---")
        .filter(|d| d.contains("kind: CustomResourceDefinition"))
    {
        let crd: Value = serde_saphyr::from_str(doc).unwrap();
        let (group, kind) = (&crd["spec"]["group"], &crd["spec"]["names"]["kind"]);
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let api_version = format!(
                "{}/{}",
                group.as_str().unwrap(),
                version["name"].as_str().unwrap()
            );
            schemas.insert(
                (api_version, kind.as_str().unwrap().to_string()),
                version["schema"]["openAPIV3Schema"].clone(),
            );
        }
    }
    schemas
}

/// The schema errors of `doc` (none when its kind has no schema in `schemas`), and
/// whether it had one.
fn schema_errors(
    schemas: &std::collections::HashMap<(String, String), Value>,
    doc: &Value,
) -> Option<Vec<String>> {
    let key = (
        doc["apiVersion"].as_str().unwrap().to_string(),
        doc["kind"].as_str().unwrap().to_string(),
    );
    let validator = jsonschema::validator_for(schemas.get(&key)?).unwrap();
    Some(
        validator
            .iter_errors(doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect(),
    )
}

#[test]
fn app_mesh_objects_validate_against_their_crds() {
    let schemas = crd_schemas("k8s/appmesh-crds.yaml");
    let mut checked = 0;
    for config in CONFIGS {
        for doc in documents(&render(config, "appmesh")) {
            let Some(errors) = schema_errors(&schemas, &doc) else {
                continue;
            };
            assert!(errors.is_empty(), "{doc}: {errors:#?}");
            checked += 1;
        }
    }
    // Seed: the mesh, 2 virtual nodes (node 0, load generator), 1 virtual service;
    // quickstart: the mesh, 6 virtual nodes, 5 virtual services.
    assert_eq!(checked, (1 + 2 + 1) + (1 + 6 + 5));
    // The schema does catch mistakes: a listener without a port is rejected.
    let mut bad = documents(&render("seed", "appmesh"))
        .into_iter()
        .find(|d| d["kind"] == "VirtualNode")
        .unwrap();
    bad["spec"]["listeners"][0]["portMapping"] = serde_json::json!({"protocol": "http"});
    assert!(!schema_errors(&schemas, &bad).unwrap().is_empty());
}

#[test]
fn istio_and_gateway_api_objects_validate_against_their_crds() {
    let mut schemas = crd_schemas("k8s/istio-crds.yaml");
    schemas.extend(crd_schemas("k8s/gateway-api-crds.yaml"));
    let dir = common::temp_dir("k8s-istio");
    // IsmTLSEnabled: Istio refuses plain text between the workloads.
    let config = common::write_config(
        &dir,
        r#"{"IsTLSEnabled": "true", "IsmTLSEnabled": "true", "backends_map": {"a": ["b"], "b": []}}"#,
    );
    let rendered = |flags: &[&str]| {
        let mut args = vec!["k8s", "render", config.to_str().unwrap(), "--run-id", "r1"];
        args.extend_from_slice(flags);
        let out = run(&args, &[]);
        assert!(
            out.status.success(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        documents(&String::from_utf8_lossy(&out.stdout))
    };
    let kinds = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .filter(|d| schema_errors(&schemas, d).is_some())
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect()
    };
    for (flags, expected) in [
        (&["--mesh", "istio"][..], &["PeerAuthentication"][..]),
        // Ambient: ztunnel's mutual TLS, and no STRICT to shut out Prometheus.
        (&["--mesh", "istio-ambient"], &[]),
        (&["--mesh", "istio-ambient", "--waypoint"], &["Gateway"]),
        (&["--mesh", "linkerd"], &[]),
    ] {
        let docs = rendered(flags);
        assert_eq!(kinds(&docs), expected, "{flags:?}");
        for doc in &docs {
            if let Some(errors) = schema_errors(&schemas, doc) {
                assert!(errors.is_empty(), "{flags:?} {doc}: {errors:#?}");
            }
        }
        let ns = &docs[0];
        if flags.contains(&"--waypoint") {
            assert_eq!(
                ns["metadata"]["labels"]["istio.io/use-waypoint"],
                "waypoint"
            );
            let gateway = docs.iter().find(|d| d["kind"] == "Gateway").unwrap();
            assert_eq!(gateway["metadata"]["name"], "waypoint");
            assert_eq!(gateway["spec"]["gatewayClassName"], "istio-waypoint");
            assert_eq!(
                gateway["metadata"]["labels"]["istio.io/waypoint-for"],
                "service"
            );
            assert_eq!(
                gateway["spec"]["listeners"],
                serde_json::json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
            );
        }
    }
    let strict = rendered(&["--mesh", "istio"])
        .into_iter()
        .find(|d| d["kind"] == "PeerAuthentication")
        .unwrap();
    assert_eq!(strict["spec"]["mtls"]["mode"], "STRICT");
    assert_eq!(strict["metadata"]["namespace"], "tls-e2e");
    // The schemas do catch mistakes: an unknown mode, a listener without a port.
    let mut bad = strict.clone();
    bad["spec"]["mtls"]["mode"] = "SOMETIMES".into();
    assert!(!schema_errors(&schemas, &bad).unwrap().is_empty());
    let mut bad = rendered(&["--mesh", "istio-ambient", "--waypoint"])
        .into_iter()
        .find(|d| d["kind"] == "Gateway")
        .unwrap();
    bad["spec"]["listeners"][0]
        .as_object_mut()
        .unwrap()
        .remove("port");
    assert!(!schema_errors(&schemas, &bad).unwrap().is_empty());
    // Without IsmTLSEnabled, no PeerAuthentication: Istio's default stands.
    let plain = common::write_config(&dir, r#"{"backends_map": {"a": []}}"#);
    let out = run(
        &["k8s", "render", plain.to_str().unwrap(), "--mesh", "istio"],
        &[],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PeerAuthentication"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mesh_flags_that_do_not_fit_the_mesh_are_usage_errors() {
    let config = repo().join("examples/seed.json");
    let config = config.to_str().unwrap();
    for (flags, says) in [
        (
            &["k8s", "render", config, "--mesh", "istio", "--waypoint"][..],
            "--waypoint applies to --mesh istio-ambient, not istio",
        ),
        (
            &["k8s", "render", config, "--linkerd-classic-sidecar"],
            "--linkerd-classic-sidecar applies to --mesh linkerd, not none",
        ),
        (
            &["run", config, "--mesh", "istio-ambient", "--waypoint"],
            "--waypoint only applies with --backend k8s",
        ),
    ] {
        let out = run(flags, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}

/// Needs a cluster: `KUBECONFIG=... cargo test -p meshload --test k8s -- --ignored`, with a
/// current context that may be used. (Without one it is not run, and not counted as passed.)
#[test]
#[ignore = "needs a cluster: run with KUBECONFIG set and --ignored"]
fn real_cluster_cleanup_connects_and_lists() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "set KUBECONFIG to a cluster whose current context may be used"
    );
    // A run id no run has: the cluster is asked, and nothing of anyone's is deleted.
    let out = run(
        &["k8s", "cleanup", "--run", "meshload-test-no-such-run"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to delete"
    );
}

/// Runs a small config on a real cluster: `cargo test -p meshload --test k8s -- --ignored`
/// with KUBECONFIG and MESHLOAD_TEST_IMAGE (a meshload image the cluster can pull) set;
/// MESHLOAD_TEST_MESH picks the mesh (default none).
#[test]
#[ignore = "needs a cluster: run with KUBECONFIG and MESHLOAD_TEST_IMAGE set and --ignored"]
fn real_cluster_run_deploys_measures_and_deletes() {
    let (Some(_), Some(image)) = (
        std::env::var_os("KUBECONFIG"),
        std::env::var("MESHLOAD_TEST_IMAGE").ok(),
    ) else {
        panic!("set KUBECONFIG and MESHLOAD_TEST_IMAGE (a meshload image the cluster can pull)");
    };
    let mesh = std::env::var("MESHLOAD_TEST_MESH").unwrap_or_else(|_| "none".into());
    let namespace = format!("meshload-test-{}", std::process::id());
    let dir = common::temp_dir("real-cluster");
    let config = common::write_config(
        &dir,
        &format!(
            r#"{{"namespace": "{namespace}", "ConnectivityCheckPerURL": 10,
                "backends_map": {{"front": ["back"], "back": []}},
                "load_tests": [{{"test_name": "real-cluster", "target": "front", "qps": 20, "t": "5s", "c": 2}}]}}"#
        ),
    );
    let store = dir.join("results");
    let out = run(
        &[
            "run",
            config.to_str().unwrap(),
            "--backend",
            "k8s",
            "--mesh",
            &mesh,
            "--image",
            &image,
            "--store",
            store.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("deleted namespace/{namespace}")),
        "{stderr}"
    );
    let run_dir = common::run_dir(&store, "real-cluster");
    let fortio = common::json(&run_dir.join("fortio.json"));
    assert!(
        fortio["RetCodes"]["200"].as_u64().unwrap_or(0) > 50,
        "{fortio}"
    );
    let metadata = common::json(&run_dir.join("metadata.json"));
    assert_eq!(metadata["backend_facts"]["mesh"], mesh.as_str());
    assert!(
        metadata["backend_facts"]["kubernetes_version"]
            .as_str()
            .unwrap()
            .starts_with('v')
    );
}
