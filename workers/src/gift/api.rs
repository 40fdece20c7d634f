//! The gift worker's HTTP routes: the catalogue (add, list, read, restock or reprice a gift) and
//! exchanges, which start a `gift_exchange` saga by asking the orchestrator
//! (`POST {orchestrator_url}/v1/sagas`) and answer what it answered.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contracts::{CustomerId, GiftId};
use runtime::problem::{ApiQuery, Problem};
use runtime::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Gift, GiftChange};

/// The most gifts one page lists.
pub const MAX_PAGE: i64 = 500;

/// Gifts one page lists when the query does not say.
pub const DEFAULT_PAGE: i64 = 50;

/// The headers an exchange passes on to the orchestrator.
const FORWARDED: [&str; 4] = [
    "idempotency-key",
    "traceparent",
    "tracestate",
    "authorization",
];

/// What the routes share: the pool and the orchestrator's client.
#[derive(Clone, Debug)]
pub struct GiftApi {
    pool: PgPool,
    http: reqwest::Client,
    sagas_url: String,
}

impl GiftApi {
    /// The routes' state over `pool`, starting sagas at `orchestrator_url`.
    pub fn new(pool: PgPool, orchestrator_url: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let base = orchestrator_url.trim().trim_end_matches('/');
        reqwest::Url::parse(base)
            .with_context(|| format!("SAGA_ORCHESTRATOR_URL {base:?} is not a URL"))?;
        // reqwest is built with `rustls-no-provider`: one provider for the whole process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the orchestrator's HTTP client")?;
        Ok(Self {
            pool,
            http,
            sagas_url: format!("{base}/v1/sagas"),
        })
    }
}

/// The routes and their OpenAPI description.
pub fn router(api: GiftApi) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(runtime::openapi::document(
        "Gift service",
        "The gift catalogue (add, list, read, restock or reprice a gift) and exchanges, each of which starts a `gift_exchange` saga.",
    ))
        .routes(routes!(create_gift, list_gifts))
        .routes(routes!(get_gift, update_gift))
        .routes(routes!(exchange_gift))
        .with_state(api)
        .split_for_parts()
}

/// `POST /v1/gifts` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewGift {
    /// Its name: 1 to 200 characters, not only white space (kept without the white space
    /// around it).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// What it costs, in points (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub price_points: i64,
    /// How many there are (0 to 1,000,000).
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub stock: i64,
}

/// `PATCH /v1/gifts/{id}` body: what to change (a field left out, or `null`, stays).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GiftPatch {
    /// A new name (1 to 200 characters, not only white space).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: Option<String>,
    /// A new price (1 to 1,000,000), for exchanges from now on.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub price_points: Option<i64>,
    /// A new stock (0 to 1,000,000): a restock.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub stock: Option<i64>,
}

/// `POST /v1/gifts/{id}/exchanges` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewExchange {
    /// Who exchanges points for the gift.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub customer_id: String,
}

/// The answer to an exchange: the `gift_exchange` saga, as the orchestrator shows it
/// (`SagaView` in the platform's document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExchangeSaga {
    /// The saga's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    /// `gift_exchange`.
    #[serde(rename = "type")]
    pub saga_type: String,
    /// Its state (`running` when it was just started).
    pub state: String,
}

/// Query of `GET /v1/gifts`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GiftQuery {
    /// Gifts per page, 1 to 500 (50 when absent).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the page starts: the `next_cursor` of the page before (a gift's id).
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

/// A page of gifts, in the order they were added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GiftPage {
    /// The gifts.
    pub items: Vec<Gift>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

fn invalid(detail: String) -> ApiError {
    ApiError::unprocessable("invalid_body", detail)
}

fn check_name(name: &str) -> Result<&str, ApiError> {
    if !(1..=200).contains(&name.chars().count()) || name.trim().is_empty() {
        return Err(invalid(
            "name must be 1 to 200 characters, not only white space".into(),
        ));
    }
    Ok(name.trim())
}

fn check_price(price: i64) -> Result<i64, ApiError> {
    if !(1..=1_000_000).contains(&price) {
        return Err(invalid(format!(
            "price_points must be 1 to 1000000; got {price}"
        )));
    }
    Ok(price)
}

fn check_stock(stock: i64) -> Result<i64, ApiError> {
    if !(0..=1_000_000).contains(&stock) {
        return Err(invalid(format!("stock must be 0 to 1000000; got {stock}")));
    }
    Ok(stock)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("gift_not_found", format!("no gift {id}"))
}

async fn find(pool: &PgPool, id: &str) -> Result<Gift, ApiError> {
    let key: GiftId = id.parse().map_err(|_| not_found(id))?;
    store::gift(pool, key).await?.ok_or_else(|| not_found(id))
}

/// Add a gift to the catalogue.
#[utoipa::path(
    post,
    path = "/v1/gifts",
    request_body = NewGift,
    responses(
        (status = 201, description = "Added", body = Gift, headers(("Location" = String, description = "/v1/gifts/{id}"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (invalid_body)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "gifts"
)]
async fn create_gift(
    State(api): State<GiftApi>,
    ApiJson(body): ApiJson<NewGift>,
) -> Result<Response, ApiError> {
    let name = check_name(&body.name)?;
    let price = check_price(body.price_points)?;
    let stock = check_stock(body.stock)?;
    let gift = store::insert_gift(&api.pool, name, price, stock).await?;
    let location = format!("/v1/gifts/{}", gift.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(gift),
    )
        .into_response())
}

/// List the catalogue in the order gifts were added, one keyset-paged page at a time.
#[utoipa::path(
    get,
    path = "/v1/gifts",
    params(GiftQuery),
    responses(
        (status = 200, description = "A page of gifts", body = GiftPage),
        (status = 400, description = "A bad limit or cursor (invalid_query)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "gifts"
)]
async fn list_gifts(
    State(api): State<GiftApi>,
    ApiQuery(query): ApiQuery<GiftQuery>,
) -> Result<axum::Json<GiftPage>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", detail);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad(format!("limit must be 1 to {MAX_PAGE}; got {limit}")));
    }
    let after = query
        .cursor
        .as_deref()
        .map(|c| {
            runtime::openapi::canonical_uuid(c)
                .map(GiftId::from)
                .ok_or(())
        })
        .transpose()
        .map_err(|()| bad("cursor is not one this API gave".into()))?;
    let mut items = store::gifts(&api.pool, after, limit + 1).await?;
    let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = more
        .then(|| items.last().map(|g| g.id.to_string()))
        .flatten();
    Ok(axum::Json(GiftPage { items, next_cursor }))
}

/// Read a gift, with the stock left.
#[utoipa::path(
    get,
    path = "/v1/gifts/{id}",
    params(("id" = String, Path, format = Uuid, description = "The gift's id")),
    responses(
        (status = 200, description = "The gift", body = Gift),
        (status = 404, description = "No such gift (gift_not_found)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "gifts"
)]
async fn get_gift(
    State(api): State<GiftApi>,
    Path(id): Path<String>,
) -> Result<axum::Json<Gift>, ApiError> {
    find(&api.pool, &id).await.map(axum::Json)
}

/// Restock, reprice or rename a gift. A new price applies to exchanges that reserve from now on.
#[utoipa::path(
    patch,
    path = "/v1/gifts/{id}",
    params(("id" = String, Path, format = Uuid, description = "The gift's id")),
    request_body = GiftPatch,
    responses(
        (status = 200, description = "The gift, changed", body = Gift),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such gift (gift_not_found)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown fields (invalid_body)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "gifts"
)]
async fn update_gift(
    State(api): State<GiftApi>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<GiftPatch>,
) -> Result<axum::Json<Gift>, ApiError> {
    let key: GiftId = id.parse().map_err(|_| not_found(&id))?;
    let change = GiftChange {
        name: body.name.as_deref().map(check_name).transpose()?,
        price_points: body.price_points.map(check_price).transpose()?,
        stock: body.stock.map(check_stock).transpose()?,
    };
    store::update_gift(&api.pool, key, &change)
        .await?
        .map(axum::Json)
        .ok_or_else(|| not_found(&id))
}

/// Exchange points for a gift: starts a `gift_exchange` saga (reserve the gift, debit its price
/// from the customer's wallet, issue a voucher, tell the customer) and answers as
/// `POST /v1/sagas` does. `Idempotency-Key`, `traceparent` and `Authorization` are passed on.
#[utoipa::path(
    post,
    path = "/v1/gifts/{id}/exchanges",
    params(
        ("id" = String, Path, format = Uuid, description = "The gift's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "The same key and body give the same exchange: 1 to 255 visible ASCII characters"),
    ),
    request_body = NewExchange,
    responses(
        (status = 202, description = "The exchange's saga was started (or, with a used Idempotency-Key, found); the body is the saga, as `GET /v1/sagas/{id}` shows it", body = ExchangeSaga, headers(("Location" = String, description = "/v1/sagas/{saga_id}"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such gift (gift_not_found)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid customer id (invalid_customer_id), or what the orchestrator refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The orchestrator could not be reached (orchestrator_unavailable), or a dependency of it", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "gifts"
)]
async fn exchange_gift(
    State(api): State<GiftApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewExchange>,
) -> Result<Response, ApiError> {
    let gift = find(&api.pool, &id).await?;
    let customer = CustomerId::try_from(body.customer_id)?;
    let mut request = api.http.post(&api.sagas_url).json(&serde_json::json!({
        "type": "gift_exchange",
        "input": {"gift_id": gift.id, "customer_id": customer},
    }));
    for name in FORWARDED {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.clone());
        }
    }
    let unavailable = |error: reqwest::Error| {
        tracing::warn!(error = %error.without_url(), "the orchestrator did not answer");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "orchestrator_unavailable",
            "the orchestrator did not answer; try again (with the same Idempotency-Key)",
        )
    };
    let answer = request.send().await.map_err(unavailable)?;
    let status = answer.status();
    let mut passed = HeaderMap::new();
    for name in [header::LOCATION, header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(value) = answer.headers().get(&name) {
            passed.insert(name, value.clone());
        }
    }
    let body = answer.bytes().await.map_err(unavailable)?;
    Ok((status, passed, Body::from(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked() {
        assert_eq!(check_name("  Mug ").ok(), Some("Mug"));
        assert!(check_name(" ").is_err());
        assert!(check_name(&"é".repeat(200)).is_ok());
        assert!(check_name(&"é".repeat(201)).is_err());
        assert!(check_name(&format!(" {}", "é".repeat(200))).is_err());
        assert!(check_name("\t\n").is_err());
        for (price, ok) in [(0, false), (1, true), (1_000_000, true), (1_000_001, false)] {
            assert_eq!(check_price(price).is_ok(), ok, "{price}");
        }
        for (stock, ok) in [
            (-1, false),
            (0, true),
            (1_000_000, true),
            (1_000_001, false),
        ] {
            assert_eq!(check_stock(stock).is_ok(), ok, "{stock}");
        }
        let error = check_price(0).expect_err("refused");
        assert_eq!((error.status.as_u16(), error.code), (422, "invalid_body"));
    }

    #[test]
    fn a_patch_names_only_known_fields() {
        let patch: GiftPatch =
            serde_json::from_value(serde_json::json!({"stock": 5, "name": null})).expect("a patch");
        assert_eq!(
            patch,
            GiftPatch {
                stock: Some(5),
                ..GiftPatch::default()
            }
        );
        assert!(serde_json::from_value::<GiftPatch>(serde_json::json!({"stok": 5})).is_err());
    }

    #[tokio::test]
    async fn a_bad_orchestrator_url_is_refused() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        assert!(GiftApi::new(pool.clone(), "not a url").is_err());
        let api = GiftApi::new(pool, "http://127.0.0.1:8080/").expect("an api");
        assert_eq!(api.sagas_url, "http://127.0.0.1:8080/v1/sagas");
    }
}
