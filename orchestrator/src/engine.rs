//! The engine: applies replies, fired timers and operator commands to sagas through the state
//! machine and turns the resulting effects into store changes (commands to send, event outbox
//! rows, timers, the saga's search keys as its definition derives them, its history entries).
//! A batch of replies is one read and one write statement (no transaction around them: the
//! write is all-or-nothing per saga and checks each saga's version, and the replies of a saga
//! another writer changed are applied again on fresh state); timers and operator commands run
//! in one transaction per batch, retried with fresh state on a conflict or deadlock. A reply needs no inbox: the machine applies only the answer to the attempt in
//! flight, so a duplicate, a late or a replayed reply finds its attempt over and is ignored.
//! After the commit it records metrics, announces every change of a saga's state to the
//! waiters of every replica ([`crate::watch`]), publishes the commands (a lost publish is
//! re-sent by the step timeout, which the saga row already holds) and the events. It also
//! records a span per step attempt, with the definition's search keys as span attributes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use contracts::event::SagaFinishedV1;
use contracts::{
    DomainEvent, Envelope, EventEnvelope, MessageId, Phase, Reply, SagaId, Topology, Worker,
};
use runtime::jetstream::encode;
use runtime::outbox::{OutboxMessage, Publisher};
use serde_json::Value;

use crate::definition::{Registry, SagaDefinition};
use crate::history::{HistoryEntry, OperatorAction};
use crate::machine::{Effect, Ignored, Input, Saga, transition};
use crate::store::{self, Change, Store, StoreError, Stored, TimerChange};
use crate::watch::Watch;

/// How often a batch is retried after a version conflict or deadlock.
const TRANSIENT_RETRIES: usize = 8;

/// A saga being moved by a batch: its state so far and the effects so far.
type Pending = (Saga, Vec<Effect>);

/// What happened to one reply of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Applied: the saga moved.
    Applied,
    /// Not an answer to the attempt in flight (a duplicate, a late or a replayed reply):
    /// nothing changed.
    Ignored,
    /// No saga with that id, or no definition for it: the message is a dead letter.
    Unknown(String),
    /// Not a genuine answer to the command in flight (wrong worker, wrong command id, an output
    /// the step may not produce): a dead letter, and the saga does not move; the genuine reply
    /// is still applied when it comes.
    Refused(String),
}

/// A reply as received: the envelope, and the worker whose reply subject it came on.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The reply.
    pub reply: Envelope<Reply>,
    /// The worker the subject names (`reply.<saga_type>.<worker>`); NATS permissions let only
    /// that worker publish there.
    pub worker: Worker,
}

/// Why `reply` is not a genuine answer to a command `saga` sent, if it is not: it must come
/// from the worker that owns the step, name the command id the orchestrator derived for that
/// step, phase and attempt, carry the reply id derived from it, and produce only what the step
/// may produce without changing what the saga already holds.
fn vet(definition: &SagaDefinition, saga: &Saga, received: &Received) -> Result<(), String> {
    let reply = &received.reply;
    if reply.saga_type != saga.saga_type {
        return Err(format!(
            "a reply for a {} saga names saga {} of type {}",
            reply.saga_type, saga.id, saga.saga_type
        ));
    }
    let step = definition
        .step(reply.step_index)
        .ok_or_else(|| format!("saga {} has no step {}", saga.id, reply.step_index))?;
    let action = match reply.phase {
        Phase::Forward => Some(step.action),
        Phase::Compensate => step.compensation,
    }
    .ok_or_else(|| format!("step {} has no compensation", reply.step_index))?;
    if action.worker() != received.worker {
        return Err(format!(
            "the {} worker answered for {}, which the {} worker owns",
            received.worker.as_str(),
            action.name(),
            action.worker().as_str()
        ));
    }
    let command = MessageId::for_command(saga.id, reply.step_index, reply.phase, reply.attempt);
    if reply.correlation_id != Some(command) || reply.message_id != MessageId::for_reply(command) {
        return Err(format!(
            "not an answer to a command saga {} sent for {} attempt {}",
            saga.id,
            action.name(),
            reply.attempt
        ));
    }
    let output = match &reply.body {
        Reply::Succeeded { output } => output,
        Reply::Failed(failure) => &failure.output,
    };
    let mut known = saga.input.clone();
    known.extend(saga.context.iter().map(|(k, v)| (k.clone(), v.clone())));
    contracts::reply::check_output(action, output, &known)
}

/// Applies inputs to sagas and writes the results.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    registry: Arc<Registry>,
    topology: Topology,
    publisher: Publisher,
    watch: Watch,
}

impl Engine {
    /// An engine over a store, the definitions, the topology, the outbox publisher and the
    /// announcements of state changes.
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        topology: Topology,
        publisher: Publisher,
        watch: Watch,
    ) -> Self {
        Self {
            store,
            registry,
            topology,
            publisher,
            watch,
        }
    }

    /// The announcements of state changes and their waiters.
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The definitions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The outbox publisher.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn definition(&self, saga: &Saga) -> Option<&SagaDefinition> {
        self.registry.get(&saga.saga_type, saga.definition_version)
    }

    /// Turns a transition's effects into a store change, with the saga's search keys as its
    /// definition derives them from its input and context, and its history entries.
    pub fn change(
        &self,
        before: Option<Stored>,
        after: Saga,
        effects: Vec<Effect>,
    ) -> Result<Change, serde_json::Error> {
        let history = crate::history::derive(before.as_ref().map(|b| &b.saga), &after, &effects);
        let mut timer = TimerChange::default();
        let mut commands = Vec::new();
        let mut outbox = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send(command) => {
                    let envelope = Envelope {
                        message_id: command.message_id,
                        correlation_id: None,
                        saga_id: after.id,
                        saga_type: after.saga_type.clone(),
                        step: command.action.name().to_owned(),
                        step_index: command.step_index,
                        phase: command.phase,
                        attempt: command.attempt,
                        sent_at: Some(after.updated_at),
                        headers: trace_headers(&after, command.message_id.0),
                        body: command.body,
                    };
                    let subject = self.topology.command_subject(command.action);
                    commands.push(encode(subject, &envelope)?);
                }
                Effect::SetTimer { timer: t, after } => timer.arm(t, after),
                Effect::ClearTimer => timer.clear(),
                Effect::Finished(state) => {
                    let event = DomainEvent::SagaFinished(SagaFinishedV1 {
                        saga_id: after.id,
                        saga_type: after.saga_type.clone(),
                        state: state.as_str().to_owned(),
                    });
                    let envelope = EventEnvelope::new(event, Some(after.id), after.updated_at);
                    let headers = trace_headers(&after, envelope.message_id.0);
                    outbox.push(OutboxMessage::event(&self.topology, &envelope, &headers)?);
                }
            }
        }
        let search_keys = self
            .definition(&after)
            .map(|d| d.search_values(&after.input, &after.context))
            .unwrap_or_default();
        Ok(Change {
            before,
            after,
            timer,
            commands,
            outbox,
            search_keys,
            history,
        })
    }

    /// Applies a batch of replies: one read of their sagas and one write, each saga written
    /// only if no other writer changed it since the read; the replies of sagas that did
    /// change are applied again on fresh state. Publishes what the moved sagas send. Returns
    /// one outcome per reply, in order.
    pub async fn apply_replies(
        &self,
        replies: &[Received],
    ) -> Result<Vec<ReplyOutcome>, StoreError> {
        let mut outcomes: Vec<Option<ReplyOutcome>> = vec![None; replies.len()];
        let mut pending: Vec<usize> = (0..replies.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let batch: Vec<&Received> = pending.iter().map(|&i| &replies[i]).collect();
            match self.try_apply_replies(&batch).await {
                Ok((results, changes)) => {
                    self.dispatch(changes).await;
                    let mut again = Vec::new();
                    for (&index, result) in pending.iter().zip(results) {
                        match result {
                            Some(outcome) => outcomes[index] = Some(outcome),
                            None => again.push(index),
                        }
                    }
                    if !again.is_empty() {
                        tracing::debug!(
                            sagas = again.len(),
                            attempt,
                            "replies met a concurrent change; applying them again"
                        );
                        if attempt >= TRANSIENT_RETRIES {
                            return Err(StoreError::Conflict);
                        }
                    }
                    pending = again;
                }
                Err(error) if error.is_transient() && attempt < TRANSIENT_RETRIES => {
                    tracing::debug!(%error, attempt, "reply batch failed; retrying");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(ReplyOutcome::Ignored))
            .collect())
    }

    /// One read and one write, without a transaction around them (the write checks each
    /// saga's version). A reply whose saga another writer changed meanwhile has no outcome
    /// (`None`): nothing of its saga was written.
    async fn try_apply_replies(
        &self,
        received: &[&Received],
    ) -> Result<(Vec<Option<ReplyOutcome>>, Vec<Change>), StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        let mut spans = Vec::new();
        let saga_ids: Vec<SagaId> = received.iter().map(|r| r.reply.saga_id).collect();
        let loaded = store::load_many(&mut conn, &saga_ids).await?;
        let mut outcomes: Vec<Option<ReplyOutcome>> = received
            .iter()
            .map(|r| {
                let Some(stored) = loaded.get(&r.reply.saga_id) else {
                    return Some(ReplyOutcome::Unknown(format!(
                        "no saga {}",
                        r.reply.saga_id
                    )));
                };
                let Some(definition) = self.definition(&stored.saga) else {
                    return Some(ReplyOutcome::Unknown(format!(
                        "no definition {} v{}",
                        stored.saga.saga_type, stored.saga.definition_version
                    )));
                };
                vet(definition, &stored.saga, r)
                    .err()
                    .map(ReplyOutcome::Refused)
            })
            .collect();
        let mut current: HashMap<SagaId, Pending> = HashMap::new();
        let now = Utc::now();
        for (Received { reply, .. }, outcome) in received.iter().copied().zip(outcomes.iter_mut()) {
            if outcome.is_some() {
                continue;
            }
            let Some(stored) = loaded.get(&reply.saga_id) else {
                continue;
            };
            let entry = current
                .entry(reply.saga_id)
                .or_insert_with(|| (stored.saga.clone(), Vec::new()));
            let Some(definition) = self.definition(&entry.0) else {
                continue;
            };
            let input = Input::Reply {
                step_index: reply.step_index,
                phase: reply.phase,
                attempt: reply.attempt,
                reply: reply.body.clone(),
            };
            match transition(definition, &entry.0, &input, now) {
                Ok(next) => {
                    entry.0 = next.saga;
                    entry.1.extend(next.effects);
                    if runtime::telemetry::exporting() {
                        spans.extend(
                            attempt_span(definition, &entry.0, reply).map(|s| (reply.saga_id, s)),
                        );
                    }
                    *outcome = Some(ReplyOutcome::Applied);
                }
                Err(ignored) => {
                    tracing::debug!(saga_id = %reply.saga_id, step = %reply.step, %ignored, "reply ignored");
                    *outcome = Some(ReplyOutcome::Ignored);
                }
            }
        }
        let mut changes = Vec::with_capacity(current.len());
        for (id, (saga, effects)) in current {
            let before = loaded.get(&id).cloned();
            if before.as_ref().is_some_and(|b| b.saga == saga) {
                continue;
            }
            changes.push(
                self.change(before, saga, effects)
                    .map_err(|e| StoreError::Corrupt(id.0, e.to_string()))?,
            );
        }
        let moved = store::apply_moving(&mut conn, &changes).await?;
        drop(conn);
        let (changes, stale): (Vec<Change>, Vec<Change>) = changes
            .into_iter()
            .partition(|c| moved.contains(&c.after.id));
        if !stale.is_empty() {
            let stale: HashSet<SagaId> = stale.iter().map(|c| c.after.id).collect();
            for (r, outcome) in received.iter().zip(outcomes.iter_mut()) {
                if stale.contains(&r.reply.saga_id) {
                    *outcome = None;
                }
            }
            spans.retain(|(id, _)| !stale.contains(id));
        }
        changes.iter().for_each(crate::observe::record);
        self.watch.announce(&changes).await;
        spans
            .into_iter()
            .for_each(|(_, span)| runtime::telemetry::record_span(span));
        Ok((outcomes, changes))
    }

    /// Fires up to `limit` due timers in one transaction and publishes what they sent. Returns
    /// how many timers fired.
    pub async fn fire_timers(&self, limit: i64) -> Result<usize, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_fire_timers(limit).await {
                Ok((fired, changes)) => {
                    self.dispatch(changes).await;
                    return Ok(fired);
                }
                Err(error) if error.is_transient() && attempt < TRANSIENT_RETRIES => {}
                Err(error) => return Err(error),
            }
        }
    }

    async fn try_fire_timers(&self, limit: i64) -> Result<(usize, Vec<Change>), StoreError> {
        let mut tx = self.store.begin().await?;
        let due: Vec<(SagaId, crate::machine::Timer)> = Store::due_timers(&mut tx, limit)
            .await?
            .into_iter()
            .map(|(saga_id, timer, lag)| {
                metrics::histogram!(runtime::metrics::TIMER_LAG).record(lag.as_secs_f64());
                tracing::debug!(
                    target: "saga_orchestrator::timers",
                    %saga_id,
                    kind = ?timer.kind,
                    lag_ms = lag.as_millis() as u64,
                    "timer fired"
                );
                (saga_id, timer)
            })
            .collect();
        if due.is_empty() {
            tx.commit().await?;
            return Ok((0, Vec::new()));
        }
        let ids: Vec<SagaId> = due.iter().map(|(id, _)| *id).collect();
        let loaded = store::load_many(&mut tx, &ids).await?;
        Store::delete_timers(&mut tx, &due).await?;
        let now = Utc::now();
        let mut current: HashMap<SagaId, (Saga, Vec<Effect>)> = HashMap::new();
        for (id, timer) in &due {
            let Some(stored) = loaded.get(id) else {
                continue;
            };
            let entry = current
                .entry(*id)
                .or_insert_with(|| (stored.saga.clone(), Vec::new()));
            let Some(definition) = self.definition(&entry.0) else {
                tracing::error!(saga_id = %id, "timer of a saga without definition dropped");
                continue;
            };
            match transition(definition, &entry.0, &Input::TimerFired(*timer), now) {
                Ok(next) => {
                    tracing::debug!(saga_id = %id, ?timer, "timer fired");
                    entry.0 = next.saga;
                    entry.1.extend(next.effects);
                }
                Err(ignored) => tracing::debug!(saga_id = %id, %ignored, "stale timer dropped"),
            }
        }
        let mut changes = Vec::new();
        for (id, (saga, effects)) in current {
            let before = loaded.get(&id).cloned();
            if before.as_ref().is_some_and(|b| b.saga == saga) {
                continue;
            }
            let change = self
                .change(before, saga, effects)
                .map_err(|e| StoreError::Corrupt(id.0, e.to_string()))?;
            changes.push(change);
        }
        store::apply(&mut tx, &changes).await?;
        tx.commit().await?;
        changes.iter().for_each(crate::observe::record);
        self.watch.announce(&changes).await;
        Ok((due.len(), changes))
    }

    /// Applies an operator's input (cancel, retry) to one saga, recording the action in its
    /// history. `Ok(Err(_))` says why the saga refused it; `Ok(Ok(None))` that there is no
    /// such saga.
    pub async fn command(
        &self,
        id: SagaId,
        input: &Input,
        operator: &OperatorAction,
    ) -> Result<Result<Option<Saga>, Ignored>, StoreError> {
        let mut outcomes = self.command_many(&[id], input, operator).await?;
        Ok(outcomes
            .pop()
            .map_or(Ok(None), |(_, outcome)| outcome.map(Some)))
    }

    /// Applies an operator's input to many sagas, one transaction per chunk of 200 (retried on
    /// conflicts), and publishes what they sent. Every found saga's history records the action,
    /// applied or refused. Returns each found saga's outcome.
    pub async fn command_many(
        &self,
        ids: &[SagaId],
        input: &Input,
        operator: &OperatorAction,
    ) -> Result<Vec<(SagaId, Result<Saga, Ignored>)>, StoreError> {
        let mut outcomes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.try_command(chunk, input, operator).await {
                    Ok((chunk_outcomes, changes)) => {
                        self.dispatch(changes).await;
                        outcomes.extend(chunk_outcomes);
                        break;
                    }
                    Err(error) if error.is_transient() && attempt < TRANSIENT_RETRIES => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(outcomes)
    }

    #[allow(clippy::type_complexity, reason = "a private pair of results")]
    async fn try_command(
        &self,
        ids: &[SagaId],
        input: &Input,
        operator: &OperatorAction,
    ) -> Result<(Vec<(SagaId, Result<Saga, Ignored>)>, Vec<Change>), StoreError> {
        let mut tx = self.store.begin().await?;
        let loaded = store::load_many(&mut tx, ids).await?;
        let now = Utc::now();
        let mut outcomes = Vec::with_capacity(ids.len());
        let mut changes = Vec::new();
        let mut refused: Vec<(SagaId, HistoryEntry)> = Vec::new();
        for id in ids {
            let Some(stored) = loaded.get(id) else {
                continue;
            };
            let Some(definition) = self.definition(&stored.saga) else {
                outcomes.push((*id, Err(Ignored::Mismatch)));
                refused.push((*id, operator.entry(now, Ignored::Mismatch.code())));
                continue;
            };
            match transition(definition, &stored.saga, input, now) {
                Ok(next) => {
                    let saga = next.saga.clone();
                    let mut change = self
                        .change(Some(stored.clone()), next.saga, next.effects)
                        .map_err(|e| StoreError::Corrupt(id.0, e.to_string()))?;
                    change.history.insert(0, operator.entry(now, "applied"));
                    changes.push(change);
                    outcomes.push((*id, Ok(saga)));
                }
                Err(ignored) => {
                    refused.push((*id, operator.entry(now, ignored.code())));
                    outcomes.push((*id, Err(ignored)));
                }
            }
        }
        store::apply(&mut tx, &changes).await?;
        Store::record_history(&mut tx, &refused).await?;
        tx.commit().await?;
        changes.iter().for_each(crate::observe::record);
        self.watch.announce(&changes).await;
        Ok((outcomes, changes))
    }

    /// Creates and starts saga `id` (drawn by the caller, so that it can wait for the saga
    /// before it exists); with an idempotency key already used, returns the saga it created
    /// instead (`Err`). Publishes the first command after commit.
    pub async fn start(
        &self,
        id: SagaId,
        definition: &SagaDefinition,
        input: serde_json::Map<String, Value>,
        idempotency: Option<(&str, &[u8])>,
        trace: (String, String),
    ) -> Result<Result<Saga, store::KeyedSaga>, StoreError> {
        let now = Utc::now();
        let mut saga = Saga::new(definition, id, input, now);
        saga.trace_id = Some(trace.0);
        saga.trace_root_span = Some(trace.1);
        let started = transition(definition, &saga, &Input::Start, now)
            .map_err(|e| StoreError::Corrupt(saga.id.0, e.to_string()))?;
        let change = self
            .change(None, started.saga.clone(), started.effects)
            .map_err(|e| StoreError::Corrupt(saga.id.0, e.to_string()))?;
        let observed = change.clone();
        match self.store.create(change, idempotency).await? {
            Ok(()) => {
                crate::observe::record(&observed);
                self.watch.announce(std::slice::from_ref(&observed)).await;
                self.dispatch(vec![observed]).await;
                Ok(Ok(started.saga))
            }
            Err(existing) => Ok(Err(existing)),
        }
    }

    /// Publishes what committed changes send: their commands straight to JetStream, pipelined
    /// (the saga row records the command in flight, so a command whose publish fails is sent
    /// again by its step timeout, made due at once here), and their events through the outbox.
    async fn dispatch(&self, changes: Vec<Change>) {
        let mut commands = Vec::new();
        let mut outbox = Vec::new();
        for change in changes {
            let id = change.after.id;
            commands.extend(change.commands.into_iter().map(|c| (id, c)));
            outbox.extend(change.outbox);
        }
        let js = self.publisher.jetstream();
        let (sent, events) = futures::future::join(
            runtime::jetstream::publish_many(js, commands.iter().map(|(_, c)| (c, None)).collect()),
            self.publisher.publish(&outbox),
        )
        .await;
        let mut lost: Vec<SagaId> = commands
            .iter()
            .zip(&sent)
            .filter(|(_, result)| result.is_err())
            .map(|((id, _), _)| *id)
            .collect();
        if let Some(Err(error)) = sent.into_iter().find(Result::is_err) {
            lost.dedup();
            tracing::warn!(%error, sagas = lost.len(), "publishing commands failed; their step timeouts send them again now");
            if let Err(error) = self.store.hasten_step_timeouts(&lost).await {
                tracing::warn!(%error, "hastening step timeouts failed; they send the commands when they fire");
            }
        }
        if let Err(error) = events {
            tracing::warn!(%error, "publishing events after commit failed; the relay will retry");
        }
    }
}

/// The `traceparent` of a saga's message: the saga's trace id and a span id derived from
/// `span_seed` (a command's id, so that every attempt has its own stable span).
fn trace_headers(saga: &Saga, span_seed: uuid::Uuid) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    if let Some(trace_id) = &saga.trace_id {
        headers.insert(
            "traceparent".into(),
            runtime::telemetry::traceparent(trace_id, span_of(span_seed)),
        );
    }
    headers
}

/// The span id of the attempt a command (or event) id stands for.
fn span_of(id: uuid::Uuid) -> u64 {
    let bytes = id.as_bytes();
    let span = u64::from_be_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
    ]);
    span.max(1)
}

/// The span of a step attempt (or compensation attempt) that a reply ended: child of the
/// request that started the saga, with the span id its command carried. Every search key of the
/// definition is an attribute (empty while the saga has no value for it).
fn attempt_span(
    definition: &SagaDefinition,
    saga: &Saga,
    reply: &Envelope<Reply>,
) -> Option<runtime::telemetry::FinishedSpan> {
    use opentelemetry::KeyValue;
    let trace_id = saga.trace_id.clone()?;
    let root = u64::from_str_radix(saga.trace_root_span.as_deref()?, 16).ok()?;
    let command = reply.correlation_id?;
    let end = std::time::SystemTime::now();
    let start = reply.sent_at.map_or(end, std::time::SystemTime::from);
    let kind = match reply.phase {
        contracts::Phase::Forward => "step",
        contracts::Phase::Compensate => "compensation",
    };
    let mut attributes = vec![
        KeyValue::new("saga.id", saga.id.to_string()),
        KeyValue::new("saga.type", saga.saga_type.clone()),
        KeyValue::new("saga.step", reply.step.clone()),
        KeyValue::new("saga.attempt", i64::from(reply.attempt)),
        KeyValue::new("saga.phase", reply.phase.as_str()),
    ];
    attributes.extend(definition.search_keys.iter().map(|key| {
        let value = key.value(&saga.input, &saga.context).unwrap_or_default();
        KeyValue::new(key.span_attribute, value)
    }));
    let error = match &reply.body {
        Reply::Succeeded { .. } => None,
        Reply::Failed(failure) => {
            attributes.push(KeyValue::new("error.type", failure.code.clone()));
            attributes.push(KeyValue::new("error.retryable", failure.retryable));
            Some(format!("{}: {}", failure.code, failure.message))
        }
    };
    Some(runtime::telemetry::FinishedSpan {
        name: format!("saga.{kind} {}", reply.step),
        trace_id,
        parent_span_id: root,
        span_id: span_of(command.0),
        start,
        end,
        attributes,
        error,
    })
}
