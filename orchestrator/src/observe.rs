//! What the orchestrator records in its metrics when a saga changes: starts, terminal states
//! and their durations, step durations and retries, finished compensations. Derived from the
//! saga before and after a committed change, so that every path (replies, timers, operators)
//! counts the same way.

use metrics::{counter, histogram};
use runtime::metrics::{
    COMPENSATIONS, SAGA_DURATION, SAGAS_FINISHED, SAGAS_STARTED, STEP_DURATION, STEP_RETRIES,
};

use crate::machine::{CompensationState, StepState};
use crate::store::Change;

/// Records one committed change.
pub fn record(change: &Change) {
    let before = change.before.as_ref().map(|b| &b.saga);
    let after = &change.after;
    let saga_type = after.saga_type.clone();
    if before.is_none() {
        counter!(SAGAS_STARTED, "saga_type" => saga_type.clone()).increment(1);
    }
    let newly_terminal = after.state.is_terminal() && before.is_none_or(|b| b.state != after.state);
    if newly_terminal {
        let outcome = after.state.as_str();
        counter!(SAGAS_FINISHED, "saga_type" => saga_type.clone(), "outcome" => outcome)
            .increment(1);
        let took = (after.updated_at - after.created_at)
            .to_std()
            .unwrap_or_default();
        histogram!(SAGA_DURATION, "saga_type" => saga_type, "outcome" => outcome)
            .record(took.as_secs_f64());
    }
    for (index, step) in after.steps.iter().enumerate() {
        let old = before.and_then(|b| b.steps.get(index));
        let retries_before = old.map_or(0, |o| o.attempts.saturating_sub(1));
        let retries = step
            .attempts
            .saturating_sub(1)
            .saturating_sub(retries_before);
        if retries > 0 {
            counter!(STEP_RETRIES, "step" => step.name.clone()).increment(u64::from(retries));
        }
        let finished = matches!(step.state, StepState::Succeeded | StepState::Failed);
        let changed = old.is_none_or(|o| o.state != step.state);
        let (Some(started), Some(ended)) = (step.started_at, step.finished_at) else {
            continue;
        };
        if finished && changed {
            let outcome = if step.state == StepState::Succeeded {
                "succeeded"
            } else {
                "failed"
            };
            let took = (ended - started).to_std().unwrap_or_default();
            histogram!(STEP_DURATION, "step" => step.name.clone(), "outcome" => outcome)
                .record(took.as_secs_f64());
        }
    }
    for compensation in &after.compensations {
        let old = before.and_then(|b| {
            b.compensations
                .iter()
                .find(|c| c.step_index == compensation.step_index)
        });
        let outcome = match compensation.state {
            CompensationState::Succeeded => "succeeded",
            CompensationState::Failed => "failed",
            _ => continue,
        };
        if old.is_none_or(|o| o.state != compensation.state) {
            counter!(COMPENSATIONS, "step" => compensation.name.clone(), "outcome" => outcome)
                .increment(1);
        }
    }
}
