//! Mypage: the players' read model (CQRS), projected from every domain event on `DOMAIN_EVT`
//! into MariaDB or PostgreSQL, and rebuildable by replaying the stream.
//!
//! It owns one view: a row per mission (the seed's Mypage row: status, reward, notification),
//! a row per gift exchange (gift, voucher, notification) and a balance per customer; how an
//! event changes them is the pure fold of [`view`]. It serves them over HTTP ([`api`]):
//! `GET /v1/mypages/{mission_id}`, `GET /v1/mypages?customer_id=|reward_id=|telegram_id=`, and
//! the operator's `POST`/`GET /v1/mypages/rebuild`. All of its SQL is in [`store`], one file per
//! database; it never writes anywhere else and no saga waits for it.
//!
//! # The projection protocol
//!
//! The view is kept in **generations**. Reads follow the *serving* generation (one row,
//! `mypage_view`, names it); every row is keyed by its generation. Each generation records
//! `applied_through`: the last `DOMAIN_EVT` stream sequence it has applied (events of unknown
//! types and garbage count as applied: they change nothing).
//!
//! A **loop** reads an ordered feed of the stream ([`feed`]) opened after some sequence, and
//! applies it chunk by chunk, each chunk in one transaction ([`projector::Projection::apply`]):
//! 1. lock `mypage_view` (every applier, rebuild start and switch is serialized by this lock);
//! 2. pick the target generation: the serving one for the live loop, its own building one for
//!    a rebuild loop (a rebuild loop whose generation no longer builds stops);
//! 3. **continuity check**: the loop's feed has delivered every message after
//!    `continuous_after` (the sequence it was opened after, then each applied chunk's end,
//!    lowered to the chunk's start if the feed restarted earlier). If that is beyond the
//!    target's `applied_through`, events in between went to another generation: the loop
//!    *rewinds* (opens a new feed after `applied_through`) and applies nothing;
//! 4. messages at or below `applied_through` are skipped (a redelivered or replayed message
//!    changes nothing); the others are applied: garbage is dead-lettered (once: only past
//!    `dead_lettered_through`, before the commit), known events are folded into the rows
//!    they touch, unknown ones are skipped (and counted by the live loop);
//! 5. `applied_through` becomes the chunk's last sequence, in the same transaction as the rows.
//!
//! So a generation's content is always the fold of a gap-free prefix of the stream, in stream
//! order, each message once, whatever loops run, crash, restart or race (any number of
//! replicas may run the live loop; they serialize on the lock and skip what another applied).
//!
//! Why an ordered feed positioned by the store, and not the runtime's durable consumer
//! ([`crate::runtime::events::run`]): "a message at or below the last applied sequence changes
//! nothing" is only safe if nothing after a message can be applied before it. A durable
//! consumer redelivers a NAKed message, or one whose ack wait expired after a crash, *after*
//! later ones (and splits messages between replicas), so the watermark would drop it for good.
//! The store holds the position instead, in the transaction of the rows, and a feed opened
//! there never skips. The message sorting (known, unknown, garbage), the dead-letter headers
//! and the skip and apply counters are the runtime's.
//!
//! # Rebuild and hand-over
//!
//! `POST /v1/mypages/rebuild` (or `mypage-worker rebuild`) creates generation *g+1*
//! `building`, with `applied_through` 0 (409 `rebuild_running` while one builds). A rebuild
//! loop ([`rebuild`]) replays the stream from its first message into *g+1* with the protocol
//! above, while the live loop keeps applying to *g*, and reads keep being served from *g*.
//! When a rebuild chunk ends with nothing more pending in the stream (or, idle, the stream's
//! last sequence is applied), and *g+1* holds at least everything *g* holds, the same
//! transaction **switches**: *g+1* serves, *g* retires. Reads switch atomically at that commit
//! (each read is one statement naming the serving generation).
//!
//! Events arriving during the switch: the live loop's next transaction locks `mypage_view`
//! after the switch, so it targets *g+1*. Its feed position `p` is at most *g*'s
//! `applied_through`, itself at most *g+1*'s (the switch condition), so the continuity check
//! passes: what *g+1* already replayed is skipped, what is new is applied, once. Should the
//! live loop be ahead (a switch forced by the idle check against a stream that was
//! recreated), the continuity check rewinds it to *g+1*'s position instead: nothing is
//! skipped. The rebuild loop stops at its next transaction (its generation no longer builds),
//! and the supervisor drops *g*'s rows in chunks. A rebuild started on one replica is picked
//! up by every replica's supervisor (the protocol lets them replay into *g+1* side by side),
//! so it survives the replica that started it.
//!
//! Progress: `GET /v1/mypages/rebuild` (`state`, `replayed`, `started_at`, `finished_at`,
//! `generation`), the log every 2 s, and the gauges [`PROJECTION_REBUILD_RUNNING`] and
//! [`PROJECTION_REBUILD_REPLAYED`].

pub mod api;
pub mod feed;
pub mod health;
pub mod projector;
pub mod rebuild;
pub mod store;
#[cfg(test)]
mod tests;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use contracts::Topology;
use contracts::topology::Stream;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use projector::Projection;
use rebuild::{RebuildStatus, Rebuilds};
use store::Store;

/// The label value of the projection metrics.
pub const PROJECTION: &str = "mypage";
/// From an event's `occurred_at` to its commit into the view, in seconds (histogram), by
/// `projection`.
pub const PROJECTION_LAG: &str = "saga_projection_lag_seconds";
/// Messages of `DOMAIN_EVT` the serving generation has not applied yet (gauge), by
/// `projection`.
pub const PROJECTION_PENDING: &str = "saga_projection_pending";
/// The generation reads are served from (gauge), by `projection`.
pub const PROJECTION_GENERATION: &str = "saga_projection_generation";
/// 1 while this process replays a rebuild, else 0 (gauge), by `projection`.
pub const PROJECTION_REBUILD_RUNNING: &str = "saga_projection_rebuild_running";
/// Messages the running (or last) rebuild replayed (gauge), by `projection`.
pub const PROJECTION_REBUILD_REPLAYED: &str = "saga_projection_rebuild_replayed";

/// The help text of the projection's metrics.
fn describe_metrics() {
    use metrics::{Unit, describe_gauge, describe_histogram};
    let _ = runtime::metrics::handle();
    describe_histogram!(
        PROJECTION_LAG,
        Unit::Seconds,
        "From an event's occurred_at to its commit into the view, by projection"
    );
    describe_gauge!(
        PROJECTION_PENDING,
        "Messages of DOMAIN_EVT the serving generation has not applied yet, by projection"
    );
    describe_gauge!(
        PROJECTION_GENERATION,
        "The generation reads are served from, by projection"
    );
    describe_gauge!(
        PROJECTION_REBUILD_RUNNING,
        "1 while this process replays a rebuild, else 0, by projection"
    );
    describe_gauge!(
        PROJECTION_REBUILD_REPLAYED,
        "Messages the running (or last) rebuild replayed, by projection"
    );
}

/// The Mypage worker's settings (`SAGA_*`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MypageSettings {
    /// NATS (`SAGA_NATS_URL`, `SAGA_NATS_PREFIX`, ...) and the platform's PostgreSQL.
    #[serde(flatten)]
    pub infra: runtime::config::Infrastructure,
    /// The view's database (`SAGA_MYPAGE_DATABASE_URL`): `mysql://…` for MariaDB,
    /// `postgres://…` for PostgreSQL (schema `mypage`); without it, `SAGA_DATABASE_URL`. A
    /// secret: never serialized, never shown by `Debug`.
    #[serde(default, skip_serializing)]
    pub mypage_database_url: Option<SecretString>,
    /// Connections of the view's read pool (`SAGA_MYPAGE_DATABASE_MAX_CONNECTIONS`): a few per
    /// database core serve a crowd of readers best (more only take the database's time from
    /// the projection, whose own pool has [`PROJECTION_CONNECTIONS`]).
    pub mypage_database_max_connections: u32,
    /// Messages applied per transaction at most (`SAGA_MYPAGE_BATCH`).
    pub mypage_batch: usize,
}

impl Default for MypageSettings {
    fn default() -> Self {
        Self {
            infra: runtime::config::Infrastructure::default(),
            mypage_database_url: None,
            mypage_database_max_connections: 8,
            mypage_batch: 500,
        }
    }
}

impl MypageSettings {
    /// The view's database URL.
    pub fn database_url(&self) -> &SecretString {
        self.mypage_database_url
            .as_ref()
            .unwrap_or(&self.infra.database_url)
    }

    /// The view's database URL without its password, for logs.
    pub fn database_url_redacted(&self) -> String {
        use secrecy::ExposeSecret as _;
        runtime::config::redact_url(self.database_url().expose_secret())
    }
}

/// The Mypage worker: the view's store, the live projection, rebuilds and the HTTP API.
#[derive(Clone)]
pub struct MypageWorker {
    reads: Store,
    projection: Arc<Projection>,
    rebuilds: Rebuilds,
    readiness: health::Readiness,
}

/// Connections of the projection's own pool: the live loop, a rebuild loop, the supervisor and
/// the gauges. Reads have their own pool, so that a crowd of readers never delays the
/// projection's transactions.
pub const PROJECTION_CONNECTIONS: u32 = 4;

impl MypageWorker {
    /// Connects: the view's store (created and migrated; one pool for reads, one for the
    /// projection), NATS, the streams.
    pub async fn connect(settings: &MypageSettings) -> anyhow::Result<Self> {
        // Every series the dashboard reads is on /metrics from the start, at zero.
        metrics::gauge!(PROJECTION_REBUILD_RUNNING, "projection" => PROJECTION).set(0.0);
        metrics::gauge!(PROJECTION_REBUILD_REPLAYED, "projection" => PROJECTION).set(0.0);
        metrics::counter!(runtime::metrics::EVENTS_SKIPPED, "consumer" => PROJECTION).increment(0);
        let url = settings.database_url();
        let store = |connections| async move {
            Store::connect(url, connections).await.with_context(|| {
                format!("the Mypage store at {}", settings.database_url_redacted())
            })
        };
        let reads = store(settings.mypage_database_max_connections).await?;
        let writes = store(PROJECTION_CONNECTIONS).await?;
        let nats = runtime::jetstream::connect(&settings.infra, "worker-mypage")
            .await
            .with_context(|| format!("NATS at {}", settings.infra.nats_url))?;
        let js = jetstream::new(nats);
        let topology = Topology::new(&settings.infra.nats_prefix);
        runtime::jetstream::ensure_streams(&js, &topology, settings.infra.nats_replicas).await?;
        tracing::info!(store = reads.backend().as_str(), "Mypage store ready");
        Ok(Self::new(writes, js, topology, settings.mypage_batch).with_reads(reads))
    }

    /// A worker over a connected store (for reads and the projection alike) and JetStream.
    pub fn new(store: Store, js: jetstream::Context, topology: Topology, batch: usize) -> Self {
        describe_metrics();
        let readiness =
            health::Readiness::new(store.clone(), js.clone(), topology.stream(Stream::Events));
        let projection = Arc::new(Projection {
            store: store.clone(),
            js,
            topology,
            batch: batch.max(1),
        });
        Self {
            reads: store,
            rebuilds: Rebuilds::new(projection.clone()),
            projection,
            readiness,
        }
    }

    /// The same worker, serving reads from `reads` (a pool of their own).
    pub fn with_reads(mut self, reads: Store) -> Self {
        self.readiness = health::Readiness::new(
            reads.clone(),
            self.projection.js.clone(),
            self.projection.topology.stream(Stream::Events),
        );
        self.reads = reads;
        self
    }

    /// The view's store (its read pool).
    pub fn store(&self) -> &Store {
        &self.reads
    }

    /// Closes the pools.
    pub async fn close(&self) {
        self.reads.close().await;
        self.projection.store.close().await;
    }

    /// The public routes and their OpenAPI description.
    pub fn api(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        api::router(api::ApiState {
            store: self.reads.clone(),
            rebuilds: self.rebuilds.clone(),
        })
    }

    /// `/healthz` and `/readyz` over the view's store and `DOMAIN_EVT`.
    pub fn health(&self) -> axum::Router {
        health::routes(self.readiness.clone())
    }

    /// The readiness switch (`stop_accepting` when shutdown begins).
    pub fn readiness(&self) -> &health::Readiness {
        &self.readiness
    }

    /// Projects `DOMAIN_EVT` into the view, runs rebuilds (started here or elsewhere) and
    /// records the projection's gauges, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let live = self.projection.clone().run_live(shutdown.clone());
        let rebuilds = self.rebuilds.clone().supervise(shutdown.clone());
        let gauges = run_gauges(self.projection.clone(), shutdown);
        tokio::join!(live, rebuilds, gauges);
        Ok(())
    }

    /// Starts a rebuild (or joins the running one) and replays until reads switch to it:
    /// `mypage-worker rebuild`.
    pub async fn rebuild(&self, shutdown: &CancellationToken) -> anyhow::Result<RebuildStatus> {
        self.rebuilds.run_to_end(shutdown).await
    }
}

/// Every second until `shutdown`: what the serving generation has not applied yet, and which
/// generation serves. Also recorded as the runtime's consumer gauge (`consumer="mypage"`), so
/// the dashboard's backlog panel shows it with the durable consumers.
async fn run_gauges(projection: Arc<Projection>, shutdown: CancellationToken) {
    let mut warned = false;
    loop {
        let head = feed::stream_head(&projection.js, &projection.topology).await;
        let serving = projection.store.serving().await;
        if let (Ok((last, _)), Ok(serving)) = (head, serving) {
            let applied = u64::try_from(serving.applied_through).unwrap_or(0);
            let pending = last.saturating_sub(applied) as f64;
            metrics::gauge!(PROJECTION_PENDING, "projection" => PROJECTION).set(pending);
            metrics::gauge!(runtime::metrics::CONSUMER_PENDING, "consumer" => feed::CONSUMER)
                .set(pending);
            metrics::gauge!(PROJECTION_GENERATION, "projection" => PROJECTION)
                .set(serving.generation as f64);
            if applied > last && !warned {
                warned = true;
                tracing::error!(
                    applied,
                    last,
                    "the view is ahead of DOMAIN_EVT: the stream was recreated; rebuild the view (POST /v1/mypages/rebuild)"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
