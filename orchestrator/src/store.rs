//! All SQL of the orchestrator: loading sagas, writing their changes (version-checked), timers,
//! idempotency keys, the saga history and the list queries of the API. Writes
//! are batched with `UNNEST` so that one transaction carries the changes of many sagas, their
//! history entries included. A saga's search keys (what its definition says it can be found by)
//! are one `jsonb` column, written with every change and matched with `@>`, so the store names
//! no field of any particular saga. Every read is counted in [`STORE_READS`] by query, so that
//! what a caller costs the database shows in the metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::{Phase, SagaId};
use runtime::jetstream::Outgoing;
use runtime::outbox::OutboxMessage;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::history::{HistoryEntry, HistoryKind};
use crate::machine::{CompensationRecord, Saga, SagaState, StepRecord, Timer, TimerKind, label};

/// Reads of the orchestrator's store, by `query`: `saga` (one saga by id: the API, the page),
/// `load` (sagas an engine transaction moves), `list`, `idempotency_key`, `history`,
/// `due_timers` and `activity` (the background loops).
pub const STORE_READS: &str = "saga_store_reads_total";

/// Counts one read of `query`.
fn read(query: &'static str) {
    metrics::counter!(STORE_READS, "query" => query).increment(1);
}

/// A saga as stored, with the version its next write must match.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The saga.
    pub saga: Saga,
    /// Its row version.
    pub version: i64,
}

/// What happens to a saga's timers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimerChange {
    /// Disarm every timer of the saga (it ended).
    pub clear_all: bool,
    /// Arm these, each due after its duration, replacing what is armed in its slot.
    pub set: Vec<(Timer, Duration)>,
}

impl TimerChange {
    /// Arms `timer` after `after`, replacing an earlier word about its slot.
    pub fn arm(&mut self, timer: Timer, after: Duration) {
        self.set.retain(|(t, _)| t.kind.slot() != timer.kind.slot());
        self.set.push((timer, after));
    }

    /// Disarms every timer, replacing earlier words.
    pub fn clear(&mut self) {
        self.clear_all = true;
        self.set.clear();
    }
}

/// One saga's change, ready to write.
#[derive(Clone, Debug)]
pub struct Change {
    /// The saga as loaded (`None` for a saga being created).
    pub before: Option<Stored>,
    /// The saga after the transition(s).
    pub after: Saga,
    /// Its timers.
    pub timer: TimerChange,
    /// Commands to publish after commit. They need no outbox row: the saga row records the
    /// command in flight, and its step timeout sends it again if the publish is lost.
    pub commands: Vec<Outgoing>,
    /// Events to publish through the outbox (written in the same statement).
    pub outbox: Vec<OutboxMessage>,
    /// The saga's search keys after the change, by name (its definition's
    /// [`crate::definition::SagaDefinition::search_values`]).
    pub search_keys: BTreeMap<String, String>,
    /// What the change adds to the saga's history, in order.
    pub history: Vec<HistoryEntry>,
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
    /// Only sagas with every one of these search keys, each with this value.
    pub keys: BTreeMap<String, String>,
    /// Only sagas created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only sagas created before this time.
    pub created_before: Option<DateTime<Utc>>,
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
     s.input, s.context, s.version, s.created_at, s.updated_at, s.stop_reason, s.trace_id, \
     s.trace_root_span, \
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
    stop_reason: Option<String>,
    trace_id: Option<String>,
    trace_root_span: Option<String>,
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
                stop: self
                    .stop_reason
                    .and_then(|r| serde_json::from_value(Value::String(r)).ok()),
                trace_id: self.trace_id,
                trace_root_span: self.trace_root_span,
                created_at: self.created_at,
                updated_at: self.updated_at,
            },
            version: self.version,
        })
    }
}

/// Search keys as the `jsonb` object they are stored and matched as.
fn keys_json(keys: &BTreeMap<String, String>) -> Value {
    Value::Object(
        keys.iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect(),
    )
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Store {
    /// A store over the orchestrator's pool.
    pub fn new(pool: PgPool) -> Self {
        let _ = runtime::metrics::handle();
        metrics::describe_counter!(STORE_READS, "Reads of the orchestrator's store, by query");
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
        read("saga");
        let mut conn = self.pool.acquire().await?;
        Ok(load_rows(&mut conn, &[id]).await?.remove(&id))
    }

    /// The saga an idempotency key created, if any.
    pub async fn find_key(&self, key: &str) -> Result<Option<KeyedSaga>, StoreError> {
        read("idempotency_key");
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
        read("list");
        let (after_at, after_id) = filter
            .after
            .map_or((None, None), |(at, id)| (Some(at), Some(id)));
        // Plans are generic (`plan_cache_mode`): the key condition is in the statement only
        // when there are keys, so that it can use the GIN index and an unfiltered list the
        // newest-first index.
        let keys = (!filter.keys.is_empty()).then(|| keys_json(&filter.keys));
        let keys_condition = if keys.is_some() {
            "AND s.search_keys @> $8::jsonb "
        } else {
            ""
        };
        let sql = format!(
            "{SELECT_SAGAS} WHERE ($1::text IS NULL OR s.state = $1::saga_state) \
             AND ($2::text IS NULL OR s.saga_type = $2) \
             AND ($3::timestamptz IS NULL OR (s.created_at, s.id) < ($3, $4)) \
             AND ($6::timestamptz IS NULL OR s.created_at >= $6) \
             AND ($7::timestamptz IS NULL OR s.created_at < $7) \
             {keys_condition}ORDER BY s.created_at DESC, s.id DESC LIMIT $5"
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(filter.state.map(SagaState::as_str))
            .bind(filter.saga_type.as_deref())
            .bind(after_at)
            .bind(after_id)
            .bind(filter.limit)
            .bind(filter.created_after)
            .bind(filter.created_before);
        if let Some(keys) = keys {
            query = query.bind(keys);
        }
        let rows: Vec<SagaRow> = query.fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|r| r.decode().map(|s| s.saga))
            .collect()
    }

    /// Creates a saga with its first effects, in one statement. With an idempotency key that
    /// is already taken, nothing is written and the existing saga's key record is returned.
    pub async fn create(
        &self,
        change: Change,
        idempotency: Option<(&str, &[u8])>,
    ) -> Result<Result<(), KeyedSaga>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let written = write(&mut conn, std::slice::from_ref(&change), idempotency).await?;
        if written.created.is_empty() {
            let key = idempotency.map(|(k, _)| k).unwrap_or_default();
            return match self.find_key(key).await? {
                Some(existing) => Ok(Err(existing)),
                None => Err(StoreError::Conflict),
            };
        }
        Ok(Ok(()))
    }

    /// Deletes up to `batch` finished sagas (completed, compensated, cancelled) that last
    /// changed more than `keep` ago, with their steps, compensations, timers and history, in
    /// one statement that locks only their rows; returns how many went.
    pub async fn delete_finished(&self, keep: Duration, batch: i64) -> Result<u64, StoreError> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM sagas WHERE id IN ( \
                    SELECT id FROM sagas \
                    WHERE state IN ('completed', 'compensated', 'cancelled') \
                      AND updated_at < now() - make_interval(secs => $1) \
                    ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING id), \
             steps AS (DELETE FROM saga_steps WHERE saga_id IN (SELECT id FROM gone)), \
             compensations AS (DELETE FROM saga_compensations \
                 WHERE saga_id IN (SELECT id FROM gone)), \
             timers AS (DELETE FROM timers WHERE saga_id IN (SELECT id FROM gone)), \
             history AS (DELETE FROM saga_history WHERE saga_id IN (SELECT id FROM gone)) \
             SELECT count(*) FROM gone",
        )
        .bind(keep.as_secs_f64())
        .bind(batch)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    /// Locks the sagas of up to `limit` due timers, skipping sagas another transaction holds
    /// (a reply batch moving them, another replica's sweep); each timer with how late it is.
    /// Locking the saga, not the timer, keeps one lock order for every writer: saga first,
    /// then its timers.
    pub async fn due_timers(
        conn: &mut PgConnection,
        limit: i64,
    ) -> Result<Vec<(SagaId, Timer, Duration)>, StoreError> {
        read("due_timers");
        let rows: Vec<(Uuid, String, i16, String, i32, f64)> = sqlx::query_as(
            "SELECT t.saga_id, t.kind, t.step_index, t.phase, t.attempt, \
                    extract(epoch FROM clock_timestamp() - t.due_at)::float8 \
             FROM timers t JOIN sagas s ON s.id = t.saga_id WHERE t.due_at <= now() \
             ORDER BY t.due_at LIMIT $1 FOR UPDATE OF s SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(conn)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, kind, step, phase, attempt, lag)| {
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
                    Duration::from_secs_f64(lag.max(0.0)),
                ))
            })
            .collect())
    }

    /// Deletes fired timers (before their sagas' changes re-arm new ones).
    pub async fn delete_timers(
        conn: &mut PgConnection,
        fired: &[(SagaId, Timer)],
    ) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = fired.iter().map(|(s, _)| s.0).collect();
        let slots: Vec<&str> = fired.iter().map(|(_, t)| t.kind.slot()).collect();
        sqlx::query(
            "DELETE FROM timers t USING UNNEST($1::uuid[], $2::text[]) AS f(id, slot) \
             WHERE t.saga_id = f.id AND t.slot = f.slot",
        )
        .bind(&ids)
        .bind(&slots)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// How many sagas are running, compensating and failed, and how long ago the least
    /// recently changed running or compensating saga changed.
    pub async fn activity(&self) -> Result<(Vec<(String, i64)>, f64), StoreError> {
        read("activity");
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT s.state, (SELECT count(*) FROM sagas WHERE state = s.state::saga_state) \
             FROM UNNEST(ARRAY['running', 'compensating', 'failed']) AS s(state)",
        )
        .fetch_all(&self.pool)
        .await?;
        let oldest: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - min(updated_at))::float8 FROM sagas \
             WHERE state IN ('running', 'compensating')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((counts, oldest.unwrap_or(0.0)))
    }

    /// How many sagas are in each state, for the saga page: one query that counts each state
    /// through the `(state, created_at, id)` index and stops at `cap`, so that it stays cheap
    /// however many sagas are kept (a count equal to `cap` means "at least").
    pub async fn count_by_state(&self, cap: i64) -> Result<Vec<(String, i64)>, StoreError> {
        read("count_by_state");
        Ok(sqlx::query_as(
            "SELECT s.state::text, (SELECT count(*) FROM (SELECT 1 FROM sagas \
             WHERE state = s.state LIMIT $1) AS capped) \
             FROM unnest(enum_range(NULL::saga_state)) AS s(state)",
        )
        .bind(cap)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Makes every armed step timeout (the wait for a reply to a command in flight) due now,
    /// so that every command in flight is sent again at once with its same command id: at
    /// start-up, after a crash, when replies may have been lost with the process that pulled
    /// them. Returns how many were re-armed.
    pub async fn rearm_step_timeouts(&self) -> Result<u64, StoreError> {
        let done =
            sqlx::query("UPDATE timers SET due_at = now() WHERE kind = $1 AND due_at > now()")
                .bind(label(&TimerKind::StepTimeout))
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    /// Makes the step timeouts of `sagas` due now: their commands' publish failed after the
    /// commit, and the timeout's firing sends them again (with the same command id).
    pub async fn hasten_step_timeouts(&self, sagas: &[SagaId]) -> Result<u64, StoreError> {
        let ids: Vec<Uuid> = sagas.iter().map(|s| s.0).collect();
        let done = sqlx::query(
            "UPDATE timers SET due_at = now() WHERE saga_id = ANY($1) AND kind = $2 \
             AND due_at > now()",
        )
        .bind(&ids)
        .bind(label(&TimerKind::StepTimeout))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// A page of a saga's history after entry `after` (0: from the start), oldest first, each
    /// entry with its id (the cursor of the next page); `None` when there is no such saga.
    pub async fn history(
        &self,
        id: SagaId,
        after: i64,
        limit: i64,
    ) -> Result<Option<Vec<(i64, HistoryEntry)>>, StoreError> {
        read("history");
        #[allow(clippy::type_complexity, reason = "one row of the history table")]
        let rows: Vec<(
            i64,
            DateTime<Utc>,
            String,
            Option<String>,
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<Value>,
        )> = sqlx::query_as(
            "SELECT id, at, kind, step, phase, attempt, outcome, error, actor, action, input \
             FROM saga_history WHERE saga_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(id.0)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sagas WHERE id = $1)")
                    .bind(id.0)
                    .fetch_one(&self.pool)
                    .await?;
            if !exists {
                return Ok(None);
            }
        }
        rows.into_iter()
            .map(
                |(row, at, kind, step, phase, attempt, outcome, error, actor, action, input)| {
                    let kind = HistoryKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(id.0, format!("history kind {kind}")))?;
                    Ok((
                        row,
                        HistoryEntry {
                            at,
                            kind,
                            step,
                            phase,
                            attempt: attempt.and_then(|a| u32::try_from(a).ok()),
                            outcome,
                            error,
                            actor,
                            action,
                            input,
                        },
                    ))
                },
            )
            .collect::<Result<Vec<_>, StoreError>>()
            .map(Some)
    }

    /// Appends history entries that come with no change of their saga (an operator command
    /// the saga refused), inside `conn`'s transaction.
    pub async fn record_history(
        conn: &mut PgConnection,
        entries: &[(SagaId, HistoryEntry)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut columns = HistoryColumns::default();
        for (id, entry) in entries {
            columns.push(id.0, entry);
        }
        sqlx::query(
            "INSERT INTO saga_history (saga_id, at, kind, step, phase, attempt, outcome, error, \
                                       actor, action, input) \
             SELECT saga_id, at, kind, step, phase, attempt, outcome, error, actor, action, input \
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], \
                         $6::int4[], $7::text[], $8::text[], $9::text[], $10::text[], $11::jsonb[]) \
                  WITH ORDINALITY AS h(saga_id, at, kind, step, phase, attempt, outcome, error, \
                                       actor, action, input, n) \
             ORDER BY n",
        )
        .bind(&columns.saga)
        .bind(&columns.at)
        .bind(&columns.kind)
        .bind(&columns.step)
        .bind(&columns.phase)
        .bind(&columns.attempt)
        .bind(&columns.outcome)
        .bind(&columns.error)
        .bind(&columns.actor)
        .bind(&columns.action)
        .bind(&columns.input)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The columns of history entries, for an `UNNEST` insert.
#[derive(Default)]
struct HistoryColumns {
    saga: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    kind: Vec<&'static str>,
    step: Vec<Option<String>>,
    phase: Vec<Option<String>>,
    attempt: Vec<Option<i32>>,
    outcome: Vec<Option<String>>,
    error: Vec<Option<String>>,
    actor: Vec<Option<String>>,
    action: Vec<Option<String>>,
    input: Vec<Option<Value>>,
}

impl HistoryColumns {
    fn push(&mut self, saga: Uuid, entry: &HistoryEntry) {
        self.saga.push(saga);
        self.at.push(entry.at);
        self.kind.push(entry.kind.as_str());
        self.step.push(entry.step.clone());
        self.phase.push(entry.phase.clone());
        self.attempt.push(entry.attempt.map(int));
        self.outcome.push(entry.outcome.clone());
        self.error.push(entry.error.clone());
        self.actor.push(entry.actor.clone());
        self.action.push(entry.action.clone());
        self.input.push(entry.input.clone());
    }
}

/// Loads sagas by id (one round trip).
pub async fn load_many(
    conn: &mut PgConnection,
    ids: &[SagaId],
) -> Result<HashMap<SagaId, Stored>, StoreError> {
    read("load");
    load_rows(conn, ids).await
}

async fn load_rows(
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

/// Writes changes of existing sagas inside the caller's transaction: version-checked saga
/// rows, changed steps and compensations, timers, outbox rows and history entries, in one
/// statement. A concurrent change fails the whole batch with [`StoreError::Conflict`].
pub async fn apply(conn: &mut PgConnection, changes: &[Change]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let expected = changes.iter().filter(|c| c.before.is_some()).count();
    let written = write(conn, changes, None).await?;
    if written.moved.len() != expected {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

/// Writes changes of existing sagas in one statement of its own (no transaction around it):
/// each saga's rows are written only if its version still matches, so a saga another writer
/// changed meanwhile is left entirely as it was. Returns the sagas that moved.
pub async fn apply_moving(
    conn: &mut PgConnection,
    changes: &[Change],
) -> Result<HashSet<SagaId>, StoreError> {
    if changes.is_empty() {
        return Ok(HashSet::new());
    }
    let written = write(conn, changes, None).await?;
    Ok(written.moved.into_iter().map(SagaId).collect())
}

/// The columns of one batch write.
#[derive(Default)]
struct Batch {
    cleared: Vec<Uuid>,
    timer_saga: Vec<Uuid>,
    timer_slot: Vec<&'static str>,
    timer_kind: Vec<String>,
    timer_step: Vec<i16>,
    timer_phase: Vec<&'static str>,
    timer_attempt: Vec<i32>,
    timer_after: Vec<f64>,
    saga_id: Vec<Uuid>,
    saga_state: Vec<&'static str>,
    saga_context: Vec<Value>,
    saga_stop: Vec<Option<String>>,
    saga_version: Vec<i64>,
    saga_updated: Vec<DateTime<Utc>>,
    saga_keys: Vec<Value>,
    steps: StepColumns,
    comps: StepColumns,
    outbox: Vec<OutboxMessage>,
    outbox_saga: Vec<Uuid>,
    history: HistoryColumns,
    created: NewSagas,
}

/// The rows of sagas a batch creates.
#[derive(Default)]
struct NewSagas {
    id: Vec<Uuid>,
    saga_type: Vec<String>,
    definition_version: Vec<i32>,
    state: Vec<&'static str>,
    input: Vec<Value>,
    context: Vec<Value>,
    created_at: Vec<DateTime<Utc>>,
    trace_id: Vec<Option<String>>,
    trace_root_span: Vec<Option<String>>,
    keys: Vec<Value>,
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
    retry_base: Vec<i32>,
}

fn small(value: u16) -> i16 {
    i16::try_from(value).unwrap_or(i16::MAX)
}

fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

impl Batch {
    /// The columns of `changes`, in the order of their saga ids: every writer locks the rows of
    /// its sagas in that one order, so two batches never wait for each other in a cycle.
    fn of(changes: &[Change]) -> Self {
        let mut ordered: Vec<&Change> = changes.iter().collect();
        ordered.sort_by_key(|c| c.after.id);
        let mut b = Batch::default();
        for change in ordered {
            let id = change.after.id.0;
            if change.timer.clear_all && change.timer.set.is_empty() {
                b.cleared.push(id);
            }
            for (timer, wait) in change.timer.set.iter().copied() {
                b.timer_saga.push(id);
                b.timer_slot.push(timer.kind.slot());
                b.timer_kind.push(label(&timer.kind));
                b.timer_step.push(small(timer.step_index));
                b.timer_phase.push(timer.phase.as_str());
                b.timer_attempt.push(int(timer.attempt));
                b.timer_after.push(wait.as_secs_f64());
            }
            let before = change.before.as_ref();
            if before.is_none() {
                let saga = &change.after;
                let n = &mut b.created;
                n.id.push(id);
                n.saga_type.push(saga.saga_type.clone());
                n.definition_version
                    .push(i32::try_from(saga.definition_version).unwrap_or(i32::MAX));
                n.state.push(saga.state.as_str());
                n.input.push(Value::Object(saga.input.clone()));
                n.context.push(Value::Object(saga.context.clone()));
                n.created_at.push(saga.created_at);
                n.trace_id.push(saga.trace_id.clone());
                n.trace_root_span.push(saga.trace_root_span.clone());
                n.keys.push(keys_json(&change.search_keys));
            }
            if let Some(before) = before {
                b.saga_id.push(id);
                b.saga_state.push(change.after.state.as_str());
                b.saga_context
                    .push(Value::Object(change.after.context.clone()));
                b.saga_stop.push(change.after.stop.map(|r| label(&r)));
                b.saga_version.push(before.version);
                b.saga_updated.push(change.after.updated_at);
                b.saga_keys.push(keys_json(&change.search_keys));
            }
            let before = before.map(|b| &b.saga);
            for (index, step) in change.after.steps.iter().enumerate() {
                if before.and_then(|b| b.steps.get(index)) == Some(step) {
                    continue;
                }
                let s = &mut b.steps;
                s.saga.push(id);
                s.index.push(i16::try_from(index).unwrap_or(i16::MAX));
                s.name.push(step.name.clone());
                s.state.push(label(&step.state));
                s.attempts.push(int(step.attempts));
                s.started.push(step.started_at);
                s.finished.push(step.finished_at);
                s.error.push(step.last_error.clone());
                s.retry_base.push(int(step.retry_base));
            }
            for c in &change.after.compensations {
                if before.is_some_and(|b| b.compensations.contains(c)) {
                    continue;
                }
                let s = &mut b.comps;
                s.saga.push(id);
                s.index.push(small(c.step_index));
                s.name.push(c.name.clone());
                s.state.push(label(&c.state));
                s.attempts.push(int(c.attempts));
                s.started.push(c.started_at);
                s.finished.push(c.finished_at);
                s.error.push(c.last_error.clone());
                s.run_order.push(c.run_order.map(int));
                s.retry_base.push(int(c.retry_base));
            }
            b.outbox.extend(change.outbox.iter().cloned());
            b.outbox_saga
                .extend(std::iter::repeat_n(id, change.outbox.len()));
            for entry in &change.history {
                b.history.push(id, entry);
            }
        }
        b
    }
}

/// What one write did.
struct Written {
    /// The existing sagas whose version matched: they, and only they, were written.
    moved: Vec<Uuid>,
    /// The new sagas inserted (none when the idempotency key was taken).
    created: Vec<Uuid>,
}

/// Writes a batch in one round trip (data-modifying CTEs). A saga's steps, compensations,
/// timers, outbox rows and history are written only with its row: when its version matched
/// (`moved`) or when it was inserted (`created`, with `idempotency` as its key and request
/// hash), so that the statement is all-or-nothing per saga even outside a transaction.
async fn write(
    conn: &mut PgConnection,
    changes: &[Change],
    idempotency: Option<(&str, &[u8])>,
) -> Result<Written, StoreError> {
    let b = Batch::of(changes);
    let outbox_ids: Vec<Uuid> = b.outbox.iter().map(|m| m.id).collect();
    let outbox_subjects: Vec<&str> = b
        .outbox
        .iter()
        .map(|m| m.outgoing.subject.as_str())
        .collect();
    let outbox_headers: Vec<Value> = b
        .outbox
        .iter()
        .map(|m| serde_json::to_value(&m.outgoing.headers).unwrap_or_default())
        .collect();
    let outbox_payloads: Vec<&[u8]> = b
        .outbox
        .iter()
        .map(|m| m.outgoing.payload.as_slice())
        .collect();
    let (moved, created): (Vec<Uuid>, Vec<Uuid>) = sqlx::query_as(
        "WITH moved AS (UPDATE sagas s SET state = u.state::saga_state, context = u.context, \
                stop_reason = u.stop, version = s.version + 1, updated_at = u.updated_at, \
                search_keys = u.keys \
             FROM UNNEST($9::uuid[], $10::text[], $11::jsonb[], $12::text[], $13::int8[], \
                         $14::timestamptz[], $38::jsonb[]) \
                 AS u(id, state, context, stop, version, updated_at, keys) \
             WHERE s.id = u.id AND s.version = u.version RETURNING s.id), \
         created AS (INSERT INTO sagas (id, saga_type, definition_version, state, input, \
                context, idempotency_key, request_hash, created_at, updated_at, trace_id, \
                trace_root_span, search_keys) \
             SELECT id, saga_type, def, state::saga_state, input, context, $60, $61, at, at, \
                    trace_id, root_span, keys \
             FROM UNNEST($50::uuid[], $51::text[], $52::int4[], $53::text[], $54::jsonb[], \
                         $55::jsonb[], $56::timestamptz[], $57::text[], $58::text[], \
                         $59::jsonb[]) \
                 AS n(id, saga_type, def, state, input, context, at, trace_id, root_span, keys) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id), \
         live AS (SELECT id FROM moved UNION ALL SELECT id FROM created), \
         cleared AS (DELETE FROM timers WHERE saga_id = ANY($1::uuid[]) \
             AND saga_id IN (SELECT id FROM live)), \
         armed AS (INSERT INTO timers (saga_id, slot, kind, step_index, phase, attempt, due_at) \
             SELECT id, slot, kind, step, phase, attempt, now() + make_interval(secs => wait) \
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::int2[], $6::text[], $7::int4[], \
                         $8::float8[]) AS t(id, slot, kind, step, phase, attempt, wait) \
             WHERE t.id IN (SELECT id FROM live) \
             ON CONFLICT (saga_id, slot) DO UPDATE SET kind = excluded.kind, \
                step_index = excluded.step_index, phase = excluded.phase, \
                attempt = excluded.attempt, due_at = excluded.due_at), \
         steps AS (INSERT INTO saga_steps (saga_id, step_index, name, state, attempts, \
                started_at, finished_at, last_error, retry_base) \
             SELECT * FROM UNNEST($15::uuid[], $16::int2[], $17::text[], $18::text[], $19::int4[], \
                                  $20::timestamptz[], $21::timestamptz[], $22::text[], $23::int4[]) \
                 AS x(saga_id, step_index, name, state, attempts, started_at, finished_at, \
                      last_error, retry_base) \
             WHERE x.saga_id IN (SELECT id FROM live) \
             ON CONFLICT (saga_id, step_index) DO UPDATE SET state = excluded.state, \
                attempts = excluded.attempts, started_at = excluded.started_at, \
                finished_at = excluded.finished_at, last_error = excluded.last_error, \
                retry_base = excluded.retry_base), \
         comps AS (INSERT INTO saga_compensations (saga_id, step_index, name, state, attempts, \
                started_at, finished_at, last_error, run_order, retry_base) \
             SELECT * FROM UNNEST($24::uuid[], $25::int2[], $26::text[], $27::text[], $28::int4[], \
                                  $29::timestamptz[], $30::timestamptz[], $31::text[], $32::int4[], \
                                  $33::int4[]) \
                 AS x(saga_id, step_index, name, state, attempts, started_at, finished_at, \
                      last_error, run_order, retry_base) \
             WHERE x.saga_id IN (SELECT id FROM live) \
             ON CONFLICT (saga_id, step_index) DO UPDATE SET state = excluded.state, \
                attempts = excluded.attempts, started_at = excluded.started_at, \
                finished_at = excluded.finished_at, last_error = excluded.last_error, \
                run_order = excluded.run_order, retry_base = excluded.retry_base), \
         queued AS (INSERT INTO outbox (id, subject, headers, payload) \
             SELECT id, subject, headers, payload \
             FROM UNNEST($34::uuid[], $35::text[], $36::jsonb[], $37::bytea[], $62::uuid[]) \
                 AS o(id, subject, headers, payload, saga_id) \
             WHERE o.saga_id IN (SELECT id FROM live)), \
         logged AS (INSERT INTO saga_history (saga_id, at, kind, step, phase, attempt, outcome, \
                error, actor, action, input) \
             SELECT saga_id, at, kind, step, phase, attempt, outcome, error, actor, action, input \
             FROM UNNEST($39::uuid[], $40::timestamptz[], $41::text[], $42::text[], $43::text[], \
                         $44::int4[], $45::text[], $46::text[], $47::text[], $48::text[], \
                         $49::jsonb[]) \
                  WITH ORDINALITY AS h(saga_id, at, kind, step, phase, attempt, outcome, error, \
                                       actor, action, input, n) \
             WHERE h.saga_id IN (SELECT id FROM live) \
             ORDER BY n) \
         SELECT ARRAY(SELECT id FROM moved), ARRAY(SELECT id FROM created)",
    )
    .bind(&b.cleared)
    .bind(&b.timer_saga)
    .bind(&b.timer_slot)
    .bind(&b.timer_kind)
    .bind(&b.timer_step)
    .bind(&b.timer_phase)
    .bind(&b.timer_attempt)
    .bind(&b.timer_after)
    .bind(&b.saga_id)
    .bind(&b.saga_state)
    .bind(&b.saga_context)
    .bind(&b.saga_stop)
    .bind(&b.saga_version)
    .bind(&b.saga_updated)
    .bind(&b.steps.saga)
    .bind(&b.steps.index)
    .bind(&b.steps.name)
    .bind(&b.steps.state)
    .bind(&b.steps.attempts)
    .bind(&b.steps.started)
    .bind(&b.steps.finished)
    .bind(&b.steps.error)
    .bind(&b.steps.retry_base)
    .bind(&b.comps.saga)
    .bind(&b.comps.index)
    .bind(&b.comps.name)
    .bind(&b.comps.state)
    .bind(&b.comps.attempts)
    .bind(&b.comps.started)
    .bind(&b.comps.finished)
    .bind(&b.comps.error)
    .bind(&b.comps.run_order)
    .bind(&b.comps.retry_base)
    .bind(&outbox_ids)
    .bind(&outbox_subjects)
    .bind(&outbox_headers)
    .bind(&outbox_payloads)
    .bind(&b.saga_keys)
    .bind(&b.history.saga)
    .bind(&b.history.at)
    .bind(&b.history.kind)
    .bind(&b.history.step)
    .bind(&b.history.phase)
    .bind(&b.history.attempt)
    .bind(&b.history.outcome)
    .bind(&b.history.error)
    .bind(&b.history.actor)
    .bind(&b.history.action)
    .bind(&b.history.input)
    .bind(&b.created.id)
    .bind(&b.created.saga_type)
    .bind(&b.created.definition_version)
    .bind(&b.created.state)
    .bind(&b.created.input)
    .bind(&b.created.context)
    .bind(&b.created.created_at)
    .bind(&b.created.trace_id)
    .bind(&b.created.trace_root_span)
    .bind(&b.created.keys)
    .bind(idempotency.map(|(k, _)| k))
    .bind(idempotency.map(|(_, h)| h))
    .bind(&b.outbox_saga)
    .fetch_one(conn)
    .await?;
    Ok(Written { moved, created })
}
