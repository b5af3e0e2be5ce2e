//! `meshload results serve`: every stored run of a store as a read-only Prometheus HTTP
//! API ([`meshload_report::serve`]), an S3 store through a local copy kept up to date.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meshload_report::serve::{Catalog, handle};
use meshload_store::ResultStore;

use crate::cli::ResultsServeArgs;
use crate::exit::Exit;

/// Serves until Ctrl-C or SIGTERM.
pub fn run(args: &ResultsServeArgs) -> anyhow::Result<ExitCode> {
    let opened = ResultStore::open(&args.store).map_err(|e| Exit::usage(e.to_string()))?;
    let runtime = super::runtime()?;
    let store = match &opened {
        ResultStore::Fs(fs) => fs.clone(),
        // An S3 store is served from a local cache, kept up to date in the background.
        ResultStore::S3(s3) => {
            let cache = s3.cache();
            let added = runtime
                .block_on(s3.sync_into(&cache))
                .with_context(|| format!("cannot read {}", s3.address()))?;
            eprintln!(
                "meshload: {} new runs of {} copied into {}",
                added,
                s3.address(),
                cache.root().display()
            );
            let (s3, into) = (s3.clone(), cache.clone());
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(S3_SYNC).await;
                    if let Err(e) = s3.sync_into(&into).await {
                        tracing::warn!(error = %e, "cannot copy new runs from S3");
                    }
                }
            });
            cache
        }
    };
    let catalog = Arc::new(Catalog::new(store, args.align_runs));
    catalog.refresh(true);
    runtime.block_on(serve(catalog, args.listen, &args.guards))
}

/// How often an S3 store is looked at for new runs.
const S3_SYNC: Duration = Duration::from_secs(5);

async fn serve(
    catalog: Arc<Catalog>,
    listen: SocketAddr,
    guards: &crate::cli::ServerGuards,
) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("no local address")?;
    println!("listening on http://{addr}");
    eprintln!(
        "meshload: serving {} runs of {} as a Prometheus API (GET/POST /api/v1/query, query_range, labels, series, ...)",
        catalog.run_count(),
        catalog.root().display()
    );
    meshload_node::server::serve_guarded(
        listener,
        &super::server_limits(guards),
        super::shutdown_signal(),
        move |req| handle(req, catalog.clone()),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}
