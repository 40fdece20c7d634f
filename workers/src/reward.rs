//! The reward worker: owns rewards, wallets (with their ledger) and the reward budget. Its saga
//! steps grant a reward (credit the wallet, spend budget) and revoke it (debit, give the budget
//! back), idempotent per saga and per reward. Business refusals a user can cause on purpose: an
//! exhausted budget (`PUT /v1/rewards/budget`) and a frozen wallet
//! (`POST /v1/wallets/{customer_id}/freeze`).

use std::sync::Arc;

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use contracts::command::{GrantRewardV1, RevokeRewardV1};
use contracts::reply::{RewardGrantedV1, output_of};
use contracts::{Command, CustomerId, Envelope, Reply, RewardId, SagaId, StepFailure, Worker};
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

/// The reward worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/reward");

/// A reward.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Reward {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The saga that granted it.
    #[schema(value_type = String, format = Uuid)]
    pub saga_id: Uuid,
    /// The mission it pays for.
    #[schema(value_type = String, format = Uuid)]
    pub mission_id: Uuid,
    /// Who got it.
    pub customer_id: String,
    /// How many points.
    pub points: i64,
    /// `GRANTED` or `REVOKED`.
    pub status: String,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A wallet with its latest entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Wallet {
    /// Its owner.
    pub customer_id: String,
    /// Points held.
    pub balance: i64,
    /// Whether credits are refused.
    pub frozen: bool,
    /// The latest 50 entries, newest first.
    pub entries: Vec<WalletEntry>,
}

/// One credit or debit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct WalletEntry {
    /// The reward it belongs to.
    #[schema(value_type = String, format = Uuid)]
    pub reward_id: Uuid,
    /// `credit` or `debit`.
    pub kind: String,
    /// Points moved.
    pub points: i64,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The reward budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// Points left to grant; `null` means no limit.
    pub remaining_points: Option<i64>,
}

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
        OpenApiRouter::new()
            .routes(routes!(get_wallet))
            .routes(routes!(freeze_wallet))
            .routes(routes!(unfreeze_wallet))
            .routes(routes!(get_budget, set_budget))
            .routes(routes!(get_reward))
            .with_state(self.clone())
            .split_for_parts()
    }

    /// Handles commands until `shutdown`.
    pub async fn run(
        self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        context.run_commands(Arc::new(self), shutdown).await
    }

    async fn grant(
        conn: &mut PgConnection,
        saga: SagaId,
        c: &GrantRewardV1,
    ) -> Result<Handled, HandlerError> {
        let existing: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM rewards WHERE saga_id = $1")
                .bind(saga.0)
                .fetch_optional(&mut *conn)
                .await?;
        let granted = |id: Uuid| {
            Handled::reply(Reply::Succeeded {
                output: output_of(&RewardGrantedV1 {
                    reward_id: RewardId(id),
                }),
            })
        };
        if let Some(id) = existing {
            return Ok(granted(id));
        }
        if c.reward_points <= 0 {
            return Ok(refuse(
                "invalid_points",
                format!("reward_points must be positive; got {}", c.reward_points),
            ));
        }
        let frozen: Option<bool> =
            sqlx::query_scalar("SELECT frozen FROM wallets WHERE customer_id = $1")
                .bind(c.customer_id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        if frozen == Some(true) {
            return Ok(refuse(
                "wallet_frozen",
                format!("the wallet of {} is frozen", c.customer_id),
            ));
        }
        let limited: Option<i64> = sqlx::query_scalar("SELECT remaining_points FROM budget")
            .fetch_one(&mut *conn)
            .await?;
        if limited.is_some() {
            let spent = sqlx::query(
                "UPDATE budget SET remaining_points = remaining_points - $1, updated_at = now() \
                 WHERE remaining_points >= $1",
            )
            .bind(c.reward_points)
            .execute(&mut *conn)
            .await?;
            if spent.rows_affected() == 0 {
                return Ok(refuse(
                    "budget_exhausted",
                    format!("the reward budget cannot pay {} points", c.reward_points),
                ));
            }
        }
        let id = RewardId::new().0;
        sqlx::query(
            "INSERT INTO rewards (id, saga_id, mission_id, customer_id, points, status) \
             VALUES ($1, $2, $3, $4, $5, 'GRANTED')",
        )
        .bind(id)
        .bind(saga.0)
        .bind(c.mission_id.0)
        .bind(c.customer_id.as_str())
        .bind(c.reward_points)
        .execute(&mut *conn)
        .await?;
        move_points(conn, c.customer_id.as_str(), id, "credit", c.reward_points).await?;
        Ok(granted(id))
    }

    async fn revoke(conn: &mut PgConnection, c: &RevokeRewardV1) -> Result<Handled, HandlerError> {
        let reward: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT customer_id, points, status FROM rewards WHERE id = $1 FOR UPDATE",
        )
        .bind(c.reward_id.0)
        .fetch_optional(&mut *conn)
        .await?;
        let done = Handled::reply(Reply::Succeeded { output: Map::new() });
        let Some((customer, points, status)) = reward else {
            return Ok(done);
        };
        if status == "REVOKED" {
            return Ok(done);
        }
        sqlx::query("UPDATE rewards SET status = 'REVOKED', revoked_at = now() WHERE id = $1")
            .bind(c.reward_id.0)
            .execute(&mut *conn)
            .await?;
        move_points(conn, &customer, c.reward_id.0, "debit", -points).await?;
        sqlx::query(
            "UPDATE budget SET remaining_points = remaining_points + $1, updated_at = now() \
             WHERE remaining_points IS NOT NULL",
        )
        .bind(points)
        .execute(&mut *conn)
        .await?;
        Ok(done)
    }
}

fn refuse(code: &str, message: String) -> Handled {
    Handled::reply(Reply::Failed(StepFailure::permanent(code, message)))
}

/// Books one ledger entry and moves the balance; the ledger's `(reward_id, kind)` key makes a
/// second booking of the same entry impossible.
async fn move_points(
    conn: &mut PgConnection,
    customer: &str,
    reward: Uuid,
    kind: &str,
    delta: i64,
) -> Result<(), sqlx::Error> {
    let booked = sqlx::query(
        "INSERT INTO wallet_entries (customer_id, reward_id, kind, points) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (reward_id, kind) DO NOTHING",
    )
    .bind(customer)
    .bind(reward)
    .bind(kind)
    .bind(delta)
    .execute(&mut *conn)
    .await?;
    if booked.rows_affected() == 1 {
        sqlx::query(
            "INSERT INTO wallets (customer_id, balance) VALUES ($1, $2) \
             ON CONFLICT (customer_id) DO UPDATE SET balance = wallets.balance + $2, updated_at = now()",
        )
        .bind(customer)
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
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
            Command::GrantReward(c) => Self::grant(conn, command.saga_id, c).await,
            Command::RevokeReward(c) => Self::revoke(conn, c).await,
            other => Err(HandlerError::Fatal(format!(
                "the reward worker does not handle {}",
                other.action().name()
            ))),
        }
    }
}

async fn wallet(pool: &PgPool, customer: &CustomerId) -> Result<Wallet, ApiError> {
    let row: Option<(i64, bool)> =
        sqlx::query_as("SELECT balance, frozen FROM wallets WHERE customer_id = $1")
            .bind(customer.as_str())
            .fetch_optional(pool)
            .await?;
    let (balance, frozen) = row.unwrap_or((0, false));
    let entries: Vec<WalletEntry> = sqlx::query_as(
        "SELECT reward_id, kind, points, created_at FROM wallet_entries WHERE customer_id = $1 \
         ORDER BY id DESC LIMIT 50",
    )
    .bind(customer.as_str())
    .fetch_all(pool)
    .await?;
    Ok(Wallet {
        customer_id: customer.to_string(),
        balance,
        frozen,
        entries,
    })
}

/// Read a customer's wallet (a customer never credited has an empty one).
#[utoipa::path(
    get,
    path = "/v1/wallets/{customer_id}",
    params(("customer_id" = String, Path, description = "The customer")),
    responses(
        (status = 200, description = "The wallet", body = Wallet),
        (status = 422, description = "Not a valid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "wallets"
)]
async fn get_wallet(
    State(worker): State<RewardWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Wallet>, ApiError> {
    wallet(&worker.pool, &id.parse::<CustomerId>()?)
        .await
        .map(axum::Json)
}

async fn set_frozen(
    worker: &RewardWorker,
    id: &str,
    frozen: bool,
) -> Result<axum::Json<Wallet>, ApiError> {
    let customer = id.parse::<CustomerId>()?;
    sqlx::query(
        "INSERT INTO wallets (customer_id, frozen) VALUES ($1, $2) \
         ON CONFLICT (customer_id) DO UPDATE SET frozen = $2, updated_at = now()",
    )
    .bind(customer.as_str())
    .bind(frozen)
    .execute(&worker.pool)
    .await?;
    wallet(&worker.pool, &customer).await.map(axum::Json)
}

/// Freeze a wallet: grants to it are refused (and their sagas compensate); revocations still
/// debit it.
#[utoipa::path(
    post,
    path = "/v1/wallets/{customer_id}/freeze",
    params(("customer_id" = String, Path, description = "The customer")),
    responses(
        (status = 200, description = "The wallet, frozen", body = Wallet),
        (status = 422, description = "Not a valid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "wallets"
)]
async fn freeze_wallet(
    State(worker): State<RewardWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Wallet>, ApiError> {
    set_frozen(&worker, &id, true).await
}

/// Unfreeze a wallet.
#[utoipa::path(
    post,
    path = "/v1/wallets/{customer_id}/unfreeze",
    params(("customer_id" = String, Path, description = "The customer")),
    responses(
        (status = 200, description = "The wallet, unfrozen", body = Wallet),
        (status = 422, description = "Not a valid customer id", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "wallets"
)]
async fn unfreeze_wallet(
    State(worker): State<RewardWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Wallet>, ApiError> {
    set_frozen(&worker, &id, false).await
}

/// Read the reward budget.
#[utoipa::path(
    get,
    path = "/v1/rewards/budget",
    responses((status = 200, description = "The budget", body = Budget)),
    tag = "rewards"
)]
async fn get_budget(State(worker): State<RewardWorker>) -> Result<axum::Json<Budget>, ApiError> {
    let remaining_points = sqlx::query_scalar("SELECT remaining_points FROM budget")
        .fetch_one(&worker.pool)
        .await?;
    Ok(axum::Json(Budget { remaining_points }))
}

/// Set the reward budget: points left to grant, or `null` for no limit.
#[utoipa::path(
    put,
    path = "/v1/rewards/budget",
    request_body = Budget,
    responses(
        (status = 200, description = "The budget", body = Budget),
        (status = 422, description = "Negative budget", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "rewards"
)]
async fn set_budget(
    State(worker): State<RewardWorker>,
    ApiJson(body): ApiJson<Budget>,
) -> Result<axum::Json<Budget>, ApiError> {
    if body.remaining_points.is_some_and(|p| p < 0) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "remaining_points must be 0 or more, or null",
        ));
    }
    sqlx::query("UPDATE budget SET remaining_points = $1, updated_at = now()")
        .bind(body.remaining_points)
        .execute(&worker.pool)
        .await?;
    Ok(axum::Json(body))
}

/// Read a reward.
#[utoipa::path(
    get,
    path = "/v1/rewards/{id}",
    params(("id" = String, Path, description = "The reward's id")),
    responses(
        (status = 200, description = "The reward", body = Reward),
        (status = 404, description = "No such reward", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "rewards"
)]
async fn get_reward(
    State(worker): State<RewardWorker>,
    Path(id): Path<String>,
) -> Result<axum::Json<Reward>, ApiError> {
    let not_found = || ApiError::not_found("reward_not_found", format!("no reward {id}"));
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    sqlx::query_as(
        "SELECT id, saga_id, mission_id, customer_id, points, status, granted_at, revoked_at \
         FROM rewards WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&worker.pool)
    .await?
    .map(axum::Json)
    .ok_or_else(not_found)
}
