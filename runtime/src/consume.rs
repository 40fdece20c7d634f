//! How every consumer of the platform consumes: the pull loop (messages from a durable pull
//! consumer, with heartbeats, recreated after a failure, handed to the handler in batches of
//! whatever is ready, until the shutdown signal; a batch that has begun is always finished) and
//! the one policy that settles each message afterwards: acknowledge it, hand it back for a
//! later delivery, or park it on the dead-letter stream with its reason. The orchestrator and
//! every worker settle through [`settle`], so a message is never silently dropped.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use contracts::Topology;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::dead_letter;
use crate::jetstream::MAX_DELIVER;

/// What becomes of a message once its consumer is done with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handled, or a duplicate of something handled: acknowledge it.
    Ack,
    /// Infrastructure trouble: deliver it again after a growing delay. Past
    /// [`MAX_DELIVER`] deliveries it is parked instead, with the last reason.
    RetryLater(String),
    /// Not now, but at a known moment (another attempt holds the work until then): deliver it
    /// again after that delay. Past [`MAX_DELIVER`] deliveries it is parked instead.
    RetryAfter(String, Duration),
    /// It can never be handled (undecodable, unknown, refused): park it with the reason.
    DeadLetter(String),
}

/// Settles `message` as `verdict` says. A failure to settle is logged: the message then comes
/// back after its ack wait, and its consumer deduplicates it.
pub async fn settle(
    js: &jetstream::Context,
    topology: &Topology,
    message: &Message,
    verdict: Verdict,
) {
    let verdict_delay = match &verdict {
        Verdict::RetryAfter(_, delay) => Some(*delay),
        _ => None,
    };
    let result = match verdict {
        Verdict::Ack => message.ack().await,
        Verdict::DeadLetter(reason) => dead_letter::park(js, topology, message, &reason).await,
        Verdict::RetryLater(reason) | Verdict::RetryAfter(reason, _) => {
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            let delay = match &verdict_delay {
                Some(delay) => *delay,
                None => nak_delay(delivered),
            };
            if delivered >= MAX_DELIVER {
                let reason = format!("gave up after {delivered} deliveries: {reason}");
                dead_letter::park(js, topology, message, &reason).await
            } else {
                message.ack_with(AckKind::Nak(Some(delay))).await
            }
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, subject = %message.subject, "settling a message failed; it comes back after its ack wait");
    }
}

/// Pulls from `consumer` and calls `handle` with each batch of ready messages (at most
/// `max_batch`) until `shutdown`.
pub async fn run_batches<F, Fut>(
    consumer: Consumer<pull::Config>,
    max_batch: usize,
    shutdown: CancellationToken,
    mut handle: F,
) where
    F: FnMut(Vec<Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let stream = consumer
            .stream()
            .max_messages_per_batch(max_batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot pull; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut chunks = stream.ready_chunks(max_batch);
        loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => {
                    release_buffered(&mut chunks).await;
                    return;
                }
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                break;
            };
            let mut batch = Vec::with_capacity(chunk.len());
            let mut broken = false;
            for item in chunk {
                match item {
                    Ok(message) => batch.push(message),
                    Err(error) => {
                        tracing::warn!(%error, "pull stream failed; recreating it");
                        broken = true;
                    }
                }
            }
            if !batch.is_empty() {
                handle(batch).await;
            }
            if broken {
                break;
            }
        }
    }
}

/// Hands back the messages pulled but not yet handled, so that another replica gets them
/// at once instead of after the ack wait.
async fn release_buffered<S>(chunks: &mut S)
where
    S: futures::Stream<
            Item = Vec<Result<Message, async_nats::jetstream::consumer::pull::MessagesError>>,
        > + Unpin,
{
    use futures::FutureExt;
    while let Some(Some(chunk)) = chunks.next().now_or_never() {
        for message in chunk.into_iter().flatten() {
            if let Err(error) = message
                .ack_with(async_nats::jetstream::AckKind::Nak(None))
                .await
            {
                tracing::debug!(%error, "could not hand a message back; it returns after the ack wait");
            }
        }
    }
}

/// The redelivery delay after the `delivered`-th failed delivery: grows to 30 s, so that a
/// dependency outage of minutes does not exhaust a message's deliveries.
pub fn nak_delay(delivered: i64) -> Duration {
    let seconds = u64::try_from(delivered.clamp(1, 30)).unwrap_or(30);
    Duration::from_secs(seconds)
}
