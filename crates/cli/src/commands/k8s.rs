//! `meshload k8s render` and `meshload k8s cleanup`.

use std::io::Write as _;
use std::process::ExitCode;

use meshload_k8s::{RenderOptions, Resources};

use crate::cli::{K8sCleanupArgs, K8sDeployArgs, K8sRenderArgs};
use crate::exit::Exit;

/// Prints the manifests of a config.
pub fn render(args: &K8sRenderArgs) -> anyhow::Result<ExitCode> {
    let config = super::validate::load(&args.config)?.config;
    let mesh = match args.deploy.mesh.as_slice() {
        [] => meshload_k8s::Mesh::None,
        [one] => cluster_mesh(*one)?,
        _ => return Err(Exit::usage("k8s render takes one --mesh").into()),
    };
    let opts = render_options(
        &args.deploy,
        mesh,
        args.deploy
            .namespace
            .clone()
            .unwrap_or_else(|| config.namespace.clone()),
        args.run_id
            .clone()
            .unwrap_or_else(|| meshload_store::run_id(std::time::SystemTime::now())),
    );
    let problems = opts.problems();
    if !problems.is_empty() {
        return Err(Exit::usage(problems.join("\n")).into());
    }
    let objects = meshload_k8s::render(&config, &opts);
    let yaml =
        meshload_k8s::to_yaml(&objects).map_err(|e| anyhow::anyhow!("cannot write YAML: {e}"))?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The render options of the deploy flags.
pub fn render_options(
    deploy: &K8sDeployArgs,
    mesh: meshload_k8s::Mesh,
    namespace: String,
    run_id: String,
) -> RenderOptions {
    RenderOptions {
        mesh,
        namespace,
        image: deploy.image.clone(),
        loadgen: deploy.loadgen,
        run_id,
        resources: Resources {
            cpu_request: deploy.cpu_request.clone(),
            memory_request: deploy.memory_request.clone(),
            cpu_limit: deploy.cpu_limit.clone(),
            memory_limit: deploy.memory_limit.clone(),
        },
        waypoint: deploy.waypoint,
        linkerd_native_sidecar: !deploy.linkerd_classic_sidecar,
    }
}

/// The Kubernetes mesh `--mesh` names; `envoy` is the local backend's.
pub fn cluster_mesh(mesh: meshload_config::Mesh) -> Result<meshload_k8s::Mesh, crate::exit::Exit> {
    meshload_k8s::Mesh::try_from(mesh).map_err(crate::exit::Exit::usage)
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
