//! The command loop: a worker's durable pull consumer, handled in batches.
//!
//! For each batch the inbox is read first: a command handled before re-sends its stored answer
//! and changes nothing. Commands whose handling calls another service ([`Mode::Calls`]) run
//! next, concurrently and outside any transaction, each within [`CALL_BUDGET`] so that no call
//! outlives the message's ack wait; their handlers keep their own effects idempotent. The
//! other commands run in one PostgreSQL transaction, which also writes the inbox rows of the
//! whole batch, each with its command's answer (the reply, the domain events and any other
//! messages). Without a failure the batch needs no savepoints; when one command fails, the
//! transaction is redone with a savepoint per command.
//!
//! After commit the answers are published, pipelined, with no outbox row: a command is
//! acknowledged only once JetStream has its whole answer, so a publish that fails (or a crash
//! before it) leaves the command to be delivered again, and the inbox turns that delivery into
//! a re-send of the same answer. Every message is settled by the runtime's one consume policy:
//! ack, retry later (a [`HandlerError::Retryable`], an answer not yet published) or dead
//! letter (a [`HandlerError::Fatal`], an undecodable message).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::topology::Stream;
use contracts::{Command, Envelope, EventEnvelope, MessageId, Reply, Topology, Worker};
use futures::StreamExt;
use runtime::consume::{self, Verdict};
use runtime::jetstream::{Outgoing, encode};
use runtime::outbox::{OutboxMessage, Publisher};
use sqlx::{Acquire, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::inbox::{self, Answer, InboxRows};
use super::{Handled, Handler, HandlerError, Mode};

/// The longest a command that calls another service may take: well inside the consumer's ack
/// wait, so that JetStream does not deliver the command again while it is being handled.
pub const CALL_BUDGET: Duration =
    Duration::from_secs(runtime::jetstream::ACK_WAIT.as_secs().saturating_sub(5));

/// How many calling commands of one batch run at once.
const CONCURRENT_CALLS: usize = 32;

/// Runs a handler against its durable consumer.
pub struct CommandLoop<H> {
    handler: Arc<H>,
    pool: PgPool,
    js: jetstream::Context,
    topology: Topology,
    publisher: Publisher,
}

impl<H> Clone for CommandLoop<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            pool: self.pool.clone(),
            js: self.js.clone(),
            topology: self.topology.clone(),
            publisher: self.publisher.clone(),
        }
    }
}

/// One message of a batch on its way through.
struct Pending {
    message: jetstream::Message,
    command: Option<Envelope<Command>>,
    verdict: Verdict,
    /// What to publish before the command is acknowledged.
    answer: Option<Answer>,
}

impl<H: Handler> CommandLoop<H> {
    /// A loop for `handler` over the worker's pool and JetStream.
    pub fn new(handler: Arc<H>, pool: PgPool, js: jetstream::Context, topology: Topology) -> Self {
        let publisher = Publisher::new(pool.clone(), js.clone());
        Self {
            handler,
            pool,
            js,
            topology,
            publisher,
        }
    }

    /// Consumes commands with `loops` concurrent pull loops until `shutdown`.
    pub async fn run(
        self,
        loops: usize,
        max_batch: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let worker = self.handler.worker();
        let consumer = runtime::jetstream::ensure_consumer(
            &self.js,
            &self.topology,
            Stream::Commands,
            &self.topology.worker_consumer(worker),
            &self.topology.worker_commands(worker),
        )
        .await?;
        let gauges = tokio::spawn(runtime::metrics::run_gauges(
            worker.as_str(),
            self.publisher.clone(),
            Some(consumer.clone()),
            shutdown.clone(),
        ));
        let pruning = tokio::spawn(inbox::prune(self.pool.clone(), shutdown.clone()));
        let relay = {
            let publisher = self.publisher.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                publisher
                    .run_relay(stop, Duration::from_millis(500), Duration::from_secs(2))
                    .await;
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..loops.max(1) {
            let this = self.clone();
            let consumer = consumer.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                consume::run_batches(consumer, max_batch, stop, |batch| this.handle_batch(batch))
                    .await;
            }));
        }
        for task in tasks {
            task.await?;
        }
        relay.await?;
        gauges.await?;
        pruning.await?;
        Ok(())
    }

    /// Handles one batch of command messages.
    pub async fn handle_batch(&self, messages: Vec<jetstream::Message>) {
        let mut batch: Vec<Pending> = messages
            .into_iter()
            .map(|message| match self.admit(&message) {
                Ok(command) => Pending {
                    message,
                    command: Some(command),
                    verdict: Verdict::Ack,
                    answer: None,
                },
                Err(reason) => Pending {
                    message,
                    command: None,
                    verdict: Verdict::DeadLetter(reason),
                    answer: None,
                },
            })
            .collect();
        // One order for every batch (by saga): two batches that lock the same rows lock them
        // in the same order, instead of deadlocking (re-sent copies of a command land in
        // several batches at once after an outage).
        batch.sort_by_key(|p| p.command.as_ref().map(|c| (c.saga_id, c.message_id)));
        tracing::debug!(commands = batch.len(), "command batch");
        match self.process(&mut batch).await {
            Ok(()) => self.publish_answers(&mut batch).await,
            Err(error) => {
                let duplicate = error
                    .as_database_error()
                    .and_then(|e| e.constraint())
                    .is_some_and(|c| c == "inbox_pkey");
                if duplicate {
                    tracing::debug!(
                        "a copy of an answered command among first deliveries; redelivering the batch, which then reads the inbox"
                    );
                } else {
                    tracing::warn!(%error, "command batch failed; redelivering");
                }
                for p in batch.iter_mut().filter(|p| p.verdict == Verdict::Ack) {
                    p.verdict = Verdict::RetryLater(error.to_string());
                }
            }
        }
        let settled: Vec<_> = batch
            .iter_mut()
            .map(|p| {
                let verdict = std::mem::replace(&mut p.verdict, Verdict::Ack);
                consume::settle(&self.js, &self.topology, &p.message, verdict)
            })
            .collect();
        futures::future::join_all(settled).await;
    }

    /// Publishes every answer of the batch; a command whose answer JetStream did not take is
    /// delivered again (and then re-sends its stored answer) instead of acknowledged.
    async fn publish_answers(&self, batch: &mut [Pending]) {
        let mut owners = Vec::new();
        let mut messages = Vec::new();
        for (index, p) in batch.iter().enumerate() {
            for message in p.answer.iter().flat_map(Answer::messages) {
                owners.push(index);
                messages.push(message);
            }
        }
        let published = runtime::jetstream::publish_many(&self.js, messages).await;
        for (index, result) in owners.into_iter().zip(published) {
            if let Err(error) = result
                && batch[index].verdict == Verdict::Ack
            {
                tracing::warn!(%error, "publishing an answer failed; the command is delivered again");
                batch[index].verdict = Verdict::RetryLater(error.to_string());
            }
        }
    }

    /// Decodes a command and checks that it is one this worker may act on: the action the
    /// subject names is the action of the payload (a grant sent on the revoke subject is not run
    /// as a grant), the action is this worker's, and the saga type can name a reply subject.
    fn admit(&self, message: &jetstream::Message) -> Result<Envelope<Command>, String> {
        let command = runtime::jetstream::decode::<Command>(message).map_err(|e| e.to_string())?;
        let action = command.body.action();
        if action.worker() != self.handler.worker() {
            return Err(format!(
                "{} is not the {} worker's",
                action.name(),
                self.handler.worker().as_str()
            ));
        }
        let expected = self.topology.command_subject(action);
        if message.subject.as_str() != expected {
            return Err(format!(
                "a {} command on {}: the subject's action does not match the payload's",
                action.name(),
                message.subject
            ));
        }
        let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if command.saga_type.is_empty() || !command.saga_type.chars().all(plain) {
            return Err(format!(
                "saga type {:?} is not a subject token",
                command.saga_type
            ));
        }
        Ok(command)
    }

    async fn process(&self, batch: &mut [Pending]) -> Result<(), sqlx::Error> {
        let ids: Vec<MessageId> = batch
            .iter()
            .filter_map(|p| p.command.as_ref().map(|c| c.message_id))
            .collect();
        // A command delivered for the first time is almost never a duplicate: its batch skips
        // the inbox read, and a duplicate among them (a copy re-sent by a step timeout) fails
        // the transaction on the inbox key, so the batch is delivered again and read then. A
        // batch that calls another service reads first: a call must not be made twice.
        let redelivered = batch
            .iter()
            .any(|p| p.message.info().map_or(true, |info| info.delivered > 1));
        let calls = batch
            .iter()
            .filter_map(|p| p.command.as_ref())
            .any(|c| self.handler.mode(&c.body) == Mode::Calls);
        let seen = if redelivered || calls {
            inbox::stored_answers(&self.pool, &ids).await?
        } else {
            HashMap::new()
        };
        let called = self.call_out(batch, &seen).await;
        if !self.transact(batch, &seen, &called, false).await? {
            self.transact(batch, &seen, &called, true).await?;
        }
        Ok(())
    }

    /// Runs the batch's calling commands concurrently, outside any transaction, each within
    /// [`CALL_BUDGET`].
    async fn call_out(
        &self,
        batch: &[Pending],
        seen: &HashMap<MessageId, Answer>,
    ) -> HashMap<MessageId, Result<Handled, HandlerError>> {
        let mut calls = Vec::new();
        for command in batch.iter().filter_map(|p| p.command.as_ref()) {
            if self.handler.mode(&command.body) == Mode::Calls
                && !seen.contains_key(&command.message_id)
            {
                calls.push(self.call(command));
            }
        }
        futures::stream::iter(calls)
            .buffer_unordered(CONCURRENT_CALLS)
            .collect()
            .await
    }

    /// One calling command, within [`CALL_BUDGET`].
    async fn call(
        &self,
        command: &Envelope<Command>,
    ) -> (MessageId, Result<Handled, HandlerError>) {
        let span = command_span(self.handler.worker(), command);
        let handled = match tokio::time::timeout(CALL_BUDGET, self.handler.call(command))
            .instrument(span.clone())
            .await
        {
            Ok(handled) => handled,
            Err(_) => Err(HandlerError::Retryable(format!(
                "the call did not finish within {} s",
                CALL_BUDGET.as_secs()
            ))),
        };
        record_outcome(&span, &handled);
        (command.message_id, handled)
    }

    /// Handles the batch's other commands in one transaction and records every answer (the
    /// calls' too) in the inbox, and in each command's [`Pending::answer`] for publishing after
    /// commit. Without `careful`, the first command that fails rolls everything back and
    /// `false` is returned, so that the batch is handled again with a savepoint per command;
    /// most batches never fail and skip the savepoints' round trips.
    async fn transact(
        &self,
        batch: &mut [Pending],
        seen: &HashMap<MessageId, Answer>,
        called: &HashMap<MessageId, Result<Handled, HandlerError>>,
        careful: bool,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut answered: HashMap<MessageId, Answer> = HashMap::new();
        let mut rows = InboxRows::default();
        for p in batch.iter_mut() {
            p.answer = None;
            let Some(command) = &p.command else {
                continue;
            };
            let stored = seen.get(&command.message_id);
            if let Some(answer) = stored.or_else(|| answered.get(&command.message_id)) {
                tracing::debug!(message_id = %command.message_id, "duplicate command: re-sending the stored answer");
                let mut answer = answer.clone();
                answer.reply.subject = self.reply_subject(command);
                p.answer = Some(answer);
                continue;
            }
            let handled = match called.get(&command.message_id) {
                Some(Ok(handled)) => Ok(handled.clone()),
                Some(Err(error)) => Err(error.clone()),
                None => {
                    let span = command_span(self.handler.worker(), command);
                    let handled = if careful {
                        let mut savepoint = tx.begin().await?;
                        let handled = self
                            .handler
                            .handle(&mut savepoint, command)
                            .instrument(span.clone())
                            .await;
                        if handled.is_ok() {
                            savepoint.commit().await?;
                        } else {
                            savepoint.rollback().await?;
                        }
                        handled
                    } else {
                        let handled = self
                            .handler
                            .handle(&mut tx, command)
                            .instrument(span.clone())
                            .await;
                        if handled.is_err() {
                            tx.rollback().await?;
                            return Ok(false);
                        }
                        handled
                    };
                    record_outcome(&span, &handled);
                    handled
                }
            };
            match handled {
                Ok(handled) => {
                    let answer = self.answer(command, handled);
                    rows.push(command.message_id, &answer);
                    answered.insert(command.message_id, answer.clone());
                    p.answer = Some(answer);
                }
                Err(HandlerError::Retryable(reason)) => {
                    tracing::warn!(saga_id = %command.saga_id, step = %command.step, %reason, "command will be retried");
                    p.verdict = Verdict::RetryLater(reason);
                }
                Err(HandlerError::Busy(reason, after)) => {
                    p.verdict = Verdict::RetryAfter(reason, after);
                }
                Err(HandlerError::Fatal(reason)) => p.verdict = Verdict::DeadLetter(reason),
            }
        }
        rows.insert(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Where this worker answers `command`.
    fn reply_subject(&self, command: &Envelope<Command>) -> String {
        self.topology
            .reply_subject(&command.saga_type, self.handler.worker())
    }

    /// The answer to `command`: its reply, and the events and other messages it made.
    fn answer(&self, command: &Envelope<Command>, handled: Handled) -> Answer {
        let reply = command.reply(handled.reply);
        let subject = self.reply_subject(command);
        let reply = encode(subject.clone(), &reply).unwrap_or_else(|error| Outgoing {
            subject,
            headers: command.headers.clone(),
            payload: error.to_string().into_bytes(),
        });
        let now = chrono::Utc::now();
        let others = handled
            .events
            .into_iter()
            .filter_map(|event| {
                let envelope = EventEnvelope::new(event, Some(command.saga_id), now);
                OutboxMessage::event(&self.topology, &envelope, &command.headers).ok()
            })
            .chain(handled.messages.into_iter().map(OutboxMessage::new))
            .collect();
        Answer {
            reply,
            followups: others,
        }
    }
}

/// The span of one command's handling: a child of the step attempt that sent it (its
/// `traceparent`), with the saga's attributes.
fn command_span(worker: Worker, command: &Envelope<Command>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !runtime::telemetry::exporting() {
        return tracing::Span::none();
    }
    let body = serde_json::to_value(&command.body).unwrap_or_default();
    let span = tracing::info_span!(
        "saga.worker",
        otel.name = %format!("{} {}", worker.as_str(), command.step),
        otel.kind = "consumer",
        saga.id = %command.saga_id,
        saga.type = %command.saga_type,
        saga.step = %command.step,
        saga.attempt = command.attempt,
        saga.phase = command.phase.as_str(),
        customer.id = body["customer_id"].as_str().unwrap_or_default(),
        mission.id = body["mission_id"].as_str().unwrap_or_default(),
        trace_id = command
            .headers
            .get("traceparent")
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or_default(),
        error = tracing::field::Empty,
    );
    let _ = span.set_parent(runtime::telemetry::extract(&command.headers));
    span
}

fn record_outcome(span: &tracing::Span, handled: &Result<Handled, HandlerError>) {
    match handled {
        Ok(Handled {
            reply: Reply::Failed(failure),
            ..
        }) => {
            span.record("error", failure.code.as_str());
        }
        Err(error) => {
            span.record("error", error.to_string().as_str());
        }
        Ok(_) => {}
    }
}
