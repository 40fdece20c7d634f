//! The transactional outbox of a service: messages are written in the same PostgreSQL
//! transaction as the state change that caused them, published after commit with
//! `Nats-Msg-Id` = outbox id (so JetStream drops a second publish of the same row), and deleted
//! only once JetStream acknowledged them. The relay re-publishes what a crash left behind: its
//! first pass, at start-up, publishes every row whatever its age (rows left by the crash must
//! not wait for the relay's minimum age); replicas share the work with `FOR UPDATE SKIP LOCKED`.
//!
//! Every service's migrations create the same `outbox` table in its own schema.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::jetstream::Outgoing;

/// One row of the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The row's id, used as `Nats-Msg-Id`.
    pub id: Uuid,
    /// The message.
    pub outgoing: Outgoing,
}

impl OutboxMessage {
    /// A new row for `outgoing` with a fresh time-ordered id.
    pub fn new(outgoing: Outgoing) -> Self {
        Self {
            id: Uuid::now_v7(),
            outgoing,
        }
    }

    /// A row for a domain event: the row's id (the `Nats-Msg-Id`) is the event's message id.
    pub fn event(
        topology: &contracts::Topology,
        envelope: &contracts::EventEnvelope,
        headers: &BTreeMap<String, String>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: envelope.message_id.0,
            outgoing: crate::jetstream::encode_event(topology, envelope, headers)?,
        })
    }
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// JetStream did not acknowledge a publish.
    #[error("publish failed: {0}")]
    Publish(String),
}

/// Writes rows inside the caller's transaction.
pub async fn insert(
    conn: &mut PgConnection,
    messages: &[OutboxMessage],
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let subjects: Vec<&str> = messages
        .iter()
        .map(|m| m.outgoing.subject.as_str())
        .collect();
    let headers: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::to_value(&m.outgoing.headers).unwrap_or_default())
        .collect();
    let payloads: Vec<&[u8]> = messages
        .iter()
        .map(|m| m.outgoing.payload.as_slice())
        .collect();
    sqlx::query(
        "INSERT INTO outbox (id, subject, headers, payload) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bytea[])",
    )
    .bind(&ids)
    .bind(&subjects)
    .bind(&headers)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// Publishes rows and deletes the ones JetStream acknowledged. Deleting is off the hot path:
/// acknowledged ids go to a background task that deletes them in batches (a row the relay
/// re-publishes before its delete lands is dropped by JetStream's de-duplication).
#[derive(Clone)]
pub struct Publisher {
    pool: PgPool,
    js: jetstream::Context,
    acked: mpsc::UnboundedSender<Uuid>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher over a service's pool and JetStream context; spawns its deleter, which
    /// ends when the last clone of the publisher is dropped.
    pub fn new(pool: PgPool, js: jetstream::Context) -> Self {
        let (acked, pending) = mpsc::unbounded_channel();
        tokio::spawn(delete_acknowledged(pool.clone(), pending));
        Self { pool, js, acked }
    }

    /// Publishes `messages` concurrently and queues the acknowledged rows for deletion. Rows
    /// whose publish failed stay for the relay.
    pub async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), OutboxError> {
        if messages.is_empty() {
            return Ok(());
        }
        let acked = publish_all(&self.js, messages).await;
        let mut failure = None;
        for (message, result) in messages.iter().zip(acked) {
            match result {
                Ok(()) => {
                    let _ = self.acked.send(message.id);
                }
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) => Err(OutboxError::Publish(error)),
            None => Ok(()),
        }
    }

    /// Re-publishes rows older than `min_age` until `shutdown`, every `interval`. At start-up
    /// and at shutdown it flushes whatever is in the outbox, whatever its age: at start-up those
    /// are the rows a crash left behind (a row a live replica is publishing meanwhile is
    /// published twice, and JetStream drops the copy).
    pub async fn run_relay(
        &self,
        shutdown: CancellationToken,
        interval: Duration,
        min_age: Duration,
    ) {
        const PASS: i64 = 500;
        let mut flushed = 0;
        loop {
            match self.relay_once(Duration::ZERO, PASS).await {
                Ok(n) => {
                    flushed += n;
                    if i64::try_from(n).unwrap_or(i64::MAX) < PASS || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay: the start-up pass failed");
                    break;
                }
            }
        }
        if flushed > 0 {
            tracing::info!(
                published = flushed,
                "outbox relay: published what was left at start-up"
            );
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.relay_once(min_age, PASS).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(published = n, "outbox relay re-published rows"),
                Err(error) => tracing::warn!(%error, "outbox relay pass failed"),
            }
        }
        match self.relay_once(Duration::ZERO, 10_000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(published = n, "outbox flushed at shutdown"),
            Err(error) => {
                tracing::warn!(%error, "flushing the outbox at shutdown failed; the next start re-publishes")
            }
        }
    }

    /// One relay pass: locks up to `limit` rows older than `min_age` (skipping rows another
    /// replica holds), publishes them, deletes the acknowledged ones.
    pub async fn relay_once(&self, min_age: Duration, limit: i64) -> Result<usize, OutboxError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, String, serde_json::Value, Vec<u8>)> = sqlx::query_as(
            "SELECT id, subject, headers, payload FROM outbox \
             WHERE created_at < now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(min_age.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<OutboxMessage> = rows
            .into_iter()
            .map(|(id, subject, headers, payload)| OutboxMessage {
                id,
                outgoing: Outgoing {
                    subject,
                    headers: serde_json::from_value::<BTreeMap<String, String>>(headers)
                        .unwrap_or_default(),
                    payload,
                },
            })
            .collect();
        let acked = publish_all(&self.js, &messages).await;
        let done: Vec<Uuid> = messages
            .iter()
            .zip(&acked)
            .filter(|(_, r)| r.is_ok())
            .map(|(m, _)| m.id)
            .collect();
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&done)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.len())
    }

    /// The JetStream context it publishes with.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Rows waiting to be published (the outbox backlog).
    pub async fn backlog(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
    }
}

async fn delete_acknowledged(pool: PgPool, mut pending: mpsc::UnboundedReceiver<Uuid>) {
    let mut ids = Vec::new();
    while pending.recv_many(&mut ids, 8192).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Ok(id) = pending.try_recv() {
            ids.push(id);
        }
        if let Err(error) = sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&pool)
            .await
        {
            tracing::warn!(%error, rows = ids.len(), "deleting published outbox rows failed; the relay re-publishes them, JetStream drops the copies");
        }
        ids.clear();
    }
}

async fn publish_all(
    js: &jetstream::Context,
    messages: &[OutboxMessage],
) -> Vec<Result<(), String>> {
    crate::jetstream::publish_many(
        js,
        messages
            .iter()
            .map(|m| (&m.outgoing, Some(m.id.to_string())))
            .collect(),
    )
    .await
    .into_iter()
    .map(|r| r.map_err(|e| e.0))
    .collect()
}
