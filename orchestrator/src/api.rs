//! The orchestrator's HTTP API: start a saga (idempotently, and with `Prefer: wait=` for its
//! outcome), read one (with `?wait=` as a long poll until it is terminal), list them newest
//! first, the definitions, and the operator commands, which the saga's history records with the
//! caller's token name. Waiting costs no query while it waits ([`crate::watch`], which also
//! serves the event stream); the history route is in [`crate::history`], the dead letters in
//! [`crate::dead_letters`]. Every error is RFC 9457 problem+json with a stable `code`. What
//! sagas can be searched by (a customer, a mission, ...) is not written here: the list query and
//! the bulk filter accept every search key some definition declares, and the OpenAPI document
//! lists them, generated from the registry when the router is built.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use contracts::{SagaId, Topology};
use runtime::auth::Caller;
use runtime::openapi::{self as doc, is_idempotency_key};
use runtime::problem::{ApiQuery, Problem};
use runtime::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{OpenApi, RefOr, Required};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::definition::{InputKind, Registry, key_noun};
use crate::engine::Engine;
use crate::history::OperatorAction;
use crate::machine::{CompensationState, Ignored, Input, Saga, SagaState, label};
use crate::store::{KeyedSaga, ListFilter};
use crate::watch::{MAX_WAIT, Watch, Watched, parse_wait};

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

/// The API's routes and their OpenAPI description, which lists the registry's search keys as
/// query parameters of `GET /v1/sagas` and as fields of the bulk filter.
pub fn router(state: ApiState) -> OpenApiRouter {
    let document = doc::document(
        "Saga orchestrator",
        "Sagas: start one, read, list and follow them, cancel and retry them one by one or in \
         bulk; the saga definitions; the dead letters. The saga page (`/ui`, with its login at \
         `/ui/login`) and Swagger UI over this document (`/docs`) are pages for people, not \
         part of this API.",
    );
    let mut router = OpenApiRouter::with_openapi(document)
        .routes(routes!(start_saga, list_sagas))
        .routes(routes!(get_saga))
        .routes(routes!(crate::watch::saga_events))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(crate::history::saga_history))
                .route_layer(axum::middleware::from_fn(checked_history_cursor)),
        )
        .routes(routes!(cancel_saga))
        .routes(routes!(retry_saga))
        .routes(routes!(cancel_sagas))
        .routes(routes!(retry_sagas))
        .routes(routes!(list_definitions))
        .routes(routes!(crate::dead_letters::list_dead_letters))
        .routes(routes!(crate::dead_letters::discard_dead_letter))
        .routes(routes!(crate::dead_letters::replay_dead_letter));
    let keys = state.engine.registry().search_key_names();
    document_search_keys(router.get_openapi_mut(), &keys);
    document_saga_types(router.get_openapi_mut(), state.engine.registry());
    document_elsewhere(router.get_openapi_mut());
    router.with_state(state)
}

/// The states a saga can be in, as the API writes them.
pub const SAGA_STATES: [&str; 6] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
    "cancelled",
];

/// What a time filter must look like besides being an RFC 3339 date-time: a year from 1970 to
/// 9999 (as written, in the time's own offset).
pub const TIME_PATTERN: &str = "^(19[7-9][0-9]|[2-9][0-9]{3})-";

/// What a `?wait=` must look like: seconds (`10`, `10s`, `1.5s`) up to 60, or milliseconds
/// (`500ms`) up to 60000; empty means no wait.
pub const WAIT_PATTERN: &str =
    r"^(([0-5]?[0-9](\.[0-9]+)?|60(\.0+)?)s?|([0-5]?[0-9]{1,4}(\.[0-9]+)?|60000(\.0+)?)ms)?$";

/// What a cursor of `GET /v1/sagas` looks like: the page's last saga's creation time (µs since
/// 1970) and id; empty means the first page.
pub const SAGA_CURSOR_PATTERN: &str =
    "^((0|[1-9][0-9]{0,15})_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$";

/// What a cursor of `GET /v1/sagas/{id}/history` looks like: the id of the page's last entry;
/// empty means the first page.
pub const HISTORY_CURSOR_PATTERN: &str = "^([1-9][0-9]{0,17})?$";

/// Whether `wait` is what [`WAIT_PATTERN`] describes (what the document promises is accepted;
/// [`parse_wait`] then reads it).
fn wait_is_documented(wait: &str) -> bool {
    if wait.is_empty() {
        return true;
    }
    let (number, whole_digits, limit) = match wait.strip_suffix("ms") {
        Some(number) => (number, 5, 60_000u32),
        None => (wait.strip_suffix('s').unwrap_or(wait), 2, 60),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || whole.len() > whole_digits || fraction.is_some_and(|f| !digits(f)) {
        return false;
    }
    let Ok(value) = whole.parse::<u32>() else {
        return false;
    };
    value < limit || (value == limit && fraction.is_none_or(|f| f.bytes().all(|b| b == b'0')))
}

/// 400 `invalid_query` unless the history's `cursor` is one [`HISTORY_CURSOR_PATTERN`]
/// describes (the history route reads any positive number).
async fn checked_history_cursor(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let parameters = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let valid = parameters
        .iter()
        .filter(|(name, _)| name == "cursor")
        .all(|(_, cursor)| {
            cursor.is_empty() || doc::decimal(cursor, 18).is_some_and(|value| value > 0)
        });
    if !valid {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "cursor is not one this API issued",
        )
        .into_response();
    }
    next.run(request).await
}

/// A text that is one of `values`, as a schema.
fn one_of(values: &[&str]) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .into()
}

/// A saga's state.
fn saga_state() -> Schema {
    one_of(&SAGA_STATES)
}

/// A step's state.
fn step_state() -> Schema {
    one_of(&[
        "pending",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "compensated",
    ])
}

/// A compensation's state, once it ran.
fn compensation_state() -> Schema {
    one_of(&["running", "retrying", "succeeded", "failed"])
}

/// Why a saga stopped going forward early, or `null`.
fn stop_reason() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some([
            Value::Null,
            Value::from("cancelled"),
            Value::from("deadline_exceeded"),
        ]))
        .into()
}

/// The schema of a saga state filter: a state, or empty for any.
fn state_filter() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(std::iter::once("").chain(SAGA_STATES)))
        .into()
}

/// The schema of the bulk filter's state: a state, empty or `null` for the default.
fn optional_state() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(
            std::iter::once(Value::Null)
                .chain(std::iter::once("").chain(SAGA_STATES).map(Value::from)),
        ))
        .into()
}

/// The schema of an input field of a saga type.
fn input_field(kind: InputKind) -> Schema {
    match kind {
        InputKind::Uuid => doc::uuid(),
        InputKind::CustomerId => doc::customer_id(),
    }
}

/// Documents the start of a saga from the registry: `type` is one of the types, and `input` the
/// object of that type's input fields, each required, no other.
fn document_saga_types(openapi: &mut OpenApi, registry: &Registry) {
    let variants: Vec<Schema> = registry
        .types()
        .into_iter()
        .filter_map(|saga_type| registry.latest(saga_type))
        .map(|definition| {
            let mut input = ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)));
            for (name, kind) in definition.input_fields {
                input = input.property(*name, input_field(*kind)).required(*name);
            }
            let referenced: Vec<String> = definition
                .references
                .iter()
                .map(|r| format!("`{}` must name an existing {}", r.field, r.lookup))
                .collect();
            if !referenced.is_empty() {
                input = input.description(Some(format!(
                    "{} (else 422 `unknown_reference`).",
                    referenced.join("; ")
                )));
            }
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .title(Some(definition.saga_type))
                .property(
                    "type",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([definition.saga_type])),
                )
                .required("type")
                .property("input", input)
                .required("input")
                .into()
        })
        .collect();
    let start = openapi
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("StartSaga"));
    if let Some(RefOr::T(schema)) = start {
        let description = match schema {
            Schema::Object(object) => object.description.clone(),
            _ => None,
        };
        let mut one_of = utoipa::openapi::schema::OneOfBuilder::new().description(description);
        for variant in variants {
            one_of = one_of.item(variant);
        }
        *schema = one_of.into();
    }
}

/// One server-sent event of `GET /v1/sagas/{id}/events`: `event: saga`, its `data` the saga as
/// JSON.
fn saga_event() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["saga"])),
        )
        .required("event")
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json")
                .content_schema(Some(utoipa::openapi::Ref::from_schema_name("SagaView")))
                .description(Some("The saga, as `GET /v1/sagas/{id}` shows it")),
        )
        .required("data")
        .into()
}

/// What the routes of other modules (`watch`, `history`) check, documented here: their ids are
/// uuids, the history's page size and cursor, and the event stream's events.
fn document_elsewhere(openapi: &mut OpenApi) {
    let events = openapi
        .paths
        .paths
        .get_mut("/v1/sagas/{id}/events")
        .and_then(|item| item.get.as_mut())
        .and_then(|operation| operation.responses.responses.get_mut("200"));
    if let Some(RefOr::T(response)) = events
        && let Some(RefOr::T(content)) = response.content.get_mut("text/event-stream")
    {
        content.schema = Some(RefOr::T(saga_event()));
    }
    for path in ["/v1/sagas/{id}/events", "/v1/sagas/{id}/history"] {
        let Some(operation) = openapi
            .paths
            .paths
            .get_mut(path)
            .and_then(|item| item.get.as_mut())
        else {
            continue;
        };
        for parameter in operation.parameters.iter_mut().flatten() {
            let RefOr::T(parameter) = parameter else {
                continue;
            };
            let schema: Option<Schema> =
                match (parameter.parameter_in.clone(), parameter.name.as_str()) {
                    (ParameterIn::Path, "id") => Some(doc::uuid()),
                    (ParameterIn::Query, "limit") => Some(
                        ObjectBuilder::new()
                            .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
                            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                                utoipa::openapi::KnownFormat::Int64,
                            )))
                            .minimum(Some(1))
                            .maximum(Some(500))
                            .into(),
                    ),
                    (ParameterIn::Query, "cursor") => Some(
                        ObjectBuilder::new()
                            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                            .pattern(Some(HISTORY_CURSOR_PATTERN))
                            .into(),
                    ),
                    _ => None,
                };
            if let Some(schema) = schema {
                parameter.schema = Some(RefOr::T(schema));
            }
        }
    }
}

/// The description of a search key: "Only sagas of this customer."
fn key_description(key: &str) -> String {
    format!("Only sagas of this {}.", key_noun(key))
}

/// A text, as the schema of a search-key parameter.
fn text() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).into()
}

/// An optional text (`string` or `null`), as the schema of a search-key field.
fn optional_text(description: String) -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some(description))
        .into()
}

/// Inserts `extra` into `items` right after the first item `after` matches (at the end when
/// none does).
fn insert_after<T>(items: &mut Vec<T>, after: impl Fn(&T) -> bool, extra: Vec<T>) {
    let at = items.iter().position(after).map_or(items.len(), |i| i + 1);
    items.splice(at..at, extra);
}

/// Adds the search keys to the OpenAPI document: query parameters of `GET /v1/sagas` and
/// properties of the bulk filter (`SagaFilter`), after `type` in both, where they stood when
/// they were fields of the code.
fn document_search_keys(openapi: &mut OpenApi, keys: &[&str]) {
    let list = openapi
        .paths
        .paths
        .get_mut("/v1/sagas")
        .and_then(|item| item.get.as_mut());
    if let Some(list) = list {
        let parameters = keys
            .iter()
            .map(|key| {
                RefOr::T(
                    ParameterBuilder::new()
                        .name(*key)
                        .parameter_in(ParameterIn::Query)
                        .description(Some(key_description(key)))
                        .required(Required::False)
                        .schema(Some(text()))
                        .build(),
                )
            })
            .collect();
        let existing = list.parameters.get_or_insert_with(Vec::new);
        insert_after(
            existing,
            |p| matches!(p, RefOr::T(p) if p.name == "type"),
            parameters,
        );
    }
    let filter = openapi
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("SagaFilter"));
    if let Some(RefOr::T(Schema::Object(filter))) = filter {
        let mut properties: Vec<_> = std::mem::take(&mut filter.properties).into_iter().collect();
        let extra = keys
            .iter()
            .map(|key| {
                let schema = optional_text(key_description(key));
                ((*key).to_owned(), RefOr::T(schema))
            })
            .collect();
        insert_after(&mut properties, |(name, _)| name == "type", extra);
        filter.properties = properties.into_iter().collect();
        filter.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    }
}

/// `POST /v1/sagas` body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct StartSaga {
    /// The saga type (`mission_reward`).
    #[serde(rename = "type")]
    pub saga_type: String,
    /// The input the saga type expects: an object of its definition's input fields.
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
    #[schema(schema_with = saga_state)]
    pub state: String,
    /// Why it stopped going forward early: `cancelled` or `deadline_exceeded`.
    #[schema(schema_with = stop_reason)]
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
    #[schema(schema_with = step_state)]
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
    #[schema(schema_with = compensation_state)]
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

/// A saga view as JSON, from its encoded body.
fn view_json(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The answer of a start that waited (`Prefer: wait`): `200` with the finished saga, else
/// `202` as without waiting; both say the preference was applied.
fn waited(id: SagaId, saga: Watched, wait: Duration) -> Response {
    let status = if saga.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = view_json(status, saga.body);
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/sagas/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    if let Ok(applied) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        headers.insert("preference-applied", applied);
    }
    response
}

/// The wait a client asked for with `Prefer: wait=<seconds>` (RFC 7240), at most
/// [`MAX_WAIT`]; a preference that cannot be read is ignored, as the RFC asks.
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| {
            let token = preference.split(';').next()?;
            let (name, value) = token.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let seconds: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(seconds).min(MAX_WAIT))
        })
        .next()
}

/// When a wait that starts now runs out.
fn deadline_after(wait: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + wait
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
    let key = value.to_str().map_err(|_| invalid_key())?;
    if !is_idempotency_key(key) {
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
    async fn replay(
        &self,
        existing: KeyedSaga,
        hash: &[u8],
        wait: Option<(Duration, tokio::time::Instant)>,
    ) -> Result<Response, ApiError> {
        if existing.request_hash != hash {
            return Err(ApiError::conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        if let Some((wait, deadline)) = wait {
            let store = self.engine.store();
            let (follower, first) = self
                .engine
                .watch()
                .read(store, existing.id)
                .await
                .map_err(|e| ApiError::internal(&e))?
                .ok_or_else(|| ApiError::internal(&"idempotency key points at no saga"))?;
            let last = Watch::until_terminal(follower, first, store, deadline)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            return Ok(waited(existing.id, last, wait));
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
///
/// With `Prefer: wait=<seconds>` (RFC 7240, at most 60) the answer waits for the saga to end:
/// `200` with the finished saga when it ends within the wait, else `202` as without it; both
/// with `Preference-Applied: wait=<seconds>`.
#[utoipa::path(
    post,
    path = "/v1/sagas",
    request_body = StartSaga,
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "The same key and body give the same saga: 1 to 255 visible ASCII characters"),
        ("Prefer" = Option<String>, Header, description = "`wait=<seconds>` (at most 60): answer when the saga ends, or when the wait runs out"),
    ),
    responses(
        (status = 200, description = "With `Prefer: wait`: the saga ended within the wait", body = SagaView,
         headers(("Location" = String, description = "/v1/sagas/{id}"),
                 ("Preference-Applied" = String, description = "wait=<seconds>"))),
        (status = 202, description = "The saga was created (or, with a used Idempotency-Key, found); with `Prefer: wait`, it had not ended when the wait ran out", body = SagaView,
         headers(("Location" = String, description = "/v1/sagas/{id}"),
                 ("Preference-Applied" = String, description = "wait=<seconds>, when `Prefer: wait` was given"))),
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
    let wait = preferred_wait(&headers).map(|wait| (wait, deadline_after(wait)));
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
        return state.replay(existing, &hash, wait).await;
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
    let id = SagaId::new();
    // Followed before it exists, so that no change of its state can be missed.
    let follower = wait.map(|_| state.engine.watch().follow(id));
    let started = state
        .engine
        .start(
            id,
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
            let (Some((wait, deadline)), Some(follower)) = (wait, follower) else {
                return Ok(accepted(saga));
            };
            let first = Watched::of(saga).map_err(|e| ApiError::internal(&e))?;
            let last = Watch::until_terminal(follower, first, state.engine.store(), deadline)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            Ok(waited(id, last, wait))
        }
        Err(existing) => {
            drop(follower);
            state.replay(existing, &hash, wait).await
        }
    }
}

/// Query of `GET /v1/sagas/{id}`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Wait until the saga is terminal, at most this long: seconds (`10`, `10s`, `1.5s`) or
    /// milliseconds (`500ms`), at most 60 s. The answer comes as soon as the saga is terminal,
    /// or when the wait runs out, with the saga as it is then.
    #[param(
        pattern = r"^(([0-5]?[0-9](\.[0-9]+)?|60(\.0+)?)s?|([0-5]?[0-9]{1,4}(\.[0-9]+)?|60000(\.0+)?)ms)?$"
    )]
    pub wait: Option<String>,
}

/// Read one saga; with `?wait=`, a long poll until it is terminal.
#[utoipa::path(
    get,
    path = "/v1/sagas/{id}",
    params(("id" = String, Path, format = Uuid, description = "The saga's id"), GetQuery),
    responses(
        (status = 200, description = "The saga (with `wait`: once terminal, or as it is when the wait ran out)", body = SagaView),
        (status = 400, description = "A bad wait", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "sagas"
)]
async fn get_saga(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("saga_not_found", format!("no saga {id}"));
    let wait = match query.wait.as_deref() {
        None | Some("") => None,
        Some(wait) if !wait_is_documented(wait) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "wait must be seconds (10, 10s, 1.5s) up to 60 or milliseconds (500ms) up to 60000; got {wait:?}"
                ),
            ));
        }
        Some(wait) => Some(
            parse_wait(wait)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e))?,
        ),
    };
    let saga_id: SagaId = id.parse().map_err(|_| not_found())?;
    if let Some(wait) = wait {
        let deadline = deadline_after(wait);
        let store = state.engine.store();
        let (follower, first) = state
            .engine
            .watch()
            .read(store, saga_id)
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(not_found)?;
        let last = Watch::until_terminal(follower, first, store, deadline)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        return Ok(view_json(StatusCode::OK, last.body));
    }
    let stored = state
        .engine
        .store()
        .get(saga_id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(not_found)?;
    Ok(axum::Json(SagaView::from(stored.saga)).into_response())
}

/// Query of `GET /v1/sagas`, besides the search keys (every other parameter must be a search
/// key some definition declares).
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sagas in this state (empty: any).
    #[param(schema_with = state_filter)]
    pub state: Option<String>,
    /// Only sagas of this type (empty: any; a type no definition has matches nothing).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub saga_type: Option<String>,
    /// Only sagas created at or after this time (RFC 3339, years 1970 to 9999).
    #[param(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    pub created_after: Option<DateTime<FixedOffset>>,
    /// Only sagas created before this time (RFC 3339, years 1970 to 9999).
    #[param(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    pub created_before: Option<DateTime<FixedOffset>>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(
        pattern = "^((0|[1-9][0-9]{0,15})_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$"
    )]
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

/// The cursor after `saga` ([`SAGA_CURSOR_PATTERN`]): its creation time in µs and its id.
fn encode_cursor(saga: &SagaView) -> String {
    format!("{}_{}", saga.created_at.timestamp_micros(), saga.id)
}

/// The position a cursor names; `None` unless it is exactly what [`encode_cursor`] writes.
fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = cursor.split_once('_')?;
    let micros = i64::try_from(doc::decimal(micros, 16)?).ok()?;
    Some((
        DateTime::from_timestamp_micros(micros)?,
        doc::canonical_uuid(id)?,
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
    ApiQuery(parameters): ApiQuery<Vec<(String, String)>>,
) -> Result<axum::Json<SagaPage>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", detail);
    let keys = query_keys(state.engine.registry(), parameters).map_err(bad)?;
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
    for (name, at) in [
        ("created_after", query.created_after),
        ("created_before", query.created_before),
    ] {
        storable(name, at).map_err(bad)?;
    }
    let filter = ListFilter {
        state: saga_state,
        saga_type: query.saga_type.filter(|t| !t.is_empty()),
        keys,
        created_after: query.created_after.map(|at| at.with_timezone(&Utc)),
        created_before: query.created_before.map(|at| at.with_timezone(&Utc)),
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

/// The parameters of [`ListQuery`], which are not search keys.
const LIST_PARAMETERS: [&str; 6] = [
    "state",
    "type",
    "created_after",
    "created_before",
    "limit",
    "cursor",
];

/// The search keys of a list query: every parameter that is not one of [`ListQuery`] must be a
/// search key some definition declares, given once; an empty value filters nothing.
fn query_keys(
    registry: &Registry,
    parameters: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut keys = BTreeMap::new();
    for (name, value) in parameters {
        if LIST_PARAMETERS.contains(&name.as_str()) {
            continue;
        }
        if !registry.declares_search_key(&name) {
            return Err(format!(
                "unknown query parameter `{name}`; expected {} or a search key: {}",
                LIST_PARAMETERS.join(", "),
                registry.search_key_names().join(", ")
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!("duplicate field `{name}`"));
        }
        if !value.is_empty() {
            keys.insert(name, value);
        }
    }
    Ok(keys)
}

/// The search keys of a bulk filter: every field that is not one of [`SagaFilter`] must be a
/// search key some definition declares (a `null` one filters nothing), else the body is refused
/// as `invalid_body`, like any other unknown field.
fn filter_keys(
    registry: &Registry,
    fields: BTreeMap<String, Option<String>>,
) -> Result<BTreeMap<String, String>, ApiError> {
    if let Some(unknown) = fields.keys().find(|k| !registry.declares_search_key(k)) {
        let expected: Vec<String> = FILTER_FIELDS
            .iter()
            .chain(registry.search_key_names().iter())
            .map(|f| format!("`{f}`"))
            .collect();
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!(
                "unknown field `{unknown}`, expected one of {}",
                expected.join(", ")
            ),
        ));
    }
    Ok(fields
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect())
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
    ApiError::conflict(ignored.code(), ignored.to_string())
}

/// The operator's action as the history records it: who (the token's name), what, with what.
fn operator(
    caller: Option<Extension<Caller>>,
    action: &'static str,
    input: Option<Value>,
) -> OperatorAction {
    OperatorAction {
        actor: caller.map_or_else(|| "anonymous".to_owned(), |Extension(c)| c.name),
        action,
        input,
    }
}

async fn operate(
    state: &ApiState,
    id: &str,
    input: Input,
    operator: OperatorAction,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("saga_not_found", format!("no saga {id}"));
    let saga_id: SagaId = id.parse().map_err(|_| not_found())?;
    match state
        .engine
        .command(saga_id, &input, &operator)
        .await
        .map_err(|e| ApiError::internal(&e))?
    {
        Ok(Some(saga)) => {
            tracing::info!(saga_id = %saga.id, ?input, actor = %operator.actor, "operator command applied");
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
    params(("id" = String, Path, format = Uuid, description = "The saga's id")),
    responses(
        (status = 202, description = "Cancelling", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Terminal, already compensating, or past its pivot", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "operators"
)]
async fn cancel_saga(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    operate(&state, &id, Input::Cancel, operator(caller, "cancel", None)).await
}

/// Retry a `failed` saga: the compensation that could not finish, or the step parked after
/// its retries, runs again with a fresh retry budget.
#[utoipa::path(
    post,
    path = "/v1/sagas/{id}/retry",
    params(("id" = String, Path, format = Uuid, description = "The saga's id")),
    responses(
        (status = 202, description = "Resumed", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The saga is not failed", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "operators"
)]
async fn retry_saga(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    operate(&state, &id, Input::Retry, operator(caller, "retry", None)).await
}

/// Whether a time can be a saga's creation time (years 1970 to 9999, as written): anything else
/// is a mistake, and the database could not compare it either.
fn storable(name: &str, at: Option<DateTime<FixedOffset>>) -> Result<(), String> {
    use chrono::Datelike as _;
    match at {
        Some(at) if !(1970..=9999).contains(&at.year()) => {
            Err(format!("{name} must be between 1970 and 9999; got {at}"))
        }
        _ => Ok(()),
    }
}

/// How many sagas one bulk call acts on by default, and at most.
const BULK_DEFAULT: usize = 1_000;
const BULK_MAX: usize = 5_000;

/// Which sagas a bulk command applies to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct SagaFilter {
    /// At most this many sagas in this call, newest first (1 to 5000, default 1000); `more`
    /// in the answer says whether others match: call again.
    #[schema(minimum = 1, maximum = 5000)]
    pub limit: Option<usize>,
    /// Only sagas in this state (empty or `null`: `running` for cancel, `failed` for retry).
    #[schema(schema_with = optional_state)]
    pub state: Option<String>,
    /// Only sagas of this type.
    #[serde(rename = "type")]
    pub saga_type: Option<String>,
    /// Only sagas created at or after this time (years 1970 to 9999).
    #[schema(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    pub created_after: Option<DateTime<FixedOffset>>,
    /// Only sagas created before this time (years 1970 to 9999).
    #[schema(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    pub created_before: Option<DateTime<FixedOffset>>,
    /// Only sagas with these search keys (whatever the definitions declare; any other field is
    /// refused). Documented from the registry.
    #[serde(flatten)]
    #[schema(ignore)]
    pub keys: BTreeMap<String, Option<String>>,
}

/// The fields of [`SagaFilter`], which are not search keys.
const FILTER_FIELDS: [&str; 5] = ["limit", "state", "type", "created_after", "created_before"];

/// What a bulk command did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BulkOutcome {
    /// Sagas the filter matched.
    pub matched: usize,
    /// Sagas the command changed.
    pub affected: usize,
    /// Sagas that refused it, by code (`saga_past_pivot`, ...).
    pub refused: BTreeMap<String, usize>,
    /// Whether more sagas match than this call acted on (its `limit`): call again.
    pub more: bool,
}

async fn operate_many(
    state: &ApiState,
    filter: SagaFilter,
    input: Input,
    default_state: SagaState,
    mut operator: OperatorAction,
) -> Result<axum::Json<BulkOutcome>, ApiError> {
    operator.input = serde_json::to_value(&filter).ok();
    let keys = filter_keys(state.engine.registry(), filter.keys)?;
    let saga_state = parse_state(filter.state.as_deref())?.unwrap_or(default_state);
    let bound = filter.limit.unwrap_or(BULK_DEFAULT);
    if !(1..=BULK_MAX).contains(&bound) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("limit must be 1 to {BULK_MAX}; got {bound}"),
        ));
    }
    for (name, at) in [
        ("created_after", filter.created_after),
        ("created_before", filter.created_before),
    ] {
        storable(name, at).map_err(|e| ApiError::unprocessable("invalid_body", e))?;
    }
    let mut list = ListFilter {
        state: Some(saga_state),
        saga_type: filter.saga_type,
        keys,
        created_after: filter.created_after.map(|at| at.with_timezone(&Utc)),
        created_before: filter.created_before.map(|at| at.with_timezone(&Utc)),
        limit: 500,
        after: None,
    };
    let mut outcome = BulkOutcome::default();
    loop {
        let left = bound - outcome.matched;
        if left == 0 {
            list.limit = 1;
            outcome.more = !state
                .engine
                .store()
                .list(&list)
                .await
                .map_err(|e| ApiError::internal(&e))?
                .is_empty();
            break;
        }
        list.limit = i64::try_from(left.min(500)).unwrap_or(500);
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
            .command_many(&ids, &input, &operator)
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
        actor = %operator.actor,
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
    caller: Option<Extension<Caller>>,
    ApiJson(filter): ApiJson<SagaFilter>,
) -> Result<axum::Json<BulkOutcome>, ApiError> {
    let operator = operator(caller, "bulk_cancel", None);
    operate_many(&state, filter, Input::Cancel, SagaState::Running, operator).await
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
    caller: Option<Extension<Caller>>,
    ApiJson(filter): ApiJson<SagaFilter>,
) -> Result<axum::Json<BulkOutcome>, ApiError> {
    let operator = operator(caller, "bulk_retry", None);
    operate_many(&state, filter, Input::Retry, SagaState::Failed, operator).await
}

/// One step of a definition.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionStep {
    /// The step's action (`reward.grant`).
    pub name: String,
    /// Its compensating action (`reward.revoke`), if it has one.
    pub compensation: Option<String>,
    /// Whether it is the pivot: once it has started, nothing can be undone (no cancel).
    pub pivot: bool,
}

/// A saga definition: one version of a saga type.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionView {
    /// The saga type.
    #[serde(rename = "type")]
    pub saga_type: String,
    /// The version.
    pub version: u32,
    /// Whether new sagas of the type start with this version (running ones keep theirs).
    pub latest: bool,
    /// The forward steps, in order.
    pub steps: Vec<DefinitionStep>,
}

/// Every saga definition.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionList {
    /// By type, then version.
    pub items: Vec<DefinitionView>,
}

/// List the saga definitions: every type and version, with its steps.
#[utoipa::path(
    get,
    path = "/v1/definitions",
    responses(
        (status = 200, description = "Every definition, by type then version", body = DefinitionList),
    ),
    tag = "sagas"
)]
async fn list_definitions(State(state): State<ApiState>) -> axum::Json<DefinitionList> {
    let registry = state.engine.registry();
    let items = registry
        .all()
        .map(|definition| {
            let pivot = definition.pivot();
            DefinitionView {
                saga_type: definition.saga_type.to_owned(),
                version: definition.version,
                latest: registry
                    .latest(definition.saga_type)
                    .is_some_and(|latest| latest.version == definition.version),
                steps: definition
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(index, step)| DefinitionStep {
                        name: step.action.name().to_owned(),
                        compensation: step.compensation.map(|c| c.name().to_owned()),
                        pivot: pivot == Some(index),
                    })
                    .collect(),
            }
        })
        .collect();
    axum::Json(DefinitionList { items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{KeySource, Policies, SearchKey, mission_reward};
    use serde_json::json;
    use utoipa::{IntoParams, PartialSchema};

    /// A registry whose one definition declares the search keys `player_id` (from the context)
    /// and `quest_id` (from the input): the API knows keys only from there.
    fn registry() -> Registry {
        let mut definition = mission_reward(&Policies::default());
        definition.search_keys = vec![
            SearchKey {
                name: "player_id",
                source: KeySource::Context,
                span_attribute: "player.id",
            },
            SearchKey {
                name: "quest_id",
                source: KeySource::Input,
                span_attribute: "quest.id",
            },
        ];
        let mut registry = Registry::default();
        registry.insert(definition);
        registry
    }

    /// `GET /v1/sagas`'s query as it was written when its search keys were fields of the code
    /// (with the keys of [`registry`]): the generated document must say the same.
    #[derive(Deserialize, utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    #[allow(dead_code, reason = "only its derived documentation is compared")]
    struct ListQueryBefore {
        /// Only sagas in this state (empty: any).
        #[param(schema_with = state_filter)]
        state: Option<String>,
        /// Only sagas of this type (empty: any; a type no definition has matches nothing).
        #[serde(rename = "type")]
        #[param(rename = "type")]
        saga_type: Option<String>,
        /// Only sagas of this player.
        player_id: Option<String>,
        /// Only sagas of this quest.
        quest_id: Option<String>,
        /// Only sagas created at or after this time (RFC 3339, years 1970 to 9999).
        #[param(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
        created_after: Option<DateTime<FixedOffset>>,
        /// Only sagas created before this time (RFC 3339, years 1970 to 9999).
        #[param(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
        created_before: Option<DateTime<FixedOffset>>,
        /// Page size, 1 to 500 (default 50).
        #[param(minimum = 1, maximum = 500)]
        limit: Option<i64>,
        /// `next_cursor` of the previous page (empty: the first page).
        #[param(
            pattern = "^((0|[1-9][0-9]{0,15})_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$"
        )]
        cursor: Option<String>,
    }

    // The bulk filter as it was written when its search keys were fields of the code (its doc
    // comment is its documented description).
    /// Which sagas a bulk command applies to.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only its derived documentation is compared")]
    struct SagaFilterBefore {
        /// At most this many sagas in this call, newest first (1 to 5000, default 1000); `more`
        /// in the answer says whether others match: call again.
        #[schema(minimum = 1, maximum = 5000)]
        limit: Option<usize>,
        /// Only sagas in this state (empty or `null`: `running` for cancel, `failed` for retry).
        #[schema(schema_with = optional_state)]
        state: Option<String>,
        /// Only sagas of this type.
        #[serde(rename = "type")]
        saga_type: Option<String>,
        /// Only sagas of this player.
        player_id: Option<String>,
        /// Only sagas of this quest.
        quest_id: Option<String>,
        /// Only sagas created at or after this time (years 1970 to 9999).
        #[schema(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
        created_after: Option<DateTime<FixedOffset>>,
        /// Only sagas created before this time (years 1970 to 9999).
        #[schema(value_type = Option<String>, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
        created_before: Option<DateTime<FixedOffset>>,
    }

    fn documented(keys: &[&str]) -> Value {
        let mut router: OpenApiRouter<ApiState> = OpenApiRouter::new()
            .routes(routes!(start_saga, list_sagas))
            .routes(routes!(cancel_sagas));
        document_search_keys(router.get_openapi_mut(), keys);
        serde_json::to_value(router.into_openapi()).expect("json")
    }

    #[test]
    fn the_document_lists_the_registry_keys_as_the_fields_did() {
        let keys = registry().search_key_names();
        let doc = documented(&keys);
        let parameters = &doc["paths"]["/v1/sagas"]["get"]["parameters"];
        let before = ListQueryBefore::into_params(|| Some(ParameterIn::Query));
        assert_eq!(parameters, &serde_json::to_value(before).expect("json"));
        let filter = &doc["components"]["schemas"]["SagaFilter"];
        let before = serde_json::to_value(SagaFilterBefore::schema()).expect("json");
        assert_eq!(filter, &before);
        assert_eq!(filter["additionalProperties"], json!(false));
    }

    #[test]
    fn the_fixed_parameters_and_fields_are_the_documented_ones() {
        let names: Vec<String> = ListQuery::into_params(|| Some(ParameterIn::Query))
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, LIST_PARAMETERS);
        let schema = serde_json::to_value(SagaFilter::schema()).expect("json");
        let mut fields: Vec<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        fields.sort();
        let mut expected = FILTER_FIELDS;
        expected.sort_unstable();
        assert_eq!(fields, expected);
    }

    #[test]
    fn list_queries_take_declared_search_keys_only() {
        let registry = registry();
        let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
            items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let keys = query_keys(
            &registry,
            pairs(&[
                ("state", "failed"),
                ("player_id", "player-1"),
                ("quest_id", ""),
                ("limit", "5"),
            ]),
        );
        assert_eq!(
            keys,
            Ok(BTreeMap::from([(
                "player_id".to_owned(),
                "player-1".to_owned()
            )]))
        );
        let unknown = query_keys(&registry, pairs(&[("gift_id", "g")]));
        assert!(unknown.is_err_and(|e| e.contains("`gift_id`")));
        let twice = query_keys(&registry, pairs(&[("player_id", "a"), ("player_id", "b")]));
        assert!(twice.is_err_and(|e| e.contains("duplicate")));
    }

    #[test]
    fn bulk_filters_refuse_unknown_fields_as_invalid_bodies() {
        let registry = registry();
        let parse = |body: Value| serde_json::from_value::<SagaFilter>(body);
        let filter = parse(json!({
            "state": "failed",
            "type": "mission_reward",
            "player_id": "player-1",
            "quest_id": null,
            "created_after": "2025-01-01T00:00:00Z"
        }))
        .expect("a valid filter");
        assert_eq!(filter.state.as_deref(), Some("failed"));
        assert_eq!(filter.saga_type.as_deref(), Some("mission_reward"));
        assert!(filter.created_after.is_some());
        assert_eq!(
            filter_keys(&registry, filter.keys),
            Ok(BTreeMap::from([(
                "player_id".to_owned(),
                "player-1".to_owned()
            )]))
        );
        let colour = parse(json!({"colour": "red"})).expect("parses");
        let refused = filter_keys(&registry, colour.keys).expect_err("unknown field");
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
        );
        assert!(refused.detail.contains("`colour`"), "{}", refused.detail);
        assert!(parse(json!({"player_id": 5})).is_err());
        assert!(parse(json!({"created_after": "yesterday"})).is_err());
    }

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
        assert_eq!(cursor, format!("1700000000123456_{}", view.id));
        assert_eq!(decode_cursor(&cursor), Some((view.created_at, view.id.0)));
        for garbage in [
            "garbage!",
            "",
            "01700000000123456_00000000-0000-0000-0000-000000000000",
            "17000000001234567_00000000-0000-0000-0000-000000000000",
            "1_00000000000000000000000000000000",
            "1_0000000A-0000-0000-0000-000000000000",
        ] {
            assert_eq!(decode_cursor(garbage), None, "{garbage}");
        }
        assert!(decode_cursor("9999999999999999_00000000-0000-0000-0000-000000000000").is_some());
    }

    #[test]
    fn waits_are_read_exactly_as_documented() {
        for good in [
            "",
            "0",
            "7",
            "07",
            "59.99",
            "60",
            "60.000",
            "10s",
            "1.5s",
            "60s",
            "0ms",
            "500ms",
            "59999.9ms",
            "60000ms",
            "60000.0ms",
            "06000ms",
        ] {
            assert!(wait_is_documented(good), "{good:?}");
            if !good.is_empty() {
                assert!(crate::watch::parse_wait(good).is_ok(), "{good:?}");
            }
        }
        for bad in [
            "61", "60.5", "61s", "60001ms", "-1", "+1", ".5", "5.", "1e1", " 5", "5 ", "s", "ms",
            "100", "600000ms", "abc", "NaN", "inf", "10m", "1.5.5",
        ] {
            assert!(!wait_is_documented(bad), "{bad:?}");
        }
        let doc =
            serde_json::to_value(GetQuery::into_params(|| Some(ParameterIn::Query))).expect("json");
        assert_eq!(doc[0]["schema"]["pattern"], WAIT_PATTERN);
    }

    #[test]
    fn the_documented_patterns_are_the_checked_ones() {
        let list = serde_json::to_value(ListQuery::into_params(|| Some(ParameterIn::Query)))
            .expect("json");
        let param = |name: &str| {
            list.as_array()
                .expect("parameters")
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .expect("a parameter")
        };
        assert_eq!(param("cursor")["schema"]["pattern"], SAGA_CURSOR_PATTERN);
        assert_eq!(param("created_after")["schema"]["pattern"], TIME_PATTERN);
        assert_eq!(param("created_before")["schema"]["pattern"], TIME_PATTERN);
        let filter = serde_json::to_value(SagaFilter::schema()).expect("json");
        assert_eq!(
            filter["properties"]["created_after"]["pattern"],
            TIME_PATTERN
        );
        assert_eq!(
            param("state")["schema"]["enum"],
            json!([
                "",
                "running",
                "compensating",
                "completed",
                "compensated",
                "failed",
                "cancelled"
            ])
        );
        for state in SAGA_STATES {
            assert_eq!(
                SagaState::parse(state).map(|s| s.as_str()),
                Some(state),
                "{state}"
            );
        }
        let at = |text: &str| DateTime::parse_from_rfc3339(text).expect("a time");
        assert!(storable("t", Some(at("1970-01-01T00:00:00+05:00"))).is_ok());
        assert!(storable("t", Some(at("9999-12-31T23:00:00-05:00"))).is_ok());
        assert!(storable("t", Some(at("1969-12-31T23:00:00-05:00"))).is_err());
        assert!(storable("t", Some(at("0001-01-01T00:00:00Z"))).is_err());
    }

    #[test]
    fn a_start_is_documented_per_saga_type_from_the_registry() {
        let mut router: OpenApiRouter<ApiState> =
            OpenApiRouter::new().routes(routes!(start_saga, list_sagas));
        let registry = crate::definition::Registry::builtin(&Policies::default());
        document_saga_types(router.get_openapi_mut(), &registry);
        let doc = serde_json::to_value(router.into_openapi()).expect("json");
        let start = &doc["components"]["schemas"]["StartSaga"];
        let variants = start["oneOf"].as_array().expect("one variant per type");
        assert_eq!(variants.len(), registry.types().len(), "{start}");
        let mission = variants
            .iter()
            .find(|v| v["properties"]["type"]["enum"] == json!(["mission_reward"]))
            .expect("mission_reward");
        assert_eq!(mission["required"], json!(["type", "input"]));
        let input = &mission["properties"]["input"];
        assert_eq!(input["required"], json!(["mission_id"]));
        assert_eq!(input["properties"]["mission_id"]["format"], "uuid");
        assert_eq!(input["additionalProperties"], json!(false));
    }
}
