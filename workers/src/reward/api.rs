//! The reward worker's HTTP routes: the reward budget and rewards.

use axum::extract::{Path, State};
use runtime::problem::Problem;
use runtime::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::store::{self, Reward};

/// The routes and their OpenAPI description.
pub fn router(pool: PgPool) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(runtime::openapi::document(
        "Reward service",
        "The reward budget, and the rewards granted.",
    ))
    .routes(routes!(get_budget, set_budget))
    .routes(routes!(get_reward))
    .with_state(pool)
    .split_for_parts()
}

/// The reward budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// Points left to grant (0 or more); `null` (or left out) means no limit.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub remaining_points: Option<i64>,
}

/// Read the reward budget.
#[utoipa::path(
    get,
    path = "/v1/rewards/budget",
    responses((status = 200, description = "The budget", body = Budget)),
    tag = "rewards"
)]
async fn get_budget(State(pool): State<PgPool>) -> Result<axum::Json<Budget>, ApiError> {
    let remaining_points = store::budget(&pool).await?;
    Ok(axum::Json(Budget { remaining_points }))
}

/// Set the reward budget: points left to grant, or `null` for no limit.
#[utoipa::path(
    put,
    path = "/v1/rewards/budget",
    request_body = Budget,
    responses(
        (status = 200, description = "The budget", body = Budget),
        (status = 422, description = "A negative budget, or not a number (`invalid_body`)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "rewards"
)]
async fn set_budget(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<Budget>,
) -> Result<axum::Json<Budget>, ApiError> {
    if body.remaining_points.is_some_and(|p| p < 0) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "remaining_points must be 0 or more, or null",
        ));
    }
    store::set_budget(&pool, body.remaining_points).await?;
    Ok(axum::Json(body))
}

/// Read a reward.
#[utoipa::path(
    get,
    path = "/v1/rewards/{id}",
    params(("id" = String, Path, format = Uuid, description = "The reward's id")),
    responses(
        (status = 200, description = "The reward", body = Reward),
        (status = 404, description = "No such reward", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "rewards"
)]
async fn get_reward(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Reward>, ApiError> {
    let not_found = || ApiError::not_found("reward_not_found", format!("no reward {id}"));
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    store::reward(&pool, id)
        .await?
        .map(axum::Json)
        .ok_or_else(not_found)
}
