//! The worker runtime: what every worker process shares. A [`Handler`] holds one bounded
//! context's logic; [`commands`] runs it against the worker's durable consumer (inbox,
//! transactions, outbox, the consume policy), [`inbox`] owns the inbox's SQL, [`lookups`]
//! answers the orchestrator's existence checks, and [`WorkerContext`] and [`serve_worker`]
//! connect and serve a worker process.

pub mod commands;
pub mod events;
pub mod inbox;
pub mod lookups;

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use contracts::topology::Stream;
use contracts::{Command, DomainEvent, Envelope, Reply, Topology, Worker};
use runtime::jetstream::Outgoing;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub use commands::CommandLoop;

/// What a handler made of a command: the reply to send, domain events to publish, and other
/// messages to publish (a notification queued for the asynchronous path, say). All of them
/// go through the outbox in the transaction that records the command in the inbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Handled {
    /// The reply (a business refusal is a `Reply::Failed`, recorded like a success).
    pub reply: Reply,
    /// Events to publish on `DOMAIN_EVT`.
    pub events: Vec<DomainEvent>,
    /// Other messages to publish, fully addressed.
    pub messages: Vec<Outgoing>,
}

impl Handled {
    /// A reply without events.
    pub fn reply(reply: Reply) -> Self {
        Self {
            reply,
            events: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// A reply with events.
    pub fn with_events(reply: Reply, events: Vec<DomainEvent>) -> Self {
        Self {
            events,
            ..Self::reply(reply)
        }
    }
}

/// A handler's failure that is not a business answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HandlerError {
    /// Infrastructure trouble (database, network): roll back and redeliver later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Another attempt holds the work until a known moment: redeliver just after it.
    #[error("busy for {1:?}: {0}")]
    Busy(String, std::time::Duration),
    /// The command can never be handled (it does not fit this worker): dead-letter it.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::Retryable(error.to_string())
    }
}

impl HandlerError {
    /// The error for a command a worker is not meant to receive.
    pub fn not_mine(worker: Worker, command: &Command) -> Self {
        HandlerError::Fatal(format!(
            "the {} worker does not handle {}",
            worker.as_str(),
            command.action().name()
        ))
    }
}

/// How a command is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Inside the batch's transaction, with the inbox row: [`Handler::handle`].
    Transaction,
    /// Outside any transaction, because it calls another service: [`Handler::call`]. The
    /// handler makes its own effects idempotent, and the call finishes within the ack wait.
    Calls,
}

/// A worker's domain logic.
pub trait Handler: Send + Sync + 'static {
    /// Which worker this is.
    fn worker(&self) -> Worker;

    /// How `command` is handled (inside the batch transaction unless said otherwise).
    fn mode(&self, _command: &Command) -> Mode {
        Mode::Transaction
    }

    /// Handles one command inside the caller's transaction (or a savepoint of it).
    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        command: &'a Envelope<Command>,
    ) -> impl Future<Output = Result<Handled, HandlerError>> + Send + 'a;

    /// Handles one command of [`Mode::Calls`], outside any transaction.
    fn call<'a>(
        &'a self,
        command: &'a Envelope<Command>,
    ) -> impl Future<Output = Result<Handled, HandlerError>> + Send + 'a {
        let worker = self.worker();
        async move { Err(HandlerError::not_mine(worker, &command.body)) }
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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
        let nats = runtime::jetstream::connect(&settings.infra, &format!("worker-{schema}"))
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

/// The body of every worker binary (`service` names it in logs and traces): telemetry, settings, the worker's schema migrated (and
/// nothing more with `SAGA_MIGRATE_ONLY`), then `build` makes the worker's routes and its
/// background work from the connected context, and both run until SIGTERM. The HTTP API listens
/// on `SAGA_<WORKER>_ADDR`, else on `default_addr`.
pub async fn run_binary<F, Fut>(
    service: &'static str,
    worker: Worker,
    migrator: &'static sqlx::migrate::Migrator,
    default_addr: &str,
    build: F,
) -> anyhow::Result<()>
where
    F: FnOnce(
        &WorkerContext,
        CancellationToken,
    ) -> anyhow::Result<((axum::Router, utoipa::openapi::OpenApi), Fut)>,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context as _;
    let telemetry = runtime::telemetry::init(service);
    let settings: WorkerSettings = runtime::config::load()?;
    if settings.infra.migrate_only {
        let pool = runtime::db::connect(&settings.infra.database_url, worker.as_str(), 1, migrator)
            .await
            .with_context(|| format!("PostgreSQL at {}", settings.infra.database_url_redacted()))?;
        pool.close().await;
        tracing::info!(
            schema = worker.as_str(),
            "migrated; SAGA_MIGRATE_ONLY is set, exiting"
        );
        telemetry.shutdown().await;
        return Ok(());
    }
    let addr = runtime::config::listen_addr(worker.as_str(), default_addr)?;
    let shutdown = runtime::shutdown::on_signal();
    let context = WorkerContext::connect(&settings, worker, migrator).await?;
    let result = match build(&context, shutdown.clone()) {
        Ok((api, background)) => serve_worker(&context, &addr, api, background, shutdown).await,
        Err(error) => Err(error),
    };
    telemetry.shutdown().await;
    result
}

/// Serves a worker's routes (plus health and OpenAPI) on `addr` and runs `background` until
/// `shutdown`.
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
    let edge = runtime::edge::Edge::from_env()?;
    // Work that fails (a consumer that cannot be created, say) stops the whole process, so
    // that it exits non-zero and is restarted, instead of staying up and ready doing nothing.
    let stop = shutdown.clone();
    let background = async move {
        let ran = background.await;
        if let Err(error) = &ran {
            tracing::error!(error = %format!("{error:#}"), "the worker's background work failed; stopping");
            stop.cancel();
        }
        ran
    };
    let (served, ran) = tokio::join!(edge.serve(listener, router, shutdown), background);
    served?;
    ran
}
