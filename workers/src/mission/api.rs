//! The mission worker's HTTP routes: create and read missions, put them on moderation hold.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use contracts::{CustomerId, MissionId};
use runtime::problem::Problem;
use runtime::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Mission};

/// The routes and their OpenAPI description.
pub fn router(pool: PgPool) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(runtime::openapi::document(
        "Mission service",
        "Missions: create and read them, put them on moderation hold.",
    ))
    .routes(routes!(create_mission))
    .routes(routes!(get_mission))
    .routes(routes!(hold_mission, release_mission))
    .with_state(pool)
    .split_for_parts()
}

/// `POST /v1/missions` body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct NewMission {
    /// The player who owns it.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub customer_id: CustomerId,
    /// Its title: 1 to 200 characters, not only white space (kept without the white space
    /// around it).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub title: String,
    /// The points it pays (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub reward_points: i64,
}

/// Whether `title` is what [`NewMission::title`] documents.
fn valid_title(title: &str) -> bool {
    (1..=200).contains(&title.chars().count()) && !title.trim().is_empty()
}

/// Create a mission.
#[utoipa::path(
    post,
    path = "/v1/missions",
    request_body = NewMission,
    responses(
        (status = 201, description = "Created", body = Mission, headers(("Location" = String, description = "/v1/missions/{id}"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`invalid_body`)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn create_mission(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<NewMission>,
) -> Result<Response, ApiError> {
    if !valid_title(&body.title) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "title must be 1 to 200 characters, not only white space",
        ));
    }
    let title = body.title.trim();
    if !(1..=1_000_000).contains(&body.reward_points) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "reward_points must be 1 to 1000000",
        ));
    }
    let mission = store::insert(&pool, &body.customer_id, title, body.reward_points).await?;
    let location = format!("/v1/missions/{}", mission.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(mission),
    )
        .into_response())
}

async fn find(pool: &PgPool, id: &str) -> Result<Mission, ApiError> {
    let not_found = || ApiError::not_found("mission_not_found", format!("no mission {id}"));
    let id: MissionId = id.parse().map_err(|_| not_found())?;
    store::get(pool, id).await?.ok_or_else(not_found)
}

/// Read a mission.
#[utoipa::path(
    get,
    path = "/v1/missions/{id}",
    params(("id" = String, Path, format = Uuid, description = "The mission's id")),
    responses(
        (status = 200, description = "The mission", body = Mission),
        (status = 404, description = "No such mission", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn get_mission(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Mission>, ApiError> {
    find(&pool, &id).await.map(axum::Json)
}

async fn set_hold(pool: &PgPool, id: &str, hold: bool) -> Result<axum::Json<Mission>, ApiError> {
    let mission = find(pool, id).await?;
    Ok(axum::Json(store::set_hold(pool, mission.id, hold).await?))
}

/// Put a mission on moderation hold: a saga that completes it then fails to attach its reward
/// and compensates (the reward is revoked, the mission reopened).
#[utoipa::path(
    post,
    path = "/v1/missions/{id}/hold",
    params(("id" = String, Path, format = Uuid, description = "The mission's id")),
    responses(
        (status = 200, description = "The mission, on hold", body = Mission),
        (status = 404, description = "No such mission", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn hold_mission(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Mission>, ApiError> {
    set_hold(&pool, &id, true).await
}

/// Release a mission from moderation hold.
#[utoipa::path(
    delete,
    path = "/v1/missions/{id}/hold",
    params(("id" = String, Path, format = Uuid, description = "The mission's id")),
    responses(
        (status = 200, description = "The mission, released", body = Mission),
        (status = 404, description = "No such mission", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn release_mission(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Mission>, ApiError> {
    set_hold(&pool, &id, false).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema as _;

    #[test]
    fn titles_are_checked_as_documented() {
        assert!(valid_title("Defeat the dragon"));
        assert!(valid_title(&"é".repeat(200)));
        assert!(valid_title(" x "));
        for bad in [
            "",
            " ",
            "\n\t",
            &"x".repeat(201),
            &format!(" {}", "x".repeat(200)),
        ] {
            assert!(!valid_title(bad), "{bad:?}");
        }
        let schema = serde_json::to_value(NewMission::schema()).expect("json");
        let title = &schema["properties"]["title"];
        assert_eq!(
            (&title["minLength"], &title["maxLength"], &title["pattern"]),
            (
                &serde_json::json!(1),
                &serde_json::json!(200),
                &serde_json::json!("\\S")
            )
        );
        assert_eq!(
            schema["properties"]["customer_id"]["pattern"],
            runtime::openapi::CUSTOMER_ID_PATTERN
        );
    }
}
