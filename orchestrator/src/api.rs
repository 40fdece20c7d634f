//! The orchestrator's HTTP API: start a saga (idempotently), read one, list them newest first.
//! Every error is RFC 9457 problem+json with a stable `code`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use contracts::{SagaId, Topology};
use runtime::problem::{ApiQuery, Problem};
use runtime::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::engine::Engine;
use crate::machine::{CompensationState, Ignored, Input, Saga, SagaState, label};
use crate::store::{KeyedSaga, ListFilter};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The engine (store, definitions, outbox).
    pub engine: Engine,
    /// For look-ups of referenced entities.
    pub nats: async_nats::Client,
    /// For the dead-letter stream.
    pub js: async_nats::jetstream::Context,
    /// Subjects.
    pub topology: Topology,
}

/// The API's routes and their OpenAPI description.
pub fn router(state: ApiState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(start_saga, list_sagas))
        .routes(routes!(get_saga))
        .routes(routes!(cancel_saga))
        .routes(routes!(retry_saga))
        .routes(routes!(cancel_sagas))
        .routes(routes!(retry_sagas))
        .routes(routes!(crate::dead_letters::list_dead_letters))
        .routes(routes!(crate::dead_letters::replay_dead_letter))
        .with_state(state)
}

/// `POST /v1/sagas` body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct StartSaga {
    /// The saga type (`mission_reward`).
    #[serde(rename = "type")]
    pub saga_type: String,
    /// The input the saga type expects (`{"mission_id": "..."}`).
    #[schema(value_type = Object)]
    pub input: Value,
}

/// A saga as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaView {
    /// The saga's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: SagaId,
    /// Its type.
    #[serde(rename = "type")]
    pub saga_type: String,
    /// The definition version it runs.
    pub definition_version: u32,
    /// `running`, `compensating`, `completed`, `compensated`, `failed` or `cancelled`.
    pub state: String,
    /// Why it stopped going forward early: `cancelled` or `deadline_exceeded`.
    pub stop_reason: Option<String>,
    /// The W3C trace id of the saga: one trace from `POST /v1/sagas` through every worker.
    pub trace_id: Option<String>,
    /// What it was started with.
    #[schema(value_type = Object)]
    pub input: Map<String, Value>,
    /// What its steps produced (customer id, reward id, notification id, ...).
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
    /// The forward steps in definition order.
    pub steps: Vec<StepView>,
    /// The compensations in the order they ran.
    pub compensations: Vec<CompensationView>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// One forward step.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// The step's name (`reward.grant`).
    pub name: String,
    /// `pending`, `running`, `retrying`, `succeeded`, `failed` or `compensated`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When its first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its last failure.
    pub last_error: Option<String>,
}

/// One compensation that ran (or runs).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CompensationView {
    /// The compensating action (`reward.revoke`).
    pub name: String,
    /// The forward step it undoes.
    pub step: String,
    /// `running`, `retrying`, `succeeded` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When its first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its last failure.
    pub last_error: Option<String>,
}

impl From<Saga> for SagaView {
    fn from(saga: Saga) -> Self {
        let mut ran: Vec<_> = saga
            .compensations
            .iter()
            .filter(|c| c.state != CompensationState::Recorded)
            .collect();
        ran.sort_by_key(|c| c.run_order);
        let compensations = ran
            .into_iter()
            .map(|c| CompensationView {
                name: c.name.clone(),
                step: saga
                    .steps
                    .get(usize::from(c.step_index))
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                state: label(&c.state),
                attempts: c.attempts,
                started_at: c.started_at,
                finished_at: c.finished_at,
                last_error: c.last_error.clone(),
            })
            .collect();
        Self {
            id: saga.id,
            saga_type: saga.saga_type,
            definition_version: saga.definition_version,
            state: saga.state.as_str().to_owned(),
            stop_reason: saga.stop.map(|r| label(&r)),
            trace_id: saga.trace_id.clone(),
            input: saga.input,
            context: saga.context,
            steps: saga
                .steps
                .into_iter()
                .map(|s| StepView {
                    state: label(&s.state),
                    name: s.name,
                    attempts: s.attempts,
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    last_error: s.last_error,
                })
                .collect(),
            compensations,
            created_at: saga.created_at,
            updated_at: saga.updated_at,
        }
    }
}

fn accepted(saga: Saga) -> Response {
    let location = format!("/v1/sagas/{}", saga.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(SagaView::from(saga)),
    )
        .into_response()
}

/// JSON with object keys sorted, so that equal bodies hash equally.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<_, _> =
                map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn request_hash(body: &StartSaga) -> Vec<u8> {
    let canonical = canonical(&serde_json::json!({"type": body.saga_type, "input": body.input}));
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

/// The saga's trace: the trace id and span id of this request's span when tracing is on, else
/// the caller's trace id (or a new one) and a new span id.
fn saga_trace(headers: &HeaderMap) -> (String, String) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let current = span.span_context();
    if current.is_valid() {
        return (
            current.trace_id().to_string(),
            current.span_id().to_string(),
        );
    }
    let random = uuid::Uuid::new_v4().simple().to_string();
    (trace_id_of(headers), random[..16].to_owned())
}

/// The trace id of the caller's W3C `traceparent`, or a new one: the saga's whole trace.
fn trace_id_of(headers: &HeaderMap) -> String {
    let given = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| {
            id.len() == 32
                && id.chars().all(|c| c.is_ascii_hexdigit())
                && id.chars().any(|c| c != '0')
        });
    match given {
        Some(id) => id.to_ascii_lowercase(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| invalid_key())?.trim();
    if key.is_empty() || key.len() > 255 {
        return Err(invalid_key());
    }
    Ok(Some(key.to_owned()))
}

fn invalid_key() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        "Idempotency-Key must be 1 to 255 visible ASCII characters",
    )
}

impl ApiState {
    async fn replay(&self, existing: KeyedSaga, hash: &[u8]) -> Result<Response, ApiError> {
        if existing.request_hash != hash {
            return Err(ApiError::conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        let stored = self
            .engine
            .store()
            .get(existing.id)
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(|| ApiError::internal(&"idempotency key points at no saga"))?;
        Ok(accepted(stored.saga))
    }

    async fn check_reference(
        &self,
        field: &str,
        owner: contracts::Worker,
        lookup: &str,
        input: &Map<String, Value>,
    ) -> Result<(), ApiError> {
        let id = input.get(field).cloned().unwrap_or(Value::Null);
        let subject = self.topology.lookup_subject(owner, lookup);
        let request = serde_json::to_vec(&serde_json::json!({ "id": id })).unwrap_or_default();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            self.nats.request(subject, request.into()),
        )
        .await
        .map_err(|_| {
            ApiError::unavailable(&format!("the {} service", owner.as_str()), &"timed out")
        })?
        .map_err(|e| ApiError::unavailable(&format!("the {} service", owner.as_str()), &e))?;
        let found: LookupAnswer = serde_json::from_slice(&answer.payload)
            .map_err(|e| ApiError::internal(&format!("look-up answer: {e}")))?;
        if found.found {
            Ok(())
        } else {
            Err(ApiError::unprocessable(
                "unknown_reference",
                format!("input.{field}: no {lookup} with id {id}"),
            ))
        }
    }
}

/// The answer of a worker's look-up (`svc.<worker>.<what>`).
#[derive(Debug, Deserialize)]
struct LookupAnswer {
    found: bool,
}

/// Start a saga.
#[utoipa::path(
    post,
    path = "/v1/sagas",
    request_body = StartSaga,
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key and body give the same saga")),
    responses(
        (status = 202, description = "The saga was created (or, with a used Idempotency-Key, found)", body = SagaView,
         headers(("Location" = String, description = "/v1/sagas/{id}"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown saga type, invalid input, unknown referenced entity", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A dependency did not answer", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "sagas"
)]
async fn start_saga(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<StartSaga>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let hash = request_hash(&body);
    let existing = match &key {
        Some(key) => state
            .engine
            .store()
            .find_key(key)
            .await
            .map_err(|e| ApiError::internal(&e))?,
        None => None,
    };
    if let Some(existing) = existing {
        return state.replay(existing, &hash).await;
    }
    let definition = state
        .engine
        .registry()
        .latest(&body.saga_type)
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_saga_type",
                format!(
                    "no saga type {:?}; known: {}",
                    body.saga_type,
                    state.engine.registry().types().join(", ")
                ),
            )
        })?
        .clone();
    let input = definition
        .check_input(&body.input)
        .map_err(|e| ApiError::unprocessable("invalid_input", e.to_string()))?;
    for reference in &definition.references {
        state
            .check_reference(reference.field, reference.owner, reference.lookup, &input)
            .await?;
    }
    let trace = saga_trace(&headers);
    let started = state
        .engine
        .start(
            &definition,
            input,
            key.as_deref().map(|k| (k, hash.as_slice())),
            trace,
        )
        .await
        .map_err(|e| ApiError::internal(&e))?;
    match started {
        Ok(saga) => {
            tracing::info!(saga_id = %saga.id, saga_type = %saga.saga_type, "saga started");
            Ok(accepted(saga))
        }
        Err(existing) => state.replay(existing, &hash).await,
    }
}

/// Read one saga.
#[utoipa::path(
    get,
    path = "/v1/sagas/{id}",
    params(("id" = String, Path, description = "The saga's id")),
    responses(
        (status = 200, description = "The saga", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "sagas"
)]
async fn get_saga(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SagaView>, ApiError> {
    let not_found = || ApiError::not_found("saga_not_found", format!("no saga {id}"));
    let saga_id: SagaId = id.parse().map_err(|_| not_found())?;
    let stored = state
        .engine
        .store()
        .get(saga_id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(not_found)?;
    Ok(axum::Json(stored.saga.into()))
}

/// Query of `GET /v1/sagas`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sagas in this state.
    pub state: Option<String>,
    /// Only sagas of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub saga_type: Option<String>,
    /// Only sagas of this customer.
    pub customer_id: Option<String>,
    /// Only sagas of this mission.
    pub mission_id: Option<String>,
    /// Only sagas created at or after this time (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Only sagas created before this time (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of sagas.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaPage {
    /// Newest first.
    pub items: Vec<SagaView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(saga: &SagaView) -> String {
    let raw = format!("{}|{}", saga.created_at.timestamp_micros(), saga.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (micros, id) = raw.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// List sagas, newest first.
#[utoipa::path(
    get,
    path = "/v1/sagas",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of sagas", body = SagaPage),
        (status = 400, description = "A bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "sagas"
)]
async fn list_sagas(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<axum::Json<SagaPage>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", detail);
    let saga_state = parse_state(query.state.as_deref())?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad(format!("limit must be 1 to 500; got {limit}")));
    }
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| bad("cursor is not one this API issued".into()))?)
        }
    };
    let filter = ListFilter {
        state: saga_state,
        saga_type: query.saga_type.filter(|t| !t.is_empty()),
        customer_id: query.customer_id.filter(|t| !t.is_empty()),
        mission_id: query.mission_id.filter(|t| !t.is_empty()),
        created_after: query.created_after,
        created_before: query.created_before,
        limit: limit + 1,
        after,
    };
    let mut sagas = state
        .engine
        .store()
        .list(&filter)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let more = sagas.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    sagas.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let items: Vec<SagaView> = sagas.into_iter().map(SagaView::from).collect();
    let next_cursor = if more {
        items.last().map(encode_cursor)
    } else {
        None
    };
    Ok(axum::Json(SagaPage { items, next_cursor }))
}

fn parse_state(state: Option<&str>) -> Result<Option<SagaState>, ApiError> {
    match state {
        None | Some("") => Ok(None),
        Some(s) => SagaState::parse(s).map(Some).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "state must be one of running, compensating, completed, compensated, failed, cancelled; got {s:?}"
                ),
            )
        }),
    }
}

/// The stable code and message of a refused operator command.
fn refusal(ignored: Ignored) -> ApiError {
    let code = match ignored {
        Ignored::Terminal(_) => "saga_terminal",
        Ignored::AlreadyCompensating => "saga_compensating",
        Ignored::PastPivot => "saga_past_pivot",
        Ignored::NotFailed => "saga_not_failed",
        Ignored::AlreadyStarted | Ignored::Stale | Ignored::Mismatch => "saga_conflict",
    };
    ApiError::conflict(code, ignored.to_string())
}

async fn operate(state: &ApiState, id: &str, input: Input) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("saga_not_found", format!("no saga {id}"));
    let saga_id: SagaId = id.parse().map_err(|_| not_found())?;
    match state
        .engine
        .command(saga_id, &input)
        .await
        .map_err(|e| ApiError::internal(&e))?
    {
        Ok(Some(saga)) => {
            tracing::info!(saga_id = %saga.id, ?input, "operator command applied");
            Ok((StatusCode::ACCEPTED, axum::Json(SagaView::from(saga))).into_response())
        }
        Ok(None) => Err(not_found()),
        Err(ignored) => Err(refusal(ignored)),
    }
}

/// Cancel a running saga: it compensates what it did (after the step in flight answers) and
/// ends `cancelled`.
#[utoipa::path(
    post,
    path = "/v1/sagas/{id}/cancel",
    params(("id" = String, Path, description = "The saga's id")),
    responses(
        (status = 202, description = "Cancelling", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Terminal, already compensating, or past its pivot", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "operators"
)]
async fn cancel_saga(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    operate(&state, &id, Input::Cancel).await
}

/// Retry a `failed` saga: the compensation that could not finish, or the step parked after
/// its retries, runs again with a fresh retry budget.
#[utoipa::path(
    post,
    path = "/v1/sagas/{id}/retry",
    params(("id" = String, Path, description = "The saga's id")),
    responses(
        (status = 202, description = "Resumed", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The saga is not failed", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "operators"
)]
async fn retry_saga(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    operate(&state, &id, Input::Retry).await
}

/// Which sagas a bulk command applies to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SagaFilter {
    /// Only sagas in this state (default: `running` for cancel, `failed` for retry).
    pub state: Option<String>,
    /// Only sagas of this type.
    #[serde(rename = "type")]
    pub saga_type: Option<String>,
    /// Only sagas of this customer.
    pub customer_id: Option<String>,
    /// Only sagas of this mission.
    pub mission_id: Option<String>,
    /// Only sagas created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only sagas created before this time.
    pub created_before: Option<DateTime<Utc>>,
}

/// What a bulk command did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BulkOutcome {
    /// Sagas the filter matched.
    pub matched: usize,
    /// Sagas the command changed.
    pub affected: usize,
    /// Sagas that refused it, by code (`saga_past_pivot`, ...).
    pub refused: BTreeMap<String, usize>,
}

async fn operate_many(
    state: &ApiState,
    filter: SagaFilter,
    input: Input,
    default_state: SagaState,
) -> Result<axum::Json<BulkOutcome>, ApiError> {
    let saga_state = parse_state(filter.state.as_deref())?.unwrap_or(default_state);
    let mut list = ListFilter {
        state: Some(saga_state),
        saga_type: filter.saga_type,
        customer_id: filter.customer_id,
        mission_id: filter.mission_id,
        created_after: filter.created_after,
        created_before: filter.created_before,
        limit: 500,
        after: None,
    };
    let mut outcome = BulkOutcome::default();
    loop {
        let page = state
            .engine
            .store()
            .list(&list)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let Some(last) = page.last() else {
            break;
        };
        list.after = Some((last.created_at, last.id.0));
        let ids: Vec<SagaId> = page.iter().map(|s| s.id).collect();
        outcome.matched += ids.len();
        for (_, result) in state
            .engine
            .command_many(&ids, &input)
            .await
            .map_err(|e| ApiError::internal(&e))?
        {
            match result {
                Ok(_) => outcome.affected += 1,
                Err(ignored) => {
                    *outcome
                        .refused
                        .entry(refusal(ignored).code.to_owned())
                        .or_default() += 1
                }
            }
        }
    }
    tracing::info!(
        ?input,
        matched = outcome.matched,
        affected = outcome.affected,
        "bulk operator command"
    );
    Ok(axum::Json(outcome))
}

/// Cancel every saga the filter matches (by default every `running` one).
#[utoipa::path(
    post,
    path = "/v1/sagas/cancel",
    request_body = SagaFilter,
    responses(
        (status = 200, description = "How many were matched and cancelled", body = BulkOutcome),
        (status = 400, description = "A bad state", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad filter", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "operators"
)]
async fn cancel_sagas(
    State(state): State<ApiState>,
    ApiJson(filter): ApiJson<SagaFilter>,
) -> Result<axum::Json<BulkOutcome>, ApiError> {
    operate_many(&state, filter, Input::Cancel, SagaState::Running).await
}

/// Retry every saga the filter matches (by default every `failed` one).
#[utoipa::path(
    post,
    path = "/v1/sagas/retry",
    request_body = SagaFilter,
    responses(
        (status = 200, description = "How many were matched and resumed", body = BulkOutcome),
        (status = 400, description = "A bad state", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad filter", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "operators"
)]
async fn retry_sagas(
    State(state): State<ApiState>,
    ApiJson(filter): ApiJson<SagaFilter>,
) -> Result<axum::Json<BulkOutcome>, ApiError> {
    operate_many(&state, filter, Input::Retry, SagaState::Failed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bodies_hash_equally_whatever_their_key_order() {
        let a: StartSaga =
            serde_json::from_str(r#"{"type":"t","input":{"a":1,"b":{"x":1,"y":2}}}"#)
                .expect("json");
        let b: StartSaga =
            serde_json::from_str(r#"{"input":{"b":{"y":2,"x":1},"a":1},"type":"t"}"#)
                .expect("json");
        let c: StartSaga = serde_json::from_str(r#"{"type":"t","input":{"a":2}}"#).expect("json");
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&c));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let view = SagaView {
            id: SagaId::new(),
            saga_type: "t".into(),
            definition_version: 1,
            state: "running".into(),
            input: Map::new(),
            context: Map::new(),
            stop_reason: None,
            trace_id: None,
            steps: vec![],
            compensations: vec![],
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time"),
            updated_at: Utc::now(),
        };
        let cursor = encode_cursor(&view);
        assert_eq!(decode_cursor(&cursor), Some((view.created_at, view.id.0)));
        assert_eq!(decode_cursor("garbage!"), None);
    }
}
