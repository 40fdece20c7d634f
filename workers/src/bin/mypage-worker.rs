//! The Mypage worker binary.
//!
//! - `mypage-worker` (or `mypage-worker serve`): HTTP on `SAGA_MYPAGE_ADDR` (default
//!   `127.0.0.1:8096`) and the projection of `DOMAIN_EVT` into the view, until SIGTERM;
//! - `mypage-worker rebuild`: starts a rebuild of the view (or joins the running one), replays
//!   until reads switch to the new generation, and exits; running workers keep serving reads
//!   meanwhile, and replay alongside;
//! - `mypage-worker migrate` (or `SAGA_MIGRATE_ONLY=true`, as every service binary): creates
//!   and migrates the view's store, and exits, without NATS.
//!
//! Its routes are served behind the runtime's edge, like every worker's: an API token
//! (`SAGA_API_TOKENS` or `SAGA_API_TOKENS_FILE`) with the `game` or `read` scope reads, with
//! `operate` rebuilds.
//!
//! The view's database is `SAGA_MYPAGE_DATABASE_URL` (`mysql://…` for MariaDB, `postgres://…`
//! for PostgreSQL), else `SAGA_DATABASE_URL`; NATS is `SAGA_NATS_URL` and `SAGA_NATS_PREFIX`.

use anyhow::{Context as _, bail};
use saga_workers::mypage::store::Store;
use saga_workers::mypage::{MypageSettings, MypageWorker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("mypage-worker");
    let result = run().await;
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "mypage-worker failed");
    }
    telemetry.shutdown().await;
    result
}

async fn run() -> anyhow::Result<()> {
    let settings: MypageSettings = runtime::config::load()?;
    let mut command = std::env::args().nth(1);
    if settings.infra.migrate_only {
        command = Some("migrate".into());
    }
    match command.as_deref() {
        None | Some("serve") => serve(&settings).await,
        Some("rebuild") => {
            let shutdown = runtime::shutdown::on_signal();
            let worker = MypageWorker::connect(&settings).await?;
            let status = worker.rebuild(&shutdown).await?;
            tracing::info!(
                generation = status.generation,
                replayed = status.replayed,
                serving = status.serving_generation,
                "rebuild finished"
            );
            Ok(())
        }
        Some("migrate") => {
            let store = Store::connect(settings.database_url(), 1)
                .await
                .with_context(|| {
                    format!("the Mypage store at {}", settings.database_url_redacted())
                })?;
            store.close().await;
            tracing::info!(store = store.backend().as_str(), "migrated");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}: use serve, rebuild or migrate"),
    }
}

async fn serve(settings: &MypageSettings) -> anyhow::Result<()> {
    let addr = runtime::config::listen_addr("mypage", "127.0.0.1:8096")?;
    let shutdown = runtime::shutdown::on_signal();
    let worker = MypageWorker::connect(settings).await?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "mypage worker listening");
    let (routes, openapi) = worker.api();
    let router = routes
        .merge(worker.health())
        .merge(runtime::http::openapi_route(openapi))
        .merge(runtime::metrics::route())
        .fallback(runtime::problem::route_not_found);
    let readiness = worker.readiness().clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        readiness.stop_accepting();
    });
    let edge = runtime::edge::Edge::from_env()?;
    let (served, ran, ()) = tokio::join!(
        edge.serve(listener, router, shutdown.clone()),
        worker.run(shutdown.clone()),
        runtime::metrics::run_upkeep(shutdown),
    );
    served?;
    ran
}
