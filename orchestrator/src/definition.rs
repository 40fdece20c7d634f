//! Saga definitions as data: the steps of a saga type, each with its action, compensation,
//! retry policy, timeout and what a final failure means. A second saga type is a new
//! definition here, not new engine code.

use std::collections::BTreeMap;
use std::time::Duration;

use contracts::{Action, Worker};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How often and how fast a step (or a compensation) is retried after a retryable failure.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt.
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    /// Factor applied to the wait after every further attempt.
    pub multiplier: f64,
    /// Upper bound of the wait.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait after `attempt` (1-based) failed: exponential, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let factor = self.multiplier.max(1.0).powi(exponent as i32);
        self.initial_backoff.mul_f64(factor).min(self.max_backoff)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What a step's final failure (permanent, or retries exhausted) does to the saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Undo every completed step in reverse order; the saga ends `compensated`.
    Compensate,
    /// Mark the step failed and go on (a step after the pivot whose failure is acceptable).
    Continue,
    /// Stop and park the saga as `failed` for an operator (a step after the pivot that must
    /// not be skipped).
    Park,
}

/// One step of a saga.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDefinition {
    /// What the worker does.
    pub action: Action,
    /// What undoes it, for steps before the pivot.
    pub compensation: Option<Action>,
    /// Retries after retryable failures.
    pub retry: RetryPolicy,
    /// How long to wait for a reply before re-sending the same command.
    pub timeout: Duration,
    /// What a final failure means.
    pub on_failure: FailurePolicy,
}

/// A field of a saga's input that must name an existing entity, checked with its owner before
/// the saga is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputReference {
    /// The input field (`mission_id`).
    pub field: &'static str,
    /// The worker that owns the entity.
    pub owner: Worker,
    /// The look-up the owner answers (`mission`).
    pub lookup: &'static str,
}

/// A saga type at one version.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaDefinition {
    /// The type's name (`mission_reward`).
    pub saga_type: &'static str,
    /// Bumped whenever steps change; a running saga keeps the version it started with.
    pub version: u32,
    /// The steps, in order.
    pub steps: Vec<StepDefinition>,
    /// Retries of compensations; past them the saga is parked as `failed`.
    pub compensation_retry: RetryPolicy,
    /// Timeout of a compensation command.
    pub compensation_timeout: Duration,
    /// Past this, a saga that has not passed its pivot compensates.
    pub deadline: Option<Duration>,
    /// Input fields: name and whether it must be a uuid.
    pub input_fields: &'static [(&'static str, InputKind)],
    /// Input fields that must name existing entities.
    pub references: Vec<InputReference>,
}

/// The kind of value an input field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A uuid in text form.
    Uuid,
}

/// Why a saga's input is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    /// The input is not a JSON object.
    #[error("input must be a JSON object")]
    NotAnObject,
    /// A required field is absent.
    #[error("input.{0} is required")]
    Missing(&'static str),
    /// A field has the wrong type.
    #[error("input.{0} must be {1}")]
    WrongType(&'static str, &'static str),
    /// A field this saga type does not know.
    #[error("input.{0} is not a field of this saga type")]
    Unknown(String),
}

impl SagaDefinition {
    /// Checks an input against the definition and returns it as a map.
    pub fn check_input(&self, input: &Value) -> Result<Map<String, Value>, InputError> {
        let Value::Object(map) = input else {
            return Err(InputError::NotAnObject);
        };
        if let Some(unknown) = map
            .keys()
            .find(|k| !self.input_fields.iter().any(|(name, _)| name == k))
        {
            return Err(InputError::Unknown(unknown.clone()));
        }
        for (name, kind) in self.input_fields {
            let value = map.get(*name).ok_or(InputError::Missing(name))?;
            match kind {
                InputKind::Uuid => {
                    let ok = value
                        .as_str()
                        .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok());
                    if !ok {
                        return Err(InputError::WrongType(name, "a uuid string"));
                    }
                }
            }
        }
        Ok(map.clone())
    }

    /// The step at `index`, if the definition has one.
    pub fn step(&self, index: u16) -> Option<&StepDefinition> {
        self.steps.get(usize::from(index))
    }
}

/// Retry policies that configuration may override.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    /// Retries of the steps that touch only our own services.
    pub step: RetryPolicy,
    /// Retries of the Telegram step (honouring `retry_after` on top).
    pub telegram: RetryPolicy,
    /// Retries of compensations.
    pub compensation: RetryPolicy,
    /// Timeout of a step's command before it is re-sent.
    #[serde(with = "millis")]
    pub step_timeout: Duration,
    /// Timeout of the Telegram step's command before it is re-sent; longer than the worker's
    /// whole HTTP call so that a slow send is not raced by its own re-send.
    #[serde(with = "millis")]
    pub telegram_timeout: Duration,
    /// The whole-saga deadline: a saga still before its pivot this long after it started
    /// compensates.
    #[serde(with = "millis")]
    pub deadline: Duration,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            step: RetryPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(200),
                multiplier: 2.0,
                max_backoff: Duration::from_secs(5),
            },
            telegram: RetryPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(200),
                multiplier: 2.0,
                max_backoff: Duration::from_secs(10),
            },
            compensation: RetryPolicy {
                max_attempts: 10,
                initial_backoff: Duration::from_millis(200),
                multiplier: 2.0,
                max_backoff: Duration::from_secs(30),
            },
            step_timeout: Duration::from_secs(10),
            telegram_timeout: Duration::from_secs(20),
            deadline: Duration::from_secs(300),
        }
    }
}

/// The saga of the product: complete the mission, grant the reward, attach it, tell the
/// customer on Telegram, record that they were told.
pub fn mission_reward(policies: &Policies) -> SagaDefinition {
    let step = |action, compensation, on_failure| StepDefinition {
        action,
        compensation,
        retry: policies.step,
        timeout: policies.step_timeout,
        on_failure,
    };
    SagaDefinition {
        saga_type: MISSION_REWARD,
        version: 1,
        steps: vec![
            step(
                Action::CompleteMission,
                Some(Action::ReopenMission),
                FailurePolicy::Compensate,
            ),
            step(
                Action::GrantReward,
                Some(Action::RevokeReward),
                FailurePolicy::Compensate,
            ),
            step(
                Action::AttachReward,
                Some(Action::DetachReward),
                FailurePolicy::Compensate,
            ),
            StepDefinition {
                action: Action::SendNotification,
                compensation: None,
                retry: policies.telegram,
                timeout: policies.telegram_timeout,
                on_failure: FailurePolicy::Continue,
            },
            step(Action::RecordMessage, None, FailurePolicy::Park),
        ],
        compensation_retry: policies.compensation,
        compensation_timeout: policies.step_timeout,
        deadline: Some(policies.deadline),
        input_fields: &[("mission_id", InputKind::Uuid)],
        references: vec![InputReference {
            field: "mission_id",
            owner: Worker::Mission,
            lookup: "mission",
        }],
    }
}

/// The name of the mission-reward saga type.
pub const MISSION_REWARD: &str = "mission_reward";

/// Every saga definition the orchestrator runs, by type and version.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    definitions: BTreeMap<(&'static str, u32), SagaDefinition>,
}

impl Registry {
    /// The built-in definitions with the given policies.
    pub fn builtin(policies: &Policies) -> Self {
        let mut registry = Self::default();
        registry.insert(mission_reward(policies));
        registry
    }

    /// Adds (or replaces) a definition.
    pub fn insert(&mut self, definition: SagaDefinition) {
        self.definitions
            .insert((definition.saga_type, definition.version), definition);
    }

    /// The newest version of a type: what a new saga starts with.
    pub fn latest(&self, saga_type: &str) -> Option<&SagaDefinition> {
        self.definitions
            .iter()
            .rev()
            .find(|((t, _), _)| *t == saga_type)
            .map(|(_, d)| d)
    }

    /// One version of a type: what a running saga keeps.
    pub fn get(&self, saga_type: &str, version: u32) -> Option<&SagaDefinition> {
        self.definitions
            .iter()
            .find(|((t, v), _)| *t == saga_type && *v == version)
            .map(|(_, d)| d)
    }

    /// The saga types known, newest version each.
    pub fn types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.definitions.keys().map(|(t, _)| *t).collect();
        types.dedup();
        types
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = Policies::default().step;
        assert_eq!(policy.backoff(1), Duration::from_millis(200));
        assert_eq!(policy.backoff(2), Duration::from_millis(400));
        assert_eq!(policy.backoff(3), Duration::from_millis(800));
        assert_eq!(policy.backoff(40), Duration::from_secs(5));
    }

    #[test]
    fn mission_reward_input_is_checked() {
        let def = mission_reward(&Policies::default());
        let id = uuid::Uuid::now_v7().to_string();
        assert!(def.check_input(&json!({"mission_id": id})).is_ok());
        assert_eq!(
            def.check_input(&json!({})),
            Err(InputError::Missing("mission_id"))
        );
        assert_eq!(
            def.check_input(&json!({"mission_id": 7})),
            Err(InputError::WrongType("mission_id", "a uuid string"))
        );
        assert_eq!(
            def.check_input(&json!({"mission_id": "nope"})),
            Err(InputError::WrongType("mission_id", "a uuid string"))
        );
        assert_eq!(
            def.check_input(&json!({"mission_id": id, "x": 1})),
            Err(InputError::Unknown("x".into()))
        );
        assert_eq!(def.check_input(&json!([1])), Err(InputError::NotAnObject));
    }

    #[test]
    fn the_registry_hands_out_the_newest_version_and_keeps_old_ones() {
        let mut registry = Registry::builtin(&Policies::default());
        let mut v2 = mission_reward(&Policies::default());
        v2.version = 2;
        registry.insert(v2);
        assert_eq!(registry.latest(MISSION_REWARD).map(|d| d.version), Some(2));
        assert_eq!(registry.get(MISSION_REWARD, 1).map(|d| d.version), Some(1));
        assert!(registry.latest("nope").is_none());
        assert_eq!(registry.types(), vec![MISSION_REWARD]);
    }
}
