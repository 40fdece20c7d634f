//! Rebuilds of the view: starting one (a new `building` generation), running its replay until
//! it switches reads over, reporting progress, and dropping the generation it replaced. Every
//! replica's [`Rebuilds::supervise`] picks up a building generation, wherever it was started
//! (the HTTP route, the command line, another replica that went away): the protocol lets any
//! number of loops replay into the same generation.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::projector::{Ended, Projection, Role, sleep_or_stop};
use super::store::{Generation, GenerationState, RebuildStart, Store};
use super::{PROJECTION, PROJECTION_REBUILD_REPLAYED, PROJECTION_REBUILD_RUNNING};

/// How often a replica looks for a rebuild started elsewhere.
const POLL: Duration = Duration::from_secs(2);

/// Where rebuilds stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    /// No rebuild ever ran.
    Idle,
    /// A rebuild is replaying; reads are served from the previous generation.
    Running,
    /// The last rebuild finished; reads are served from its generation.
    Done,
}

/// `GET /v1/mypages/rebuild`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RebuildStatus {
    /// `idle`, `running` or `done`.
    pub state: RebuildState,
    /// Messages of `DOMAIN_EVT` the (last) rebuild replayed into its generation.
    pub replayed: i64,
    /// When the (last) rebuild started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it switched reads to its generation.
    pub finished_at: Option<DateTime<Utc>>,
    /// The generation the (last) rebuild builds or built.
    pub generation: Option<i64>,
    /// The generation reads are served from.
    pub serving_generation: i64,
}

impl RebuildStatus {
    /// The status given the newest rebuilt generation and the serving one's number.
    pub fn of(latest: Option<&Generation>, serving_generation: i64) -> Self {
        match latest {
            None => Self {
                state: RebuildState::Idle,
                replayed: 0,
                started_at: None,
                finished_at: None,
                generation: None,
                serving_generation,
            },
            Some(latest) => Self {
                state: if latest.state == GenerationState::Building {
                    RebuildState::Running
                } else {
                    RebuildState::Done
                },
                replayed: latest.replayed,
                started_at: Some(latest.started_at),
                finished_at: latest.finished_at,
                generation: Some(latest.generation),
                serving_generation,
            },
        }
    }
}

/// Reads the rebuild status from `store`.
pub async fn status(store: &Store) -> Result<RebuildStatus, sqlx::Error> {
    let (serving, latest) = store.rebuild_state().await?;
    Ok(RebuildStatus::of(latest.as_ref(), serving))
}

/// Starts and runs rebuilds.
#[derive(Clone)]
pub struct Rebuilds {
    projection: Arc<Projection>,
    wake: Arc<Notify>,
}

impl Rebuilds {
    /// Rebuilds of `projection`'s view.
    pub fn new(projection: Arc<Projection>) -> Self {
        Self {
            projection,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Starts a rebuild (unless one runs) and wakes this process's supervisor.
    pub async fn start(&self) -> Result<RebuildStart, sqlx::Error> {
        let started = self.projection.store.start_rebuild(Utc::now()).await?;
        match &started {
            RebuildStart::Started(generation) => {
                tracing::info!(generation = generation.generation, "rebuild started");
                self.wake.notify_one();
            }
            RebuildStart::AlreadyRunning(generation) => {
                tracing::info!(
                    generation = generation.generation,
                    "a rebuild is already running"
                );
            }
        }
        Ok(started)
    }

    /// Replays into `generation` until it serves (or stops building), or `shutdown`.
    pub async fn replay(&self, generation: i64, shutdown: &CancellationToken) -> Ended {
        metrics::gauge!(PROJECTION_REBUILD_RUNNING, "projection" => PROJECTION).set(1.0);
        let mut pause = Duration::from_millis(100);
        let mut after = None;
        let ended = loop {
            if shutdown.is_cancelled() {
                break Ended::Shutdown;
            }
            let start = match after.take() {
                Some(after) => after,
                None => match self.position(generation).await {
                    Ok(Some(start)) => start,
                    Ok(None) => break Ended::Finished,
                    Err(error) => {
                        tracing::warn!(%error, generation, "cannot read the rebuild's position; retrying");
                        sleep_or_stop(shutdown, &mut pause).await;
                        continue;
                    }
                },
            };
            match self
                .projection
                .follow(Role::Rebuild(generation), start, shutdown)
                .await
            {
                Ok(Ended::Rewind(at)) => after = Some(at),
                Ok(ended @ (Ended::Finished | Ended::Shutdown)) => break ended,
                Err(error) => {
                    tracing::warn!(%error, generation, "the rebuild's feed failed; opening it again");
                    sleep_or_stop(shutdown, &mut pause).await;
                }
            }
        };
        metrics::gauge!(PROJECTION_REBUILD_RUNNING, "projection" => PROJECTION).set(0.0);
        ended
    }

    /// Where a building generation stands (`None` once it no longer builds).
    async fn position(&self, generation: i64) -> Result<Option<u64>, sqlx::Error> {
        let latest = self.projection.store.latest_rebuild().await?;
        Ok(latest
            .filter(|g| g.generation == generation && g.state == GenerationState::Building)
            .map(|g| u64::try_from(g.applied_through).unwrap_or(0)))
    }

    /// Until `shutdown`: runs any rebuild that is building (started here or elsewhere), and
    /// drops the rows of generations a rebuild replaced.
    pub async fn supervise(self, shutdown: CancellationToken) {
        loop {
            match self.projection.store.latest_rebuild().await {
                Ok(Some(latest)) if latest.state == GenerationState::Building => {
                    metrics::gauge!(PROJECTION_REBUILD_REPLAYED, "projection" => PROJECTION)
                        .set(latest.replayed as f64);
                    if let Ended::Shutdown = self.replay(latest.generation, &shutdown).await {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot read the rebuild state"),
            }
            match self.projection.store.drop_retired().await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "dropped the rows of replaced generations"),
                Err(error) => tracing::warn!(%error, "cannot drop replaced generations yet"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Starts a rebuild (or joins the running one), replays until reads switch to it, drops
    /// the replaced generation, and returns the final status: `mypage-worker rebuild`.
    pub async fn run_to_end(&self, shutdown: &CancellationToken) -> anyhow::Result<RebuildStatus> {
        let generation = match self.start().await? {
            RebuildStart::Started(g) | RebuildStart::AlreadyRunning(g) => g.generation,
        };
        if let Ended::Shutdown = self.replay(generation, shutdown).await {
            anyhow::bail!("stopped before the rebuild of generation {generation} finished");
        }
        let dropped = self.projection.store.drop_retired().await?;
        tracing::info!(generation, dropped, "rebuild done");
        Ok(status(&self.projection.store).await?)
    }
}
