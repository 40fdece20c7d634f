//! PostgreSQL pools. Every service owns one schema (its `search_path`), so that services may
//! share a database locally and still own their tables, and each runs its own migrations.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Executor};

/// Opens a pool whose connections work in `schema`, creates the schema when missing, and runs
/// the service's migrations.
pub async fn connect(
    url: &SecretString,
    schema: &str,
    max_connections: u32,
    migrator: &Migrator,
) -> Result<PgPool, sqlx::Error> {
    if !schema
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || schema.is_empty()
    {
        return Err(sqlx::Error::Configuration(
            format!("schema name {schema:?} must be letters, digits and '_'").into(),
        ));
    }
    let base = PgConnectOptions::from_str(url.expose_secret())?
        .log_statements(tracing::log::LevelFilter::Trace);
    {
        let mut admin = base.connect().await?;
        // Concurrent first starts of several replicas race on CREATE SCHEMA; the advisory lock,
        // held until the implicit transaction of this one query commits, serializes them.
        admin
            .execute(AssertSqlSafe(format!(
                "SELECT pg_advisory_xact_lock(hashtext('schema:{schema}')); \
                 CREATE SCHEMA IF NOT EXISTS {schema};"
            )))
            .await?;
    }
    let options = base.options([
        ("search_path", schema),
        // Batch statements bind arrays: a custom plan per execution costs more than it saves.
        ("plan_cache_mode", "force_generic_plan"),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    migrator.run(&pool).await?;
    Ok(pool)
}
