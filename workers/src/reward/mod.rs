//! The reward worker: owns rewards and the reward budget. Its saga steps grant a reward (spend
//! budget) and revoke it (give the budget back), idempotent per saga and per reward, and publish
//! `RewardGranted` and `RewardRevoked`. The business refusal a user can cause on purpose: an
//! exhausted budget (`PUT /v1/rewards/budget`). Its routes are in [`api`], its SQL in [`store`].
//!
//! The wallet is its own context now: `mission_reward` version 2 pays the reward with a
//! `wallet.credit` step. Version 1 of the grant and revoke commands (sagas that started before
//! the wallet moved out) moved the wallet themselves; their events say `moves_wallet`, and the
//! wallet books them from the event, once per reward.

pub mod api;
pub mod store;

use std::sync::Arc;

use contracts::command::{GrantRewardV1, RevokeRewardV1};
use contracts::event::{RewardGrantedV1 as Granted, RewardRevokedV1 as Revoked};
use contracts::reply::{RewardGrantedV1, output_of};
use contracts::{
    Command, DomainEvent, Envelope, MissionId, Reply, RewardId, SagaId, StepFailure, Worker,
};
use serde_json::Map;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::runtime::{Handled, Handler, HandlerError, WorkerContext};

/// The reward worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/reward");

/// The reward worker.
#[derive(Clone, Debug)]
pub struct RewardWorker {
    pool: PgPool,
}

impl RewardWorker {
    /// A worker over its pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The public routes and their OpenAPI description.
    pub fn api(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        api::router(self.pool.clone())
    }

    /// Handles commands until `shutdown`.
    pub async fn run(
        self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        context.run_commands(Arc::new(self), shutdown).await
    }

    /// Grants the saga's reward; `moves_wallet` for version 1 of the command.
    async fn grant(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &GrantRewardV1,
        moves_wallet: bool,
    ) -> Result<Handled, HandlerError> {
        let granted = |id: Uuid| Reply::Succeeded {
            output: output_of(&RewardGrantedV1 {
                reward_id: RewardId(id),
            }),
        };
        if let Some(id) = store::granted_by(conn, saga).await? {
            return Ok(Handled::reply(granted(id)));
        }
        if c.reward_points <= 0 {
            return Ok(refuse(
                "invalid_points",
                format!("reward_points must be positive; got {}", c.reward_points),
            ));
        }
        if !store::spend_budget(conn, c.reward_points).await? {
            return Ok(refuse(
                "budget_exhausted",
                format!("the reward budget cannot pay {} points", c.reward_points),
            ));
        }
        let id =
            store::insert_reward(conn, saga, c.mission_id, &c.customer_id, c.reward_points).await?;
        let event = DomainEvent::RewardGranted(Granted {
            reward_id: RewardId(id),
            mission_id: c.mission_id,
            customer_id: c.customer_id.clone(),
            points: c.reward_points,
            moves_wallet,
        });
        Ok(Handled::with_events(granted(id), vec![event]))
    }

    /// Revokes a reward and gives its points back to the budget; `moves_wallet` for version 1.
    async fn revoke(
        conn: &mut PgConnection,
        c: &RevokeRewardV1,
        moves_wallet: bool,
    ) -> Result<Handled, HandlerError> {
        let done = Reply::Succeeded { output: Map::new() };
        let Some(reward) = store::lock_reward(conn, c.reward_id).await? else {
            return Ok(Handled::reply(done));
        };
        if reward.status == "REVOKED" {
            return Ok(Handled::reply(done));
        }
        store::revoke_reward(conn, c.reward_id).await?;
        store::refund_budget(conn, reward.points).await?;
        let customer_id = reward
            .customer_id
            .parse()
            .map_err(|_| HandlerError::Fatal("stored customer id is invalid".into()))?;
        let event = DomainEvent::RewardRevoked(Revoked {
            reward_id: c.reward_id,
            mission_id: MissionId(reward.mission_id),
            customer_id,
            points: reward.points,
            moves_wallet,
        });
        Ok(Handled::with_events(done, vec![event]))
    }
}

fn refuse(code: &str, message: String) -> Handled {
    Handled::reply(Reply::Failed(StepFailure::permanent(code, message)))
}

impl Handler for RewardWorker {
    fn worker(&self) -> Worker {
        Worker::Reward
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        command: &Envelope<Command>,
    ) -> Result<Handled, HandlerError> {
        match &command.body {
            Command::GrantReward(c) => Self::grant(conn, command.saga_id, c, true).await,
            Command::GrantRewardV2(c) => Self::grant(conn, command.saga_id, c, false).await,
            Command::RevokeReward(c) => Self::revoke(conn, c, true).await,
            Command::RevokeRewardV2(c) => Self::revoke(conn, c, false).await,
            other => Err(HandlerError::not_mine(Worker::Reward, other)),
        }
    }
}
