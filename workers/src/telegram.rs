//! The telegram worker: owns the customers' linked Telegram chats and the notifications sent to
//! them. Its HTTP API links a chat to a customer and reads chats and notifications; its saga step
//! (`telegram.send`) tells the customer that a mission's reward was paid, with one Bot API
//! `sendMessage` call per command, idempotent per saga: once Telegram accepted the message, a
//! re-sent or retried command answers with the stored outcome and never messages twice.
//!
//! Telegram's answers become business replies: a rate limit (with its `retry_after`), a 5xx, a
//! timeout or a network error is a retryable failure (the orchestrator retries with backoff); a
//! 400, 401, 403 or other 4xx is permanent. A circuit breaker stops calling Telegram after
//! [`BREAKER_FAILURES`] consecutive retryable failures, for [`BREAKER_OPEN`].
//!
//! The notification row is written through the worker's own pool, in a short transaction of its
//! own that holds the row's lock across the Bot API call, not inside the runtime's batch
//! transaction: a `sent` row stays recorded even when the batch is rolled back afterwards, so
//! the redelivered command finds it and does not message the customer a second time.
//!
//! The bot token is part of the Bot API URL: it is kept in a [`SecretString`], never logged,
//! never shown by `Debug`, and stripped from every HTTP error before it is formatted.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use contracts::command::{NotificationStatus, SendNotificationV1};
use contracts::reply::{NotificationOutcomeV1, output_of};
use contracts::{
    Command, CustomerId, Envelope, NotificationId, Reply, SagaId, StepFailure, Worker,
};
use failsafe::futures::CircuitBreaker as _;
use runtime::ApiError;
use runtime::problem::{ApiJson, ApiQuery, Problem};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::runtime::{Handled, Handler, HandlerError, WorkerContext};

/// The telegram worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/telegram");

/// The longest message Telegram accepts, in UTF-16 code units (Telegram's own measure; never
/// less than the character count).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Consecutive retryable failures (5xx, 429, timeouts, network errors) that open the breaker.
pub const BREAKER_FAILURES: u32 = 5;

/// How long an open breaker refuses calls before it lets one through again.
pub const BREAKER_OPEN: Duration = Duration::from_secs(10);

/// The token put in the Bot API URL when none is configured (the stand-in accepts any).
const STAND_IN_TOKEN: &str = "stand-in";

/// The longest piece of a Telegram error description kept in a failure.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// The most notifications a list answers with.
const LIST_LIMIT: i64 = 100;

/// Failure codes of the `telegram.send` step.
pub mod codes {
    /// No chat is linked to the customer (permanent).
    pub const CHAT_NOT_LINKED: &str = "chat_not_linked";
    /// Telegram answered 429 (retryable, with `retry_after_ms` when it gave one).
    pub const RATE_LIMITED: &str = "telegram_rate_limited";
    /// A 5xx, a timeout, a network error or an unreadable answer (retryable).
    pub const UNAVAILABLE: &str = "telegram_unavailable";
    /// The circuit breaker is open; Telegram was not called (retryable).
    pub const CIRCUIT_OPEN: &str = "telegram_circuit_open";
    /// A worker stopped during the call: whether Telegram got the message is unknown, and it
    /// is not sent again (permanent).
    pub const DELIVERY_UNKNOWN: &str = "telegram_delivery_unknown";
    /// Telegram answered 400: chat not found, text refused (permanent).
    pub const BAD_REQUEST: &str = "telegram_bad_request";
    /// Telegram answered 401: the bot token is wrong (permanent).
    pub const UNAUTHORIZED: &str = "telegram_unauthorized";
    /// Telegram answered 403: the user blocked the bot (permanent).
    pub const FORBIDDEN: &str = "telegram_forbidden";
    /// Telegram answered another 4xx (permanent).
    pub const REJECTED: &str = "telegram_rejected";
    /// A failed notification whose stored error names no code (permanent).
    pub const NOTIFICATION_FAILED: &str = "notification_failed";
}

/// The telegram worker's settings (`SAGA_*`).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TelegramSettings {
    /// The bot token (`SAGA_TELEGRAM_BOT_TOKEN`). Without one, the Bot API at
    /// `telegram_api_base` is taken to be a stand-in. Never shown by `Debug`.
    pub telegram_bot_token: Option<String>,
    /// The Bot API's base URL (`SAGA_TELEGRAM_API_BASE`).
    pub telegram_api_base: String,
    /// How long one `sendMessage` call may take, in milliseconds (`SAGA_TELEGRAM_TIMEOUT_MS`).
    pub telegram_timeout_ms: u64,
}

impl Default for TelegramSettings {
    fn default() -> Self {
        Self {
            telegram_bot_token: None,
            telegram_api_base: "https://api.telegram.org".into(),
            telegram_timeout_ms: 5000,
        }
    }
}

impl std::fmt::Debug for TelegramSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramSettings")
            .field(
                "telegram_bot_token",
                &self.telegram_bot_token.as_ref().map(|_| "[redacted]"),
            )
            .field("telegram_api_base", &self.telegram_api_base)
            .field("telegram_timeout_ms", &self.telegram_timeout_ms)
            .finish()
    }
}

/// Why a `sendMessage` call did not deliver the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFailure {
    /// One of [`codes`].
    pub code: &'static str,
    /// What happened (never the token or the URL).
    pub detail: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// When Telegram said to wait (429's `retry_after`), or how long the open breaker refuses.
    pub retry_after_ms: Option<u64>,
}

impl SendFailure {
    fn permanent(code: &'static str, detail: String) -> Self {
        Self {
            code,
            detail,
            retryable: false,
            retry_after_ms: None,
        }
    }

    fn retryable(code: &'static str, detail: String) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(code, detail)
        }
    }

    /// Whether the failure counts against the circuit breaker: Telegram unreachable, failing or
    /// rate limiting, not a refusal of this one message.
    pub fn trips_breaker(&self) -> bool {
        matches!(self.code, codes::UNAVAILABLE | codes::RATE_LIMITED)
    }

    /// Whether the Bot API was called at all (an open breaker does not call it).
    pub fn called_telegram(&self) -> bool {
        self.code != codes::CIRCUIT_OPEN
    }

    /// The failure as a step failure, without output.
    pub fn to_step_failure(&self) -> StepFailure {
        let failure = if self.retryable {
            StepFailure::retryable(self.code, self.detail.clone())
        } else {
            StepFailure::permanent(self.code, self.detail.clone())
        };
        StepFailure {
            retry_after_ms: self.retry_after_ms,
            ..failure
        }
    }

    /// How the failure is stored in `notifications.last_error`.
    fn stored(&self) -> String {
        format!("{}: {}", self.code, self.detail)
    }
}

/// The parts of a Bot API answer this worker reads.
#[derive(Debug, Default, Deserialize)]
struct BotAnswer {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<BotParameters>,
}

#[derive(Debug, Default, Deserialize)]
struct BotParameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// Maps a Bot API answer (HTTP status and body) to the sent message's `message_id` or the
/// failure: 2xx with `ok` and a `message_id` is sent; 429 is `telegram_rate_limited` (with
/// `parameters.retry_after` in milliseconds); 400, 401 and 403 are `telegram_bad_request`,
/// `telegram_unauthorized` and `telegram_forbidden`; other 4xx `telegram_rejected`; 5xx and
/// anything unreadable `telegram_unavailable`.
pub fn classify_answer(status: u16, body: &[u8]) -> Result<i64, SendFailure> {
    let answer: Option<BotAnswer> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let message_id = answer
            .as_ref()
            .filter(|a| a.ok)
            .and_then(|a| a.result.as_ref())
            .and_then(|r| r.get("message_id"))
            .and_then(Value::as_i64);
        return message_id.ok_or_else(|| {
            SendFailure::retryable(
                codes::UNAVAILABLE,
                format!("Telegram answered {status} without a sent message"),
            )
        });
    }
    let description = answer
        .as_ref()
        .and_then(|a| a.description.as_deref())
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.chars().take(MAX_DESCRIPTION_CHARS).collect::<String>())
        .unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no description")
                .to_owned()
        });
    let detail = format!("Telegram answered {status}: {description}");
    let failure = match status {
        429 => {
            let retry_after = answer
                .as_ref()
                .and_then(|a| a.parameters.as_ref())
                .and_then(|p| p.retry_after);
            SendFailure {
                retry_after_ms: retry_after.map(|s| s.saturating_mul(1000)),
                ..SendFailure::retryable(codes::RATE_LIMITED, detail)
            }
        }
        400 => SendFailure::permanent(codes::BAD_REQUEST, detail),
        401 => SendFailure::permanent(codes::UNAUTHORIZED, detail),
        403 => SendFailure::permanent(codes::FORBIDDEN, detail),
        402..=499 => SendFailure::permanent(codes::REJECTED, detail),
        _ => SendFailure::retryable(codes::UNAVAILABLE, detail),
    };
    Err(failure)
}

/// The text telling the customer about the mission: it names the mission (its title shortened
/// with `…` if the message would exceed [`MAX_MESSAGE_LEN`]) and the points paid.
pub fn message_text(mission_title: &str, reward_points: i64) -> String {
    let points = if reward_points == 1 {
        "1 point was".to_owned()
    } else {
        format!("{reward_points} points were")
    };
    let render =
        |title: &str| format!("🎉 Mission \"{title}\" complete! {points} added to your wallet.");
    let room = MAX_MESSAGE_LEN.saturating_sub(utf16_len(&render("")));
    if utf16_len(mission_title) <= room {
        return render(mission_title);
    }
    let mut title = String::new();
    let mut used = 0;
    for c in mission_title.chars() {
        // Keep one unit for the ellipsis.
        if used + c.len_utf16() + 1 > room {
            break;
        }
        used += c.len_utf16();
        title.push(c);
    }
    title.push('…');
    render(&title)
}

fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The circuit breaker guarding the Bot API.
type Breaker = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

/// A Bot API client for `sendMessage`, behind a circuit breaker. Cheap to clone; clones share
/// the breaker. Its `Debug` shows the base URL, never the token.
#[derive(Clone)]
pub struct BotClient {
    http: reqwest::Client,
    base: String,
    /// `{base}/bot{token}/sendMessage`: the token is in it.
    send_url: SecretString,
    breaker: Breaker,
}

impl std::fmt::Debug for BotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotClient")
            .field("base", &self.base)
            .field("token", &"[redacted]")
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl BotClient {
    /// A client for the Bot API at `settings.telegram_api_base`. Without a token it uses a
    /// placeholder (the API there is then a stand-in) and warns once.
    pub fn new(settings: &TelegramSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let base = settings
            .telegram_api_base
            .trim()
            .trim_end_matches('/')
            .to_owned();
        reqwest::Url::parse(&base)
            .with_context(|| format!("SAGA_TELEGRAM_API_BASE {base:?} is not a URL"))?;
        let token = match settings.telegram_bot_token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => token.to_owned(),
            _ => {
                tracing::warn!(
                    "no Telegram bot token configured: using the Bot API at {base} as a stand-in"
                );
                STAND_IN_TOKEN.to_owned()
            }
        };
        let send_url = SecretString::from(format!("{base}/bot{token}/sendMessage"));
        // reqwest is built with `rustls-no-provider`: one provider for the whole process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.telegram_timeout_ms.max(1)))
            // A redirect would carry the token elsewhere; the Bot API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                anyhow::anyhow!("building the Telegram HTTP client: {}", e.without_url())
            })?;
        let breaker = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                BREAKER_FAILURES,
                failsafe::backoff::constant(BREAKER_OPEN),
            ))
            .build();
        Ok(Self {
            http,
            base,
            send_url,
            breaker,
        })
    }

    /// The Bot API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `text` to `chat_id` with one `sendMessage` call; answers Telegram's `message_id`.
    /// While the breaker is open it answers `telegram_circuit_open` without calling.
    pub async fn send_message(&self, chat_id: i64, text: &str) -> Result<i64, SendFailure> {
        let call = self.call(chat_id, text);
        let answer = match self
            .breaker
            .call_with(SendFailure::trips_breaker, call)
            .await
        {
            Ok(message_id) => Ok(message_id),
            Err(failsafe::Error::Inner(failure)) => Err(failure),
            Err(failsafe::Error::Rejected) => Err(SendFailure {
                retry_after_ms: u64::try_from(BREAKER_OPEN.as_millis()).ok(),
                ..SendFailure::retryable(
                    codes::CIRCUIT_OPEN,
                    format!(
                        "Telegram failed {BREAKER_FAILURES} times in a row; \
                         calls are paused for up to {} s",
                        BREAKER_OPEN.as_secs()
                    ),
                )
            }),
        };
        let result = match &answer {
            Ok(_) => "sent".to_owned(),
            Err(failure) => failure.code.to_string(),
        };
        metrics::counter!(runtime::metrics::TELEGRAM_CALLS, "result" => result).increment(1);
        let open = matches!(&answer, Err(f) if f.code == codes::CIRCUIT_OPEN);
        metrics::gauge!(runtime::metrics::TELEGRAM_CIRCUIT_OPEN).set(if open { 1.0 } else { 0.0 });
        answer
    }

    async fn call(&self, chat_id: i64, text: &str) -> Result<i64, SendFailure> {
        use tracing::Instrument as _;
        let span = if !runtime::telemetry::exporting() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "telegram.sendMessage",
                otel.name = "POST sendMessage",
                otel.kind = "client",
                http.request.method = "POST",
                url.full = %format!("{}/bot<token>/sendMessage", self.base),
                http.response.status_code = tracing::field::Empty,
                error = tracing::field::Empty,
            )
        };
        let answer = async {
            let body = serde_json::json!({ "chat_id": chat_id, "text": text });
            let response = self
                .http
                .post(self.send_url.expose_secret())
                .json(&body)
                .send()
                .await
                .map_err(|e| self.transport_failure(e))?;
            let status = response.status().as_u16();
            tracing::Span::current().record("http.response.status_code", status);
            let body = response
                .bytes()
                .await
                .map_err(|e| self.transport_failure(e))?;
            classify_answer(status, &body)
        }
        .instrument(span.clone())
        .await;
        if let Err(failure) = &answer {
            span.record("error", failure.code);
        }
        answer
    }

    /// A timeout or network error as a retryable failure, without the URL (it holds the token).
    fn transport_failure(&self, error: reqwest::Error) -> SendFailure {
        let timed_out = error.is_timeout();
        let error = error.without_url();
        let mut detail = if timed_out {
            format!("Telegram did not answer in time: {error}")
        } else {
            format!("Telegram could not be reached: {error}")
        };
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        // Belt and braces: no cause may carry the token.
        let secret = self.send_url.expose_secret();
        if let Some(token) = secret
            .strip_prefix(&format!("{}/bot", self.base))
            .and_then(|rest| rest.strip_suffix("/sendMessage"))
            && !token.is_empty()
        {
            detail = detail.replace(token, "[redacted]");
        }
        SendFailure::retryable(codes::UNAVAILABLE, detail)
    }
}

/// A customer's linked Telegram chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ChatLink {
    /// The customer.
    pub customer_id: String,
    /// The Telegram chat messages go to.
    pub chat_id: i64,
    /// When this chat was linked.
    pub linked_at: DateTime<Utc>,
}

/// `PUT /v1/telegram/chats/{customer_id}` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LinkChat {
    /// The Telegram chat id (a non-zero integer; negative for groups and channels).
    pub chat_id: i64,
}

/// A notification as stored and shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Notification {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The saga that asked for it (one notification per saga).
    #[schema(value_type = String, format = Uuid)]
    pub saga_id: Uuid,
    /// The mission it is about.
    #[schema(value_type = String, format = Uuid)]
    pub mission_id: Uuid,
    /// Whom it is for.
    pub customer_id: String,
    /// The chat it went (or was to go) to; absent when none was linked.
    pub chat_id: Option<i64>,
    /// The message.
    pub text: String,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    /// Telegram's `message_id`, once sent.
    pub telegram_message_id: Option<i64>,
    /// Bot API calls made for it.
    pub attempts: i32,
    /// The latest failure, `<code>: <detail>` (or just `<code>`).
    pub last_error: Option<String>,
    /// When it was first asked for.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When Telegram accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

/// Query of `GET /v1/telegram/notifications`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only the notification of this saga.
    #[param(value_type = Option<String>, format = Uuid)]
    pub saga_id: Option<Uuid>,
    /// Only notifications for this customer.
    pub customer_id: Option<String>,
}

/// A list of notifications.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    /// Newest first, at most 100.
    pub items: Vec<Notification>,
}

/// The telegram worker.
#[derive(Clone, Debug)]
pub struct TelegramWorker {
    pool: PgPool,
    client: BotClient,
    lease: Duration,
}

/// What the handler reads of a notification row.
#[derive(sqlx::FromRow)]
struct Stored {
    id: Uuid,
    text: String,
    status: String,
    telegram_message_id: Option<i64>,
    last_error: Option<String>,
    lease_live: bool,
}

const SELECT_NOTIFICATION: &str = "SELECT id, saga_id, mission_id, customer_id, chat_id, text, \
     status, telegram_message_id, attempts, last_error, created_at, updated_at, sent_at \
     FROM notifications";

impl TelegramWorker {
    /// A worker over its pool, calling the Bot API `settings` name.
    pub fn new(pool: PgPool, settings: &TelegramSettings) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            client: BotClient::new(settings)?,
            lease: Duration::from_millis(settings.telegram_timeout_ms) + Duration::from_secs(5),
        })
    }

    /// The public routes and their OpenAPI description.
    pub fn api(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        OpenApiRouter::new()
            .routes(routes!(link_chat, get_chat))
            .routes(routes!(list_notifications))
            .routes(routes!(get_notification))
            .with_state(self.clone())
            .split_for_parts()
    }

    /// Handles commands until `shutdown`.
    pub async fn run(
        self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        context.run_commands(Arc::new(self), shutdown).await
    }

    async fn send(&self, saga: SagaId, c: &SendNotificationV1) -> Result<Handled, HandlerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO notifications (id, saga_id, mission_id, customer_id, text, status) \
             VALUES ($1, $2, $3, $4, $5, 'pending') ON CONFLICT (saga_id) DO NOTHING",
        )
        .bind(NotificationId::new().0)
        .bind(saga.0)
        .bind(c.mission_id.0)
        .bind(c.customer_id.as_str())
        .bind(message_text(&c.mission_title, c.reward_points))
        .execute(&mut *tx)
        .await?;
        // The lock serializes attempts of one saga: a late duplicate waits, then sees `sent`.
        let row: Stored = sqlx::query_as(
            "SELECT id, text, status, telegram_message_id, last_error, \
                    COALESCE(sending_until > now(), false) AS lease_live \
             FROM notifications WHERE saga_id = $1 FOR UPDATE",
        )
        .bind(saga.0)
        .fetch_one(&mut *tx)
        .await?;
        match row.status.as_str() {
            "sent" => {
                tx.commit().await?;
                return Ok(sent(row.id, row.telegram_message_id));
            }
            "failed" => {
                tx.commit().await?;
                let (code, detail) = match row.last_error.as_deref() {
                    Some(stored) => match stored.split_once(": ") {
                        Some((code, detail)) => (code.to_owned(), detail.to_owned()),
                        None => (stored.to_owned(), not_linked_detail(&c.customer_id)),
                    },
                    None => (
                        codes::NOTIFICATION_FAILED.to_owned(),
                        "the notification failed earlier".to_owned(),
                    ),
                };
                return Ok(failed(row.id, StepFailure::permanent(&code, detail)));
            }
            "sending" if row.lease_live => {
                tx.commit().await?;
                return Err(HandlerError::Retryable(
                    "another attempt of this notification is calling Telegram".into(),
                ));
            }
            "sending" => {
                let detail = "a worker stopped while calling Telegram; whether the message \
                              arrived is unknown, and it is not sent twice";
                sqlx::query(
                    "UPDATE notifications SET status = 'failed', last_error = $2, \
                     sending_until = NULL, updated_at = now() WHERE id = $1",
                )
                .bind(row.id)
                .bind(format!("{}: {detail}", codes::DELIVERY_UNKNOWN))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::warn!(%saga, notification_id = %row.id, "notification outcome unknown: not sent again");
                let failure = StepFailure::permanent(codes::DELIVERY_UNKNOWN, detail);
                return Ok(failed(row.id, failure));
            }
            _ => {}
        }

        let chat: Option<i64> =
            sqlx::query_scalar("SELECT chat_id FROM chats WHERE customer_id = $1")
                .bind(c.customer_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(chat_id) = chat else {
            sqlx::query(
                "UPDATE notifications SET status = 'failed', last_error = $2, updated_at = now() \
                 WHERE id = $1",
            )
            .bind(row.id)
            .bind(codes::CHAT_NOT_LINKED)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(%saga, customer_id = %c.customer_id, "no Telegram chat linked: notification failed");
            let failure =
                StepFailure::permanent(codes::CHAT_NOT_LINKED, not_linked_detail(&c.customer_id));
            return Ok(failed(row.id, failure));
        };

        // Committed before the call: a crash during it leaves `sending`, never a second send.
        sqlx::query(
            "UPDATE notifications SET status = 'sending', chat_id = $2, \
             sending_until = now() + make_interval(secs => $3), updated_at = now() WHERE id = $1",
        )
        .bind(row.id)
        .bind(chat_id)
        .bind(self.lease.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut tx = self.pool.begin().await?;

        match self.client.send_message(chat_id, &row.text).await {
            Ok(message_id) => {
                sqlx::query(
                    "UPDATE notifications SET status = 'sent', chat_id = $2, \
                     telegram_message_id = $3, attempts = attempts + 1, sending_until = NULL, \
                     sent_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1",
                )
                .bind(row.id)
                .bind(chat_id)
                .bind(message_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::info!(%saga, notification_id = %row.id, telegram_message_id = message_id, "notification sent");
                Ok(sent(row.id, Some(message_id)))
            }
            Err(failure) => {
                let status = if failure.retryable {
                    "pending"
                } else {
                    "failed"
                };
                sqlx::query(
                    "UPDATE notifications SET status = $2, chat_id = $3, last_error = $4, \
                     attempts = attempts + $5, sending_until = NULL, \
                     updated_at = clock_timestamp() WHERE id = $1",
                )
                .bind(row.id)
                .bind(status)
                .bind(chat_id)
                .bind(failure.stored())
                .bind(i32::from(failure.called_telegram()))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::warn!(
                    %saga,
                    notification_id = %row.id,
                    code = failure.code,
                    retryable = failure.retryable,
                    detail = %failure.detail,
                    "notification not sent"
                );
                if failure.retryable {
                    // No status yet: the saga may try again, and if it gives up the mission
                    // records the notification as failed.
                    let mut output = Map::new();
                    output.insert("notification_id".into(), Value::String(row.id.to_string()));
                    Ok(Handled::reply(Reply::Failed(StepFailure {
                        output,
                        ..failure.to_step_failure()
                    })))
                } else {
                    Ok(failed(row.id, failure.to_step_failure()))
                }
            }
        }
    }
}

fn not_linked_detail(customer: &CustomerId) -> String {
    format!("no Telegram chat is linked to customer {customer}")
}

fn outcome(
    id: Uuid,
    status: NotificationStatus,
    telegram_message_id: Option<i64>,
) -> Map<String, Value> {
    output_of(&NotificationOutcomeV1 {
        notification_id: NotificationId(id),
        notification_status: status,
        telegram_message_id,
    })
}

fn sent(id: Uuid, telegram_message_id: Option<i64>) -> Handled {
    Handled::reply(Reply::Succeeded {
        output: outcome(id, NotificationStatus::Sent, telegram_message_id),
    })
}

fn failed(id: Uuid, failure: StepFailure) -> Handled {
    Handled::reply(Reply::Failed(StepFailure {
        output: outcome(id, NotificationStatus::Failed, None),
        ..failure
    }))
}

impl Handler for TelegramWorker {
    fn worker(&self) -> Worker {
        Worker::Telegram
    }

    /// The batch transaction (`_conn`) is not used: see the module documentation.
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        command: &Envelope<Command>,
    ) -> Result<Handled, HandlerError> {
        match &command.body {
            Command::SendNotification(c) => self.send(command.saga_id, c).await,
            other => Err(HandlerError::Fatal(format!(
                "the telegram worker does not handle {}",
                other.action().name()
            ))),
        }
    }
}

/// Link a Telegram chat to a customer (or move the link to another chat).
#[utoipa::path(
    put,
    path = "/v1/telegram/chats/{customer_id}",
    params(("customer_id" = String, Path, description = "The customer")),
    request_body = LinkChat,
    responses(
        (status = 200, description = "The link", body = ChatLink),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid customer id or chat id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "telegram"
)]
async fn link_chat(
    State(worker): State<TelegramWorker>,
    Path(customer_id): Path<String>,
    ApiJson(body): ApiJson<LinkChat>,
) -> Result<axum::Json<ChatLink>, ApiError> {
    let customer = CustomerId::try_from(customer_id)?;
    if body.chat_id == 0 {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "chat_id must be a non-zero integer",
        ));
    }
    // Re-linking the same chat keeps `linked_at`; another chat is a new link.
    let link: ChatLink = sqlx::query_as(
        "INSERT INTO chats (customer_id, chat_id) VALUES ($1, $2) \
         ON CONFLICT (customer_id) DO UPDATE SET chat_id = EXCLUDED.chat_id, \
         linked_at = CASE WHEN chats.chat_id = EXCLUDED.chat_id THEN chats.linked_at ELSE now() END, \
         updated_at = now() \
         RETURNING customer_id, chat_id, linked_at",
    )
    .bind(customer.as_str())
    .bind(body.chat_id)
    .fetch_one(&worker.pool)
    .await?;
    Ok(axum::Json(link))
}

/// Read the chat linked to a customer.
#[utoipa::path(
    get,
    path = "/v1/telegram/chats/{customer_id}",
    params(("customer_id" = String, Path, description = "The customer")),
    responses(
        (status = 200, description = "The link", body = ChatLink),
        (status = 404, description = "No chat linked", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "telegram"
)]
async fn get_chat(
    State(worker): State<TelegramWorker>,
    Path(customer_id): Path<String>,
) -> Result<axum::Json<ChatLink>, ApiError> {
    let customer = CustomerId::try_from(customer_id)?;
    let link: Option<ChatLink> =
        sqlx::query_as("SELECT customer_id, chat_id, linked_at FROM chats WHERE customer_id = $1")
            .bind(customer.as_str())
            .fetch_optional(&worker.pool)
            .await?;
    link.map(axum::Json)
        .ok_or_else(|| ApiError::not_found(codes::CHAT_NOT_LINKED, not_linked_detail(&customer)))
}

/// Read a notification.
#[utoipa::path(
    get,
    path = "/v1/telegram/notifications/{id}",
    params(("id" = String, Path, description = "The notification's id")),
    responses(
        (status = 200, description = "The notification", body = Notification),
        (status = 404, description = "No such notification", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "telegram"
)]
async fn get_notification(
    State(worker): State<TelegramWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Notification>, ApiError> {
    let not_found =
        || ApiError::not_found("notification_not_found", format!("no notification {id}"));
    let key: NotificationId = id.parse().map_err(|_| not_found())?;
    let notification: Option<Notification> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_NOTIFICATION} WHERE id = $1"
    )))
    .bind(key.0)
    .fetch_optional(&worker.pool)
    .await?;
    notification.map(axum::Json).ok_or_else(not_found)
}

/// List notifications, newest first (at most 100), by saga or by customer (or both; neither
/// lists the latest).
#[utoipa::path(
    get,
    path = "/v1/telegram/notifications",
    params(NotificationQuery),
    responses(
        (status = 200, description = "The notifications", body = NotificationList),
        (status = 400, description = "A malformed saga id", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "telegram"
)]
async fn list_notifications(
    State(worker): State<TelegramWorker>,
    ApiQuery(query): ApiQuery<NotificationQuery>,
) -> Result<axum::Json<NotificationList>, ApiError> {
    let customer = query.customer_id.map(CustomerId::try_from).transpose()?;
    let items: Vec<Notification> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_NOTIFICATION} WHERE ($1::uuid IS NULL OR saga_id = $1) \
         AND ($2::text IS NULL OR customer_id = $2) \
         ORDER BY created_at DESC, id DESC LIMIT {LIST_LIMIT}"
    )))
    .bind(query.saga_id)
    .bind(customer.as_ref().map(CustomerId::as_str))
    .fetch_all(&worker.pool)
    .await?;
    Ok(axum::Json(NotificationList { items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telegram_stand_in::{self, FaultSpec, StandIn};
    use serde_json::json;

    const TOKEN: &str = "123456:SECRET-token_value";

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("JSON encodes")
    }

    fn failure(status: u16, answer: Value) -> SendFailure {
        classify_answer(status, &body(answer)).expect_err("a failure")
    }

    #[test]
    fn a_sent_message_answers_its_id() {
        let answer = json!({"ok": true, "result": {"message_id": 77, "chat": {"id": 1}}});
        assert_eq!(classify_answer(200, &body(answer)), Ok(77));
        let odd = failure(200, json!({"ok": true, "result": {}}));
        assert_eq!((odd.code, odd.retryable), (codes::UNAVAILABLE, true));
        let html = classify_answer(200, b"<html>proxy</html>").expect_err("a failure");
        assert_eq!(html.code, codes::UNAVAILABLE);
    }

    #[test]
    fn a_rate_limit_is_retryable_with_its_wait() {
        let f = failure(
            429,
            json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 3",
                   "parameters": {"retry_after": 3}}),
        );
        assert_eq!(f.code, codes::RATE_LIMITED);
        assert!(f.retryable && f.trips_breaker());
        assert_eq!(f.retry_after_ms, Some(3000));
        assert_eq!(
            f.detail,
            "Telegram answered 429: Too Many Requests: retry after 3"
        );
        let step = f.to_step_failure();
        assert_eq!(step.retry_after_ms, Some(3000));
        assert!(step.retryable);
        assert_eq!(failure(429, json!({"ok": false})).retry_after_ms, None);
    }

    #[test]
    fn statuses_map_to_codes() {
        let cases = [
            (400, codes::BAD_REQUEST, false),
            (401, codes::UNAUTHORIZED, false),
            (403, codes::FORBIDDEN, false),
            (404, codes::REJECTED, false),
            (409, codes::REJECTED, false),
            (500, codes::UNAVAILABLE, true),
            (502, codes::UNAVAILABLE, true),
            (503, codes::UNAVAILABLE, true),
        ];
        for (status, code, retryable) in cases {
            let f = failure(
                status,
                json!({"ok": false, "error_code": status, "description": "x"}),
            );
            assert_eq!((f.code, f.retryable), (code, retryable), "{status}");
            assert_eq!(f.trips_breaker(), retryable, "{status}");
            assert_eq!(f.retry_after_ms, None);
            assert_eq!(f.to_step_failure().retryable, retryable);
        }
        let forbidden = failure(
            403,
            json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
        );
        assert_eq!(
            forbidden.detail,
            "Telegram answered 403: Forbidden: bot was blocked by the user"
        );
        let bare = classify_answer(502, b"<html>Bad Gateway</html>").expect_err("a failure");
        assert_eq!(bare.detail, "Telegram answered 502: Bad Gateway");
    }

    #[test]
    fn the_message_names_the_mission_and_the_points() {
        assert_eq!(
            message_text("Find the lost cat", 150),
            "🎉 Mission \"Find the lost cat\" complete! 150 points were added to your wallet."
        );
        assert_eq!(
            message_text("Once", 1),
            "🎉 Mission \"Once\" complete! 1 point was added to your wallet."
        );
    }

    #[test]
    fn a_long_title_is_shortened_to_fit() {
        let text = message_text(&"é".repeat(5000), 10);
        assert_eq!(utf16_len(&text), MAX_MESSAGE_LEN);
        assert!(text.contains("é…\" complete! 10 points"));
        let text = message_text(&"🐈".repeat(3000), 10);
        assert!(utf16_len(&text) <= MAX_MESSAGE_LEN);
        assert!(text.contains("🐈…\""));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let settings = TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            ..TelegramSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("[redacted]") && !shown.contains("SECRET"),
            "{shown}"
        );
        let client = BotClient::new(&settings).expect("a client");
        let shown = format!("{client:?}");
        assert!(
            shown.contains("api.telegram.org") && !shown.contains("SECRET"),
            "{shown}"
        );
        let shown = format!("{:?}", TelegramSettings::default());
        assert!(shown.contains("telegram_bot_token: None"), "{shown}");
    }

    #[test]
    fn settings_default_and_read_partially() {
        let settings: TelegramSettings =
            serde_json::from_value(json!({"telegram_bot_token": TOKEN})).expect("settings parse");
        assert_eq!(settings.telegram_bot_token.as_deref(), Some(TOKEN));
        assert_eq!(settings.telegram_api_base, "https://api.telegram.org");
        assert_eq!(settings.telegram_timeout_ms, 5000);
        assert!(
            BotClient::new(&TelegramSettings {
                telegram_api_base: "not a url".into(),
                ..TelegramSettings::default()
            })
            .is_err()
        );
    }

    async fn stand_in() -> (
        StandIn,
        BotClient,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let state = StandIn::default();
        let (addr, task) = telegram_stand_in::spawn_with_state("127.0.0.1:0", state.clone())
            .await
            .expect("bind the stand-in on a free port");
        let client = BotClient::new(&TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            telegram_api_base: format!("http://{addr}/"),
            telegram_timeout_ms: 2000,
        })
        .expect("a client");
        (state, client, task)
    }

    #[tokio::test]
    async fn the_client_sends_and_maps_the_stand_in_answers() {
        let (state, client, task) = stand_in().await;
        assert_eq!(client.send_message(42, "hello").await, Ok(1));
        assert_eq!(client.send_message(42, "again").await, Ok(2));
        state
            .push_fault(FaultSpec {
                status: 429,
                count: 1,
                retry_after: Some(2),
            })
            .expect("a fault");
        let f = client
            .send_message(42, "hi")
            .await
            .expect_err("rate limited");
        assert_eq!(
            (f.code, f.retry_after_ms),
            (codes::RATE_LIMITED, Some(2000))
        );
        state.block(&json!(7)).expect("blocked");
        let f = client.send_message(7, "hi").await.expect_err("blocked");
        assert_eq!((f.code, f.retryable), (codes::FORBIDDEN, false));
        let sent = state.messages();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[0].text.as_deref(), Some("hello"));
        assert_eq!(sent[0].chat_id, json!(42));
        task.abort();
    }

    #[tokio::test]
    async fn the_breaker_opens_on_failures_but_not_on_refusals() {
        let (state, client, task) = stand_in().await;
        let fault = |status, count| FaultSpec {
            status,
            count,
            retry_after: None,
        };
        state.push_fault(fault(400, 10)).expect("a fault");
        for _ in 0..10 {
            let f = client.send_message(1, "hi").await.expect_err("refused");
            assert_eq!(f.code, codes::BAD_REQUEST);
        }
        state
            .push_fault(fault(500, BREAKER_FAILURES))
            .expect("a fault");
        for _ in 0..BREAKER_FAILURES {
            let f = client.send_message(1, "hi").await.expect_err("failing");
            assert_eq!(f.code, codes::UNAVAILABLE);
        }
        let calls = state.messages().len();
        let f = client.send_message(1, "hi").await.expect_err("open");
        assert_eq!((f.code, f.retryable), (codes::CIRCUIT_OPEN, true));
        assert!(!f.called_telegram());
        assert_eq!(
            state.messages().len(),
            calls,
            "an open breaker does not call"
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_network_error_is_retryable_and_hides_the_token() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("an address");
        drop(listener);
        let client = BotClient::new(&TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            telegram_api_base: format!("http://{addr}"),
            telegram_timeout_ms: 1000,
        })
        .expect("a client");
        let f = client.send_message(1, "hi").await.expect_err("unreachable");
        assert_eq!((f.code, f.retryable), (codes::UNAVAILABLE, true));
        assert!(
            !f.detail.contains("SECRET") && !f.detail.contains("123456"),
            "{}",
            f.detail
        );
    }

    #[tokio::test]
    async fn a_slow_answer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        let server = tokio::spawn(async move {
            // Accept and never answer.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = BotClient::new(&TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            telegram_api_base: format!("http://{addr}"),
            telegram_timeout_ms: 200,
        })
        .expect("a client");
        let f = client.send_message(1, "hi").await.expect_err("timed out");
        assert_eq!((f.code, f.retryable), (codes::UNAVAILABLE, true));
        assert!(f.detail.contains("in time"), "{}", f.detail);
        assert!(!f.detail.contains("SECRET"), "{}", f.detail);
        server.abort();
    }
}
