//! The platform's answers as `sagactl` reads them to draw tables: a saga, its steps and
//! compensations, a dead letter, a definition, a history entry, a bulk outcome and the
//! rebuild status. Every field is optional or defaulted, so an answer with more (or fewer)
//! fields than this version knows still renders; `--json` prints the answer itself, not these.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::CliError;

/// The saga states that end a saga.
pub const TERMINAL_STATES: [&str; 4] = ["completed", "compensated", "failed", "cancelled"];

/// Every saga state, in the order a saga may pass them.
pub const SAGA_STATES: [&str; 6] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
    "cancelled",
];

/// Reads `value` as a `T`, naming `what` when it is not one.
pub fn read<T: serde::de::DeserializeOwned>(what: &str, value: &Value) -> Result<T, CliError> {
    T::deserialize(value).map_err(|e| CliError::Unexpected {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// A saga (`GET /v1/sagas/{id}`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Saga {
    /// Its id.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub saga_type: String,
    /// The definition version it runs.
    pub definition_version: u32,
    /// Its state.
    pub state: String,
    /// Why it stopped going forward early.
    pub stop_reason: Option<String>,
    /// Its trace id.
    pub trace_id: Option<String>,
    /// What it was started with.
    pub input: Map<String, Value>,
    /// What its steps produced.
    pub context: Map<String, Value>,
    /// The forward steps in definition order.
    pub steps: Vec<Step>,
    /// The compensations in the order they ran.
    pub compensations: Vec<Compensation>,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Saga {
    /// Whether the saga has ended.
    pub fn is_terminal(&self) -> bool {
        TERMINAL_STATES.contains(&self.state.as_str())
    }

    /// The step it is at: the first that has not succeeded, or the last one.
    pub fn current_step(&self) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| !matches!(s.state.as_str(), "succeeded"))
            .or(self.steps.last())
    }
}

/// One forward step of a saga.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Step {
    /// Its name (`reward.grant`).
    pub name: String,
    /// Its state.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When its first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its last failure.
    pub last_error: Option<String>,
}

/// One compensation of a saga.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Compensation {
    /// The compensating action (`reward.revoke`).
    pub name: String,
    /// The step it undoes.
    pub step: String,
    /// Its state.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When its first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its last failure.
    pub last_error: Option<String>,
}

/// A parked message (`GET /v1/dead-letters`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: u64,
    /// The subject it was first published on.
    pub original_subject: String,
    /// Why no consumer could handle it.
    pub reason: String,
    /// The consumer that gave up.
    pub consumer: String,
    /// Its payload when it is text.
    pub payload: Option<String>,
    /// Its payload in base64.
    pub payload_base64: String,
    /// When it was parked.
    pub parked_at: Option<DateTime<Utc>>,
}

/// A saga definition (`GET /v1/definitions`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Definition {
    /// The saga type.
    #[serde(rename = "type")]
    pub saga_type: String,
    /// The version.
    pub version: u32,
    /// Whether new sagas of the type start with this version.
    pub latest: bool,
    /// Its steps in order.
    pub steps: Vec<DefinitionStep>,
}

/// One step of a definition.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DefinitionStep {
    /// The step's name.
    pub name: String,
    /// The action that undoes it, if any.
    pub compensation: Option<String>,
    /// Whether the saga cannot be undone once this step started.
    pub pivot: bool,
}

/// One entry of a saga's history (`GET /v1/sagas/{id}/history`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryEntry {
    /// When it happened.
    pub at: Option<DateTime<Utc>>,
    /// `step_started`, `step_ended`, `compensation_started`, `compensation_ended` or
    /// `operator`.
    pub kind: String,
    /// The step or compensation.
    pub step: Option<String>,
    /// The attempt.
    pub attempt: Option<u32>,
    /// How an attempt ended.
    pub outcome: Option<String>,
    /// Its error.
    pub error: Option<String>,
    /// Who acted (an operator action).
    pub actor: Option<String>,
    /// What the operator did.
    pub action: Option<String>,
}

/// What one bulk call did (`POST /v1/sagas/cancel|retry`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct BulkOutcome {
    /// Sagas the filter matched.
    pub matched: u64,
    /// Sagas the command changed.
    pub affected: u64,
    /// Sagas that refused it, by code.
    pub refused: BTreeMap<String, u64>,
    /// Whether more sagas match than the call acted on.
    pub more: bool,
}

/// Where the my-page rebuild stands (`GET /v1/mypages/rebuild`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RebuildStatus {
    /// `idle`, `running` or `done`.
    pub state: String,
    /// Messages replayed.
    pub replayed: i64,
    /// When the (last) rebuild started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it switched reads to its generation.
    pub finished_at: Option<DateTime<Utc>>,
    /// The generation it builds or built.
    pub generation: Option<i64>,
    /// The generation reads are served from.
    pub serving_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_saga_reads_with_unknown_and_missing_fields() {
        let saga: Saga = read(
            "saga",
            &json!({"id": "s", "type": "mission_reward", "state": "running", "new_field": 1,
                    "steps": [{"name": "a", "state": "succeeded"}, {"name": "b", "state": "running", "attempts": 2}]}),
        )
        .expect("saga");
        assert!(!saga.is_terminal());
        assert_eq!(saga.current_step().map(|s| s.name.as_str()), Some("b"));
        assert!(read::<Saga>("saga", &json!([1])).is_err());
    }
}
