//! The event consumer every reader of `DOMAIN_EVT` runs (the Mypage projection, the wallet's
//! ledger of version-1 rewards): a durable pull consumer on one filter subject, in batches.
//!
//! Each message is sorted first: an undecodable one is parked on the dead-letter stream with
//! its reason; an event whose type this build does not know, or whose schema version is newer
//! than it understands, is skipped (acknowledged and counted in `saga_events_skipped_total`);
//! the others go to the [`EventHandler`] as one batch in stream order, with their stream
//! sequences, so that a reader can make a redelivered or replayed event change nothing. A
//! failed batch is delivered again later, by the runtime's one consume policy.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use contracts::topology::Stream;
use contracts::{DomainEvent, EventEnvelope, Topology};
use runtime::consume::{self, Verdict};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::HandlerError;

/// An event delivered to a reader.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    /// Its sequence in `DOMAIN_EVT`: increasing, the same on every redelivery and replay.
    pub stream_sequence: u64,
    /// The event.
    pub envelope: EventEnvelope,
}

/// A reader of domain events.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies a batch of known events, in stream order, as one unit of work: all or none.
    fn apply<'a>(
        &'a self,
        events: &'a [Delivered],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// What a message on `DOMAIN_EVT` turned out to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Sorted {
    /// A known event.
    Known(Box<EventEnvelope>),
    /// A well-formed event of a type or version this build does not know.
    Unknown {
        /// Its type.
        event_type: String,
        /// Its schema version.
        schema_version: u16,
    },
    /// Not an event at all.
    Garbage(String),
}

/// Sorts a message's payload (see the module documentation).
pub fn sort(payload: &[u8]) -> Sorted {
    #[derive(Deserialize)]
    struct Head {
        event_type: String,
        schema_version: u16,
    }
    let head: Head = match serde_json::from_slice(payload) {
        Ok(head) => head,
        Err(error) => return Sorted::Garbage(format!("not an event envelope: {error}")),
    };
    let known = DomainEvent::KNOWN
        .iter()
        .any(|(name, newest)| *name == head.event_type && head.schema_version <= *newest);
    if !known {
        return Sorted::Unknown {
            event_type: head.event_type,
            schema_version: head.schema_version,
        };
    }
    match serde_json::from_slice::<EventEnvelope>(payload) {
        Ok(envelope) => Sorted::Known(Box::new(envelope)),
        Err(error) => Sorted::Garbage(format!(
            "a {} v{} event that does not decode: {error}",
            head.event_type, head.schema_version
        )),
    }
}

/// Runs `handler` on the durable consumer `durable` of `DOMAIN_EVT`, filtered by `filter`,
/// until `shutdown`. A new durable starts at the stream's first message.
pub async fn run<H: EventHandler>(
    js: jetstream::Context,
    topology: Topology,
    durable: String,
    filter: String,
    handler: Arc<H>,
    max_batch: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer =
        runtime::jetstream::ensure_consumer(&js, &topology, Stream::Events, &durable, &filter)
            .await?;
    consume::run_batches(consumer, max_batch, shutdown, |messages| {
        handle_batch(&js, &topology, &durable, handler.as_ref(), messages)
    })
    .await;
    Ok(())
}

async fn handle_batch<H: EventHandler>(
    js: &jetstream::Context,
    topology: &Topology,
    durable: &str,
    handler: &H,
    messages: Vec<jetstream::Message>,
) {
    let mut verdicts = Vec::with_capacity(messages.len());
    let mut known = Vec::with_capacity(messages.len());
    let mut known_at = Vec::with_capacity(messages.len());
    for (at, message) in messages.iter().enumerate() {
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        match sort(&message.payload) {
            Sorted::Known(envelope) => {
                verdicts.push(Verdict::Ack);
                known_at.push(at);
                known.push(Delivered {
                    stream_sequence: sequence,
                    envelope: *envelope,
                });
            }
            Sorted::Unknown {
                event_type,
                schema_version,
            } => {
                tracing::debug!(%event_type, schema_version, consumer = durable, "event skipped");
                metrics::counter!(runtime::metrics::EVENTS_SKIPPED,
                    "consumer" => durable.to_owned(), "event_type" => event_type)
                .increment(1);
                verdicts.push(Verdict::Ack);
            }
            Sorted::Garbage(reason) => verdicts.push(Verdict::DeadLetter(reason)),
        }
    }
    if !known.is_empty() {
        let outcome = handler.apply(&known).await;
        let mut failed = |verdict: Verdict| {
            for at in &known_at {
                verdicts[*at] = verdict.clone();
            }
        };
        match outcome {
            Ok(()) => {
                metrics::counter!(runtime::metrics::EVENTS_APPLIED, "consumer" => durable.to_owned())
                    .increment(known.len() as u64);
            }
            Err(HandlerError::Retryable(reason)) => {
                tracing::warn!(%reason, consumer = durable, "event batch failed; redelivering");
                failed(Verdict::RetryLater(reason));
            }
            Err(HandlerError::Busy(reason, after)) => failed(Verdict::RetryAfter(reason, after)),
            Err(HandlerError::Fatal(reason)) => {
                failed(Verdict::DeadLetter(reason));
            }
        }
    }
    for (message, verdict) in messages.iter().zip(verdicts) {
        consume::settle(js, topology, message, verdict).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_sorted_into_known_unknown_and_garbage() {
        let event = DomainEvent::SagaFinished(contracts::event::SagaFinishedV1 {
            saga_id: contracts::SagaId::new(),
            saga_type: "t".into(),
            state: "completed".into(),
        });
        let envelope = EventEnvelope::new(event, None, chrono::Utc::now());
        let payload = serde_json::to_vec(&envelope).expect("encodes");
        assert_eq!(sort(&payload), Sorted::Known(Box::new(envelope.clone())));

        let mut newer = serde_json::to_value(&envelope).expect("encodes");
        newer["schema_version"] = 2.into();
        newer["event"]["type"] = "SagaFinished.v2".into();
        let newer = serde_json::to_vec(&newer).expect("encodes");
        assert_eq!(
            sort(&newer),
            Sorted::Unknown {
                event_type: "SagaFinished".into(),
                schema_version: 2
            }
        );

        let mut strange = serde_json::to_value(&envelope).expect("encodes");
        strange["event_type"] = "PlayerDanced".into();
        let strange = serde_json::to_vec(&strange).expect("encodes");
        assert!(matches!(sort(&strange), Sorted::Unknown { .. }));

        assert!(matches!(sort(b"not json"), Sorted::Garbage(_)));
        let mut broken = serde_json::to_value(&envelope).expect("encodes");
        broken["event"]["state"] = 7.into();
        let broken = serde_json::to_vec(&broken).expect("encodes");
        assert!(matches!(sort(&broken), Sorted::Garbage(_)));
    }
}
