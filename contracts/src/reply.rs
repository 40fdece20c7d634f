//! Replies from a worker to the orchestrator: a step succeeded (with the output it adds to the
//! saga's context) or failed (retryable or not, with Telegram's `retry_after` where it gave one),
//! and the typed outputs each action produces.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::command::NotificationStatus;
use crate::{Action, CustomerId, NotificationId, RewardId};

/// A worker's answer to one command, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Reply {
    /// `step.succeeded.v1`: the step's output is merged into the saga's context.
    #[serde(rename = "step.succeeded.v1")]
    Succeeded {
        /// Fields this step adds to the saga's context.
        #[serde(default)]
        output: Map<String, Value>,
    },
    /// `step.failed.v1`
    #[serde(rename = "step.failed.v1")]
    Failed(StepFailure),
}

/// Why a step failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    /// A stable, machine-readable code (`budget_exhausted`, `telegram_forbidden`, ...).
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The earliest moment another attempt makes sense, when the downstream said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Fields the step still adds to the saga's context (a failed notification's id, say).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub output: Map<String, Value>,
}

impl StepFailure {
    /// A failure another attempt cannot fix.
    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable: false,
            retry_after_ms: None,
            output: Map::new(),
        }
    }

    /// A failure another attempt may fix.
    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(code, message)
        }
    }
}

/// Checks what a reply to `action` adds to a saga's context (`output`, on success or failure)
/// against `known` (the saga's input and context so far): only the fields `action` may produce
/// ([`Action::output_keys`]), each with a value of the right shape and within bounds, and none
/// changing a value the saga already holds (a later step cannot change the customer). A reply
/// that fails this is not applied.
pub fn check_output(
    action: Action,
    output: &Map<String, Value>,
    known: &Map<String, Value>,
) -> Result<(), String> {
    for (key, value) in output {
        if !action.output_keys().contains(&key.as_str()) {
            return Err(format!("{} does not produce {key:?}", action.name()));
        }
        if !valid_output_value(key, value) {
            return Err(format!(
                "{key} = {value} is out of bounds for {}",
                action.name()
            ));
        }
        if let Some(held) = known.get(key)
            && held != value
        {
            return Err(format!(
                "{} may not change {key} from {held} to {value}",
                action.name()
            ));
        }
    }
    Ok(())
}

fn valid_output_value(key: &str, value: &Value) -> bool {
    let text = value.as_str();
    let number = value.as_i64();
    let short_text =
        |max: usize| text.is_some_and(|t| !t.trim().is_empty() && t.chars().count() <= max);
    match key {
        "customer_id" => text.is_some_and(|t| t.parse::<CustomerId>().is_ok()),
        "mission_title" | "gift_name" => short_text(200),
        "reward_points" | "price_points" => number.is_some_and(|n| (1..=1_000_000).contains(&n)),
        "reward_id" | "notification_id" => text.is_some_and(|t| uuid::Uuid::parse_str(t).is_ok()),
        "telegram_message_id" => number.is_some(),
        "notification_status" => {
            text.is_some_and(|t| matches!(t, "pending" | "sent" | "failed" | "queued"))
        }
        "voucher_code" => text.is_some_and(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }),
        _ => false,
    }
}

/// Serializes a typed output into the map a [`Reply::Succeeded`] carries.
pub fn output_of<T: Serialize>(output: &T) -> Map<String, Value> {
    match serde_json::to_value(output) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// What `mission.complete` adds to the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissionCompletedV1 {
    /// The mission's owner.
    pub customer_id: CustomerId,
    /// The mission's title.
    pub mission_title: String,
    /// The points the mission pays.
    pub reward_points: i64,
}

/// What `reward.grant` adds to the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardGrantedV1 {
    /// The new reward.
    pub reward_id: RewardId,
}

/// What `gift.reserve` adds to the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GiftReservedV1 {
    /// The gift's name.
    pub gift_name: String,
    /// What it costs, in points.
    pub price_points: i64,
}

/// What `gift.issue` adds to the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GiftIssuedV1 {
    /// The voucher the customer redeems.
    pub voucher_code: String,
}

/// How the customer was told about a gift: at once (`sent`), or through the queue because
/// Telegram did not answer in time (`queued`; delivered exactly once when it is back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiftNotificationStatus {
    /// Telegram accepted the message during the step.
    Sent,
    /// The message waits on JetStream for the asynchronous path.
    Queued,
}

/// What `gift.notify` adds to the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GiftNotifiedV1 {
    /// `sent` or `queued`.
    pub notification_status: GiftNotificationStatus,
    /// The telegram service's notification, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_id: Option<NotificationId>,
}

/// What `telegram.send` adds to the context (on success, and on failure where it got that far).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotificationOutcomeV1 {
    /// The stored notification.
    pub notification_id: NotificationId,
    /// `sent` or `failed`.
    pub notification_status: NotificationStatus,
    /// Telegram's `message_id`, when it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram_message_id: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn outputs_are_checked_against_what_the_action_may_produce() {
        let none = Map::new();
        let completed =
            map(json!({"customer_id": "p1", "mission_title": "Slay", "reward_points": 10}));
        assert_eq!(
            check_output(Action::CompleteMission, &completed, &none),
            Ok(())
        );
        let too_rich = map(json!({"customer_id": "p1", "reward_points": 999_999_999}));
        assert!(check_output(Action::CompleteMission, &too_rich, &none).is_err());
        let stranger = map(json!({"customer_id": "p1"}));
        assert!(
            check_output(Action::GrantReward, &stranger, &none).is_err(),
            "reward.grant does not name the customer"
        );
        let known = map(json!({"customer_id": "p1", "reward_points": 10}));
        let hijack = map(json!({"customer_id": "attacker"}));
        assert!(check_output(Action::CompleteMission, &hijack, &known).is_err());
        assert_eq!(
            check_output(Action::CompleteMission, &stranger, &known),
            Ok(())
        );
        let bad_id = map(json!({"reward_id": "not-a-uuid"}));
        assert!(check_output(Action::GrantReward, &bad_id, &none).is_err());
        let voucher = map(json!({"voucher_code": "ABCD-EFGH-JKMN-PQRS"}));
        assert_eq!(check_output(Action::IssueGift, &voucher, &none), Ok(()));
        let queued = map(json!({"notification_status": "queued"}));
        assert_eq!(check_output(Action::NotifyGift, &queued, &none), Ok(()));
        assert!(check_output(Action::ReopenMission, &queued, &none).is_err());
    }
}
