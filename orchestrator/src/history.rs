//! The full history of a saga: every attempt of every step and compensation (sent, re-sent after
//! a timeout, ended with its outcome and error) and every operator action (who, when, what, with
//! which input, and whether the saga took it). Entries are derived from the saga before and
//! after a change and the commands the change sends, like the metrics of [`crate::observe`], so
//! every path (start, replies, timers, operators) records the same way; the store writes them in
//! the same statement as the change, to an append-only table kept as long as the saga.
//! `GET /v1/sagas/{id}/history` pages through them, oldest first.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use contracts::{Phase, SagaId};
use runtime::ApiError;
use runtime::problem::{ApiQuery, Problem};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::ApiState;
use crate::machine::{CompensationState, Effect, Saga, StepState};

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// An attempt of a forward step was sent (or, with outcome `resent`, sent again).
    StepStarted,
    /// An attempt of a forward step ended.
    StepEnded,
    /// An attempt of a compensation was sent (or, with outcome `resent`, sent again).
    CompensationStarted,
    /// An attempt of a compensation ended.
    CompensationEnded,
    /// An operator acted on the saga.
    Operator,
}

impl HistoryKind {
    /// The kind as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::StepStarted => "step_started",
            HistoryKind::StepEnded => "step_ended",
            HistoryKind::CompensationStarted => "compensation_started",
            HistoryKind::CompensationEnded => "compensation_ended",
            HistoryKind::Operator => "operator",
        }
    }

    /// Parses a stored kind.
    pub fn parse(s: &str) -> Option<HistoryKind> {
        [
            HistoryKind::StepStarted,
            HistoryKind::StepEnded,
            HistoryKind::CompensationStarted,
            HistoryKind::CompensationEnded,
            HistoryKind::Operator,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == s)
    }
}

/// One entry of a saga's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: HistoryKind,
    /// The action of the attempt: the step (`reward.grant`) or the compensation
    /// (`reward.revoke`); absent for an operator action.
    pub step: Option<String>,
    /// `forward` or `compensate`; absent for an operator action.
    pub phase: Option<String>,
    /// The attempt (1 = first); absent for an operator action.
    pub attempt: Option<u32>,
    /// How it went. An attempt that ended: `succeeded`, `retrying` (it failed and another
    /// attempt follows after a backoff) or `failed` (for good, or given up when the saga was
    /// stopped during its backoff). An attempt sent again after a timeout: `resent`. An operator
    /// action: `applied`, or the code the saga refused it with (`saga_terminal`, ...).
    pub outcome: Option<String>,
    /// The failure (or, for a re-send, why it was sent again).
    pub error: Option<String>,
    /// The name of the operator's API token.
    pub actor: Option<String>,
    /// The operator's action: `cancel`, `retry`, `bulk_cancel` or `bulk_retry`.
    pub action: Option<String>,
    /// What the operator sent with it (a bulk command's filter).
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
}

impl HistoryEntry {
    fn attempt(
        at: DateTime<Utc>,
        kind: HistoryKind,
        step: &str,
        phase: Phase,
        attempt: u32,
    ) -> Self {
        Self {
            at,
            kind,
            step: Some(step.to_owned()),
            phase: Some(phase.as_str().to_owned()),
            attempt: Some(attempt),
            outcome: None,
            error: None,
            actor: None,
            action: None,
            input: None,
        }
    }
}

/// An operator's action, as the history records it.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorAction {
    /// The name of the API token that acted.
    pub actor: String,
    /// `cancel`, `retry`, `bulk_cancel` or `bulk_retry`.
    pub action: &'static str,
    /// What came with it (a bulk command's filter).
    pub input: Option<Value>,
}

impl OperatorAction {
    /// The entry of this action on one saga at `at`: `applied`, or the refusal's code.
    pub fn entry(&self, at: DateTime<Utc>, outcome: &str) -> HistoryEntry {
        HistoryEntry {
            at,
            kind: HistoryKind::Operator,
            step: None,
            phase: None,
            attempt: None,
            outcome: Some(outcome.to_owned()),
            error: None,
            actor: Some(self.actor.clone()),
            action: Some(self.action.to_owned()),
            input: self.input.clone(),
        }
    }
}

/// How an attempt ended, from the state its step (or compensation) is in afterwards.
fn ended(moved_on: bool, succeeded: bool, retrying: bool) -> &'static str {
    if succeeded && !moved_on {
        "succeeded"
    } else if retrying || moved_on {
        "retrying"
    } else {
        "failed"
    }
}

/// The entries a change of `before` into `after` that sent `effects` adds: first the attempts
/// that ended (in step order, then compensations), then the attempts sent, in the order they
/// were sent. `before` is `None` for a saga being created.
pub fn derive(before: Option<&Saga>, after: &Saga, effects: &[Effect]) -> Vec<HistoryEntry> {
    let at = after.updated_at;
    let mut entries = Vec::new();
    for (index, step) in after.steps.iter().enumerate() {
        let old = before.and_then(|b| b.steps.get(index));
        let (was, attempts) = old.map_or((StepState::Pending, 0), |o| (o.state, o.attempts));
        let outcome = match was {
            StepState::Running if step.state != was || step.attempts != attempts => Some(ended(
                step.attempts != attempts,
                matches!(step.state, StepState::Succeeded | StepState::Compensated),
                step.state == StepState::Retrying,
            )),
            // stopped (cancel, deadline) while waiting for the next attempt: given up
            StepState::Retrying if step.state == StepState::Failed => Some("failed"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            let mut entry = HistoryEntry::attempt(
                at,
                HistoryKind::StepEnded,
                &step.name,
                Phase::Forward,
                attempts,
            );
            if outcome != "succeeded" {
                entry.error.clone_from(&step.last_error);
            }
            entry.outcome = Some(outcome.to_owned());
            entries.push(entry);
        }
    }
    for compensation in &after.compensations {
        let old = before.and_then(|b| {
            b.compensations
                .iter()
                .find(|c| c.step_index == compensation.step_index)
        });
        let Some(old) = old.filter(|o| o.state == CompensationState::Running) else {
            continue;
        };
        if compensation.state == old.state && compensation.attempts == old.attempts {
            continue;
        }
        let outcome = ended(
            compensation.attempts != old.attempts,
            compensation.state == CompensationState::Succeeded,
            compensation.state == CompensationState::Retrying,
        );
        let mut entry = HistoryEntry::attempt(
            at,
            HistoryKind::CompensationEnded,
            &compensation.name,
            Phase::Compensate,
            old.attempts,
        );
        if outcome != "succeeded" {
            entry.error.clone_from(&compensation.last_error);
        }
        entry.outcome = Some(outcome.to_owned());
        entries.push(entry);
    }
    for effect in effects {
        let Effect::Send(command) = effect else {
            continue;
        };
        let (kind, resent, note) = match command.phase {
            Phase::Forward => {
                let index = usize::from(command.step_index);
                let was_running = before.and_then(|b| b.steps.get(index)).is_some_and(|o| {
                    o.state == StepState::Running && o.attempts == command.attempt
                });
                let note = after.steps.get(index).and_then(|s| s.last_error.clone());
                (HistoryKind::StepStarted, was_running, note)
            }
            Phase::Compensate => {
                let of = |saga: &Saga| {
                    saga.compensations
                        .iter()
                        .find(|c| c.step_index == command.step_index)
                        .cloned()
                };
                let was_running = before.and_then(of).is_some_and(|o| {
                    o.state == CompensationState::Running && o.attempts == command.attempt
                });
                let note = of(after).and_then(|c| c.last_error);
                (HistoryKind::CompensationStarted, was_running, note)
            }
        };
        let mut entry = HistoryEntry::attempt(
            at,
            kind,
            command.action.name(),
            command.phase,
            command.attempt,
        );
        if resent {
            entry.outcome = Some("resent".to_owned());
            entry.error = note;
        }
        entries.push(entry);
    }
    entries
}

/// Query of `GET /v1/sagas/{id}/history`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of a saga's history, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// The entries, oldest first.
    pub items: Vec<HistoryEntry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Read a saga's history, oldest first: every attempt of every step and compensation and every
/// operator action.
#[utoipa::path(
    get,
    path = "/v1/sagas/{id}/history",
    params(("id" = String, Path, description = "The saga's id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the saga's history", body = HistoryPage),
        (status = 400, description = "A bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "sagas"
)]
pub async fn saga_history(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<axum::Json<HistoryPage>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", detail);
    let not_found = || ApiError::not_found("saga_not_found", format!("no saga {id}"));
    let saga_id: SagaId = id.parse().map_err(|_| not_found())?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(bad(format!("limit must be 1 to 500; got {limit}")));
    }
    let after = match query.cursor.as_deref() {
        None | Some("") => 0,
        Some(cursor) => cursor
            .parse::<i64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| bad("cursor is not one this API issued".into()))?,
    };
    let mut rows = state
        .engine
        .store()
        .history(saga_id, after, limit + 1)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(not_found)?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        rows.last().map(|(id, _)| id.to_string())
    } else {
        None
    };
    Ok(axum::Json(HistoryPage {
        items: rows.into_iter().map(|(_, entry)| entry).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Policies, mission_reward};
    use crate::machine::{Input, Timer, TimerKind, transition};
    use contracts::{Reply, StepFailure};

    /// Applies `input` and returns the saga after it with the entries the change adds.
    fn step(
        definition: &crate::definition::SagaDefinition,
        saga: &Saga,
        input: Input,
    ) -> (Saga, Vec<HistoryEntry>) {
        let next = transition(definition, saga, &input, Utc::now()).expect("applies");
        let entries = derive(Some(saga), &next.saga, &next.effects);
        (next.saga, entries)
    }

    fn reply(step_index: u16, phase: Phase, attempt: u32, reply: Reply) -> Input {
        Input::Reply {
            step_index,
            phase,
            attempt,
            reply,
        }
    }

    fn ok() -> Reply {
        Reply::Succeeded {
            output: Default::default(),
        }
    }

    fn failed(retryable: bool) -> Reply {
        Reply::Failed(StepFailure {
            code: "boom".into(),
            message: "it broke".into(),
            retryable,
            retry_after_ms: None,
            output: Default::default(),
        })
    }

    fn summary(entries: &[HistoryEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                format!(
                    "{} {} #{} {}{}",
                    e.kind.as_str(),
                    e.step.as_deref().unwrap_or("-"),
                    e.attempt.unwrap_or(0),
                    e.outcome.as_deref().unwrap_or("-"),
                    e.error
                        .as_deref()
                        .map_or(String::new(), |e| format!(" ({e})"))
                )
            })
            .collect()
    }

    #[test]
    fn every_attempt_of_every_step_and_compensation_is_recorded_once() {
        let definition = mission_reward(&Policies::default());
        let now = Utc::now();
        let new = Saga::new(&definition, SagaId::new(), Default::default(), now);
        let started = transition(&definition, &new, &Input::Start, now).expect("starts");
        assert_eq!(
            summary(&derive(None, &started.saga, &started.effects)),
            ["step_started mission.complete #1 -"]
        );
        let saga = started.saga;
        let (saga, entries) = step(&definition, &saga, reply(0, Phase::Forward, 1, ok()));
        assert_eq!(
            summary(&entries),
            [
                "step_ended mission.complete #1 succeeded",
                "step_started reward.grant #1 -"
            ]
        );
        let (saga, entries) = step(
            &definition,
            &saga,
            reply(1, Phase::Forward, 1, failed(true)),
        );
        assert_eq!(
            summary(&entries),
            ["step_ended reward.grant #1 retrying (boom: it broke)"]
        );
        let backoff = Timer {
            kind: TimerKind::Backoff,
            step_index: 1,
            phase: Phase::Forward,
            attempt: 1,
        };
        let (saga, entries) = step(&definition, &saga, Input::TimerFired(backoff));
        assert_eq!(summary(&entries), ["step_started reward.grant #2 -"]);
        let timeout = Timer {
            kind: TimerKind::StepTimeout,
            attempt: 2,
            ..backoff
        };
        let (saga, entries) = step(&definition, &saga, Input::TimerFired(timeout));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].outcome.as_deref(), Some("resent"));
        assert!(
            entries[0]
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("no reply within")),
            "{entries:?}"
        );
        let (saga, entries) = step(
            &definition,
            &saga,
            reply(1, Phase::Forward, 2, failed(false)),
        );
        assert_eq!(
            summary(&entries),
            [
                "step_ended reward.grant #2 failed (boom: it broke)",
                "compensation_started mission.reopen #1 -"
            ]
        );
        let (saga, entries) = step(&definition, &saga, reply(0, Phase::Compensate, 1, ok()));
        assert_eq!(
            summary(&entries),
            ["compensation_ended mission.reopen #1 succeeded"]
        );
        assert_eq!(saga.state, crate::machine::SagaState::Compensated);
    }

    #[test]
    fn an_operator_action_names_who_did_what_with_what() {
        let action = OperatorAction {
            actor: "ops-alice".into(),
            action: "bulk_cancel",
            input: Some(serde_json::json!({"state": "running"})),
        };
        let entry = action.entry(Utc::now(), "saga_past_pivot");
        assert_eq!(entry.kind, HistoryKind::Operator);
        assert_eq!(
            (
                entry.actor.as_deref(),
                entry.action.as_deref(),
                entry.outcome.as_deref()
            ),
            (
                Some("ops-alice"),
                Some("bulk_cancel"),
                Some("saga_past_pivot")
            )
        );
        assert_eq!(entry.input, action.input);
        for kind in [
            HistoryKind::StepStarted,
            HistoryKind::StepEnded,
            HistoryKind::CompensationStarted,
            HistoryKind::CompensationEnded,
            HistoryKind::Operator,
        ] {
            assert_eq!(HistoryKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::json!(kind.as_str())
            );
        }
    }
}
