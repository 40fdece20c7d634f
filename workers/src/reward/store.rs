//! Every SQL statement of the reward context: rewards and the reward budget.

use chrono::{DateTime, Utc};
use contracts::{CustomerId, MissionId, RewardId, SagaId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

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

/// The reward this saga granted, if any.
pub async fn granted_by(
    conn: &mut PgConnection,
    saga: SagaId,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM rewards WHERE saga_id = $1")
        .bind(saga.0)
        .fetch_optional(conn)
        .await
}

/// Spends `points` of a limited budget. `false` when the budget is limited and cannot pay.
pub async fn spend_budget(conn: &mut PgConnection, points: i64) -> Result<bool, sqlx::Error> {
    let limited: Option<i64> = sqlx::query_scalar("SELECT remaining_points FROM budget")
        .fetch_one(&mut *conn)
        .await?;
    if limited.is_none() {
        return Ok(true);
    }
    let spent = sqlx::query(
        "UPDATE budget SET remaining_points = remaining_points - $1, updated_at = now() \
         WHERE remaining_points >= $1",
    )
    .bind(points)
    .execute(conn)
    .await?;
    Ok(spent.rows_affected() == 1)
}

/// Gives `points` back to a limited budget.
pub async fn refund_budget(conn: &mut PgConnection, points: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE budget SET remaining_points = remaining_points + $1, updated_at = now() \
         WHERE remaining_points IS NOT NULL",
    )
    .bind(points)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a GRANTED reward.
pub async fn insert_reward(
    conn: &mut PgConnection,
    saga: SagaId,
    mission: MissionId,
    customer: &CustomerId,
    points: i64,
) -> Result<Uuid, sqlx::Error> {
    let id = RewardId::new().0;
    sqlx::query(
        "INSERT INTO rewards (id, saga_id, mission_id, customer_id, points, status) \
         VALUES ($1, $2, $3, $4, $5, 'GRANTED')",
    )
    .bind(id)
    .bind(saga.0)
    .bind(mission.0)
    .bind(customer.as_str())
    .bind(points)
    .execute(conn)
    .await?;
    Ok(id)
}

/// A reward, locked for the rest of the transaction.
pub async fn lock_reward(
    conn: &mut PgConnection,
    reward: RewardId,
) -> Result<Option<Reward>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, saga_id, mission_id, customer_id, points, status, granted_at, revoked_at \
         FROM rewards WHERE id = $1 FOR UPDATE",
    )
    .bind(reward.0)
    .fetch_optional(conn)
    .await
}

/// Marks a reward REVOKED.
pub async fn revoke_reward(conn: &mut PgConnection, reward: RewardId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE rewards SET status = 'REVOKED', revoked_at = now() WHERE id = $1")
        .bind(reward.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// Points left to grant; `None` means no limit.
pub async fn budget(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT remaining_points FROM budget")
        .fetch_one(pool)
        .await
}

/// Sets the budget.
pub async fn set_budget(pool: &PgPool, remaining: Option<i64>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE budget SET remaining_points = $1, updated_at = now()")
        .bind(remaining)
        .execute(pool)
        .await?;
    Ok(())
}

/// One reward.
pub async fn reward(pool: &PgPool, id: Uuid) -> Result<Option<Reward>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, saga_id, mission_id, customer_id, points, status, granted_at, revoked_at \
         FROM rewards WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}
