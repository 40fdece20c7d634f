//! Applies the feed to a generation of the view: the live projection (into the serving
//! generation) and a rebuild's replay (into the building one) are the same loop with a
//! different [`Role`]. The rules of one chunk's transaction ([`Projection::apply`]) are the
//! protocol of the module [`super`]; this file is their only implementation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use contracts::Topology;
use tokio_util::sync::CancellationToken;

use super::feed::{self, CONSUMER, Chunk, Feed, FeedError};
use super::store::{GenerationState, Store, sequence};
use super::view::{Needs, Working};
use super::{PROJECTION, PROJECTION_LAG, PROJECTION_REBUILD_REPLAYED};
use crate::runtime::events::Sorted;

/// How long the feed waits for a message before a rebuild checks whether it has caught up.
const IDLE: Duration = Duration::from_millis(250);

/// Whose transaction a chunk is applied in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The live projection: into whatever generation serves when the chunk commits.
    Live,
    /// A rebuild's replay into this building generation; it switches reads to it once it has
    /// caught up with the stream.
    Rebuild(i64),
}

/// What became of a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (or found already applied) in `generation`.
    Applied {
        /// The generation written.
        generation: i64,
        /// Messages of the chunk applied now (the others were already in).
        fresh: usize,
        /// A rebuild's replayed count after this chunk.
        replayed: i64,
        /// A rebuild made its generation serve, replacing this one.
        switched_from: Option<i64>,
    },
    /// The generation holds fewer events than the feed has delivered to this loop: the
    /// feed must start again after `after` (another generation began to serve).
    Rewind {
        /// The generation's last applied sequence.
        after: u64,
    },
    /// The rebuild's generation no longer builds (it serves, or another replica finished it).
    Finished,
}

/// Why a chunk could not be applied (it is tried again, in order).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// A garbage message could not be dead-lettered.
    #[error("dead-lettering: {0}")]
    Park(String),
}

/// How a follow loop ended.
#[derive(Debug)]
pub enum Ended {
    /// Start again after this sequence.
    Rewind(u64),
    /// The rebuild is over.
    Finished,
    /// Shutdown.
    Shutdown,
}

/// The view's projection: the store, and where the events are.
#[derive(Clone)]
pub struct Projection {
    /// The store.
    pub store: Store,
    /// JetStream.
    pub js: jetstream::Context,
    /// Streams and subjects.
    pub topology: Topology,
    /// Messages per transaction at most.
    pub batch: usize,
}

impl Projection {
    /// Applies `chunk` for `role`. `continuous_after` is the sequence after which this loop's
    /// feed has delivered every message (the chunk included): the chunk may be applied only
    /// if the generation has everything up to there.
    pub async fn apply(
        &self,
        role: Role,
        continuous_after: u64,
        chunk: &Chunk,
    ) -> Result<Outcome, ApplyError> {
        let mut tx = self.store.begin().await?;
        let view = tx.lock_view().await?;
        let generation = match role {
            Role::Live => view.serving,
            Role::Rebuild(generation) => generation,
        };
        let Some(info) = tx.generation(generation).await? else {
            tx.rollback().await?;
            return Ok(Outcome::Finished);
        };
        if matches!(role, Role::Rebuild(_)) && info.state != GenerationState::Building {
            tx.rollback().await?;
            return Ok(Outcome::Finished);
        }
        let applied = u64::try_from(info.applied_through).unwrap_or(0);
        let covered_after = continuous_after.min(chunk.first().saturating_sub(1));
        if covered_after > applied {
            tx.rollback().await?;
            return Ok(Outcome::Rewind { after: applied });
        }
        let fresh: Vec<_> = chunk
            .items
            .iter()
            .filter(|i| i.sequence > applied)
            .collect();
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok(Outcome::Applied {
                generation,
                fresh: 0,
                replayed: info.replayed,
                switched_from: None,
            });
        }

        // Garbage is dead-lettered once, by whichever loop first gets past it, before the
        // commit that records it (a failed commit parks it again, under the same message id).
        let dead_lettered = u64::try_from(view.dead_lettered_through).unwrap_or(0);
        let mut parked = None;
        for item in &fresh {
            if let Sorted::Garbage(reason) = &item.sorted
                && item.sequence > dead_lettered
            {
                feed::park(&self.js, &self.topology, item, reason)
                    .await
                    .map_err(|e| ApplyError::Park(e.to_string()))?;
                parked = Some(item.sequence);
            }
        }

        let known: Vec<_> = fresh
            .iter()
            .filter_map(|i| match &i.sorted {
                Sorted::Known(envelope) => Some(envelope.as_ref()),
                _ => None,
            })
            .collect();
        if !known.is_empty() {
            let mut needs = Needs::default();
            for envelope in &known {
                needs.add(envelope);
            }
            needs.dedup();
            let (rows, wallets) = tx.load(generation, &needs.rows, &needs.wallets).await?;
            let mut working = Working::new(rows, wallets);
            for envelope in &known {
                working.fold(envelope);
            }
            let (rows, wallets) = working.changed();
            tx.write(generation, &rows, &wallets).await?;
        }
        let replayed = match role {
            Role::Live => 0,
            Role::Rebuild(_) => i64::try_from(fresh.len()).unwrap_or(i64::MAX),
        };
        tx.advance(generation, sequence(chunk.last()), replayed)
            .await?;
        if let Some(through) = parked {
            tx.dead_lettered(sequence(through)).await?;
        }
        let mut switched_from = None;
        if matches!(role, Role::Rebuild(_)) && chunk.caught_up && view.serving != generation {
            let serving = tx.generation(view.serving).await?;
            let live_through = serving.map_or(0, |g| g.applied_through);
            if sequence(chunk.last()) >= live_through {
                tx.switch(view.serving, generation, Utc::now()).await?;
                switched_from = Some(view.serving);
            }
        }
        tx.commit().await?;

        if role == Role::Live {
            let now = Utc::now();
            for envelope in &known {
                let lag = (now - envelope.occurred_at).as_seconds_f64().max(0.0);
                metrics::histogram!(PROJECTION_LAG, "projection" => PROJECTION).record(lag);
            }
            metrics::counter!(runtime::metrics::EVENTS_APPLIED, "consumer" => CONSUMER)
                .increment(known.len() as u64);
            for item in &fresh {
                if let Sorted::Unknown {
                    event_type,
                    schema_version,
                } = &item.sorted
                {
                    tracing::debug!(%event_type, schema_version, consumer = CONSUMER, "event skipped");
                    metrics::counter!(runtime::metrics::EVENTS_SKIPPED,
                        "consumer" => CONSUMER, "event_type" => event_type.clone())
                    .increment(1);
                }
            }
        }
        Ok(Outcome::Applied {
            generation,
            fresh: fresh.len(),
            replayed: info.replayed + replayed,
            switched_from,
        })
    }

    /// A rebuild whose feed has nothing more to deliver: makes its generation serve when it
    /// holds everything in the stream and everything the serving generation holds. Returns
    /// whether the rebuild is over.
    pub async fn finish_if_caught_up(&self, generation: i64) -> Result<bool, ApplyError> {
        let (head, any) = match feed::stream_head(&self.js, &self.topology).await {
            Ok(head) => head,
            Err(error) => {
                tracing::debug!(%error, "cannot read the stream's head");
                return Ok(false);
            }
        };
        let mut tx = self.store.begin().await?;
        let view = tx.lock_view().await?;
        let Some(info) = tx.generation(generation).await? else {
            tx.rollback().await?;
            return Ok(true);
        };
        if info.state != GenerationState::Building {
            tx.rollback().await?;
            return Ok(true);
        }
        let serving = tx.generation(view.serving).await?;
        // The serving generation may be ahead of a stream that was recreated: the head decides.
        let live_through = serving.map_or(0, |g| g.applied_through).min(sequence(head));
        let caught_up = !any || info.applied_through >= sequence(head);
        let holds_live = !any || info.applied_through >= live_through;
        if caught_up && holds_live {
            tx.switch(view.serving, generation, Utc::now()).await?;
            tx.commit().await?;
            log_switch(
                view.serving,
                generation,
                info.replayed,
                info.applied_through,
            );
            return Ok(true);
        }
        tx.rollback().await?;
        Ok(false)
    }

    /// Reads the feed after `after` and applies it for `role` until the generation needs
    /// another start (a rewind), the rebuild is over, or `shutdown`. A chunk that fails is
    /// tried again, in order, with a growing pause: nothing after it is applied before it.
    pub async fn follow(
        &self,
        role: Role,
        after: u64,
        shutdown: &CancellationToken,
    ) -> Result<Ended, FeedError> {
        let mut feed = Feed::open(&self.js, &self.topology, after).await?;
        let mut continuous_after = after;
        let mut progress = Instant::now();
        loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                chunk = feed.next(self.batch, IDLE) => chunk?,
            };
            let Some(chunk) = chunk else {
                if let Role::Rebuild(generation) = role {
                    match self.finish_if_caught_up(generation).await {
                        Ok(true) => return Ok(Ended::Finished),
                        Ok(false) => {}
                        Err(error) => tracing::warn!(%error, generation, "rebuild check failed"),
                    }
                }
                continue;
            };
            let mut pause = Duration::from_millis(100);
            loop {
                let started = Instant::now();
                match self.apply(role, continuous_after, &chunk).await {
                    Ok(Outcome::Applied {
                        generation,
                        fresh,
                        replayed,
                        switched_from,
                    }) => {
                        tracing::debug!(
                            ?role,
                            generation,
                            messages = chunk.items.len(),
                            fresh,
                            first = chunk.first(),
                            last = chunk.last(),
                            caught_up = chunk.caught_up,
                            took_ms = started.elapsed().as_secs_f64() * 1e3,
                            "chunk applied"
                        );
                        continuous_after = chunk.last();
                        if let Role::Rebuild(_) = role {
                            metrics::gauge!(PROJECTION_REBUILD_REPLAYED, "projection" => PROJECTION)
                                .set(replayed as f64);
                            if progress.elapsed() >= Duration::from_secs(2) {
                                progress = Instant::now();
                                tracing::info!(
                                    generation,
                                    replayed,
                                    through = continuous_after,
                                    "rebuild replaying"
                                );
                            }
                        }
                        if let Some(from) = switched_from {
                            log_switch(from, generation, replayed, sequence(continuous_after));
                            return Ok(Ended::Finished);
                        }
                        break;
                    }
                    Ok(Outcome::Rewind { after }) => {
                        tracing::info!(
                            ?role,
                            after,
                            delivered_through = continuous_after,
                            "the generation changed under the feed: reading again after its last applied event"
                        );
                        return Ok(Ended::Rewind(after));
                    }
                    Ok(Outcome::Finished) => return Ok(Ended::Finished),
                    Err(error) => {
                        tracing::warn!(%error, ?role, first = chunk.first(), last = chunk.last(), "applying events failed; trying again");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// The live projection, until `shutdown`: follows the feed from the serving generation's
    /// position, and again from the new position whenever a rebuild switched generations.
    pub async fn run_live(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        let mut after = None;
        while !shutdown.is_cancelled() {
            let start = match after.take() {
                Some(after) => after,
                None => match self.store.serving().await {
                    Ok(serving) => u64::try_from(serving.applied_through).unwrap_or(0),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the view's position; retrying");
                        sleep_or_stop(&shutdown, &mut pause).await;
                        continue;
                    }
                },
            };
            match self.follow(Role::Live, start, &shutdown).await {
                Ok(Ended::Rewind(at)) => after = Some(at),
                Ok(Ended::Shutdown) => return,
                Ok(Ended::Finished) => {}
                Err(error) => {
                    tracing::warn!(%error, "the projection's feed failed; opening it again");
                    sleep_or_stop(&shutdown, &mut pause).await;
                    continue;
                }
            }
            pause = Duration::from_millis(100);
        }
    }
}

fn log_switch(from: i64, to: i64, replayed: i64, through: i64) {
    tracing::info!(
        from,
        to,
        replayed,
        through,
        "rebuild caught up: reads now served from the new generation"
    );
}

/// Sleeps `pause` (doubling it up to 5 s) unless `shutdown` comes first.
pub async fn sleep_or_stop(shutdown: &CancellationToken, pause: &mut Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(*pause) => {}
    }
    *pause = (*pause * 2).min(Duration::from_secs(5));
}
