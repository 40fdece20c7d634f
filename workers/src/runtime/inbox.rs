//! The worker inbox: every command a worker handled, keyed by its message id, with its answer:
//! the reply and the messages that followed it (domain events, messages to other streams). A
//! command seen before re-sends that answer and changes nothing. Rows are written in the
//! transaction of the domain change they record, and forgotten after [`RETENTION_DAYS`]: a
//! later redelivery is handled again, and each context's own keys (one reward per saga, one
//! ledger entry per saga step) make that a no-op.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use contracts::MessageId;
use runtime::jetstream::Outgoing;
use runtime::outbox::OutboxMessage;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a handled command sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The reply to the orchestrator.
    pub reply: Outgoing,
    /// The messages that followed, each with the id JetStream deduplicates it by.
    pub followups: Vec<OutboxMessage>,
}

impl Answer {
    /// Every message of the answer with its dedup id (the reply needs none: the orchestrator
    /// applies only the answer to the attempt in flight, once).
    pub fn messages(&self) -> impl Iterator<Item = (&Outgoing, Option<String>)> {
        std::iter::once((&self.reply, None)).chain(
            self.followups
                .iter()
                .map(|m| (&m.outgoing, Some(m.id.to_string()))),
        )
    }
}

/// A follow-up message as its inbox row keeps it.
#[derive(Serialize, Deserialize)]
struct Followup {
    id: Uuid,
    subject: String,
    headers: BTreeMap<String, String>,
    payload: String,
}

fn followups_json(followups: &[OutboxMessage]) -> serde_json::Value {
    let rows: Vec<Followup> = followups
        .iter()
        .map(|m| Followup {
            id: m.id,
            subject: m.outgoing.subject.clone(),
            headers: m.outgoing.headers.clone(),
            payload: String::from_utf8_lossy(&m.outgoing.payload).into_owned(),
        })
        .collect();
    serde_json::to_value(rows).unwrap_or_default()
}

fn followups_of(value: serde_json::Value) -> Vec<OutboxMessage> {
    serde_json::from_value::<Vec<Followup>>(value)
        .unwrap_or_default()
        .into_iter()
        .map(|f| OutboxMessage {
            id: f.id,
            outgoing: Outgoing {
                subject: f.subject,
                headers: f.headers,
                payload: f.payload.into_bytes(),
            },
        })
        .collect()
}

/// How long a handled command's reply is kept for re-sending.
pub const RETENTION_DAYS: i32 = 7;

/// The stored answers of the commands among `ids` that were handled before.
pub async fn stored_answers(
    pool: &PgPool,
    ids: &[MessageId],
) -> Result<HashMap<MessageId, Answer>, sqlx::Error> {
    let ids: Vec<Uuid> = ids.iter().map(|m| m.0).collect();
    let rows: Vec<(Uuid, String, serde_json::Value, Vec<u8>, serde_json::Value)> = sqlx::query_as(
        "SELECT message_id, reply_subject, reply_headers, reply_payload, followups \
             FROM inbox WHERE message_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, subject, headers, payload, followups)| {
            let headers = serde_json::from_value(headers).unwrap_or_default();
            let reply = Outgoing {
                subject,
                headers,
                payload,
            };
            let followups = followups_of(followups);
            (MessageId(id), Answer { reply, followups })
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
    followups: Vec<serde_json::Value>,
}

impl InboxRows {
    /// Records that command `id` was answered with `answer`.
    pub fn push(&mut self, id: MessageId, answer: &Answer) {
        self.ids.push(id.0);
        self.subjects.push(answer.reply.subject.clone());
        self.headers
            .push(serde_json::to_value(&answer.reply.headers).unwrap_or_default());
        self.payloads.push(answer.reply.payload.clone());
        self.followups.push(followups_json(&answer.followups));
    }

    /// Writes the rows inside the caller's transaction. When another delivery of the same
    /// command wrote its row meanwhile, the key conflict fails the transaction: the batch is
    /// delivered again and then re-sends the stored reply.
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO inbox (message_id, reply_subject, reply_headers, reply_payload, \
                                followups) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bytea[], $5::jsonb[])",
        )
        .bind(&self.ids)
        .bind(&self.subjects)
        .bind(&self.headers)
        .bind(&self.payloads)
        .bind(&self.followups)
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
