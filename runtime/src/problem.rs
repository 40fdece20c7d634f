//! RFC 9457 problem details: every HTTP error of every service is `application/problem+json`
//! with a stable machine-readable `code`, and the JSON extractor turns a bad body into one.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`/problems/<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// The stable machine-readable code.
    pub code: String,
}

/// An error an HTTP handler returns; rendered as a [`Problem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl ApiError {
    /// A problem with a status, code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 404 with `code`.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// 422 with `code`.
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    /// 409 with `code`.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 500 `internal`: the cause is logged, never shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed; the cause is in the service's log",
        )
    }

    /// 503 `unavailable`: a dependency did not answer.
    pub fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, dependency = what, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} did not answer; try again"),
        )
    }

    /// The problem document.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
        }
    }
}

impl From<contracts::ids::InvalidCustomerId> for ApiError {
    fn from(error: contracts::ids::InvalidCustomerId) -> Self {
        Self::unprocessable("invalid_customer_id", error.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                Self::unavailable("PostgreSQL", &error)
            }
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// A JSON body whose rejection is a problem: `malformed_json` (400) for bad syntax,
/// `invalid_body` (422) for a body that is not one JSON object, a text holding a NUL character
/// (no store accepts one), or missing or wrongly typed fields, `unsupported_media_type` (415)
/// without a JSON content type, `payload_too_large` (413) past the body limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(&rejection)),
        };
        if !value.is_object() {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "the body must be one JSON object",
            ));
        }
        if holds_nul(&value) {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "the body holds a NUL character (\\u0000), which no field accepts",
            ));
        }
        let mut value = value;
        integral(&mut value);
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))
    }
}

/// The largest magnitude below which every whole number is exactly a 64-bit float (2^53).
const EXACT_FLOAT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// Writes every number of `value` that is a whole number of at most 2^53 in magnitude as an
/// integer: JSON does not tell `67.0` from `67` (nor does JSON Schema's `integer`), so an integer
/// field takes either. Past 2^53 a number not written as an integer (`1e300`, or an integer out
/// of 64-bit range such as `-9223372036854775809`) was rounded when it was read, so it stays a
/// float and an integer field refuses it, rather than taking the neighbour it was rounded to.
fn integral(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            let Some(float) = number.as_f64() else {
                return;
            };
            if float.fract() == 0.0 && float.abs() <= EXACT_FLOAT_INTEGERS {
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "a whole number of at most 2^53 in magnitude"
                )]
                let whole = float as i64;
                *value = serde_json::Value::from(whole);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral),
        _ => {}
    }
}

/// Whether a text anywhere in `value` (a key or a string) holds a NUL character.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ApiError::unprocessable("invalid_body", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large",
            )
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", other.body_text()),
    }
}

/// Query parameters whose rejection is a problem (`invalid_query`, 400).
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "the query holds a NUL character",
            ));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        rejection.body_text(),
    )
}

/// The fallback of every router: `route_not_found` (404).
pub async fn route_not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_numbers_are_integers_whatever_their_notation() {
        let mut value =
            json!({"a": 67.0, "b": [1.5, -3.0, 0.0], "c": {"d": 2e3}, "e": 1e300, "f": "7.0"});
        integral(&mut value);
        assert_eq!(
            value,
            json!({"a": 67, "b": [1.5, -3, 0], "c": {"d": 2000}, "e": 1e300, "f": "7.0"})
        );
        assert!(value["a"].is_i64());
    }

    #[test]
    fn integers_out_of_range_are_not_rounded_into_it() {
        #[derive(Debug, serde::Deserialize)]
        struct Chat {
            #[allow(dead_code, reason = "only whether it parses matters")]
            chat_id: i64,
        }
        let parse = |text: &str| {
            let mut value: serde_json::Value = serde_json::from_str(text).expect("json");
            integral(&mut value);
            serde_json::from_value::<Chat>(value)
        };
        for refused in [
            r#"{"chat_id": -9223372036854775809}"#,
            r#"{"chat_id": 9223372036854775808}"#,
            r#"{"chat_id": 1e19}"#,
            r#"{"chat_id": 9007199254740994.0}"#,
        ] {
            assert!(parse(refused).is_err(), "{refused}");
        }
        for taken in [
            r#"{"chat_id": -9223372036854775808}"#,
            r#"{"chat_id": 9223372036854775807}"#,
            r#"{"chat_id": 9007199254740992.0}"#,
            r#"{"chat_id": -5e3}"#,
        ] {
            assert!(parse(taken).is_ok(), "{taken}");
        }
    }
}
