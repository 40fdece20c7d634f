//! The pull loop every consumer of the platform runs: messages from a durable pull consumer
//! (with heartbeats, recreated after a failure), handed to the handler in batches of whatever
//! is ready, until the shutdown signal. A batch that has begun is always finished.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{Consumer, pull};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

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
