//! Dead letters: a message no consumer can handle (undecodable, refused, past its deliveries,
//! or on a subject nobody serves) is published on `dlq.<original subject>` with its original
//! headers and payload and the reason, and only then removed from its own stream. Nothing is
//! silently dropped. A payload too large to park whole (the headers added here would push it
//! past the server's message limit) is parked truncated, with its size and SHA-256 recorded.

use async_nats::jetstream;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use contracts::Topology;
use sha2::{Digest, Sha256};

use crate::jetstream::MSG_ID;

/// Header naming why the message was dead-lettered.
pub const REASON: &str = "Dlq-Reason";
/// Header naming the subject the message was first published on.
pub const ORIGINAL_SUBJECT: &str = "Dlq-Original-Subject";
/// Header naming the consumer that gave up on it.
pub const CONSUMER: &str = "Dlq-Consumer";
/// Header with the message's sequence in its original stream.
pub const STREAM_SEQUENCE: &str = "Dlq-Stream-Sequence";
/// Header set when the payload was truncated to be parked: its original size in bytes.
pub const ORIGINAL_SIZE: &str = "Dlq-Original-Size";
/// Header set when the payload was truncated: the hex SHA-256 of the original payload.
pub const ORIGINAL_SHA256: &str = "Dlq-Original-Sha256";

/// Payloads larger than this are parked truncated to [`TRUNCATED_TO`] bytes: the server's
/// limit is 1 MiB, and the parked copy carries more headers than the original.
pub const PARK_WHOLE_UP_TO: usize = 1024 * 1024 - 32 * 1024;
/// What is kept of a payload too large to park whole.
pub const TRUNCATED_TO: usize = 64 * 1024;

/// A message to park: where it came from and what it held.
#[derive(Clone, Debug)]
pub struct Letter {
    /// The subject it was published on.
    pub subject: Subject,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its payload.
    pub payload: Bytes,
    /// The stream it was in.
    pub stream: String,
    /// The consumer that gave up on it (empty when none did).
    pub consumer: String,
    /// Its sequence in that stream.
    pub sequence: u64,
}

/// Publishes `letter` on the dead-letter stream with `reason`; the caller then removes the
/// original (terminates it, or deletes it from its stream).
pub async fn publish(
    js: &jetstream::Context,
    topology: &Topology,
    letter: Letter,
    reason: &str,
) -> Result<(), async_nats::Error> {
    let Letter {
        subject,
        mut headers,
        mut payload,
        stream,
        consumer,
        sequence,
    } = letter;
    headers.insert(REASON, one_line(reason).as_str());
    headers.insert(ORIGINAL_SUBJECT, subject.as_str());
    headers.insert(CONSUMER, consumer.as_str());
    headers.insert(STREAM_SEQUENCE, sequence.to_string().as_str());
    headers.insert(MSG_ID, format!("dlq:{stream}:{sequence}").as_str());
    if payload.len() > PARK_WHOLE_UP_TO {
        let digest: String = Sha256::digest(&payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        headers.insert(ORIGINAL_SIZE, payload.len().to_string().as_str());
        headers.insert(ORIGINAL_SHA256, digest.as_str());
        payload = payload.slice(..TRUNCATED_TO);
    }
    let parked = topology.dead_letter_subject(subject.as_str());
    js.publish_with_headers(parked, headers, payload)
        .await?
        .await?;
    metrics::counter!(crate::metrics::DEAD_LETTERS, "consumer" => consumer).increment(1);
    tracing::warn!(subject = %subject, reason, "message dead-lettered");
    Ok(())
}

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
    let letter = Letter {
        subject: message.subject.clone(),
        headers: message.headers.clone().unwrap_or_default(),
        payload: message.payload.clone(),
        stream,
        consumer,
        sequence,
    };
    publish(js, topology, letter, reason).await?;
    message.ack_with(jetstream::AckKind::Term).await?;
    Ok(())
}

fn one_line(reason: &str) -> String {
    let flat: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.chars().take(1_000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_line_and_bounded() {
        assert_eq!(one_line("a\nb\tc"), "a b c");
        assert_eq!(one_line(&"x".repeat(5000)).len(), 1000);
    }
}
