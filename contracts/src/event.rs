//! Domain events published on `DOMAIN_EVT` for projections (Mypage) and other readers. They
//! describe what happened in a bounded context; nothing in the saga depends on them.

use serde::{Deserialize, Serialize};

use crate::command::NotificationStatus;
use crate::{CustomerId, MissionId, NotificationId, RewardId, SagaId};

/// A domain event, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DomainEvent {
    /// A mission changed (`MissionUpdated` of the original system).
    #[serde(rename = "MissionUpdated.v1")]
    MissionUpdated(MissionUpdatedV1),
    /// The customer was (or could not be) told (`MessageUpdated` of the original system).
    #[serde(rename = "MessageUpdated.v1")]
    MessageUpdated(MessageUpdatedV1),
    /// A saga reached a terminal state.
    #[serde(rename = "SagaFinished.v1")]
    SagaFinished(SagaFinishedV1),
}

impl DomainEvent {
    /// The bounded context that publishes the event and the event's name: the last two tokens
    /// of its subject.
    pub fn subject_tokens(&self) -> (&'static str, &'static str) {
        match self {
            DomainEvent::MissionUpdated(_) => ("mission", "MissionUpdated"),
            DomainEvent::MessageUpdated(_) => ("mission", "MessageUpdated"),
            DomainEvent::SagaFinished(_) => ("saga", "SagaFinished"),
        }
    }
}

/// `MissionUpdated {id, status, rewardId, customerId}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissionUpdatedV1 {
    /// The mission.
    pub id: MissionId,
    /// `OPEN`, `COMPLETED` or `REWARDED`.
    pub status: String,
    /// The attached reward, if any.
    pub reward_id: Option<RewardId>,
    /// The mission's owner.
    pub customer_id: CustomerId,
}

/// `MessageUpdated {id, missionId}`, plus whether the message went out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageUpdatedV1 {
    /// The notification.
    pub id: Option<NotificationId>,
    /// The mission it was about.
    pub mission_id: MissionId,
    /// Whether it reached the customer.
    pub status: NotificationStatus,
}

/// A saga ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaFinishedV1 {
    /// The saga.
    pub saga_id: SagaId,
    /// Its type.
    pub saga_type: String,
    /// `completed`, `compensated` or `failed`.
    pub state: String,
}
