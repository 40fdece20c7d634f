//! The ordered feed of `DOMAIN_EVT` a projection reads: every message after a given stream
//! sequence, each exactly once and in stream order, in chunks of whatever is ready.
//!
//! It is an ordered consumer (ephemeral, no acks, recreated by the client at the last sequence
//! it delivered whenever it sees a gap, a missed heartbeat or a deleted consumer), opened at
//! the position the store holds. The position lives in the store, in the transaction of the
//! rows, so a crash, a redeploy or a second replica never needs JetStream to remember it, and
//! nothing a durable consumer could redeliver out of order (a NAK, an expired ack wait) can
//! make the projection step over an event. See the protocol in the module [`super`].
//!
//! Every message is sorted as the runtime's event consumer sorts them
//! ([`crate::runtime::events::sort`]): a known event, an event of an unknown type or newer
//! version (skipped), or garbage (dead-lettered, once, by [`park`]).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::{self, Message};
use bytes::Bytes;
use contracts::Topology;
use contracts::topology::Stream;
use futures::{FutureExt as _, StreamExt as _};

use crate::runtime::events::{Sorted, sort};

/// The name the projection goes by in dead letters and metrics.
pub const CONSUMER: &str = "mypage";

/// The longest pull request: the server's idle heartbeats come every half of it, and two
/// missed ones (a restarted NATS server lost the ephemeral consumer) make the client recreate
/// the consumer where it stopped, within about this long.
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// One message of the feed.
#[derive(Debug)]
pub struct FeedItem {
    /// Its sequence in `DOMAIN_EVT`.
    pub sequence: u64,
    /// The subject it was published on.
    pub subject: String,
    /// Its headers (trace context, `Nats-Msg-Id`).
    pub headers: Option<HeaderMap>,
    /// Its payload.
    pub payload: Bytes,
    /// What it is.
    pub sorted: Sorted,
}

impl FeedItem {
    /// An item of the feed from a message.
    pub fn of(message: &Message) -> Option<Self> {
        let info = message.info().ok()?;
        Some(Self {
            sequence: info.stream_sequence,
            subject: message.subject.to_string(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
            sorted: sort(&message.payload),
        })
    }
}

/// Messages that were ready together, in stream order.
#[derive(Debug)]
pub struct Chunk {
    /// The messages (never empty).
    pub items: Vec<FeedItem>,
    /// Nothing more was in the stream when the last one was delivered.
    pub caught_up: bool,
}

impl Chunk {
    /// The first sequence.
    pub fn first(&self) -> u64 {
        self.items.first().map_or(0, |i| i.sequence)
    }

    /// The last sequence.
    pub fn last(&self) -> u64 {
        self.items.last().map_or(0, |i| i.sequence)
    }
}

/// Why the feed stopped.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The stream or the consumer could not be reached or made.
    #[error("opening the feed of {stream}: {reason}")]
    Open {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// The consumer failed for good.
    #[error("the feed failed: {0}")]
    Broken(String),
    /// The consumer ended.
    #[error("the feed ended")]
    Ended,
}

/// An ordered feed of `DOMAIN_EVT`.
pub struct Feed {
    messages: Ordered,
    deferred: Option<FeedError>,
}

impl Feed {
    /// Opens a feed delivering every message after sequence `after` (0: from the first).
    pub async fn open(
        js: &jetstream::Context,
        topology: &Topology,
        after: u64,
    ) -> Result<Self, FeedError> {
        let name = topology.stream(Stream::Events);
        let open = |reason: String| FeedError::Open {
            stream: name.clone(),
            reason,
        };
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| open(e.to_string()))?;
        let deliver_policy = if after == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            }
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy,
                description: Some(format!("{CONSUMER} projection")),
                max_expires: PULL_EXPIRES,
                ..Default::default()
            })
            .await
            .map_err(|e| open(e.to_string()))?;
        let messages = consumer.messages().await.map_err(|e| open(e.to_string()))?;
        Ok(Self {
            messages,
            deferred: None,
        })
    }

    /// The next chunk: waits up to `idle` for a first message (`None` if none came), then
    /// takes whatever else is ready, up to `max` messages.
    pub async fn next(&mut self, max: usize, idle: Duration) -> Result<Option<Chunk>, FeedError> {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        let first = match tokio::time::timeout(idle, self.messages.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(FeedError::Ended),
            Ok(Some(Err(error))) => return Err(FeedError::Broken(error.to_string())),
            Ok(Some(Ok(message))) => message,
        };
        let mut items = Vec::with_capacity(max.min(64));
        let mut pending = pending_after(&first);
        items.push(FeedItem::of(&first).ok_or_else(without_metadata)?);
        // Whatever else has arrived meanwhile joins the chunk: under load, chunks grow with the
        // time the previous one took to apply, so the projection keeps up with one transaction
        // per chunk.
        while items.len() < max {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    pending = pending_after(&message);
                    items.push(FeedItem::of(&message).ok_or_else(without_metadata)?);
                }
                Some(Some(Err(error))) => {
                    // Hand over what came; the error is answered by the next call.
                    self.deferred = Some(FeedError::Broken(error.to_string()));
                    break;
                }
                Some(None) => {
                    self.deferred = Some(FeedError::Ended);
                    break;
                }
                None => break,
            }
        }
        Ok(Some(Chunk {
            items,
            caught_up: pending == 0,
        }))
    }
}

fn without_metadata() -> FeedError {
    FeedError::Broken("a message without JetStream metadata".into())
}

fn pending_after(message: &Message) -> u64 {
    message.info().map_or(u64::MAX, |i| i.pending)
}

/// The last sequence of `DOMAIN_EVT` and whether it holds any message at all.
pub async fn stream_head(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<(u64, bool), FeedError> {
    let name = topology.stream(Stream::Events);
    let info = js
        .get_stream(&name)
        .await
        .map_err(|e| FeedError::Open {
            stream: name.clone(),
            reason: e.to_string(),
        })?
        .get_info()
        .await
        .map_err(|e| FeedError::Open {
            stream: name.clone(),
            reason: e.to_string(),
        })?;
    Ok((info.state.last_sequence, info.state.messages > 0))
}

/// Parks a garbage message on the dead-letter stream with its reason, as the runtime's
/// consumers do (same headers, same `Nats-Msg-Id`, so a message another consumer parked too
/// is stored once within JetStream's duplicate window).
pub async fn park(
    js: &jetstream::Context,
    topology: &Topology,
    item: &FeedItem,
    reason: &str,
) -> Result<(), async_nats::Error> {
    use runtime::dead_letter::{ORIGINAL_SUBJECT, REASON, STREAM_SEQUENCE};
    let stream = topology.stream(Stream::Events);
    let mut headers = item.headers.clone().unwrap_or_default();
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1_000)
        .collect();
    headers.insert(REASON, reason.as_str());
    headers.insert(ORIGINAL_SUBJECT, item.subject.as_str());
    headers.insert(runtime::dead_letter::CONSUMER, CONSUMER);
    headers.insert(STREAM_SEQUENCE, item.sequence.to_string().as_str());
    headers.insert(
        runtime::jetstream::MSG_ID,
        format!("dlq:{stream}:{}", item.sequence).as_str(),
    );
    js.publish_with_headers(
        topology.dead_letter_subject(&item.subject),
        headers,
        item.payload.clone(),
    )
    .await?
    .await?;
    metrics::counter!(runtime::metrics::DEAD_LETTERS, "consumer" => CONSUMER).increment(1);
    tracing::warn!(subject = %item.subject, sequence = item.sequence, %reason, "message dead-lettered");
    Ok(())
}
