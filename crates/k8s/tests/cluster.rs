//! Apply, rollout wait and cleanup against a mocked API server (tower-test): the requests
//! meshload sends, and what it makes of the answers. No cluster is needed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use meshload_k8s::cluster::{Cluster, K8sError};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

type Server = Handle<Request<Body>, Response<Body>>;

fn cluster() -> (Cluster, Server) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Cluster::new(Client::new(service, "default")), handle)
}

/// Answers one request with `status` and `body`; returns the method, path and query asked.
async fn answer(server: &mut Server, status: u16, body: Value) -> (String, String, String) {
    let (request, send) = server.next_request().await.expect("a request");
    let asked = (
        request.method().to_string(),
        request.uri().path().to_string(),
        request.uri().query().unwrap_or("").to_string(),
    );
    let response = Response::builder()
        .status(status)
        .body(Body::from(body.to_string().into_bytes()))
        .unwrap();
    send.send_response(response);
    asked
}

fn objects() -> Vec<Value> {
    let config = meshload_config::from_str(r#"{"backends_map": {"0": ["1"]}}"#, false, "t")
        .unwrap()
        .config;
    let opts = meshload_k8s::RenderOptions {
        mesh: meshload_k8s::Mesh::AppMesh,
        namespace: "perf".into(),
        image: "meshload:test".into(),
        loadgen: meshload_k8s::LoadGen::Meshload,
        run_id: "r1".into(),
        resources: Default::default(),
        waypoint: false,
        linkerd_native_sidecar: true,
    };
    meshload_k8s::render(&config, &opts)
}

#[tokio::test]
async fn apply_sends_a_server_side_apply_per_object() {
    let (cluster, mut server) = cluster();
    let objs = objects();
    let expected: Vec<Value> = objs.clone();
    let answering = tokio::spawn(async move {
        let mut asked = Vec::new();
        for obj in &expected {
            asked.push(answer(&mut server, 200, obj.clone()).await);
        }
        asked
    });
    let applied = cluster.apply(&objs).await.unwrap();
    let asked = answering.await.unwrap();
    assert_eq!(applied, objs.len());
    for (method, _, query) in &asked {
        assert_eq!(method, "PATCH");
        assert!(
            query.contains("fieldManager=meshload") && query.contains("force=true"),
            "{query}"
        );
    }
    let paths: Vec<&str> = asked.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(paths[0], "/api/v1/namespaces/perf", "the namespace first");
    assert_eq!(
        paths[1], "/apis/appmesh.k8s.aws/v1beta2/meshes/meshload-r1",
        "cluster-scoped mesh"
    );
    assert!(
        paths.contains(&"/apis/apps/v1/namespaces/perf/deployments/node-0"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/api/v1/namespaces/perf/services/service-1"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/apis/appmesh.k8s.aws/v1beta2/namespaces/perf/virtualnodes/node-1"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/apis/appmesh.k8s.aws/v1beta2/namespaces/perf/virtualservices/service-0"),
        "{paths:?}"
    );
}

#[tokio::test]
async fn an_api_error_is_reported_with_what_was_being_done() {
    let (cluster, mut server) = cluster();
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "forbidden", "reason": "Forbidden", "code": 403});
    let answering = tokio::spawn(async move { answer(&mut server, 403, status).await });
    let err = cluster.apply(&objects()).await.unwrap_err();
    assert!(
        err.to_string().starts_with("apply Namespace perf:"),
        "{err}"
    );
    let (method, path, _) = answering.await.unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("PATCH", "/api/v1/namespaces/perf")
    );
}

/// A namespace's deployments: node-0 with `ready` of its 1 replica ready.
fn deployments(ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": [deployment(ready)]})
}

fn deployment(ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "node-0", "namespace": "perf"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "node-0"}}, "template": {}},
           "status": {"readyReplicas": ready}})
}

#[tokio::test]
async fn a_rollout_that_becomes_ready_is_waited_for() {
    let (cluster, mut server) = cluster();
    let answering = tokio::spawn(async move {
        let first = answer(&mut server, 200, deployments(0)).await;
        let second = answer(&mut server, 200, deployments(1)).await;
        // Ready at the second list: no third request is made.
        let third = tokio::time::timeout(Duration::from_millis(300), server.next_request()).await;
        (first, second, third.is_err())
    });
    let started = std::time::Instant::now();
    cluster
        .wait_ready("perf", &["node-0".into()], Duration::from_secs(5))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "not a timeout");
    let (first, second, no_third) = answering.await.unwrap();
    for (method, path, _) in [&first, &second] {
        assert_eq!(method, "GET");
        assert_eq!(path, "/apis/apps/v1/namespaces/perf/deployments");
    }
    assert!(no_third, "it polled on after the rollout was ready");
}

#[tokio::test]
async fn a_rollout_timeout_names_the_pods_not_ready_and_their_last_events() {
    let (cluster, mut server) = cluster();
    let answering = tokio::spawn(async move {
        // Answers the polls until the deadline, then the pods and their events.
        loop {
            let (request, send) = server.next_request().await.expect("a request");
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or("").to_string();
            let body = match path.as_str() {
                "/apis/apps/v1/namespaces/perf/deployments" => deployments(0),
                "/api/v1/namespaces/perf/pods" => {
                    assert!(query.contains("labelSelector=app%3Dnode-0"), "{query}");
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                        {"metadata": {"name": "node-0-abc-1"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}]})
                }
                "/api/v1/namespaces/perf/events" => {
                    assert!(
                        query.contains("fieldSelector=involvedObject.name%3Dnode-0-abc-1"),
                        "{query}"
                    );
                    json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
                        {"metadata": {"name": "e1"}, "involvedObject": {"name": "node-0-abc-1"}, "reason": "BackOff",
                         "message": "Back-off pulling image \"meshload:test\"", "lastTimestamp": "2026-11-27T18:00:00Z"}]})
                }
                other => panic!("unexpected request {other}"),
            };
            let done = path.ends_with("/events");
            send.send_response(
                Response::builder()
                    .body(Body::from(body.to_string().into_bytes()))
                    .unwrap(),
            );
            if done {
                return;
            }
        }
    });
    let err = cluster
        .wait_ready("perf", &["node-0".into()], Duration::from_millis(600))
        .await
        .unwrap_err();
    answering.await.unwrap();
    assert!(matches!(err, K8sError::RolloutTimeout { .. }));
    let text = err.to_string();
    assert!(text.contains("pod node-0-abc-1 not ready"), "{text}");
    assert!(text.contains("BackOff: Back-off pulling image"), "{text}");
}

#[tokio::test]
async fn cleanup_deletes_the_runs_namespaces_and_meshes_by_label() {
    let (cluster, mut server) = cluster();
    let answering = tokio::spawn(async move {
        let mut asked = Vec::new();
        asked.push(answer(&mut server, 200, json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": [{"metadata": {"name": "perf"}}]})).await);
        asked.push(
            answer(
                &mut server,
                200,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "perf"}}),
            )
            .await,
        );
        asked.push(answer(&mut server, 200, json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "MeshList", "metadata": {}, "items": [{"metadata": {"name": "meshload-r1"}}]})).await);
        asked.push(answer(&mut server, 200, json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "Mesh", "metadata": {"name": "meshload-r1"}})).await);
        asked
    });
    let deleted = cluster.cleanup(Some("r1")).await.unwrap();
    let asked = answering.await.unwrap();
    assert_eq!(deleted, ["namespace/perf", "mesh/meshload-r1"]);
    assert_eq!(asked[0].1, "/api/v1/namespaces");
    assert!(
        asked[0].2.contains(
            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmeshload%2Cmeshload.io%2Frun%3Dr1"
        ),
        "{}",
        asked[0].2
    );
    assert_eq!(
        (asked[1].0.as_str(), asked[1].1.as_str()),
        ("DELETE", "/api/v1/namespaces/perf")
    );
    assert_eq!(
        (asked[3].0.as_str(), asked[3].1.as_str()),
        ("DELETE", "/apis/appmesh.k8s.aws/v1beta2/meshes/meshload-r1")
    );
}

#[tokio::test]
async fn cleanup_without_the_app_mesh_crd_still_deletes_namespaces() {
    let (cluster, mut server) = cluster();
    let answering = tokio::spawn(async move {
        let namespaces = answer(
            &mut server,
            200,
            json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": []}),
        )
        .await;
        let meshes = answer(&mut server, 404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404})).await;
        (namespaces, meshes)
    });
    assert!(cluster.cleanup(None).await.unwrap().is_empty());
    let (namespaces, meshes) = answering.await.unwrap();
    assert_eq!(namespaces.1, "/api/v1/namespaces");
    assert!(meshes.1.contains("appmesh.k8s.aws"), "{meshes:?}");
}
