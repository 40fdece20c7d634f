//! The gift worker: owns the gift catalogue and the reservations of the `gift_exchange` saga, in
//! which a customer exchanges wallet points for a gift. Its HTTP API ([`api`]) keeps the
//! catalogue and starts exchanges (by asking the orchestrator for a saga); its saga steps are:
//!
//! | step           | does                                                          | refusals                   |
//! |----------------|---------------------------------------------------------------|----------------------------|
//! | `gift.reserve` | takes one from the stock for the saga; answers the gift's name and price | `gift_not_found`, `out_of_stock` |
//! | `gift.release` | (compensation) gives the saga's reserved gift back, once      | `gift_already_issued`      |
//! | `gift.issue`   | issues the voucher ([`voucher`]) of the saga's reservation    | `gift_not_reserved`, `gift_released` |
//! | `gift.notify`  | tells the customer ([`notifier`]): sent, or queued            | the telegram service's permanent refusals |
//!
//! Each is idempotent per saga: the reservation, unique per saga, is the key (a repeat answers
//! what the first did, with the same voucher). The first three run in the runtime's batch
//! transaction. `gift.notify` calls the telegram service, so it runs outside any transaction
//! ([`Mode::Calls`]), guarded by a timeout, retries and a circuit breaker; when that call fails
//! or the breaker is open, it falls back to queueing the message on `notify.telegram`
//! (published through the outbox with the step's reply, so exactly once) and succeeds with
//! `notification_status: "queued"`. A permanent refusal (no chat linked, the bot blocked) is a
//! permanent step failure: the saga's failure policy for the step (continue) completes the
//! exchange with the step failed, and nothing is queued. All of its SQL is in [`store`].

pub mod api;
pub mod breaker;
pub mod notifier;
pub mod store;
pub mod text;
pub mod voucher;

use std::sync::Arc;
use std::time::Duration;

use contracts::command::{IssueGiftV1, NotifyGiftV1, ReleaseGiftV1, ReserveGiftV1};
use contracts::event::GiftReleasedV1;
use contracts::reply::{
    GiftIssuedV1, GiftNotificationStatus, GiftNotifiedV1, GiftReservedV1, output_of,
};
use contracts::{
    Command, CustomerId, DomainEvent, Envelope, GiftId, Reply, SagaId, StepFailure, Topology,
    Worker,
};
use runtime::jetstream::Outgoing;
use serde::{Deserialize, Serialize};
use serde_json::Map;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::runtime::commands::CALL_BUDGET;
use crate::runtime::{Handled, Handler, HandlerError, Mode, WorkerContext, lookups};
use crate::telegram::queue::{self, QueuedMessage, QueuedMessageV1};
use notifier::{Notified, Notifier};

/// The gift worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/gift");

/// What the guarded call may take at most, whatever the settings say: well inside the
/// runtime's [`CALL_BUDGET`].
pub const MAX_CALL_BUDGET: Duration = Duration::from_secs(CALL_BUDGET.as_secs() - 5);

/// The gift worker's settings (`SAGA_*`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct GiftSettings {
    /// The API token (scope `notify`) with which the gift worker calls the telegram service
    /// (`SAGA_GIFT_SERVICE_TOKEN`). A secret: never serialized, never shown by `Debug`.
    #[serde(skip_serializing)]
    pub gift_service_token: Option<secrecy::SecretString>,
    /// Where the orchestrator's `POST /v1/sagas` answers (`SAGA_ORCHESTRATOR_URL`).
    pub orchestrator_url: String,
    /// Where the telegram service's `POST /v1/telegram/messages` answers (`SAGA_TELEGRAM_URL`).
    pub telegram_url: String,
    /// One try of the call to the telegram service, in milliseconds
    /// (`SAGA_GIFT_CALL_TIMEOUT_MS`).
    pub gift_call_timeout_ms: u64,
    /// Tries after the first (`SAGA_GIFT_CALL_RETRIES`).
    pub gift_call_retries: usize,
    /// The first wait between tries, in milliseconds; it doubles, with jitter
    /// (`SAGA_GIFT_RETRY_INITIAL_MS`).
    pub gift_retry_initial_ms: u64,
    /// The longest wait between tries, in milliseconds (`SAGA_GIFT_RETRY_MAX_MS`); a
    /// `Retry-After` may ask for longer.
    pub gift_retry_max_ms: u64,
    /// The whole guarded call, tries and waits, in milliseconds (`SAGA_GIFT_CALL_BUDGET_MS`); at
    /// most [`MAX_CALL_BUDGET`], and best below the step's timeout.
    pub gift_call_budget_ms: u64,
    /// Guarded calls failing in a row that open the breaker (`SAGA_GIFT_BREAKER_FAILURES`).
    pub gift_breaker_failures: u32,
    /// How long the open breaker refuses calls, in milliseconds (`SAGA_GIFT_BREAKER_OPEN_MS`).
    pub gift_breaker_open_ms: u64,
}

impl Default for GiftSettings {
    fn default() -> Self {
        Self {
            gift_service_token: None,
            orchestrator_url: "http://127.0.0.1:8090".into(),
            telegram_url: "http://127.0.0.1:8093".into(),
            gift_call_timeout_ms: 2000,
            gift_call_retries: 2,
            gift_retry_initial_ms: 200,
            gift_retry_max_ms: 2000,
            gift_call_budget_ms: 8000,
            gift_breaker_failures: 5,
            gift_breaker_open_ms: 10_000,
        }
    }
}

impl GiftSettings {
    /// These settings with both services at `base` (the one-process platform's gateway).
    pub fn at_gateway(&self, base: &str) -> Self {
        Self {
            orchestrator_url: base.to_owned(),
            telegram_url: base.to_owned(),
            ..self.clone()
        }
    }

    /// The whole guarded call's budget.
    pub fn call_budget(&self) -> Duration {
        Duration::from_millis(self.gift_call_budget_ms).min(MAX_CALL_BUDGET)
    }
}

/// The gift worker.
#[derive(Clone, Debug)]
pub struct GiftWorker {
    pool: PgPool,
    notifier: Notifier,
    api: api::GiftApi,
    /// Where queued messages go; the worker's own topology once it runs.
    topology: Topology,
}

impl GiftWorker {
    /// A worker over its pool, calling the orchestrator and the telegram service `settings`
    /// name.
    pub fn new(pool: PgPool, settings: &GiftSettings) -> anyhow::Result<Self> {
        Ok(Self {
            api: api::GiftApi::new(pool.clone(), &settings.orchestrator_url)?,
            notifier: Notifier::new(settings)?,
            pool,
            topology: Topology::default(),
        })
    }

    /// The public routes and their OpenAPI description.
    pub fn api(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        api::router(self.api.clone())
    }

    /// Handles commands and answers `svc.gift.gift` look-ups until `shutdown`.
    pub async fn run(
        mut self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.topology = context.topology.clone();
        let pool = self.pool.clone();
        let lookups = lookups::serve(
            context.nats.clone(),
            context.topology.lookup_subject(Worker::Gift, "gift"),
            "gift".into(),
            shutdown.clone(),
            move |id| {
                let pool = pool.clone();
                async move {
                    match id.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                        Some(id) => store::exists(&pool, id).await,
                        None => Ok(false),
                    }
                }
            },
        );
        let commands = context.run_commands(Arc::new(self), shutdown.clone());
        let (a, b) = tokio::join!(lookups, commands);
        a.and(b)
    }

    async fn reserve(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &ReserveGiftV1,
    ) -> Result<Handled, HandlerError> {
        if let Some(reservation) = store::reservation(conn, saga).await? {
            return Ok(reserved(reservation.gift_name, reservation.price_points));
        }
        let Some((name, price)) = store::take_one(conn, c.gift_id).await? else {
            return Ok(if store::gift_exists(conn, c.gift_id).await? {
                refuse(
                    "out_of_stock",
                    format!("gift {} is out of stock", c.gift_id),
                )
            } else {
                refuse("gift_not_found", format!("no gift {}", c.gift_id))
            });
        };
        store::insert_reservation(conn, saga, c.gift_id, &c.customer_id, &name, price).await?;
        Ok(reserved(name, price))
    }

    async fn release(
        conn: &mut PgConnection,
        saga: SagaId,
        _c: &ReleaseGiftV1,
    ) -> Result<Handled, HandlerError> {
        let done = Handled::reply(Reply::Succeeded { output: Map::new() });
        let Some(reservation) = store::reservation(conn, saga).await? else {
            // Nothing was reserved: nothing to undo.
            return Ok(done);
        };
        match reservation.status.as_str() {
            "reserved" => {
                store::release(conn, &reservation).await?;
                let event = DomainEvent::GiftReleased(GiftReleasedV1 {
                    gift_id: GiftId(reservation.gift_id),
                    customer_id: stored_customer(&reservation)?,
                });
                Ok(Handled::with_events(
                    Reply::Succeeded { output: Map::new() },
                    vec![event],
                ))
            }
            "issued" => Ok(refuse(
                "gift_already_issued",
                format!(
                    "the voucher of saga {saga} is issued; its gift cannot go back to the stock"
                ),
            )),
            _ => Ok(done),
        }
    }

    async fn issue(
        conn: &mut PgConnection,
        saga: SagaId,
        _c: &IssueGiftV1,
    ) -> Result<Handled, HandlerError> {
        let Some(reservation) = store::reservation(conn, saga).await? else {
            return Ok(refuse(
                "gift_not_reserved",
                format!("saga {saga} reserved no gift"),
            ));
        };
        match (
            reservation.status.as_str(),
            reservation.voucher_code.clone(),
        ) {
            ("issued", Some(code)) => Ok(issued(code)),
            ("reserved", _) => {
                let code = voucher::new_code();
                store::issue(conn, saga, &code).await?;
                let event = DomainEvent::GiftIssued(contracts::event::GiftIssuedV1 {
                    gift_id: GiftId(reservation.gift_id),
                    gift_name: reservation.gift_name.clone(),
                    customer_id: stored_customer(&reservation)?,
                    voucher_code: code.clone(),
                    price_points: reservation.price_points,
                });
                let mut handled = issued(code);
                handled.events.push(event);
                Ok(handled)
            }
            (status, _) => Ok(refuse(
                "gift_released",
                format!("the gift of saga {saga} is {status}: no voucher can be issued"),
            )),
        }
    }

    async fn notify(
        &self,
        command: &Envelope<Command>,
        c: &NotifyGiftV1,
    ) -> Result<Handled, HandlerError> {
        let key = notification_key(command.saga_id);
        let text = text::gift_text(&c.gift_name, &c.voucher_code);
        let notified = self
            .notifier
            .notify(
                &key,
                command.saga_id,
                &c.customer_id,
                &text,
                &command.headers,
            )
            .await;
        match notified {
            Notified::Sent { notification_id } => Ok(Handled::reply(Reply::Succeeded {
                output: output_of(&GiftNotifiedV1 {
                    notification_status: GiftNotificationStatus::Sent,
                    notification_id: Some(notification_id),
                }),
            })),
            Notified::Refused { code, detail } => Ok(refuse(&code, detail)),
            Notified::Queued { .. } => {
                let message = QueuedMessage::from(QueuedMessageV1 {
                    idempotency_key: key,
                    customer_id: c.customer_id.clone(),
                    text,
                    saga_id: Some(command.saga_id),
                });
                let payload = serde_json::to_vec(&message).map_err(|e| {
                    HandlerError::Fatal(format!("encoding the queued message: {e}"))
                })?;
                Ok(Handled {
                    reply: Reply::Succeeded {
                        output: output_of(&GiftNotifiedV1 {
                            notification_status: GiftNotificationStatus::Queued,
                            notification_id: None,
                        }),
                    },
                    events: Vec::new(),
                    messages: vec![Outgoing {
                        subject: self.topology.notify_subject(queue::CHANNEL),
                        headers: command.headers.clone(),
                        payload,
                    }],
                })
            }
        }
    }
}

/// The idempotency key of a saga's gift message, for the call and the queue alike: one message
/// per exchange, however often it is asked for.
pub fn notification_key(saga: SagaId) -> String {
    format!("gift:{saga}")
}

fn reserved(gift_name: String, price_points: i64) -> Handled {
    Handled::reply(Reply::Succeeded {
        output: output_of(&GiftReservedV1 {
            gift_name,
            price_points,
        }),
    })
}

fn issued(voucher_code: String) -> Handled {
    Handled::reply(Reply::Succeeded {
        output: output_of(&GiftIssuedV1 { voucher_code }),
    })
}

fn stored_customer(reservation: &store::Reservation) -> Result<CustomerId, HandlerError> {
    reservation
        .customer_id
        .parse()
        .map_err(|_| HandlerError::Fatal("a stored customer id is invalid".into()))
}

fn refuse(code: &str, message: String) -> Handled {
    Handled::reply(Reply::Failed(StepFailure::permanent(code, message)))
}

impl Handler for GiftWorker {
    fn worker(&self) -> Worker {
        Worker::Gift
    }

    fn mode(&self, command: &Command) -> Mode {
        match command {
            Command::NotifyGift(_) => Mode::Calls,
            _ => Mode::Transaction,
        }
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        command: &Envelope<Command>,
    ) -> Result<Handled, HandlerError> {
        let saga = command.saga_id;
        match &command.body {
            Command::ReserveGift(c) => Self::reserve(conn, saga, c).await,
            Command::ReleaseGift(c) => Self::release(conn, saga, c).await,
            Command::IssueGift(c) => Self::issue(conn, saga, c).await,
            other => Err(HandlerError::not_mine(Worker::Gift, other)),
        }
    }

    async fn call(&self, command: &Envelope<Command>) -> Result<Handled, HandlerError> {
        match &command.body {
            Command::NotifyGift(c) => self.notify(command, c).await,
            other => Err(HandlerError::not_mine(Worker::Gift, other)),
        }
    }
}

#[cfg(test)]
mod tests;
