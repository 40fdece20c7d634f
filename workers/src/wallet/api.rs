//! The wallet worker's HTTP routes: read a wallet with its ledger (newest first, keyset-paged),
//! freeze and unfreeze it.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use contracts::CustomerId;
use runtime::ApiError;
use runtime::problem::{ApiQuery, Problem};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Entry};

/// The routes and their OpenAPI description.
pub fn router(pool: PgPool) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(runtime::openapi::document(
        "Wallet service",
        "Wallets: read one with its ledger (newest first), freeze and unfreeze it.",
    ))
    .routes(routes!(get_wallet))
    .routes(routes!(freeze_wallet))
    .routes(routes!(unfreeze_wallet))
    .with_state(pool)
    .split_for_parts()
}

/// A wallet with a page of its ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Wallet {
    /// Its owner.
    pub customer_id: String,
    /// Points held (never below zero).
    pub balance: i64,
    /// Whether sagas going forward are refused (compensations still run).
    pub frozen: bool,
    /// Ledger entries, newest first.
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next page of entries; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/wallets/{customer_id}`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntryPage {
    /// Entries per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(pattern = "^((0|[1-9][0-9]{0,15})_(0|[1-9][0-9]{0,17}))?$")]
    pub cursor: Option<String>,
}

/// What a cursor looks like: the page's last entry's time (µs since 1970) and id.
pub const CURSOR_PATTERN: &str = "^((0|[1-9][0-9]{0,15})_(0|[1-9][0-9]{0,17}))?$";

/// The cursor after `entry` ([`CURSOR_PATTERN`]).
fn encode_cursor(entry: &Entry) -> String {
    format!("{}_{}", entry.created_at.timestamp_micros(), entry.id)
}

/// The position a cursor names; `None` unless it is exactly what [`encode_cursor`] writes.
fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, i64)> {
    let (micros, id) = cursor.split_once('_')?;
    let micros = i64::try_from(runtime::openapi::decimal(micros, 16)?).ok()?;
    Some((
        DateTime::from_timestamp_micros(micros)?,
        i64::try_from(runtime::openapi::decimal(id, 18)?).ok()?,
    ))
}

async fn wallet(pool: &PgPool, customer: &CustomerId, page: EntryPage) -> Result<Wallet, ApiError> {
    let bad = |detail: String| {
        ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_query", detail)
    };
    let limit = page.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad(format!("limit must be 1 to 500; got {limit}")));
    }
    let after = match page.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| bad("cursor is not one this API issued".into()))?)
        }
    };
    let (balance, frozen) = store::wallet(pool, customer).await?;
    let mut entries = store::entries(pool, customer, after, limit + 1).await?;
    let more = entries.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        entries.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Wallet {
        customer_id: customer.to_string(),
        balance,
        frozen,
        entries,
        next_cursor,
    })
}

/// Read a customer's wallet and its ledger, newest entries first (a customer never credited has
/// an empty one).
#[utoipa::path(
    get,
    path = "/v1/wallets/{customer_id}",
    params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,64}$", description = "The customer"), EntryPage),
    responses(
        (status = 200, description = "The wallet", body = Wallet),
        (status = 400, description = "A bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "wallets"
)]
async fn get_wallet(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<EntryPage>,
) -> Result<axum::Json<Wallet>, ApiError> {
    let customer = id.parse::<CustomerId>()?;
    Ok(axum::Json(wallet(&pool, &customer, page).await?))
}

async fn set_frozen(pool: &PgPool, id: &str, frozen: bool) -> Result<axum::Json<Wallet>, ApiError> {
    let customer = id.parse::<CustomerId>()?;
    store::set_frozen(pool, &customer, frozen).await?;
    Ok(axum::Json(
        wallet(pool, &customer, EntryPage::default()).await?,
    ))
}

/// Freeze a wallet: sagas going forward are refused (`wallet_frozen`), so a mission reward
/// compensates and a gift exchange is not paid; compensations still move points back.
#[utoipa::path(
    post,
    path = "/v1/wallets/{customer_id}/freeze",
    params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,64}$", description = "The customer")),
    responses(
        (status = 200, description = "The wallet, frozen", body = Wallet),
        (status = 422, description = "Not a valid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "wallets"
)]
async fn freeze_wallet(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Wallet>, ApiError> {
    set_frozen(&pool, &id, true).await
}

/// Unfreeze a wallet.
#[utoipa::path(
    post,
    path = "/v1/wallets/{customer_id}/unfreeze",
    params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,64}$", description = "The customer")),
    responses(
        (status = 200, description = "The wallet, unfrozen", body = Wallet),
        (status = 422, description = "Not a valid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "wallets"
)]
async fn unfreeze_wallet(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Wallet>, ApiError> {
    set_frozen(&pool, &id, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let entry = Entry {
            id: 42,
            kind: "credit".into(),
            points: 5,
            balance_after: Some(5),
            saga_id: None,
            reward_id: None,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time"),
        };
        assert_eq!(encode_cursor(&entry), "1700000000123456_42");
        assert_eq!(
            decode_cursor(&encode_cursor(&entry)),
            Some((entry.created_at, 42))
        );
        for garbage in ["garbage!", "1_", "_1", "01_1", "1_01", "1_-1", "1|1"] {
            assert_eq!(decode_cursor(garbage), None, "{garbage}");
        }
        let doc = serde_json::to_value(<EntryPage as utoipa::IntoParams>::into_params(|| {
            Some(utoipa::openapi::path::ParameterIn::Query)
        }))
        .expect("json");
        assert_eq!(doc[1]["schema"]["pattern"], CURSOR_PATTERN);
    }
}
