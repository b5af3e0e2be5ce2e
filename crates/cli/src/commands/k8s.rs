//! `meshload k8s render` and `meshload k8s cleanup`.

use std::io::Write as _;
use std::process::ExitCode;

use meshload_k8s::{RenderOptions, Resources};

use crate::cli::{K8sCleanupArgs, K8sRenderArgs};

/// Prints the manifests of a config.
pub fn render(args: &K8sRenderArgs) -> anyhow::Result<ExitCode> {
    let config = super::validate::load(&args.config)?.config;
    let opts = RenderOptions {
        mesh: args.mesh,
        namespace: args
            .namespace
            .clone()
            .unwrap_or_else(|| config.namespace.clone()),
        image: args.image.clone(),
        loadgen: args.loadgen,
        run_id: args
            .run_id
            .clone()
            .unwrap_or_else(|| meshload_store::run_id(std::time::SystemTime::now())),
        resources: Resources {
            cpu_request: args.cpu_request.clone(),
            memory_request: args.memory_request.clone(),
            cpu_limit: args.cpu_limit.clone(),
            memory_limit: args.memory_limit.clone(),
        },
    };
    let objects = meshload_k8s::render(&config, &opts);
    let yaml =
        meshload_k8s::to_yaml(&objects).map_err(|e| anyhow::anyhow!("cannot write YAML: {e}"))?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Deletes what meshload created on the cluster.
pub fn cleanup(args: &K8sCleanupArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let deleted = runtime.block_on(async {
        let cluster = meshload_k8s::cluster::Cluster::connect(args.context.as_deref()).await?;
        cluster
            .cleanup(if args.all { None } else { args.run.as_deref() })
            .await
    })?;
    if deleted.is_empty() {
        println!("nothing to delete");
    }
    for d in &deleted {
        println!("deleted {d}");
    }
    Ok(ExitCode::SUCCESS)
}
