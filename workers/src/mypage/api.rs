//! The Mypage HTTP routes: a mission's row, lists by customer, reward or notification
//! (keyset-paged, newest first), and the operator's rebuild.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use contracts::CustomerId;
use runtime::ApiError;
use runtime::problem::{ApiQuery, Problem};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::rebuild::{self, RebuildStatus, Rebuilds};
use super::store::{After, Backend, Filter, RebuildStart, Store};
use super::view::{Kind, Row};

/// What the routes work with.
#[derive(Clone)]
pub struct ApiState {
    /// The view.
    pub store: Store,
    /// Rebuilds.
    pub rebuilds: Rebuilds,
}

/// The routes and their OpenAPI description.
pub fn router(state: ApiState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = OpenApiRouter::with_openapi(runtime::openapi::document(
        "Mypage service",
        "The Mypage view: a mission's row, lists by customer, reward or notification (newest first), and its rebuild.",
    ))
        .routes(routes!(get_rebuild, start_rebuild))
        .routes(routes!(list_mypages))
        .routes(routes!(get_mypage))
        .with_state(state)
        .split_for_parts();
    document_list_query(&mut openapi);
    (router, openapi)
}

/// What a cursor looks like: the page's last row's id and kind.
pub const CURSOR_PATTERN: &str =
    "^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}_(mission|gift))?$";

/// The filters of `GET /v1/mypages`, of which exactly one must be given.
const FILTERS: [&str; 3] = ["customer_id", "reward_id", "telegram_id"];

/// Documents the query of `GET /v1/mypages` as one object (form style, exploded: each property
/// is a query parameter of its own), so that it can say what no list of separate parameters can:
/// exactly one of `customer_id`, `reward_id` and `telegram_id`.
fn document_list_query(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn, ParameterStyle};
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let Some(list) = openapi
        .paths
        .paths
        .get_mut("/v1/mypages")
        .and_then(|item| item.get.as_mut())
    else {
        return;
    };
    let mut query = ObjectBuilder::new().schema_type(Type::Object).description(Some(
        "Exactly one of `customer_id`, `reward_id` and `telegram_id`; `limit` and `cursor` page.",
    ));
    for parameter in list.parameters.take().into_iter().flatten() {
        let RefOr::T(parameter) = parameter else {
            continue;
        };
        let mut schema = match parameter.schema {
            Some(RefOr::T(Schema::Object(object))) => object,
            _ => continue,
        };
        // A present property is a value: none is `null`.
        schema.schema_type = match parameter.name.as_str() {
            "limit" => Type::Integer.into(),
            _ => Type::String.into(),
        };
        schema.description = parameter.description.clone();
        query = query.property(parameter.name, schema);
    }
    let mut exactly_one = OneOfBuilder::new();
    for filter in FILTERS {
        exactly_one = exactly_one.item(ObjectBuilder::new().required(filter));
    }
    let schema: Schema = query.into();
    let Schema::Object(mut object) = schema else {
        return;
    };
    let mut all = utoipa::openapi::schema::AllOfBuilder::new()
        .item(Schema::Object(std::mem::take(&mut object)))
        .item(exactly_one);
    all = all.description(Some(
        "Exactly one of `customer_id`, `reward_id` and `telegram_id`; `limit` and `cursor` page.",
    ));
    list.parameters = Some(vec![RefOr::T(
        ParameterBuilder::new()
            .name("query")
            .parameter_in(ParameterIn::Query)
            .required(utoipa::openapi::Required::True)
            .style(Some(ParameterStyle::Form))
            .explode(Some(true))
            .schema(Some(all))
            .build(),
    )]);
}

/// The seed's Mypage row: a mission, its reward and the notification about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MissionRow {
    /// The mission.
    pub mission_id: Uuid,
    /// Its owner.
    pub customer_id: Option<String>,
    /// `OPEN`, `COMPLETED` or `REWARDED`.
    pub mission_status: Option<String>,
    /// The reward attached (none once a saga compensated).
    pub reward_id: Option<Uuid>,
    /// Its points.
    pub reward_points: Option<i64>,
    /// The notification's id (`telegramId` of the original system).
    pub telegram_id: Option<Uuid>,
    /// `pending`, `sent` or `failed`.
    pub notification_status: Option<String>,
    /// Telegram's id of the message, when sent.
    pub telegram_message_id: Option<i64>,
    /// When the newest change it reflects happened.
    pub updated_at: DateTime<Utc>,
}

/// A gift exchange of a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GiftRow {
    /// The exchange's saga.
    pub saga_id: Uuid,
    /// The customer.
    pub customer_id: Option<String>,
    /// The gift.
    pub gift_id: Option<Uuid>,
    /// Its name.
    pub gift_name: Option<String>,
    /// The voucher issued.
    pub voucher_code: Option<String>,
    /// `issued`, or `released` when the exchange gave the gift back.
    pub gift_status: Option<String>,
    /// How the exchange ended (`completed`, `compensated`, ...), once it has.
    pub exchange_state: Option<String>,
    /// The notification's id, when known.
    pub telegram_id: Option<Uuid>,
    /// `pending`, `queued` (the exchange ended without a confirmed delivery: the message
    /// waits on the queue), `sent` or `failed`.
    pub notification_status: Option<String>,
    /// Telegram's id of the message, when sent.
    pub telegram_message_id: Option<i64>,
    /// When the newest change it reflects happened.
    pub updated_at: DateTime<Utc>,
}

/// An item of a list, by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MypageItem {
    /// A mission's row.
    Mission(MissionRow),
    /// A gift exchange.
    Gift(GiftRow),
}

impl From<Row> for MypageItem {
    fn from(row: Row) -> Self {
        match row.key.kind {
            Kind::Mission => MypageItem::Mission(MissionRow::from(row)),
            Kind::Gift => MypageItem::Gift(GiftRow {
                saga_id: row.key.item_id,
                customer_id: row.customer_id,
                gift_id: row.gift_id,
                gift_name: row.gift_name,
                voucher_code: row.voucher_code,
                gift_status: row.gift_status,
                exchange_state: row.exchange_state,
                telegram_id: row.telegram_id,
                notification_status: row.notification_status,
                telegram_message_id: row.telegram_message_id,
                updated_at: row.updated_at,
            }),
        }
    }
}

impl From<Row> for MissionRow {
    fn from(row: Row) -> Self {
        Self {
            mission_id: row.key.item_id,
            customer_id: row.customer_id,
            mission_status: row.mission_status,
            reward_id: row.reward_id,
            reward_points: row.reward_points,
            telegram_id: row.telegram_id,
            notification_status: row.notification_status,
            telegram_message_id: row.telegram_message_id,
            updated_at: row.updated_at,
        }
    }
}

/// A page of rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MypagePage {
    /// Rows, newest first.
    pub items: Vec<MypageItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// For a customer's list: the balance as last projected (null before any wallet event,
    /// and for the other lists).
    pub wallet_balance: Option<i64>,
}

/// Query of `GET /v1/mypages`: exactly one of `customer_id`, `reward_id`, `telegram_id`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MypageQuery {
    /// A customer's missions and gift exchanges, with their balance.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub customer_id: Option<String>,
    /// The mission holding this reward.
    #[param(format = Uuid)]
    pub reward_id: Option<String>,
    /// The rows of this notification (`telegram_id`).
    #[param(format = Uuid)]
    pub telegram_id: Option<String>,
    /// Rows per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(
        pattern = "^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}_(mission|gift))?$"
    )]
    pub cursor: Option<String>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

fn store_error(store: &Store, error: sqlx::Error) -> ApiError {
    let name = match store.backend() {
        Backend::Postgres => "PostgreSQL",
        Backend::MariaDb => "MariaDB",
    };
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => ApiError::unavailable(name, &error),
        other => ApiError::internal(&other),
    }
}

/// The cursor after a row ([`CURSOR_PATTERN`]).
fn encode_cursor(after: After) -> String {
    format!("{}_{}", after.item_id, after.kind.as_str())
}

/// The position a cursor names; `None` unless it is exactly what [`encode_cursor`] writes.
fn decode_cursor(cursor: &str) -> Option<After> {
    let (id, kind) = cursor.split_once('_')?;
    Some(After {
        item_id: runtime::openapi::canonical_uuid(id)?,
        kind: Kind::parse(kind)?,
    })
}

/// The filter a query names, checked.
fn filter_of(query: &MypageQuery) -> Result<Filter, ApiError> {
    let uuid = |name: &str, value: &str| {
        runtime::openapi::canonical_uuid(value)
            .ok_or_else(|| invalid(format!("{name} must be a uuid; got {value:?}")))
    };
    match (
        query.customer_id.as_deref(),
        query.reward_id.as_deref(),
        query.telegram_id.as_deref(),
    ) {
        (Some(customer), None, None) => customer
            .parse::<CustomerId>()
            .map(|c| Filter::Customer(c.as_str().to_owned()))
            .map_err(|e| invalid(e.to_string())),
        (None, Some(reward), None) => uuid("reward_id", reward).map(Filter::Reward),
        (None, None, Some(notification)) => uuid("telegram_id", notification).map(Filter::Telegram),
        _ => Err(invalid(
            "give exactly one of customer_id, reward_id and telegram_id",
        )),
    }
}

/// A mission's Mypage row: its status, reward and notification.
#[utoipa::path(
    get,
    path = "/v1/mypages/{mission_id}",
    params(("mission_id" = String, Path, format = Uuid, description = "The mission")),
    responses(
        (status = 200, description = "The row", body = MissionRow),
        (status = 404, description = "No row for this mission (or not a mission id)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "mypages"
)]
async fn get_mypage(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<MissionRow>, ApiError> {
    let not_found = || {
        ApiError::not_found(
            "mypage_not_found",
            format!("no Mypage row for mission {id}"),
        )
    };
    let mission = id.parse::<Uuid>().map_err(|_| not_found())?;
    let row = state
        .store
        .mission(mission)
        .await
        .map_err(|e| store_error(&state.store, e))?
        .ok_or_else(not_found)?;
    Ok(axum::Json(MissionRow::from(row)))
}

/// Rows found by customer (their missions and gift exchanges, plus their balance), by reward,
/// or by notification: newest first, keyset-paged.
#[utoipa::path(
    get,
    path = "/v1/mypages",
    params(MypageQuery),
    responses(
        (status = 200, description = "A page of rows", body = MypagePage),
        (status = 400, description = "Not exactly one filter, or a bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "mypages"
)]
async fn list_mypages(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<MypageQuery>,
) -> Result<axum::Json<MypagePage>, ApiError> {
    let filter = filter_of(&query)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(invalid(format!("limit must be 1 to 500; got {limit}")));
    }
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            decode_cursor(cursor).ok_or_else(|| invalid("cursor is not one this API issued"))?,
        ),
    };
    let store = &state.store;
    let mut rows = store
        .list(&filter, after, limit + 1)
        .await
        .map_err(|e| store_error(store, e))?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    rows.truncate(page);
    let next_cursor = if more {
        rows.last().map(|r| {
            encode_cursor(After {
                item_id: r.key.item_id,
                kind: r.key.kind,
            })
        })
    } else {
        None
    };
    let wallet_balance = match &filter {
        Filter::Customer(customer) => store
            .balance(customer)
            .await
            .map_err(|e| store_error(store, e))?,
        Filter::Reward(_) | Filter::Telegram(_) => None,
    };
    Ok(axum::Json(MypagePage {
        items: rows.into_iter().map(MypageItem::from).collect(),
        next_cursor,
        wallet_balance,
    }))
}

/// Where rebuilds stand: `idle` (none ever ran), `running` or `done`, with the replayed count.
#[utoipa::path(
    get,
    path = "/v1/mypages/rebuild",
    responses((status = 200, description = "The rebuild status", body = RebuildStatus)),
    tag = "mypages"
)]
async fn get_rebuild(State(state): State<ApiState>) -> Result<axum::Json<RebuildStatus>, ApiError> {
    rebuild::status(&state.store)
        .await
        .map(axum::Json)
        .map_err(|e| store_error(&state.store, e))
}

/// Rebuild the view: replay `DOMAIN_EVT` from its first message into a new generation, while
/// reads keep being served from the current one; reads switch to the new generation once it
/// has caught up with the stream.
#[utoipa::path(
    post,
    path = "/v1/mypages/rebuild",
    responses(
        (status = 202, description = "The rebuild started", body = RebuildStatus),
        (status = 409, description = "A rebuild is already running (`rebuild_running`)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "mypages"
)]
async fn start_rebuild(
    State(state): State<ApiState>,
) -> Result<(StatusCode, axum::Json<RebuildStatus>), ApiError> {
    let store = &state.store;
    match state
        .rebuilds
        .start()
        .await
        .map_err(|e| store_error(store, e))?
    {
        RebuildStart::Started(generation) => {
            let serving = store.serving().await.map_err(|e| store_error(store, e))?;
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(RebuildStatus::of(Some(&generation), serving.generation)),
            ))
        }
        RebuildStart::AlreadyRunning(generation) => Err(ApiError::conflict(
            "rebuild_running",
            format!(
                "the rebuild of generation {} is running ({} messages replayed)",
                generation.generation, generation.replayed
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let after = After {
            item_id: Uuid::now_v7(),
            kind: Kind::Gift,
        };
        assert_eq!(encode_cursor(after), format!("{}_gift", after.item_id));
        assert_eq!(decode_cursor(&encode_cursor(after)), Some(after));
        for garbage in [
            "garbage!".to_owned(),
            format!("{}_other", after.item_id),
            format!("{}_gift", after.item_id.simple()),
            format!("{}_gift", after.item_id.to_string().to_uppercase()),
        ] {
            assert_eq!(decode_cursor(&garbage), None, "{garbage}");
        }
    }

    #[test]
    fn exactly_one_valid_filter_is_accepted() {
        let id = Uuid::now_v7();
        let query = |c: Option<&str>, r: Option<&str>, t: Option<&str>| MypageQuery {
            customer_id: c.map(str::to_owned),
            reward_id: r.map(str::to_owned),
            telegram_id: t.map(str::to_owned),
            ..MypageQuery::default()
        };
        assert_eq!(
            filter_of(&query(Some("p-1"), None, None)).ok(),
            Some(Filter::Customer("p-1".into()))
        );
        assert_eq!(
            filter_of(&query(None, Some(&id.to_string()), None)).ok(),
            Some(Filter::Reward(id))
        );
        assert_eq!(
            filter_of(&query(None, None, Some(&id.to_string()))).ok(),
            Some(Filter::Telegram(id))
        );
        for bad in [
            query(None, None, None),
            query(Some("p-1"), Some(&id.to_string()), None),
            query(None, Some("not-a-uuid"), None),
            query(Some("has space"), None, None),
        ] {
            let error = filter_of(&bad).expect_err("refused");
            assert_eq!(
                (error.status, error.code),
                (StatusCode::BAD_REQUEST, "invalid_query")
            );
        }
    }

    #[test]
    fn items_say_their_kind() {
        let at = Utc::now();
        let mission = MypageItem::from(Row::new(
            super::super::view::RowKey::mission(Uuid::now_v7()),
            at,
        ));
        let json = serde_json::to_value(&mission).expect("encodes");
        assert_eq!(json["kind"], "mission");
        assert!(
            json.get("reward_id")
                .is_some_and(serde_json::Value::is_null)
        );
        let gift = MypageItem::from(Row::new(
            super::super::view::RowKey::gift(Uuid::now_v7()),
            at,
        ));
        let json = serde_json::to_value(&gift).expect("encodes");
        assert_eq!(json["kind"], "gift");
        assert!(json.get("voucher_code").is_some());
    }
}
