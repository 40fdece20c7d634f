//! The orchestrator process: configuration, start-up (schema, streams, consumer), the
//! background loops (reply consumers, timer sweeper, outbox relay, stray sweeper, the waiters'
//! subscription to saga announcements) and the HTTP server, all stopped by one shutdown token.
//!
//! Start-up is also recovery: every step timeout still armed is made due at once, so every
//! command in flight is sent again immediately with its same command id (the workers' inboxes
//! turn a command they already handled into a re-send of its stored reply), and the outbox
//! relay's first pass publishes whatever events a crash left in the outbox, whatever its age. Replies a
//! killed process had pulled but not acknowledged come back only after the consumer's ack wait,
//! but the re-sent commands' replies do not wait for that: sagas in flight move on within
//! seconds of a restart, not after the step timeout.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;
use contracts::topology::Stream;
use contracts::{Reply, Topology};
use runtime::config::Infrastructure;
use runtime::consume::{self, Verdict};
use runtime::http::{Readiness, health_routes};
use runtime::outbox::Publisher;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::OpenApi;

use crate::api::{self, ApiState};
use crate::definition::{Policies, Registry};
use crate::engine::{Engine, Received, ReplyOutcome};
use crate::store::Store;
use crate::watch::Watch;

/// The orchestrator's configuration (`SAGA_*` environment variables).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Database and NATS.
    #[serde(flatten)]
    pub infra: Infrastructure,
    /// Listen address of the HTTP API (`SAGA_ORCHESTRATOR_ADDR`).
    pub orchestrator_addr: String,
    /// The database schema the orchestrator owns (`SAGA_ORCHESTRATOR_SCHEMA`).
    pub orchestrator_schema: String,
    /// Retry policies and timeouts of the steps (`SAGA_POLICIES__STEP__MAX_ATTEMPTS`, ...).
    pub policies: Policies,
    /// Replies applied per transaction at most (`SAGA_REPLY_BATCH`).
    pub reply_batch: usize,
    /// Concurrent reply-consuming loops in this process (`SAGA_REPLY_CONSUMERS`).
    pub reply_consumers: usize,
    /// How often due timers are looked for, in ms (`SAGA_TIMER_INTERVAL_MS`).
    pub timer_interval_ms: u64,
    /// Where the trace viewer shows a trace, `{trace_id}` replaced (`SAGA_TRACE_URL_TEMPLATE`).
    pub trace_url_template: String,
    /// How often messages on subjects no consumer serves are looked for and parked, in
    /// seconds (`SAGA_STRAY_SWEEP_SECS`).
    pub stray_sweep_secs: u64,
    /// How long a finished saga (completed, compensated, cancelled) is kept, with its steps
    /// and history, in seconds after its last change; 0 keeps every saga
    /// (`SAGA_RETAIN_FINISHED_SECS`, default 30 days). Failed sagas are always kept.
    pub retain_finished_secs: u64,
    /// How often the retention sweep runs, in seconds (`SAGA_RETENTION_SWEEP_SECS`).
    pub retention_sweep_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            infra: Infrastructure::default(),
            orchestrator_addr: "127.0.0.1:8090".into(),
            orchestrator_schema: "orchestrator".into(),
            policies: Policies::default(),
            reply_batch: 256,
            reply_consumers: 2,
            timer_interval_ms: 100,
            trace_url_template: "http://127.0.0.1:16686/trace/{trace_id}".into(),
            stray_sweep_secs: 30,
            retain_finished_secs: 30 * 24 * 3600,
            retention_sweep_secs: 60,
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A built orchestrator, ready to run.
pub struct Orchestrator {
    config: Config,
    engine: Engine,
    js: jetstream::Context,
    topology: Topology,
    readiness: Readiness,
    api: ApiState,
}

impl Orchestrator {
    /// Connects to PostgreSQL (migrating its schema) and NATS (creating the streams and its
    /// consumer), with the built-in saga definitions.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let registry = Registry::builtin(&config.policies);
        Self::build_with(config, registry).await
    }

    /// Migrates the orchestrator's schema and returns, without connecting to NATS
    /// (`SAGA_MIGRATE_ONLY`).
    pub async fn migrate(config: &Config) -> anyhow::Result<()> {
        let pool = runtime::db::connect(
            &config.infra.database_url,
            &config.orchestrator_schema,
            1,
            &MIGRATOR,
        )
        .await
        .with_context(|| format!("PostgreSQL at {}", config.infra.database_url_redacted()))?;
        pool.close().await;
        Ok(())
    }

    /// Like [`Orchestrator::build`], with the given saga definitions (a deployment that adds a
    /// new version keeps the old ones, so running sagas finish as they started).
    pub async fn build_with(config: Config, registry: Registry) -> anyhow::Result<Self> {
        let pool = runtime::db::connect(
            &config.infra.database_url,
            &config.orchestrator_schema,
            config.infra.database_max_connections,
            &MIGRATOR,
        )
        .await
        .with_context(|| format!("PostgreSQL at {}", config.infra.database_url_redacted()))?;
        let nats = runtime::jetstream::connect(&config.infra, "orchestrator")
            .await
            .with_context(|| format!("NATS at {}", config.infra.nats_url))?;
        let js = jetstream::new(nats.clone());
        let topology = Topology::new(&config.infra.nats_prefix);
        runtime::jetstream::ensure_streams(&js, &topology, config.infra.nats_replicas).await?;
        let registry = Arc::new(registry);
        let publisher = Publisher::new(pool.clone(), js.clone());
        let engine = Engine::new(
            Store::new(pool.clone()),
            registry,
            topology.clone(),
            publisher,
            Watch::new(nats.clone(), &topology),
        );
        let readiness = Readiness::new(pool, js.clone(), topology.stream(Stream::Replies));
        let api = ApiState {
            engine: engine.clone(),
            js: js.clone(),
            nats,
            topology: topology.clone(),
        };
        Ok(Self {
            config,
            engine,
            js,
            topology,
            readiness,
            api,
        })
    }

    /// The public routes (`/v1/sagas...`) and their OpenAPI description.
    pub fn api(&self) -> (Router, OpenApi) {
        api::router(self.api.clone()).split_for_parts()
    }

    /// The saga page (`/ui`, `/ui/sagas/{id}`, `/ui/dead-letters`) and the API docs for people
    /// (Swagger UI at `/docs`, over `/openapi.json`).
    pub fn ui(&self) -> Router {
        crate::ui::router(crate::ui::UiState {
            api: self.api.clone(),
            trace_url_template: self.config.trace_url_template.clone(),
        })
    }

    /// `/healthz` and `/readyz`.
    pub fn health(&self) -> Router {
        health_routes(self.readiness.clone())
    }

    /// The readiness switch (turned off when shutdown begins).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Starts the background loops on `tasks`; they stop at `shutdown`. First re-sends every
    /// command in flight (see the module documentation).
    pub async fn spawn_background(
        &self,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        tasks.spawn(self.engine.watch().clone().run(shutdown.clone()));
        match self.engine.store().rearm_step_timeouts().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                commands = n,
                "start-up: every command in flight is sent again now"
            ),
            Err(error) => {
                tracing::warn!(%error, "start-up: re-arming the step timeouts failed; they fire when due")
            }
        }
        let consumer = runtime::jetstream::ensure_consumer(
            &self.js,
            &self.topology,
            Stream::Replies,
            &self.topology.orchestrator_consumer(),
            &self.topology.stream_subjects(Stream::Replies),
        )
        .await?;
        tasks.spawn(runtime::metrics::run_gauges(
            "orchestrator",
            self.engine.publisher().clone(),
            Some(consumer.clone()),
            shutdown.clone(),
        ));
        tasks.spawn(runtime::metrics::run_upkeep(shutdown.clone()));
        let store = self.engine.store().clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                match store.activity().await {
                    Ok((counts, oldest)) => {
                        for (state, count) in counts {
                            metrics::gauge!(runtime::metrics::SAGAS_ACTIVE, "state" => state)
                                .set(count as f64);
                        }
                        metrics::gauge!(runtime::metrics::OLDEST_ACTIVE).set(oldest);
                    }
                    Err(error) => tracing::warn!(%error, "reading saga activity failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                }
            }
        });
        for _ in 0..self.config.reply_consumers.max(1) {
            let engine = self.engine.clone();
            let js = self.js.clone();
            let topology = self.topology.clone();
            let consumer = consumer.clone();
            let shutdown = shutdown.clone();
            let batch = self.config.reply_batch.max(1);
            tasks.spawn(async move {
                consume::run_batches(consumer, batch, shutdown, |messages| {
                    handle_replies(&engine, &js, &topology, messages)
                })
                .await;
            });
        }
        let engine = self.engine.clone();
        let interval = Duration::from_millis(self.config.timer_interval_ms.max(10));
        let stop = shutdown.clone();
        tasks.spawn(async move { run_timers(engine, interval, stop).await });
        let publisher = self.engine.publisher().clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            publisher
                .run_relay(stop, Duration::from_millis(500), Duration::from_secs(2))
                .await;
        });
        if self.config.retain_finished_secs > 0 {
            tasks.spawn(crate::retention::run(
                self.engine.store().clone(),
                Duration::from_secs(self.config.retain_finished_secs),
                Duration::from_secs(self.config.retention_sweep_secs.max(1)),
                1000,
                shutdown.clone(),
            ));
        }
        tasks.spawn(crate::strays::run(
            self.js.clone(),
            self.topology.clone(),
            Duration::from_secs(self.config.stray_sweep_secs.max(1)),
            shutdown.clone(),
        ));
        Ok(())
    }

    /// Serves the API on the configured address and runs the background loops until
    /// `shutdown`; then turns not-ready, drains HTTP, lets loops finish their batch.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(&self.config.orchestrator_addr)
            .await
            .with_context(|| format!("binding {}", self.config.orchestrator_addr))?;
        tracing::info!(addr = %listener.local_addr()?, "orchestrator listening");
        let edge = runtime::edge::Edge::from_env()?;
        let (api, openapi) = self.api();
        let router = api
            .merge(self.health())
            .merge(runtime::auth::login_routes(edge.tokens()))
            .merge(runtime::http::openapi_route(openapi))
            .merge(runtime::metrics::route())
            .merge(self.ui())
            .fallback(runtime::problem::route_not_found);
        let mut tasks = JoinSet::new();
        self.spawn_background(&mut tasks, &shutdown).await?;
        let readiness = self.readiness();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            readiness.stop_accepting();
        });
        edge.serve(listener, router, shutdown).await?;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

async fn handle_replies(
    engine: &Engine,
    js: &jetstream::Context,
    topology: &Topology,
    messages: Vec<jetstream::Message>,
) {
    let mut verdicts = Vec::with_capacity(messages.len());
    let mut replies = Vec::with_capacity(messages.len());
    for message in &messages {
        let Some((_, worker)) = topology.parse_reply_subject(message.subject.as_str()) else {
            verdicts.push(Verdict::DeadLetter(format!(
                "{} is not a worker's reply subject",
                message.subject
            )));
            continue;
        };
        match runtime::jetstream::decode::<Reply>(message) {
            Ok(reply) => {
                verdicts.push(Verdict::Ack);
                replies.push(Received { reply, worker });
            }
            Err(error) => verdicts.push(Verdict::DeadLetter(error.to_string())),
        }
    }
    if !replies.is_empty() {
        tracing::debug!(replies = replies.len(), "reply batch");
        let outcomes = engine.apply_replies(&replies).await;
        let decoded = verdicts.iter_mut().filter(|v| **v == Verdict::Ack);
        match outcomes {
            Ok(outcomes) => {
                for (verdict, outcome) in decoded.zip(outcomes) {
                    match outcome {
                        ReplyOutcome::Unknown(reason) => *verdict = Verdict::DeadLetter(reason),
                        ReplyOutcome::Refused(reason) => {
                            tracing::warn!(%reason, "a reply was refused");
                            *verdict = Verdict::DeadLetter(format!("refused: {reason}"));
                        }
                        ReplyOutcome::Applied | ReplyOutcome::Ignored => {}
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, replies = replies.len(), "reply batch failed; redelivering");
                decoded.for_each(|verdict| *verdict = Verdict::RetryLater(error.to_string()));
            }
        }
    }
    for (message, verdict) in messages.iter().zip(verdicts) {
        consume::settle(js, topology, message, verdict).await;
    }
}

async fn run_timers(engine: Engine, interval: Duration, shutdown: CancellationToken) {
    const LIMIT: i64 = 500;
    loop {
        let pause = match engine.fire_timers(LIMIT).await {
            Ok(n) if n as i64 >= LIMIT => Duration::ZERO,
            Ok(_) => interval,
            Err(error) => {
                tracing::warn!(%error, "timer sweep failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
