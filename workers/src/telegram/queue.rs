//! The asynchronous path: messages another service queued on `notify.telegram` (stream
//! `NOTIFY`, a work queue) because its synchronous call to this service failed or its breaker
//! was open. The durable consumer [`CONSUMER`] delivers each through the same keyed,
//! at-most-once [`Delivery`] as `POST /v1/telegram/messages`, so a message the synchronous call
//! did deliver after all, or a queued message delivered twice, is sent once:
//!
//! | outcome of the keyed send                         | settled as                               |
//! |---------------------------------------------------|------------------------------------------|
//! | sent now, or sent / failed earlier under the key  | ack                                      |
//! | refused for good (no chat, blocked, ...)          | ack (the notification is `failed`)       |
//! | Telegram failing, its breaker open                | nak, redelivered after Telegram's wait   |
//! | another attempt holds a live sending lease        | nak, redelivered soon                    |
//! | the key names another message, undecodable       | dead letter                              |
//!
//! A message handed back too often goes to the dead-letter stream through the runtime's consume
//! policy; it is never dropped.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use contracts::topology::Stream;
use contracts::{CustomerId, Topology};
use futures::StreamExt as _;
use runtime::consume::{self, Verdict};
use runtime::metrics::TELEGRAM_QUEUED_DELIVERIES;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::delivery::{Delivery, Key, Message, Outcome};

/// The durable consumer of `notify.telegram`.
pub const CONSUMER: &str = "telegram-notify";

/// The channel name of Telegram on the `NOTIFY` stream (`notify.telegram`).
pub const CHANNEL: &str = "telegram";

/// How many queued messages of one batch are delivered at once.
const CONCURRENT_DELIVERIES: usize = 16;

/// The results [`TELEGRAM_QUEUED_DELIVERIES`] counts.
const RESULTS: [&str; 6] = [
    "sent",
    "already_sent",
    "already_failed",
    "failed",
    "retry",
    "dead_letter",
];

/// A message on `notify.telegram`, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum QueuedMessage {
    /// `telegram.queued_message.v1`
    #[serde(rename = "telegram.queued_message.v1")]
    V1(QueuedMessageV1),
}

impl From<QueuedMessageV1> for QueuedMessage {
    fn from(message: QueuedMessageV1) -> Self {
        QueuedMessage::V1(message)
    }
}

/// A message queued for Telegram: `{"type": "telegram.queued_message.v1", "idempotency_key",
/// "customer_id", "text"}` once wrapped in [`QueuedMessage`]. The key makes its delivery exactly
/// once, whoever else sends under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessageV1 {
    /// The sender's idempotency key (the same as its synchronous call's).
    pub idempotency_key: String,
    /// Whom to tell.
    pub customer_id: CustomerId,
    /// The text (at most 4096 UTF-16 units).
    pub text: String,
    /// The saga the message belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_id: Option<contracts::SagaId>,
}

/// Makes the delivery counter visible on `/metrics` before the first message.
pub fn register_metrics() {
    let _ = runtime::metrics::handle();
    metrics::describe_counter!(
        TELEGRAM_QUEUED_DELIVERIES,
        "Messages of the notify.telegram queue settled, by result"
    );
    for result in RESULTS {
        metrics::counter!(TELEGRAM_QUEUED_DELIVERIES, "result" => result).increment(0);
    }
}

/// How one queued message is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Settlement {
    /// By the runtime's consume policy.
    Verdict(Verdict),
    /// Handed back, to come again no sooner than `after` (Telegram's wait, the breaker's open
    /// time, another attempt's lease).
    Later { reason: String, after: Duration },
}

/// What a keyed send's outcome means for the queued message: its settlement and the result
/// counted.
fn settlement(outcome: &Outcome) -> (Settlement, &'static str) {
    match outcome {
        Outcome::Sent { now: true, .. } => (Settlement::Verdict(Verdict::Ack), "sent"),
        Outcome::Sent { now: false, .. } => (Settlement::Verdict(Verdict::Ack), "already_sent"),
        Outcome::Failed { now: true, .. } => (Settlement::Verdict(Verdict::Ack), "failed"),
        Outcome::Failed { now: false, .. } => (Settlement::Verdict(Verdict::Ack), "already_failed"),
        // The attempt holding the lease usually finishes long before the lease ends: look
        // again soon (the runtime's growing delay), never later than the lease.
        Outcome::Sending { retry_after, .. } => (
            Settlement::Later {
                reason: "another attempt is calling Telegram for this message".into(),
                after: (*retry_after).min(Duration::from_secs(1)),
            },
            "retry",
        ),
        Outcome::Pending { failure, .. } => (
            Settlement::Later {
                reason: format!("{}: {}", failure.code, failure.detail),
                after: Duration::from_millis(failure.retry_after_ms.unwrap_or(0)),
            },
            "retry",
        ),
        Outcome::KeyReused { id } => (
            Settlement::Verdict(Verdict::DeadLetter(format!(
                "the idempotency key names another message (notification {id})"
            ))),
            "dead_letter",
        ),
    }
}

/// Delivers the messages queued on `notify.telegram` until `shutdown`.
pub async fn run(
    delivery: Delivery,
    js: jetstream::Context,
    topology: Topology,
    max_batch: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer = runtime::jetstream::ensure_consumer(
        &js,
        &topology,
        Stream::Notifications,
        CONSUMER,
        &topology.notify_subject(CHANNEL),
    )
    .await?;
    let queue = Queue {
        delivery,
        js,
        topology,
    };
    consume::run_batches(consumer, max_batch.max(1), shutdown, |batch| {
        queue.handle_batch(batch)
    })
    .await;
    Ok(())
}

struct Queue {
    delivery: Delivery,
    js: jetstream::Context,
    topology: Topology,
}

impl Queue {
    async fn handle_batch(&self, batch: Vec<jetstream::Message>) {
        futures::stream::iter(batch)
            .for_each_concurrent(CONCURRENT_DELIVERIES, |message| async move {
                let (settlement, result) = self.deliver(&message).await;
                metrics::counter!(TELEGRAM_QUEUED_DELIVERIES, "result" => result).increment(1);
                self.settle(&message, settlement).await;
            })
            .await;
    }

    async fn deliver(&self, message: &jetstream::Message) -> (Settlement, &'static str) {
        let queued = match serde_json::from_slice(&message.payload) {
            Ok(QueuedMessage::V1(queued)) => queued,
            Err(error) => {
                let reason = format!("undecodable queued message: {error}");
                return (
                    Settlement::Verdict(Verdict::DeadLetter(reason)),
                    "dead_letter",
                );
            }
        };
        let keyed = Message {
            key: Key::Idempotency(&queued.idempotency_key),
            saga: queued.saga_id,
            customer: &queued.customer_id,
            text: &queued.text,
        };
        match self.delivery.deliver(&keyed).await {
            Ok(outcome) => settlement(&outcome),
            Err(error) => (
                Settlement::Verdict(Verdict::RetryLater(error.to_string())),
                "retry",
            ),
        }
    }

    async fn settle(&self, message: &jetstream::Message, settlement: Settlement) {
        let (reason, after) = match settlement {
            Settlement::Verdict(verdict) => {
                consume::settle(&self.js, &self.topology, message, verdict).await;
                return;
            }
            Settlement::Later { reason, after } => (reason, after),
        };
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if delivered >= runtime::jetstream::MAX_DELIVER {
            // Out of deliveries: the one policy parks it with the reason.
            consume::settle(
                &self.js,
                &self.topology,
                message,
                Verdict::RetryLater(reason),
            )
            .await;
            return;
        }
        let delay = redelivery_delay(delivered, after);
        tracing::debug!(%reason, delay_ms = delay.as_millis() as u64, "queued message handed back");
        if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(%error, "handing a queued message back failed; it returns after its ack wait");
        }
    }
}

/// The delay before the `delivered`-th failed delivery comes again: the runtime's growing delay,
/// or what Telegram (or the breaker, or a live lease) asked for, whichever is longer.
pub fn redelivery_delay(delivered: i64, asked: Duration) -> Duration {
    consume::nak_delay(delivered).max(asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telegram::bot::{SendFailure, codes};
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn the_queued_message_is_tagged_and_its_tag_checked() {
        let message = QueuedMessageV1 {
            idempotency_key: "gift:1".into(),
            customer_id: "player-1".parse().expect("a customer id"),
            text: "hi".into(),
            saga_id: None,
        };
        let value = serde_json::to_value(QueuedMessage::from(message.clone())).expect("encodes");
        assert_eq!(
            value,
            json!({"type": "telegram.queued_message.v1", "idempotency_key": "gift:1",
                   "customer_id": "player-1", "text": "hi"})
        );
        assert_eq!(
            serde_json::from_value::<QueuedMessage>(value).expect("decodes"),
            QueuedMessage::V1(message)
        );
        for wrong in [
            json!({"type": "telegram.queued_message.v2", "idempotency_key": "k", "customer_id": "c", "text": "t"}),
            json!({"idempotency_key": "k", "customer_id": "c", "text": "t"}),
            json!({"type": "telegram.queued_message.v1", "idempotency_key": "k", "customer_id": "no spaces", "text": "t"}),
        ] {
            assert!(
                serde_json::from_value::<QueuedMessage>(wrong.clone()).is_err(),
                "{wrong}"
            );
        }
    }

    #[test]
    fn outcomes_settle_as_documented() {
        let id = Uuid::nil();
        let ack = Settlement::Verdict(Verdict::Ack);
        let cases = [
            (
                Outcome::Sent {
                    id,
                    telegram_message_id: Some(1),
                    now: true,
                },
                "sent",
            ),
            (
                Outcome::Sent {
                    id,
                    telegram_message_id: Some(1),
                    now: false,
                },
                "already_sent",
            ),
            (
                Outcome::Failed {
                    id,
                    code: codes::FORBIDDEN.into(),
                    detail: "blocked".into(),
                    now: true,
                },
                "failed",
            ),
            (
                Outcome::Failed {
                    id,
                    code: codes::CHAT_NOT_LINKED.into(),
                    detail: "none".into(),
                    now: false,
                },
                "already_failed",
            ),
        ];
        for (outcome, result) in cases {
            assert_eq!(settlement(&outcome), (ack.clone(), result));
        }
        let open = SendFailure {
            retry_after_ms: Some(10_000),
            ..SendFailure::retryable(codes::CIRCUIT_OPEN, "open".into())
        };
        let (later, result) = settlement(&Outcome::Pending { id, failure: open });
        assert_eq!(result, "retry");
        assert!(
            matches!(later, Settlement::Later { after, .. } if after == Duration::from_secs(10))
        );
        let (later, _) = settlement(&Outcome::Sending {
            id,
            retry_after: Duration::from_millis(9500),
        });
        assert!(
            matches!(later, Settlement::Later { after, .. } if after == Duration::from_secs(1)),
            "a live lease is looked at again soon"
        );
        let (dead, result) = settlement(&Outcome::KeyReused { id });
        assert_eq!(result, "dead_letter");
        assert!(matches!(dead, Settlement::Verdict(Verdict::DeadLetter(_))));
    }

    #[test]
    fn redelivery_waits_for_telegram_and_grows() {
        assert_eq!(
            redelivery_delay(1, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(redelivery_delay(1, Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            redelivery_delay(15, Duration::from_secs(10)),
            Duration::from_secs(15)
        );
        assert!(redelivery_delay(100, Duration::ZERO) <= Duration::from_secs(30));
    }
}
