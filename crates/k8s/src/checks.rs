//! What `meshload run` asks of the Kubernetes backend, checked before anything starts:
//! one pure function that returns every problem at once, as the config crate does.

use meshload_config::{Config, PrometheusSetting};

use crate::cluster::ServiceRef;
use crate::render::Mesh;

/// The Prometheus the App Mesh walkthrough (the seed) installs and queries.
pub fn appmesh_prometheus() -> ServiceRef {
    ServiceRef {
        namespace: "appmesh-system".into(),
        name: "appmesh-prometheus".into(),
        port: 9090,
    }
}

/// The choices of a run that concern Kubernetes.
#[derive(Debug, Clone)]
pub struct RunChoice<'a> {
    /// `--backend k8s`.
    pub on_cluster: bool,
    /// The Kubernetes-only flags given (`--context`, `--image`, ...), as typed.
    pub flags_given: &'a [String],
    /// The mesh (`--mesh`).
    pub mesh: Mesh,
    /// `--prometheus-service`.
    pub prometheus_service: Option<ServiceRef>,
}

/// Checks a run's choices against its config. On a cluster, returns the Prometheus
/// service that answers the metric queries (the seed's with App Mesh, when none is
/// given); elsewhere `None`. `Err` holds every problem found.
pub fn check_run(
    config: &Config,
    choice: &RunChoice<'_>,
) -> Result<Option<ServiceRef>, Vec<String>> {
    let mut problems = Vec::new();
    if !choice.on_cluster {
        if !choice.flags_given.is_empty() {
            let verb = if choice.flags_given.len() == 1 {
                "applies"
            } else {
                "apply"
            };
            problems.push(format!(
                "{} only {verb} with --backend k8s",
                choice.flags_given.join(", ")
            ));
        }
        return if problems.is_empty() {
            Ok(None)
        } else {
            Err(problems)
        };
    }
    if config.prometheus == PrometheusSetting::Spawn {
        problems.push(
            "prometheus: \"spawn\" starts a Prometheus on this machine for local nodes; with \
             --backend k8s the cluster's Prometheus answers (--prometheus-service NS/SERVICE:PORT)"
                .to_string(),
        );
    }
    let prometheus = choice
        .prometheus_service
        .clone()
        .or_else(|| (choice.mesh == Mesh::AppMesh).then(appmesh_prometheus));
    if prometheus.is_none()
        && config.prometheus == PrometheusSetting::Embedded
        && !config.metrics.is_empty()
    {
        problems.push(format!(
            "the config has {} metric queries, and on a cluster they need the cluster's \
             Prometheus: give --prometheus-service NS/SERVICE:PORT (e.g. \
             istio-system/prometheus:9090), or a Prometheus URL as \"prometheus\" in the config",
            config.metrics.len()
        ));
    }
    if problems.is_empty() {
        Ok(prometheus)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(r#"{{"backends_map": {{"0": []}}{extra}}}"#);
        meshload_config::from_str(&text, false, "t")
            .expect("valid")
            .config
    }

    fn choice(on_cluster: bool, flags: &[String], mesh: Mesh) -> RunChoice<'_> {
        RunChoice {
            on_cluster,
            flags_given: flags,
            mesh,
            prometheus_service: None,
        }
    }

    #[test]
    fn kubernetes_flags_need_the_k8s_backend() {
        let flags = vec!["--image".to_string(), "--context".to_string()];
        let err = check_run(&config(""), &choice(false, &flags, Mesh::None)).expect_err("refused");
        assert_eq!(err, ["--image, --context only apply with --backend k8s"]);
        assert_eq!(
            check_run(&config(""), &choice(false, &[], Mesh::None)),
            Ok(None)
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = config(r#", "prometheus": "spawn", "metrics": {"m": "up"}"#);
        let err = check_run(&c, &choice(true, &[], Mesh::None)).expect_err("refused");
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains("spawn"), "{err:?}");
        let c = config(r#", "metrics": {"m": "up"}"#);
        let err = check_run(&c, &choice(true, &[], Mesh::Istio)).expect_err("refused");
        assert!(err[0].contains("1 metric queries"), "{err:?}");
    }

    #[test]
    fn app_mesh_queries_the_seeds_prometheus() {
        let c = config(r#", "metrics": {"m": "up"}"#);
        assert_eq!(
            check_run(&c, &choice(true, &[], Mesh::AppMesh)),
            Ok(Some(appmesh_prometheus()))
        );
    }
}
