//! The operator's view of the dead-letter stream: list what was parked (original subject,
//! headers, payload, reason), replay one to its original subject, which removes it from the
//! stream, or discard one (remove it without publishing it anywhere). A replay publishes with
//! `Nats-Msg-Id` = `replay:<sequence>`, so a double click within JetStream's de-duplication
//! window replays once.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, message::StreamMessage};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use contracts::topology::Stream;
use runtime::ApiError;
use runtime::dead_letter::{CONSUMER, ORIGINAL_SUBJECT, REASON, STREAM_SEQUENCE};
use runtime::problem::{ApiQuery, Problem};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::ApiState;

/// A parked message.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream: the id to replay it by.
    pub id: u64,
    /// The subject it was first published on.
    pub original_subject: String,
    /// Why no consumer could handle it.
    pub reason: String,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// Its sequence in its original stream.
    pub original_sequence: Option<u64>,
    /// Its headers (the `Dlq-*` ones included).
    pub headers: BTreeMap<String, String>,
    /// The payload as text when it is UTF-8.
    pub payload: Option<String>,
    /// The payload in base64.
    pub payload_base64: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// A page of dead letters, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    /// The dead letters.
    pub items: Vec<DeadLetter>,
    /// Pass as `before` for the next page.
    pub next_before: Option<u64>,
}

/// Query of `GET /v1/dead-letters`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// Only dead letters older than this id.
    #[param(schema_with = sequence)]
    pub before: Option<u64>,
}

/// A stream sequence: 0 to 2^64 - 1.
fn sequence() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(u64::MAX))
        .description(Some("Only dead letters older than this id."))
        .into()
}

/// What a replay did.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// The dead letter replayed (now removed from the stream).
    pub id: u64,
    /// Where it was published again.
    pub subject: String,
}

fn header(message: &StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

fn view(message: &StreamMessage) -> DeadLetter {
    let mut headers = BTreeMap::new();
    for (name, values) in message.headers.iter() {
        if let Some(value) = values.first() {
            headers.insert(name.to_string(), value.as_str().to_owned());
        }
    }
    let nanos = i64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(0);
    DeadLetter {
        id: message.sequence,
        original_subject: header(message, ORIGINAL_SUBJECT),
        reason: header(message, REASON),
        consumer: header(message, CONSUMER),
        original_sequence: header(message, STREAM_SEQUENCE).parse().ok(),
        headers,
        payload: std::str::from_utf8(&message.payload)
            .ok()
            .map(str::to_owned),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(&message.payload),
        parked_at: DateTime::from_timestamp_nanos(nanos),
    }
}

async fn stream(state: &ApiState) -> Result<jetstream::stream::Stream, ApiError> {
    state
        .js
        .get_stream(state.topology.stream(Stream::DeadLetters))
        .await
        .map_err(|e| ApiError::unavailable("JetStream", &e))
}

/// List dead letters, newest first.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "A bad limit or `before`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "JetStream did not answer", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "dead-letters"
)]
pub async fn list_dead_letters(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to 200; got {limit}"),
        ));
    }
    let stream = stream(&state).await?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| ApiError::unavailable("JetStream", &e))?;
    let first = info.state.first_sequence.max(1);
    let mut sequence = query
        .before
        .map_or(info.state.last_sequence, |b| b.saturating_sub(1))
        .min(info.state.last_sequence);
    let mut items = Vec::new();
    while sequence >= first && sequence > 0 && items.len() < limit {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            items.push(view(&message));
        }
        sequence -= 1;
    }
    let next_before = (sequence >= first && sequence > 0 && items.len() == limit)
        .then(|| items.last().map(|d| d.id))
        .flatten();
    Ok(axum::Json(DeadLetterPage { items, next_before }))
}

/// Discard a dead letter: remove it from the stream without publishing it anywhere.
#[utoipa::path(
    delete,
    path = "/v1/dead-letters/{id}",
    params(("id" = u64, Path, minimum = 1, description = "The dead letter's id")),
    responses(
        (status = 204, description = "Discarded"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "JetStream did not answer", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "dead-letters"
)]
pub async fn discard_dead_letter(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    use async_nats::jetstream::stream::DeleteMessageErrorKind;
    let not_found = || ApiError::not_found("dead_letter_not_found", format!("no dead letter {id}"));
    let sequence: u64 = id.parse().map_err(|_| not_found())?;
    let stream = stream(&state).await?;
    stream
        .get_raw_message(sequence)
        .await
        .map_err(|_| not_found())?;
    match stream.delete_message(sequence).await {
        Ok(true) => {
            tracing::info!(dead_letter = sequence, "dead letter discarded");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(not_found()),
        // removed meanwhile (a second discard, a replay)
        Err(error) if matches!(error.kind(), DeleteMessageErrorKind::JetStream(_)) => {
            Err(not_found())
        }
        Err(error) => Err(ApiError::unavailable("JetStream", &error)),
    }
}

/// Publish a dead letter again on its original subject and remove it from the stream.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/{id}/replay",
    params(("id" = u64, Path, minimum = 1, description = "The dead letter's id")),
    responses(
        (status = 202, description = "Replayed", body = Replayed),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The dead letter was truncated", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Its original subject is not one of the platform's streams (`dead_letter_not_replayable`), or it names none (`dead_letter_without_subject`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "JetStream did not answer", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "dead-letters"
)]
pub async fn replay_dead_letter(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<Replayed>), ApiError> {
    let not_found = || ApiError::not_found("dead_letter_not_found", format!("no dead letter {id}"));
    let sequence: u64 = id.parse().map_err(|_| not_found())?;
    let stream = stream(&state).await?;
    let message = stream
        .get_raw_message(sequence)
        .await
        .map_err(|_| not_found())?;
    let subject = header(&message, ORIGINAL_SUBJECT);
    if subject.is_empty() {
        return Err(ApiError::unprocessable(
            "dead_letter_without_subject",
            "the dead letter does not name its original subject",
        ));
    }
    let replayable = matches!(
        state.topology.stream_of(&subject),
        Some(Stream::Commands | Stream::Replies | Stream::Events | Stream::Notifications)
    );
    if !replayable {
        return Err(ApiError::unprocessable(
            "dead_letter_not_replayable",
            format!(
                "{subject} is not a subject of the platform's streams; it is not published again"
            ),
        ));
    }
    if !header(&message, runtime::dead_letter::ORIGINAL_SIZE).is_empty() {
        return Err(ApiError::conflict(
            "dead_letter_truncated",
            "only part of this message was kept (it was too large to park whole); it cannot be replayed",
        ));
    }
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in message.headers.iter() {
        let name = name.to_string();
        if name.starts_with("Dlq-") || name == runtime::jetstream::MSG_ID {
            continue;
        }
        for value in values {
            headers.append(name.as_str(), value.as_str());
        }
    }
    headers.insert(
        runtime::jetstream::MSG_ID,
        format!("replay:{sequence}").as_str(),
    );
    state
        .js
        .publish_with_headers(subject.clone(), headers, message.payload.clone())
        .await
        .map_err(|e| ApiError::unavailable("JetStream", &e))?
        .await
        .map_err(|e| ApiError::unavailable("JetStream", &e))?;
    stream
        .delete_message(sequence)
        .await
        .map_err(|e| ApiError::unavailable("JetStream", &e))?;
    tracing::info!(dead_letter = sequence, %subject, "dead letter replayed");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Replayed {
            id: sequence,
            subject,
        }),
    ))
}
