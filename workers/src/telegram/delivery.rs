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

use std::sync::{Arc, OnceLock};

use contracts::event::NotificationEventV1;
use contracts::{
    CustomerId, DomainEvent, EventEnvelope, MissionId, NotificationId, SagaId, Topology,
};
use runtime::outbox::{self, OutboxMessage, Publisher};
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
    /// The saga a keyed message belongs to, when its sender names one (a gift exchange): its
    /// `NotificationSent`/`NotificationFailed` event carries it.
    pub saga: Option<SagaId>,
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
    events: Arc<OnceLock<(Publisher, Topology)>>,
}

impl Delivery {
    /// Delivers over `pool` through `client`; a sending lease lasts `lease` (longer than one
    /// Bot API call may take).
    pub fn new(pool: PgPool, client: BotClient, lease: Duration) -> Self {
        Self {
            pool,
            client,
            lease,
            events: Arc::default(),
        }
    }

    /// From now on every decided outcome publishes its `NotificationSent` or
    /// `NotificationFailed` event, through the worker's outbox in the transaction that records
    /// the outcome (called when the worker runs; until then no event is made).
    pub fn publish_events(&self, publisher: Publisher, topology: Topology) {
        let _ = self.events.set((publisher, topology));
    }

    /// The event of a decided outcome, as an outbox row (none before [`Self::publish_events`]).
    fn event(
        &self,
        message: &Message<'_>,
        id: Uuid,
        sent: Result<i64, &str>,
    ) -> Option<OutboxMessage> {
        let (_, topology) = self.events.get()?;
        let (saga, mission) = match message.key {
            Key::Saga { saga, mission } => (Some(saga), Some(mission)),
            Key::Idempotency(_) => (message.saga, None),
        };
        let outcome = NotificationEventV1 {
            notification_id: NotificationId(id),
            customer_id: message.customer.clone(),
            mission_id: mission,
            telegram_message_id: sent.ok(),
            error_code: sent.err().map(str::to_owned),
        };
        let event = match sent {
            Ok(_) => DomainEvent::NotificationSent(outcome),
            Err(_) => DomainEvent::NotificationFailed(outcome),
        };
        let envelope = EventEnvelope::new(event, saga, chrono::Utc::now());
        OutboxMessage::event(topology, &envelope, &Default::default()).ok()
    }

    /// Writes `event` in the caller's transaction (before its commit).
    async fn record(
        conn: &mut sqlx::PgConnection,
        event: Option<&OutboxMessage>,
    ) -> Result<(), sqlx::Error> {
        match event {
            Some(event) => outbox::insert(conn, std::slice::from_ref(event)).await,
            None => Ok(()),
        }
    }

    /// Publishes `event` after its transaction committed (the relay re-publishes it if this
    /// fails).
    async fn publish(&self, event: Option<OutboxMessage>) {
        if let (Some(event), Some((publisher, _))) = (event, self.events.get())
            && let Err(error) = publisher.publish(&[event]).await
        {
            tracing::warn!(%error, "publishing a notification event failed; the relay will");
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
                store::claim_keyed(&mut tx, key, message.saga, message.customer, message.text)
                    .await?
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
                let event = self.event(message, row.id, Err(codes::DELIVERY_UNKNOWN));
                Self::record(&mut tx, event.as_ref()).await?;
                tx.commit().await?;
                self.publish(event).await;
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
            let event = self.event(message, row.id, Err(codes::CHAT_NOT_LINKED));
            Self::record(&mut tx, event.as_ref()).await?;
            tx.commit().await?;
            self.publish(event).await;
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
                let mut tx = self.pool.begin().await?;
                store::sent(&mut tx, row.id, chat_id, message_id).await?;
                let event = self.event(message, row.id, Ok(message_id));
                Self::record(&mut tx, event.as_ref()).await?;
                tx.commit().await?;
                self.publish(event).await;
                tracing::info!(%key, notification_id = %row.id, telegram_message_id = message_id, "notification sent");
                Ok(Outcome::Sent {
                    id: row.id,
                    telegram_message_id: Some(message_id),
                    now: true,
                })
            }
            Err(failure) => {
                let mut tx = self.pool.begin().await?;
                store::attempt_failed(
                    &mut tx,
                    row.id,
                    failure.retryable,
                    chat_id,
                    &failure.stored(),
                    failure.called_telegram(),
                )
                .await?;
                let event = (!failure.retryable)
                    .then(|| self.event(message, row.id, Err(failure.code)))
                    .flatten();
                Self::record(&mut tx, event.as_ref()).await?;
                tx.commit().await?;
                self.publish(event).await;
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
