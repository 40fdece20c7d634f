//! Every SQL statement of the Mypage view, on MariaDB ([`mysql`]) or on PostgreSQL
//! ([`postgres`]), behind one API: [`Store`] for reads and operator actions, [`Tx`] for the
//! projection's transactions. Which one runs is decided by the database URL's scheme
//! (`mysql://` or `mariadb://`, else PostgreSQL, in the schema `mypage`).
//!
//! Tables (the same on both):
//! - `mypage_view`: one row: the serving generation (reads follow it) and how far garbage on
//!   `DOMAIN_EVT` has been dead-lettered. Every projection transaction locks it first, so
//!   appliers, rebuild starts and the switch to a new generation are serialized.
//! - `mypage_generations`: one row per generation of the view: `building`, `serving`,
//!   `retired` (its rows are being dropped) or `dropped`, with the last stream sequence applied
//!   to it and, for a rebuild, how many messages it replayed and when it started and finished.
//! - `mypage_rows` and `mypage_wallets`: the view's rows and balances, keyed by generation.

pub mod mysql;
pub mod postgres;

use std::str::FromStr as _;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::{MySqlPool, PgPool};
use uuid::Uuid;

use super::view::{Kind, Row, RowKey, Wallet};

/// The PostgreSQL migrations (schema `mypage`).
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate!("./migrations/mypage/postgres");
/// The MariaDB migrations.
pub static MYSQL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mypage/mysql");

/// The PostgreSQL schema of the view.
pub const SCHEMA: &str = "mypage";

/// Rows deleted per statement when a retired generation is dropped.
pub const DROP_CHUNK: i64 = 5_000;

/// Which database a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (`postgres://`).
    Postgres,
    /// MariaDB (`mysql://` or `mariadb://`).
    MariaDb,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Backend::MariaDb
        } else {
            Backend::Postgres
        }
    }

    /// Its name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgresql",
            Backend::MariaDb => "mariadb",
        }
    }
}

/// The state of one generation of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationState {
    /// A rebuild is replaying `DOMAIN_EVT` into it; reads do not see it yet.
    Building,
    /// Reads see it and the live projection applies to it.
    Serving,
    /// Replaced by a rebuild; its rows are being dropped.
    Retired,
    /// Its rows are gone.
    Dropped,
}

impl GenerationState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationState::Building => "building",
            GenerationState::Serving => "serving",
            GenerationState::Retired => "retired",
            GenerationState::Dropped => "dropped",
        }
    }

    fn parse(text: &str) -> Result<Self, sqlx::Error> {
        match text {
            "building" => Ok(GenerationState::Building),
            "serving" => Ok(GenerationState::Serving),
            "retired" => Ok(GenerationState::Retired),
            "dropped" => Ok(GenerationState::Dropped),
            other => Err(decode_error(format!("unknown generation state {other:?}"))),
        }
    }
}

/// One generation of the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// Its number (1 is the view the service first built).
    pub generation: i64,
    /// Its state.
    pub state: GenerationState,
    /// The last `DOMAIN_EVT` sequence applied to it (or skipped as unknown or garbage).
    pub applied_through: i64,
    /// Messages a rebuild replayed into it.
    pub replayed: i64,
    /// When it was created.
    pub started_at: DateTime<Utc>,
    /// When it began to serve (a rebuild's end).
    pub finished_at: Option<DateTime<Utc>>,
}

/// The locked `mypage_view` row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewLock {
    /// The generation reads see.
    pub serving: i64,
    /// Garbage up to this sequence has been dead-lettered.
    pub dead_lettered_through: i64,
}

/// Which rows a list asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// A customer's missions and gift exchanges.
    Customer(String),
    /// The row holding a reward.
    Reward(Uuid),
    /// The rows of a notification.
    Telegram(Uuid),
}

/// Where a page starts: after this key, in the list's order (newest item id first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct After {
    /// The last item id of the previous page.
    pub item_id: Uuid,
    /// Its kind.
    pub kind: Kind,
}

/// A whole generation's content, in a fixed order: what two views are compared by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Rows by kind and id.
    pub rows: Vec<Row>,
    /// Wallets by customer.
    pub wallets: Vec<Wallet>,
}

/// Whether a rebuild could start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebuildStart {
    /// A new generation is building.
    Started(Generation),
    /// One was already building.
    AlreadyRunning(Generation),
}

/// The Mypage store.
#[derive(Clone, Debug)]
pub enum Store {
    /// On PostgreSQL.
    Postgres(PgPool),
    /// On MariaDB.
    MariaDb(MySqlPool),
}

/// A projection transaction.
pub enum Tx {
    /// On PostgreSQL.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    /// On MariaDB.
    MariaDb(sqlx::Transaction<'static, sqlx::MySql>),
}

/// Calls the function of the same name in the backend's module: `dispatch!(self, pool =>
/// mission(pool, id))`.
macro_rules! dispatch {
    ($self:expr, $backend:ident => $function:ident($($argument:expr),*)) => {
        match $self {
            Self::Postgres($backend) => postgres::$function($($argument),*).await,
            Self::MariaDb($backend) => mysql::$function($($argument),*).await,
        }
    };
}

impl Store {
    /// Connects to the database `url` names, creating the schema (PostgreSQL) or the database
    /// (MariaDB) when missing, and migrates it.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Self, sqlx::Error> {
        match Backend::of_url(url.expose_secret()) {
            Backend::Postgres => {
                runtime::db::connect(url, SCHEMA, max_connections, &POSTGRES_MIGRATOR)
                    .await
                    .map(Store::Postgres)
            }
            Backend::MariaDb => mysql::connect(url.expose_secret(), max_connections)
                .await
                .map(Store::MariaDb),
        }
    }

    /// Which database it runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::MariaDb(_) => Backend::MariaDb,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::MariaDb(pool) => pool.close().await,
        }
    }

    /// Answers a trivial query (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        dispatch!(self, pool => ping(pool))
    }

    /// Begins a projection transaction.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Store::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Store::MariaDb(pool) => Tx::MariaDb(pool.begin().await?),
        })
    }

    /// A mission's row in the serving generation.
    pub async fn mission(&self, id: Uuid) -> Result<Option<Row>, sqlx::Error> {
        dispatch!(self, pool => mission(pool, id))
    }

    /// A page of rows in the serving generation, newest item id first.
    pub async fn list(
        &self,
        filter: &Filter,
        after: Option<After>,
        limit: i64,
    ) -> Result<Vec<Row>, sqlx::Error> {
        dispatch!(self, pool => list(pool, filter, after, limit))
    }

    /// A customer's balance as last projected in the serving generation.
    pub async fn balance(&self, customer: &str) -> Result<Option<i64>, sqlx::Error> {
        dispatch!(self, pool => balance(pool, customer))
    }

    /// The serving generation.
    pub async fn serving(&self) -> Result<Generation, sqlx::Error> {
        dispatch!(self, pool => serving(pool))
    }

    /// The newest generation made by a rebuild (building or not), if any rebuild ever ran.
    pub async fn latest_rebuild(&self) -> Result<Option<Generation>, sqlx::Error> {
        dispatch!(self, pool => latest_rebuild(pool))
    }

    /// The serving generation's number and the newest generation made by a rebuild, read
    /// together (one statement), so that a switch is never seen half-done.
    pub async fn rebuild_state(&self) -> Result<(i64, Option<Generation>), sqlx::Error> {
        dispatch!(self, pool => rebuild_state(pool))
    }

    /// Starts a rebuild: a new generation, `building`, unless one already builds.
    pub async fn start_rebuild(&self, now: DateTime<Utc>) -> Result<RebuildStart, sqlx::Error> {
        let mut tx = self.begin().await?;
        tx.lock_view().await?;
        if let Some(running) = tx.building().await? {
            tx.rollback().await?;
            return Ok(RebuildStart::AlreadyRunning(running));
        }
        let started = tx.new_generation(now).await?;
        tx.commit().await?;
        Ok(RebuildStart::Started(started))
    }

    /// Drops the rows of retired generations, a chunk per statement; returns how many rows
    /// went.
    pub async fn drop_retired(&self) -> Result<u64, sqlx::Error> {
        dispatch!(self, pool => drop_retired(pool))
    }

    /// Everything in `generation`, in a fixed order.
    pub async fn snapshot(&self, generation: i64) -> Result<Snapshot, sqlx::Error> {
        dispatch!(self, pool => snapshot(pool, generation))
    }
}

impl Tx {
    /// Locks the `mypage_view` row until commit: every projection transaction starts here.
    pub async fn lock_view(&mut self) -> Result<ViewLock, sqlx::Error> {
        dispatch!(self, tx => lock_view(tx))
    }

    /// One generation.
    pub async fn generation(&mut self, generation: i64) -> Result<Option<Generation>, sqlx::Error> {
        dispatch!(self, tx => generation(tx, generation))
    }

    /// The generation being built, if any.
    pub async fn building(&mut self) -> Result<Option<Generation>, sqlx::Error> {
        dispatch!(self, tx => building(tx))
    }

    async fn new_generation(&mut self, now: DateTime<Utc>) -> Result<Generation, sqlx::Error> {
        dispatch!(self, tx => new_generation(tx, now))
    }

    /// The stored rows of `keys` and wallets of `customers` in `generation`.
    pub async fn load(
        &mut self,
        generation: i64,
        keys: &[RowKey],
        customers: &[String],
    ) -> Result<(Vec<Row>, Vec<Wallet>), sqlx::Error> {
        dispatch!(self, tx => load(tx, generation, keys, customers))
    }

    /// Writes whole rows and wallets into `generation` (inserted or replaced).
    pub async fn write(
        &mut self,
        generation: i64,
        rows: &[Row],
        wallets: &[Wallet],
    ) -> Result<(), sqlx::Error> {
        dispatch!(self, tx => write(tx, generation, rows, wallets))
    }

    /// Records that `generation` has applied everything through `through`, `replayed` more
    /// messages of a rebuild among them.
    pub async fn advance(
        &mut self,
        generation: i64,
        through: i64,
        replayed: i64,
    ) -> Result<(), sqlx::Error> {
        dispatch!(self, tx => advance(tx, generation, through, replayed))
    }

    /// Records that garbage through `through` has been dead-lettered.
    pub async fn dead_lettered(&mut self, through: i64) -> Result<(), sqlx::Error> {
        dispatch!(self, tx => dead_lettered(tx, through))
    }

    /// Reads switch from `from` to `to`, which serves from now on; `from` retires.
    pub async fn switch(
        &mut self,
        from: i64,
        to: i64,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        dispatch!(self, tx => switch(tx, from, to, now))
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::MariaDb(tx) => tx.commit().await,
        }
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await,
            Tx::MariaDb(tx) => tx.rollback().await,
        }
    }
}

fn decode_error(message: String) -> sqlx::Error {
    sqlx::Error::Decode(message.into())
}

fn parse_uuid(text: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::from_str(text).map_err(|e| decode_error(format!("{text:?} is not a uuid: {e}")))
}

fn parse_kind(text: &str) -> Result<Kind, sqlx::Error> {
    Kind::parse(text).ok_or_else(|| decode_error(format!("unknown row kind {text:?}")))
}

/// A stream sequence as stored.
pub fn sequence(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_picks_the_backend() {
        assert_eq!(
            Backend::of_url("mysql://root@127.0.0.1/mypage"),
            Backend::MariaDb
        );
        assert_eq!(
            Backend::of_url("mariadb://root@db/mypage"),
            Backend::MariaDb
        );
        assert_eq!(
            Backend::of_url("postgres://postgres@db/saga"),
            Backend::Postgres
        );
        assert_eq!(Backend::of_url("postgresql://db/saga"), Backend::Postgres);
    }
}
