//! The saga state machine: a pure function from (definition, saga, input, now) to the next saga
//! and the effects to carry out. No I/O happens here and this is the only place saga rules live;
//! the store persists the result and turns effects into outbox and timer rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::{Action, MessageId, Phase, Reply, SagaId, StepFailure};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::{FailurePolicy, RetryPolicy, SagaDefinition, StepDefinition};

/// The snake_case name a state or kind has in the API and the database (its serde name).
pub fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Where a saga is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Forward steps are running.
    Running,
    /// A step failed for good; completed steps are being undone in reverse order.
    Compensating,
    /// Every step ran (a step with policy `continue` may have failed).
    Completed,
    /// Every completed compensable step was undone.
    Compensated,
    /// Parked for an operator: a compensation could not finish, or a step that must not be
    /// skipped failed after the pivot.
    Failed,
    /// An operator cancelled it; every completed compensable step was undone.
    Cancelled,
}

impl SagaState {
    /// Every state.
    pub const ALL: [SagaState; 6] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
        SagaState::Cancelled,
    ];

    /// Whether nothing more happens to the saga without an operator.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaState::Completed
                | SagaState::Compensated
                | SagaState::Failed
                | SagaState::Cancelled
        )
    }

    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Failed => "failed",
            SagaState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or requested state.
    pub fn parse(s: &str) -> Option<SagaState> {
        SagaState::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// Where one forward step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started yet.
    Pending,
    /// Its command is out; waiting for the reply.
    Running,
    /// An attempt failed; waiting for the backoff before the next one.
    Retrying,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Succeeded, then undone by its compensation.
    Compensated,
}

/// Where one compensation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationState {
    /// Recorded when its step succeeded; not needed (yet).
    Recorded,
    /// Its command is out.
    Running,
    /// An attempt failed; waiting for the backoff.
    Retrying,
    /// Done.
    Succeeded,
    /// Could not be done; the saga is parked.
    Failed,
}

/// The progress of one forward step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's action name (`reward.grant`).
    pub name: String,
    /// Where it is.
    pub state: StepState,
    /// Attempts made (re-sends after a timeout are not new attempts).
    pub attempts: u32,
    /// When the first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded or failed for good.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// `attempts` when an operator last retried it: the retry budget counts from here.
    #[serde(default)]
    pub retry_base: u32,
}

/// A compensation, recorded when its step succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompensationRecord {
    /// The forward step it undoes.
    pub step_index: u16,
    /// The compensating action's name (`reward.revoke`).
    pub name: String,
    /// Where it is.
    pub state: CompensationState,
    /// Attempts made.
    pub attempts: u32,
    /// Its position among the compensations that ran (1 = first), once it started.
    pub run_order: Option<u32>,
    /// When its first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded or failed for good.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// `attempts` when an operator last retried it: the retry budget counts from here.
    #[serde(default)]
    pub retry_base: u32,
}

/// Why a saga stops going forward before its last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An operator cancelled it: it ends `cancelled`.
    Cancelled,
    /// Its whole-saga deadline passed: it ends `compensated`.
    DeadlineExceeded,
}

/// A saga instance: everything the machine needs to decide what comes next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    /// Its id.
    pub id: SagaId,
    /// Its type.
    pub saga_type: String,
    /// The definition version it started with.
    pub definition_version: u32,
    /// Where it is.
    pub state: SagaState,
    /// What it was started with.
    pub input: Map<String, Value>,
    /// What its steps produced.
    pub context: Map<String, Value>,
    /// One record per forward step of its definition.
    pub steps: Vec<StepRecord>,
    /// Compensations, in the order they were recorded.
    pub compensations: Vec<CompensationRecord>,
    /// Set when it was asked to stop going forward (cancel, deadline); it compensates as soon
    /// as no step is in flight.
    #[serde(default)]
    pub stop: Option<StopReason>,
    /// The W3C trace id every message of the saga carries.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The span id (16 hex digits) of the request that started the saga.
    #[serde(default)]
    pub trace_root_span: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Saga {
    /// A new saga of `definition`, not started yet (feed it [`Input::Start`]).
    pub fn new(
        definition: &SagaDefinition,
        id: SagaId,
        input: Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            saga_type: definition.saga_type.to_owned(),
            definition_version: definition.version,
            state: SagaState::Running,
            input,
            context: Map::new(),
            steps: definition
                .steps
                .iter()
                .map(|s| StepRecord {
                    name: s.action.name().to_owned(),
                    state: StepState::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    last_error: None,
                    retry_base: 0,
                })
                .collect(),
            compensations: Vec::new(),
            stop: None,
            trace_id: None,
            trace_root_span: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The forward step in flight (running or waiting to retry).
    fn active_step(&self) -> Option<u16> {
        self.steps
            .iter()
            .position(|s| matches!(s.state, StepState::Running | StepState::Retrying))
            .map(index_u16)
    }

    /// The compensation in flight, as a position in `compensations`.
    fn active_compensation(&self) -> Option<usize> {
        self.compensations.iter().position(|c| {
            matches!(
                c.state,
                CompensationState::Running | CompensationState::Retrying
            )
        })
    }

    /// The attempt a timer or reply must carry to be current, if `(step, phase)` is in flight.
    fn current_attempt(&self, step_index: u16, phase: Phase) -> Option<(u32, bool)> {
        match phase {
            Phase::Forward => {
                let active = self.active_step()?;
                (active == step_index).then(|| {
                    let step = &self.steps[usize::from(active)];
                    (step.attempts, step.state == StepState::Retrying)
                })
            }
            Phase::Compensate => {
                let c = &self.compensations[self.active_compensation()?];
                (c.step_index == step_index)
                    .then_some((c.attempts, c.state == CompensationState::Retrying))
            }
        }
    }
}

fn index_u16(index: usize) -> u16 {
    u16::try_from(index).unwrap_or(u16::MAX)
}

/// Why a timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The reply to a command did not come in time: re-send the same command.
    StepTimeout,
    /// The backoff after a retryable failure is over: send the next attempt.
    Backoff,
    /// The whole saga's deadline passed: a saga before its pivot compensates.
    Deadline,
}

impl TimerKind {
    /// The timer's slot: a saga has at most one step timer (timeout or backoff) and one
    /// deadline armed at a time.
    pub fn slot(self) -> &'static str {
        match self {
            TimerKind::StepTimeout | TimerKind::Backoff => "step",
            TimerKind::Deadline => "deadline",
        }
    }
}

/// A timer of one saga: at most one is armed at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// What it is for.
    pub kind: TimerKind,
    /// The step (or compensated step) it belongs to.
    pub step_index: u16,
    /// Forward step or compensation.
    pub phase: Phase,
    /// The attempt it belongs to; a timer of an older attempt is stale.
    pub attempt: u32,
}

/// Something that happened to a saga.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Start the first step.
    Start,
    /// A worker answered a command.
    Reply {
        /// The step the command was for.
        step_index: u16,
        /// Forward step or compensation.
        phase: Phase,
        /// The attempt the command carried.
        attempt: u32,
        /// What the worker said.
        reply: Reply,
    },
    /// A timer fell due.
    TimerFired(Timer),
    /// An operator cancels the saga: it compensates what it did and ends `cancelled`.
    Cancel,
    /// An operator resumes a `failed` saga where it stopped.
    Retry,
}

/// A command to send, fully built.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSpec {
    /// What the worker is asked to do.
    pub action: Action,
    /// The step the command belongs to.
    pub step_index: u16,
    /// Forward step or compensation.
    pub phase: Phase,
    /// The attempt.
    pub attempt: u32,
    /// Derived from saga, step, phase and attempt: a re-send carries the same id.
    pub message_id: MessageId,
    /// The command body: `{"type": ..., ...input, ...context}`, plus the fields the step binds
    /// to other keys. The type carries the step's command version (`reward.grant.v2`).
    pub body: Value,
}

/// What the store must do after a transition.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Publish a command (through the outbox).
    Send(CommandSpec),
    /// Arm a timer (replacing the one armed in its slot).
    SetTimer {
        /// The timer.
        timer: Timer,
        /// Due this long after now.
        after: Duration,
    },
    /// Disarm every timer of the saga.
    ClearTimer,
    /// The saga reached a terminal state: announce it.
    Finished(SagaState),
}

/// The outcome of applying an input.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The saga after the input.
    pub saga: Saga,
    /// What to do about it.
    pub effects: Vec<Effect>,
}

/// Why an input changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// The saga is terminal: no input changes it.
    #[error("the saga is {0:?}: nothing more happens to it")]
    Terminal(SagaState),
    /// `Start` on a saga that has started.
    #[error("the saga has already started")]
    AlreadyStarted,
    /// A reply or timer for a step, phase or attempt that is not in flight (a duplicate, or a
    /// late answer to an attempt that was given up).
    #[error("stale: not the step, phase or attempt in flight")]
    Stale,
    /// The saga's definition does not match it (a step index past its end).
    #[error("the saga does not fit its definition")]
    Mismatch,
    /// Cancel (or a deadline) after the pivot: what was done cannot be undone any more.
    #[error("the saga is past its pivot: it can no longer be undone")]
    PastPivot,
    /// Cancel on a saga that is already undoing its steps.
    #[error("the saga is already compensating")]
    AlreadyCompensating,
    /// Retry on a saga that is not `failed`.
    #[error("only a failed saga can be retried")]
    NotFailed,
}

impl Ignored {
    /// The stable code an operator sees when a saga refuses a command for this reason.
    pub fn code(self) -> &'static str {
        match self {
            Ignored::Terminal(_) => "saga_terminal",
            Ignored::AlreadyCompensating => "saga_compensating",
            Ignored::PastPivot => "saga_past_pivot",
            Ignored::NotFailed => "saga_not_failed",
            Ignored::AlreadyStarted | Ignored::Stale | Ignored::Mismatch => "saga_conflict",
        }
    }
}

/// Applies `input` to `saga` under `definition` at time `now`.
pub fn transition(
    definition: &SagaDefinition,
    saga: &Saga,
    input: &Input,
    now: DateTime<Utc>,
) -> Result<Transition, Ignored> {
    match input {
        Input::Retry if saga.state != SagaState::Failed => return Err(Ignored::NotFailed),
        Input::Retry => {}
        _ if saga.state.is_terminal() => return Err(Ignored::Terminal(saga.state)),
        _ => {}
    }
    if saga.steps.len() != definition.steps.len() {
        return Err(Ignored::Mismatch);
    }
    let mut next = Machine {
        definition,
        saga: saga.clone(),
        effects: Vec::new(),
        now,
    };
    match input {
        Input::Start => {
            let untouched = saga.state == SagaState::Running
                && saga.steps.iter().all(|s| s.state == StepState::Pending);
            if !untouched {
                return Err(Ignored::AlreadyStarted);
            }
            if let Some(deadline) = definition.deadline {
                next.effects.push(Effect::SetTimer {
                    timer: Timer {
                        kind: TimerKind::Deadline,
                        step_index: 0,
                        phase: Phase::Forward,
                        attempt: 0,
                    },
                    after: deadline,
                });
            }
            if saga.steps.is_empty() {
                next.finish(SagaState::Completed);
            } else {
                next.start_step(0);
            }
        }
        Input::Reply {
            step_index,
            phase,
            attempt,
            reply,
        } => {
            let (current, waiting) = saga
                .current_attempt(*step_index, *phase)
                .ok_or(Ignored::Stale)?;
            if current != *attempt || waiting {
                return Err(Ignored::Stale);
            }
            match (phase, reply) {
                (Phase::Forward, Reply::Succeeded { output }) => {
                    next.step_succeeded(*step_index, output)
                }
                (Phase::Forward, Reply::Failed(failure)) => next.step_failed(*step_index, failure),
                (Phase::Compensate, Reply::Succeeded { .. }) => {
                    next.compensation_succeeded(*step_index)
                }
                (Phase::Compensate, Reply::Failed(failure)) => next.compensation_failed(failure),
            }
        }
        Input::TimerFired(Timer {
            kind: TimerKind::Deadline,
            ..
        }) => next.stop(StopReason::DeadlineExceeded)?,
        Input::Cancel => next.stop(StopReason::Cancelled)?,
        Input::Retry => next.retry()?,
        Input::TimerFired(timer) => {
            let (current, waiting) = saga
                .current_attempt(timer.step_index, timer.phase)
                .ok_or(Ignored::Stale)?;
            if current != timer.attempt {
                return Err(Ignored::Stale);
            }
            match (timer.kind, waiting) {
                (TimerKind::Backoff, true) => next.next_attempt(timer.step_index, timer.phase),
                (TimerKind::StepTimeout, false) => next.resend(timer.step_index, timer.phase),
                _ => return Err(Ignored::Stale),
            }
        }
    }
    next.saga.updated_at = now;
    Ok(Transition {
        saga: next.saga,
        effects: next.effects,
    })
}

struct Machine<'a> {
    definition: &'a SagaDefinition,
    saga: Saga,
    effects: Vec<Effect>,
    now: DateTime<Utc>,
}

impl Machine<'_> {
    /// The command for `action`, the action of step `step_index` or its compensation.
    fn command(
        &self,
        step: &StepDefinition,
        action: Action,
        step_index: u16,
        phase: Phase,
        attempt: u32,
    ) -> CommandSpec {
        let mut body = Map::new();
        for (k, v) in self.saga.input.iter().chain(self.saga.context.iter()) {
            body.insert(k.clone(), v.clone());
        }
        for (field, key) in step.bind {
            if let Some(value) = body.get(*key).cloned() {
                body.insert((*field).to_owned(), value);
            }
        }
        body.insert(
            "type".into(),
            Value::String(action.command_type(step.command_version)),
        );
        CommandSpec {
            action,
            step_index,
            phase,
            attempt,
            message_id: MessageId::for_command(self.saga.id, step_index, phase, attempt),
            body: Value::Object(body),
        }
    }

    fn send(&mut self, step_index: u16, phase: Phase, attempt: u32) {
        let definition = self.definition;
        let step = &definition.steps[usize::from(step_index)];
        let (action, timeout) = match phase {
            Phase::Forward => (step.action, step.timeout),
            Phase::Compensate => {
                let Some(action) = step.compensation else {
                    return;
                };
                (action, definition.compensation_timeout)
            }
        };
        let command = self.command(step, action, step_index, phase, attempt);
        self.effects.push(Effect::Send(command));
        self.effects.push(Effect::SetTimer {
            timer: Timer {
                kind: TimerKind::StepTimeout,
                step_index,
                phase,
                attempt,
            },
            after: timeout,
        });
    }

    fn start_step(&mut self, step_index: u16) {
        let step = &mut self.saga.steps[usize::from(step_index)];
        step.state = StepState::Running;
        step.attempts = 1;
        step.started_at = Some(self.now);
        self.send(step_index, Phase::Forward, 1);
    }

    fn next_attempt(&mut self, step_index: u16, phase: Phase) {
        let attempt = match phase {
            Phase::Forward => {
                let step = &mut self.saga.steps[usize::from(step_index)];
                step.state = StepState::Running;
                step.attempts += 1;
                step.attempts
            }
            Phase::Compensate => {
                let Some(active) = self.saga.active_compensation() else {
                    return;
                };
                let c = &mut self.saga.compensations[active];
                c.state = CompensationState::Running;
                c.attempts += 1;
                c.attempts
            }
        };
        self.send(step_index, phase, attempt);
    }

    fn resend(&mut self, step_index: u16, phase: Phase) {
        let (attempt, timeout) = match phase {
            Phase::Forward => (
                self.saga.steps[usize::from(step_index)].attempts,
                self.definition.steps[usize::from(step_index)].timeout,
            ),
            Phase::Compensate => {
                let Some(active) = self.saga.active_compensation() else {
                    return;
                };
                (
                    self.saga.compensations[active].attempts,
                    self.definition.compensation_timeout,
                )
            }
        };
        let note = format!(
            "no reply within {} ms; the same command was sent again",
            timeout.as_millis()
        );
        match phase {
            Phase::Forward => self.saga.steps[usize::from(step_index)].last_error = Some(note),
            Phase::Compensate => {
                if let Some(active) = self.saga.active_compensation() {
                    self.saga.compensations[active].last_error = Some(note);
                }
            }
        }
        self.send(step_index, phase, attempt);
    }

    fn step_succeeded(&mut self, step_index: u16, output: &Map<String, Value>) {
        for (k, v) in output {
            self.saga.context.insert(k.clone(), v.clone());
        }
        let step = &mut self.saga.steps[usize::from(step_index)];
        step.state = StepState::Succeeded;
        step.finished_at = Some(self.now);
        if let Some(compensation) = self.definition.steps[usize::from(step_index)].compensation {
            self.saga.compensations.push(CompensationRecord {
                step_index,
                name: compensation.name().to_owned(),
                state: CompensationState::Recorded,
                attempts: 0,
                run_order: None,
                started_at: None,
                finished_at: None,
                last_error: None,
                retry_base: 0,
            });
        }
        if self.saga.stop.is_some() {
            self.begin_compensation();
        } else {
            self.advance(step_index);
        }
    }

    fn begin_compensation(&mut self) {
        self.saga.state = SagaState::Compensating;
        self.compensate_next();
    }

    /// Whether the pivot or a step after it has started: from then on nothing can be undone.
    fn past_pivot(&self) -> bool {
        let Some(pivot) = self.definition.pivot() else {
            return false;
        };
        self.saga
            .steps
            .iter()
            .enumerate()
            .any(|(i, s)| i >= pivot && s.state != StepState::Pending)
    }

    fn stop(&mut self, reason: StopReason) -> Result<(), Ignored> {
        if self.saga.state == SagaState::Compensating {
            return Err(Ignored::AlreadyCompensating);
        }
        if self.past_pivot() {
            return Err(Ignored::PastPivot);
        }
        if self.saga.stop.is_some() {
            return Ok(());
        }
        self.saga.stop = Some(reason);
        let note = match reason {
            StopReason::Cancelled => "cancelled by an operator",
            StopReason::DeadlineExceeded => "the saga's deadline passed",
        };
        match self.saga.active_step() {
            Some(active) if self.saga.steps[usize::from(active)].state == StepState::Running => {}
            Some(active) => {
                let step = &mut self.saga.steps[usize::from(active)];
                step.state = StepState::Failed;
                step.finished_at = Some(self.now);
                step.last_error = Some(note.to_owned());
                self.begin_compensation();
            }
            None => self.begin_compensation(),
        }
        Ok(())
    }

    fn retry(&mut self) -> Result<(), Ignored> {
        if let Some(position) = self
            .saga
            .compensations
            .iter()
            .position(|c| c.state == CompensationState::Failed)
        {
            let c = &mut self.saga.compensations[position];
            c.state = CompensationState::Running;
            c.retry_base = c.attempts;
            c.attempts += 1;
            c.finished_at = None;
            let (step_index, attempt) = (c.step_index, c.attempts);
            self.saga.state = SagaState::Compensating;
            self.send(step_index, Phase::Compensate, attempt);
            return Ok(());
        }
        let parked = self.saga.steps.iter().enumerate().position(|(i, s)| {
            s.state == StepState::Failed
                && self.definition.steps[i].on_failure == FailurePolicy::Park
        });
        let Some(index) = parked else {
            return Err(Ignored::NotFailed);
        };
        let step = &mut self.saga.steps[index];
        step.state = StepState::Running;
        step.retry_base = step.attempts;
        step.attempts += 1;
        step.finished_at = None;
        let attempt = step.attempts;
        self.saga.state = SagaState::Running;
        self.send(index_u16(index), Phase::Forward, attempt);
        Ok(())
    }

    fn advance(&mut self, after: u16) {
        let next = usize::from(after) + 1;
        if next < self.saga.steps.len() {
            self.start_step(index_u16(next));
        } else {
            self.finish(SagaState::Completed);
        }
    }

    fn finish(&mut self, state: SagaState) {
        self.saga.state = state;
        self.effects.push(Effect::ClearTimer);
        self.effects.push(Effect::Finished(state));
    }

    fn retry_or_give_up(
        policy: &RetryPolicy,
        attempts: u32,
        failure: &StepFailure,
    ) -> Option<Duration> {
        if !failure.retryable || attempts >= policy.max_attempts {
            return None;
        }
        let hint = Duration::from_millis(failure.retry_after_ms.unwrap_or(0));
        Some(policy.backoff(attempts).max(hint))
    }

    fn step_failed(&mut self, step_index: u16, failure: &StepFailure) {
        for (k, v) in &failure.output {
            self.saga.context.insert(k.clone(), v.clone());
        }
        let definition = &self.definition.steps[usize::from(step_index)];
        let stopping = self.saga.stop.is_some();
        let step = &mut self.saga.steps[usize::from(step_index)];
        step.last_error = Some(format!("{}: {}", failure.code, failure.message));
        let retry =
            Self::retry_or_give_up(&definition.retry, step.attempts - step.retry_base, failure);
        if let Some(wait) = retry.filter(|_| !stopping) {
            step.state = StepState::Retrying;
            let attempt = step.attempts;
            self.effects.push(Effect::SetTimer {
                timer: Timer {
                    kind: TimerKind::Backoff,
                    step_index,
                    phase: Phase::Forward,
                    attempt,
                },
                after: wait,
            });
            return;
        }
        step.state = StepState::Failed;
        step.finished_at = Some(self.now);
        if stopping {
            self.begin_compensation();
            return;
        }
        match definition.on_failure {
            FailurePolicy::Continue => self.advance(step_index),
            FailurePolicy::Park => self.finish(SagaState::Failed),
            FailurePolicy::Compensate => self.begin_compensation(),
        }
    }

    /// Starts the latest recorded compensation, or ends the saga when none is left.
    fn compensate_next(&mut self) {
        let run_order = self
            .saga
            .compensations
            .iter()
            .filter(|c| c.run_order.is_some())
            .count();
        let Some(position) = self
            .saga
            .compensations
            .iter()
            .rposition(|c| c.state == CompensationState::Recorded)
        else {
            let end = match self.saga.stop {
                Some(StopReason::Cancelled) => SagaState::Cancelled,
                _ => SagaState::Compensated,
            };
            self.finish(end);
            return;
        };
        let c = &mut self.saga.compensations[position];
        c.state = CompensationState::Running;
        c.attempts = 1;
        c.run_order = Some(u32::try_from(run_order).unwrap_or(u32::MAX) + 1);
        c.started_at = Some(self.now);
        let step_index = c.step_index;
        self.send(step_index, Phase::Compensate, 1);
    }

    fn compensation_succeeded(&mut self, step_index: u16) {
        if let Some(active) = self.saga.active_compensation() {
            let c = &mut self.saga.compensations[active];
            c.state = CompensationState::Succeeded;
            c.finished_at = Some(self.now);
        }
        self.saga.steps[usize::from(step_index)].state = StepState::Compensated;
        self.compensate_next();
    }

    fn compensation_failed(&mut self, failure: &StepFailure) {
        let Some(active) = self.saga.active_compensation() else {
            return;
        };
        let policy = self.definition.compensation_retry;
        let c = &mut self.saga.compensations[active];
        c.last_error = Some(format!("{}: {}", failure.code, failure.message));
        if let Some(wait) = Self::retry_or_give_up(&policy, c.attempts - c.retry_base, failure) {
            c.state = CompensationState::Retrying;
            let timer = Timer {
                kind: TimerKind::Backoff,
                step_index: c.step_index,
                phase: Phase::Compensate,
                attempt: c.attempts,
            };
            self.effects.push(Effect::SetTimer { timer, after: wait });
            return;
        }
        c.state = CompensationState::Failed;
        c.finished_at = Some(self.now);
        self.finish(SagaState::Failed);
    }
}
