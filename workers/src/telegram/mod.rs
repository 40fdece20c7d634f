//! The telegram worker: owns the customers' linked Telegram chats and the notifications sent to
//! them. Its HTTP API ([`api`]) links a chat to a customer, reads chats and notifications, and
//! sends a message that is not about a mission (`POST /v1/telegram/messages`, idempotent by the
//! caller's key); its saga step (`telegram.send`) tells the customer that a mission's reward was
//! paid, with one Bot API `sendMessage` call ([`bot`]) per command, idempotent per saga: once
//! Telegram accepted the message, a re-sent or retried command answers with the stored outcome
//! and never messages twice. Both go through [`delivery`], which owns that at-most-once
//! discipline; [`queue`] delivers the messages other services queued on `notify.telegram` when
//! their synchronous call could not (each exactly once, by its key). The texts are in [`text`],
//! the SQL in [`store`].
//!
//! Telegram's answers become business replies: a rate limit (with its `retry_after`), a 5xx, a
//! timeout or a network error is a retryable failure (the orchestrator retries with backoff); a
//! 400, 401, 403 or other 4xx is permanent. A circuit breaker stops calling Telegram after
//! [`bot::BREAKER_FAILURES`] consecutive retryable failures, for [`bot::BREAKER_OPEN`].
//!
//! The step calls Telegram, so it runs outside the runtime's batch transaction
//! ([`Mode::Calls`]): the notification row is written in short transactions of its own, and the
//! sending lease is committed before the call, so that a `sent` row stays recorded whatever
//! happens to the batch, and a redelivered command never messages the customer a second time.

pub mod api;
pub mod bot;
pub mod delivery;
pub mod queue;
pub mod store;
#[cfg(test)]
pub(crate) mod tests;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use contracts::command::{NotificationStatus, SendNotificationV1};
use contracts::reply::{NotificationOutcomeV1, output_of};
use contracts::{
    Command, CustomerId, Envelope, NotificationId, Reply, SagaId, StepFailure, Worker,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::runtime::{Handled, Handler, HandlerError, Mode, WorkerContext};
use bot::BotClient;
use delivery::{Delivery, Key, Message, Outcome};

/// The telegram worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/telegram");

/// The telegram worker's settings (`SAGA_*`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelegramSettings {
    /// The bot token (`SAGA_TELEGRAM_BOT_TOKEN`). Without one, the Bot API at
    /// `telegram_api_base` is taken to be a stand-in. Never serialized, never shown by `Debug`.
    #[serde(skip_serializing)]
    pub telegram_bot_token: Option<SecretString>,
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
            telegram_timeout_ms: 3000,
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

/// The telegram worker.
#[derive(Clone, Debug)]
pub struct TelegramWorker {
    delivery: Delivery,
}

impl TelegramWorker {
    /// A worker over its pool, calling the Bot API `settings` name.
    pub fn new(pool: PgPool, settings: &TelegramSettings) -> anyhow::Result<Self> {
        queue::register_metrics();
        // Longer than one call may take (its timeout), and not much longer: a worker killed
        // during a call holds its notification until the lease ends.
        let lease = Duration::from_millis(settings.telegram_timeout_ms) + Duration::from_secs(1);
        Ok(Self {
            delivery: Delivery::new(pool, BotClient::new(settings)?, lease),
        })
    }

    /// The public routes and their OpenAPI description.
    pub fn api(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        api::router(self.delivery.clone())
    }

    /// Handles commands, and delivers the messages queued on `notify.telegram`, until
    /// `shutdown`.
    pub async fn run(
        self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let queued = queue::run(
            self.delivery.clone(),
            context.js.clone(),
            context.topology.clone(),
            context.batch,
            shutdown.clone(),
        );
        self.delivery.publish_events(
            runtime::outbox::Publisher::new(context.pool.clone(), context.js.clone()),
            context.topology.clone(),
        );
        let commands = context.run_commands(Arc::new(self), shutdown);
        let (a, b) = tokio::join!(commands, queued);
        a.and(b)
    }

    async fn send(&self, saga: SagaId, c: &SendNotificationV1) -> Result<Handled, HandlerError> {
        let text = text::message_text(&c.mission_title, c.reward_points);
        let message = Message {
            key: Key::Saga {
                saga,
                mission: c.mission_id,
            },
            saga: Some(saga),
            customer: &c.customer_id,
            text: &text,
        };
        match self.delivery.deliver(&message).await? {
            Outcome::Sent {
                id,
                telegram_message_id,
                ..
            } => Ok(sent(id, telegram_message_id)),
            Outcome::Failed {
                id, code, detail, ..
            } => Ok(failed(id, StepFailure::permanent(&code, detail))),
            Outcome::Sending { retry_after, .. } => Err(HandlerError::Busy(
                "another attempt of this notification is calling Telegram".into(),
                retry_after + Duration::from_millis(50),
            )),
            Outcome::Pending { id, failure } => {
                // No status yet: the saga may try again, and if it gives up the mission
                // records the notification as failed.
                let mut output = Map::new();
                output.insert("notification_id".into(), Value::String(id.to_string()));
                Ok(Handled::reply(Reply::Failed(StepFailure {
                    output,
                    ..failure.to_step_failure()
                })))
            }
            Outcome::KeyReused { .. } => Err(HandlerError::Fatal(
                "a saga's notification is keyed by its saga, never by a reused key".into(),
            )),
        }
    }
}

/// Why a customer cannot be told.
pub(crate) fn not_linked_detail(customer: &CustomerId) -> String {
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

    fn mode(&self, _command: &Command) -> Mode {
        Mode::Calls
    }

    async fn handle(
        &self,
        _conn: &mut PgConnection,
        command: &Envelope<Command>,
    ) -> Result<Handled, HandlerError> {
        Err(HandlerError::not_mine(Worker::Telegram, &command.body))
    }

    async fn call(&self, command: &Envelope<Command>) -> Result<Handled, HandlerError> {
        match &command.body {
            Command::SendNotification(c) => self.send(command.saga_id, c).await,
            other => Err(HandlerError::not_mine(Worker::Telegram, other)),
        }
    }
}
