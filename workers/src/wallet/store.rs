//! Every SQL statement of the wallet context: balances and their ledger. A move locks the
//! customer's wallet row first, so moves of one customer are serialized and a balance is never
//! taken below zero, however many run at once.

use chrono::{DateTime, Utc};
use contracts::{CustomerId, RewardId, SagaId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// Which way points move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Into the wallet.
    Credit,
    /// Out of the wallet.
    Debit,
}

impl Direction {
    /// As stored in `wallet_entries.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Credit => "credit",
            Direction::Debit => "debit",
        }
    }

    /// The signed change of the balance for `points`.
    fn delta(self, points: i64) -> i64 {
        match self {
            Direction::Credit => points,
            Direction::Debit => -points,
        }
    }
}

/// What makes an entry unique: one per saga step and direction (the wallet's own commands), or
/// one per reward and direction (version-1 rewards, booked from the reward context's events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKey {
    /// A step of a saga.
    Step {
        /// The saga.
        saga: SagaId,
        /// The step's index in its definition.
        step_index: u16,
    },
    /// A version-1 reward.
    Reward(RewardId),
}

/// A wallet's balance and whether it is frozen, locked for the rest of the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Locked {
    /// Points held.
    pub balance: i64,
    /// Whether the wallet refuses moves a saga asks for going forward.
    pub frozen: bool,
}

/// The outcome of [`book`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Booked {
    /// The entry was booked now; the balance after it.
    Now(i64),
    /// The entry was booked before (a re-sent command); the balance after it then.
    Before(i64),
    /// A debit the balance cannot pay; the balance.
    Insufficient(i64),
}

/// Locks the customer's wallet, creating an empty one when missing.
pub async fn lock(conn: &mut PgConnection, customer: &CustomerId) -> Result<Locked, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO wallets (customer_id) VALUES ($1) \
         ON CONFLICT (customer_id) DO UPDATE SET customer_id = excluded.customer_id \
         RETURNING balance, frozen",
    )
    .bind(customer.as_str())
    .fetch_one(conn)
    .await
}

/// The balance after the entry `key` booked in `direction`, if it was booked.
pub async fn booked(
    conn: &mut PgConnection,
    key: EntryKey,
    direction: Direction,
) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<Option<i64>> = match key {
        EntryKey::Step { saga, step_index } => {
            sqlx::query_scalar(
                "SELECT balance_after FROM wallet_entries \
                 WHERE saga_id = $1 AND step_index = $2 AND kind = $3",
            )
            .bind(saga.0)
            .bind(small(step_index))
            .bind(direction.as_str())
            .fetch_optional(conn)
            .await?
        }
        EntryKey::Reward(reward) => {
            sqlx::query_scalar(
                "SELECT balance_after FROM wallet_entries WHERE reward_id = $1 AND kind = $2",
            )
            .bind(reward.0)
            .bind(direction.as_str())
            .fetch_optional(conn)
            .await?
        }
    };
    Ok(row.map(Option::unwrap_or_default))
}

/// Books `points` in `direction` once per `key`, on a wallet the caller locked with [`lock`].
pub async fn book(
    conn: &mut PgConnection,
    customer: &CustomerId,
    wallet: Locked,
    key: EntryKey,
    direction: Direction,
    points: i64,
) -> Result<Booked, sqlx::Error> {
    if let Some(after) = booked(conn, key, direction).await? {
        return Ok(Booked::Before(after));
    }
    let after = wallet.balance + direction.delta(points);
    if after < 0 {
        return Ok(Booked::Insufficient(wallet.balance));
    }
    let (saga, step, reward) = match key {
        EntryKey::Step { saga, step_index } => (Some(saga.0), Some(small(step_index)), None),
        EntryKey::Reward(reward) => (None, None, Some(reward.0)),
    };
    sqlx::query(
        "WITH entry AS (INSERT INTO wallet_entries \
             (customer_id, saga_id, step_index, reward_id, kind, points, balance_after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)) \
         UPDATE wallets SET balance = $7, updated_at = now() WHERE customer_id = $1",
    )
    .bind(customer.as_str())
    .bind(saga)
    .bind(step)
    .bind(reward)
    .bind(direction.as_str())
    .bind(direction.delta(points))
    .bind(after)
    .execute(conn)
    .await?;
    Ok(Booked::Now(after))
}

fn small(value: u16) -> i16 {
    i16::try_from(value).unwrap_or(i16::MAX)
}

/// One ledger entry as shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Entry {
    /// Its id.
    pub id: i64,
    /// `credit` or `debit`.
    pub kind: String,
    /// The change of the balance (negative for a debit).
    pub points: i64,
    /// The balance after it (absent for entries from before the wallet kept it).
    pub balance_after: Option<i64>,
    /// The saga whose step booked it.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub saga_id: Option<Uuid>,
    /// The version-1 reward it belongs to.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub reward_id: Option<Uuid>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A wallet's balance and state (zero and not frozen when it was never touched).
pub async fn wallet(pool: &PgPool, customer: &CustomerId) -> Result<(i64, bool), sqlx::Error> {
    let row: Option<(i64, bool)> =
        sqlx::query_as("SELECT balance, frozen FROM wallets WHERE customer_id = $1")
            .bind(customer.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(row.unwrap_or((0, false)))
}

/// A page of a wallet's entries, newest first, after the `(created_at, id)` of `after`.
pub async fn entries(
    pool: &PgPool,
    customer: &CustomerId,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let (at, id) = after.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    sqlx::query_as(
        "SELECT id, kind, points, balance_after, saga_id, reward_id, created_at \
         FROM wallet_entries WHERE customer_id = $1 \
         AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(customer.as_str())
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Freezes or unfreezes a wallet (creating it when missing).
pub async fn set_frozen(
    pool: &PgPool,
    customer: &CustomerId,
    frozen: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO wallets (customer_id, frozen) VALUES ($1, $2) \
         ON CONFLICT (customer_id) DO UPDATE SET frozen = $2, updated_at = now()",
    )
    .bind(customer.as_str())
    .bind(frozen)
    .execute(pool)
    .await?;
    Ok(())
}
