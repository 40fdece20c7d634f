//! The mission worker: owns missions. Its HTTP API ([`api`]) creates and reads missions and
//! puts them on (or off) moderation hold; its saga steps complete, reopen, attach and detach a
//! reward and record the message the customer got, each idempotent against the saga that
//! completed the mission; it publishes `MissionUpdated` after every change and
//! `MessageUpdated` when the message is recorded. All of its SQL is in [`store`].

pub mod api;
pub mod store;

use std::sync::Arc;

use contracts::command::{
    AttachRewardV1, CompleteMissionV1, DetachRewardV1, NotificationStatus, RecordMessageV1,
    ReopenMissionV1,
};
use contracts::event::{MessageUpdatedV1, MissionUpdatedV1};
use contracts::reply::{MissionCompletedV1, output_of};
use contracts::{
    Command, DomainEvent, Envelope, MissionId, Reply, RewardId, SagaId, StepFailure, Worker,
};
use serde_json::Map;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::runtime::{Handled, Handler, HandlerError, WorkerContext, lookups};
use store::Mission;

/// The mission worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mission");

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
        api::router(self.pool.clone())
    }

    /// Handles commands and answers `svc.mission.mission` look-ups until `shutdown`.
    pub async fn run(
        self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        let lookups = lookups::serve(
            context.nats.clone(),
            context.topology.lookup_subject(Worker::Mission, "mission"),
            "mission".into(),
            shutdown.clone(),
            move |id| {
                let pool = pool.clone();
                async move {
                    match id.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                        Some(id) => store::exists(&pool, id).await,
                        None => Ok(false),
                    }
                }
            },
        );
        let commands = context.run_commands(Arc::new(self), shutdown.clone());
        let (a, b) = tokio::join!(lookups, commands);
        a.and(b)
    }
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
    Handled::with_events(Reply::Succeeded { output: Map::new() }, events)
}

fn refuse(code: &str, message: String) -> Handled {
    Handled::reply(Reply::Failed(StepFailure::permanent(code, message)))
}

/// The mission, locked, when `saga` completed it; otherwise the refusal to reply with.
async fn owned(
    conn: &mut PgConnection,
    id: MissionId,
    saga: SagaId,
) -> Result<Result<Mission, Handled>, sqlx::Error> {
    let Some(mission) = store::load(conn, id, true).await? else {
        return Ok(Err(refuse("mission_not_found", format!("no mission {id}"))));
    };
    if !mission.completed_by(saga) {
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
        let Some(mission) = store::load(conn, c.mission_id, true).await? else {
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
        let succeeded = |events| {
            Handled::with_events(
                Reply::Succeeded {
                    output: output_of(&output),
                },
                events,
            )
        };
        if mission.completed_by(saga) && mission.status != "OPEN" {
            return Ok(succeeded(Vec::new()));
        }
        if mission.status != "OPEN" {
            return Ok(refuse(
                "mission_not_open",
                format!("mission {} is {}", mission.id, mission.status),
            ));
        }
        let mission = store::set_status(conn, mission.id, "COMPLETED", Some(saga.0), None).await?;
        Ok(succeeded(updated(&mission).into_iter().collect()))
    }

    async fn reopen(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &ReopenMissionV1,
    ) -> Result<Handled, HandlerError> {
        let Some(mission) = store::load(conn, c.mission_id, true).await? else {
            return Ok(ok(Vec::new()));
        };
        if !mission.completed_by(saga) || mission.status == "OPEN" {
            return Ok(ok(Vec::new()));
        }
        let mission = store::set_status(conn, mission.id, "OPEN", None, None).await?;
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
        let mission = store::set_status(
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
        let Some(mission) = store::load(conn, c.mission_id, true).await? else {
            return Ok(ok(Vec::new()));
        };
        if !mission.completed_by(saga) || mission.reward_id != Some(c.reward_id.0) {
            return Ok(ok(Vec::new()));
        }
        let mission = store::set_status(conn, mission.id, "COMPLETED", Some(saga.0), None).await?;
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
        store::record_message(conn, mission.id, c.notification_id, status.as_str()).await?;
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
            other => Err(HandlerError::not_mine(Worker::Mission, other)),
        }
    }
}
