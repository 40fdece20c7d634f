//! Dead letters: a message no consumer can handle (undecodable, or past its deliveries) is
//! published on `dlq.<original subject>` with its original headers and payload and the reason,
//! and only then terminated on its own stream. Nothing is silently dropped.

use async_nats::jetstream;
use contracts::Topology;

use crate::jetstream::MSG_ID;

/// Header naming why the message was dead-lettered.
pub const REASON: &str = "Dlq-Reason";
/// Header naming the subject the message was first published on.
pub const ORIGINAL_SUBJECT: &str = "Dlq-Original-Subject";
/// Header naming the consumer that gave up on it.
pub const CONSUMER: &str = "Dlq-Consumer";
/// Header with the message's sequence in its original stream.
pub const STREAM_SEQUENCE: &str = "Dlq-Stream-Sequence";

/// Parks `message` on the dead-letter stream with `reason`, then terminates it so it is never
/// delivered again. Returns an error (and leaves the message un-acked, so it comes back) when
/// the dead letter could not be stored.
pub async fn park(
    js: &jetstream::Context,
    topology: &Topology,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), async_nats::Error> {
    let (stream, consumer, sequence) = match message.info() {
        Ok(info) => (
            info.stream.to_owned(),
            info.consumer.to_owned(),
            info.stream_sequence,
        ),
        Err(_) => (String::new(), String::new(), 0),
    };
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(REASON, one_line(reason).as_str());
    headers.insert(ORIGINAL_SUBJECT, message.subject.as_str());
    headers.insert(CONSUMER, consumer.as_str());
    headers.insert(STREAM_SEQUENCE, sequence.to_string().as_str());
    headers.insert(MSG_ID, format!("dlq:{stream}:{sequence}").as_str());
    let subject = topology.dead_letter_subject(message.subject.as_str());
    js.publish_with_headers(subject, headers, message.payload.clone())
        .await?
        .await?;
    message.ack_with(jetstream::AckKind::Term).await?;
    metrics::counter!(crate::metrics::DEAD_LETTERS, "consumer" => consumer).increment(1);
    tracing::warn!(subject = %message.subject, reason, "message dead-lettered");
    Ok(())
}

fn one_line(reason: &str) -> String {
    let flat: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.chars().take(1_000).collect()
}
