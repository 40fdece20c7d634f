//! Retention: finished sagas (completed, compensated, cancelled) older than the retention
//! period are deleted together with their steps, compensations, timers and history, in
//! batches that lock only the rows they delete (`FOR UPDATE SKIP LOCKED`: no table-wide lock,
//! and replicas sweeping at once share the work). A failed saga is parked for an operator and
//! is kept. Deleted sagas are counted in [`RETENTION_DELETED`].

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Finished sagas deleted by the retention sweep.
pub const RETENTION_DELETED: &str = "saga_retention_deleted_total";

/// Deletes up to `batch` finished sagas that last changed more than `keep` ago, with
/// everything stored about them; returns how many went.
pub async fn sweep(pool: &PgPool, keep: Duration, batch: i64) -> Result<u64, sqlx::Error> {
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
    .fetch_one(pool)
    .await?;
    let deleted = u64::try_from(deleted).unwrap_or(0);
    metrics::counter!(RETENTION_DELETED).increment(deleted);
    Ok(deleted)
}

/// Every `every` until `shutdown`, deletes the finished sagas older than `keep`, a batch at a
/// time until none is left.
pub async fn run(
    pool: PgPool,
    keep: Duration,
    every: Duration,
    batch: i64,
    shutdown: CancellationToken,
) {
    let _ = runtime::metrics::handle();
    metrics::describe_counter!(
        RETENTION_DELETED,
        "Finished sagas deleted by the retention sweep, with their steps and history"
    );
    metrics::counter!(RETENTION_DELETED).increment(0);
    loop {
        let mut total = 0;
        loop {
            match sweep(&pool, keep, batch).await {
                Ok(deleted) => {
                    total += deleted;
                    if deleted < u64::try_from(batch).unwrap_or(0) || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "retention sweep failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(
                deleted = total,
                keep_secs = keep.as_secs(),
                "retention: finished sagas deleted"
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
