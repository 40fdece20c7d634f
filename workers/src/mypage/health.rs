//! `/healthz` and `/readyz` of the Mypage worker. The runtime's readiness checks a PostgreSQL
//! pool; this one checks the view's store, whichever database it runs on, and `DOMAIN_EVT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

use super::store::Store;

/// What `/readyz` checks: the store answers, `DOMAIN_EVT` exists, and the process has not
/// begun to shut down.
#[derive(Clone)]
pub struct Readiness {
    store: Store,
    js: jetstream::Context,
    stream: String,
    accepting: Arc<AtomicBool>,
}

impl Readiness {
    /// Checks `store` and the JetStream stream `stream`.
    pub fn new(store: Store, js: jetstream::Context, stream: String) -> Self {
        Self {
            store,
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
        let name = self.store.backend().as_str();
        tokio::time::timeout(deadline, self.store.ping())
            .await
            .map_err(|_| format!("{name} timed out"))?
            .map_err(|e| format!("{name}: {e}"))?;
        tokio::time::timeout(deadline, self.js.get_stream(&self.stream))
            .await
            .map_err(|_| "JetStream timed out".to_owned())?
            .map_err(|e| format!("JetStream: {e}"))?;
        Ok(())
    }
}

/// `/healthz` (the process answers) and `/readyz` (its dependencies answer).
pub fn routes(readiness: Readiness) -> Router {
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
