//! HTTP serving shared by every service: liveness and readiness routes, and serving a router
//! until the shutdown signal with a graceful drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks: PostgreSQL answers, JetStream answers, and the process has not begun
/// to shut down.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    js: jetstream::Context,
    stream: String,
    accepting: Arc<AtomicBool>,
}

impl Readiness {
    /// Checks `pool` and the JetStream stream `stream`.
    pub fn new(pool: PgPool, js: jetstream::Context, stream: String) -> Self {
        Self {
            pool,
            js,
            stream,
            accepting: Arc::new(AtomicBool::new(true)),
        }
    }

    /// From now on `/readyz` answers 503 (called when shutdown begins).
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    async fn check(&self) -> Result<(), String> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        let deadline = Duration::from_secs(2);
        tokio::time::timeout(deadline, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map_err(|_| "PostgreSQL timed out".to_owned())?
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        tokio::time::timeout(deadline, self.js.get_stream(&self.stream))
            .await
            .map_err(|_| "JetStream timed out".to_owned())?
            .map_err(|e| format!("JetStream: {e}"))?;
        Ok(())
    }
}

/// `/healthz` (the process answers) and `/readyz` (its dependencies answer).
pub fn health_routes(readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match readiness.check().await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ready"}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "reason": reason})),
        ),
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// `GET /openapi.json` serving `openapi`.
pub fn openapi_route(openapi: utoipa::openapi::OpenApi) -> Router {
    let document = std::sync::Arc::new(openapi);
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = document.clone();
            async move { axum::Json(document.as_ref().clone()) }
        }),
    )
}
