//! Every SQL statement of the mission context: missions as typed rows in and out.

use chrono::{DateTime, Utc};
use contracts::{CustomerId, MissionId, NotificationId, SagaId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

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

impl Mission {
    /// Whether `saga` completed this mission (every later step of that saga is idempotent
    /// against it).
    pub fn completed_by(&self, saga: SagaId) -> bool {
        self.saga_id == Some(saga.0)
    }
}

/// The columns of a [`Mission`], for `SELECT` and `RETURNING`.
macro_rules! mission_columns {
    () => {
        "id, customer_id, title, reward_points, status, on_hold, saga_id, reward_id, \
         notification_id, notification_status, message_recorded_at, created_at, updated_at"
    };
}

/// One mission, locked for the rest of the transaction when `lock`.
pub async fn load(
    conn: &mut PgConnection,
    id: MissionId,
    lock: bool,
) -> Result<Option<Mission>, sqlx::Error> {
    let sql = if lock {
        concat!(
            "SELECT ",
            mission_columns!(),
            " FROM missions WHERE id = $1 FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            mission_columns!(),
            " FROM missions WHERE id = $1"
        )
    };
    sqlx::query_as(sql).bind(id.0).fetch_optional(conn).await
}

/// One mission, read from the pool.
pub async fn get(pool: &PgPool, id: MissionId) -> Result<Option<Mission>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    load(&mut conn, id, false).await
}

/// Whether a mission exists.
pub async fn exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM missions WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Sets a mission's status, completing saga and reward.
pub async fn set_status(
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

/// Records what the customer was told about a mission.
pub async fn record_message(
    conn: &mut PgConnection,
    id: Uuid,
    notification: Option<NotificationId>,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE missions SET notification_id = $2, notification_status = $3, \
         message_recorded_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(notification.map(|n| n.0))
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates an OPEN mission.
pub async fn insert(
    pool: &PgPool,
    customer: &CustomerId,
    title: &str,
    reward_points: i64,
) -> Result<Mission, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO missions (id, customer_id, title, reward_points, status) \
         VALUES ($1, $2, $3, $4, 'OPEN') RETURNING ",
        mission_columns!()
    ))
    .bind(MissionId::new().0)
    .bind(customer.as_str())
    .bind(title)
    .bind(reward_points)
    .fetch_one(pool)
    .await
}

/// Puts a mission on moderation hold or releases it.
pub async fn set_hold(pool: &PgPool, id: Uuid, hold: bool) -> Result<Mission, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE missions SET on_hold = $2, updated_at = now() WHERE id = $1 RETURNING ",
        mission_columns!()
    ))
    .bind(id)
    .bind(hold)
    .fetch_one(pool)
    .await
}
