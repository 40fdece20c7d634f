//! `/docs`: Swagger UI over the served `/openapi.json`, for people. Its files are compiled in
//! (utoipa-swagger-ui's `vendored` feature): nothing is downloaded when building or loaded from
//! elsewhere when running. Its pages get their own Content-Security-Policy, as strict as the saga
//! page's (Swagger UI's own files only; the try-it-out calls go to this origin).
//!
//! Like every `GET`, `/docs` needs a token with `read`: in a browser, the saga page's login
//! cookie (log in at `/ui/login` first).

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use utoipa_swagger_ui::{Config, SwaggerUi};

/// The policy of the docs' pages.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

async fn policy(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// `/docs` (a redirect to `/docs/`), `/docs/` and Swagger UI's files under it.
pub(super) fn router() -> Router {
    let config = Config::new(["/openapi.json"])
        .try_it_out_enabled(true)
        .display_request_duration(true)
        .with_credentials(true);
    Router::from(SwaggerUi::new("/docs").config(config)).layer(middleware::from_fn(policy))
}
