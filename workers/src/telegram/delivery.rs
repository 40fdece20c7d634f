//! At most once to Telegram, whoever asks: the `telegram.send` saga step (one notification per
//! saga), `POST /v1/telegram/messages` and the `notify.telegram` queue (one notification per
//! idempotency key) all deliver through [`Delivery::deliver`], which owns the discipline:
//!
//! 1. the notification row is created (or found) and locked; a row that is `sent` or `failed`
//!    answers its stored outcome, and nothing is sent again;
//! 2. a row another attempt holds with a live sending lease answers [`Outcome::Sending`];
//!    one whose lease expired belongs to an attempt that died during the call: whether the
//!    message arrived is unknown, so it is not sent again and ends `failed` with
//!    `telegram_delivery_unknown`;
//! 3. otherwise the chat is looked up (none linked: `failed` with `chat_not_linked`), the
//!    sending lease is **committed before the call**, the Bot API is called once, and the
//!    answer recorded: `sent`, `failed` for good, or `pending` again when another attempt may
//!    succeed (a 5xx, a rate limit, a timeout, the breaker open).

use std::fmt;
use std::time::Duration;

use contracts::{CustomerId, MissionId, SagaId};
use sqlx::PgPool;
use uuid::Uuid;

use super::bot::{BotClient, SendFailure, codes};
use super::{not_linked_detail, store};

/// What a notification is keyed by: the saga that asked for it, or the caller's idempotency
/// key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// The `telegram.send` step of a saga, about a mission.
    Saga {
        /// The saga.
        saga: SagaId,
        /// The mission the message is about.
        mission: MissionId,
    },
    /// A message keyed by its sender (`POST /v1/telegram/messages`, the queue).
    Idempotency(&'a str),
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Saga { saga, .. } => write!(f, "saga:{saga}"),
            Key::Idempotency(key) => f.write_str(key),
        }
    }
}

/// One message to deliver.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// What it is keyed by.
    pub key: Key<'a>,
    /// Whom it is for.
    pub customer: &'a CustomerId,
    /// The text (at most 4096 UTF-16 units).
    pub text: &'a str,
}

/// What became of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Telegram accepted the message: just now (`now`), or earlier under the same key.
    Sent {
        /// The notification.
        id: Uuid,
        /// Telegram's `message_id`.
        telegram_message_id: Option<i64>,
        /// Whether this delivery sent it.
        now: bool,
    },
    /// The message can never be delivered: decided now, or earlier under the same key.
    Failed {
        /// The notification.
        id: Uuid,
        /// A failure code (`chat_not_linked`, `telegram_forbidden`, ...).
        code: String,
        /// What happened.
        detail: String,
        /// Whether this delivery decided it.
        now: bool,
    },
    /// Another attempt is calling Telegram for this notification right now.
    Sending {
        /// The notification.
        id: Uuid,
        /// How long its lease still runs.
        retry_after: Duration,
    },
    /// Telegram failed in a way another attempt may fix (or the breaker is open); the
    /// notification stays `pending`.
    Pending {
        /// The notification.
        id: Uuid,
        /// Why it was not sent.
        failure: SendFailure,
    },
    /// The idempotency key names another message (another customer or text): nothing done.
    KeyReused {
        /// The notification the key names.
        id: Uuid,
    },
}

/// Delivers messages at most once. Cheap to clone; clones share the Bot API client and its
/// breaker.
#[derive(Clone, Debug)]
pub struct Delivery {
    pool: PgPool,
    client: BotClient,
    lease: Duration,
}

impl Delivery {
    /// Delivers over `pool` through `client`; a sending lease lasts `lease` (longer than one
    /// Bot API call may take).
    pub fn new(pool: PgPool, client: BotClient, lease: Duration) -> Self {
        Self {
            pool,
            client,
            lease,
        }
    }

    /// The telegram worker's pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Delivers `message` at most once (see the module's documentation).
    pub async fn deliver(&self, message: &Message<'_>) -> Result<Outcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row = match message.key {
            Key::Saga { saga, mission } => {
                store::claim(&mut tx, saga, mission, message.customer, message.text).await?
            }
            Key::Idempotency(key) => {
                store::claim_keyed(&mut tx, key, message.customer, message.text).await?
            }
        };
        let key = message.key;
        if matches!(key, Key::Idempotency(_))
            && (row.customer_id != message.customer.as_str() || row.text != message.text)
        {
            tx.rollback().await?;
            return Ok(Outcome::KeyReused { id: row.id });
        }
        match row.status.as_str() {
            "sent" => {
                tx.commit().await?;
                return Ok(Outcome::Sent {
                    id: row.id,
                    telegram_message_id: row.telegram_message_id,
                    now: false,
                });
            }
            "failed" => {
                tx.commit().await?;
                let (code, detail) = match row.last_error.as_deref() {
                    Some(stored) => match stored.split_once(": ") {
                        Some((code, detail)) => (code.to_owned(), detail.to_owned()),
                        None => (stored.to_owned(), not_linked_detail(message.customer)),
                    },
                    None => (
                        codes::NOTIFICATION_FAILED.to_owned(),
                        "the notification failed earlier".to_owned(),
                    ),
                };
                return Ok(Outcome::Failed {
                    id: row.id,
                    code,
                    detail,
                    now: false,
                });
            }
            "sending" if row.lease_live => {
                tx.commit().await?;
                let left = u64::try_from(row.lease_left_ms).unwrap_or(0);
                return Ok(Outcome::Sending {
                    id: row.id,
                    retry_after: Duration::from_millis(left.max(1)),
                });
            }
            "sending" => {
                let detail = "a worker stopped while calling Telegram; whether the message \
                              arrived is unknown, and it is not sent twice";
                store::fail(
                    &mut tx,
                    row.id,
                    &format!("{}: {detail}", codes::DELIVERY_UNKNOWN),
                )
                .await?;
                tx.commit().await?;
                tracing::warn!(%key, notification_id = %row.id, "notification outcome unknown: not sent again");
                return Ok(Outcome::Failed {
                    id: row.id,
                    code: codes::DELIVERY_UNKNOWN.to_owned(),
                    detail: detail.to_owned(),
                    now: true,
                });
            }
            _ => {}
        }

        let Some(chat_id) = store::chat_of(&mut tx, message.customer).await? else {
            store::fail(&mut tx, row.id, codes::CHAT_NOT_LINKED).await?;
            tx.commit().await?;
            tracing::info!(%key, customer_id = %message.customer, "no Telegram chat linked: notification failed");
            return Ok(Outcome::Failed {
                id: row.id,
                code: codes::CHAT_NOT_LINKED.to_owned(),
                detail: not_linked_detail(message.customer),
                now: true,
            });
        };

        // Committed before the call: a crash during it leaves `sending`, never a second send.
        store::begin_sending(&mut tx, row.id, chat_id, self.lease).await?;
        tx.commit().await?;

        match self.client.send_message(chat_id, &row.text).await {
            Ok(message_id) => {
                store::sent(&self.pool, row.id, chat_id, message_id).await?;
                tracing::info!(%key, notification_id = %row.id, telegram_message_id = message_id, "notification sent");
                Ok(Outcome::Sent {
                    id: row.id,
                    telegram_message_id: Some(message_id),
                    now: true,
                })
            }
            Err(failure) => {
                store::attempt_failed(
                    &self.pool,
                    row.id,
                    failure.retryable,
                    chat_id,
                    &failure.stored(),
                    failure.called_telegram(),
                )
                .await?;
                tracing::warn!(
                    %key,
                    notification_id = %row.id,
                    code = failure.code,
                    retryable = failure.retryable,
                    detail = %failure.detail,
                    "notification not sent"
                );
                if failure.retryable {
                    Ok(Outcome::Pending {
                        id: row.id,
                        failure,
                    })
                } else {
                    Ok(Outcome::Failed {
                        id: row.id,
                        code: failure.code.to_owned(),
                        detail: failure.detail,
                        now: true,
                    })
                }
            }
        }
    }
}
