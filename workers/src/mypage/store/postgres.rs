//! The Mypage view's SQL on PostgreSQL (schema `mypage`, the pool's `search_path`).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row as _};
use uuid::Uuid;

use super::{
    After, DROP_CHUNK, Filter, Generation, GenerationState, Snapshot, ViewLock, parse_kind,
};
use crate::mypage::view::{Row, RowKey, Version, Versions, Wallet};

type Tx = sqlx::Transaction<'static, Postgres>;

/// Rows written per statement.
const WRITE_CHUNK: usize = 1_000;

macro_rules! row_columns {
    () => {
        "kind, item_id, customer_id, mission_status, reward_id, reward_points, telegram_id, \
         notification_status, telegram_message_id, gift_id, gift_name, voucher_code, \
         gift_status, exchange_state, updated_at, mission_version, reward_version, \
         notification_version"
    };
}

macro_rules! generation_columns {
    () => {
        "generation, state, applied_through, replayed, started_at, finished_at"
    };
}

macro_rules! serving {
    () => {
        "(SELECT serving_generation FROM mypage_view WHERE id = 1)"
    };
}

fn row_of(r: &PgRow) -> Result<Row, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    let version = |column: &str| -> Result<Option<Version>, sqlx::Error> {
        Ok(r.try_get::<Option<String>, _>(column)?.map(Version))
    };
    Ok(Row {
        key: RowKey {
            kind: parse_kind(&kind)?,
            item_id: r.try_get("item_id")?,
        },
        customer_id: r.try_get("customer_id")?,
        mission_status: r.try_get("mission_status")?,
        reward_id: r.try_get("reward_id")?,
        reward_points: r.try_get("reward_points")?,
        telegram_id: r.try_get("telegram_id")?,
        notification_status: r.try_get("notification_status")?,
        telegram_message_id: r.try_get("telegram_message_id")?,
        gift_id: r.try_get("gift_id")?,
        gift_name: r.try_get("gift_name")?,
        voucher_code: r.try_get("voucher_code")?,
        gift_status: r.try_get("gift_status")?,
        exchange_state: r.try_get("exchange_state")?,
        updated_at: r.try_get("updated_at")?,
        versions: Versions {
            mission: version("mission_version")?,
            reward: version("reward_version")?,
            notification: version("notification_version")?,
        },
    })
}

fn wallet_of(r: &PgRow) -> Result<Wallet, sqlx::Error> {
    Ok(Wallet {
        customer_id: r.try_get("customer_id")?,
        balance: r.try_get("balance")?,
        version: Version(r.try_get("version")?),
        updated_at: r.try_get("updated_at")?,
    })
}

fn generation_of(r: &PgRow) -> Result<Generation, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(Generation {
        generation: r.try_get("generation")?,
        state: GenerationState::parse(&state)?,
        applied_through: r.try_get("applied_through")?,
        replayed: r.try_get("replayed")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

pub(super) async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

pub(super) async fn mission(pool: &PgPool, id: Uuid) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        row_columns!(),
        " FROM mypage_rows WHERE generation = ",
        serving!(),
        " AND kind = 'mission' AND item_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(row_of)
    .transpose()
}

pub(super) async fn list(
    pool: &PgPool,
    filter: &Filter,
    after: Option<After>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let mut q = QueryBuilder::<Postgres>::new(concat!(
        "SELECT ",
        row_columns!(),
        " FROM mypage_rows WHERE generation = ",
        serving!(),
        " AND "
    ));
    match filter {
        Filter::Customer(customer) => q.push("customer_id = ").push_bind(customer.clone()),
        Filter::Reward(reward) => q.push("reward_id = ").push_bind(*reward),
        Filter::Telegram(notification) => q.push("telegram_id = ").push_bind(*notification),
    };
    if let Some(after) = after {
        q.push(" AND (item_id, kind) < (")
            .push_bind(after.item_id)
            .push(", ")
            .push_bind(after.kind.as_str())
            .push(")");
    }
    q.push(" ORDER BY item_id DESC, kind DESC LIMIT ")
        .push_bind(limit);
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(row_of)
        .collect()
}

pub(super) async fn balance(pool: &PgPool, customer: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT balance FROM mypage_wallets WHERE generation = ",
        serving!(),
        " AND customer_id = $1"
    ))
    .bind(customer)
    .fetch_optional(pool)
    .await
}

pub(super) async fn serving(pool: &PgPool) -> Result<Generation, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        generation_columns!(),
        " FROM mypage_generations WHERE generation = ",
        serving!()
    ))
    .fetch_one(pool)
    .await?;
    generation_of(&row)
}

pub(super) async fn latest_rebuild(pool: &PgPool) -> Result<Option<Generation>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        generation_columns!(),
        " FROM mypage_generations WHERE generation > 1 ORDER BY generation DESC LIMIT 1"
    ))
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(generation_of)
    .transpose()
}

pub(super) async fn rebuild_state(pool: &PgPool) -> Result<(i64, Option<Generation>), sqlx::Error> {
    let row = sqlx::query(
        "SELECT v.serving_generation, g.generation, g.state, g.applied_through, g.replayed, \
         g.started_at, g.finished_at FROM mypage_view v LEFT JOIN mypage_generations g \
         ON g.generation = (SELECT MAX(generation) FROM mypage_generations WHERE generation > 1) \
         WHERE v.id = 1",
    )
    .fetch_one(pool)
    .await?;
    let serving = row.try_get("serving_generation")?;
    let latest = match row.try_get::<Option<i64>, _>("generation")? {
        Some(_) => Some(generation_of(&row)?),
        None => None,
    };
    Ok((serving, latest))
}

pub(super) async fn drop_retired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let retired: Vec<i64> = sqlx::query_scalar(
        "SELECT generation FROM mypage_generations WHERE state = 'retired' ORDER BY generation",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = 0;
    for generation in retired {
        loop {
            let rows = sqlx::query(
                "DELETE FROM mypage_rows WHERE ctid IN \
                 (SELECT ctid FROM mypage_rows WHERE generation = $1 LIMIT $2)",
            )
            .bind(generation)
            .bind(DROP_CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
            let wallets = sqlx::query(
                "DELETE FROM mypage_wallets WHERE ctid IN \
                 (SELECT ctid FROM mypage_wallets WHERE generation = $1 LIMIT $2)",
            )
            .bind(generation)
            .bind(DROP_CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
            dropped += rows + wallets;
            if rows + wallets == 0 {
                break;
            }
        }
        sqlx::query(
            "UPDATE mypage_generations SET state = 'dropped' \
             WHERE generation = $1 AND state = 'retired'",
        )
        .bind(generation)
        .execute(pool)
        .await?;
    }
    Ok(dropped)
}

pub(super) async fn snapshot(pool: &PgPool, generation: i64) -> Result<Snapshot, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        row_columns!(),
        " FROM mypage_rows WHERE generation = $1 ORDER BY kind, item_id"
    ))
    .bind(generation)
    .fetch_all(pool)
    .await?
    .iter()
    .map(row_of)
    .collect::<Result<_, _>>()?;
    let wallets = sqlx::query(
        "SELECT customer_id, balance, version, updated_at FROM mypage_wallets \
         WHERE generation = $1 ORDER BY customer_id",
    )
    .bind(generation)
    .fetch_all(pool)
    .await?
    .iter()
    .map(wallet_of)
    .collect::<Result<_, _>>()?;
    Ok(Snapshot { rows, wallets })
}

pub(super) async fn lock_view(tx: &mut Tx) -> Result<ViewLock, sqlx::Error> {
    let row = sqlx::query(
        "SELECT serving_generation, dead_lettered_through FROM mypage_view \
         WHERE id = 1 FOR UPDATE",
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(ViewLock {
        serving: row.try_get("serving_generation")?,
        dead_lettered_through: row.try_get("dead_lettered_through")?,
    })
}

pub(super) async fn generation(
    tx: &mut Tx,
    generation: i64,
) -> Result<Option<Generation>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        generation_columns!(),
        " FROM mypage_generations WHERE generation = $1"
    ))
    .bind(generation)
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(generation_of)
    .transpose()
}

pub(super) async fn building(tx: &mut Tx) -> Result<Option<Generation>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        generation_columns!(),
        " FROM mypage_generations WHERE state = 'building' ORDER BY generation LIMIT 1"
    ))
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(generation_of)
    .transpose()
}

pub(super) async fn new_generation(
    tx: &mut Tx,
    now: DateTime<Utc>,
) -> Result<Generation, sqlx::Error> {
    let row = sqlx::query(concat!(
        "INSERT INTO mypage_generations (generation, state, applied_through, replayed, started_at) \
         SELECT COALESCE(MAX(generation), 0) + 1, 'building', 0, 0, $1 FROM mypage_generations \
         RETURNING ",
        generation_columns!()
    ))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    generation_of(&row)
}

pub(super) async fn load(
    tx: &mut Tx,
    generation: i64,
    keys: &[RowKey],
    customers: &[String],
) -> Result<(Vec<Row>, Vec<Wallet>), sqlx::Error> {
    let mut rows = Vec::new();
    if !keys.is_empty() {
        let wanted: BTreeSet<&RowKey> = keys.iter().collect();
        let ids: Vec<Uuid> = keys.iter().map(|k| k.item_id).collect();
        // Every column of the primary key (generation, kind, item_id) bound: the lookups are
        // index point reads, not a range over the whole generation.
        let kinds: BTreeSet<&str> = keys.iter().map(|k| k.kind.as_str()).collect();
        let kinds: Vec<&str> = kinds.into_iter().collect();
        for row in sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM mypage_rows WHERE generation = $1 AND kind = ANY($3) AND item_id = ANY($2)"
        ))
        .bind(generation)
        .bind(&ids)
        .bind(&kinds)
        .fetch_all(&mut **tx)
        .await?
        {
            let row = row_of(&row)?;
            if wanted.contains(&row.key) {
                rows.push(row);
            }
        }
    }
    let mut wallets = Vec::new();
    if !customers.is_empty() {
        for row in sqlx::query(
            "SELECT customer_id, balance, version, updated_at FROM mypage_wallets \
             WHERE generation = $1 AND customer_id = ANY($2)",
        )
        .bind(generation)
        .bind(customers)
        .fetch_all(&mut **tx)
        .await?
        {
            wallets.push(wallet_of(&row)?);
        }
    }
    Ok((rows, wallets))
}

pub(super) async fn write(
    tx: &mut Tx,
    generation: i64,
    rows: &[Row],
    wallets: &[Wallet],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(WRITE_CHUNK) {
        let mut q = QueryBuilder::<Postgres>::new(concat!(
            "INSERT INTO mypage_rows (generation, ",
            row_columns!(),
            ") "
        ));
        q.push_values(chunk, |mut b, row| {
            let version = |v: &Option<Version>| v.as_ref().map(|v| v.0.clone());
            b.push_bind(generation)
                .push_bind(row.key.kind.as_str())
                .push_bind(row.key.item_id)
                .push_bind(row.customer_id.clone())
                .push_bind(row.mission_status.clone())
                .push_bind(row.reward_id)
                .push_bind(row.reward_points)
                .push_bind(row.telegram_id)
                .push_bind(row.notification_status.clone())
                .push_bind(row.telegram_message_id)
                .push_bind(row.gift_id)
                .push_bind(row.gift_name.clone())
                .push_bind(row.voucher_code.clone())
                .push_bind(row.gift_status.clone())
                .push_bind(row.exchange_state.clone())
                .push_bind(row.updated_at)
                .push_bind(version(&row.versions.mission))
                .push_bind(version(&row.versions.reward))
                .push_bind(version(&row.versions.notification));
        });
        q.push(
            " ON CONFLICT (generation, kind, item_id) DO UPDATE SET \
             customer_id = EXCLUDED.customer_id, mission_status = EXCLUDED.mission_status, \
             reward_id = EXCLUDED.reward_id, reward_points = EXCLUDED.reward_points, \
             telegram_id = EXCLUDED.telegram_id, \
             notification_status = EXCLUDED.notification_status, \
             telegram_message_id = EXCLUDED.telegram_message_id, gift_id = EXCLUDED.gift_id, \
             gift_name = EXCLUDED.gift_name, voucher_code = EXCLUDED.voucher_code, \
             gift_status = EXCLUDED.gift_status, exchange_state = EXCLUDED.exchange_state, \
             updated_at = EXCLUDED.updated_at, mission_version = EXCLUDED.mission_version, \
             reward_version = EXCLUDED.reward_version, \
             notification_version = EXCLUDED.notification_version",
        );
        q.build().execute(&mut **tx).await?;
    }
    for chunk in wallets.chunks(WRITE_CHUNK) {
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO mypage_wallets (generation, customer_id, balance, version, updated_at) ",
        );
        q.push_values(chunk, |mut b, wallet| {
            b.push_bind(generation)
                .push_bind(wallet.customer_id.clone())
                .push_bind(wallet.balance)
                .push_bind(wallet.version.0.clone())
                .push_bind(wallet.updated_at);
        });
        q.push(
            " ON CONFLICT (generation, customer_id) DO UPDATE SET balance = EXCLUDED.balance, \
             version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
        );
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

pub(super) async fn advance(
    tx: &mut Tx,
    generation: i64,
    through: i64,
    replayed: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE mypage_generations SET applied_through = GREATEST(applied_through, $2), \
         replayed = replayed + $3 WHERE generation = $1",
    )
    .bind(generation)
    .bind(through)
    .bind(replayed)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn dead_lettered(tx: &mut Tx, through: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE mypage_view SET dead_lettered_through = GREATEST(dead_lettered_through, $1) \
         WHERE id = 1",
    )
    .bind(through)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn switch(
    tx: &mut Tx,
    from: i64,
    to: i64,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE mypage_view SET serving_generation = $1 WHERE id = 1")
        .bind(to)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE mypage_generations SET state = 'serving', finished_at = $2 WHERE generation = $1",
    )
    .bind(to)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE mypage_generations SET state = 'retired' WHERE generation = $1")
        .bind(from)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
