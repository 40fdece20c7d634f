//! Waiting for a saga without polling the database, on any replica.
//!
//! The orchestrator that commits a change of a saga's `state` announces it after the commit: it
//! publishes the saga's view (the JSON `GET /v1/sagas/{id}` answers) on core NATS
//! `<prefix>.watch.saga.<id>`, one publish with no acknowledgement. Every replica subscribes
//! once to `<prefix>.watch.saga.>` and hands each view to the waiters it has for that saga: one
//! broadcast channel per watched saga, made by the first waiter and dropped with the last. A
//! waiter follows the saga before it reads it once (so no change can slip between the read and
//! the wait), then waits on its channel only: waiting costs no query. Core NATS delivers at most
//! once; when the connection to NATS was re-established (a notice may have been lost meanwhile)
//! or a waiter fell behind its channel, the waiter reads the saga once more.
//!
//! On it: the long poll `GET /v1/sagas/{id}?wait=`, `POST /v1/sagas` with `Prefer: wait=`, and
//! the server-sent events of `GET /v1/sagas/{id}/events`. At shutdown every channel closes:
//! waiters answer with what they have and event streams end.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use contracts::{SagaId, Topology};
use futures::{Stream, StreamExt as _};
use runtime::ApiError;
use runtime::problem::Problem;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, SagaView};
use crate::machine::{Saga, SagaState};
use crate::store::{Change, Store, StoreError};

/// Waiters on this replica for a saga to change (long polls, `Prefer: wait`, event streams).
pub const WAITERS: &str = "saga_waiters";

/// How many notices a waiter may fall behind before it reads the saga again instead.
const CHANNEL: usize = 16;

/// The longest a client may wait for a saga (long poll and `Prefer: wait`).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The longest an announcement may wait for the NATS client to take it: a client that does not
/// (NATS unreachable, its buffer full) must not hold up the engine.
const ANNOUNCE_WAIT: Duration = Duration::from_millis(100);

/// A saga as a waiter sees it: its state, when it last changed, and its view as
/// `GET /v1/sagas/{id}` answers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Watched {
    /// Its state.
    pub state: SagaState,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Its view, JSON.
    pub body: Bytes,
}

/// The part of a view a waiter looks at.
#[derive(Deserialize)]
struct Head {
    state: String,
    updated_at: DateTime<Utc>,
}

impl Watched {
    /// The view of `saga`.
    pub fn of(saga: Saga) -> Result<Self, serde_json::Error> {
        let (state, updated_at) = (saga.state, saga.updated_at);
        Ok(Self {
            state,
            updated_at,
            body: Bytes::from(serde_json::to_vec(&SagaView::from(saga))?),
        })
    }

    /// A view as announced.
    fn decode(body: Bytes) -> Option<Self> {
        let head: Head = serde_json::from_slice(&body).ok()?;
        Some(Self {
            state: SagaState::parse(&head.state)?,
            updated_at: head.updated_at,
            body,
        })
    }

    /// Whether nothing more happens to the saga without an operator.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }
}

/// What a waiter hears.
#[derive(Clone, Debug)]
pub enum Notice {
    /// The saga's state changed; this is its view after the change.
    Changed(Arc<Watched>),
    /// A notice may have been lost (NATS reconnected, or the waiter fell behind): read the
    /// saga again.
    Resync,
}

struct Inner {
    nats: async_nats::Client,
    /// `<prefix>.watch.saga`
    root: String,
    followers: Mutex<HashMap<SagaId, broadcast::Sender<Notice>>>,
    closed: AtomicBool,
}

/// The announcements of one replica and its waiters.
#[derive(Clone)]
pub struct Watch {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Announcements over `nats`, on the subjects of `topology`'s prefix.
    pub fn new(nats: async_nats::Client, topology: &Topology) -> Self {
        let _ = runtime::metrics::handle();
        metrics::describe_gauge!(
            WAITERS,
            "Waiters on this replica for a saga to change (long polls, Prefer: wait, event streams)"
        );
        let root = if topology.prefix().is_empty() {
            "watch.saga".to_owned()
        } else {
            format!("{}.watch.saga", topology.prefix())
        };
        Self {
            inner: Arc::new(Inner {
                nats,
                root,
                followers: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The subject a saga's changes are announced on.
    pub fn subject(&self, id: SagaId) -> String {
        format!("{}.{id}", self.inner.root)
    }

    /// Announces every committed change that moved a saga to another state (or created it).
    /// A failed publish is logged: waiters then answer when their wait runs out. When NATS does
    /// not take an announcement within 100 ms, the rest of the batch is dropped.
    pub async fn announce(&self, changes: &[Change]) {
        for change in changes {
            let before = change.before.as_ref().map(|b| b.saga.state);
            if before == Some(change.after.state) {
                continue;
            }
            let watched = match Watched::of(change.after.clone()) {
                Ok(watched) => watched,
                Err(error) => {
                    tracing::warn!(%error, saga_id = %change.after.id, "a saga view does not encode");
                    continue;
                }
            };
            let subject = self.subject(change.after.id);
            let publish = self.inner.nats.publish(subject, watched.body);
            match tokio::time::timeout(ANNOUNCE_WAIT, publish).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, saga_id = %change.after.id, "announcing a saga's state failed");
                }
                Err(_) => {
                    tracing::warn!(
                        "NATS does not take announcements of saga states; waiters answer when their wait runs out"
                    );
                    return;
                }
            }
        }
    }

    /// Follows a saga: what this replica hears about it from now on. Follow before reading the
    /// saga, so that no change slips between the read and the wait.
    pub fn follow(&self, id: SagaId) -> Follower {
        let mut followers = self
            .inner
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let receiver = (!self.inner.closed.load(Ordering::Acquire)).then(|| {
            followers
                .entry(id)
                .or_insert_with(|| broadcast::channel(CHANNEL).0)
                .subscribe()
        });
        if receiver.is_some() {
            metrics::gauge!(WAITERS).increment(1.0);
        }
        Follower {
            id,
            receiver,
            watch: self.clone(),
        }
    }

    /// How many sagas this replica has waiters for.
    pub fn followed(&self) -> usize {
        self.inner
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn sender(&self, id: SagaId) -> Option<broadcast::Sender<Notice>> {
        self.inner
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    fn resync_all(&self) {
        let followers = self
            .inner
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for sender in followers.values() {
            let _ = sender.send(Notice::Resync);
        }
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Hands what is announced (by any replica) to this replica's waiters until `shutdown`,
    /// then closes every channel. One subscription per replica.
    pub async fn run(self, shutdown: CancellationToken) {
        let subject = format!("{}.>", self.inner.root);
        let stats = self.inner.nats.statistics();
        loop {
            let mut subscription = match self.inner.nats.subscribe(subject.clone()).await {
                Ok(subscription) => subscription,
                Err(error) => {
                    tracing::warn!(%error, %subject, "subscribing to saga announcements failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut connects = stats.connects.load(Ordering::Relaxed);
            // Waiters that came before the subscription may have missed a notice.
            self.resync_all();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let ended = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break false,
                    message = subscription.next() => {
                        let Some(message) = message else { break true };
                        self.dispatch(message.subject.as_str(), message.payload);
                    }
                    _ = tick.tick() => {
                        let now = stats.connects.load(Ordering::Relaxed);
                        if now != connects {
                            connects = now;
                            tracing::debug!("NATS reconnected: waiters read their sagas again");
                            self.resync_all();
                        }
                    }
                }
            };
            if !ended {
                break;
            }
            tracing::warn!(%subject, "the subscription to saga announcements ended; subscribing again");
        }
        self.close();
    }

    fn dispatch(&self, subject: &str, payload: Bytes) {
        let id = subject
            .strip_prefix(self.inner.root.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|id| id.parse::<SagaId>().ok());
        let Some(id) = id else {
            return;
        };
        let Some(sender) = self.sender(id) else {
            return;
        };
        match Watched::decode(payload) {
            Some(watched) => {
                let _ = sender.send(Notice::Changed(Arc::new(watched)));
            }
            None => tracing::warn!(%subject, "an announcement that is not a saga view"),
        }
    }

    /// Waits until the saga `first` shows is terminal, at most until `deadline`, listening to
    /// `follower` (which must have followed it before `first` was read). Returns the latest
    /// view seen: the terminal one, or the current one when the wait ran out.
    pub async fn until_terminal(
        mut follower: Follower,
        first: Watched,
        store: &Store,
        deadline: Instant,
    ) -> Result<Watched, StoreError> {
        let mut last = first;
        while !last.is_terminal() {
            let notice = match tokio::time::timeout_at(deadline, follower.next()).await {
                Ok(Some(notice)) => notice,
                // the wait ran out, or the replica is shutting down
                Ok(None) | Err(_) => break,
            };
            if let Some(newer) = follower.newer(notice, &last, store).await? {
                last = newer;
            }
        }
        Ok(last)
    }

    /// Follows a saga and reads it once: `None` when there is no such saga.
    pub async fn read(
        &self,
        store: &Store,
        id: SagaId,
    ) -> Result<Option<(Follower, Watched)>, StoreError> {
        let follower = self.follow(id);
        let Some(stored) = store.get(id).await? else {
            return Ok(None);
        };
        let first =
            Watched::of(stored.saga).map_err(|e| StoreError::Corrupt(id.0, e.to_string()))?;
        Ok(Some((follower, first)))
    }
}

/// One waiter's channel for one saga; leaving drops the saga's channel when it was the last.
pub struct Follower {
    id: SagaId,
    receiver: Option<broadcast::Receiver<Notice>>,
    watch: Watch,
}

impl Follower {
    /// The next notice; `None` once the replica shuts down.
    pub async fn next(&mut self) -> Option<Notice> {
        let receiver = self.receiver.as_mut()?;
        match receiver.recv().await {
            Ok(notice) => Some(notice),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Notice::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// What `notice` says about the saga if it is newer than `last` (a resync reads it again).
    async fn newer(
        &self,
        notice: Notice,
        last: &Watched,
        store: &Store,
    ) -> Result<Option<Watched>, StoreError> {
        let fresh = match notice {
            Notice::Changed(watched) => Watched::clone(&watched),
            Notice::Resync => match store.get(self.id).await? {
                Some(stored) => Watched::of(stored.saga)
                    .map_err(|e| StoreError::Corrupt(self.id.0, e.to_string()))?,
                None => return Ok(None),
            },
        };
        // Replicas announce independently: an older view may arrive after a newer one.
        let newer = fresh.updated_at > last.updated_at
            || (fresh.updated_at == last.updated_at && fresh.state != last.state);
        Ok(newer.then_some(fresh))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let Some(receiver) = self.receiver.take() else {
            return;
        };
        metrics::gauge!(WAITERS).decrement(1.0);
        let mut followers = self
            .watch
            .inner
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(receiver);
        if followers
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            followers.remove(&self.id);
        }
    }
}

/// Parses a wait: whole or fractional seconds (`10`, `10s`, `1.5s`) or milliseconds
/// (`500ms`), at most [`MAX_WAIT`].
pub fn parse_wait(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "wait must be seconds (10, 10s, 1.5s) or milliseconds (500ms), at most {} s; got {text:?}",
            MAX_WAIT.as_secs()
        )
    };
    let (number, unit) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(invalid)?;
    let wait = Duration::try_from_secs_f64(value * unit).map_err(|_| invalid())?;
    if wait > MAX_WAIT {
        return Err(invalid());
    }
    Ok(wait)
}

/// The saga's events: the current saga at once, then one per change of its state, the terminal
/// one last.
fn events(follower: Follower, first: Watched, store: Store) -> impl Stream<Item = Event> {
    struct Following {
        follower: Follower,
        last: Watched,
        store: Store,
        pending: Option<Watched>,
        done: bool,
    }
    let start = Following {
        follower,
        last: first.clone(),
        store,
        pending: Some(first),
        done: false,
    };
    futures::stream::unfold(start, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            if let Some(view) = s.pending.take() {
                s.done = view.is_terminal();
                let data = String::from_utf8_lossy(&view.body).into_owned();
                return Some((Event::default().event("saga").data(data), s));
            }
            let notice = s.follower.next().await?;
            match s.follower.newer(notice, &s.last, &s.store).await {
                Ok(Some(newer)) => {
                    if newer.state != s.last.state {
                        s.pending = Some(newer.clone());
                    }
                    s.last = newer;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "an event stream could not read its saga; ending it");
                    return None;
                }
            }
        }
    })
}

/// Follow a saga live: server-sent events, one per change of its state.
///
/// Each event is named `saga` and its data is the saga as `GET /v1/sagas/{id}` answers it: the
/// current saga at once, then one event per change of its `state`. The stream ends after the
/// terminal state (at once for a saga that is terminal already). A comment every 15 s keeps the
/// connection alive.
#[utoipa::path(
    get,
    path = "/v1/sagas/{id}/events",
    params(("id" = String, Path, description = "The saga's id")),
    responses(
        (status = 200, description = "A stream of `saga` events: the current saga, then one per change of its state, the terminal one last",
         content_type = "text/event-stream", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "sagas"
)]
pub async fn saga_events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let not_found = || ApiError::not_found("saga_not_found", format!("no saga {id}"));
    let saga_id: SagaId = id.parse().map_err(|_| not_found())?;
    let store = state.engine.store().clone();
    let (follower, first) = state
        .engine
        .watch()
        .read(&store, saga_id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(not_found)?;
    let stream = events(follower, first, store).map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_seconds_or_milliseconds_up_to_a_minute() {
        assert_eq!(parse_wait("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_wait("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_wait("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_wait("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("60s"), Ok(MAX_WAIT));
        for bad in [
            "61", "61s", "60001ms", "-1", "abc", "", "10m", "NaN", "inf", "1e400",
        ] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }
}
