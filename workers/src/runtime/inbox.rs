//! The worker inbox: every command a worker handled, keyed by its message id, with the reply it
//! got. A command seen before re-sends that reply and changes nothing. Rows are written in the
//! transaction of the domain change they record, and forgotten after [`RETENTION_DAYS`]: a
//! later redelivery is handled again, and each context's own keys (one reward per saga, one
//! ledger entry per saga step) make that a no-op.

use std::collections::HashMap;
use std::time::Duration;

use contracts::MessageId;
use runtime::jetstream::Outgoing;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a handled command's reply is kept for re-sending.
pub const RETENTION_DAYS: i32 = 7;

/// The stored replies of the commands among `ids` that were handled before.
pub async fn stored_replies(
    pool: &PgPool,
    ids: &[MessageId],
) -> Result<HashMap<MessageId, Outgoing>, sqlx::Error> {
    let ids: Vec<Uuid> = ids.iter().map(|m| m.0).collect();
    let rows: Vec<(Uuid, String, serde_json::Value, Vec<u8>)> = sqlx::query_as(
        "SELECT message_id, reply_subject, reply_headers, reply_payload FROM inbox \
         WHERE message_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, subject, headers, payload)| {
            let headers = serde_json::from_value(headers).unwrap_or_default();
            (
                MessageId(id),
                Outgoing {
                    subject,
                    headers,
                    payload,
                },
            )
        })
        .collect())
}

/// Inbox rows of a batch, written with one statement.
#[derive(Default)]
pub struct InboxRows {
    ids: Vec<Uuid>,
    subjects: Vec<String>,
    headers: Vec<serde_json::Value>,
    payloads: Vec<Vec<u8>>,
}

impl InboxRows {
    /// Records that command `id` was answered with `reply`.
    pub fn push(&mut self, id: MessageId, reply: &Outgoing) {
        self.ids.push(id.0);
        self.subjects.push(reply.subject.clone());
        self.headers
            .push(serde_json::to_value(&reply.headers).unwrap_or_default());
        self.payloads.push(reply.payload.clone());
    }

    /// Writes the rows inside the caller's transaction. When another delivery of the same
    /// command wrote its row meanwhile, the key conflict fails the transaction: the batch is
    /// delivered again and then re-sends the stored reply.
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO inbox (message_id, reply_subject, reply_headers, reply_payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bytea[])",
        )
        .bind(&self.ids)
        .bind(&self.subjects)
        .bind(&self.headers)
        .bind(&self.payloads)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Forgets inbox rows past their retention, every 10 minutes until `shutdown`.
pub async fn prune(pool: PgPool, shutdown: CancellationToken) {
    loop {
        let pruned = sqlx::query(
            "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1::int)",
        )
        .bind(RETENTION_DAYS)
        .execute(&pool)
        .await;
        if let Err(error) = pruned {
            tracing::warn!(%error, "inbox pruning failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
}
