//! The telegram worker's HTTP routes: link and read a customer's chat, read notifications, and
//! send a message that is not about a mission, idempotent by the caller's `Idempotency-Key`.

use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use contracts::{CustomerId, NotificationId};
use runtime::ApiError;
use runtime::problem::{ApiJson, ApiQuery, Problem};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::bot::codes;
use super::delivery::{Delivery, Key, Message, Outcome};
use super::not_linked_detail;
use super::store::{self, ChatLink, Notification};
use super::text::{MAX_MESSAGE_LEN, utf16_len};

/// The routes and their OpenAPI description.
pub fn router(delivery: Delivery) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(runtime::openapi::document(
        "Telegram service",
        "Customers' Telegram chats, the notifications sent, and messages sent on request (idempotent by `Idempotency-Key`).",
    ))
        .routes(routes!(link_chat, get_chat))
        .routes(routes!(list_notifications))
        .routes(routes!(get_notification))
        .routes(routes!(send_message))
        .with_state(delivery)
        .split_for_parts()
}

impl FromRef<Delivery> for PgPool {
    fn from_ref(delivery: &Delivery) -> Self {
        delivery.pool().clone()
    }
}

/// Problem code: the key's message is being sent by another request right now (503).
pub const NOTIFICATION_SENDING: &str = "notification_sending";
/// Problem code: the `Idempotency-Key` was used for another customer or text (409).
pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
/// Problem code: the message names a saga that has a notification under another key (409).
pub const SAGA_ALREADY_NOTIFIED: &str = "saga_already_notified";
/// Problem code: a missing or malformed `Idempotency-Key` (400).
pub const INVALID_IDEMPOTENCY_KEY: &str = "invalid_idempotency_key";

/// The `Idempotency-Key` header of `POST /v1/telegram/messages`: required, 1 to 255 visible
/// ASCII characters. Its rejection is a `400 invalid_idempotency_key` problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

impl IdempotencyKey {
    /// Whether `key` is 1 to 255 visible ASCII characters (`!` to `~`).
    pub fn is_valid(key: &str) -> bool {
        runtime::openapi::is_idempotency_key(key)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|key| Self::is_valid(key))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    INVALID_IDEMPOTENCY_KEY,
                    "an Idempotency-Key header of 1 to 255 visible ASCII characters is required",
                )
            })?;
        Ok(Self(key.to_owned()))
    }
}

/// `POST /v1/telegram/messages` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewMessage {
    /// Whom to tell (a customer with a linked chat).
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub customer_id: CustomerId,
    /// The text: 1 to 4096 UTF-16 code units (a character beyond the Basic Multilingual Plane
    /// counts twice), not only white space.
    #[schema(min_length = 1, max_length = 4096, pattern = "\\S")]
    pub text: String,
    /// The saga the message belongs to, if any (a gift exchange names its own): the
    /// notification's events carry it.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub saga_id: Option<contracts::SagaId>,
}

impl NewMessage {
    /// Checks the text the way Telegram will.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.text.trim().is_empty() || utf16_len(&self.text) > MAX_MESSAGE_LEN {
            return Err(ApiError::unprocessable(
                "invalid_body",
                format!(
                    "text must be 1 to {MAX_MESSAGE_LEN} UTF-16 code units and not only white space"
                ),
            ));
        }
        Ok(())
    }
}

/// A problem with a `Retry-After` header (whole seconds, at least 1).
fn retry_later(error: ApiError, after: Duration) -> Response {
    let seconds = after.as_millis().div_ceil(1000).max(1);
    ([(header::RETRY_AFTER, seconds.to_string())], error).into_response()
}

/// The static code of a stored failure code (the problem's `code`).
fn failure_code(code: &str) -> &'static str {
    [
        codes::CHAT_NOT_LINKED,
        codes::DELIVERY_UNKNOWN,
        codes::BAD_REQUEST,
        codes::UNAUTHORIZED,
        codes::FORBIDDEN,
        codes::REJECTED,
    ]
    .into_iter()
    .find(|known| *known == code)
    .unwrap_or(codes::NOTIFICATION_FAILED)
}

/// The answer to a keyed send.
async fn answer(pool: &PgPool, outcome: Outcome) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Sent { id, now, .. } => {
            let notification = store::notification(pool, NotificationId(id))
                .await?
                .ok_or_else(|| ApiError::internal(&"a sent notification vanished"))?;
            let status = if now {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let location = format!("/v1/telegram/notifications/{id}");
            Ok((
                status,
                [(header::LOCATION, location)],
                axum::Json(notification),
            )
                .into_response())
        }
        Outcome::Failed { code, detail, .. } => {
            Err(ApiError::unprocessable(failure_code(&code), detail))
        }
        Outcome::Sending { retry_after, .. } => Ok(retry_later(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                NOTIFICATION_SENDING,
                "another request is sending this message right now; ask again later",
            ),
            retry_after,
        )),
        Outcome::Pending { failure, .. } => Ok(retry_later(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                failure.code,
                failure.detail,
            ),
            Duration::from_millis(failure.retry_after_ms.unwrap_or(1000)),
        )),
        Outcome::KeyReused { .. } => Err(ApiError::conflict(
            IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used for another customer or text",
        )),
    }
}

/// Send a customer a message that is not about a mission, at most once per `Idempotency-Key`:
/// a repeat with the same key answers the stored outcome and never sends twice. A message
/// Telegram could not take now stays pending: a later request with the same key can deliver it.
#[utoipa::path(
    post,
    path = "/v1/telegram/messages",
    params(("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "Required: 1 to 255 visible ASCII characters naming this message")),
    request_body = NewMessage,
    responses(
        (status = 201, description = "Sent now", body = Notification, headers(("Location" = String, description = "/v1/telegram/notifications/{id}"))),
        (status = 200, description = "Sent earlier under this key", body = Notification, headers(("Location" = String, description = "/v1/telegram/notifications/{id}"))),
        (status = 400, description = "Malformed JSON, or a missing or malformed Idempotency-Key (invalid_idempotency_key)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key was used for another customer or text (idempotency_key_reused), or the saga named has a notification under another key (saga_already_notified)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid body (invalid_body), or a message that can never be delivered: chat_not_linked, telegram_forbidden, telegram_bad_request, telegram_unauthorized, telegram_rejected, telegram_delivery_unknown", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Telegram failed for now (telegram_unavailable, telegram_rate_limited, telegram_circuit_open) or another request is sending it (notification_sending); the message stays pending. Retry-After says when to ask again", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    tag = "telegram"
)]
async fn send_message(
    State(delivery): State<Delivery>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<Response, ApiError> {
    body.validate()?;
    let message = Message {
        key: Key::Idempotency(&key),
        saga: body.saga_id,
        customer: &body.customer_id,
        text: &body.text,
    };
    let outcome = match delivery.deliver(&message).await {
        Ok(outcome) => outcome,
        // The saga has a notification already, under another key (a notification is unique
        // per saga): the key's row was not written.
        Err(sqlx::Error::RowNotFound) if body.saga_id.is_some() => {
            return Err(ApiError::conflict(
                SAGA_ALREADY_NOTIFIED,
                "this saga has a notification already, under another Idempotency-Key",
            ));
        }
        Err(error) => return Err(error.into()),
    };
    answer(delivery.pool(), outcome).await
}

/// `PUT /v1/telegram/chats/{customer_id}` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LinkChat {
    /// The Telegram chat id (a non-zero integer; negative for groups and channels).
    #[schema(schema_with = chat_id)]
    pub chat_id: i64,
}

/// A Telegram chat id: a non-zero 64-bit integer.
fn chat_id() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let range = |minimum: i64, maximum: i64| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(minimum))
            .maximum(Some(maximum))
    };
    AnyOfBuilder::new()
        .item(range(1, i64::MAX))
        .item(range(i64::MIN, -1))
        .description(Some(
            "The Telegram chat id (a non-zero integer; negative for groups and channels).",
        ))
        .into()
}

/// Query of `GET /v1/telegram/notifications`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only the notification of this saga.
    #[param(format = Uuid)]
    pub saga_id: Option<String>,
    /// Only notifications for this customer.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub customer_id: Option<String>,
    /// Only the notification sent under this idempotency key.
    pub idempotency_key: Option<String>,
}

/// A list of notifications.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    /// Newest first, at most 100.
    pub items: Vec<Notification>,
}

/// Link a Telegram chat to a customer (or move the link to another chat).
#[utoipa::path(
    put,
    path = "/v1/telegram/chats/{customer_id}",
    params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,64}$", description = "The customer")),
    request_body = LinkChat,
    responses(
        (status = 200, description = "The link", body = ChatLink),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid customer id or chat id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "telegram"
)]
async fn link_chat(
    State(pool): State<PgPool>,
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
    Ok(axum::Json(
        store::link_chat(&pool, &customer, body.chat_id).await?,
    ))
}

/// Read the chat linked to a customer.
#[utoipa::path(
    get,
    path = "/v1/telegram/chats/{customer_id}",
    params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,64}$", description = "The customer")),
    responses(
        (status = 200, description = "The link", body = ChatLink),
        (status = 404, description = "No chat linked", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "telegram"
)]
async fn get_chat(
    State(pool): State<PgPool>,
    Path(customer_id): Path<String>,
) -> Result<axum::Json<ChatLink>, ApiError> {
    let customer = CustomerId::try_from(customer_id)?;
    store::chat(&pool, &customer)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(codes::CHAT_NOT_LINKED, not_linked_detail(&customer)))
}

/// Read a notification.
#[utoipa::path(
    get,
    path = "/v1/telegram/notifications/{id}",
    params(("id" = String, Path, format = Uuid, description = "The notification's id")),
    responses(
        (status = 200, description = "The notification", body = Notification),
        (status = 404, description = "No such notification", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "telegram"
)]
async fn get_notification(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Notification>, ApiError> {
    let not_found =
        || ApiError::not_found("notification_not_found", format!("no notification {id}"));
    let key: NotificationId = id.parse().map_err(|_| not_found())?;
    store::notification(&pool, key)
        .await?
        .map(axum::Json)
        .ok_or_else(not_found)
}

/// List notifications, newest first (at most 100), by saga, customer or idempotency key (any
/// combination; none lists the latest).
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
    State(pool): State<PgPool>,
    ApiQuery(query): ApiQuery<NotificationQuery>,
) -> Result<axum::Json<NotificationList>, ApiError> {
    let customer = query.customer_id.map(CustomerId::try_from).transpose()?;
    let saga = query
        .saga_id
        .as_deref()
        .map(|id| {
            runtime::openapi::canonical_uuid(id).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("saga_id must be a uuid; got {id:?}"),
                )
            })
        })
        .transpose()?;
    let items = store::notifications(
        &pool,
        saga,
        customer.as_ref(),
        query.idempotency_key.as_deref(),
    )
    .await?;
    Ok(axum::Json(NotificationList { items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_visible_ascii_of_bounded_length() {
        for good in ["k", "gift:0192-abc", &"x".repeat(255), "!~"] {
            assert!(IdempotencyKey::is_valid(good), "{good}");
        }
        for bad in ["", " ", "a b", "ключ", "tab\there", &"x".repeat(256)] {
            assert!(!IdempotencyKey::is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn texts_are_checked_like_telegram_does() {
        let message = |text: &str| NewMessage {
            customer_id: "player-1".parse().expect("a customer id"),
            text: text.to_owned(),
            saga_id: None,
        };
        assert!(message("hello").validate().is_ok());
        assert!(message(&"é".repeat(4096)).validate().is_ok());
        assert!(message(&"🎁".repeat(2048)).validate().is_ok());
        for bad in ["", "  \n", &"🎁".repeat(2049), &"x".repeat(4097)] {
            let error = message(bad).validate().expect_err("refused");
            assert_eq!((error.status.as_u16(), error.code), (422, "invalid_body"));
        }
    }

    #[test]
    fn stored_failure_codes_keep_their_name() {
        assert_eq!(failure_code("telegram_forbidden"), codes::FORBIDDEN);
        assert_eq!(failure_code("chat_not_linked"), codes::CHAT_NOT_LINKED);
        assert_eq!(failure_code("something else"), codes::NOTIFICATION_FAILED);
    }
}
