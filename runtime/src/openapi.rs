//! What every service's OpenAPI document says beyond its handlers' own annotations, added in one
//! place when the document is served ([`crate::http::openapi_route`] calls [`complete`]):
//!
//! - the routes every service has: `/healthz`, `/readyz` (public), `/openapi.json`, `/metrics`;
//! - the security scheme `bearer` (HTTP bearer) and, on every operation, the scopes it needs,
//!   derived from [`crate::auth::needed`] and [`crate::auth::Caller::allows`] (the code that
//!   decides), with its `401` and `403` problems ([`secure`]);
//! - the statuses the edge ([`crate::edge`]) and the JSON and query extractors
//!   ([`crate::problem`]) answer for every route: `400`, `408`, `413`, `414`, `415`, `422`,
//!   `429`, `431`, `500`, `503`, all as problem+json ([`edge_statuses`]).
//!
//! It also holds the schemas of values several services check the same way (a customer id, an
//! `Idempotency-Key`), so that each handler documents exactly what it enforces.

use std::collections::BTreeSet;

use axum::http::Method;
use utoipa::PartialSchema as _;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, KnownFormat, OpenApi, OpenApiBuilder, Ref, RefOr};

use crate::auth::{Caller, Needed, Scope};
use crate::problem::Problem;

/// The name of the security scheme every protected operation refers to.
pub const SECURITY_SCHEME: &str = "bearer";

/// What a customer id must look like (what `contracts::CustomerId` accepts).
pub const CUSTOMER_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

/// What an `Idempotency-Key` must look like: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An empty document of one of our services: its `title` and `description`, the workspace's
/// version and license. Every service's router starts from one
/// (`OpenApiRouter::with_openapi`), so that no document shows what `OpenApiRouter::new()`
/// would: utoipa-axum's own name, version, author and license.
pub fn document(title: &str, description: &str) -> OpenApi {
    let license = LicenseBuilder::new()
        .name(env!("CARGO_PKG_LICENSE"))
        .identifier(Some(env!("CARGO_PKG_LICENSE")))
        .build();
    let info = InfoBuilder::new()
        .title(title)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description))
        .license(Some(license))
        .build();
    OpenApiBuilder::new().info(info).build()
}

/// A customer id, as a schema.
pub fn customer_id() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(CUSTOMER_ID_PATTERN))
        .description(Some(
            "A customer id: 1 to 64 letters, digits, `-`, `_`, `.` or `:`",
        ))
        .into()
}

/// A uuid in its hyphenated text form, as a schema.
pub fn uuid() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

/// The number a canonical decimal of 1 to `max_digits` digits writes (no sign, no leading zero
/// but in `0`); `None` for any other text. Cursors are checked with it, so that exactly what
/// their documented pattern describes is accepted.
pub fn decimal(text: &str, max_digits: usize) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.len() <= max_digits.min(19)
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

/// The uuid `text` writes in the canonical form (hyphenated, lowercase, what the API writes);
/// `None` for any other text.
pub fn canonical_uuid(text: &str) -> Option<uuid::Uuid> {
    let id = uuid::Uuid::parse_str(text).ok()?;
    (id.hyphenated().to_string() == text).then_some(id)
}

/// Whether `key` is a valid `Idempotency-Key` ([`IDEMPOTENCY_KEY_PATTERN`]).
pub fn is_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Completes a service's document: the common routes, [`secure`], [`edge_statuses`], and what
/// holds for every route (in the document's description).
pub fn complete(openapi: &mut OpenApi) {
    common_routes(openapi);
    secure(openapi);
    edge_statuses(openapi);
    let general = "Every error answer is an RFC 9457 problem document \
        (`application/problem+json`) with a stable `code`. A method a path does not document \
        is answered `405` (`method_not_allowed`, with `Allow`), an unknown path `404` \
        (`route_not_found`). No text anywhere may hold a NUL character (U+0000): a query that \
        holds one is refused with `400` (`invalid_query`), a body with `422` (`invalid_body`). \
        A JSON body must be one JSON object. Every operation but `/healthz` and `/readyz` needs \
        `Authorization: Bearer <token>`; the scopes each operation accepts are its `security` \
        requirements (any one of them is enough).";
    let description = match openapi.info.description.take() {
        Some(own) if !own.trim().is_empty() => format!("{own}\n\n{general}"),
        _ => general.to_owned(),
    };
    openapi.info.description = Some(description);
}

/// Every operation of the document with its path and method.
fn operations(openapi: &mut OpenApi) -> impl Iterator<Item = (String, Method, &mut Operation)> {
    openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            (Method::GET, item.get.as_mut()),
            (Method::PUT, item.put.as_mut()),
            (Method::POST, item.post.as_mut()),
            (Method::DELETE, item.delete.as_mut()),
            (Method::OPTIONS, item.options.as_mut()),
            (Method::HEAD, item.head.as_mut()),
            (Method::PATCH, item.patch.as_mut()),
            (Method::TRACE, item.trace.as_mut()),
        ]
        .into_iter()
        .filter_map(move |(method, operation)| Some((path.clone(), method, operation?)))
    })
}

/// The scopes, each of which alone lets a token call a route that needs `needed`.
pub fn scopes_allowed(needed: Needed) -> Vec<Scope> {
    Scope::ALL
        .into_iter()
        .filter(|scope| {
            Caller {
                name: String::new(),
                scopes: BTreeSet::from([*scope]),
            }
            .allows(needed)
        })
        .collect()
}

/// A problem answer with `description`.
pub fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build()
}

fn text_header(description: &str) -> Header {
    let mut header = Header::new(ObjectBuilder::new().schema_type(Type::String));
    header.description = Some(description.to_owned());
    header
}

/// Adds `status` to `operation` unless the handler documents it already.
fn answer(operation: &mut Operation, status: &str, response: impl FnOnce() -> Response) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::T(response()));
}

/// The `bearer` security scheme, and on every operation the scopes it accepts (one security
/// requirement per scope that alone is enough, from [`crate::auth::needed`]) with its `401` and
/// `403` answers; the public ones (`/healthz`, `/readyz`) get an empty `security`.
pub fn secure(openapi: &mut OpenApi) {
    let scheme = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "An API token: `Authorization: Bearer <token>`. Each token has scopes: `game` \
             (create missions, link chats, start sagas, exchange gifts; read one saga, mission, \
             wallet, gift, chat or my-page by its id), `read` (every GET), `operate` (what \
             `read` may, and cancel, retry, dead letters, the Mypage rebuild), `notify` (send a \
             Telegram message), `admin` (everything). A missing or unknown token is answered \
             401, a token without a scope the operation accepts 403.",
        ))
        .build();
    openapi
        .components
        .get_or_insert_with(|| ComponentsBuilder::new().build())
        .add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    ensure_problem_schema(openapi);
    for (path, method, operation) in operations(openapi) {
        let Some(needed) = crate::auth::needed(&method, &path) else {
            operation.security = Some(Vec::new());
            continue;
        };
        let scopes = scopes_allowed(needed);
        operation.security = Some(
            scopes
                .iter()
                .map(|scope| SecurityRequirement::new(SECURITY_SCHEME, [scope.as_str()]))
                .collect(),
        );
        let names: Vec<String> = scopes.iter().map(|s| format!("`{}`", s.as_str())).collect();
        let note = format!("Scopes: {}.", names.join(", "));
        operation.description = Some(match operation.description.take() {
            Some(own) if !own.trim().is_empty() => format!("{own}\n\n{note}"),
            _ => note,
        });
        answer(operation, "401", || {
            let mut response = problem_response(
                "No token, or one this platform does not know (`unauthenticated`, `invalid_token`)",
            );
            response.headers.insert(
                "WWW-Authenticate".to_owned(),
                RefOr::T(text_header("`Bearer realm=\"reward-saga\"`")),
            );
            response
        });
        answer(operation, "403", || {
            problem_response(&format!(
                "The token has none of the scopes this operation accepts (`insufficient_scope`): {}",
                names.join(", ")
            ))
        });
    }
}

/// The statuses the edge and the extractors answer: `400` (a body that is not JSON, a query that
/// cannot be read), `413`, `415` and `422` where a JSON body is read, `408` (the request
/// timeout; not for an event stream), `414` and `431` everywhere, `429` with `Retry-After` where
/// saga starts are rate-limited, and `500`/`503` on the API routes.
pub fn edge_statuses(openapi: &mut OpenApi) {
    ensure_problem_schema(openapi);
    for (path, method, operation) in operations(openapi) {
        let body = operation.request_body.is_some();
        let query = operation.parameters.iter().flatten().any(
            |parameter| matches!(parameter, RefOr::T(p) if p.parameter_in == ParameterIn::Query),
        );
        if body {
            answer(operation, "400", || {
                problem_response("The body is not JSON (`malformed_json`)")
            });
            answer(operation, "413", || {
                problem_response(
                    "The body is larger than the limit (`payload_too_large`, `SAGA_BODY_LIMIT_BYTES`)",
                )
            });
            answer(operation, "415", || {
                problem_response(
                    "The body is not sent as `application/json` (`unsupported_media_type`)",
                )
            });
            answer(operation, "422", || {
                problem_response(
                    "The body is not one JSON object of the documented fields, or holds a NUL character (`invalid_body`)",
                )
            });
        }
        if query {
            answer(operation, "400", || {
                problem_response(
                    "A query parameter that is not as documented, or a NUL character in the query (`invalid_query`)",
                )
            });
        }
        if !path.ends_with("/events") {
            answer(operation, "408", || {
                problem_response(
                    "The request took longer than the limit (`request_timeout`, `SAGA_REQUEST_TIMEOUT_MS`)",
                )
            });
        }
        answer(operation, "414", || {
            problem_response(
                "The URI is longer than the limit (`uri_too_long`, `SAGA_MAX_URI_BYTES`)",
            )
        });
        answer(operation, "431", || {
            problem_response(
                "The headers are larger than the limit (`headers_too_large`, `SAGA_MAX_HEADER_BYTES`)",
            )
        });
        if crate::edge::starts(&method, &path) {
            answer(operation, "429", || {
                let mut response = problem_response(
                    "The token starts sagas faster than its quota (`rate_limited`, `SAGA_STARTS_PER_SECOND`, `SAGA_STARTS_BURST`)",
                );
                response.headers.insert(
                    "Retry-After".to_owned(),
                    RefOr::T(text_header("Seconds to wait")),
                );
                response
            });
        }
        if path.starts_with("/v1/") {
            answer(operation, "500", || {
                problem_response(
                    "The request failed; the cause is in the service's log (`internal`)",
                )
            });
            answer(operation, "503", || {
                problem_response("A dependency did not answer; try again (`unavailable`)")
            });
        }
    }
}

fn ensure_problem_schema(openapi: &mut OpenApi) {
    openapi
        .components
        .get_or_insert_with(|| ComponentsBuilder::new().build())
        .schemas
        .entry("Problem".to_owned())
        .or_insert_with(Problem::schema);
}

fn status_schema(reason: bool) -> Schema {
    let mut object = ObjectBuilder::new()
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(if reason {
                    vec!["not_ready"]
                } else {
                    vec!["ok", "ready"]
                })),
        )
        .required("status");
    if reason {
        object = object
            .property(
                "reason",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("What is not ready")),
            )
            .required("reason");
    }
    object.into()
}

fn json_response(description: &str, schema: Schema) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(schema)))
        .build()
}

/// `/healthz`, `/readyz`, `/openapi.json` and `/metrics`, which every service serves
/// ([`crate::http::health_routes`], [`crate::http::openapi_route`], [`crate::metrics::route`]).
fn common_routes(openapi: &mut OpenApi) {
    let get = |id: &str, summary: &str, responses: Vec<(&str, Response)>| {
        let mut operation = OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some(summary))
            .tag("platform");
        for (status, response) in responses {
            operation = operation.response(status, response);
        }
        PathItem::new(HttpMethod::Get, operation.build())
    };
    let routes = [
        (
            "/healthz",
            get(
                "liveness",
                "Liveness: the process answers",
                vec![("200", json_response("Alive", status_schema(false)))],
            ),
        ),
        (
            "/readyz",
            get(
                "readiness",
                "Readiness: the database and JetStream answer, and the process is not shutting down",
                vec![
                    ("200", json_response("Ready", status_schema(false))),
                    ("503", json_response("Not ready", status_schema(true))),
                ],
            ),
        ),
        (
            "/openapi.json",
            get(
                "openapi_document",
                "This document",
                vec![(
                    "200",
                    json_response(
                        "The OpenAPI document",
                        ObjectBuilder::new().schema_type(Type::Object).into(),
                    ),
                )],
            ),
        ),
        (
            "/metrics",
            get(
                "metrics",
                "Prometheus metrics",
                vec![(
                    "200",
                    ResponseBuilder::new()
                        .description("The metrics in the Prometheus text format")
                        .content(
                            "text/plain",
                            Content::new(Some(ObjectBuilder::new().schema_type(Type::String))),
                        )
                        .build(),
                )],
            ),
        ),
    ];
    for (path, item) in routes {
        openapi.paths.paths.entry(path.to_owned()).or_insert(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn document() -> Value {
        let mut openapi = OpenApi::new(
            utoipa::openapi::Info::new("t", "1"),
            utoipa::openapi::Paths::new(),
        );
        let op = |body: bool| {
            let mut operation = OperationBuilder::new()
                .response("200", ResponseBuilder::new().description("ok").build());
            if body {
                operation = operation.request_body(Some(
                    utoipa::openapi::request_body::RequestBodyBuilder::new()
                        .content("application/json", Content::new(Some(uuid())))
                        .build(),
                ));
            }
            operation.build()
        };
        openapi.paths.paths.insert(
            "/v1/sagas".into(),
            utoipa::openapi::path::PathItemBuilder::new()
                .operation(HttpMethod::Get, op(false))
                .operation(HttpMethod::Post, op(true))
                .build(),
        );
        openapi.paths.paths.insert(
            "/v1/sagas/{id}".into(),
            PathItem::new(HttpMethod::Get, op(false)),
        );
        openapi.paths.paths.insert(
            "/v1/rewards/budget".into(),
            PathItem::new(HttpMethod::Put, op(true)),
        );
        complete(&mut openapi);
        serde_json::to_value(&openapi).expect("json")
    }

    fn scopes(doc: &Value, path: &str, method: &str) -> Vec<String> {
        doc["paths"][path][method]["security"]
            .as_array()
            .expect("security")
            .iter()
            .map(|requirement| {
                requirement[SECURITY_SCHEME][0]
                    .as_str()
                    .expect("scope")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn every_operation_names_the_scopes_the_code_accepts() {
        let doc = document();
        assert_eq!(
            doc["components"]["securitySchemes"][SECURITY_SCHEME],
            json!({"type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"][SECURITY_SCHEME]["description"]})
        );
        assert_eq!(scopes(&doc, "/v1/sagas", "post"), ["game", "admin"]);
        assert_eq!(
            scopes(&doc, "/v1/sagas", "get"),
            ["read", "operate", "admin"]
        );
        assert_eq!(
            scopes(&doc, "/v1/sagas/{id}", "get"),
            ["game", "read", "operate", "admin"]
        );
        assert_eq!(scopes(&doc, "/v1/rewards/budget", "put"), ["admin"]);
        assert_eq!(
            scopes(&doc, "/metrics", "get"),
            ["read", "operate", "admin"]
        );
        for public in ["/healthz", "/readyz"] {
            assert_eq!(
                doc["paths"][public]["get"]["security"],
                json!([]),
                "{public}"
            );
            assert!(
                doc["paths"][public]["get"]["responses"]
                    .get("401")
                    .is_none()
            );
        }
        for (path, method) in [
            ("/v1/sagas", "post"),
            ("/v1/sagas/{id}", "get"),
            ("/openapi.json", "get"),
        ] {
            let responses = &doc["paths"][path][method]["responses"];
            for status in ["401", "403"] {
                assert_eq!(
                    responses[status]["content"][PROBLEM_JSON]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
            assert!(
                responses["401"]["headers"]
                    .get("WWW-Authenticate")
                    .is_some()
            );
        }
        assert!(doc["components"]["schemas"].get("Problem").is_some());
    }

    #[test]
    fn the_edge_statuses_are_where_they_apply() {
        let doc = document();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect()
        };
        let start = statuses("/v1/sagas", "post");
        for status in [
            "400", "408", "413", "414", "415", "422", "429", "431", "500", "503",
        ] {
            assert!(
                start.contains(&status.to_owned()),
                "POST /v1/sagas {status}"
            );
        }
        let budget = statuses("/v1/rewards/budget", "put");
        assert!(budget.contains(&"413".to_owned()));
        assert!(
            !budget.contains(&"429".to_owned()),
            "only starts are rate-limited"
        );
        let read = statuses("/v1/sagas/{id}", "get");
        for absent in ["413", "415", "429"] {
            assert!(
                !read.contains(&absent.to_owned()),
                "GET /v1/sagas/{{id}} {absent}"
            );
        }
        assert!(
            doc["paths"]["/v1/sagas"]["post"]["responses"]["429"]["headers"]
                .get("Retry-After")
                .is_some()
        );
    }

    #[test]
    fn a_service_document_names_the_service_and_our_license() {
        let mut openapi = super::document("Mission service", "Missions.");
        complete(&mut openapi);
        let doc = serde_json::to_value(&openapi).expect("json");
        assert_eq!(doc["info"]["title"], "Mission service");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["info"]["license"]["identifier"], "Apache-2.0");
        assert!(doc["info"].get("contact").is_none(), "{}", doc["info"]);
        assert!(
            doc["info"]["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("Missions.\n\nEvery error answer")),
            "{}",
            doc["info"]
        );
    }

    #[test]
    fn cursor_parts_are_canonical() {
        assert_eq!(decimal("0", 5), Some(0));
        assert_eq!(decimal("12345", 5), Some(12345));
        for bad in ["", "012", "+1", "-1", "123456", " 1", "1a"] {
            assert_eq!(decimal(bad, 5), None, "{bad:?}");
        }
        assert_eq!(
            decimal(&"9".repeat(19), 30),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(decimal(&"1".repeat(20), 30), None, "more than a u64 holds");
        let id = uuid::Uuid::new_v4();
        assert_eq!(canonical_uuid(&id.to_string()), Some(id));
        for other in [
            id.simple().to_string(),
            id.to_string().to_uppercase(),
            id.braced().to_string(),
            id.urn().to_string(),
        ] {
            assert_eq!(canonical_uuid(&other), None, "{other}");
        }
    }

    #[test]
    fn idempotency_keys_are_what_the_pattern_says() {
        for good in ["k", "gift:0192-abc", &"x".repeat(255), "!~"] {
            assert!(is_idempotency_key(good), "{good}");
        }
        for bad in ["", " ", "a b", "ключ", "tab\there", &"x".repeat(256)] {
            assert!(!is_idempotency_key(bad), "{bad:?}");
        }
    }
}
