//! Retention: finished sagas (completed, compensated, cancelled) older than the retention
//! period are deleted together with their steps, compensations, timers and history, in
//! batches that lock only the rows they delete (`FOR UPDATE SKIP LOCKED`: no table-wide lock,
//! and replicas sweeping at once share the work; the statement is
//! [`Store::delete_finished`]). A failed saga is parked for an operator and
//! is kept. Deleted sagas are counted in [`RETENTION_DELETED`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Finished sagas deleted by the retention sweep.
pub const RETENTION_DELETED: &str = "saga_retention_deleted_total";

/// Every `every` until `shutdown`, deletes the finished sagas older than `keep`, a batch at a
/// time until none is left.
pub async fn run(
    store: Store,
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
            match store.delete_finished(keep, batch).await {
                Ok(deleted) => {
                    metrics::counter!(RETENTION_DELETED).increment(deleted);
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
