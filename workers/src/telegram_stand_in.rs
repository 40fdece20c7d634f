//! A stand-in for the Telegram Bot API, used by tests and local runs in
//! place of `api.telegram.org`.
//!
//! This module owns the fake `sendMessage` endpoint (answers, validation
//! errors and failure bodies shaped like the real Bot API), the control API
//! used to inject faults and block chats, and the in-memory record of every
//! `sendMessage` call so tests can check what was sent and when.
//!
//! Routes:
//!
//! | Method   | Path                      | Purpose                                          |
//! |----------|---------------------------|--------------------------------------------------|
//! | `POST`   | `/bot{token}/sendMessage` | the Bot API method                               |
//! | `POST`   | `/control/faults`         | queue `{"status", "count"?, "retry_after"?}`     |
//! | `POST`   | `/control/blocked`        | `{"chat_id"}`: every send to it answers 403      |
//! | `GET`    | `/control/messages`       | every call received, in order (`?chat_id=` filters) |
//! | `DELETE` | `/control/messages`       | same as `POST /control/reset`                    |
//! | `POST`   | `/control/reset`          | clear messages, faults, blocks and counters      |
//! | `GET`    | `/healthz`                | liveness                                         |
//!
//! The bot token is checked for shape only and is never stored, logged or
//! returned.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, extract::rejection::JsonRejection};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The longest message text Telegram accepts, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// The `retry_after` (seconds) used for an injected 429 that names none.
pub const DEFAULT_RETRY_AFTER: u64 = 1;

/// The HTTP statuses `POST /control/faults` accepts.
pub const FAULT_STATUSES: [u16; 6] = [400, 401, 403, 429, 500, 502];

/// The shared state of one stand-in: the record of calls, the fault queue and
/// the blocked chats. Cheap to clone; clones share the same state.
#[derive(Clone, Default)]
pub struct StandIn {
    inner: Arc<Mutex<Inner>>,
}

/// The most recent calls kept for inspection; older ones are forgotten (a long benchmark run
/// must not grow the stand-in without bound).
const KEPT_MESSAGES: usize = 100_000;

#[derive(Default)]
struct Inner {
    messages: Vec<ReceivedMessage>,
    received: u64,
    faults: VecDeque<QueuedFault>,
    blocked: HashSet<String>,
    next_message_id: HashMap<String, i64>,
    channel_ids: HashMap<String, i64>,
}

struct QueuedFault {
    status: StatusCode,
    retry_after: Option<u64>,
    remaining: u32,
}

/// One `sendMessage` call as the stand-in received and answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedMessage {
    /// Position of the call among all calls since the last reset, from 1.
    pub seq: u64,
    /// When the call arrived; serialized as RFC 3339 with milliseconds.
    #[serde(serialize_with = "rfc3339_millis")]
    pub received_at: DateTime<Utc>,
    /// The `chat_id` exactly as sent (number or string), `null` if absent.
    pub chat_id: Value,
    /// The `text` as sent, if there was one.
    pub text: Option<String>,
    /// The `parse_mode` as sent, if there was one.
    pub parse_mode: Option<String>,
    /// The HTTP status the stand-in answered.
    pub status: u16,
    /// The `message_id` answered, `None` when the call failed.
    pub message_id: Option<i64>,
}

/// A failure to answer the next `count` `sendMessage` calls with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// HTTP status: one of [`FAULT_STATUSES`].
    pub status: u16,
    /// How many calls fail; defaults to 1.
    #[serde(default = "one")]
    pub count: u32,
    /// For 429: seconds to put in `parameters.retry_after`; defaults to
    /// [`DEFAULT_RETRY_AFTER`]. Ignored for other statuses.
    #[serde(default)]
    pub retry_after: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Why the control API refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The fault status is not one of [`FAULT_STATUSES`].
    UnsupportedStatus(u16),
    /// The chat id is neither an integer nor a non-empty string.
    InvalidChatId,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnsupportedStatus(status) => write!(
                f,
                "unsupported fault status {status}, expected one of {FAULT_STATUSES:?}"
            ),
            Self::InvalidChatId => f.write_str("chat_id must be an integer or a non-empty string"),
        }
    }
}

impl std::error::Error for ControlError {}

impl StandIn {
    /// Every `sendMessage` call received since the last reset, in order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.lock().messages.clone()
    }

    /// Queues a fault after those already queued.
    pub fn push_fault(&self, fault: FaultSpec) -> Result<(), ControlError> {
        let status = StatusCode::from_u16(fault.status)
            .ok()
            .filter(|_| FAULT_STATUSES.contains(&fault.status))
            .ok_or(ControlError::UnsupportedStatus(fault.status))?;
        if fault.count > 0 {
            self.lock().faults.push_back(QueuedFault {
                status,
                retry_after: fault.retry_after,
                remaining: fault.count,
            });
        }
        Ok(())
    }

    /// Makes every later send to `chat_id` answer 403 until the next reset.
    pub fn block(&self, chat_id: &Value) -> Result<(), ControlError> {
        let key = chat_key(chat_id).ok_or(ControlError::InvalidChatId)?;
        self.lock().blocked.insert(key);
        Ok(())
    }

    /// Clears the recorded messages, the fault queue, the blocked chats and
    /// the message id counters.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates, applies faults and blocks, records and answers one call.
    fn send_message(&self, body: &[u8]) -> Result<Value, ApiError> {
        let received_at = Utc::now();
        let request = parse_send_message(body);
        let mut inner = self.lock();
        let (chat_id, text, parse_mode) = match &request {
            Ok(r) => (r.chat_id.clone(), r.text.clone(), r.parse_mode.clone()),
            Err(_) => (Value::Null, None, None),
        };
        let outcome = request
            .and_then(|r| r.validate())
            .and_then(|key| inner.answer(&key));
        let (status, message_id) = match &outcome {
            Ok((_, id)) => (StatusCode::OK, Some(*id)),
            Err(e) => (e.status, None),
        };
        inner.received += 1;
        let seq = inner.received;
        if inner.messages.len() >= KEPT_MESSAGES {
            inner.messages.drain(..KEPT_MESSAGES / 10);
        }
        inner.messages.push(ReceivedMessage {
            seq,
            received_at,
            chat_id,
            text: text.clone(),
            parse_mode,
            status: status.as_u16(),
            message_id,
        });
        drop(inner);
        tracing::debug!(seq, status = status.as_u16(), "sendMessage");

        let (chat, message_id) = outcome?;
        Ok(json!({
            "message_id": message_id,
            "date": received_at.timestamp(),
            "chat": chat,
            "text": text,
        }))
    }
}

impl Inner {
    /// Applies the fault queue and blocks to a valid call; on success
    /// returns the `chat` object and the new message id.
    fn answer(&mut self, key: &str) -> Result<(Value, i64), ApiError> {
        if let Some(fault) = self.faults.front_mut() {
            let error = ApiError::fault(fault.status, fault.retry_after);
            fault.remaining -= 1;
            if fault.remaining == 0 {
                self.faults.pop_front();
            }
            return Err(error);
        }
        if self.blocked.contains(key) {
            return Err(ApiError::fault(StatusCode::FORBIDDEN, None));
        }
        let chat = match key.parse::<i64>() {
            Ok(id) => json!({ "id": id, "type": "private" }),
            Err(_) => {
                // `@username`: give the channel a stable negative id, as
                // Telegram does.
                let next = -1_000_000_000_001 - self.channel_ids.len() as i64;
                let id = *self.channel_ids.entry(key.to_owned()).or_insert(next);
                json!({ "id": id, "type": "channel", "username": &key[1..] })
            }
        };
        let counter = self.next_message_id.entry(key.to_owned()).or_insert(0);
        *counter += 1;
        Ok((chat, *counter))
    }
}

/// The fields of a `sendMessage` body the stand-in looks at.
struct SendMessage {
    chat_id: Value,
    text: Option<String>,
    parse_mode: Option<String>,
}

impl SendMessage {
    /// Checks the call like Telegram does; returns the chat's key.
    fn validate(self) -> Result<String, ApiError> {
        let key = match &self.chat_id {
            Value::Null => return Err(ApiError::bad_request("chat_id is empty")),
            Value::String(s) if s.trim().is_empty() => {
                return Err(ApiError::bad_request("chat_id is empty"));
            }
            other => chat_key(other)
                .filter(|k| k.parse::<i64>().is_ok() || k.len() > 1 && k.starts_with('@'))
                .ok_or_else(|| ApiError::bad_request("chat not found"))?,
        };
        let text = self.text.unwrap_or_default();
        if text.trim().is_empty() {
            return Err(ApiError::bad_request("message text is empty"));
        }
        if text.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ApiError::bad_request("message is too long"));
        }
        if let Some(mode) = self.parse_mode.filter(|m| !m.is_empty())
            && !["html", "markdown", "markdownv2"].contains(&mode.to_ascii_lowercase().as_str())
        {
            return Err(ApiError::bad_request("unsupported parse_mode"));
        }
        Ok(key)
    }
}

/// Parses a JSON `sendMessage` body; an empty body has no fields.
fn parse_send_message(body: &[u8]) -> Result<SendMessage, ApiError> {
    let mut fields = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => fields,
            _ => return Err(ApiError::bad_request("can't parse JSON object")),
        }
    };
    let text = match fields.remove("text") {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let parse_mode = match fields.remove("parse_mode") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(SendMessage {
        chat_id: fields.remove("chat_id").unwrap_or(Value::Null),
        text,
        parse_mode,
    })
}

/// The key a chat is counted and blocked under: integers and their decimal
/// strings share one key.
fn chat_key(chat_id: &Value) -> Option<String> {
    match chat_id {
        Value::Number(n) => n.as_i64().map(|n| n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

/// A failed Bot API call, answered with Telegram's error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    description: Cow<'static, str>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn bad_request(reason: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            description: format!("Bad Request: {reason}").into(),
            retry_after: None,
        }
    }

    fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            description: "Not Found".into(),
            retry_after: None,
        }
    }

    /// The answer Telegram gives with `status` (one of [`FAULT_STATUSES`]).
    fn fault(status: StatusCode, retry_after: Option<u64>) -> Self {
        let description = match status {
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                return Self {
                    status,
                    description: format!("Too Many Requests: retry after {retry_after}").into(),
                    retry_after: Some(retry_after),
                };
            }
            StatusCode::BAD_REQUEST => "Bad Request: chat not found",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden: bot was blocked by the user",
            StatusCode::BAD_GATEWAY => "Bad Gateway",
            _ => "Internal Server Error",
        };
        Self {
            status,
            description: description.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "ok": false,
            "error_code": self.status.as_u16(),
            "description": self.description,
        });
        if let Some(retry_after) = self.retry_after {
            body["parameters"] = json!({ "retry_after": retry_after });
        }
        (self.status, Json(body)).into_response()
    }
}

/// The stand-in's routes over `state`.
pub fn router(state: StandIn) -> Router {
    Router::new()
        .route("/{bot_token}/sendMessage", post(send_message))
        .route("/control/faults", post(push_fault))
        .route("/control/blocked", post(block_chat))
        .route("/control/messages", get(list_messages).delete(reset))
        .route("/control/reset", post(reset))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::not_found() })
        .with_state(state)
}

/// Serves the stand-in over `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: StandIn,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (port 0 picks a free port) and serves a fresh stand-in in the
/// background; returns the bound address and the server task (abort it to
/// stop).
pub async fn spawn(addr: &str) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    spawn_with_state(addr, StandIn::default()).await
}

/// Like [`spawn`], but serves `state`, so the caller can inspect and control
/// the stand-in in process.
pub async fn spawn_with_state(
    addr: &str,
    state: StandIn,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, state, std::future::pending()));
    Ok((local, task))
}

async fn send_message(
    State(state): State<StandIn>,
    Path(bot_token): Path<String>,
    body: Bytes,
) -> Response {
    // Shape check only: the token itself is dropped here, never kept.
    let well_formed = bot_token
        .strip_prefix("bot")
        .is_some_and(|token| !token.trim().is_empty());
    if !well_formed {
        return ApiError::not_found().into_response();
    }
    match state.send_message(&body) {
        Ok(result) => Json(json!({ "ok": true, "result": result })).into_response(),
        Err(error) => error.into_response(),
    }
}

fn control_result(result: Result<(), ControlError>) -> Response {
    match result {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(error) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "ok": false, "description": error.to_string() })),
        )
            .into_response(),
    }
}

async fn push_fault(
    State(state): State<StandIn>,
    fault: Result<Json<FaultSpec>, JsonRejection>,
) -> Response {
    match fault {
        Ok(Json(fault)) => control_result(state.push_fault(fault)),
        Err(rejection) => rejection.into_response(),
    }
}

#[derive(Deserialize)]
struct BlockRequest {
    chat_id: Value,
}

async fn block_chat(
    State(state): State<StandIn>,
    request: Result<Json<BlockRequest>, JsonRejection>,
) -> Response {
    match request {
        Ok(Json(request)) => control_result(state.block(&request.chat_id)),
        Err(rejection) => rejection.into_response(),
    }
}

#[derive(Deserialize)]
struct MessagesFilter {
    chat_id: Option<String>,
}

async fn list_messages(
    State(state): State<StandIn>,
    Query(filter): Query<MessagesFilter>,
) -> Json<Vec<ReceivedMessage>> {
    let mut messages = state.messages();
    if let Some(wanted) = filter.chat_id {
        let wanted = wanted.trim();
        messages.retain(|m| chat_key(&m.chat_id).as_deref() == Some(wanted));
    }
    Json(messages)
}

async fn reset(State(state): State<StandIn>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

fn rfc3339_millis<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456:SECRET-token_value";

    struct Harness {
        state: StandIn,
        base: String,
        client: reqwest::Client,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Harness {
        async fn start() -> Self {
            // reqwest is built with `rustls-no-provider`; already installed is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let state = StandIn::default();
            let (addr, task) = spawn_with_state("127.0.0.1:0", state.clone())
                .await
                .expect("bind the stand-in on a free port");
            Self {
                state,
                base: format!("http://{addr}"),
                client: reqwest::Client::builder()
                    .build()
                    .expect("build the reqwest client"),
                task,
            }
        }

        async fn post(&self, path: &str, body: Value) -> (u16, Value) {
            let response = self
                .client
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .expect("stand-in answers");
            let status = response.status().as_u16();
            (status, response.json().await.expect("a JSON body"))
        }

        async fn send(&self, body: Value) -> (u16, Value) {
            self.post(&format!("/bot{TOKEN}/sendMessage"), body).await
        }

        async fn get_text(&self, path: &str) -> String {
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("stand-in answers")
                .text()
                .await
                .expect("a text body")
        }
    }

    #[tokio::test]
    async fn success_has_telegram_shape_and_increasing_ids() {
        let h = Harness::start().await;
        let (status, body) = h.send(json!({"chat_id": 42, "text": "hello"})).await;
        assert_eq!(status, 200);
        assert_eq!(body["ok"], true);
        assert_eq!(body["result"]["message_id"], 1);
        assert_eq!(body["result"]["chat"], json!({"id": 42, "type": "private"}));
        assert_eq!(body["result"]["text"], "hello");
        assert!(body["result"]["date"].as_i64().is_some_and(|d| d > 0));

        let (_, body) = h
            .send(json!({"chat_id": "42", "text": "again", "parse_mode": "HTML"}))
            .await;
        assert_eq!(body["result"]["message_id"], 2);
        assert_eq!(body["result"]["chat"]["id"], 42);
        let (_, body) = h.send(json!({"chat_id": 7, "text": "other"})).await;
        assert_eq!(body["result"]["message_id"], 1, "ids count per chat");

        let messages = h.state.messages();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1].seq, 2);
        assert_eq!(messages[1].chat_id, json!("42"));
        assert_eq!(messages[1].parse_mode.as_deref(), Some("HTML"));
        assert_eq!(messages[1].message_id, Some(2));

        let filtered: Vec<ReceivedMessage> =
            serde_json::from_str(&h.get_text("/control/messages?chat_id=42").await)
                .expect("a message list");
        assert_eq!(filtered.len(), 2);
        assert!(filtered.iter().all(|m| m.status == 200));
    }

    #[tokio::test]
    async fn fault_queue_fails_then_recovers() {
        let h = Harness::start().await;
        let (status, _) = h
            .post("/control/faults", json!({"status": 500, "count": 2}))
            .await;
        assert_eq!(status, 200);
        for _ in 0..2 {
            let (status, body) = h.send(json!({"chat_id": 1, "text": "hi"})).await;
            assert_eq!(status, 500);
            assert_eq!(
                body,
                json!({"ok": false, "error_code": 500, "description": "Internal Server Error"})
            );
        }
        let (status, body) = h.send(json!({"chat_id": 1, "text": "hi"})).await;
        assert_eq!(status, 200);
        assert_eq!(body["result"]["message_id"], 1);

        let statuses: Vec<(u16, Option<i64>)> = h
            .state
            .messages()
            .iter()
            .map(|m| (m.status, m.message_id))
            .collect();
        assert_eq!(statuses, [(500, None), (500, None), (200, Some(1))]);
    }

    #[tokio::test]
    async fn too_many_requests_carries_retry_after() {
        let h = Harness::start().await;
        h.post("/control/faults", json!({"status": 429, "retry_after": 3}))
            .await;
        let (status, body) = h.send(json!({"chat_id": 1, "text": "hi"})).await;
        assert_eq!(status, 429);
        assert_eq!(
            body,
            json!({
                "ok": false,
                "error_code": 429,
                "description": "Too Many Requests: retry after 3",
                "parameters": {"retry_after": 3}
            })
        );
        let (status, _) = h.post("/control/faults", json!({"status": 418})).await;
        assert_eq!(status, 400, "unsupported fault statuses are refused");
    }

    #[tokio::test]
    async fn blocked_chat_answers_forbidden_until_reset() {
        let h = Harness::start().await;
        h.post("/control/blocked", json!({"chat_id": "99"})).await;
        for _ in 0..2 {
            let (status, body) = h.send(json!({"chat_id": 99, "text": "hi"})).await;
            assert_eq!(status, 403);
            assert_eq!(
                body["description"],
                "Forbidden: bot was blocked by the user"
            );
        }
        let (status, _) = h.send(json!({"chat_id": 100, "text": "hi"})).await;
        assert_eq!(status, 200, "other chats are unaffected");

        let reset = h
            .client
            .post(format!("{}/control/reset", h.base))
            .send()
            .await
            .expect("stand-in answers");
        assert_eq!(reset.status().as_u16(), 204);
        assert!(h.state.messages().is_empty());
        let (status, _) = h.send(json!({"chat_id": 99, "text": "hi"})).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn validation_errors_match_telegram() {
        let h = Harness::start().await;
        let cases = [
            (json!({"text": "hi"}), "Bad Request: chat_id is empty"),
            (
                json!({"chat_id": "", "text": "hi"}),
                "Bad Request: chat_id is empty",
            ),
            (json!({"chat_id": 1}), "Bad Request: message text is empty"),
            (
                json!({"chat_id": 1, "text": "  "}),
                "Bad Request: message text is empty",
            ),
            (
                json!({"chat_id": 1, "text": "x".repeat(MAX_MESSAGE_CHARS + 1)}),
                "Bad Request: message is too long",
            ),
            (
                json!({"chat_id": 1, "text": "hi", "parse_mode": "bogus"}),
                "Bad Request: unsupported parse_mode",
            ),
        ];
        // The cases, the character-count check and the malformed body.
        let recorded = cases.len() + 2;
        for (request, description) in cases {
            let (status, body) = h.send(request.clone()).await;
            assert_eq!(status, 400, "{request}");
            assert_eq!(
                body,
                json!({"ok": false, "error_code": 400, "description": description})
            );
        }
        let (status, _) = h
            .send(json!({"chat_id": 1, "text": "é".repeat(MAX_MESSAGE_CHARS)}))
            .await;
        assert_eq!(status, 200, "the limit counts characters, not bytes");

        let response = h
            .client
            .post(format!("{}/bot{TOKEN}/sendMessage", h.base))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("stand-in answers");
        assert_eq!(response.status().as_u16(), 400);
        let body: Value = response.json().await.expect("a JSON body");
        assert!(
            body["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("Bad Request: "))
        );

        let (status, body) = h.post("/nottoken/sendMessage", json!({})).await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            json!({"ok": false, "error_code": 404, "description": "Not Found"})
        );
        let (status, _) = h.post("/bot/sendMessage", json!({})).await;
        assert_eq!(status, 404);
        assert_eq!(
            h.state.messages().len(),
            recorded,
            "every call to a valid route is recorded, and only those"
        );
    }

    #[tokio::test]
    async fn token_is_never_exposed() {
        let h = Harness::start().await;
        h.send(json!({"chat_id": 5, "text": "hi"})).await;
        h.post("/control/faults", json!({"status": 401})).await;
        h.send(json!({"chat_id": 5, "text": "hi"})).await;
        let listing = h.get_text("/control/messages").await;
        assert!(listing.contains("\"status\":401"), "{listing}");
        for fragment in [TOKEN, "SECRET", "123456:"] {
            assert!(!listing.contains(fragment), "{listing}");
        }
        let at = h.state.messages()[0].received_at;
        assert!(listing.contains(&at.to_rfc3339_opts(SecondsFormat::Millis, true)));
    }
}
