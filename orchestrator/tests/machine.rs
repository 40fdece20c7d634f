//! Integration tests of the saga state machine (`saga_orchestrator::machine`): a table of every
//! (state, input) pair, the behaviours of the `mission_reward` definition (operator cancel and
//! retry, the whole-saga deadline included), and property tests that drive random worker and
//! operator behaviour through the machine's own effects to a terminal state, for
//! `mission_reward` and for the definitions not running yet (`mission_reward` v2,
//! `gift_exchange`), every command checked against its contract.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use contracts::command::{
    AttachRewardV1, CompleteMissionV1, DetachRewardV1, GrantRewardV1, NotificationStatus,
    RecordMessageV1, ReopenMissionV1, RevokeRewardV1, SendNotificationV1,
};
use contracts::reply::{
    GiftIssuedV1, GiftNotificationStatus, GiftNotifiedV1, GiftReservedV1, MissionCompletedV1,
    NotificationOutcomeV1, RewardGrantedV1, output_of,
};
use contracts::{
    Action, Command, CustomerId, GiftId, MessageId, MissionId, NotificationId, Phase, Reply,
    RewardId, SagaId, StepFailure,
};
use proptest::prelude::*;
use saga_orchestrator::definition::{
    FailurePolicy, Policies, RetryPolicy, SagaDefinition, gift_exchange, mission_reward,
    mission_reward_v2,
};
use saga_orchestrator::machine::{
    CommandSpec, CompensationRecord, CompensationState, Effect, Ignored, Input, Saga, SagaState,
    StepState, StopReason, Timer, TimerKind, Transition, transition,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn saga_id() -> SagaId {
    SagaId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001))
}

fn mission_id() -> MissionId {
    MissionId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002))
}

fn reward_id() -> RewardId {
    RewardId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003))
}

fn notification_id() -> NotificationId {
    NotificationId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0004))
}

fn customer_id() -> CustomerId {
    "player-42".parse().expect("a valid customer id")
}

fn gift_id() -> GiftId {
    GiftId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0005))
}

/// A valid input of `def`.
fn input_for(def: &SagaDefinition) -> Map<String, Value> {
    let mut input = Map::new();
    for (name, _) in def.input_fields {
        let value = match *name {
            "mission_id" => json!(mission_id()),
            "gift_id" => json!(gift_id()),
            "customer_id" => json!(customer_id()),
            other => panic!("no fixture for input.{other}"),
        };
        input.insert((*name).to_owned(), value);
    }
    def.check_input(&Value::Object(input))
        .expect("the fixture input is valid")
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_735_689_600, 0).expect("a valid timestamp")
}

fn default_def() -> SagaDefinition {
    mission_reward(&Policies::default())
}

/// Small budgets, so that random runs exhaust retries often.
fn tight_policies() -> Policies {
    let step = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(100),
        multiplier: 2.0,
        max_backoff: Duration::from_secs(1),
    };
    Policies {
        step,
        telegram: step,
        compensation: RetryPolicy {
            max_attempts: 3,
            ..step
        },
        step_timeout: Duration::from_secs(1),
        telegram_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(60),
    }
}

/// What a worker realistically answers when `action` succeeds.
fn output_for(action: Action) -> Map<String, Value> {
    match action {
        Action::CompleteMission => output_of(&MissionCompletedV1 {
            customer_id: customer_id(),
            mission_title: "Find the lost cat".to_owned(),
            reward_points: 150,
        }),
        Action::GrantReward => output_of(&RewardGrantedV1 {
            reward_id: reward_id(),
        }),
        Action::SendNotification => output_of(&NotificationOutcomeV1 {
            notification_id: notification_id(),
            notification_status: NotificationStatus::Sent,
            telegram_message_id: Some(4242),
        }),
        Action::ReserveGift => output_of(&GiftReservedV1 {
            gift_name: "Golden mug".to_owned(),
            price_points: 40,
        }),
        Action::IssueGift => output_of(&GiftIssuedV1 {
            voucher_code: "MUG-4242".to_owned(),
        }),
        Action::NotifyGift => output_of(&GiftNotifiedV1 {
            notification_status: GiftNotificationStatus::Sent,
            notification_id: Some(notification_id()),
        }),
        _ => Map::new(),
    }
}

/// What the telegram worker adds to the context when the send failed for good.
fn failed_notification_output() -> Map<String, Value> {
    output_of(&NotificationOutcomeV1 {
        notification_id: notification_id(),
        notification_status: NotificationStatus::Failed,
        telegram_message_id: None,
    })
}

fn retryable() -> StepFailure {
    StepFailure::retryable("unavailable", "the downstream is unavailable")
}

fn permanent() -> StepFailure {
    StepFailure::permanent("rejected", "the downstream said no")
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The deadline timer `Start` arms.
fn deadline_timer() -> Timer {
    Timer {
        kind: TimerKind::Deadline,
        step_index: 0,
        phase: Phase::Forward,
        attempt: 0,
    }
}

/// The index of the last compensable step: once a step after it has started, nothing can be
/// undone any more.
fn pivot(def: &SagaDefinition) -> Option<usize> {
    def.steps.iter().rposition(|s| s.compensation.is_some())
}

fn past_pivot(def: &SagaDefinition, saga: &Saga) -> bool {
    let pivot = pivot(def);
    saga.steps
        .iter()
        .enumerate()
        .any(|(i, s)| pivot.is_none_or(|p| i > p) && s.state != StepState::Pending)
}

// ---------------------------------------------------------------------------------------------
// A tiny world around the machine: it applies inputs, checks the effects, and remembers the
// command in flight and the armed timers (one per slot), exactly as the store would.
// ---------------------------------------------------------------------------------------------

struct World<'d> {
    def: &'d SagaDefinition,
    saga: Saga,
    now: DateTime<Utc>,
    in_flight: Option<CommandSpec>,
    /// The timer of the "step" slot (timeout or backoff).
    armed: Option<(Timer, Duration)>,
    /// The timer of the "deadline" slot.
    deadline: Option<(Timer, Duration)>,
    sent: Vec<CommandSpec>,
}

impl<'d> World<'d> {
    fn new(def: &'d SagaDefinition) -> Self {
        Self {
            def,
            saga: Saga::new(def, saga_id(), input_for(def), t0()),
            now: t0(),
            in_flight: None,
            armed: None,
            deadline: None,
            sent: Vec::new(),
        }
    }

    fn try_apply(&mut self, input: &Input) -> Result<Vec<Effect>, Ignored> {
        self.now += TimeDelta::seconds(1);
        let result = transition(self.def, &self.saga, input, self.now);
        let again = transition(self.def, &self.saga, input, self.now);
        assert_eq!(result, again, "transition must be a pure function");
        if matches!(
            input,
            Input::TimerFired(Timer {
                kind: TimerKind::Deadline,
                ..
            })
        ) {
            // A timer that fell due is gone, whatever the machine made of it.
            self.deadline = None;
        }
        let Transition { saga, effects } = result?;
        check_effects(self.def, input, &saga, &effects, self.now);
        for effect in &effects {
            match effect {
                Effect::Send(command) => {
                    self.in_flight = Some(command.clone());
                    self.sent.push(command.clone());
                }
                Effect::SetTimer { timer, after } => match timer.kind.slot() {
                    "deadline" => self.deadline = Some((*timer, *after)),
                    slot => {
                        assert_eq!(slot, "step");
                        self.armed = Some((*timer, *after));
                    }
                },
                Effect::ClearTimer => {
                    self.armed = None;
                    self.deadline = None;
                }
                Effect::Finished(_) => {}
            }
        }
        self.saga = saga;
        check_structure(self.def, &self.saga);
        if self.saga.state.is_terminal() {
            assert_eq!(self.armed, None, "a terminal saga keeps no step timer");
            assert_eq!(self.deadline, None, "a terminal saga keeps no deadline");
        } else {
            // A live saga always has exactly the timer that moves it on armed: otherwise it hangs.
            let focus = focus(&self.saga).expect("a live, started saga has something in flight");
            let (timer, _) = self.armed.expect("a live saga has a timer armed");
            assert_eq!(
                (timer.step_index, timer.phase, timer.attempt),
                (focus.step_index, focus.phase, focus.attempt),
                "the armed timer belongs to what is in flight"
            );
            let kind = if focus.waiting {
                TimerKind::Backoff
            } else {
                TimerKind::StepTimeout
            };
            assert_eq!(timer.kind, kind);
        }
        Ok(effects)
    }

    fn apply(&mut self, input: &Input) -> Vec<Effect> {
        self.try_apply(input)
            .unwrap_or_else(|ignored| panic!("{input:?} was ignored: {ignored}"))
    }

    fn command(&self) -> &CommandSpec {
        self.in_flight.as_ref().expect("a command is in flight")
    }

    fn reply_input(&self, reply: Reply) -> Input {
        let command = self.command();
        Input::Reply {
            step_index: command.step_index,
            phase: command.phase,
            attempt: command.attempt,
            reply,
        }
    }

    fn start(&mut self) -> Vec<Effect> {
        self.apply(&Input::Start)
    }

    fn succeed(&mut self) -> Vec<Effect> {
        let command = self.command();
        let output = match command.phase {
            Phase::Forward => output_for(command.action),
            Phase::Compensate => Map::new(),
        };
        let input = self.reply_input(Reply::Succeeded { output });
        self.apply(&input)
    }

    fn fail(&mut self, failure: StepFailure) -> Vec<Effect> {
        let input = self.reply_input(Reply::Failed(failure));
        self.apply(&input)
    }

    fn fire(&mut self) -> Vec<Effect> {
        let (timer, _) = self.armed.expect("a timer is armed");
        self.apply(&Input::TimerFired(timer))
    }

    /// Fires the armed deadline.
    fn try_fire_deadline(&mut self) -> Result<Vec<Effect>, Ignored> {
        let (timer, _) = self.deadline.expect("the deadline is armed");
        self.try_apply(&Input::TimerFired(timer))
    }

    fn step_states(&self) -> Vec<StepState> {
        self.saga.steps.iter().map(|s| s.state).collect()
    }

    fn compensation(&self, step_index: u16) -> &CompensationRecord {
        self.saga
            .compensations
            .iter()
            .find(|c| c.step_index == step_index)
            .expect("the compensation is recorded")
    }
}

/// Checks what every accepted transition must satisfy, given its input.
fn check_effects(
    def: &SagaDefinition,
    input: &Input,
    saga: &Saga,
    effects: &[Effect],
    now: DateTime<Utc>,
) {
    assert_eq!(saga.updated_at, now, "an accepted input touches updated_at");
    let sends = effects
        .iter()
        .filter(|e| matches!(e, Effect::Send(_)))
        .count();
    let step_timers = effects
        .iter()
        .filter(|e| matches!(e, Effect::SetTimer { timer, .. } if timer.kind.slot() == "step"))
        .count();
    assert!(
        sends <= 1,
        "at most one command per transition: {effects:?}"
    );
    assert!(
        step_timers <= 1,
        "at most one step timer per transition: {effects:?}"
    );
    // Only Start arms the deadline, first, exactly as the definition says.
    let deadlines: Vec<&Effect> = effects
        .iter()
        .filter(
            |e| matches!(e, Effect::SetTimer { timer, .. } if timer.kind == TimerKind::Deadline),
        )
        .collect();
    let expected_deadline = match (input, def.deadline) {
        (Input::Start, Some(after)) => Some(Effect::SetTimer {
            timer: deadline_timer(),
            after,
        }),
        _ => None,
    };
    assert_eq!(
        deadlines,
        expected_deadline.iter().collect::<Vec<_>>(),
        "{input:?}: {effects:?}"
    );
    if expected_deadline.is_some() {
        assert_eq!(effects.first(), expected_deadline.as_ref());
    }
    for (i, effect) in effects.iter().enumerate() {
        match effect {
            Effect::Send(command) => {
                check_command(def, saga, command);
                let timeout = match command.phase {
                    Phase::Forward => def.steps[usize::from(command.step_index)].timeout,
                    Phase::Compensate => def.compensation_timeout,
                };
                let expected = Effect::SetTimer {
                    timer: Timer {
                        kind: TimerKind::StepTimeout,
                        step_index: command.step_index,
                        phase: command.phase,
                        attempt: command.attempt,
                    },
                    after: timeout,
                };
                assert_eq!(
                    effects.get(i + 1),
                    Some(&expected),
                    "a command arms its timeout"
                );
            }
            Effect::SetTimer { timer, .. } => {
                if timer.kind == TimerKind::StepTimeout {
                    assert!(
                        i > 0 && matches!(effects[i - 1], Effect::Send(_)),
                        "a timeout is armed right after its command: {effects:?}"
                    );
                }
            }
            Effect::ClearTimer => assert!(
                matches!(effects.get(i + 1), Some(Effect::Finished(_))),
                "the timer is cleared only when the saga finishes: {effects:?}"
            ),
            Effect::Finished(state) => {
                assert_eq!(*state, saga.state);
                assert_eq!(i + 1, effects.len(), "Finished comes last: {effects:?}");
                assert!(i > 0 && effects[i - 1] == Effect::ClearTimer);
            }
        }
    }
    let finished = effects.iter().any(|e| matches!(e, Effect::Finished(_)));
    assert_eq!(finished, saga.state.is_terminal(), "{effects:?}");
    if !saga.state.is_terminal() {
        let stop_request = matches!(
            input,
            Input::Cancel
                | Input::TimerFired(Timer {
                    kind: TimerKind::Deadline,
                    ..
                })
        );
        if stop_request && saga.state == SagaState::Running {
            // The step in flight keeps its command and timeout: the saga waits for its reply.
            assert!(effects.is_empty(), "{input:?}: {effects:?}");
            assert!(saga.stop.is_some());
        } else {
            assert_eq!(
                step_timers, 1,
                "a live saga's transition arms a step timer: {effects:?}"
            );
        }
    }
}

/// Checks a command: its id, its action, its versioned type and that its body parses into the
/// contract.
fn check_command(def: &SagaDefinition, saga: &Saga, command: &CommandSpec) {
    assert_eq!(
        command.message_id,
        MessageId::for_command(saga.id, command.step_index, command.phase, command.attempt)
    );
    let step = def.step(command.step_index).expect("the step exists");
    let action = match command.phase {
        Phase::Forward => step.action,
        Phase::Compensate => step.compensation.expect("the step has a compensation"),
    };
    assert_eq!(command.action, action);
    assert_eq!(
        command.body.get("type"),
        Some(&Value::String(action.command_type(step.command_version)))
    );
    let parsed: Command = serde_json::from_value(command.body.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}: {}", action.name(), command.body));
    assert_eq!(parsed.action(), action);
}

/// Structural invariants of any saga the machine produced.
fn check_structure(def: &SagaDefinition, saga: &Saga) {
    let active_steps = saga
        .steps
        .iter()
        .filter(|s| matches!(s.state, StepState::Running | StepState::Retrying))
        .count();
    let active_compensations = saga
        .compensations
        .iter()
        .filter(|c| {
            matches!(
                c.state,
                CompensationState::Running | CompensationState::Retrying
            )
        })
        .count();
    let started = saga.steps.iter().any(|s| s.state != StepState::Pending);
    match saga.state {
        SagaState::Running => {
            assert_eq!(active_steps, usize::from(started), "{saga:#?}");
            assert_eq!(active_compensations, 0, "{saga:#?}");
            if saga.stop.is_some() {
                // Stopping: only a step whose command is out keeps the saga running; it is
                // never put back to wait for a retry.
                assert!(
                    saga.steps.iter().any(|s| s.state == StepState::Running),
                    "{saga:#?}"
                );
            }
        }
        SagaState::Compensating => {
            assert_eq!(active_steps, 0, "{saga:#?}");
            assert_eq!(active_compensations, 1, "{saga:#?}");
        }
        _ => {
            assert_eq!(active_steps, 0, "{saga:#?}");
            assert_eq!(active_compensations, 0, "{saga:#?}");
        }
    }
    // Why it stopped fits how it ended; a stopped saga never went past its pivot.
    match saga.state {
        SagaState::Completed => assert_eq!(saga.stop, None, "{saga:#?}"),
        SagaState::Cancelled => assert_eq!(saga.stop, Some(StopReason::Cancelled), "{saga:#?}"),
        SagaState::Compensated => assert_ne!(saga.stop, Some(StopReason::Cancelled), "{saga:#?}"),
        SagaState::Running | SagaState::Compensating | SagaState::Failed => {}
    }
    if saga.stop.is_some() {
        assert!(!past_pivot(def, saga), "{saga:#?}");
    }
    // One compensation per compensable step that succeeded, each recorded once.
    let compensable: BTreeSet<u16> = saga
        .steps
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            matches!(s.state, StepState::Succeeded | StepState::Compensated)
                && def.steps[*i].compensation.is_some()
        })
        .map(|(i, _)| u16::try_from(i).expect("few steps"))
        .collect();
    let recorded: Vec<u16> = saga.compensations.iter().map(|c| c.step_index).collect();
    assert_eq!(
        recorded.iter().copied().collect::<BTreeSet<_>>(),
        compensable,
        "{saga:#?}"
    );
    assert_eq!(recorded.len(), compensable.len(), "{saga:#?}");
    for c in &saga.compensations {
        let step = &saga.steps[usize::from(c.step_index)];
        assert_eq!(
            step.state == StepState::Compensated,
            c.state == CompensationState::Succeeded,
            "{saga:#?}"
        );
        assert!(c.retry_base <= c.attempts, "{saga:#?}");
        assert!(
            c.attempts - c.retry_base <= def.compensation_retry.max_attempts,
            "{saga:#?}"
        );
        assert_eq!(
            c.run_order.is_some(),
            c.state != CompensationState::Recorded
        );
    }
    // Compensations run in reverse step order, numbered 1, 2, ...
    let mut run: Vec<_> = saga
        .compensations
        .iter()
        .filter_map(|c| c.run_order.map(|order| (order, c.step_index)))
        .collect();
    run.sort_unstable();
    for (i, (order, _)) in run.iter().enumerate() {
        assert_eq!(usize::try_from(*order).expect("small"), i + 1, "{saga:#?}");
    }
    assert!(
        run.windows(2).all(|w| w[0].1 > w[1].1),
        "compensations run in reverse step order: {saga:#?}"
    );
    for (i, step) in saga.steps.iter().enumerate() {
        assert!(step.retry_base <= step.attempts, "{saga:#?}");
        assert!(
            step.attempts - step.retry_base <= def.steps[i].retry.max_attempts,
            "{saga:#?}"
        );
    }
}

/// What a reply or timer must name to be current: the step or compensation in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Focus {
    step_index: u16,
    phase: Phase,
    attempt: u32,
    waiting: bool,
}

fn focus(saga: &Saga) -> Option<Focus> {
    if let Some((i, step)) = saga
        .steps
        .iter()
        .enumerate()
        .find(|(_, s)| matches!(s.state, StepState::Running | StepState::Retrying))
    {
        return Some(Focus {
            step_index: u16::try_from(i).expect("few steps"),
            phase: Phase::Forward,
            attempt: step.attempts,
            waiting: step.state == StepState::Retrying,
        });
    }
    saga.compensations
        .iter()
        .find(|c| {
            matches!(
                c.state,
                CompensationState::Running | CompensationState::Retrying
            )
        })
        .map(|c| Focus {
            step_index: c.step_index,
            phase: Phase::Compensate,
            attempt: c.attempts,
            waiting: c.state == CompensationState::Retrying,
        })
}

/// The focus of a saga, or for a terminal one the last step that was tried.
fn focus_or_last(saga: &Saga) -> Focus {
    focus(saga).unwrap_or_else(|| {
        let (i, step) = saga
            .steps
            .iter()
            .enumerate()
            .rev()
            .find(|(_, s)| s.attempts > 0)
            .expect("some step was tried");
        Focus {
            step_index: u16::try_from(i).expect("few steps"),
            phase: Phase::Forward,
            attempt: step.attempts,
            waiting: false,
        }
    })
}

fn other(phase: Phase) -> Phase {
    match phase {
        Phase::Forward => Phase::Compensate,
        Phase::Compensate => Phase::Forward,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The table: every (state, input) pair
// ---------------------------------------------------------------------------------------------

/// The states of the table, each built by driving the machine from `Start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Given {
    /// Running; step 1 (`reward.grant`) Running at attempt 2 (attempt 1 failed, retryable).
    RunningStepRunning,
    /// Running; step 1 Retrying after attempt 2 failed (waiting for the backoff).
    RunningStepRetrying,
    /// `RunningStepRunning`, then cancelled: the saga waits for step 1's reply.
    RunningStopRequested,
    /// Running past the pivot; step 3 (`notification.send`) Running at attempt 2.
    RunningPastPivot,
    /// Compensating after step 2 failed for good; `reward.revoke` Running at attempt 2.
    CompensatingRunning,
    /// Compensating; `reward.revoke` Retrying after attempt 2 failed.
    CompensatingRetrying,
    /// Every step succeeded.
    Completed,
    /// Step 1 failed for good; step 0 was undone.
    Compensated,
    /// Step 4 (`mission.record_message`, policy park) failed for good.
    Failed,
    /// `CompensatingRunning`, then `reward.revoke` failed for good: parked.
    FailedInCompensation,
    /// `RunningStopRequested`, then step 1 succeeded and steps 1 and 0 were undone.
    Cancelled,
}

impl Given {
    const ALL: [Given; 11] = [
        Given::RunningStepRunning,
        Given::RunningStepRetrying,
        Given::RunningStopRequested,
        Given::RunningPastPivot,
        Given::CompensatingRunning,
        Given::CompensatingRetrying,
        Given::Completed,
        Given::Compensated,
        Given::Failed,
        Given::FailedInCompensation,
        Given::Cancelled,
    ];

    fn world(self, def: &SagaDefinition) -> World<'_> {
        let mut w = match self {
            Given::RunningStepRetrying | Given::RunningStopRequested => {
                Given::RunningStepRunning.world(def)
            }
            Given::CompensatingRetrying | Given::FailedInCompensation => {
                Given::CompensatingRunning.world(def)
            }
            Given::Cancelled => Given::RunningStopRequested.world(def),
            _ => {
                let mut w = World::new(def);
                w.start();
                w
            }
        };
        match self {
            Given::RunningStepRunning => {
                w.succeed();
                w.fail(retryable());
                w.fire();
            }
            Given::RunningStepRetrying | Given::CompensatingRetrying => {
                w.fail(retryable());
            }
            Given::RunningStopRequested => {
                w.apply(&Input::Cancel);
            }
            Given::RunningPastPivot => {
                for _ in 0..3 {
                    w.succeed();
                }
                w.fail(retryable());
                w.fire();
            }
            Given::CompensatingRunning => {
                w.succeed();
                w.succeed();
                w.fail(permanent());
                w.fail(retryable());
                w.fire();
            }
            Given::Completed => {
                for _ in 0..5 {
                    w.succeed();
                }
            }
            Given::Compensated => {
                w.succeed();
                w.fail(permanent());
                w.succeed();
            }
            Given::Failed => {
                for _ in 0..4 {
                    w.succeed();
                }
                w.fail(permanent());
            }
            Given::FailedInCompensation => {
                w.fail(permanent());
            }
            Given::Cancelled => {
                // reward.grant's reply, then reward.revoke and mission.reopen.
                for _ in 0..3 {
                    w.succeed();
                }
            }
        }
        w
    }

    fn build(self, def: &SagaDefinition) -> Saga {
        let saga = self.world(def).saga;
        let focus = focus(&saga);
        let expected = match self {
            Given::RunningStepRunning | Given::RunningStopRequested => {
                Some((SagaState::Running, 1, Phase::Forward, 2, false))
            }
            Given::RunningStepRetrying => Some((SagaState::Running, 1, Phase::Forward, 2, true)),
            Given::RunningPastPivot => Some((SagaState::Running, 3, Phase::Forward, 2, false)),
            Given::CompensatingRunning => {
                Some((SagaState::Compensating, 1, Phase::Compensate, 2, false))
            }
            Given::CompensatingRetrying => {
                Some((SagaState::Compensating, 1, Phase::Compensate, 2, true))
            }
            Given::Completed
            | Given::Compensated
            | Given::Failed
            | Given::FailedInCompensation
            | Given::Cancelled => None,
        };
        match expected {
            Some((state, step_index, phase, attempt, waiting)) => {
                assert_eq!(saga.state, state, "{self:?}");
                assert_eq!(
                    focus,
                    Some(Focus {
                        step_index,
                        phase,
                        attempt,
                        waiting
                    }),
                    "{self:?}"
                );
            }
            None => {
                let state = match self {
                    Given::Completed => SagaState::Completed,
                    Given::Compensated => SagaState::Compensated,
                    Given::Cancelled => SagaState::Cancelled,
                    _ => SagaState::Failed,
                };
                assert_eq!(saga.state, state, "{self:?}");
            }
        }
        let stop = match self {
            Given::RunningStopRequested | Given::Cancelled => Some(StopReason::Cancelled),
            _ => None,
        };
        assert_eq!(saga.stop, stop, "{self:?}");
        saga
    }
}

/// The inputs of the table, aimed at what the saga has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Probe {
    Start,
    /// `step.succeeded` for the current step, phase and attempt.
    ReplySucceeded,
    /// A retryable `step.failed` for the current attempt.
    ReplyRetryable,
    /// A permanent `step.failed` for the current attempt.
    ReplyPermanent,
    /// `step.succeeded` for the previous attempt of the current step.
    ReplyStaleAttempt,
    /// `step.succeeded` for the current step and attempt in the other phase.
    ReplyWrongPhase,
    /// The step timeout of the current attempt.
    TimerStepTimeout,
    /// The backoff timer of the current attempt.
    TimerBackoff,
    /// The timer the current attempt would use, for the previous attempt.
    TimerStaleAttempt,
    /// An operator cancels the saga.
    Cancel,
    /// An operator retries the saga.
    Retry,
    /// The deadline timer `Start` armed.
    TimerDeadline,
}

impl Probe {
    const ALL: [Probe; 12] = [
        Probe::Start,
        Probe::ReplySucceeded,
        Probe::ReplyRetryable,
        Probe::ReplyPermanent,
        Probe::ReplyStaleAttempt,
        Probe::ReplyWrongPhase,
        Probe::TimerStepTimeout,
        Probe::TimerBackoff,
        Probe::TimerStaleAttempt,
        Probe::Cancel,
        Probe::Retry,
        Probe::TimerDeadline,
    ];

    fn input(self, saga: &Saga) -> Input {
        let f = focus_or_last(saga);
        let reply = |phase, attempt, reply| Input::Reply {
            step_index: f.step_index,
            phase,
            attempt,
            reply,
        };
        let timer = |kind, attempt| {
            Input::TimerFired(Timer {
                kind,
                step_index: f.step_index,
                phase: f.phase,
                attempt,
            })
        };
        let output = match f.phase {
            Phase::Forward => Action::from_name(&saga.steps[usize::from(f.step_index)].name)
                .map(output_for)
                .unwrap_or_default(),
            Phase::Compensate => Map::new(),
        };
        let previous = f.attempt.saturating_sub(1);
        match self {
            Probe::Start => Input::Start,
            Probe::ReplySucceeded => reply(f.phase, f.attempt, Reply::Succeeded { output }),
            Probe::ReplyRetryable => reply(f.phase, f.attempt, Reply::Failed(retryable())),
            Probe::ReplyPermanent => reply(f.phase, f.attempt, Reply::Failed(permanent())),
            Probe::ReplyStaleAttempt => reply(f.phase, previous, Reply::Succeeded { output }),
            Probe::ReplyWrongPhase => reply(other(f.phase), f.attempt, Reply::Succeeded { output }),
            Probe::TimerStepTimeout => timer(TimerKind::StepTimeout, f.attempt),
            Probe::TimerBackoff => timer(TimerKind::Backoff, f.attempt),
            Probe::TimerStaleAttempt => {
                let kind = if f.waiting {
                    TimerKind::Backoff
                } else {
                    TimerKind::StepTimeout
                };
                timer(kind, previous)
            }
            Probe::Cancel => Input::Cancel,
            Probe::Retry => Input::Retry,
            Probe::TimerDeadline => Input::TimerFired(deadline_timer()),
        }
    }
}

/// The states of a saga's parts, to compare a transition's result with.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    state: SagaState,
    stop: Option<StopReason>,
    /// (state, attempts, retry base) of each step.
    steps: Vec<(StepState, u32, u32)>,
    /// (step index, state, attempts, run order, retry base) of each compensation, in recorded
    /// order.
    compensations: Vec<(u16, CompensationState, u32, Option<u32>, u32)>,
}

impl Shape {
    fn of(saga: &Saga) -> Self {
        Self {
            state: saga.state,
            stop: saga.stop,
            steps: saga
                .steps
                .iter()
                .map(|s| (s.state, s.attempts, s.retry_base))
                .collect(),
            compensations: saga
                .compensations
                .iter()
                .map(|c| (c.step_index, c.state, c.attempts, c.run_order, c.retry_base))
                .collect(),
        }
    }

    fn with(mut self, state: SagaState, changes: &[Change]) -> Self {
        self.state = state;
        for change in changes {
            match *change {
                Change::Step(i, state, attempts) => {
                    let step = &mut self.steps[usize::from(i)];
                    (step.0, step.1) = (state, attempts);
                }
                Change::StepRetryBase(i, base) => self.steps[usize::from(i)].2 = base,
                Change::Comp(i, state, attempts, run_order) => {
                    match self.compensations.iter_mut().find(|c| c.0 == i) {
                        Some(existing) => {
                            (existing.1, existing.2, existing.3) = (state, attempts, run_order);
                        }
                        None => self.compensations.push((i, state, attempts, run_order, 0)),
                    }
                }
                Change::CompRetryBase(i, base) => {
                    self.compensations
                        .iter_mut()
                        .find(|c| c.0 == i)
                        .expect("the compensation is recorded")
                        .4 = base;
                }
                Change::Stop(reason) => self.stop = Some(reason),
            }
        }
        self
    }
}

/// A part of the saga an input changed.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// Step `index` is now in `state` after `attempts`.
    Step(u16, StepState, u32),
    /// Step `index`'s retry budget now counts from `attempts` = the given base.
    StepRetryBase(u16, u32),
    /// The compensation of step `index` is now (or newly recorded) in `state` after `attempts`,
    /// with `run_order`.
    Comp(u16, CompensationState, u32, Option<u32>),
    /// The compensation of step `index`'s retry budget now counts from the given base.
    CompRetryBase(u16, u32),
    /// The saga was asked to stop.
    Stop(StopReason),
}

/// An effect, with what the table cares about.
#[derive(Clone, Debug, PartialEq)]
enum Eff {
    /// A command: action, step index, phase, attempt (its message id is checked separately).
    Send(Action, u16, Phase, u32),
    /// A timer: kind, step index, phase, attempt, due after.
    Timer(TimerKind, u16, Phase, u32, Duration),
    Clear,
    Finished(SagaState),
}

impl Eff {
    fn of(effect: &Effect) -> Self {
        match effect {
            Effect::Send(c) => Eff::Send(c.action, c.step_index, c.phase, c.attempt),
            Effect::SetTimer { timer, after } => Eff::Timer(
                timer.kind,
                timer.step_index,
                timer.phase,
                timer.attempt,
                *after,
            ),
            Effect::ClearTimer => Eff::Clear,
            Effect::Finished(state) => Eff::Finished(*state),
        }
    }
}

#[derive(Clone, Debug)]
enum Expected {
    Ignored(Ignored),
    Applied {
        state: SagaState,
        changes: Vec<Change>,
        effects: Vec<Eff>,
    },
}

struct Row {
    name: String,
    given: Given,
    probe: Probe,
    expected: Expected,
}

fn row(given: Given, probe: Probe, expected: Expected) -> Row {
    Row {
        name: format!("{given:?} + {probe:?}"),
        given,
        probe,
        expected,
    }
}

fn applied(state: SagaState, changes: Vec<Change>, effects: Vec<Eff>) -> Expected {
    Expected::Applied {
        state,
        changes,
        effects,
    }
}

fn send(action: Action, step: u16, phase: Phase, attempt: u32) -> Eff {
    Eff::Send(action, step, phase, attempt)
}

fn timeout(step: u16, phase: Phase, attempt: u32, after: Duration) -> Eff {
    Eff::Timer(TimerKind::StepTimeout, step, phase, attempt, after)
}

fn backoff(step: u16, phase: Phase, attempt: u32, after: Duration) -> Eff {
    Eff::Timer(TimerKind::Backoff, step, phase, attempt, after)
}

fn table() -> Vec<Row> {
    use CompensationState as C;
    use Given as G;
    use Phase::{Compensate as Comp, Forward as Fwd};
    use Probe as P;
    use StepState as S;
    let stale = || Expected::Ignored(Ignored::Stale);
    let started = || Expected::Ignored(Ignored::AlreadyStarted);
    let terminal = |state| Expected::Ignored(Ignored::Terminal(state));
    let not_failed = || Expected::Ignored(Ignored::NotFailed);
    let past_pivot = || Expected::Ignored(Ignored::PastPivot);
    let compensating = || Expected::Ignored(Ignored::AlreadyCompensating);
    let step_timeout = Duration::from_secs(10);
    let telegram_timeout = Duration::from_secs(20);
    let compensation_timeout = Duration::from_secs(10);
    // A stop while step 1 waits for its backoff fails it now and undoes step 0.
    let stop_while_retrying = |reason| {
        applied(
            SagaState::Compensating,
            vec![
                Change::Stop(reason),
                Change::Step(1, S::Failed, 2),
                Change::Comp(0, C::Running, 1, Some(1)),
            ],
            vec![
                send(Action::ReopenMission, 0, Comp, 1),
                timeout(0, Comp, 1, compensation_timeout),
            ],
        )
    };
    // The reply to step 1 after a stop was requested: whatever it says, compensation begins.
    let failed_while_stopping = || {
        applied(
            SagaState::Compensating,
            vec![
                Change::Step(1, S::Failed, 2),
                Change::Comp(0, C::Running, 1, Some(1)),
            ],
            vec![
                send(Action::ReopenMission, 0, Comp, 1),
                timeout(0, Comp, 1, compensation_timeout),
            ],
        )
    };

    let mut rows = vec![
        // Running, step 1 (reward.grant) Running at attempt 2.
        row(G::RunningStepRunning, P::Start, started()),
        row(
            G::RunningStepRunning,
            P::ReplySucceeded,
            applied(
                SagaState::Running,
                vec![
                    Change::Step(1, S::Succeeded, 2),
                    Change::Comp(1, C::Recorded, 0, None),
                    Change::Step(2, S::Running, 1),
                ],
                vec![
                    send(Action::AttachReward, 2, Fwd, 1),
                    timeout(2, Fwd, 1, step_timeout),
                ],
            ),
        ),
        row(
            G::RunningStepRunning,
            P::ReplyRetryable,
            applied(
                SagaState::Running,
                vec![Change::Step(1, S::Retrying, 2)],
                vec![backoff(1, Fwd, 2, ms(400))],
            ),
        ),
        row(
            G::RunningStepRunning,
            P::ReplyPermanent,
            applied(
                SagaState::Compensating,
                vec![
                    Change::Step(1, S::Failed, 2),
                    Change::Comp(0, C::Running, 1, Some(1)),
                ],
                vec![
                    send(Action::ReopenMission, 0, Comp, 1),
                    timeout(0, Comp, 1, compensation_timeout),
                ],
            ),
        ),
        row(G::RunningStepRunning, P::ReplyStaleAttempt, stale()),
        row(G::RunningStepRunning, P::ReplyWrongPhase, stale()),
        row(
            G::RunningStepRunning,
            P::TimerStepTimeout,
            applied(
                SagaState::Running,
                vec![],
                vec![
                    send(Action::GrantReward, 1, Fwd, 2),
                    timeout(1, Fwd, 2, step_timeout),
                ],
            ),
        ),
        row(G::RunningStepRunning, P::TimerBackoff, stale()),
        row(G::RunningStepRunning, P::TimerStaleAttempt, stale()),
        // The step's command is out: the stop is noted and the saga waits for its reply.
        row(
            G::RunningStepRunning,
            P::Cancel,
            applied(
                SagaState::Running,
                vec![Change::Stop(StopReason::Cancelled)],
                vec![],
            ),
        ),
        row(G::RunningStepRunning, P::Retry, not_failed()),
        row(
            G::RunningStepRunning,
            P::TimerDeadline,
            applied(
                SagaState::Running,
                vec![Change::Stop(StopReason::DeadlineExceeded)],
                vec![],
            ),
        ),
        // Running, step 1 Retrying after attempt 2 failed.
        row(G::RunningStepRetrying, P::Start, started()),
        row(G::RunningStepRetrying, P::ReplySucceeded, stale()),
        row(G::RunningStepRetrying, P::ReplyRetryable, stale()),
        row(G::RunningStepRetrying, P::ReplyPermanent, stale()),
        row(G::RunningStepRetrying, P::ReplyStaleAttempt, stale()),
        row(G::RunningStepRetrying, P::ReplyWrongPhase, stale()),
        row(G::RunningStepRetrying, P::TimerStepTimeout, stale()),
        row(
            G::RunningStepRetrying,
            P::TimerBackoff,
            applied(
                SagaState::Running,
                vec![Change::Step(1, S::Running, 3)],
                vec![
                    send(Action::GrantReward, 1, Fwd, 3),
                    timeout(1, Fwd, 3, step_timeout),
                ],
            ),
        ),
        row(G::RunningStepRetrying, P::TimerStaleAttempt, stale()),
        row(
            G::RunningStepRetrying,
            P::Cancel,
            stop_while_retrying(StopReason::Cancelled),
        ),
        row(G::RunningStepRetrying, P::Retry, not_failed()),
        row(
            G::RunningStepRetrying,
            P::TimerDeadline,
            stop_while_retrying(StopReason::DeadlineExceeded),
        ),
        // Running at attempt 2 of step 1, cancelled: waiting for the reply.
        row(G::RunningStopRequested, P::Start, started()),
        row(
            G::RunningStopRequested,
            P::ReplySucceeded,
            applied(
                SagaState::Compensating,
                vec![
                    Change::Step(1, S::Succeeded, 2),
                    Change::Comp(1, C::Running, 1, Some(1)),
                ],
                vec![
                    send(Action::RevokeReward, 1, Comp, 1),
                    timeout(1, Comp, 1, compensation_timeout),
                ],
            ),
        ),
        row(
            G::RunningStopRequested,
            P::ReplyRetryable,
            failed_while_stopping(),
        ),
        row(
            G::RunningStopRequested,
            P::ReplyPermanent,
            failed_while_stopping(),
        ),
        row(G::RunningStopRequested, P::ReplyStaleAttempt, stale()),
        row(G::RunningStopRequested, P::ReplyWrongPhase, stale()),
        row(
            G::RunningStopRequested,
            P::TimerStepTimeout,
            applied(
                SagaState::Running,
                vec![],
                vec![
                    send(Action::GrantReward, 1, Fwd, 2),
                    timeout(1, Fwd, 2, step_timeout),
                ],
            ),
        ),
        row(G::RunningStopRequested, P::TimerBackoff, stale()),
        row(G::RunningStopRequested, P::TimerStaleAttempt, stale()),
        // Asked again (or the deadline on top): nothing changes, it stays cancelled.
        row(
            G::RunningStopRequested,
            P::Cancel,
            applied(SagaState::Running, vec![], vec![]),
        ),
        row(G::RunningStopRequested, P::Retry, not_failed()),
        row(
            G::RunningStopRequested,
            P::TimerDeadline,
            applied(SagaState::Running, vec![], vec![]),
        ),
        // Running past the pivot: step 3 (notification.send) Running at attempt 2.
        row(G::RunningPastPivot, P::Start, started()),
        row(
            G::RunningPastPivot,
            P::ReplySucceeded,
            applied(
                SagaState::Running,
                vec![
                    Change::Step(3, S::Succeeded, 2),
                    Change::Step(4, S::Running, 1),
                ],
                vec![
                    send(Action::RecordMessage, 4, Fwd, 1),
                    timeout(4, Fwd, 1, step_timeout),
                ],
            ),
        ),
        row(
            G::RunningPastPivot,
            P::ReplyRetryable,
            applied(
                SagaState::Running,
                vec![Change::Step(3, S::Retrying, 2)],
                vec![backoff(3, Fwd, 2, ms(400))],
            ),
        ),
        row(
            G::RunningPastPivot,
            P::ReplyPermanent,
            applied(
                SagaState::Running,
                vec![
                    Change::Step(3, S::Failed, 2),
                    Change::Step(4, S::Running, 1),
                ],
                vec![
                    send(Action::RecordMessage, 4, Fwd, 1),
                    timeout(4, Fwd, 1, step_timeout),
                ],
            ),
        ),
        row(G::RunningPastPivot, P::ReplyStaleAttempt, stale()),
        row(G::RunningPastPivot, P::ReplyWrongPhase, stale()),
        row(
            G::RunningPastPivot,
            P::TimerStepTimeout,
            applied(
                SagaState::Running,
                vec![],
                vec![
                    send(Action::SendNotification, 3, Fwd, 2),
                    timeout(3, Fwd, 2, telegram_timeout),
                ],
            ),
        ),
        row(G::RunningPastPivot, P::TimerBackoff, stale()),
        row(G::RunningPastPivot, P::TimerStaleAttempt, stale()),
        row(G::RunningPastPivot, P::Cancel, past_pivot()),
        row(G::RunningPastPivot, P::Retry, not_failed()),
        row(G::RunningPastPivot, P::TimerDeadline, past_pivot()),
        // Compensating, reward.revoke (of step 1) Running at attempt 2.
        row(G::CompensatingRunning, P::Start, started()),
        row(
            G::CompensatingRunning,
            P::ReplySucceeded,
            applied(
                SagaState::Compensating,
                vec![
                    Change::Comp(1, C::Succeeded, 2, Some(1)),
                    Change::Step(1, S::Compensated, 1),
                    Change::Comp(0, C::Running, 1, Some(2)),
                ],
                vec![
                    send(Action::ReopenMission, 0, Comp, 1),
                    timeout(0, Comp, 1, compensation_timeout),
                ],
            ),
        ),
        row(
            G::CompensatingRunning,
            P::ReplyRetryable,
            applied(
                SagaState::Compensating,
                vec![Change::Comp(1, C::Retrying, 2, Some(1))],
                vec![backoff(1, Comp, 2, ms(400))],
            ),
        ),
        row(
            G::CompensatingRunning,
            P::ReplyPermanent,
            applied(
                SagaState::Failed,
                vec![Change::Comp(1, C::Failed, 2, Some(1))],
                vec![Eff::Clear, Eff::Finished(SagaState::Failed)],
            ),
        ),
        row(G::CompensatingRunning, P::ReplyStaleAttempt, stale()),
        row(G::CompensatingRunning, P::ReplyWrongPhase, stale()),
        row(
            G::CompensatingRunning,
            P::TimerStepTimeout,
            applied(
                SagaState::Compensating,
                vec![],
                vec![
                    send(Action::RevokeReward, 1, Comp, 2),
                    timeout(1, Comp, 2, compensation_timeout),
                ],
            ),
        ),
        row(G::CompensatingRunning, P::TimerBackoff, stale()),
        row(G::CompensatingRunning, P::TimerStaleAttempt, stale()),
        row(G::CompensatingRunning, P::Cancel, compensating()),
        row(G::CompensatingRunning, P::Retry, not_failed()),
        row(G::CompensatingRunning, P::TimerDeadline, compensating()),
        // Compensating, reward.revoke Retrying after attempt 2 failed.
        row(G::CompensatingRetrying, P::Start, started()),
        row(G::CompensatingRetrying, P::ReplySucceeded, stale()),
        row(G::CompensatingRetrying, P::ReplyRetryable, stale()),
        row(G::CompensatingRetrying, P::ReplyPermanent, stale()),
        row(G::CompensatingRetrying, P::ReplyStaleAttempt, stale()),
        row(G::CompensatingRetrying, P::ReplyWrongPhase, stale()),
        row(G::CompensatingRetrying, P::TimerStepTimeout, stale()),
        row(
            G::CompensatingRetrying,
            P::TimerBackoff,
            applied(
                SagaState::Compensating,
                vec![Change::Comp(1, C::Running, 3, Some(1))],
                vec![
                    send(Action::RevokeReward, 1, Comp, 3),
                    timeout(1, Comp, 3, compensation_timeout),
                ],
            ),
        ),
        row(G::CompensatingRetrying, P::TimerStaleAttempt, stale()),
        row(G::CompensatingRetrying, P::Cancel, compensating()),
        row(G::CompensatingRetrying, P::Retry, not_failed()),
        row(G::CompensatingRetrying, P::TimerDeadline, compensating()),
        // Retry resumes a failed saga where it stopped, with a fresh retry budget.
        row(
            G::Failed,
            P::Retry,
            applied(
                SagaState::Running,
                vec![Change::Step(4, S::Running, 2), Change::StepRetryBase(4, 1)],
                vec![
                    send(Action::RecordMessage, 4, Fwd, 2),
                    timeout(4, Fwd, 2, step_timeout),
                ],
            ),
        ),
        row(
            G::FailedInCompensation,
            P::Retry,
            applied(
                SagaState::Compensating,
                vec![
                    Change::Comp(1, C::Running, 3, Some(1)),
                    Change::CompRetryBase(1, 2),
                ],
                vec![
                    send(Action::RevokeReward, 1, Comp, 3),
                    timeout(1, Comp, 3, compensation_timeout),
                ],
            ),
        ),
    ];
    // Other terminal states refuse Retry; terminal states ignore everything else.
    for given in [G::Completed, G::Compensated, G::Cancelled] {
        rows.push(row(given, P::Retry, not_failed()));
    }
    for (given, state) in [
        (G::Completed, SagaState::Completed),
        (G::Compensated, SagaState::Compensated),
        (G::Failed, SagaState::Failed),
        (G::FailedInCompensation, SagaState::Failed),
        (G::Cancelled, SagaState::Cancelled),
    ] {
        rows.extend([
            row(given, P::Start, terminal(state)),
            row(given, P::ReplySucceeded, terminal(state)),
            row(given, P::ReplyRetryable, terminal(state)),
            row(given, P::ReplyPermanent, terminal(state)),
            row(given, P::ReplyStaleAttempt, terminal(state)),
            row(given, P::ReplyWrongPhase, terminal(state)),
            row(given, P::TimerStepTimeout, terminal(state)),
            row(given, P::TimerBackoff, terminal(state)),
            row(given, P::TimerStaleAttempt, terminal(state)),
            row(given, P::Cancel, terminal(state)),
            row(given, P::TimerDeadline, terminal(state)),
        ]);
    }
    rows
}

#[test]
fn every_state_and_input_pair_has_its_exact_outcome() {
    let def = default_def();
    let rows = table();

    // Every pair is listed exactly once.
    let listed: BTreeMap<(Given, Probe), usize> =
        rows.iter().fold(BTreeMap::new(), |mut listed, row| {
            *listed.entry((row.given, row.probe)).or_default() += 1;
            listed
        });
    for given in Given::ALL {
        for probe in Probe::ALL {
            assert_eq!(
                listed.get(&(given, probe)),
                Some(&1),
                "({given:?}, {probe:?}) must be listed exactly once"
            );
        }
    }
    assert_eq!(rows.len(), Given::ALL.len() * Probe::ALL.len());

    let mut failures = Vec::new();
    for row in &rows {
        let saga = row.given.build(&def);
        let input = row.probe.input(&saga);
        let now = saga.updated_at + TimeDelta::seconds(1);
        let result = transition(&def, &saga, &input, now);
        match (&row.expected, result) {
            (Expected::Ignored(expected), Err(actual)) => {
                if *expected != actual {
                    failures.push(format!(
                        "{}: expected Err({expected:?}), got Err({actual:?})",
                        row.name
                    ));
                }
            }
            (Expected::Ignored(expected), Ok(t)) => failures.push(format!(
                "{}: expected Err({expected:?}), got {:?} with {:?}",
                row.name,
                Shape::of(&t.saga),
                t.effects
            )),
            (Expected::Applied { .. }, Err(actual)) => {
                failures.push(format!(
                    "{}: expected a change, got Err({actual:?})",
                    row.name
                ));
            }
            (
                Expected::Applied {
                    state,
                    changes,
                    effects,
                },
                Ok(t),
            ) => {
                check_effects(&def, &input, &t.saga, &t.effects, now);
                check_structure(&def, &t.saga);
                let want = Shape::of(&saga).with(*state, changes);
                let got = Shape::of(&t.saga);
                if want != got {
                    failures.push(format!("{}: expected {want:?}, got {got:?}", row.name));
                }
                let got: Vec<Eff> = t.effects.iter().map(Eff::of).collect();
                if *effects != got {
                    failures.push(format!(
                        "{}: expected effects {effects:?}, got {got:?}",
                        row.name
                    ));
                }
                // Nothing but the listed parts and the timestamps/notes moved.
                assert_eq!(t.saga.id, saga.id);
                assert_eq!(t.saga.input, saga.input);
                assert_eq!(t.saga.created_at, saga.created_at);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 2. The mission_reward definition
// ---------------------------------------------------------------------------------------------

fn parse(command: &CommandSpec) -> Command {
    serde_json::from_value(command.body.clone()).expect("the body parses into a Command")
}

fn sends(effects: &[Effect]) -> Vec<CommandSpec> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn start_sends_the_first_step_once() {
    let def = default_def();
    let mut w = World::new(&def);
    let before = w.saga.clone();
    for input in [
        Input::Reply {
            step_index: 0,
            phase: Phase::Forward,
            attempt: 1,
            reply: Reply::Succeeded { output: Map::new() },
        },
        Input::TimerFired(Timer {
            kind: TimerKind::StepTimeout,
            step_index: 0,
            phase: Phase::Forward,
            attempt: 1,
        }),
    ] {
        assert_eq!(w.try_apply(&input), Err(Ignored::Stale), "{input:?}");
    }
    assert_eq!(w.saga, before);

    let effects = w.start();
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            Eff::Timer(
                TimerKind::Deadline,
                0,
                Phase::Forward,
                0,
                Duration::from_secs(300)
            ),
            send(Action::CompleteMission, 0, Phase::Forward, 1),
            timeout(0, Phase::Forward, 1, Duration::from_secs(10)),
        ]
    );
    assert_eq!(TimerKind::Deadline.slot(), "deadline");
    assert_eq!(TimerKind::StepTimeout.slot(), TimerKind::Backoff.slot());
    assert_ne!(TimerKind::StepTimeout.slot(), TimerKind::Deadline.slot());
    assert_eq!(
        w.deadline,
        Some((deadline_timer(), Duration::from_secs(300)))
    );
    assert_eq!(w.saga.steps[0].state, StepState::Running);
    assert_eq!(w.saga.steps[0].attempts, 1);
    assert_eq!(w.saga.steps[0].started_at, Some(w.now));
    assert_eq!(
        parse(w.command()),
        Command::CompleteMission(CompleteMissionV1 {
            mission_id: mission_id()
        })
    );
    assert_eq!(w.try_apply(&Input::Start), Err(Ignored::AlreadyStarted));

    // A definition without a deadline arms none.
    let mut def = default_def();
    def.deadline = None;
    let mut w = World::new(&def);
    assert_eq!(
        w.start().iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::CompleteMission, 0, Phase::Forward, 1),
            timeout(0, Phase::Forward, 1, Duration::from_secs(10)),
        ]
    );
    assert_eq!(w.deadline, None);
}

#[test]
fn a_saga_that_does_not_fit_its_definition_is_refused() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    let mut saga = w.saga.clone();
    saga.steps.pop();
    assert_eq!(
        transition(&def, &saga, &Input::Start, t0()),
        Err(Ignored::Mismatch)
    );
}

#[test]
fn happy_path_completes_and_every_command_parses() {
    let def = default_def();
    let mut w = World::new(&def);
    let mut commands = sends(&w.start());
    for step in 0..5u16 {
        let command = w.command();
        assert_eq!(
            (command.step_index, command.phase, command.attempt),
            (step, Phase::Forward, 1)
        );
        let effects = w.succeed();
        commands.extend(sends(&effects));
        if step == 4 {
            assert_eq!(
                effects,
                vec![Effect::ClearTimer, Effect::Finished(SagaState::Completed)]
            );
        }
    }
    assert_eq!(w.saga.state, SagaState::Completed);
    assert!(
        w.saga
            .steps
            .iter()
            .all(|s| s.state == StepState::Succeeded && s.attempts == 1 && s.finished_at.is_some())
    );
    assert_eq!(
        w.saga
            .compensations
            .iter()
            .map(|c| (c.step_index, c.name.as_str(), c.state, c.run_order))
            .collect::<Vec<_>>(),
        vec![
            (0, "mission.reopen", CompensationState::Recorded, None),
            (1, "reward.revoke", CompensationState::Recorded, None),
            (
                2,
                "mission.detach_reward",
                CompensationState::Recorded,
                None
            ),
        ]
    );

    let parsed: Vec<Command> = commands.iter().map(parse).collect();
    assert_eq!(
        parsed,
        vec![
            Command::CompleteMission(CompleteMissionV1 {
                mission_id: mission_id()
            }),
            Command::GrantReward(GrantRewardV1 {
                mission_id: mission_id(),
                customer_id: customer_id(),
                reward_points: 150,
            }),
            Command::AttachReward(AttachRewardV1 {
                mission_id: mission_id(),
                reward_id: reward_id(),
            }),
            Command::SendNotification(SendNotificationV1 {
                mission_id: mission_id(),
                customer_id: customer_id(),
                mission_title: "Find the lost cat".to_owned(),
                reward_points: 150,
            }),
            Command::RecordMessage(RecordMessageV1 {
                mission_id: mission_id(),
                notification_id: Some(notification_id()),
                notification_status: Some(NotificationStatus::Sent),
            }),
        ]
    );
    let ids: BTreeSet<MessageId> = commands.iter().map(|c| c.message_id).collect();
    assert_eq!(ids.len(), 5, "every step has its own message id");
}

#[test]
fn attach_failing_for_good_revokes_then_reopens_and_ends_compensated() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.succeed();
    let effects = w.fail(StepFailure::permanent(
        "mission_not_completed",
        "the mission is not completed",
    ));
    assert_eq!(w.saga.state, SagaState::Compensating);
    assert_eq!(w.saga.steps[2].state, StepState::Failed);
    assert_eq!(
        w.saga.steps[2].last_error.as_deref(),
        Some("mission_not_completed: the mission is not completed")
    );
    let revoke = sends(&effects);
    assert_eq!(revoke.len(), 1);
    assert_eq!(
        parse(&revoke[0]),
        Command::RevokeReward(RevokeRewardV1 {
            reward_id: reward_id()
        })
    );
    assert_eq!(w.compensation(1).run_order, Some(1));
    assert_eq!(w.compensation(0).state, CompensationState::Recorded);

    let effects = w.succeed();
    let reopen = sends(&effects);
    assert_eq!(reopen.len(), 1);
    assert_eq!(
        parse(&reopen[0]),
        Command::ReopenMission(ReopenMissionV1 {
            mission_id: mission_id()
        })
    );
    assert_eq!(w.compensation(0).run_order, Some(2));
    assert_eq!(w.saga.steps[1].state, StepState::Compensated);

    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Compensated)]
    );
    assert_eq!(
        w.step_states(),
        vec![
            StepState::Compensated,
            StepState::Compensated,
            StepState::Failed,
            StepState::Pending,
            StepState::Pending,
        ]
    );
    let order: Vec<_> = w
        .sent
        .iter()
        .filter(|c| c.phase == Phase::Compensate)
        .map(|c| c.action)
        .collect();
    assert_eq!(order, vec![Action::RevokeReward, Action::ReopenMission]);
    assert!(
        w.saga
            .compensations
            .iter()
            .all(|c| c.state == CompensationState::Succeeded)
    );
}

#[test]
fn the_first_step_failing_for_good_ends_compensated_with_nothing_to_undo() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    let effects = w.fail(permanent());
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Compensated)]
    );
    assert!(w.saga.compensations.is_empty());
}

#[test]
fn detach_runs_first_when_a_later_compensating_step_fails() {
    // In mission_reward nothing after attach has policy compensate, so detach never runs there;
    // a variant whose last step compensates shows its command is well formed.
    let mut def = default_def();
    def.steps[4].on_failure = FailurePolicy::Compensate;
    let mut w = World::new(&def);
    w.start();
    for _ in 0..4 {
        w.succeed();
    }
    let effects = w.fail(permanent());
    assert_eq!(
        sends(&effects).iter().map(parse).collect::<Vec<_>>(),
        vec![Command::DetachReward(DetachRewardV1 {
            mission_id: mission_id(),
            reward_id: reward_id(),
        })]
    );
    w.succeed();
    w.succeed();
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Compensated);
    let order: Vec<_> = w
        .sent
        .iter()
        .filter(|c| c.phase == Phase::Compensate)
        .map(|c| (c.action, c.step_index))
        .collect();
    assert_eq!(
        order,
        vec![
            (Action::DetachReward, 2),
            (Action::RevokeReward, 1),
            (Action::ReopenMission, 0),
        ]
    );
    // The telegram step has no compensation: it stays succeeded.
    assert_eq!(w.saga.steps[3].state, StepState::Succeeded);
}

#[test]
fn telegram_forbidden_still_records_the_message_and_completes() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    for _ in 0..3 {
        w.succeed();
    }
    assert_eq!(w.command().action, Action::SendNotification);
    let effects = w.fail(StepFailure {
        output: failed_notification_output(),
        ..StepFailure::permanent(
            "telegram_forbidden",
            "403 Forbidden: bot was blocked by the user",
        )
    });
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::RecordMessage, 4, Phase::Forward, 1),
            timeout(4, Phase::Forward, 1, Duration::from_secs(10)),
        ]
    );
    assert_eq!(w.saga.state, SagaState::Running);
    assert_eq!(w.saga.steps[3].state, StepState::Failed);
    assert_eq!(
        parse(w.command()),
        Command::RecordMessage(RecordMessageV1 {
            mission_id: mission_id(),
            notification_id: Some(notification_id()),
            notification_status: Some(NotificationStatus::Failed),
        })
    );
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Completed)]
    );
    assert_eq!(
        w.step_states(),
        vec![
            StepState::Succeeded,
            StepState::Succeeded,
            StepState::Succeeded,
            StepState::Failed,
            StepState::Succeeded,
        ]
    );
    assert!(w.sent.iter().all(|c| c.phase == Phase::Forward));
}

#[test]
fn telegram_retry_after_is_honoured_by_the_backoff() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    for _ in 0..3 {
        w.succeed();
    }
    let first = w.command().clone();
    let effects = w.fail(StepFailure {
        retry_after_ms: Some(1000),
        ..StepFailure::retryable("telegram_rate_limited", "429 Too Many Requests")
    });
    let [
        Effect::SetTimer {
            timer:
                Timer {
                    kind: TimerKind::Backoff,
                    step_index: 3,
                    phase: Phase::Forward,
                    attempt: 1,
                },
            after,
        },
    ] = effects.as_slice()
    else {
        panic!("expected one backoff timer, got {effects:?}");
    };
    assert!(*after >= ms(1000), "{after:?}");
    assert_eq!(w.saga.steps[3].state, StepState::Retrying);

    let effects = w.fire();
    let second = sends(&effects);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].message_id, first.message_id);
    assert_eq!(second[0].body, first.body);

    // A hint shorter than the policy's backoff does not shorten it; a longer one is honoured
    // even past the policy's cap.
    let effects = w.fail(StepFailure {
        retry_after_ms: Some(50),
        ..StepFailure::retryable("telegram_rate_limited", "429")
    });
    assert!(matches!(
        effects.as_slice(),
        [Effect::SetTimer { after, .. }] if *after == ms(400)
    ));
    w.fire();
    let effects = w.fail(StepFailure {
        retry_after_ms: Some(60_000),
        ..StepFailure::retryable("telegram_rate_limited", "429")
    });
    assert!(matches!(
        effects.as_slice(),
        [Effect::SetTimer { after, .. }] if *after == ms(60_000)
    ));
}

#[test]
fn a_timeout_resends_the_same_message() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    let original = w.command().clone();
    for _ in 0..3 {
        let effects = w.fire();
        assert_eq!(
            effects,
            vec![
                Effect::Send(original.clone()),
                Effect::SetTimer {
                    timer: Timer {
                        kind: TimerKind::StepTimeout,
                        step_index: 1,
                        phase: Phase::Forward,
                        attempt: 1,
                    },
                    after: Duration::from_secs(10),
                },
            ]
        );
        assert_eq!(
            w.saga.steps[1].attempts, 1,
            "a re-send is not a new attempt"
        );
        assert_eq!(w.saga.steps[1].state, StepState::Running);
        assert_eq!(
            w.saga.steps[1].last_error.as_deref(),
            Some("no reply within 10000 ms; the same command was sent again")
        );
    }
    // The reply to the re-sent command is the reply to the original one.
    w.succeed();
    assert_eq!(w.saga.steps[1].state, StepState::Succeeded);

    // The telegram step has its own, longer timeout; compensations re-send the same way.
    w.succeed();
    let effects = w.fire();
    assert!(matches!(
        effects.as_slice(),
        [Effect::Send(c), Effect::SetTimer { after, .. }]
            if c.action == Action::SendNotification && *after == Duration::from_secs(20)
    ));

    let mut w = Given::CompensatingRunning.world(&def);
    let original = w.command().clone();
    let effects = w.fire();
    assert_eq!(sends(&effects), vec![original]);
    assert_eq!(w.compensation(1).attempts, 2);
    assert!(w.compensation(1).last_error.is_some());
}

#[test]
fn step_retries_exhaust_after_max_attempts() {
    let def = default_def();
    let max = def.steps[1].retry.max_attempts;
    assert_eq!(max, 5);
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    for attempt in 1..max {
        assert_eq!(w.command().attempt, attempt);
        let effects = w.fail(retryable());
        let backoff_ms = 200 * 2u64.pow(attempt - 1);
        assert_eq!(
            effects.iter().map(Eff::of).collect::<Vec<_>>(),
            vec![backoff(1, Phase::Forward, attempt, ms(backoff_ms))]
        );
        w.fire();
    }
    assert_eq!(w.command().attempt, max);
    let effects = w.fail(retryable());
    assert_eq!(w.saga.steps[1].state, StepState::Failed);
    assert_eq!(w.saga.steps[1].attempts, max);
    assert_eq!(w.saga.state, SagaState::Compensating);
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::ReopenMission, 0, Phase::Compensate, 1),
            timeout(0, Phase::Compensate, 1, Duration::from_secs(10)),
        ]
    );
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Compensated);
    let ids: BTreeSet<_> = w
        .sent
        .iter()
        .filter(|c| c.step_index == 1 && c.phase == Phase::Forward)
        .map(|c| c.message_id)
        .collect();
    assert_eq!(ids.len(), 5, "one message id per attempt");
}

#[test]
fn telegram_retries_exhausted_still_record_the_message() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    for _ in 0..3 {
        w.succeed();
    }
    for _ in 1..def.steps[3].retry.max_attempts {
        w.fail(retryable());
        w.fire();
    }
    w.fail(retryable());
    assert_eq!(w.saga.steps[3].state, StepState::Failed);
    // The telegram worker never got as far as storing a notification: the fields are absent.
    assert_eq!(
        parse(w.command()),
        Command::RecordMessage(RecordMessageV1 {
            mission_id: mission_id(),
            notification_id: None,
            notification_status: None,
        })
    );
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Completed);
}

#[test]
fn a_compensation_failing_for_good_parks_the_saga() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.succeed();
    w.fail(permanent());
    assert_eq!(w.command().action, Action::RevokeReward);
    let effects = w.fail(StepFailure::permanent(
        "reward_spent",
        "the points were spent",
    ));
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Failed)]
    );
    assert_eq!(w.saga.state, SagaState::Failed);
    assert_eq!(w.compensation(1).state, CompensationState::Failed);
    assert_eq!(
        w.compensation(1).last_error.as_deref(),
        Some("reward_spent: the points were spent")
    );
    assert_eq!(w.compensation(0).state, CompensationState::Recorded);
    assert_eq!(w.saga.steps[0].state, StepState::Succeeded);
    assert_eq!(w.saga.steps[1].state, StepState::Succeeded);
    assert!(
        !w.sent.iter().any(|c| c.action == Action::ReopenMission),
        "nothing is undone past a failed compensation"
    );
}

#[test]
fn compensation_retries_exhaust_and_park_the_saga() {
    let def = default_def();
    let policy = def.compensation_retry;
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.fail(permanent());
    for attempt in 1..policy.max_attempts {
        let effects = w.fail(retryable());
        let expected = ms(200 * 2u64.pow(attempt - 1)).min(Duration::from_secs(30));
        assert_eq!(
            effects.iter().map(Eff::of).collect::<Vec<_>>(),
            vec![backoff(0, Phase::Compensate, attempt, expected)]
        );
        w.fire();
    }
    let effects = w.fail(retryable());
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Failed)]
    );
    assert_eq!(w.compensation(0).attempts, policy.max_attempts);
    assert_eq!(w.compensation(0).state, CompensationState::Failed);
}

#[test]
fn record_message_failing_for_good_parks_the_saga() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    for _ in 0..4 {
        w.succeed();
    }
    let effects = w.fail(permanent());
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Failed)]
    );
    assert_eq!(
        w.step_states(),
        vec![
            StepState::Succeeded,
            StepState::Succeeded,
            StepState::Succeeded,
            StepState::Succeeded,
            StepState::Failed,
        ]
    );
    assert!(
        w.saga
            .compensations
            .iter()
            .all(|c| c.state == CompensationState::Recorded)
    );
    assert!(w.sent.iter().all(|c| c.phase == Phase::Forward));

    // Retries exhausted on the same step park it the same way.
    let mut w = World::new(&def);
    w.start();
    for _ in 0..4 {
        w.succeed();
    }
    for _ in 1..def.steps[4].retry.max_attempts {
        w.fail(retryable());
        w.fire();
    }
    w.fail(retryable());
    assert_eq!(w.saga.state, SagaState::Failed);
}

#[test]
fn step_output_is_merged_into_the_context_and_the_next_command() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    assert_eq!(w.saga.context.get("reward_points"), Some(&json!(150)));
    assert_eq!(w.saga.context.get("customer_id"), Some(&json!("player-42")));
    assert_eq!(
        w.command().body.get("customer_id"),
        Some(&json!("player-42"))
    );
    assert_eq!(
        w.command().body.get("mission_id"),
        Some(&json!(mission_id()))
    );
}

/// The compensating actions sent, in order (re-sends and further attempts collapsed).
fn compensation_order(w: &World<'_>) -> Vec<Action> {
    let mut order: Vec<Action> = w
        .sent
        .iter()
        .filter(|c| c.phase == Phase::Compensate)
        .map(|c| c.action)
        .collect();
    order.dedup();
    order
}

/// Everything but `updated_at` is as it was.
fn assert_unchanged_but_touched(saga: &Saga, before: &Saga) {
    let untouched = Saga {
        updated_at: before.updated_at,
        ..saga.clone()
    };
    assert_eq!(&untouched, before);
}

#[test]
fn cancel_while_a_step_is_in_flight_waits_for_its_reply_then_undoes_and_ends_cancelled() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.succeed();
    let attach = w.command().clone();
    assert_eq!(attach.action, Action::AttachReward);
    let forward_sent = w.sent.len();

    let effects = w.apply(&Input::Cancel);
    assert_eq!(effects, vec![], "the command is out: wait for its reply");
    assert_eq!(w.saga.state, SagaState::Running);
    assert_eq!(w.saga.stop, Some(StopReason::Cancelled));
    assert_eq!(w.saga.steps[2].state, StepState::Running);
    assert_eq!(w.saga.steps[2].last_error, None);

    // Asked again: nothing changes.
    let before = w.saga.clone();
    assert_eq!(w.apply(&Input::Cancel), vec![]);
    assert_unchanged_but_touched(&w.saga, &before);

    // Until the reply comes, the step is in flight: its timeout re-sends the same command.
    let effects = w.fire();
    assert_eq!(sends(&effects), vec![attach.clone()]);

    // It succeeded: its compensation is recorded and undoing starts with it, in reverse order.
    let effects = w.succeed();
    assert_eq!(w.saga.state, SagaState::Compensating);
    assert_eq!(w.saga.steps[2].state, StepState::Succeeded);
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::DetachReward, 2, Phase::Compensate, 1),
            timeout(2, Phase::Compensate, 1, Duration::from_secs(10)),
        ]
    );
    assert_eq!(
        parse(w.command()),
        Command::DetachReward(DetachRewardV1 {
            mission_id: mission_id(),
            reward_id: reward_id(),
        })
    );
    let before = w.saga.clone();
    assert_eq!(
        w.try_apply(&Input::Cancel),
        Err(Ignored::AlreadyCompensating)
    );
    assert_eq!(w.saga, before);

    w.succeed();
    w.succeed();
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Cancelled)]
    );
    assert_eq!(w.saga.state, SagaState::Cancelled);
    assert_eq!(
        w.step_states(),
        vec![
            StepState::Compensated,
            StepState::Compensated,
            StepState::Compensated,
            StepState::Pending,
            StepState::Pending,
        ]
    );
    assert_eq!(
        compensation_order(&w),
        vec![
            Action::DetachReward,
            Action::RevokeReward,
            Action::ReopenMission
        ]
    );
    for (step_index, order) in [(2, 1), (1, 2), (0, 3)] {
        let c = w.compensation(step_index);
        assert_eq!(c.state, CompensationState::Succeeded);
        assert_eq!(c.run_order, Some(order));
    }
    // After the cancel, the only forward command was the re-send of the one in flight.
    assert!(
        w.sent[forward_sent..]
            .iter()
            .filter(|c| c.phase == Phase::Forward)
            .all(|c| *c == attach)
    );

    // Nothing more happens to it.
    assert_eq!(
        w.try_apply(&Input::Cancel),
        Err(Ignored::Terminal(SagaState::Cancelled))
    );
    assert_eq!(
        w.try_apply(&Input::TimerFired(deadline_timer())),
        Err(Ignored::Terminal(SagaState::Cancelled))
    );
    assert_eq!(w.try_apply(&Input::Retry), Err(Ignored::NotFailed));
    assert_eq!(
        w.try_apply(&Input::Start),
        Err(Ignored::Terminal(SagaState::Cancelled))
    );
}

#[test]
fn cancel_while_reward_grant_is_in_flight_still_revokes_the_reward_it_granted() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    assert_eq!(w.command().action, Action::GrantReward);
    assert_eq!(w.apply(&Input::Cancel), vec![]);

    // The grant went through after all: the reward exists and must be revoked.
    let effects = w.succeed();
    assert_eq!(
        sends(&effects).iter().map(parse).collect::<Vec<_>>(),
        vec![Command::RevokeReward(RevokeRewardV1 {
            reward_id: reward_id()
        })]
    );
    assert_eq!(w.compensation(1).run_order, Some(1));
    w.succeed();
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Cancelled)]
    );
    assert_eq!(
        compensation_order(&w),
        vec![Action::RevokeReward, Action::ReopenMission]
    );
    assert!(
        !w.sent
            .iter()
            .any(|c| c.phase == Phase::Forward && c.step_index > 1),
        "nothing after the step in flight was started"
    );
}

#[test]
fn a_failure_of_the_step_in_flight_after_a_cancel_is_final_even_if_retryable() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.apply(&Input::Cancel);
    let effects = w.fail(retryable());
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::ReopenMission, 0, Phase::Compensate, 1),
            timeout(0, Phase::Compensate, 1, Duration::from_secs(10)),
        ],
        "no backoff: a cancelled saga does not try again"
    );
    assert_eq!(w.saga.steps[1].state, StepState::Failed);
    assert_eq!(w.saga.steps[1].attempts, 1);
    assert_eq!(
        w.saga.steps[1].last_error.as_deref(),
        Some("unavailable: the downstream is unavailable")
    );
    assert!(w.saga.steps[1].finished_at.is_some());
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Cancelled);
    assert_eq!(
        w.step_states()[..2],
        [StepState::Compensated, StepState::Failed]
    );
}

#[test]
fn cancel_while_a_step_waits_to_retry_undoes_at_once() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.succeed();
    w.fail(retryable());
    assert_eq!(w.saga.steps[2].state, StepState::Retrying);
    let (backoff_timer, _) = w.armed.expect("the backoff is armed");

    let effects = w.apply(&Input::Cancel);
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::RevokeReward, 1, Phase::Compensate, 1),
            timeout(1, Phase::Compensate, 1, Duration::from_secs(10)),
        ]
    );
    assert_eq!(w.saga.state, SagaState::Compensating);
    assert_eq!(w.saga.stop, Some(StopReason::Cancelled));
    let step = &w.saga.steps[2];
    assert_eq!(step.state, StepState::Failed);
    assert_eq!(step.attempts, 1);
    assert_eq!(step.last_error.as_deref(), Some("cancelled by an operator"));
    assert_eq!(step.finished_at, Some(w.now));

    // The backoff that was armed is stale now.
    assert_eq!(
        w.try_apply(&Input::TimerFired(backoff_timer)),
        Err(Ignored::Stale)
    );
    w.succeed();
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Cancelled)]
    );
    assert_eq!(
        compensation_order(&w),
        vec![Action::RevokeReward, Action::ReopenMission]
    );

    // With nothing done yet, cancelling the first step's retry ends the saga at once.
    let mut w = World::new(&def);
    w.start();
    w.fail(retryable());
    let effects = w.apply(&Input::Cancel);
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Cancelled)]
    );
    assert_eq!(w.saga.steps[0].state, StepState::Failed);
    assert!(w.sent.iter().all(|c| c.phase == Phase::Forward));
}

#[test]
fn cancel_past_the_pivot_is_refused() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    for _ in 0..3 {
        w.succeed();
    }
    assert_eq!(w.command().action, Action::SendNotification);
    let before = w.saga.clone();
    assert_eq!(w.try_apply(&Input::Cancel), Err(Ignored::PastPivot));
    assert_eq!(w.saga, before);

    // Still refused while the telegram step waits to retry and once the next step runs.
    w.fail(retryable());
    assert_eq!(w.try_apply(&Input::Cancel), Err(Ignored::PastPivot));
    w.fire();
    w.fail(permanent());
    assert_eq!(w.command().action, Action::RecordMessage);
    assert_eq!(w.try_apply(&Input::Cancel), Err(Ignored::PastPivot));
    assert_eq!(w.saga.stop, None);

    w.succeed();
    assert_eq!(w.saga.state, SagaState::Completed);
    assert!(w.sent.iter().all(|c| c.phase == Phase::Forward));
}

#[test]
fn the_deadline_before_the_pivot_undoes_and_ends_compensated() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.succeed();
    let effects = w.try_fire_deadline().expect("the deadline is accepted");
    assert_eq!(effects, vec![], "the command is out: wait for its reply");
    assert_eq!(w.saga.stop, Some(StopReason::DeadlineExceeded));
    assert_eq!(w.saga.state, SagaState::Running);

    // A cancel on top changes nothing: the saga still ends as the deadline says.
    let before = w.saga.clone();
    assert_eq!(w.apply(&Input::Cancel), vec![]);
    assert_unchanged_but_touched(&w.saga, &before);

    w.succeed();
    assert_eq!(w.saga.state, SagaState::Compensating);
    w.succeed();
    w.succeed();
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Compensated)]
    );
    assert_eq!(w.saga.stop, Some(StopReason::DeadlineExceeded));
    assert_eq!(
        compensation_order(&w),
        vec![
            Action::DetachReward,
            Action::RevokeReward,
            Action::ReopenMission
        ]
    );

    // A step waiting to retry when the deadline passes fails at once with the reason.
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.fail(retryable());
    let effects = w.try_fire_deadline().expect("the deadline is accepted");
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::ReopenMission, 0, Phase::Compensate, 1),
            timeout(0, Phase::Compensate, 1, Duration::from_secs(10)),
        ]
    );
    assert_eq!(
        w.saga.steps[1].last_error.as_deref(),
        Some("the saga's deadline passed")
    );
    assert_eq!(w.saga.steps[1].state, StepState::Failed);
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Compensated);
    assert_eq!(w.saga.stop, Some(StopReason::DeadlineExceeded));

    // A deadline while compensating after a failure is refused: it is undoing already.
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.fail(permanent());
    assert_eq!(w.try_fire_deadline(), Err(Ignored::AlreadyCompensating));
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Compensated);
    assert_eq!(w.saga.stop, None);
}

#[test]
fn the_deadline_after_the_pivot_is_ignored() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    for _ in 0..3 {
        w.succeed();
    }
    let before = w.saga.clone();
    assert_eq!(w.try_fire_deadline(), Err(Ignored::PastPivot));
    assert_eq!(w.saga, before);
    w.succeed();
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Completed);
    assert_eq!(w.saga.stop, None);
}

#[test]
fn retry_of_a_saga_parked_by_a_failed_compensation_resumes_it_with_a_fresh_budget() {
    let def = default_def();
    let policy = def.compensation_retry;
    let max = policy.max_attempts;
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.succeed();
    w.fail(permanent());
    assert_eq!(w.command().action, Action::RevokeReward);
    for _ in 1..max {
        w.fail(retryable());
        w.fire();
    }
    let last = w.command().clone();
    w.fail(retryable());
    assert_eq!(w.saga.state, SagaState::Failed);
    assert_eq!(w.compensation(1).attempts, max);
    assert_eq!(
        w.try_apply(&Input::Cancel),
        Err(Ignored::Terminal(SagaState::Failed))
    );

    let effects = w.apply(&Input::Retry);
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::RevokeReward, 1, Phase::Compensate, max + 1),
            timeout(1, Phase::Compensate, max + 1, Duration::from_secs(10)),
        ]
    );
    assert_ne!(w.command().message_id, last.message_id);
    assert_eq!(w.command().body, last.body);
    assert_eq!(w.saga.state, SagaState::Compensating);
    let c = w.compensation(1);
    assert_eq!(c.state, CompensationState::Running);
    assert_eq!((c.attempts, c.retry_base), (max + 1, max));
    assert_eq!(c.run_order, Some(1));
    assert_eq!(c.finished_at, None);
    assert_eq!(w.try_apply(&Input::Retry), Err(Ignored::NotFailed));

    // A fresh budget: max attempts again, the backoff starting over.
    for k in 1..max {
        let effects = w.fail(retryable());
        let expected = ms(200 * 2u64.pow(k - 1)).min(Duration::from_secs(30));
        assert_eq!(
            effects.iter().map(Eff::of).collect::<Vec<_>>(),
            vec![backoff(1, Phase::Compensate, max + k, expected)]
        );
        w.fire();
    }
    assert_eq!(w.command().attempt, 2 * max);
    let effects = w.fail(retryable());
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Failed)]
    );
    assert_eq!(w.compensation(1).attempts, 2 * max);

    // Retried again, it goes through; the rest of the undo follows.
    w.apply(&Input::Retry);
    assert_eq!(w.compensation(1).retry_base, 2 * max);
    let effects = w.succeed();
    assert_eq!(
        sends(&effects).iter().map(|c| c.action).collect::<Vec<_>>(),
        vec![Action::ReopenMission]
    );
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Compensated)]
    );
    assert_eq!(
        w.step_states(),
        vec![
            StepState::Compensated,
            StepState::Compensated,
            StepState::Failed,
            StepState::Pending,
            StepState::Pending,
        ]
    );
    assert_eq!(
        compensation_order(&w),
        vec![Action::RevokeReward, Action::ReopenMission]
    );
    assert_eq!(w.compensation(0).run_order, Some(2));
    let ids: BTreeSet<_> = w
        .sent
        .iter()
        .filter(|c| c.action == Action::RevokeReward)
        .map(|c| c.message_id)
        .collect();
    assert_eq!(
        ids.len(),
        usize::try_from(2 * max + 1).expect("small"),
        "one id per attempt"
    );
}

#[test]
fn a_cancelled_saga_parked_by_its_compensation_ends_cancelled_when_retried() {
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.apply(&Input::Cancel);
    w.succeed();
    w.fail(permanent());
    assert_eq!(w.saga.state, SagaState::Failed);
    assert_eq!(w.saga.stop, Some(StopReason::Cancelled));
    w.apply(&Input::Retry);
    w.succeed();
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Cancelled)]
    );
}

#[test]
fn retry_of_a_saga_parked_at_record_message_resumes_that_step_and_completes() {
    let def = default_def();
    let max = def.steps[4].retry.max_attempts;
    let mut w = World::new(&def);
    w.start();
    for _ in 0..4 {
        w.succeed();
    }
    let first = w.command().clone();
    w.fail(permanent());
    assert_eq!(w.saga.state, SagaState::Failed);

    let effects = w.apply(&Input::Retry);
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::RecordMessage, 4, Phase::Forward, 2),
            timeout(4, Phase::Forward, 2, Duration::from_secs(10)),
        ]
    );
    assert_eq!(w.saga.state, SagaState::Running);
    let step = &w.saga.steps[4];
    assert_eq!(
        (step.state, step.attempts, step.retry_base),
        (StepState::Running, 2, 1)
    );
    assert_eq!(step.finished_at, None);
    assert_eq!(w.command().body, first.body);
    assert_ne!(w.command().message_id, first.message_id);
    // Retried or not, it is past the pivot.
    assert_eq!(w.try_apply(&Input::Cancel), Err(Ignored::PastPivot));

    // A fresh budget: max attempts from the retry on.
    for k in 1..max {
        let effects = w.fail(retryable());
        assert_eq!(
            effects.iter().map(Eff::of).collect::<Vec<_>>(),
            vec![backoff(4, Phase::Forward, 1 + k, ms(200 * 2u64.pow(k - 1)))]
        );
        w.fire();
    }
    w.fail(retryable());
    assert_eq!(w.saga.state, SagaState::Failed);
    assert_eq!(w.saga.steps[4].attempts, 1 + max);

    w.apply(&Input::Retry);
    assert_eq!(w.saga.steps[4].retry_base, 1 + max);
    let effects = w.succeed();
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Completed)]
    );
    assert!(w.saga.steps.iter().all(|s| s.state == StepState::Succeeded));
    assert!(w.sent.iter().all(|c| c.phase == Phase::Forward));
}

#[test]
fn retry_is_refused_unless_the_saga_failed() {
    let def = default_def();
    let mut w = World::new(&def);
    assert_eq!(w.try_apply(&Input::Retry), Err(Ignored::NotFailed));
    for given in Given::ALL {
        let saga = given.build(&def);
        let result = transition(&def, &saga, &Input::Retry, saga.updated_at);
        if saga.state == SagaState::Failed {
            assert!(result.is_ok(), "{given:?}");
        } else {
            assert_eq!(result, Err(Ignored::NotFailed), "{given:?}");
        }
    }
    // Cancelling a saga that has not started undoes nothing and ends it.
    let effects = w.apply(&Input::Cancel);
    assert_eq!(
        effects,
        vec![Effect::ClearTimer, Effect::Finished(SagaState::Cancelled)]
    );
    assert!(w.sent.is_empty());
}

#[test]
fn retry_resumes_record_message_even_when_the_telegram_step_failed_before_it() {
    // The telegram step (policy continue) failing for good must not hide the parked step
    // after it: the operator's retry resumes mission.record_message.
    let def = default_def();
    let mut w = World::new(&def);
    w.start();
    for _ in 0..3 {
        w.succeed();
    }
    w.fail(StepFailure {
        output: failed_notification_output(),
        ..StepFailure::permanent("telegram_forbidden", "403 Forbidden")
    });
    w.fail(permanent());
    assert_eq!(w.saga.state, SagaState::Failed);
    assert_eq!(w.step_states()[3..], [StepState::Failed, StepState::Failed]);

    let effects = w
        .try_apply(&Input::Retry)
        .expect("a saga parked by record_message can be retried");
    assert_eq!(
        effects.iter().map(Eff::of).collect::<Vec<_>>(),
        vec![
            send(Action::RecordMessage, 4, Phase::Forward, 2),
            timeout(4, Phase::Forward, 2, Duration::from_secs(10)),
        ]
    );
    assert_eq!(w.saga.steps[3].state, StepState::Failed);
    w.succeed();
    assert_eq!(w.saga.state, SagaState::Completed);
}

#[test]
fn retry_is_refused_while_compensating_even_if_a_parking_step_failed() {
    // A parking step before the pivot that fails while the saga is stopping leaves a failed
    // park step in a compensating saga; Retry must still be refused until the saga is failed.
    let mut def = default_def();
    def.steps[1].on_failure = FailurePolicy::Park;
    let mut w = World::new(&def);
    w.start();
    w.succeed();
    w.apply(&Input::Cancel);
    w.fail(permanent());
    assert_eq!(w.saga.state, SagaState::Compensating);
    assert_eq!(w.saga.steps[1].state, StepState::Failed);
    assert_eq!(
        transition(&def, &w.saga, &Input::Retry, w.now),
        Err(Ignored::NotFailed)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Properties
// ---------------------------------------------------------------------------------------------

/// What the simulated world does with the next command (or in between).
#[derive(Clone, Debug)]
enum Outcome {
    Succeed,
    FailRetryable(Option<u64>),
    FailPermanent,
    /// The reply does not come; the step timeout fires.
    Timeout,
    /// The previous reply is delivered again.
    Duplicate,
    /// A stale input of some kind (the selector picks which).
    Stale(u8),
    /// An operator cancels the saga.
    Cancel,
    /// The saga's deadline falls due (if it is still armed).
    Deadline,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        10 => Just(Outcome::Succeed),
        8 => proptest::option::of(0u64..3_000).prop_map(Outcome::FailRetryable),
        2 => Just(Outcome::FailPermanent),
        4 => Just(Outcome::Timeout),
        2 => Just(Outcome::Duplicate),
        4 => any::<u8>().prop_map(Outcome::Stale),
        1 => Just(Outcome::Cancel),
        1 => Just(Outcome::Deadline),
    ]
}

/// Timeouts beyond this many are treated as a success: the machine re-sends forever otherwise.
const MAX_TIMEOUTS: usize = 12;

/// An input that must be stale for the world as it stands, picked by `selector`.
fn stale_input(w: &World<'_>, history: &[Input], selector: u8) -> Option<Input> {
    let command = w.command();
    let (timer, _) = w.armed.expect("a live saga has a timer");
    let succeeded = |step_index, phase, attempt| Input::Reply {
        step_index,
        phase,
        attempt,
        reply: Reply::Succeeded {
            output: output_for(command.action),
        },
    };
    let steps = u16::try_from(w.def.steps.len()).expect("few steps");
    match selector % 7 {
        // A reply that was accepted before, delivered again.
        0 => (!history.is_empty())
            .then(|| history[usize::from(selector / 7) % history.len()].clone()),
        // A reply to the previous attempt of the command in flight.
        1 => (command.attempt > 1)
            .then(|| succeeded(command.step_index, command.phase, command.attempt - 1)),
        // The right step and attempt in the other phase.
        2 => Some(succeeded(
            command.step_index,
            other(command.phase),
            command.attempt,
        )),
        // A reply for another step.
        3 => Some(succeeded(
            (command.step_index + 1 + u16::from(selector / 7) % (steps - 1)) % steps,
            command.phase,
            command.attempt,
        )),
        // The armed timer with the other kind.
        4 => Some(Input::TimerFired(Timer {
            kind: match timer.kind {
                TimerKind::Backoff => TimerKind::StepTimeout,
                TimerKind::StepTimeout => TimerKind::Backoff,
                TimerKind::Deadline => unreachable!("the step slot never holds the deadline"),
            },
            ..timer
        })),
        // The armed timer for another attempt.
        5 => Some(Input::TimerFired(Timer {
            attempt: if timer.attempt > 1 && selector & 0x80 == 0 {
                timer.attempt - 1
            } else {
                timer.attempt + 1
            },
            ..timer
        })),
        // A reply for the attempt in flight while it waits for its backoff.
        _ => (timer.kind == TimerKind::Backoff)
            .then(|| succeeded(command.step_index, command.phase, command.attempt)),
    }
}

/// When a run was first asked to stop (and it took).
struct StopMark {
    /// How many commands had been sent before.
    sent_before: usize,
    /// The forward command in flight the saga waits for, if it did not compensate at once.
    in_flight: Option<CommandSpec>,
}

/// What a simulated run saw.
struct Run<'d> {
    world: World<'d>,
    /// Replies the machine accepted, in order.
    accepted_replies: Vec<Input>,
    /// Steps whose forward reply `step.succeeded` was accepted.
    forward_succeeded: BTreeSet<u16>,
    /// Compensated steps, in the order their compensation succeeded.
    compensations_succeeded: Vec<u16>,
    /// The first accepted stop (cancel or deadline).
    stopped: Option<StopMark>,
    /// Operator retries of a failed saga that were applied.
    retries: usize,
}

/// Asks the saga to stop (`Cancel`, or the armed deadline falling due) and checks the answer
/// against what the saga looked like.
fn inject_stop(run: &mut Run<'_>, reason: StopReason) {
    let w = &mut run.world;
    let def = w.def;
    let before = w.saga.clone();
    let sent_before = w.sent.len();
    let result = match reason {
        StopReason::Cancelled => w.try_apply(&Input::Cancel),
        StopReason::DeadlineExceeded => w.try_fire_deadline(),
    };
    let refusal = if before.state == SagaState::Compensating {
        Some(Ignored::AlreadyCompensating)
    } else if past_pivot(def, &before) {
        Some(Ignored::PastPivot)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        assert_eq!(result, Err(refusal), "{reason:?}");
        assert_eq!(w.saga, before);
        return;
    }
    let effects = result.unwrap_or_else(|e| panic!("{reason:?} refused: {e}: {before:#?}"));
    if before.stop.is_some() {
        assert_eq!(effects, vec![], "asked again: nothing changes");
        assert_unchanged_but_touched(&w.saga, &before);
        return;
    }
    assert_eq!(w.saga.stop, Some(reason));
    let f = focus(&before).expect("a running saga has a step in flight");
    assert_eq!(f.phase, Phase::Forward);
    let step = &w.saga.steps[usize::from(f.step_index)];
    if f.waiting {
        // Nothing is out: the step fails now and undoing begins.
        assert_eq!(step.state, StepState::Failed);
        let note = match reason {
            StopReason::Cancelled => "cancelled by an operator",
            StopReason::DeadlineExceeded => "the saga's deadline passed",
        };
        assert_eq!(step.last_error.as_deref(), Some(note));
        assert!(matches!(
            w.saga.state,
            SagaState::Compensating | SagaState::Cancelled | SagaState::Compensated
        ));
        run.stopped = Some(StopMark {
            sent_before,
            in_flight: None,
        });
    } else {
        // The command is out: wait for its reply.
        assert_eq!(effects, vec![]);
        assert_eq!(w.saga.state, SagaState::Running);
        assert_eq!(step.state, StepState::Running);
        run.stopped = Some(StopMark {
            sent_before,
            in_flight: Some(w.command().clone()),
        });
    }
}

/// Retries a failed saga and checks that it resumed exactly what had failed.
fn inject_retry(run: &mut Run<'_>) {
    let w = &mut run.world;
    let before = w.saga.clone();
    let resumed = match before
        .compensations
        .iter()
        .find(|c| c.state == CompensationState::Failed)
    {
        Some(c) => (c.step_index, Phase::Compensate, c.attempts + 1),
        None => {
            let (i, step) = before
                .steps
                .iter()
                .enumerate()
                .find(|(i, s)| {
                    s.state == StepState::Failed
                        && w.def.steps[*i].on_failure == FailurePolicy::Park
                })
                .expect("a failed saga has a failed compensation or a parked step");
            (
                u16::try_from(i).expect("few steps"),
                Phase::Forward,
                step.attempts + 1,
            )
        }
    };
    let effects = w.apply(&Input::Retry);
    assert_eq!(
        sends(&effects)
            .iter()
            .map(|c| (c.step_index, c.phase, c.attempt))
            .collect::<Vec<_>>(),
        vec![resumed]
    );
    let (step_index, phase, attempt) = resumed;
    assert_eq!(
        focus(&w.saga),
        Some(Focus {
            step_index,
            phase,
            attempt,
            waiting: false
        })
    );
    run.retries += 1;
}

/// Drives a saga with `outcomes` through the inputs its own effects imply, to a terminal state;
/// a failed saga is retried up to `retries` times.
fn simulate<'d>(def: &'d SagaDefinition, outcomes: &[Outcome], retries: usize) -> Run<'d> {
    let mut run = Run {
        world: World::new(def),
        accepted_replies: Vec::new(),
        forward_succeeded: BTreeSet::new(),
        compensations_succeeded: Vec::new(),
        stopped: None,
        retries: 0,
    };
    run.world.start();
    let bound = (outcomes.len() + 32) * (retries + 1);
    let mut timeouts = 0;
    let mut i = 0;
    loop {
        if run.world.saga.state.is_terminal() {
            check_refuses_all_but_retry(&mut run);
            if run.world.saga.state == SagaState::Failed && run.retries < retries {
                inject_retry(&mut run);
                continue;
            }
            break;
        }
        assert!(
            i < bound,
            "no terminal state after {i} inputs: {:#?}",
            run.world.saga
        );
        let outcome = outcomes.get(i).cloned().unwrap_or(Outcome::Succeed);
        i += 1;
        let w = &mut run.world;
        let (timer, _) = w.armed.expect("a live saga has a timer");
        match outcome {
            Outcome::Duplicate => {
                if let Some(input) = run.accepted_replies.last().cloned() {
                    let before = w.saga.clone();
                    assert_eq!(w.try_apply(&input), Err(Ignored::Stale), "{input:?}");
                    assert_eq!(w.saga, before);
                }
                continue;
            }
            Outcome::Stale(selector) => {
                if let Some(input) = stale_input(w, &run.accepted_replies, selector) {
                    let before = w.saga.clone();
                    assert_eq!(w.try_apply(&input), Err(Ignored::Stale), "{input:?}");
                    assert_eq!(w.saga, before);
                }
                continue;
            }
            Outcome::Cancel => {
                inject_stop(&mut run, StopReason::Cancelled);
                continue;
            }
            Outcome::Deadline => {
                if w.deadline.is_some() {
                    inject_stop(&mut run, StopReason::DeadlineExceeded);
                }
                continue;
            }
            _ if timer.kind == TimerKind::Backoff => {
                w.fire();
                continue;
            }
            Outcome::Timeout if timeouts < MAX_TIMEOUTS => {
                timeouts += 1;
                let command = w.command().clone();
                let attempts_before = focus(&w.saga).map(|f| f.attempt);
                let effects = w.fire();
                assert_eq!(
                    sends(&effects),
                    vec![command],
                    "a timeout re-sends the same"
                );
                assert_eq!(focus(&w.saga).map(|f| f.attempt), attempts_before);
                continue;
            }
            _ => {}
        }
        let command = w.command().clone();
        let reply = match outcome {
            Outcome::FailRetryable(retry_after_ms) => Reply::Failed(StepFailure {
                retry_after_ms,
                ..retryable()
            }),
            Outcome::FailPermanent => Reply::Failed(StepFailure {
                output: if command.action == Action::SendNotification {
                    failed_notification_output()
                } else {
                    Map::new()
                },
                ..permanent()
            }),
            _ => Reply::Succeeded {
                output: match command.phase {
                    Phase::Forward => output_for(command.action),
                    Phase::Compensate => Map::new(),
                },
            },
        };
        let succeeded = matches!(reply, Reply::Succeeded { .. });
        let stopping = w.saga.stop.is_some();
        let input = w.reply_input(reply);
        let effects = w.apply(&input);
        if let (Reply::Failed(failure), [Effect::SetTimer { after, .. }]) =
            (&reply_of(&input), effects.as_slice())
        {
            let hint = ms(failure.retry_after_ms.unwrap_or(0));
            assert!(*after >= hint, "the backoff honours retry_after");
        }
        if stopping && command.phase == Phase::Forward {
            assert!(
                !w.saga.steps.iter().any(|s| s.state == StepState::Retrying),
                "a stopping saga does not retry its step"
            );
        }
        run.accepted_replies.push(input);
        if succeeded {
            match command.phase {
                Phase::Forward => {
                    run.forward_succeeded.insert(command.step_index);
                }
                Phase::Compensate => run.compensations_succeeded.push(command.step_index),
            }
        }
    }
    run
}

fn reply_of(input: &Input) -> Reply {
    match input {
        Input::Reply { reply, .. } => reply.clone(),
        _ => panic!("not a reply: {input:?}"),
    }
}

/// Nothing more happens to a terminal saga: every input is refused, except that a failed saga
/// accepts `Retry` (checked without applying it).
fn check_refuses_all_but_retry(run: &mut Run<'_>) {
    let def = run.world.def;
    let saga = run.world.saga.clone();
    let state = saga.state;
    assert!(state.is_terminal());
    let mut probes: Vec<Input> = Probe::ALL.iter().map(|p| p.input(&saga)).collect();
    probes.extend(run.accepted_replies.iter().cloned());
    for probe in probes {
        if probe == Input::Retry {
            let result = transition(def, &saga, &probe, run.world.now);
            if state == SagaState::Failed {
                assert!(result.is_ok(), "{result:?}");
            } else {
                assert_eq!(result, Err(Ignored::NotFailed));
            }
            continue;
        }
        assert_eq!(
            run.world.try_apply(&probe),
            Err(Ignored::Terminal(state)),
            "{probe:?}"
        );
        assert_eq!(run.world.saga, saga);
    }
}

/// Checks how a terminal run ended.
fn check_ending(run: &mut Run<'_>) {
    let def = run.world.def;
    let saga = run.world.saga.clone();
    let state = saga.state;
    check_refuses_all_but_retry(run);

    // Message ids are equal exactly when (step, phase, attempt) are, and a re-send is identical.
    let sent = &run.world.sent;
    for (i, a) in sent.iter().enumerate() {
        for b in &sent[i + 1..] {
            let same_key = (a.step_index, a.phase, a.attempt) == (b.step_index, b.phase, b.attempt);
            assert_eq!(a.message_id == b.message_id, same_key, "{a:?} / {b:?}");
            if same_key {
                assert_eq!(a, b, "a re-send carries the same command");
            }
        }
    }

    // Once asked to stop, no step after the one in flight was started: the only forward
    // commands are re-sends of the one the saga waited for.
    if let Some(mark) = &run.stopped {
        for command in sent[mark.sent_before..]
            .iter()
            .filter(|c| c.phase == Phase::Forward)
        {
            assert_eq!(
                Some(command),
                mark.in_flight.as_ref(),
                "a stopped saga sent a forward command"
            );
        }
        assert!(saga.stop.is_some());
    } else {
        assert_eq!(saga.stop, None);
    }

    // Never a compensation for a step that did not succeed.
    let compensation_sends: Vec<&CommandSpec> = sent
        .iter()
        .filter(|c| c.phase == Phase::Compensate)
        .collect();
    for c in &compensation_sends {
        assert!(
            run.forward_succeeded.contains(&c.step_index),
            "compensation of step {} which did not succeed",
            c.step_index
        );
    }
    let mut compensation_order: Vec<u16> =
        compensation_sends.iter().map(|c| c.step_index).collect();
    compensation_order.dedup();
    assert!(
        compensation_order.windows(2).all(|w| w[0] > w[1]),
        "compensations run in reverse step order: {compensation_order:?}"
    );

    let compensable: Vec<u16> = run
        .forward_succeeded
        .iter()
        .rev()
        .copied()
        .filter(|i| def.steps[usize::from(*i)].compensation.is_some())
        .collect();
    let failed_steps: Vec<usize> = saga
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state == StepState::Failed)
        .map(|(i, _)| i)
        .collect();
    match state {
        SagaState::Completed => {
            assert!(
                compensation_sends.is_empty(),
                "no compensation on completion"
            );
            assert!(run.compensations_succeeded.is_empty());
            assert!(
                saga.compensations
                    .iter()
                    .all(|c| c.state == CompensationState::Recorded)
            );
            for (i, step) in saga.steps.iter().enumerate() {
                assert!(
                    step.state == StepState::Succeeded
                        || (step.state == StepState::Failed
                            && def.steps[i].on_failure == FailurePolicy::Continue),
                    "step {i} is {:?} in a completed saga",
                    step.state
                );
            }
        }
        SagaState::Compensated | SagaState::Cancelled => {
            assert_eq!(
                run.compensations_succeeded, compensable,
                "every succeeded compensable step is undone once, in reverse order"
            );
            assert_eq!(compensation_order, compensable);
            for (order, step_index) in compensable.iter().enumerate() {
                let c = saga
                    .compensations
                    .iter()
                    .find(|c| c.step_index == *step_index)
                    .expect("recorded");
                assert_eq!(c.state, CompensationState::Succeeded);
                assert_eq!(c.run_order, Some(u32::try_from(order).expect("small") + 1));
                assert_eq!(
                    saga.steps[usize::from(*step_index)].state,
                    StepState::Compensated
                );
            }
            match (state, saga.stop) {
                (SagaState::Compensated, None) => {
                    assert_eq!(failed_steps.len(), 1, "one step failed: {saga:#?}");
                    assert_eq!(
                        def.steps[failed_steps[0]].on_failure,
                        FailurePolicy::Compensate
                    );
                }
                (SagaState::Compensated, Some(StopReason::DeadlineExceeded))
                | (SagaState::Cancelled, Some(StopReason::Cancelled)) => {
                    // At most the step in flight failed (its reply, or the stop itself).
                    assert!(failed_steps.len() <= 1, "{saga:#?}");
                }
                (state, stop) => panic!("{state:?} with stop {stop:?}"),
            }
        }
        SagaState::Failed => {
            let failed_compensations = saga
                .compensations
                .iter()
                .filter(|c| c.state == CompensationState::Failed)
                .count();
            let parked = failed_steps
                .iter()
                .any(|i| def.steps[*i].on_failure == FailurePolicy::Park);
            assert!(
                (failed_compensations == 1) != parked,
                "failed either by a compensation or by a parking step: {saga:#?}"
            );
            if parked {
                assert!(compensation_sends.is_empty());
            } else {
                // The compensations that succeeded are a prefix of the reverse order.
                assert!(compensable.starts_with(&run.compensations_succeeded));
            }
        }
        SagaState::Running | SagaState::Compensating => unreachable!("terminal"),
    }
}

/// A poke aimed at (or near) whatever the saga has in flight, for the random-input property.
#[derive(Clone, Debug)]
struct Poke {
    kind: u8,
    aim: u8,
    retry_after_ms: Option<u64>,
}

fn poke() -> impl Strategy<Value = Poke> {
    (any::<u8>(), any::<u8>(), proptest::option::of(0u64..2_000)).prop_map(
        |(kind, aim, retry_after_ms)| Poke {
            kind,
            aim,
            retry_after_ms,
        },
    )
}

fn poke_input(saga: &Saga, poke: &Poke) -> Input {
    let f = focus(saga).unwrap_or(Focus {
        step_index: 0,
        phase: Phase::Forward,
        attempt: 1,
        waiting: false,
    });
    let (step_index, phase, attempt) = match poke.aim % 8 {
        0..=4 => (f.step_index, f.phase, f.attempt),
        5 => (f.step_index, f.phase, f.attempt.saturating_sub(1)),
        6 => (f.step_index, other(f.phase), f.attempt),
        // Past the end of the definition too.
        _ => (u16::from(poke.aim / 8 % 7), f.phase, f.attempt),
    };
    let reply = |reply| Input::Reply {
        step_index,
        phase,
        attempt,
        reply,
    };
    let timer = |kind| {
        Input::TimerFired(Timer {
            kind,
            step_index,
            phase,
            attempt,
        })
    };
    let output = Action::from_name(
        saga.steps
            .get(usize::from(step_index))
            .map_or("", |s| s.name.as_str()),
    )
    .filter(|_| phase == Phase::Forward)
    .map(output_for)
    .unwrap_or_default();
    match poke.kind % 16 {
        0 => Input::Start,
        1 | 6 | 10 | 11 => reply(Reply::Succeeded { output }),
        2 | 12 => reply(Reply::Failed(StepFailure {
            retry_after_ms: poke.retry_after_ms,
            ..retryable()
        })),
        3 => reply(Reply::Failed(permanent())),
        4 | 13 => timer(TimerKind::StepTimeout),
        5 | 14 => timer(TimerKind::Backoff),
        7 => Input::Cancel,
        8 => Input::Retry,
        // Whatever its fields say, a deadline timer is the deadline.
        _ => timer(TimerKind::Deadline),
    }
}

/// How the machine must answer `input` on `saga`: `Some(Ok)` accepted, `Some(Err)` refused for
/// that reason, `None` a reply or step timer (accepted when current, otherwise stale).
fn expected_answer(
    def: &SagaDefinition,
    saga: &Saga,
    input: &Input,
) -> Option<Result<(), Ignored>> {
    let stop = matches!(
        input,
        Input::Cancel
            | Input::TimerFired(Timer {
                kind: TimerKind::Deadline,
                ..
            })
    );
    if saga.state.is_terminal() {
        return Some(match input {
            Input::Retry if saga.state == SagaState::Failed => Ok(()),
            Input::Retry => Err(Ignored::NotFailed),
            _ => Err(Ignored::Terminal(saga.state)),
        });
    }
    match input {
        Input::Start => Some(
            if saga.steps.iter().all(|s| s.state == StepState::Pending) {
                Ok(())
            } else {
                Err(Ignored::AlreadyStarted)
            },
        ),
        Input::Retry => Some(Err(Ignored::NotFailed)),
        _ if stop => Some(if saga.state == SagaState::Compensating {
            Err(Ignored::AlreadyCompensating)
        } else if past_pivot(def, saga) {
            Err(Ignored::PastPivot)
        } else {
            Ok(())
        }),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random worker and operator behaviour, fed back through the machine's own effects, always
    /// ends in a terminal state with the compensation, message-id, staleness and stop guarantees
    /// intact.
    #[test]
    fn random_worker_behaviour_ends_terminal_and_keeps_the_guarantees(
        tight in any::<bool>(),
        outcomes in prop::collection::vec(outcome(), 0..160),
        retries in 0usize..3,
    ) {
        let policies = if tight { tight_policies() } else { Policies::default() };
        let def = mission_reward(&policies);
        let mut run = simulate(&def, &outcomes, retries);
        check_ending(&mut run);
    }

    /// The same guarantees for the definitions that do not run yet, whose commands carry other
    /// versions and bound fields: every command they send parses into its contract.
    #[test]
    fn the_next_definitions_keep_the_guarantees_and_fit_the_contracts(
        tight in any::<bool>(),
        gift in any::<bool>(),
        outcomes in prop::collection::vec(outcome(), 0..160),
        retries in 0usize..3,
    ) {
        let policies = if tight { tight_policies() } else { Policies::default() };
        let def = if gift { gift_exchange(&policies) } else { mission_reward_v2(&policies) };
        let mut run = simulate(&def, &outcomes, retries);
        check_ending(&mut run);
    }

    /// Any input in any reachable state is either refused for a reason that fits the state, or
    /// yields a well-formed saga and well-formed effects; nothing panics.
    #[test]
    fn any_input_sequence_keeps_the_saga_well_formed(
        tight in any::<bool>(),
        pokes in prop::collection::vec(poke(), 0..120),
    ) {
        let policies = if tight { tight_policies() } else { Policies::default() };
        let def = mission_reward(&policies);
        let mut w = World::new(&def);
        for poke in &pokes {
            let before = w.saga.clone();
            let input = poke_input(&w.saga, poke);
            let expected = expected_answer(&def, &before, &input);
            match w.try_apply(&input) {
                Ok(_) => {
                    prop_assert!(matches!(expected, None | Some(Ok(()))), "{:?}", expected);
                    if before.state.is_terminal() {
                        prop_assert_eq!(&input, &Input::Retry);
                    }
                }
                Err(ignored) => {
                    prop_assert_eq!(&w.saga, &before);
                    prop_assert_eq!(Err(ignored), expected.unwrap_or(Err(Ignored::Stale)));
                }
            }
        }
    }
}
