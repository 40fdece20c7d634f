//! HTTP pieces every service shares: liveness and readiness routes, the server span of every
//! request, and the OpenAPI route. Serving itself, behind the edge's checks, is
//! [`crate::edge::Edge::serve`].

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

/// Wraps every route in a server span named `METHOD /route`, continuing the caller's W3C trace
/// context when it sends one.
pub fn traced(router: Router) -> Router {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    router.layer(
        tower_http::trace::TraceLayer::new_for_http()
            .make_span_with(|request: &axum::http::Request<axum::body::Body>| {
                if !crate::telemetry::exporting() {
                    return tracing::Span::none();
                }
                let route = request
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or(request.uri().path(), |m| m.as_str())
                    .to_owned();
                let span = tracing::info_span!(
                    "http.request",
                    otel.name = %format!("{} {route}", request.method()),
                    otel.kind = "server",
                    http.request.method = %request.method(),
                    http.route = %route,
                    url.path = %request.uri().path(),
                    http.response.status_code = tracing::field::Empty,
                );
                let headers: std::collections::BTreeMap<String, String> = request
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                let _ = span.set_parent(crate::telemetry::extract(&headers));
                span
            })
            .on_response(
                |response: &axum::http::Response<axum::body::Body>,
                 _latency: Duration,
                 span: &tracing::Span| {
                    span.record("http.response.status_code", response.status().as_u16());
                },
            ),
    )
}

/// `GET /openapi.json` serving `openapi`, completed with what every service has in common
/// ([`crate::openapi::complete`]: the health, metrics and document routes, the security scheme
/// and each operation's scopes, the edge's statuses).
pub fn openapi_route(mut openapi: utoipa::openapi::OpenApi) -> Router {
    crate::openapi::complete(&mut openapi);
    let document = std::sync::Arc::new(openapi);
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = document.clone();
            async move { axum::Json(document.as_ref().clone()) }
        }),
    )
}
