//! All SQL of the orchestrator: loading sagas, writing their changes (version-checked), timers,
//! the reply inbox, idempotency keys and the list queries of the API. Writes are batched with
//! `UNNEST` so that one transaction carries the changes of many sagas.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::{MessageId, Phase, SagaId};
use runtime::outbox::{self, OutboxMessage};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::machine::{CompensationRecord, Saga, SagaState, StepRecord, Timer, TimerKind};

/// A saga as stored, with the version its next write must match.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The saga.
    pub saga: Saga,
    /// Its row version.
    pub version: i64,
}

/// What happens to a saga's timer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimerChange {
    /// Leave it as it is.
    Keep,
    /// Arm this timer, due after the duration (replacing any armed one).
    Set(Timer, Duration),
    /// Disarm it.
    Clear,
}

/// One saga's change, ready to write.
#[derive(Clone, Debug)]
pub struct Change {
    /// The saga as loaded (`None` for a saga being created).
    pub before: Option<Stored>,
    /// The saga after the transition(s).
    pub after: Saga,
    /// Its timer.
    pub timer: TimerChange,
    /// Messages to publish.
    pub outbox: Vec<OutboxMessage>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Another writer changed a saga since it was loaded; retry with fresh state.
    #[error("a saga changed concurrently")]
    Conflict,
    /// A stored row does not decode.
    #[error("stored saga {0} does not decode: {1}")]
    Corrupt(Uuid, String),
}

impl StoreError {
    /// Whether retrying the whole unit of work may succeed (version conflict, deadlock,
    /// serialization failure).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Conflict => true,
            StoreError::Database(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }
}

/// A saga's identity as the idempotency check sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedSaga {
    /// The saga the key created.
    pub id: SagaId,
    /// The hash of the request that created it.
    pub request_hash: Vec<u8>,
}

/// A filter of the list query.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only sagas in this state.
    pub state: Option<SagaState>,
    /// Only sagas of this type.
    pub saga_type: Option<String>,
    /// Page size.
    pub limit: i64,
    /// Continue after this (created_at, id).
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// The orchestrator's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

const SELECT_SAGAS: &str = "SELECT s.id, s.saga_type, s.definition_version, s.state::text AS state, \
     s.input, s.context, s.version, s.created_at, s.updated_at, \
     COALESCE((SELECT jsonb_agg(to_jsonb(st) ORDER BY st.step_index) FROM saga_steps st \
               WHERE st.saga_id = s.id), '[]') AS steps, \
     COALESCE((SELECT jsonb_agg(to_jsonb(c) ORDER BY c.step_index) FROM saga_compensations c \
               WHERE c.saga_id = s.id), '[]') AS compensations \
     FROM sagas s";

#[derive(sqlx::FromRow)]
struct SagaRow {
    id: Uuid,
    saga_type: String,
    definition_version: i32,
    state: String,
    input: Value,
    context: Value,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    steps: Value,
    compensations: Value,
}

impl SagaRow {
    fn decode(self) -> Result<Stored, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(self.id, what.to_owned());
        let state = SagaState::parse(&self.state).ok_or_else(|| corrupt("state"))?;
        let steps: Vec<StepRecord> =
            serde_json::from_value(self.steps.clone()).map_err(|e| corrupt(&e.to_string()))?;
        let compensations: Vec<CompensationRecord> =
            serde_json::from_value(self.compensations.clone())
                .map_err(|e| corrupt(&e.to_string()))?;
        Ok(Stored {
            saga: Saga {
                id: SagaId(self.id),
                saga_type: self.saga_type,
                definition_version: u32::try_from(self.definition_version).unwrap_or(0),
                state,
                input: object(self.input),
                context: object(self.context),
                steps,
                compensations,
                created_at: self.created_at,
                updated_at: self.updated_at,
            },
            version: self.version,
        })
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

impl Store {
    /// A store over the orchestrator's pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// One saga.
    pub async fn get(&self, id: SagaId) -> Result<Option<Stored>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(load_many(&mut conn, &[id]).await?.remove(&id))
    }

    /// The saga an idempotency key created, if any.
    pub async fn find_key(&self, key: &str) -> Result<Option<KeyedSaga>, StoreError> {
        let row: Option<(Uuid, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT id, request_hash FROM sagas WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, hash)| KeyedSaga {
            id: SagaId(id),
            request_hash: hash.unwrap_or_default(),
        }))
    }

    /// Newest first, keyset-paged.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Saga>, StoreError> {
        let (after_at, after_id) = filter
            .after
            .map_or((None, None), |(at, id)| (Some(at), Some(id)));
        let sql = format!(
            "{SELECT_SAGAS} WHERE ($1::text IS NULL OR s.state = $1::saga_state) \
             AND ($2::text IS NULL OR s.saga_type = $2) \
             AND ($3::timestamptz IS NULL OR (s.created_at, s.id) < ($3, $4)) \
             ORDER BY s.created_at DESC, s.id DESC LIMIT $5"
        );
        let rows: Vec<SagaRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(filter.state.map(SagaState::as_str))
            .bind(filter.saga_type.as_deref())
            .bind(after_at)
            .bind(after_id)
            .bind(filter.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| r.decode().map(|s| s.saga))
            .collect()
    }

    /// Creates a saga with its first effects. With an idempotency key that is already taken,
    /// nothing is written and the existing saga's key record is returned.
    pub async fn create(
        &self,
        change: Change,
        idempotency: Option<(&str, &[u8])>,
    ) -> Result<Result<(), KeyedSaga>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let saga = &change.after;
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO sagas (id, saga_type, definition_version, state, input, context, \
             idempotency_key, request_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4::saga_state, $5, $6, $7, $8, $9, $9) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(saga.id.0)
        .bind(&saga.saga_type)
        .bind(i32::try_from(saga.definition_version).unwrap_or(i32::MAX))
        .bind(saga.state.as_str())
        .bind(Value::Object(saga.input.clone()))
        .bind(Value::Object(saga.context.clone()))
        .bind(idempotency.map(|(k, _)| k))
        .bind(idempotency.map(|(_, h)| h))
        .bind(saga.created_at)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            tx.rollback().await?;
            let key = idempotency.map(|(k, _)| k).unwrap_or_default();
            return match self.find_key(key).await? {
                Some(existing) => Ok(Err(existing)),
                None => Err(StoreError::Conflict),
            };
        }
        write_details(&mut tx, std::slice::from_ref(&change)).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Ids of replies not seen before, recording them in the inbox (inside `conn`'s
    /// transaction, so a rolled-back batch forgets them again).
    pub async fn admit(
        conn: &mut PgConnection,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|m| m.0).collect();
        let fresh: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO inbox (message_id) SELECT * FROM UNNEST($1::uuid[]) \
             ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .bind(&ids)
        .fetch_all(conn)
        .await?;
        Ok(fresh.into_iter().map(MessageId).collect())
    }

    /// Locks up to `limit` due timers, skipping those another replica holds.
    pub async fn due_timers(
        conn: &mut PgConnection,
        limit: i64,
    ) -> Result<Vec<(SagaId, Timer)>, StoreError> {
        let rows: Vec<(Uuid, String, i16, String, i32)> = sqlx::query_as(
            "SELECT saga_id, kind, step_index, phase, attempt FROM timers \
             WHERE due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(conn)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, kind, step, phase, attempt)| {
                let kind = serde_json::from_value::<TimerKind>(Value::String(kind)).ok()?;
                let phase = serde_json::from_value::<Phase>(Value::String(phase)).ok()?;
                Some((
                    SagaId(id),
                    Timer {
                        kind,
                        step_index: u16::try_from(step).ok()?,
                        phase,
                        attempt: u32::try_from(attempt).ok()?,
                    },
                ))
            })
            .collect())
    }

    /// Deletes fired timers (before their sagas' changes re-arm new ones).
    pub async fn delete_timers(conn: &mut PgConnection, ids: &[SagaId]) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|s| s.0).collect();
        sqlx::query("DELETE FROM timers WHERE saga_id = ANY($1)")
            .bind(&ids)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Forgets inbox entries older than `age` (a reply older than that is not redelivered).
    pub async fn prune_inbox(&self, age: Duration) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM inbox WHERE received_at < now() - make_interval(secs => $1)")
                .bind(age.as_secs_f64())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }
}

/// Loads sagas by id (one round trip).
pub async fn load_many(
    conn: &mut PgConnection,
    ids: &[SagaId],
) -> Result<HashMap<SagaId, Stored>, StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|s| s.0).collect();
    let rows: Vec<SagaRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_SAGAS} WHERE s.id = ANY($1)"
    )))
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| row.decode().map(|s| (s.saga.id, s)))
        .collect()
}

/// Writes changes of existing sagas: version-checked saga rows, changed steps and
/// compensations, timers and outbox rows. A concurrent change fails the whole batch with
/// [`StoreError::Conflict`].
pub async fn apply(conn: &mut PgConnection, changes: &[Change]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(changes.len());
    let mut states = Vec::with_capacity(changes.len());
    let mut contexts = Vec::with_capacity(changes.len());
    let mut versions = Vec::with_capacity(changes.len());
    let mut updated = Vec::with_capacity(changes.len());
    for change in changes {
        let Some(before) = &change.before else {
            continue;
        };
        ids.push(change.after.id.0);
        states.push(change.after.state.as_str());
        contexts.push(Value::Object(change.after.context.clone()));
        versions.push(before.version);
        updated.push(change.after.updated_at);
    }
    write_timers(conn, changes).await?;
    let written: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sagas s SET state = u.state::saga_state, context = u.context, \
         version = s.version + 1, updated_at = u.updated_at \
         FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bigint[], $5::timestamptz[]) \
              AS u(id, state, context, version, updated_at) \
         WHERE s.id = u.id AND s.version = u.version RETURNING s.id",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&contexts)
    .bind(&versions)
    .bind(&updated)
    .fetch_all(&mut *conn)
    .await?;
    if written.len() != ids.len() {
        return Err(StoreError::Conflict);
    }
    write_rows(conn, changes).await
}

async fn write_details(tx: &mut PgConnection, changes: &[Change]) -> Result<(), StoreError> {
    write_timers(tx, changes).await?;
    write_rows(tx, changes).await
}

async fn write_timers(conn: &mut PgConnection, changes: &[Change]) -> Result<(), StoreError> {
    let cleared: Vec<Uuid> = changes
        .iter()
        .filter(|c| c.timer == TimerChange::Clear)
        .map(|c| c.after.id.0)
        .collect();
    if !cleared.is_empty() {
        sqlx::query("DELETE FROM timers WHERE saga_id = ANY($1)")
            .bind(&cleared)
            .execute(&mut *conn)
            .await?;
    }
    let mut ids = Vec::new();
    let mut kinds = Vec::new();
    let mut steps = Vec::new();
    let mut phases = Vec::new();
    let mut attempts = Vec::new();
    let mut after = Vec::new();
    for change in changes {
        if let TimerChange::Set(timer, wait) = change.timer {
            ids.push(change.after.id.0);
            kinds.push(text(&timer.kind));
            steps.push(i16::try_from(timer.step_index).unwrap_or(i16::MAX));
            phases.push(timer.phase.as_str());
            attempts.push(i32::try_from(timer.attempt).unwrap_or(i32::MAX));
            after.push(wait.as_secs_f64());
        }
    }
    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO timers (saga_id, kind, step_index, phase, attempt, due_at) \
             SELECT id, kind, step, phase, attempt, now() + make_interval(secs => wait) \
             FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::int4[], $6::float8[]) \
                  AS t(id, kind, step, phase, attempt, wait) \
             ON CONFLICT (saga_id) DO UPDATE SET kind = excluded.kind, \
                step_index = excluded.step_index, phase = excluded.phase, \
                attempt = excluded.attempt, due_at = excluded.due_at",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&steps)
        .bind(&phases)
        .bind(&attempts)
        .bind(&after)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[derive(Default)]
struct StepColumns {
    saga: Vec<Uuid>,
    index: Vec<i16>,
    name: Vec<String>,
    state: Vec<String>,
    attempts: Vec<i32>,
    started: Vec<Option<DateTime<Utc>>>,
    finished: Vec<Option<DateTime<Utc>>>,
    error: Vec<Option<String>>,
    run_order: Vec<Option<i32>>,
}

async fn write_rows(conn: &mut PgConnection, changes: &[Change]) -> Result<(), StoreError> {
    let mut steps = StepColumns::default();
    let mut comps = StepColumns::default();
    let mut messages = Vec::new();
    for change in changes {
        let id = change.after.id.0;
        let before = change.before.as_ref().map(|b| &b.saga);
        for (index, step) in change.after.steps.iter().enumerate() {
            if before.and_then(|b| b.steps.get(index)) == Some(step) {
                continue;
            }
            steps.saga.push(id);
            steps.index.push(i16::try_from(index).unwrap_or(i16::MAX));
            steps.name.push(step.name.clone());
            steps.state.push(text(&step.state));
            steps
                .attempts
                .push(i32::try_from(step.attempts).unwrap_or(i32::MAX));
            steps.started.push(step.started_at);
            steps.finished.push(step.finished_at);
            steps.error.push(step.last_error.clone());
        }
        for c in &change.after.compensations {
            let unchanged = before.is_some_and(|b| b.compensations.iter().any(|old| old == c));
            if unchanged {
                continue;
            }
            comps.saga.push(id);
            comps
                .index
                .push(i16::try_from(c.step_index).unwrap_or(i16::MAX));
            comps.name.push(c.name.clone());
            comps.state.push(text(&c.state));
            comps
                .attempts
                .push(i32::try_from(c.attempts).unwrap_or(i32::MAX));
            comps.started.push(c.started_at);
            comps.finished.push(c.finished_at);
            comps.error.push(c.last_error.clone());
            comps
                .run_order
                .push(c.run_order.map(|o| i32::try_from(o).unwrap_or(i32::MAX)));
        }
        messages.extend(change.outbox.iter().cloned());
    }
    if !steps.saga.is_empty() {
        sqlx::query(
            "INSERT INTO saga_steps (saga_id, step_index, name, state, attempts, started_at, \
             finished_at, last_error) \
             SELECT * FROM UNNEST($1::uuid[], $2::int2[], $3::text[], $4::text[], $5::int4[], \
                                  $6::timestamptz[], $7::timestamptz[], $8::text[]) \
             ON CONFLICT (saga_id, step_index) DO UPDATE SET state = excluded.state, \
                attempts = excluded.attempts, started_at = excluded.started_at, \
                finished_at = excluded.finished_at, last_error = excluded.last_error",
        )
        .bind(&steps.saga)
        .bind(&steps.index)
        .bind(&steps.name)
        .bind(&steps.state)
        .bind(&steps.attempts)
        .bind(&steps.started)
        .bind(&steps.finished)
        .bind(&steps.error)
        .execute(&mut *conn)
        .await?;
    }
    if !comps.saga.is_empty() {
        sqlx::query(
            "INSERT INTO saga_compensations (saga_id, step_index, name, state, attempts, \
             started_at, finished_at, last_error, run_order) \
             SELECT * FROM UNNEST($1::uuid[], $2::int2[], $3::text[], $4::text[], $5::int4[], \
                                  $6::timestamptz[], $7::timestamptz[], $8::text[], $9::int4[]) \
             ON CONFLICT (saga_id, step_index) DO UPDATE SET state = excluded.state, \
                attempts = excluded.attempts, started_at = excluded.started_at, \
                finished_at = excluded.finished_at, last_error = excluded.last_error, \
                run_order = excluded.run_order",
        )
        .bind(&comps.saga)
        .bind(&comps.index)
        .bind(&comps.name)
        .bind(&comps.state)
        .bind(&comps.attempts)
        .bind(&comps.started)
        .bind(&comps.finished)
        .bind(&comps.error)
        .bind(&comps.run_order)
        .execute(&mut *conn)
        .await?;
    }
    outbox::insert(conn, &messages).await?;
    Ok(())
}
