//! The worker runtime. A batch of commands is handled in one PostgreSQL transaction, each
//! command in its own savepoint: the inbox is checked first (a command seen before re-sends its
//! stored reply and changes nothing), then the handler does its domain write, and the reply and
//! any domain events go to the outbox with the inbox row. After commit the outbox is published
//! and the messages are acked. A [`HandlerError::Retryable`] rolls the command back and NAKs
//! it with a growing delay; a [`HandlerError::Fatal`] (or an undecodable message) is parked on
//! the dead-letter stream with the reason.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use contracts::topology::Stream;
use contracts::{Command, DomainEvent, Envelope, MessageId, Reply, Topology, Worker};
use futures::StreamExt;
use runtime::jetstream::{Outgoing, encode};
use runtime::outbox::{self, OutboxMessage, Publisher};
use runtime::{consume, dead_letter};
use sqlx::{Acquire, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

/// What a handler made of a command: the reply to send, and domain events to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Handled {
    /// The reply (a business refusal is a `Reply::Failed`, recorded like a success).
    pub reply: Reply,
    /// Events to publish on `DOMAIN_EVT`.
    pub events: Vec<DomainEvent>,
}

impl Handled {
    /// A reply without events.
    pub fn reply(reply: Reply) -> Self {
        Self {
            reply,
            events: Vec::new(),
        }
    }
}

/// A handler's failure that is not a business answer.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Infrastructure trouble (database, network): roll back and redeliver later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The command can never be handled (it does not fit this worker): dead-letter it.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::Retryable(error.to_string())
    }
}

/// A worker's domain logic.
pub trait Handler: Send + Sync + 'static {
    /// Which worker this is.
    fn worker(&self) -> Worker;

    /// Handles one command inside the caller's transaction (a savepoint of it).
    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        command: &'a Envelope<Command>,
    ) -> impl Future<Output = Result<Handled, HandlerError>> + Send + 'a;
}

/// Runs a handler against its durable consumer.
pub struct CommandLoop<H> {
    handler: Arc<H>,
    pool: PgPool,
    js: jetstream::Context,
    topology: Topology,
    publisher: Publisher,
}

impl<H> Clone for CommandLoop<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            pool: self.pool.clone(),
            js: self.js.clone(),
            topology: self.topology.clone(),
            publisher: self.publisher.clone(),
        }
    }
}

struct Pending {
    message: jetstream::Message,
    verdict: Verdict,
}

enum Verdict {
    Ack,
    Retry(String),
    Park(String),
}

impl<H: Handler> CommandLoop<H> {
    /// A loop for `handler` over the worker's pool and JetStream.
    pub fn new(handler: Arc<H>, pool: PgPool, js: jetstream::Context, topology: Topology) -> Self {
        let publisher = Publisher::new(pool.clone(), js.clone());
        Self {
            handler,
            pool,
            js,
            topology,
            publisher,
        }
    }

    /// Consumes commands with `loops` concurrent pull loops until `shutdown`.
    pub async fn run(
        self,
        loops: usize,
        max_batch: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let worker = self.handler.worker();
        let consumer = runtime::jetstream::ensure_consumer(
            &self.js,
            &self.topology,
            Stream::Commands,
            &self.topology.worker_consumer(worker),
            &self.topology.worker_commands(worker),
        )
        .await?;
        let gauges = tokio::spawn(runtime::metrics::run_gauges(
            worker.as_str(),
            self.publisher.clone(),
            Some(consumer.clone()),
            shutdown.clone(),
        ));
        let pruning = tokio::spawn(prune_inbox(self.pool.clone(), shutdown.clone()));
        let relay = {
            let publisher = self.publisher.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                publisher
                    .run_relay(
                        stop,
                        std::time::Duration::from_millis(500),
                        std::time::Duration::from_secs(2),
                    )
                    .await;
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..loops.max(1) {
            let this = self.clone();
            let consumer = consumer.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                consume::run_batches(consumer, max_batch, stop, |batch| this.handle_batch(batch))
                    .await;
            }));
        }
        for task in tasks {
            task.await?;
        }
        relay.await?;
        gauges.await?;
        pruning.await?;
        Ok(())
    }

    /// Handles one batch of command messages.
    pub async fn handle_batch(&self, messages: Vec<jetstream::Message>) {
        let mut pending = Vec::with_capacity(messages.len());
        let mut commands = Vec::with_capacity(messages.len());
        for message in messages {
            match runtime::jetstream::decode::<Command>(&message) {
                Ok(command) => {
                    commands.push(Some(command));
                    pending.push(Pending {
                        message,
                        verdict: Verdict::Ack,
                    });
                }
                Err(error) => {
                    commands.push(None);
                    pending.push(Pending {
                        message,
                        verdict: Verdict::Park(error.to_string()),
                    });
                }
            }
        }
        tracing::debug!(commands = commands.len(), "command batch");
        match self.process(&commands, &mut pending).await {
            Ok(outbox) => {
                if let Err(error) = self.publisher.publish(&outbox).await {
                    tracing::warn!(%error, "publishing replies failed; the relay will retry");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "command batch failed; redelivering");
                for p in pending.iter_mut() {
                    if matches!(p.verdict, Verdict::Ack) {
                        p.verdict = Verdict::Retry(error.to_string());
                    }
                }
            }
        }
        futures::stream::iter(pending)
            .for_each_concurrent(64, |p| self.settle(p))
            .await;
    }

    async fn settle(&self, pending: Pending) {
        let Pending { message, verdict } = pending;
        let result = match verdict {
            Verdict::Ack => message.ack().await,
            Verdict::Park(reason) => {
                dead_letter::park(&self.js, &self.topology, &message, &reason).await
            }
            Verdict::Retry(reason) => {
                let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
                if delivered >= runtime::jetstream::MAX_DELIVER {
                    let reason = format!("gave up after {delivered} deliveries: {reason}");
                    dead_letter::park(&self.js, &self.topology, &message, &reason).await
                } else {
                    message
                        .ack_with(jetstream::AckKind::Nak(Some(consume::nak_delay(delivered))))
                        .await
                }
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, subject = %message.subject, "settling a command failed; it comes back");
        }
    }

    async fn process(
        &self,
        commands: &[Option<Envelope<Command>>],
        pending: &mut [Pending],
    ) -> Result<Vec<OutboxMessage>, sqlx::Error> {
        if let Some(outbox) = self.process_with(commands, pending, false).await? {
            return Ok(outbox);
        }
        let careful = self.process_with(commands, pending, true).await?;
        Ok(careful.unwrap_or_default())
    }

    /// Handles a batch in one transaction. Without `careful`, the first command that fails
    /// (retryable or fatal) rolls everything back and `None` is returned, so that the batch is
    /// handled again with a savepoint per command; most batches never fail and skip the
    /// savepoints' round trips.
    async fn process_with(
        &self,
        commands: &[Option<Envelope<Command>>],
        pending: &mut [Pending],
        careful: bool,
    ) -> Result<Option<Vec<OutboxMessage>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = commands.iter().flatten().map(|c| c.message_id.0).collect();
        let stored: Vec<(Uuid, String, serde_json::Value, Vec<u8>)> = sqlx::query_as(
            "SELECT message_id, reply_subject, reply_headers, reply_payload FROM inbox \
             WHERE message_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut seen: HashMap<MessageId, Outgoing> = stored
            .into_iter()
            .map(|(id, subject, headers, payload)| {
                let headers = serde_json::from_value(headers).unwrap_or_default();
                (
                    MessageId(id),
                    Outgoing {
                        subject,
                        headers,
                        payload,
                    },
                )
            })
            .collect();
        let mut outbox = Vec::new();
        let mut inbox = InboxRows::default();
        for (command, p) in commands.iter().zip(pending.iter_mut()) {
            let Some(command) = command else {
                continue;
            };
            if let Some(reply) = seen.get(&command.message_id) {
                tracing::debug!(message_id = %command.message_id, "duplicate command: re-sending the stored reply");
                outbox.push(OutboxMessage::new(reply.clone()));
                continue;
            }
            let span = command_span(self.handler.worker(), command);
            let handled = if careful {
                let mut savepoint = tx.begin().await?;
                let handled = self
                    .handler
                    .handle(&mut savepoint, command)
                    .instrument(span.clone())
                    .await;
                if handled.is_ok() {
                    savepoint.commit().await?;
                } else {
                    savepoint.rollback().await?;
                }
                handled
            } else {
                let handled = self
                    .handler
                    .handle(&mut tx, command)
                    .instrument(span.clone())
                    .await;
                if handled.is_err() {
                    tx.rollback().await?;
                    return Ok(None);
                }
                handled
            };
            record_outcome(&span, &handled);
            match handled {
                Ok(handled) => {
                    let (reply, events) = self.outgoing(command, handled);
                    inbox.push(command.message_id, &reply);
                    outbox.push(OutboxMessage::new(reply.clone()));
                    outbox.extend(events.into_iter().map(OutboxMessage::new));
                    seen.insert(command.message_id, reply);
                }
                Err(HandlerError::Retryable(reason)) => {
                    tracing::warn!(saga_id = %command.saga_id, step = %command.step, %reason, "command will be retried");
                    p.verdict = Verdict::Retry(reason);
                }
                Err(HandlerError::Fatal(reason)) => p.verdict = Verdict::Park(reason),
            }
        }
        inbox.insert(&mut tx).await?;
        outbox::insert(&mut tx, &outbox).await?;
        tx.commit().await?;
        Ok(Some(outbox))
    }

    fn outgoing(&self, command: &Envelope<Command>, handled: Handled) -> (Outgoing, Vec<Outgoing>) {
        let reply = command.reply(handled.reply);
        let subject = self.topology.reply_subject(&command.saga_type);
        let reply = encode(subject, &reply).unwrap_or_else(|error| Outgoing {
            subject: self.topology.reply_subject(&command.saga_type),
            headers: command.headers.clone(),
            payload: error.to_string().into_bytes(),
        });
        let events = handled
            .events
            .iter()
            .filter_map(|event| {
                let (context, name) = event.subject_tokens();
                Some(Outgoing {
                    subject: self.topology.event_subject(context, name),
                    headers: command.headers.clone(),
                    payload: serde_json::to_vec(event).ok()?,
                })
            })
            .collect();
        (reply, events)
    }
}

/// The span of one command's handling: a child of the step attempt that sent it (its
/// `traceparent`), with the saga's attributes.
fn command_span(worker: Worker, command: &Envelope<Command>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !runtime::telemetry::exporting() {
        return tracing::Span::none();
    }
    let body = serde_json::to_value(&command.body).unwrap_or_default();
    let span = tracing::info_span!(
        "saga.worker",
        otel.name = %format!("{} {}", worker.as_str(), command.step),
        otel.kind = "consumer",
        saga.id = %command.saga_id,
        saga.type = %command.saga_type,
        saga.step = %command.step,
        saga.attempt = command.attempt,
        saga.phase = command.phase.as_str(),
        customer.id = body["customer_id"].as_str().unwrap_or_default(),
        mission.id = body["mission_id"].as_str().unwrap_or_default(),
        trace_id = command
            .headers
            .get("traceparent")
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or_default(),
        error = tracing::field::Empty,
    );
    let _ = span.set_parent(runtime::telemetry::extract(&command.headers));
    span
}

fn record_outcome(span: &tracing::Span, handled: &Result<Handled, HandlerError>) {
    match handled {
        Ok(Handled {
            reply: Reply::Failed(failure),
            ..
        }) => {
            span.record("error", failure.code.as_str());
        }
        Err(error) => {
            span.record("error", error.to_string().as_str());
        }
        Ok(_) => {}
    }
}

/// How long a handled command's reply is kept for re-sending. A command redelivered later
/// than this is handled again, and the domain's own keys (one reward, one notification, one
/// completing saga per mission) make that a no-op.
const INBOX_RETENTION_DAYS: i32 = 7;

/// Forgets inbox rows past their retention, every 10 minutes until `shutdown`.
async fn prune_inbox(pool: PgPool, shutdown: CancellationToken) {
    loop {
        let pruned = sqlx::query(
            "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1::int)",
        )
        .bind(INBOX_RETENTION_DAYS)
        .execute(&pool)
        .await;
        if let Err(error) = pruned {
            tracing::warn!(%error, "inbox pruning failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
        }
    }
}

/// Inbox rows of a batch, written with one statement.
#[derive(Default)]
struct InboxRows {
    ids: Vec<Uuid>,
    subjects: Vec<String>,
    headers: Vec<serde_json::Value>,
    payloads: Vec<Vec<u8>>,
}

impl InboxRows {
    fn push(&mut self, id: MessageId, reply: &Outgoing) {
        self.ids.push(id.0);
        self.subjects.push(reply.subject.clone());
        self.headers
            .push(serde_json::to_value(&reply.headers).unwrap_or_default());
        self.payloads.push(reply.payload.clone());
    }

    async fn insert(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO inbox (message_id, reply_subject, reply_headers, reply_payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bytea[])",
        )
        .bind(&self.ids)
        .bind(&self.subjects)
        .bind(&self.headers)
        .bind(&self.payloads)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Answers core-NATS look-ups on `subject` (queue group `group`) with `answer` until
/// `shutdown`: the request body is `{"id": ...}`, the answer `{"found": bool}`.
pub async fn serve_lookups<F, Fut>(
    nats: async_nats::Client,
    subject: String,
    group: String,
    shutdown: CancellationToken,
    answer: F,
) -> anyhow::Result<()>
where
    F: Fn(serde_json::Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, sqlx::Error>> + Send,
{
    let mut requests = nats.queue_subscribe(subject, group).await?;
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            request = requests.next() => request,
        };
        let Some(request) = request else {
            return Ok(());
        };
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let id = serde_json::from_slice::<serde_json::Value>(&request.payload)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or_default();
        match answer(id).await {
            Ok(found) => {
                let body = serde_json::json!({ "found": found }).to_string();
                if let Err(error) = nats.publish(reply_to, body.into()).await {
                    tracing::warn!(%error, "look-up answer not sent");
                }
            }
            Err(error) => tracing::warn!(%error, "look-up failed; the caller times out"),
        }
    }
}

/// What every worker process shares: its pool (in its own schema), NATS, JetStream, the
/// topology, its readiness switch and its consumer settings.
#[derive(Clone)]
pub struct WorkerContext {
    /// The worker's pool.
    pub pool: PgPool,
    /// Core NATS (look-ups).
    pub nats: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// Subjects and streams.
    pub topology: Topology,
    /// `/readyz`.
    pub readiness: runtime::http::Readiness,
    /// Concurrent pull loops.
    pub loops: usize,
    /// Commands per transaction at most.
    pub batch: usize,
}

/// Settings every worker reads (`SAGA_*`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerSettings {
    /// Database and NATS.
    #[serde(flatten)]
    pub infra: runtime::config::Infrastructure,
    /// Concurrent pull loops per worker process (`SAGA_COMMAND_LOOPS`).
    pub command_loops: usize,
    /// Commands handled per transaction at most (`SAGA_COMMAND_BATCH`).
    pub command_batch: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            infra: runtime::config::Infrastructure::default(),
            command_loops: 2,
            command_batch: 128,
        }
    }
}

impl WorkerContext {
    /// Connects a worker: its schema (migrated), NATS, the streams.
    pub async fn connect(
        settings: &WorkerSettings,
        worker: Worker,
        migrator: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let schema = worker.as_str();
        let pool = runtime::db::connect(
            &settings.infra.database_url,
            schema,
            settings.infra.database_max_connections,
            migrator,
        )
        .await
        .with_context(|| format!("PostgreSQL at {}", settings.infra.database_url_redacted()))?;
        let nats =
            runtime::jetstream::connect(&settings.infra.nats_url, &format!("worker-{schema}"))
                .await
                .with_context(|| format!("NATS at {}", settings.infra.nats_url))?;
        let js = jetstream::new(nats.clone());
        let topology = Topology::new(&settings.infra.nats_prefix);
        runtime::jetstream::ensure_streams(&js, &topology, settings.infra.nats_replicas).await?;
        let readiness = runtime::http::Readiness::new(
            pool.clone(),
            js.clone(),
            topology.stream(Stream::Commands),
        );
        Ok(Self {
            pool,
            nats,
            js,
            topology,
            readiness,
            loops: settings.command_loops,
            batch: settings.command_batch,
        })
    }

    /// Runs `handler` on this worker's commands until `shutdown`.
    pub async fn run_commands<H: Handler>(
        &self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        CommandLoop::new(
            handler,
            self.pool.clone(),
            self.js.clone(),
            self.topology.clone(),
        )
        .run(self.loops, self.batch, shutdown)
        .await
    }
}

/// Serves a worker's routes (plus health and OpenAPI) on `addr` and runs `background` until
/// `shutdown`: the body of every worker binary.
pub async fn serve_worker(
    context: &WorkerContext,
    addr: &str,
    api: (axum::Router, utoipa::openapi::OpenApi),
    background: impl Future<Output = anyhow::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "worker listening");
    let (routes, openapi) = api;
    let router = routes
        .merge(runtime::http::health_routes(context.readiness.clone()))
        .merge(runtime::http::openapi_route(openapi))
        .merge(runtime::metrics::route())
        .fallback(runtime::problem::route_not_found);
    let readiness = context.readiness.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        readiness.stop_accepting();
    });
    let (served, ran) = tokio::join!(runtime::http::serve(listener, router, shutdown), background);
    served?;
    ran
}
