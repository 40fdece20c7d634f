//! Replies from a worker to the orchestrator: a step succeeded (with the output it adds to the
//! saga's context) or failed (retryable or not, with Telegram's `retry_after` where it gave one),
//! and the typed outputs each action produces.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::command::NotificationStatus;
use crate::{CustomerId, NotificationId, RewardId};

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
