//! The platform's HTTP API as `sagactl` calls it: one method per kind of request, the bearer
//! token on each, path segments percent-encoded (an id typed by a person cannot leave its
//! route), and every non-2xx answer turned into a [`CliError`] (problem+json keeps its `code`
//! and `detail`). Answers are returned as JSON values, so `--json` prints exactly what the
//! platform said.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;

use crate::endpoint::Endpoint;
use crate::error::CliError;

/// How long one ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a non-problem error body is quoted.
const QUOTED_BODY: usize = 300;

/// A client of one platform.
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
}

/// A request: method, path segments under the base URL, query, body and extra headers.
pub struct Call<'a> {
    method: Method,
    segments: Vec<&'a str>,
    query: Vec<(String, String)>,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

impl<'a> Call<'a> {
    /// `GET` of the route made of `segments` (`["v1", "sagas", id]`).
    pub fn get(segments: &[&'a str]) -> Self {
        Self::new(Method::GET, segments)
    }

    /// `POST` of the route made of `segments`.
    pub fn post(segments: &[&'a str]) -> Self {
        Self::new(Method::POST, segments)
    }

    /// `DELETE` of the route made of `segments`.
    pub fn delete(segments: &[&'a str]) -> Self {
        Self::new(Method::DELETE, segments)
    }

    fn new(method: Method, segments: &[&'a str]) -> Self {
        Self {
            method,
            segments: segments.to_vec(),
            query: Vec::new(),
            body: None,
            headers: Vec::new(),
        }
    }

    /// Adds query parameters.
    pub fn query(mut self, pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        self.query.extend(pairs);
        self
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The route's path as it appears in messages: `/v1/sagas/{id}`, no query.
    fn path(&self) -> String {
        self.segments.iter().map(|s| format!("/{s}")).collect()
    }
}

impl ApiClient {
    /// A client of `endpoint`.
    pub fn new(endpoint: Endpoint) -> Result<Self, CliError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("sagactl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| CliError::Transport {
                base: endpoint.base.to_string(),
                source,
            })?;
        Ok(Self {
            http,
            base: endpoint.base,
            token: endpoint.token,
        })
    }

    /// Sends `call` and returns the answer's JSON body (`null` when it has none, like a 204).
    pub async fn send(&self, call: Call<'_>) -> Result<Value, CliError> {
        let method = call.method.to_string();
        let path = call.path();
        let response = self
            .request(call)?
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = response.status();
        let problem = is_problem(response.headers());
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(error_of(status, problem, &bytes, method, path));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Unexpected {
            what: format!("{method} {path}"),
            detail: format!("not JSON: {e}"),
        })
    }

    /// Opens a server-sent-event stream: `Some(response)` when the route answers 200
    /// `text/event-stream`, `None` when the platform has no such route (404) or answers
    /// something else that is not an error (the caller then polls instead).
    pub async fn open_events(&self, call: Call<'_>) -> Result<Option<Response>, CliError> {
        let method = call.method.to_string();
        let path = call.path();
        let response = self
            .request(call)?
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = response.status();
        let event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status == StatusCode::OK && event_stream {
            return Ok(Some(response));
        }
        if status == StatusCode::NOT_FOUND || status.is_success() {
            return Ok(None);
        }
        let problem = is_problem(response.headers());
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        Err(error_of(status, problem, &bytes, method, path))
    }

    fn request(&self, call: Call<'_>) -> Result<reqwest::RequestBuilder, CliError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CliError::Usage(format!("{} cannot be a base URL", self.base)))?
            .pop_if_empty()
            .extend(call.segments.iter().copied());
        let mut request = self
            .http
            .request(call.method, url)
            .bearer_auth(self.token.expose_secret());
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        for (name, value) in call.headers {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| CliError::Usage(format!("{name} {value:?} is not a header value")))?;
            request = request.header(name, value);
        }
        if let Some(body) = call.body {
            request = request.json(&body);
        }
        Ok(request)
    }

    /// A transport error, with the base URL (never the token).
    pub fn transport(&self, source: reqwest::Error) -> CliError {
        CliError::Transport {
            base: self.base.to_string(),
            source,
        }
    }
}

/// `id` as one path segment, refused when it is empty or would leave its route (`.`, `..`).
pub fn id_segment<'a>(what: &str, id: &'a str) -> Result<&'a str, CliError> {
    if id.trim().is_empty() || matches!(id, "." | "..") {
        return Err(CliError::Usage(format!("{id:?} is not a {what} id")));
    }
    Ok(id)
}

fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

/// The error of a non-2xx answer: the problem's code and detail, or the start of the body.
fn error_of(status: StatusCode, json: bool, body: &[u8], method: String, path: String) -> CliError {
    let problem = json
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten()
        .filter(|p| p["code"].is_string());
    match problem {
        Some(problem) => CliError::Problem {
            status: status.as_u16(),
            code: problem["code"].as_str().unwrap_or_default().to_owned(),
            detail: problem["detail"]
                .as_str()
                .or_else(|| problem["title"].as_str())
                .unwrap_or_default()
                .to_owned(),
            method,
            path,
        },
        None => {
            let text = String::from_utf8_lossy(body);
            let mut quoted: String = text.trim().chars().take(QUOTED_BODY).collect();
            if text.trim().chars().count() > QUOTED_BODY {
                quoted.push('…');
            }
            CliError::Http {
                status: status.as_u16(),
                method,
                path,
                body: quoted,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_keeps_its_code_and_detail() {
        let body = br#"{"type":"/problems/saga_not_found","title":"Not Found","status":404,"detail":"no saga x","code":"saga_not_found"}"#;
        let error = error_of(
            StatusCode::NOT_FOUND,
            true,
            body,
            "GET".into(),
            "/v1/sagas/x".into(),
        );
        assert_eq!(error.to_string(), "saga_not_found (404): no saga x");
    }

    #[test]
    fn another_error_quotes_the_start_of_its_body() {
        let body = "x".repeat(1000);
        let error = error_of(
            StatusCode::BAD_GATEWAY,
            false,
            body.as_bytes(),
            "GET".into(),
            "/v1/sagas".into(),
        );
        let text = error.to_string();
        assert!(
            text.starts_with("GET /v1/sagas answered HTTP 502: xxx"),
            "{text}"
        );
        assert!(text.len() < 400, "{text}");
    }

    #[test]
    fn an_id_cannot_leave_its_route() {
        assert!(id_segment("saga", "..").is_err());
        assert!(id_segment("saga", "").is_err());
        assert_eq!(id_segment("saga", "a/b").ok(), Some("a/b"));
    }

    #[test]
    fn the_path_of_a_call_is_its_segments() {
        assert_eq!(Call::get(&["v1", "sagas", "abc"]).path(), "/v1/sagas/abc");
    }
}
