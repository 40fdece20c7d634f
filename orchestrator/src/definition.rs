//! Saga definitions as data: the steps of a saga type, each with its action (and the version
//! and field names of its command), compensation, retry policy, timeout and what a final failure
//! means, plus the input a saga type takes and the keys it can be searched by. A second saga type
//! is a new definition here, not new engine code: this is the only module that names fields of
//! particular sagas (`mission_id`, `customer_id`, ...); the store, the engine, the API and the
//! saga page learn them from [`SagaDefinition::search_keys`] and [`Registry::search_key_names`].

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
    /// The version of the command sent for the action and for its compensation: the command's
    /// `type` is `action.command_type(command_version)` (`reward.grant.v2`).
    pub command_version: u16,
    /// Command fields taken from saga input or context keys of another name: for every
    /// `(field, key)` the command (and its compensation's command) gets `field` = the value of
    /// `key` (`("points", "reward_points")`). Every other field has the name of its key.
    pub bind: &'static [(&'static str, &'static str)],
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

/// Where a search key's value is in a saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// In the input the saga was started with.
    Input,
    /// In the context its steps produced (the key appears once the step that produces it
    /// succeeded).
    Context,
}

/// A value a saga can be found by (`GET /v1/sagas?customer_id=...`), stored with the saga and
/// carried as an attribute of its step spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchKey {
    /// The key's name: the field of the input or context that holds it, the query parameter
    /// and the bulk-filter field (`customer_id`).
    pub name: &'static str,
    /// Where the value is.
    pub source: KeySource,
    /// The attribute of the saga's step and compensation spans that carries it (`customer.id`).
    pub span_attribute: &'static str,
}

impl SearchKey {
    /// The key's value in a saga with this input and context, as text; `None` while the saga
    /// has none (a context key before the step that produces it).
    pub fn value(
        &self,
        input: &Map<String, Value>,
        context: &Map<String, Value>,
    ) -> Option<String> {
        let fields = match self.source {
            KeySource::Input => input,
            KeySource::Context => context,
        };
        match fields.get(self.name)? {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
}

/// What a search key's name says in prose: `customer_id` is "customer", `gift_id` is "gift".
pub fn key_noun(name: &str) -> String {
    name.strip_suffix("_id").unwrap_or(name).replace('_', " ")
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
    /// Input fields: name and the kind of value it holds.
    pub input_fields: &'static [(&'static str, InputKind)],
    /// Input fields that must name existing entities.
    pub references: Vec<InputReference>,
    /// What a saga of this type can be searched by.
    pub search_keys: Vec<SearchKey>,
}

/// The kind of value an input field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A uuid in text form.
    Uuid,
    /// A customer id: 1 to 64 characters of letters, digits, `-`, `_`, `.` or `:` (what
    /// [`contracts::CustomerId`] accepts).
    CustomerId,
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
            let text = value.as_str().unwrap_or_default();
            let (valid, expected) = match kind {
                InputKind::Uuid => (uuid::Uuid::parse_str(text).is_ok(), "a uuid string"),
                InputKind::CustomerId => (
                    text.parse::<contracts::CustomerId>().is_ok(),
                    "a customer id: 1 to 64 characters of letters, digits, '-', '_', '.' or ':'",
                ),
            };
            if !valid {
                return Err(InputError::WrongType(name, expected));
            }
        }
        Ok(map.clone())
    }

    /// The search keys a saga with this input and context has, by name (a key the saga has no
    /// value for yet is absent).
    pub fn search_values(
        &self,
        input: &Map<String, Value>,
        context: &Map<String, Value>,
    ) -> BTreeMap<String, String> {
        self.search_keys
            .iter()
            .filter_map(|key| Some((key.name.to_owned(), key.value(input, context)?)))
            .collect()
    }

    /// The step at `index`, if the definition has one.
    pub fn step(&self, index: u16) -> Option<&StepDefinition> {
        self.steps.get(usize::from(index))
    }

    /// The pivot: the first step after the last compensable one (the first step when none is
    /// compensable). Once it has started, nothing the saga did can be undone. `None` when every
    /// step is compensable.
    pub fn pivot(&self) -> Option<usize> {
        let first = self
            .steps
            .iter()
            .rposition(|s| s.compensation.is_some())
            .map_or(0, |last| last + 1);
        (first < self.steps.len()).then_some(first)
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

/// A step with the policies' step retries and timeout, command version 1 and no renamed
/// fields.
fn step(
    policies: &Policies,
    action: Action,
    compensation: Option<Action>,
    on_failure: FailurePolicy,
) -> StepDefinition {
    StepDefinition {
        action,
        compensation,
        command_version: 1,
        bind: &[],
        retry: policies.step,
        timeout: policies.step_timeout,
        on_failure,
    }
}

/// The Telegram step of the mission-reward saga: after the pivot, its own retries and timeout,
/// and a failure the saga accepts.
fn telegram_step(policies: &Policies) -> StepDefinition {
    StepDefinition {
        retry: policies.telegram,
        timeout: policies.telegram_timeout,
        ..step(
            policies,
            Action::SendNotification,
            None,
            FailurePolicy::Continue,
        )
    }
}

/// The search keys of both mission-reward versions.
fn mission_reward_keys() -> Vec<SearchKey> {
    vec![
        SearchKey {
            name: "customer_id",
            source: KeySource::Context,
            span_attribute: "customer.id",
        },
        SearchKey {
            name: "mission_id",
            source: KeySource::Input,
            span_attribute: "mission.id",
        },
    ]
}

/// The saga of the product: complete the mission, grant the reward, attach it, tell the
/// customer on Telegram, record that they were told.
pub fn mission_reward(policies: &Policies) -> SagaDefinition {
    SagaDefinition {
        saga_type: MISSION_REWARD,
        version: 1,
        steps: vec![
            step(
                policies,
                Action::CompleteMission,
                Some(Action::ReopenMission),
                FailurePolicy::Compensate,
            ),
            step(
                policies,
                Action::GrantReward,
                Some(Action::RevokeReward),
                FailurePolicy::Compensate,
            ),
            step(
                policies,
                Action::AttachReward,
                Some(Action::DetachReward),
                FailurePolicy::Compensate,
            ),
            telegram_step(policies),
            step(policies, Action::RecordMessage, None, FailurePolicy::Park),
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
        search_keys: mission_reward_keys(),
    }
}

/// Version 2 of the mission-reward saga, for when the wallet is a context of its own:
/// `reward.grant` v2 only creates the reward and a `wallet.credit` step pays it (its
/// compensation `wallet.debit` takes it back). Same input, references, keys and deadline as
/// version 1.
pub fn mission_reward_v2(policies: &Policies) -> SagaDefinition {
    SagaDefinition {
        version: 2,
        steps: vec![
            step(
                policies,
                Action::CompleteMission,
                Some(Action::ReopenMission),
                FailurePolicy::Compensate,
            ),
            StepDefinition {
                command_version: 2,
                ..step(
                    policies,
                    Action::GrantReward,
                    Some(Action::RevokeReward),
                    FailurePolicy::Compensate,
                )
            },
            StepDefinition {
                bind: &[("points", "reward_points")],
                ..step(
                    policies,
                    Action::CreditWallet,
                    Some(Action::DebitWallet),
                    FailurePolicy::Compensate,
                )
            },
            step(
                policies,
                Action::AttachReward,
                Some(Action::DetachReward),
                FailurePolicy::Compensate,
            ),
            telegram_step(policies),
            step(policies, Action::RecordMessage, None, FailurePolicy::Park),
        ],
        ..mission_reward(policies)
    }
}

/// A customer exchanges wallet points for a gift: reserve one from the stock, debit its price,
/// issue its voucher (the pivot: from then on the exchange stands), tell the customer.
pub fn gift_exchange(policies: &Policies) -> SagaDefinition {
    SagaDefinition {
        saga_type: GIFT_EXCHANGE,
        version: 1,
        steps: vec![
            step(
                policies,
                Action::ReserveGift,
                Some(Action::ReleaseGift),
                FailurePolicy::Compensate,
            ),
            StepDefinition {
                bind: &[("points", "price_points")],
                ..step(
                    policies,
                    Action::DebitWallet,
                    Some(Action::CreditWallet),
                    FailurePolicy::Compensate,
                )
            },
            step(policies, Action::IssueGift, None, FailurePolicy::Park),
            StepDefinition {
                timeout: policies.telegram_timeout,
                ..step(policies, Action::NotifyGift, None, FailurePolicy::Continue)
            },
        ],
        compensation_retry: policies.compensation,
        compensation_timeout: policies.step_timeout,
        deadline: Some(policies.deadline),
        input_fields: &[
            ("gift_id", InputKind::Uuid),
            ("customer_id", InputKind::CustomerId),
        ],
        references: vec![InputReference {
            field: "gift_id",
            owner: Worker::Gift,
            lookup: "gift",
        }],
        search_keys: vec![
            SearchKey {
                name: "customer_id",
                source: KeySource::Input,
                span_attribute: "customer.id",
            },
            SearchKey {
                name: "gift_id",
                source: KeySource::Input,
                span_attribute: "gift.id",
            },
        ],
    }
}

/// The name of the mission-reward saga type.
pub const MISSION_REWARD: &str = "mission_reward";

/// The name of the gift-exchange saga type.
pub const GIFT_EXCHANGE: &str = "gift_exchange";

/// Every saga definition the orchestrator runs, by type and version.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    definitions: BTreeMap<(&'static str, u32), SagaDefinition>,
}

impl Registry {
    /// The built-in definitions with the given policies: `mission_reward` v1 and v2 (new
    /// sagas start with v2; running v1 sagas finish as v1) and `gift_exchange` v1.
    pub fn builtin(policies: &Policies) -> Self {
        let mut registry = Self::default();
        registry.insert(mission_reward(policies));
        registry.insert(mission_reward_v2(policies));
        registry.insert(gift_exchange(policies));
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

    /// Every definition, by type, then version.
    pub fn all(&self) -> impl Iterator<Item = &SagaDefinition> {
        self.definitions.values()
    }

    /// The saga types known, newest version each.
    pub fn types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.definitions.keys().map(|(t, _)| *t).collect();
        types.dedup();
        types
    }

    /// Every search key some definition (of any version) declares, sorted by name: the
    /// filters the API and the saga page accept.
    pub fn search_key_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .definitions
            .values()
            .flat_map(|d| d.search_keys.iter().map(|k| k.name))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether some definition declares the search key `name`.
    pub fn declares_search_key(&self, name: &str) -> bool {
        self.definitions
            .values()
            .any(|d| d.search_keys.iter().any(|k| k.name == name))
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
        let mut v3 = mission_reward(&Policies::default());
        v3.version = 3;
        registry.insert(v3);
        assert_eq!(registry.latest(MISSION_REWARD).map(|d| d.version), Some(3));
        assert_eq!(registry.get(MISSION_REWARD, 1).map(|d| d.version), Some(1));
        assert_eq!(registry.get(MISSION_REWARD, 2).map(|d| d.version), Some(2));
        assert!(registry.latest("nope").is_none());
        assert_eq!(registry.types(), vec![GIFT_EXCHANGE, MISSION_REWARD]);
    }

    fn fields(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn search_keys_come_from_input_or_context_once_there() {
        let def = mission_reward(&Policies::default());
        let input = fields(json!({"mission_id": "m-1"}));
        let before = def.search_values(&input, &Map::new());
        assert_eq!(
            before,
            BTreeMap::from([("mission_id".to_owned(), "m-1".to_owned())])
        );
        let context = fields(json!({"customer_id": "player-1", "reward_points": 5}));
        let after = def.search_values(&input, &context);
        assert_eq!(
            after.get("customer_id").map(String::as_str),
            Some("player-1")
        );
        assert_eq!(after.len(), 2, "only declared keys: {after:?}");
        let key = SearchKey {
            name: "reward_points",
            source: KeySource::Context,
            span_attribute: "reward.points",
        };
        assert_eq!(key.value(&input, &context).as_deref(), Some("5"));
        assert_eq!(
            key.value(&context, &input),
            None,
            "looked up in its source only"
        );
        let spans: Vec<_> = def.search_keys.iter().map(|k| k.span_attribute).collect();
        assert_eq!(spans, ["customer.id", "mission.id"]);
        assert_eq!(key_noun("customer_id"), "customer");
        assert_eq!(key_noun("order_line"), "order line");
    }

    #[test]
    fn customer_id_inputs_are_checked_like_customer_ids() {
        let def = gift_exchange(&Policies::default());
        let gift = uuid::Uuid::now_v7().to_string();
        assert!(
            def.check_input(&json!({"gift_id": gift, "customer_id": "player-1:eu.x_y"}))
                .is_ok()
        );
        for bad in [json!(""), json!("a b"), json!("x".repeat(65)), json!(7)] {
            assert!(
                matches!(
                    def.check_input(&json!({"gift_id": gift, "customer_id": bad})),
                    Err(InputError::WrongType("customer_id", _))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            def.check_input(&json!({"customer_id": "p"})),
            Err(InputError::Missing("gift_id"))
        );
    }

    #[test]
    fn the_registry_lists_every_declared_search_key() {
        let policies = Policies::default();
        let mut v1_only = Registry::default();
        v1_only.insert(mission_reward(&policies));
        assert_eq!(v1_only.search_key_names(), ["customer_id", "mission_id"]);
        assert!(v1_only.declares_search_key("mission_id"));
        assert!(!v1_only.declares_search_key("gift_id"));
        let all = Registry::builtin(&policies);
        assert_eq!(
            all.search_key_names(),
            ["customer_id", "gift_id", "mission_id"]
        );
        assert!(all.declares_search_key("gift_id"));
        assert!(!all.declares_search_key("colour"));
    }

    #[test]
    fn builtin_starts_new_mission_rewards_at_v2_and_keeps_v1() {
        let policies = Policies::default();
        let all = Registry::builtin(&policies);
        assert_eq!(all.types(), [GIFT_EXCHANGE, MISSION_REWARD]);
        assert_eq!(
            all.latest(MISSION_REWARD),
            Some(&mission_reward_v2(&policies))
        );
        assert_eq!(all.get(MISSION_REWARD, 1), Some(&mission_reward(&policies)));
        assert_eq!(all.latest(GIFT_EXCHANGE), Some(&gift_exchange(&policies)));
    }

    /// (action, compensation, command version, bind, failure policy) of every step.
    type Shape = (
        Action,
        Option<Action>,
        u16,
        &'static [(&'static str, &'static str)],
        FailurePolicy,
    );

    fn shape(def: &SagaDefinition) -> Vec<Shape> {
        def.steps
            .iter()
            .map(|s| {
                (
                    s.action,
                    s.compensation,
                    s.command_version,
                    s.bind,
                    s.on_failure,
                )
            })
            .collect()
    }

    #[test]
    fn mission_reward_v1_sends_version_1_commands_under_their_own_names() {
        let def = mission_reward(&Policies::default());
        assert!(
            def.steps
                .iter()
                .all(|s| s.command_version == 1 && s.bind.is_empty())
        );
    }

    #[test]
    fn mission_reward_v2_pays_through_the_wallet() {
        let policies = Policies::default();
        let v1 = mission_reward(&policies);
        let v2 = mission_reward_v2(&policies);
        use Action as A;
        use FailurePolicy as F;
        assert_eq!(
            shape(&v2),
            [
                (
                    A::CompleteMission,
                    Some(A::ReopenMission),
                    1,
                    &[][..],
                    F::Compensate
                ),
                (A::GrantReward, Some(A::RevokeReward), 2, &[], F::Compensate),
                (
                    A::CreditWallet,
                    Some(A::DebitWallet),
                    1,
                    &[("points", "reward_points")],
                    F::Compensate
                ),
                (
                    A::AttachReward,
                    Some(A::DetachReward),
                    1,
                    &[],
                    F::Compensate
                ),
                (A::SendNotification, None, 1, &[], F::Continue),
                (A::RecordMessage, None, 1, &[], F::Park),
            ]
        );
        assert_eq!((v2.saga_type, v2.version), (MISSION_REWARD, 2));
        assert_eq!(v2.steps[4].retry, policies.telegram);
        assert_eq!(v2.steps[4].timeout, policies.telegram_timeout);
        assert_eq!(v2.steps[2].timeout, policies.step_timeout);
        assert_eq!(v2.input_fields, v1.input_fields);
        assert_eq!(v2.references, v1.references);
        assert_eq!(v2.search_keys, v1.search_keys);
        assert_eq!(v2.deadline, v1.deadline);
        assert_eq!(v2.compensation_retry, v1.compensation_retry);
    }

    #[test]
    fn gift_exchange_reserves_debits_issues_and_notifies() {
        let policies = Policies::default();
        let def = gift_exchange(&policies);
        use Action as A;
        use FailurePolicy as F;
        assert_eq!(
            shape(&def),
            [
                (
                    A::ReserveGift,
                    Some(A::ReleaseGift),
                    1,
                    &[][..],
                    F::Compensate
                ),
                (
                    A::DebitWallet,
                    Some(A::CreditWallet),
                    1,
                    &[("points", "price_points")],
                    F::Compensate
                ),
                (A::IssueGift, None, 1, &[], F::Park),
                (A::NotifyGift, None, 1, &[], F::Continue),
            ]
        );
        assert_eq!((def.saga_type, def.version), (GIFT_EXCHANGE, 1));
        let pivot = def.steps.iter().rposition(|s| s.compensation.is_some());
        assert_eq!(
            pivot,
            Some(1),
            "gift.issue is the first step past the pivot"
        );
        assert_eq!(def.steps[3].timeout, policies.telegram_timeout);
        assert_eq!(def.steps[2].timeout, policies.step_timeout);
        assert_eq!(def.deadline, Some(policies.deadline));
        assert_eq!(
            def.references,
            [InputReference {
                field: "gift_id",
                owner: Worker::Gift,
                lookup: "gift",
            }]
        );
        let input = fields(json!({"gift_id": "g-1", "customer_id": "player-1"}));
        let keys = def.search_values(&input, &Map::new());
        assert_eq!(
            keys,
            BTreeMap::from([
                ("customer_id".to_owned(), "player-1".to_owned()),
                ("gift_id".to_owned(), "g-1".to_owned()),
            ])
        );
        let spans: Vec<_> = def.search_keys.iter().map(|k| k.span_attribute).collect();
        assert_eq!(spans, ["customer.id", "gift.id"]);
    }

    /// What a worker answers when `action` succeeds, as the contracts say.
    fn output(action: Action) -> Map<String, Value> {
        fields(match action {
            Action::CompleteMission => {
                json!({"customer_id": "player-1", "mission_title": "Quest", "reward_points": 150})
            }
            Action::GrantReward => json!({"reward_id": uuid::Uuid::now_v7()}),
            Action::SendNotification => {
                json!({"notification_id": uuid::Uuid::now_v7(), "notification_status": "sent"})
            }
            Action::ReserveGift => json!({"gift_name": "Mug", "price_points": 40}),
            Action::IssueGift => json!({"voucher_code": "MUG-1234"}),
            Action::NotifyGift => json!({"notification_status": "sent"}),
            _ => json!({}),
        })
    }

    /// Runs a saga of `def` to its end, every step succeeding except `fail` (for good), and
    /// returns every command it sent.
    fn commands(
        def: &SagaDefinition,
        input: Value,
        fail: Option<usize>,
    ) -> Vec<crate::machine::CommandSpec> {
        use crate::machine::{Effect, Input, Saga, transition};
        let input = def.check_input(&input).expect("valid input");
        let now = chrono::Utc::now();
        let mut saga = Saga::new(def, contracts::SagaId::new(), input, now);
        let mut sent = Vec::new();
        let mut next = Input::Start;
        loop {
            let step = transition(def, &saga, &next, now).expect("accepted");
            saga = step.saga;
            let Some(command) = step.effects.into_iter().find_map(|e| match e {
                Effect::Send(command) => Some(command),
                _ => None,
            }) else {
                return sent;
            };
            let failing = command.phase == contracts::Phase::Forward
                && fail == Some(usize::from(command.step_index));
            next = Input::Reply {
                step_index: command.step_index,
                phase: command.phase,
                attempt: command.attempt,
                reply: if failing {
                    contracts::Reply::Failed(contracts::StepFailure::permanent("no", "refused"))
                } else if command.phase == contracts::Phase::Forward {
                    contracts::Reply::Succeeded {
                        output: output(command.action),
                    }
                } else {
                    contracts::Reply::Succeeded { output: Map::new() }
                },
            };
            sent.push(command);
        }
    }

    /// Every command parses into the contract of its action, at the step's version.
    fn check_contracts(def: &SagaDefinition, sent: &[crate::machine::CommandSpec]) {
        for command in sent {
            let step = def.step(command.step_index).expect("a step");
            let parsed: contracts::Command = serde_json::from_value(command.body.clone())
                .unwrap_or_else(|e| panic!("{}: {e}: {}", command.action.name(), command.body));
            assert_eq!(parsed.action(), command.action);
            assert_eq!(
                command.body["type"],
                json!(command.action.command_type(step.command_version))
            );
        }
    }

    /// The `type` of every command sent.
    fn names(sent: &[crate::machine::CommandSpec]) -> Vec<String> {
        sent.iter()
            .map(|c| c.body["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn mission_reward_v2_commands_fit_the_contracts_forward_and_back() {
        let def = mission_reward_v2(&Policies::default());
        let input = json!({"mission_id": uuid::Uuid::now_v7()});
        let happy = commands(&def, input.clone(), None);
        check_contracts(&def, &happy);
        assert_eq!(
            names(&happy),
            [
                "mission.complete.v1",
                "reward.grant.v2",
                "wallet.credit.v1",
                "mission.attach_reward.v1",
                "telegram.send.v1",
                "mission.record_message.v1",
            ]
        );
        assert_eq!(
            happy[2].body["points"],
            json!(150),
            "points <- reward_points"
        );
        let refused = commands(&def, input, Some(3));
        check_contracts(&def, &refused);
        assert_eq!(
            names(&refused)[4..],
            ["wallet.debit.v1", "reward.revoke.v2", "mission.reopen.v1"]
        );
        assert_eq!(refused[4].body["points"], json!(150));
    }

    #[test]
    fn gift_exchange_commands_fit_the_contracts_forward_and_back() {
        let def = gift_exchange(&Policies::default());
        let input = json!({"gift_id": uuid::Uuid::now_v7(), "customer_id": "player-1"});
        let happy = commands(&def, input.clone(), None);
        check_contracts(&def, &happy);
        assert_eq!(
            names(&happy),
            [
                "gift.reserve.v1",
                "wallet.debit.v1",
                "gift.issue.v1",
                "gift.notify.v1"
            ]
        );
        assert_eq!(happy[1].body["points"], json!(40), "points <- price_points");
        let refused = commands(&def, input, Some(2));
        check_contracts(&def, &refused);
        assert_eq!(names(&refused).len(), 3, "past the pivot nothing is undone");
        let unpaid = commands(
            &def,
            json!({"gift_id": uuid::Uuid::now_v7(), "customer_id": "player-1"}),
            Some(1),
        );
        check_contracts(&def, &unpaid);
        assert_eq!(names(&unpaid)[2..], ["gift.release.v1"]);
    }
}
