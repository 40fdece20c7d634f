//! Every SQL statement of the telegram context: linked chats and notifications, typed rows in
//! and out. A notification is keyed by the saga that asked for it or by the caller's
//! idempotency key. Its sending lease is committed before the Bot API is called, so that a
//! worker that dies during the call leaves `sending` behind and the message is never sent
//! twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::{CustomerId, MissionId, NotificationId, SagaId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// The most notifications a list answers with.
pub const LIST_LIMIT: i64 = 100;

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

/// A notification as stored and shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Notification {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The saga that asked for it (one notification per saga); absent for a keyed message.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub saga_id: Option<Uuid>,
    /// The mission it is about; absent for a message that is not about a mission.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub mission_id: Option<Uuid>,
    /// The caller's idempotency key (one notification per key), for a keyed message.
    pub idempotency_key: Option<String>,
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

/// What the handler reads of a notification row it holds locked.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    /// Its id.
    pub id: Uuid,
    /// Whom it is for.
    pub customer_id: String,
    /// The message.
    pub text: String,
    /// `pending`, `sending`, `sent` or `failed`.
    pub status: String,
    /// Telegram's `message_id`, once sent.
    pub telegram_message_id: Option<i64>,
    /// The latest failure, `<code>: <detail>`.
    pub last_error: Option<String>,
    /// Whether another attempt holds a live sending lease.
    pub lease_live: bool,
    /// How long that lease still runs, in milliseconds (0 without a live lease).
    pub lease_left_ms: i64,
}

/// The columns of a [`Claimed`] row.
macro_rules! claimed_columns {
    () => {
        "id, customer_id, text, status, telegram_message_id, last_error, \
         COALESCE(sending_until > now(), false) AS lease_live, \
         GREATEST(0, COALESCE(CEIL(EXTRACT(EPOCH FROM (sending_until - now())) * 1000), 0))::bigint \
         AS lease_left_ms"
    };
}

const SELECT_NOTIFICATION: &str = "SELECT id, saga_id, mission_id, idempotency_key, customer_id, \
     chat_id, text, status, telegram_message_id, attempts, last_error, created_at, updated_at, \
     sent_at FROM notifications";

/// Creates the saga's notification when it has none, and locks it for the rest of the
/// transaction: the lock serializes attempts of one saga (a late duplicate waits, then sees
/// `sent`).
pub async fn claim(
    conn: &mut PgConnection,
    saga: SagaId,
    mission: MissionId,
    customer: &CustomerId,
    text: &str,
) -> Result<Claimed, sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (id, saga_id, mission_id, customer_id, text, status) \
         VALUES ($1, $2, $3, $4, $5, 'pending') ON CONFLICT (saga_id) DO NOTHING",
    )
    .bind(NotificationId::new().0)
    .bind(saga.0)
    .bind(mission.0)
    .bind(customer.as_str())
    .bind(text)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(concat!(
        "SELECT ",
        claimed_columns!(),
        " FROM notifications WHERE saga_id = $1 FOR UPDATE"
    ))
    .bind(saga.0)
    .fetch_one(conn)
    .await
}

/// Creates the notification keyed `key` when there is none, and locks it for the rest of the
/// transaction, like [`claim`]. The caller compares the stored customer and text with its own:
/// a key names one message.
pub async fn claim_keyed(
    conn: &mut PgConnection,
    key: &str,
    saga: Option<SagaId>,
    customer: &CustomerId,
    text: &str,
) -> Result<Claimed, sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (id, idempotency_key, saga_id, customer_id, text, status) \
         VALUES ($1, $2, $3, $4, $5, 'pending') ON CONFLICT DO NOTHING",
    )
    .bind(NotificationId::new().0)
    .bind(key)
    .bind(saga.map(|s| s.0))
    .bind(customer.as_str())
    .bind(text)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(concat!(
        "SELECT ",
        claimed_columns!(),
        " FROM notifications WHERE idempotency_key = $1 FOR UPDATE"
    ))
    .bind(key)
    .fetch_one(conn)
    .await
}

/// Marks a notification `failed` for good, with `error` (`<code>` or `<code>: <detail>`).
pub async fn fail(conn: &mut PgConnection, id: Uuid, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'failed', last_error = $2, sending_until = NULL, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// The chat linked to a customer.
pub async fn chat_of(
    conn: &mut PgConnection,
    customer: &CustomerId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT chat_id FROM chats WHERE customer_id = $1")
        .bind(customer.as_str())
        .fetch_optional(conn)
        .await
}

/// Takes the sending lease for `lease` before the Bot API is called.
pub async fn begin_sending(
    conn: &mut PgConnection,
    id: Uuid,
    chat: i64,
    lease: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'sending', chat_id = $2, \
         sending_until = now() + make_interval(secs => $3), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(chat)
    .bind(lease.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that Telegram accepted the message.
pub async fn sent(
    conn: &mut PgConnection,
    id: Uuid,
    chat: i64,
    telegram_message_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'sent', chat_id = $2, \
         telegram_message_id = $3, attempts = attempts + 1, sending_until = NULL, \
         sent_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1",
    )
    .bind(id)
    .bind(chat)
    .bind(telegram_message_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed call: `pending` again when another attempt may succeed, else `failed`.
pub async fn attempt_failed(
    conn: &mut PgConnection,
    id: Uuid,
    retryable: bool,
    chat: i64,
    error: &str,
    called_telegram: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = $2, chat_id = $3, last_error = $4, \
         attempts = attempts + $5, sending_until = NULL, \
         updated_at = clock_timestamp() WHERE id = $1",
    )
    .bind(id)
    .bind(if retryable { "pending" } else { "failed" })
    .bind(chat)
    .bind(error)
    .bind(i32::from(called_telegram))
    .execute(conn)
    .await?;
    Ok(())
}

/// Links a chat to a customer. Re-linking the same chat keeps `linked_at`; another chat is a
/// new link.
pub async fn link_chat(
    pool: &PgPool,
    customer: &CustomerId,
    chat: i64,
) -> Result<ChatLink, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO chats (customer_id, chat_id) VALUES ($1, $2) \
         ON CONFLICT (customer_id) DO UPDATE SET chat_id = EXCLUDED.chat_id, \
         linked_at = CASE WHEN chats.chat_id = EXCLUDED.chat_id THEN chats.linked_at ELSE now() END, \
         updated_at = now() \
         RETURNING customer_id, chat_id, linked_at",
    )
    .bind(customer.as_str())
    .bind(chat)
    .fetch_one(pool)
    .await
}

/// The chat linked to a customer, as shown.
pub async fn chat(pool: &PgPool, customer: &CustomerId) -> Result<Option<ChatLink>, sqlx::Error> {
    sqlx::query_as("SELECT customer_id, chat_id, linked_at FROM chats WHERE customer_id = $1")
        .bind(customer.as_str())
        .fetch_optional(pool)
        .await
}

/// One notification.
pub async fn notification(
    pool: &PgPool,
    id: NotificationId,
) -> Result<Option<Notification>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_NOTIFICATION} WHERE id = $1"
    )))
    .bind(id.0)
    .fetch_optional(pool)
    .await
}

/// Notifications newest first (at most [`LIST_LIMIT`]), by saga, customer or idempotency key
/// (any combination).
pub async fn notifications(
    pool: &PgPool,
    saga: Option<Uuid>,
    customer: Option<&CustomerId>,
    key: Option<&str>,
) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_NOTIFICATION} WHERE ($1::uuid IS NULL OR saga_id = $1) \
         AND ($2::text IS NULL OR customer_id = $2) \
         AND ($3::text IS NULL OR idempotency_key = $3) \
         ORDER BY created_at DESC, id DESC LIMIT {LIST_LIMIT}"
    )))
    .bind(saga)
    .bind(customer.map(CustomerId::as_str))
    .bind(key)
    .fetch_all(pool)
    .await
}
