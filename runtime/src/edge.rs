//! The HTTP edge every service shares: what stands between a client and a handler. It answers
//! every error as RFC 9457 problem+json (405, 408, 413, 414, 415 and 431 included), refuses URIs
//! and header sections past their limits, checks the caller's API token and scope
//! ([`crate::auth`]), limits the rate at which each token starts sagas and gift exchanges (429
//! with `Retry-After`), bounds request bodies and the time a request may take, sends a
//! Content-Security-Policy with the saga page, and serves connections with a header read
//! timeout, so that a slow client cannot hold a connection open.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::auth::{self, Caller, Tokens};
use crate::problem::ApiError;

/// The edge's limits (`SAGA_*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeSettings {
    /// The longest a request may take, in ms (`SAGA_REQUEST_TIMEOUT_MS`); a long poll gets its
    /// wait on top, a server-sent event stream is not bounded.
    pub request_timeout_ms: u64,
    /// The longest a client may take to send a request's headers, in ms, also between the
    /// requests of a kept-alive connection (`SAGA_HEADER_TIMEOUT_MS`).
    pub header_timeout_ms: u64,
    /// The largest request body, in bytes (`SAGA_BODY_LIMIT_BYTES`).
    pub body_limit_bytes: usize,
    /// The longest URI, in bytes (`SAGA_MAX_URI_BYTES`).
    pub max_uri_bytes: usize,
    /// The largest header section, in bytes (`SAGA_MAX_HEADER_BYTES`).
    pub max_header_bytes: usize,
    /// How long the process keeps accepting and serving requests after the shutdown signal,
    /// with `/readyz` already answering 503, before it closes its listener and drains, in ms
    /// (`SAGA_SHUTDOWN_DELAY_MS`): the time a load balancer needs to see the replica not ready.
    /// In Kubernetes the pod's preStop sleep does this instead.
    pub shutdown_delay_ms: u64,
    /// Sagas and gift exchanges one token may start per second, sustained
    /// (`SAGA_STARTS_PER_SECOND`).
    pub starts_per_second: u32,
    /// How many starts one token may make at once above that rate (`SAGA_STARTS_BURST`).
    pub starts_burst: u32,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            header_timeout_ms: 10_000,
            body_limit_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            shutdown_delay_ms: 0,
            starts_per_second: 5_000,
            starts_burst: 10_000,
        }
    }
}

/// The edge of one process: its limits, the API tokens and the start-rate limiter.
#[derive(Clone)]
pub struct Edge {
    settings: EdgeSettings,
    tokens: Arc<Tokens>,
    starts: Arc<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("settings", &self.settings)
            .field("tokens", &"[hashes]")
            .finish()
    }
}

impl Edge {
    /// An edge with `settings` and `tokens`.
    pub fn new(settings: EdgeSettings, tokens: Tokens) -> Self {
        let rate = NonZeroU32::new(settings.starts_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.starts_burst).unwrap_or(rate);
        Self {
            starts: Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
            tokens: Arc::new(tokens),
            settings,
        }
    }

    /// From the environment: `SAGA_*` limits and the API tokens (see [`crate::auth`]).
    pub fn from_env() -> anyhow::Result<Self> {
        let settings: EdgeSettings = crate::config::load()?;
        Ok(Self::new(settings, Tokens::from_env()?))
    }

    /// The configured tokens (for the saga page's login routes).
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.clone()
    }

    /// `router` behind the edge (see the module documentation).
    pub fn harden(&self, router: Router) -> Router {
        let body_limit = self.settings.body_limit_bytes;
        router
            .layer(axum::extract::DefaultBodyLimit::max(body_limit))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
            .layer(middleware::from_fn_with_state(self.clone(), bound_time))
            .layer(middleware::from_fn_with_state(self.clone(), limit_starts))
            .layer(middleware::from_fn_with_state(
                self.tokens.clone(),
                auth::authorize,
            ))
            .layer(middleware::from_fn(page_policy))
            .layer(middleware::from_fn_with_state(self.clone(), bound_request))
            .layer(middleware::from_fn(problems))
    }

    /// Serves `router` behind the edge on `listener` until `shutdown` and then for the shutdown
    /// delay (`/readyz` answers 503 meanwhile), then closes the listener and drains in-flight
    /// requests (at most 10 s).
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let app = crate::http::traced(self.harden(router));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(
                self.settings.header_timeout_ms.max(1),
            ));
        let graceful = GracefulShutdown::new();
        let delay = Duration::from_millis(self.settings.shutdown_delay_ms);
        let stop = async move {
            shutdown.cancelled().await;
            if !delay.is_zero() {
                tracing::info!(
                    delay_ms = %delay.as_millis(),
                    "not ready; still serving until the shutdown delay passes"
                );
                tokio::time::sleep(delay).await;
            }
        };
        tokio::pin!(stop);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let service = app.clone().into_service::<Body>().map_request(
                |request: hyper::Request<hyper::body::Incoming>| request.map(Body::new),
            );
            let service = TowerToHyperService::new(service);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 10 s of draining; closing them");
        }
        Ok(())
    }
}

/// 414 and 431 as problems, before anything else reads the request.
async fn bound_request(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > edge.settings.max_uri_bytes {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the URI has {uri} bytes; at most {} are accepted",
                edge.settings.max_uri_bytes
            ),
        )
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > edge.settings.max_header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the headers have {headers} bytes; at most {} are accepted",
                edge.settings.max_header_bytes
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a request starts a saga (directly or through a gift exchange): the requests the
/// per-token start rate limits.
pub(crate) fn starts(method: &Method, path: &str) -> bool {
    if *method != Method::POST {
        return false;
    }
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    matches!(
        parts.as_slice(),
        ["v1", "sagas"] | ["v1", "gifts", _, "exchanges"]
    )
}

/// 429 with `Retry-After` when a token starts sagas faster than its quota.
async fn limit_starts(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    if !starts(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let key = request
        .extensions()
        .get::<Caller>()
        .map_or_else(String::new, |c| c.name.clone());
    if let Err(not_until) = edge.starts.check_key(&key) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "the token {key:?} starts more than {} sagas per second; try again in {seconds} s",
                edge.settings.starts_per_second
            ),
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    next.run(request).await
}

/// The time a request may take: the request timeout, plus the wait of a long poll
/// (`?wait=`, at most 60 s); an event stream is not bounded (it ends by itself).
async fn bound_time(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    if request.uri().path().ends_with("/events") {
        return next.run(request).await;
    }
    let waits = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("wait=")))
        || request.headers().get("prefer").is_some();
    let mut limit = Duration::from_millis(edge.settings.request_timeout_ms.max(1));
    if waits {
        limit += Duration::from_secs(60);
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// The saga page's Content-Security-Policy: nothing from elsewhere, no framing.
async fn page_policy(request: Request, next: Next) -> Response {
    let page = request.uri().path() == "/ui" || request.uri().path().starts_with("/ui/");
    let mut response = next.run(request).await;
    if page {
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; \
                 img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    }
    response
}

/// Every error answer as problem+json: an error a layer or the framework answers with a plain
/// or empty body (405, 413, 415, ...) gets the problem document of its status. A `413` says
/// `Connection: close`: its body was not read, so the server closes the connection after the
/// answer, and a client that kept it for its next request would see that request fail.
async fn problems(request: Request, next: Next) -> Response {
    let mut response = problem_of(next.run(request).await);
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `response` as a problem document, if it is an error answer that is not one yet.
fn problem_of(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if is_problem {
        return response;
    }
    let (code, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not answer that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        StatusCode::NOT_FOUND => ("route_not_found", "no such route"),
        StatusCode::BAD_REQUEST => ("bad_request", "the request is malformed"),
        _ if status.is_server_error() => ("internal", "the request failed"),
        _ => ("request_refused", "the request was refused"),
    };
    let mut problem = ApiError::new(status, code, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_saga_and_exchange_posts() {
        assert!(starts(&Method::POST, "/v1/sagas"));
        assert!(starts(&Method::POST, "/v1/gifts/abc/exchanges"));
        assert!(!starts(&Method::GET, "/v1/sagas"));
        assert!(!starts(&Method::POST, "/v1/sagas/abc/cancel"));
    }
}
