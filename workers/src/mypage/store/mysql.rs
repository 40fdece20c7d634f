//! The Mypage view's SQL on MariaDB (10.11): uuids as `CHAR(36)`, times as `DATETIME(6)` in
//! UTC, upserts with `INSERT ... ON DUPLICATE KEY UPDATE`, no `RETURNING`. Connections read
//! committed data (`READ COMMITTED`): every writer holds the `mypage_view` lock anyway.

use std::collections::BTreeSet;
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions, MySqlRow};
use sqlx::{
    AssertSqlSafe, ConnectOptions as _, Connection as _, Executor as _, MySql, MySqlPool,
    QueryBuilder, Row as _,
};
use uuid::Uuid;

use super::{
    After, DROP_CHUNK, Filter, Generation, GenerationState, MYSQL_MIGRATOR, Snapshot, ViewLock,
    parse_kind, parse_uuid,
};
use crate::mypage::view::{Row, RowKey, Version, Versions, Wallet};

type Tx = sqlx::Transaction<'static, MySql>;

/// Rows written per statement.
const WRITE_CHUNK: usize = 1_000;

/// MariaDB's error number for a database that does not exist.
const UNKNOWN_DATABASE: u16 = 1049;

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

/// Opens the pool, creating the database when it does not exist, and migrates it.
pub(super) async fn connect(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    let options =
        MySqlConnectOptions::from_str(url)?.log_statements(tracing::log::LevelFilter::Trace);
    if let Some(database) = options.get_database() {
        create_database_if_missing(url, &options, database).await?;
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    MYSQL_MIGRATOR.run(&pool).await?;
    Ok(pool)
}

async fn create_database_if_missing(
    url: &str,
    options: &MySqlConnectOptions,
    database: &str,
) -> Result<(), sqlx::Error> {
    let missing = match options.connect().await {
        Ok(conn) => {
            conn.close().await?;
            false
        }
        Err(error) => {
            let number = error
                .as_database_error()
                .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
                .map(MySqlDatabaseError::number);
            if number != Some(UNKNOWN_DATABASE) {
                return Err(error);
            }
            true
        }
    };
    if !missing {
        return Ok(());
    }
    if database.is_empty()
        || !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(sqlx::Error::Configuration(
            format!("database name {database:?} must be letters, digits and '_'").into(),
        ));
    }
    let mut server = reqwest::Url::parse(url)
        .map_err(|e| sqlx::Error::Configuration(format!("database URL: {e}").into()))?;
    server.set_path("");
    let mut conn = MySqlConnectOptions::from_str(server.as_str())?
        .connect()
        .await?;
    conn.execute(AssertSqlSafe(format!(
        "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    )))
    .await?;
    conn.close().await
}

fn uuid_of(r: &MySqlRow, column: &str) -> Result<Option<Uuid>, sqlx::Error> {
    r.try_get::<Option<String>, _>(column)?
        .as_deref()
        .map(parse_uuid)
        .transpose()
}

fn text(id: Option<Uuid>) -> Option<String> {
    id.map(|id| id.to_string())
}

fn row_of(r: &MySqlRow) -> Result<Row, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    let item: String = r.try_get("item_id")?;
    let version = |column: &str| -> Result<Option<Version>, sqlx::Error> {
        Ok(r.try_get::<Option<String>, _>(column)?.map(Version))
    };
    Ok(Row {
        key: RowKey {
            kind: parse_kind(&kind)?,
            item_id: parse_uuid(&item)?,
        },
        customer_id: r.try_get("customer_id")?,
        mission_status: r.try_get("mission_status")?,
        reward_id: uuid_of(r, "reward_id")?,
        reward_points: r.try_get("reward_points")?,
        telegram_id: uuid_of(r, "telegram_id")?,
        notification_status: r.try_get("notification_status")?,
        telegram_message_id: r.try_get("telegram_message_id")?,
        gift_id: uuid_of(r, "gift_id")?,
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

fn wallet_of(r: &MySqlRow) -> Result<Wallet, sqlx::Error> {
    Ok(Wallet {
        customer_id: r.try_get("customer_id")?,
        balance: r.try_get("balance")?,
        version: Version(r.try_get("version")?),
        updated_at: r.try_get("updated_at")?,
    })
}

fn generation_of(r: &MySqlRow) -> Result<Generation, sqlx::Error> {
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

pub(super) async fn ping(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

pub(super) async fn mission(pool: &MySqlPool, id: Uuid) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        row_columns!(),
        " FROM mypage_rows WHERE generation = ",
        serving!(),
        " AND kind = 'mission' AND item_id = ?"
    ))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(row_of)
    .transpose()
}

pub(super) async fn list(
    pool: &MySqlPool,
    filter: &Filter,
    after: Option<After>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(concat!(
        "SELECT ",
        row_columns!(),
        " FROM mypage_rows WHERE generation = ",
        serving!(),
        " AND "
    ));
    match filter {
        Filter::Customer(customer) => q.push("customer_id = ").push_bind(customer.clone()),
        Filter::Reward(reward) => q.push("reward_id = ").push_bind(reward.to_string()),
        Filter::Telegram(notification) => {
            q.push("telegram_id = ").push_bind(notification.to_string())
        }
    };
    if let Some(after) = after {
        q.push(" AND (item_id, kind) < (")
            .push_bind(after.item_id.to_string())
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

pub(super) async fn balance(pool: &MySqlPool, customer: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT balance FROM mypage_wallets WHERE generation = ",
        serving!(),
        " AND customer_id = ?"
    ))
    .bind(customer)
    .fetch_optional(pool)
    .await
}

pub(super) async fn serving(pool: &MySqlPool) -> Result<Generation, sqlx::Error> {
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

pub(super) async fn latest_rebuild(pool: &MySqlPool) -> Result<Option<Generation>, sqlx::Error> {
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

pub(super) async fn rebuild_state(
    pool: &MySqlPool,
) -> Result<(i64, Option<Generation>), sqlx::Error> {
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

pub(super) async fn drop_retired(pool: &MySqlPool) -> Result<u64, sqlx::Error> {
    let retired: Vec<i64> = sqlx::query_scalar(
        "SELECT generation FROM mypage_generations WHERE state = 'retired' ORDER BY generation",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = 0;
    for generation in retired {
        loop {
            let rows = sqlx::query("DELETE FROM mypage_rows WHERE generation = ? LIMIT ?")
                .bind(generation)
                .bind(DROP_CHUNK)
                .execute(pool)
                .await?
                .rows_affected();
            let wallets = sqlx::query("DELETE FROM mypage_wallets WHERE generation = ? LIMIT ?")
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
             WHERE generation = ? AND state = 'retired'",
        )
        .bind(generation)
        .execute(pool)
        .await?;
    }
    Ok(dropped)
}

pub(super) async fn snapshot(pool: &MySqlPool, generation: i64) -> Result<Snapshot, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        row_columns!(),
        " FROM mypage_rows WHERE generation = ? ORDER BY kind, item_id"
    ))
    .bind(generation)
    .fetch_all(pool)
    .await?
    .iter()
    .map(row_of)
    .collect::<Result<_, _>>()?;
    let wallets = sqlx::query(
        "SELECT customer_id, balance, version, updated_at FROM mypage_wallets \
         WHERE generation = ? ORDER BY customer_id",
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
        " FROM mypage_generations WHERE generation = ?"
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
    let next: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(generation), 0) + 1 FROM mypage_generations")
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO mypage_generations (generation, state, applied_through, replayed, started_at) \
         VALUES (?, 'building', 0, 0, ?)",
    )
    .bind(next)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    generation(tx, next).await?.ok_or(sqlx::Error::RowNotFound)
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
        let mut q = QueryBuilder::<MySql>::new(concat!(
            "SELECT ",
            row_columns!(),
            " FROM mypage_rows WHERE generation = "
        ));
        // Every column of the primary key (generation, kind, item_id) bound: the lookups are
        // index point reads, not a range over the whole generation.
        q.push_bind(generation).push(" AND kind IN (");
        let mut kinds = q.separated(", ");
        for kind in keys
            .iter()
            .map(|k| k.kind.as_str())
            .collect::<BTreeSet<_>>()
        {
            kinds.push_bind(kind);
        }
        q.push(") AND item_id IN (");
        let mut ids = q.separated(", ");
        for key in keys {
            ids.push_bind(key.item_id.to_string());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await? {
            let row = row_of(&row)?;
            if wanted.contains(&row.key) {
                rows.push(row);
            }
        }
    }
    let mut wallets = Vec::new();
    if !customers.is_empty() {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT customer_id, balance, version, updated_at FROM mypage_wallets \
             WHERE generation = ",
        );
        q.push_bind(generation).push(" AND customer_id IN (");
        let mut ids = q.separated(", ");
        for customer in customers {
            ids.push_bind(customer.clone());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await? {
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
        let mut q = QueryBuilder::<MySql>::new(concat!(
            "INSERT INTO mypage_rows (generation, ",
            row_columns!(),
            ") "
        ));
        q.push_values(chunk, |mut b, row| {
            let version = |v: &Option<Version>| v.as_ref().map(|v| v.0.clone());
            b.push_bind(generation)
                .push_bind(row.key.kind.as_str())
                .push_bind(row.key.item_id.to_string())
                .push_bind(row.customer_id.clone())
                .push_bind(row.mission_status.clone())
                .push_bind(text(row.reward_id))
                .push_bind(row.reward_points)
                .push_bind(text(row.telegram_id))
                .push_bind(row.notification_status.clone())
                .push_bind(row.telegram_message_id)
                .push_bind(text(row.gift_id))
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
            " ON DUPLICATE KEY UPDATE customer_id = VALUES(customer_id), \
             mission_status = VALUES(mission_status), reward_id = VALUES(reward_id), \
             reward_points = VALUES(reward_points), telegram_id = VALUES(telegram_id), \
             notification_status = VALUES(notification_status), \
             telegram_message_id = VALUES(telegram_message_id), gift_id = VALUES(gift_id), \
             gift_name = VALUES(gift_name), voucher_code = VALUES(voucher_code), \
             gift_status = VALUES(gift_status), exchange_state = VALUES(exchange_state), \
             updated_at = VALUES(updated_at), mission_version = VALUES(mission_version), \
             reward_version = VALUES(reward_version), \
             notification_version = VALUES(notification_version)",
        );
        q.build().execute(&mut **tx).await?;
    }
    for chunk in wallets.chunks(WRITE_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
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
            " ON DUPLICATE KEY UPDATE balance = VALUES(balance), version = VALUES(version), \
             updated_at = VALUES(updated_at)",
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
        "UPDATE mypage_generations SET applied_through = GREATEST(applied_through, ?), \
         replayed = replayed + ? WHERE generation = ?",
    )
    .bind(through)
    .bind(replayed)
    .bind(generation)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn dead_lettered(tx: &mut Tx, through: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE mypage_view SET dead_lettered_through = GREATEST(dead_lettered_through, ?) \
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
    sqlx::query("UPDATE mypage_view SET serving_generation = ? WHERE id = 1")
        .bind(to)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE mypage_generations SET state = 'serving', finished_at = ? WHERE generation = ?",
    )
    .bind(now)
    .bind(to)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE mypage_generations SET state = 'retired' WHERE generation = ?")
        .bind(from)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
