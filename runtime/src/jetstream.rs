//! JetStream: connecting, creating the platform's streams and durable consumers idempotently at
//! start-up (within what nats-server 2.9.10 supports: one filter subject per consumer), and the
//! codec between an [`Envelope`] and a NATS message (JSON body, trace context in headers).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use contracts::topology::Stream;
use contracts::{Envelope, EventEnvelope, Topology};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Header carrying JetStream's de-duplication id.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Connects to NATS as `infra` says (its URL, user and password, CA for TLS), with a client
/// name shown by the server's monitoring.
pub async fn connect(
    infra: &crate::config::Infrastructure,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    use secrecy::ExposeSecret as _;
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if let (Some(user), Some(password)) = (&infra.nats_user, &infra.nats_password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
    }
    if let Some(ca) = &infra.nats_ca_file {
        options = options.add_root_certificates(ca.into()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = infra
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
        })?;
    options.connect(servers).await
}

/// Errors while setting up streams or consumers.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A stream could not be created or read.
    #[error("stream {0}: {1}")]
    Stream(String, String),
    /// A consumer could not be created or read.
    #[error("consumer {0}: {1}")]
    Consumer(String, String),
}

fn stream_config(topology: &Topology, which: Stream, replicas: usize) -> stream::Config {
    let (retention, max_age) = match which {
        Stream::Commands | Stream::Replies | Stream::Notifications => {
            (stream::RetentionPolicy::WorkQueue, Duration::ZERO)
        }
        Stream::Events => (
            stream::RetentionPolicy::Limits,
            Duration::from_secs(30 * 86_400),
        ),
        Stream::DeadLetters => (
            stream::RetentionPolicy::Limits,
            Duration::from_secs(90 * 86_400),
        ),
    };
    stream::Config {
        name: topology.stream(which),
        subjects: vec![topology.stream_subjects(which)],
        retention,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Creates the platform's streams when missing (an existing stream is left as it is).
pub async fn ensure_streams(
    js: &jetstream::Context,
    topology: &Topology,
    replicas: usize,
) -> Result<(), SetupError> {
    for which in Stream::ALL {
        let config = stream_config(topology, which, replicas);
        let name = config.name.clone();
        js.get_or_create_stream(config)
            .await
            .map_err(|e| SetupError::Stream(name, e.to_string()))?;
    }
    Ok(())
}

/// Creates (or opens) a durable pull consumer with one filter subject. On a cluster that is
/// electing a leader the call can time out: it is tried again with backoff for about a minute.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    topology: &Topology,
    which: Stream,
    durable: &str,
    filter_subject: &str,
) -> Result<consumer::Consumer<consumer::pull::Config>, SetupError> {
    let mut wait = Duration::from_millis(250);
    let mut tries = 0;
    loop {
        tries += 1;
        match try_ensure_consumer(js, topology, which, durable, filter_subject).await {
            Ok(consumer) => return Ok(consumer),
            Err(error) if tries < 8 => {
                tracing::warn!(%error, tries, "creating a consumer failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(15));
            }
            Err(error) => return Err(error),
        }
    }
}

async fn try_ensure_consumer(
    js: &jetstream::Context,
    topology: &Topology,
    which: Stream,
    durable: &str,
    filter_subject: &str,
) -> Result<consumer::Consumer<consumer::pull::Config>, SetupError> {
    let stream_name = topology.stream(which);
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| SetupError::Stream(stream_name.clone(), e.to_string()))?;
    stream
        .get_or_create_consumer(
            durable,
            consumer::pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subject: filter_subject.to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVER,
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| SetupError::Consumer(durable.to_owned(), e.to_string()))
}

/// How long a consumer may hold a message before JetStream delivers it again. Work that calls
/// another service finishes well within it (see the workers' call budget).
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Deliveries of one message before it is dead-lettered.
pub const MAX_DELIVER: i64 = 20;

/// A message ready to publish: subject, headers, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes.
    pub subject: String,
    /// Headers (trace context and the like; `Nats-Msg-Id` is added at publish time).
    pub headers: BTreeMap<String, String>,
    /// The JSON body.
    pub payload: Vec<u8>,
}

/// Encodes an envelope for `subject`.
pub fn encode<B: Serialize>(
    subject: String,
    envelope: &Envelope<B>,
) -> Result<Outgoing, serde_json::Error> {
    let mut headers = envelope.headers.clone();
    headers.insert("Saga-Id".into(), envelope.saga_id.to_string());
    headers.insert("Saga-Step".into(), envelope.step.clone());
    Ok(Outgoing {
        subject,
        headers,
        payload: serde_json::to_vec(envelope)?,
    })
}

/// Encodes a domain event for its subject (`evt.<context>.<name>`), with `headers` (the trace
/// context of the change that caused it).
pub fn encode_event(
    topology: &Topology,
    envelope: &EventEnvelope,
    headers: &BTreeMap<String, String>,
) -> Result<Outgoing, serde_json::Error> {
    let (context, name) = envelope.event.subject_tokens();
    Ok(Outgoing {
        subject: topology.event_subject(context, name),
        headers: headers.clone(),
        payload: serde_json::to_vec(envelope)?,
    })
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

/// Decodes an envelope from a NATS message, trace headers included.
pub fn decode<B: DeserializeOwned>(
    message: &async_nats::Message,
) -> Result<Envelope<B>, DecodeError> {
    let mut envelope: Envelope<B> = serde_json::from_slice(&message.payload)?;
    if let Some(headers) = &message.headers {
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = headers.get(name) {
                envelope
                    .headers
                    .insert(name.into(), value.as_str().to_owned());
            }
        }
    }
    Ok(envelope)
}

/// Builds NATS headers from a map, skipping names NATS would refuse, plus the dedup id.
pub fn header_map(headers: &BTreeMap<String, String>, msg_id: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let Ok(name) = HeaderName::from_str(name) {
            map.insert(name, HeaderValue::from(value.as_str()));
        }
    }
    if let Some(id) = msg_id {
        map.insert(MSG_ID, id);
    }
    map
}

/// Publishes one message and waits for JetStream's ack.
pub async fn publish(
    js: &jetstream::Context,
    outgoing: &Outgoing,
    msg_id: Option<&str>,
) -> Result<(), PublishError> {
    let ack = js
        .publish_with_headers(
            outgoing.subject.clone(),
            header_map(&outgoing.headers, msg_id),
            Bytes::from(outgoing.payload.clone()),
        )
        .await
        .map_err(|e| PublishError(e.to_string()))?;
    ack.await.map_err(|e| PublishError(e.to_string()))?;
    Ok(())
}

/// Publishes messages pipelined (every publish is sent before any ack is awaited), each with
/// its optional dedup id, and returns one result per message, in order.
pub async fn publish_many(
    js: &jetstream::Context,
    messages: Vec<(&Outgoing, Option<String>)>,
) -> Vec<Result<(), PublishError>> {
    let mut pending = Vec::new();
    for (outgoing, msg_id) in messages {
        let sent = js
            .publish_with_headers(
                outgoing.subject.clone(),
                header_map(&outgoing.headers, msg_id.as_deref()),
                Bytes::from(outgoing.payload.clone()),
            )
            .await;
        pending.push(sent);
    }
    futures::future::join_all(pending.into_iter().map(|sent| async move {
        match sent {
            Ok(ack) => ack
                .await
                .map(|_| ())
                .map_err(|e| PublishError(e.to_string())),
            Err(e) => Err(PublishError(e.to_string())),
        }
    }))
    .await
}

/// A publish JetStream did not acknowledge.
#[derive(Debug, thiserror::Error)]
#[error("publish failed: {0}")]
pub struct PublishError(pub String);
