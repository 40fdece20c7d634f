//! The mission worker: owns missions. Its HTTP API creates and reads missions and puts them on
//! (or off) moderation hold; its saga steps complete, reopen, attach and detach a reward and
//! record the message the customer got, each idempotent against the saga that completed the
//! mission; it publishes `MissionUpdated` after every change and `MessageUpdated` when the
//! message is recorded.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use contracts::command::{
    AttachRewardV1, CompleteMissionV1, DetachRewardV1, NotificationStatus, RecordMessageV1,
    ReopenMissionV1,
};
use contracts::event::{MessageUpdatedV1, MissionUpdatedV1};
use contracts::reply::{MissionCompletedV1, output_of};
use contracts::{
    Command, CustomerId, DomainEvent, Envelope, MissionId, Reply, RewardId, SagaId, StepFailure,
    Worker,
};
use runtime::problem::Problem;
use runtime::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::Map;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::runtime::{Handled, Handler, HandlerError, WorkerContext};

/// The mission worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mission");

/// A mission as stored and shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Mission {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// Its owner.
    pub customer_id: String,
    /// Its title.
    pub title: String,
    /// The points it pays.
    pub reward_points: i64,
    /// `OPEN`, `COMPLETED` or `REWARDED`.
    pub status: String,
    /// Whether moderation holds its reward back (attaching a reward fails while held).
    pub on_hold: bool,
    /// The saga that completed it.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub saga_id: Option<Uuid>,
    /// The attached reward.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub reward_id: Option<Uuid>,
    /// The notification that told the customer.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub notification_id: Option<Uuid>,
    /// `sent` or `failed`, once recorded.
    pub notification_status: Option<String>,
    /// When the message was recorded.
    pub message_recorded_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/missions` body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct NewMission {
    /// The player who owns it.
    #[schema(value_type = String)]
    pub customer_id: CustomerId,
    /// Its title (1 to 200 characters).
    pub title: String,
    /// The points it pays (1 to 1,000,000).
    pub reward_points: i64,
}

/// The mission worker.
#[derive(Clone, Debug)]
pub struct MissionWorker {
    pool: PgPool,
}

impl MissionWorker {
    /// A worker over its pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The public routes and their OpenAPI description.
    pub fn api(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        OpenApiRouter::new()
            .routes(routes!(create_mission))
            .routes(routes!(get_mission))
            .routes(routes!(hold_mission, release_mission))
            .with_state(self.clone())
            .split_for_parts()
    }

    /// Handles commands and answers `svc.mission.mission` look-ups until `shutdown`.
    pub async fn run(
        self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        let lookups = crate::runtime::serve_lookups(
            context.nats.clone(),
            context.topology.lookup_subject(Worker::Mission, "mission"),
            "mission".into(),
            shutdown.clone(),
            move |id| {
                let pool = pool.clone();
                async move {
                    let Some(id) = id.as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
                        return Ok(false);
                    };
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM missions WHERE id = $1)")
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                }
            },
        );
        let commands = context.run_commands(Arc::new(self), shutdown.clone());
        let (a, b) = tokio::join!(lookups, commands);
        a.and(b)
    }
}

/// The columns of a [`Mission`], for `SELECT` and `RETURNING`.
macro_rules! mission_columns {
    () => {
        "id, customer_id, title, reward_points, status, on_hold, saga_id, reward_id, \
         notification_id, notification_status, message_recorded_at, created_at, updated_at"
    };
}

const SELECT_MISSION: &str = concat!("SELECT ", mission_columns!(), " FROM missions");

async fn load(
    conn: &mut PgConnection,
    id: MissionId,
    lock: bool,
) -> Result<Option<Mission>, sqlx::Error> {
    let sql = if lock {
        format!("{SELECT_MISSION} WHERE id = $1 FOR UPDATE")
    } else {
        format!("{SELECT_MISSION} WHERE id = $1")
    };
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id.0)
        .fetch_optional(conn)
        .await
}

fn updated(mission: &Mission) -> Option<DomainEvent> {
    Some(DomainEvent::MissionUpdated(MissionUpdatedV1 {
        id: MissionId(mission.id),
        status: mission.status.clone(),
        reward_id: mission.reward_id.map(RewardId),
        customer_id: mission.customer_id.parse().ok()?,
    }))
}

fn ok(events: Vec<DomainEvent>) -> Handled {
    Handled {
        reply: Reply::Succeeded { output: Map::new() },
        events,
    }
}

fn refuse(code: &str, message: String) -> Handled {
    Handled::reply(Reply::Failed(StepFailure::permanent(code, message)))
}

async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    saga: Option<Uuid>,
    reward: Option<Uuid>,
) -> Result<Mission, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE missions SET status = $2, saga_id = $3, reward_id = $4, updated_at = now() \
         WHERE id = $1 RETURNING ",
        mission_columns!()
    ))
    .bind(id)
    .bind(status)
    .bind(saga)
    .bind(reward)
    .fetch_one(conn)
    .await
}

/// The mission, locked, when `saga` completed it; otherwise the refusal to reply with.
async fn owned(
    conn: &mut PgConnection,
    id: MissionId,
    saga: SagaId,
) -> Result<Result<Mission, Handled>, sqlx::Error> {
    let Some(mission) = load(conn, id, true).await? else {
        return Ok(Err(refuse("mission_not_found", format!("no mission {id}"))));
    };
    if mission.saga_id != Some(saga.0) {
        return Ok(Err(refuse(
            "mission_not_completed_by_saga",
            "another saga owns this mission".into(),
        )));
    }
    Ok(Ok(mission))
}

impl MissionWorker {
    async fn complete(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &CompleteMissionV1,
    ) -> Result<Handled, HandlerError> {
        let Some(mission) = load(conn, c.mission_id, true).await? else {
            return Ok(refuse(
                "mission_not_found",
                format!("no mission {}", c.mission_id),
            ));
        };
        let output = MissionCompletedV1 {
            customer_id: mission
                .customer_id
                .parse()
                .map_err(|_| HandlerError::Fatal("stored customer id is invalid".into()))?,
            mission_title: mission.title.clone(),
            reward_points: mission.reward_points,
        };
        let succeeded = |events| Handled {
            reply: Reply::Succeeded {
                output: output_of(&output),
            },
            events,
        };
        if mission.saga_id == Some(saga.0) && mission.status != "OPEN" {
            return Ok(succeeded(Vec::new()));
        }
        if mission.status != "OPEN" {
            return Ok(refuse(
                "mission_not_open",
                format!("mission {} is {}", mission.id, mission.status),
            ));
        }
        let mission = set_status(conn, mission.id, "COMPLETED", Some(saga.0), None).await?;
        Ok(succeeded(updated(&mission).into_iter().collect()))
    }

    async fn reopen(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &ReopenMissionV1,
    ) -> Result<Handled, HandlerError> {
        let Some(mission) = load(conn, c.mission_id, true).await? else {
            return Ok(ok(Vec::new()));
        };
        if mission.saga_id != Some(saga.0) || mission.status == "OPEN" {
            return Ok(ok(Vec::new()));
        }
        let mission = set_status(conn, mission.id, "OPEN", None, None).await?;
        Ok(ok(updated(&mission).into_iter().collect()))
    }

    async fn attach(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &AttachRewardV1,
    ) -> Result<Handled, HandlerError> {
        let mission = match owned(conn, c.mission_id, saga).await? {
            Ok(mission) => mission,
            Err(refusal) => return Ok(refusal),
        };
        if mission.status == "REWARDED" && mission.reward_id == Some(c.reward_id.0) {
            return Ok(ok(Vec::new()));
        }
        if mission.on_hold {
            return Ok(refuse(
                "mission_on_hold",
                format!(
                    "mission {} is on moderation hold; its reward cannot be attached",
                    mission.id
                ),
            ));
        }
        let mission = set_status(
            conn,
            mission.id,
            "REWARDED",
            Some(saga.0),
            Some(c.reward_id.0),
        )
        .await?;
        Ok(ok(updated(&mission).into_iter().collect()))
    }

    async fn detach(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &DetachRewardV1,
    ) -> Result<Handled, HandlerError> {
        let Some(mission) = load(conn, c.mission_id, true).await? else {
            return Ok(ok(Vec::new()));
        };
        if mission.saga_id != Some(saga.0) || mission.reward_id != Some(c.reward_id.0) {
            return Ok(ok(Vec::new()));
        }
        let mission = set_status(conn, mission.id, "COMPLETED", Some(saga.0), None).await?;
        Ok(ok(updated(&mission).into_iter().collect()))
    }

    async fn record(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &RecordMessageV1,
    ) -> Result<Handled, HandlerError> {
        let mission = match owned(conn, c.mission_id, saga).await? {
            Ok(mission) => mission,
            Err(refusal) => return Ok(refusal),
        };
        if mission.message_recorded_at.is_some() {
            return Ok(ok(Vec::new()));
        }
        let status = c.notification_status.unwrap_or(NotificationStatus::Failed);
        sqlx::query(
            "UPDATE missions SET notification_id = $2, notification_status = $3, \
             message_recorded_at = now(), updated_at = now() WHERE id = $1",
        )
        .bind(mission.id)
        .bind(c.notification_id.map(|n| n.0))
        .bind(status.as_str())
        .execute(&mut *conn)
        .await?;
        let event = DomainEvent::MessageUpdated(MessageUpdatedV1 {
            id: c.notification_id,
            mission_id: c.mission_id,
            status,
        });
        Ok(ok(vec![event]))
    }
}

impl Handler for MissionWorker {
    fn worker(&self) -> Worker {
        Worker::Mission
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        command: &Envelope<Command>,
    ) -> Result<Handled, HandlerError> {
        let saga = command.saga_id;
        match &command.body {
            Command::CompleteMission(c) => Self::complete(conn, saga, c).await,
            Command::ReopenMission(c) => Self::reopen(conn, saga, c).await,
            Command::AttachReward(c) => Self::attach(conn, saga, c).await,
            Command::DetachReward(c) => Self::detach(conn, saga, c).await,
            Command::RecordMessage(c) => Self::record(conn, saga, c).await,
            other => Err(HandlerError::Fatal(format!(
                "the mission worker does not handle {}",
                other.action().name()
            ))),
        }
    }
}

/// Create a mission.
#[utoipa::path(
    post,
    path = "/v1/missions",
    request_body = NewMission,
    responses(
        (status = 201, description = "Created", body = Mission, headers(("Location" = String, description = "/v1/missions/{id}"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn create_mission(
    State(worker): State<MissionWorker>,
    ApiJson(body): ApiJson<NewMission>,
) -> Result<Response, ApiError> {
    let title = body.title.trim();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "title must be 1 to 200 characters",
        ));
    }
    if !(1..=1_000_000).contains(&body.reward_points) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "reward_points must be 1 to 1000000",
        ));
    }
    let mission: Mission = sqlx::query_as(concat!(
        "INSERT INTO missions (id, customer_id, title, reward_points, status) \
         VALUES ($1, $2, $3, $4, 'OPEN') RETURNING ",
        mission_columns!()
    ))
    .bind(MissionId::new().0)
    .bind(body.customer_id.as_str())
    .bind(title)
    .bind(body.reward_points)
    .fetch_one(&worker.pool)
    .await?;
    let location = format!("/v1/missions/{}", mission.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(mission),
    )
        .into_response())
}

async fn find(worker: &MissionWorker, id: &str) -> Result<Mission, ApiError> {
    let not_found = || ApiError::not_found("mission_not_found", format!("no mission {id}"));
    let id: MissionId = id.parse().map_err(|_| not_found())?;
    let mut conn = worker.pool.acquire().await?;
    load(&mut conn, id, false).await?.ok_or_else(not_found)
}

/// Read a mission.
#[utoipa::path(
    get,
    path = "/v1/missions/{id}",
    params(("id" = String, Path, description = "The mission's id")),
    responses(
        (status = 200, description = "The mission", body = Mission),
        (status = 404, description = "No such mission", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn get_mission(
    State(worker): State<MissionWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Mission>, ApiError> {
    find(&worker, &id).await.map(axum::Json)
}

async fn set_hold(
    worker: &MissionWorker,
    id: &str,
    hold: bool,
) -> Result<axum::Json<Mission>, ApiError> {
    let mission = find(worker, id).await?;
    let mission: Mission = sqlx::query_as(concat!(
        "UPDATE missions SET on_hold = $2, updated_at = now() WHERE id = $1 RETURNING ",
        mission_columns!()
    ))
    .bind(mission.id)
    .bind(hold)
    .fetch_one(&worker.pool)
    .await?;
    Ok(axum::Json(mission))
}

/// Put a mission on moderation hold: a saga that completes it then fails to attach its reward
/// and compensates (the reward is revoked, the mission reopened).
#[utoipa::path(
    post,
    path = "/v1/missions/{id}/hold",
    params(("id" = String, Path, description = "The mission's id")),
    responses(
        (status = 200, description = "The mission, on hold", body = Mission),
        (status = 404, description = "No such mission", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn hold_mission(
    State(worker): State<MissionWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Mission>, ApiError> {
    set_hold(&worker, &id, true).await
}

/// Release a mission from moderation hold.
#[utoipa::path(
    delete,
    path = "/v1/missions/{id}/hold",
    params(("id" = String, Path, description = "The mission's id")),
    responses(
        (status = 200, description = "The mission, released", body = Mission),
        (status = 404, description = "No such mission", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "missions"
)]
async fn release_mission(
    State(worker): State<MissionWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Mission>, ApiError> {
    set_hold(&worker, &id, false).await
}
