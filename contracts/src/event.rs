//! Domain events published on `DOMAIN_EVT` for projections (Mypage) and other readers. They
//! describe what happened in a bounded context; no saga step waits for them.
//!
//! Every event travels in an [`EventEnvelope`]: its own message id (also the `Nats-Msg-Id`, so
//! JetStream drops a second publish), its type and schema version (so that a reader can skip a
//! type it does not know, or a version newer than it understands, without decoding the body),
//! the saga it belongs to, and when it happened. The trace context travels as NATS headers. A
//! service publishes its events through its outbox, in the transaction of the change they
//! report.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::command::NotificationStatus;
use crate::{CustomerId, GiftId, MessageId, MissionId, NotificationId, RewardId, SagaId};

/// A domain event with its envelope, as published on `evt.<context>.<name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The event's own id: readers deduplicate on it (and JetStream on publish).
    pub message_id: MessageId,
    /// The event's name (`MissionUpdated`).
    pub event_type: String,
    /// The schema version of `event` (the `.vN` of its tag).
    pub schema_version: u16,
    /// The saga whose step caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_id: Option<SagaId>,
    /// When the change it reports was made.
    pub occurred_at: DateTime<Utc>,
    /// The event.
    pub event: DomainEvent,
}

impl EventEnvelope {
    /// Wraps `event` with a fresh, time-ordered id.
    pub fn new(event: DomainEvent, saga_id: Option<SagaId>, occurred_at: DateTime<Utc>) -> Self {
        let (name, version) = event.name_and_version();
        Self {
            message_id: MessageId::new(),
            event_type: name.to_owned(),
            schema_version: version,
            saga_id,
            occurred_at,
            event,
        }
    }
}

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
    /// A reward was granted for a mission.
    #[serde(rename = "RewardGranted.v1")]
    RewardGranted(RewardGrantedV1),
    /// A reward was revoked (its saga compensated).
    #[serde(rename = "RewardRevoked.v1")]
    RewardRevoked(RewardRevokedV1),
    /// Points went into a wallet.
    #[serde(rename = "WalletCredited.v1")]
    WalletCredited(WalletMovedV1),
    /// Points went out of a wallet.
    #[serde(rename = "WalletDebited.v1")]
    WalletDebited(WalletMovedV1),
    /// A gift's voucher was issued to a customer.
    #[serde(rename = "GiftIssued.v1")]
    GiftIssued(GiftIssuedV1),
    /// A reserved gift went back into the stock (its exchange compensated).
    #[serde(rename = "GiftReleased.v1")]
    GiftReleased(GiftReleasedV1),
    /// Telegram accepted a notification.
    #[serde(rename = "NotificationSent.v1")]
    NotificationSent(NotificationEventV1),
    /// A notification could not be delivered.
    #[serde(rename = "NotificationFailed.v1")]
    NotificationFailed(NotificationEventV1),
}

impl DomainEvent {
    /// The bounded context that publishes the event and the event's name: the last two tokens
    /// of its subject.
    pub fn subject_tokens(&self) -> (&'static str, &'static str) {
        match self {
            DomainEvent::MissionUpdated(_) => ("mission", "MissionUpdated"),
            DomainEvent::MessageUpdated(_) => ("mission", "MessageUpdated"),
            DomainEvent::SagaFinished(_) => ("saga", "SagaFinished"),
            DomainEvent::RewardGranted(_) => ("reward", "RewardGranted"),
            DomainEvent::RewardRevoked(_) => ("reward", "RewardRevoked"),
            DomainEvent::WalletCredited(_) => ("wallet", "WalletCredited"),
            DomainEvent::WalletDebited(_) => ("wallet", "WalletDebited"),
            DomainEvent::GiftIssued(_) => ("gift", "GiftIssued"),
            DomainEvent::GiftReleased(_) => ("gift", "GiftReleased"),
            DomainEvent::NotificationSent(_) => ("telegram", "NotificationSent"),
            DomainEvent::NotificationFailed(_) => ("telegram", "NotificationFailed"),
        }
    }

    /// The event's name and schema version (`("MissionUpdated", 1)`).
    pub fn name_and_version(&self) -> (&'static str, u16) {
        (self.subject_tokens().1, 1)
    }

    /// Every event name this build knows, with the newest schema version it understands.
    pub const KNOWN: [(&'static str, u16); 11] = [
        ("MissionUpdated", 1),
        ("MessageUpdated", 1),
        ("SagaFinished", 1),
        ("RewardGranted", 1),
        ("RewardRevoked", 1),
        ("WalletCredited", 1),
        ("WalletDebited", 1),
        ("GiftIssued", 1),
        ("GiftReleased", 1),
        ("NotificationSent", 1),
        ("NotificationFailed", 1),
    ];
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

/// A reward was granted (or revoked): who, for which mission, how many points. Version 1 of
/// the grant and revoke commands (`mission_reward` v1) moved the wallet too; their events say
/// so with `moves_wallet`, and the wallet books them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardGrantedV1 {
    /// The reward.
    pub reward_id: RewardId,
    /// The mission it pays for.
    pub mission_id: MissionId,
    /// Who got it.
    pub customer_id: CustomerId,
    /// How many points.
    pub points: i64,
    /// Whether the wallet is to be credited from this event (a version-1 grant).
    #[serde(default)]
    pub moves_wallet: bool,
}

/// A reward was revoked; see [`RewardGrantedV1`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardRevokedV1 {
    /// The reward.
    pub reward_id: RewardId,
    /// The mission it paid for.
    pub mission_id: MissionId,
    /// Who had it.
    pub customer_id: CustomerId,
    /// How many points.
    pub points: i64,
    /// Whether the wallet is to be debited from this event (a version-1 revoke).
    #[serde(default)]
    pub moves_wallet: bool,
}

/// Points moved into or out of a wallet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WalletMovedV1 {
    /// Whose wallet.
    pub customer_id: CustomerId,
    /// How many points (positive).
    pub points: i64,
    /// The balance after the move.
    pub balance: i64,
}

/// A gift's voucher was issued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GiftIssuedV1 {
    /// The gift.
    pub gift_id: GiftId,
    /// Its name.
    pub gift_name: String,
    /// Who got it.
    pub customer_id: CustomerId,
    /// The voucher.
    pub voucher_code: String,
    /// What it cost.
    pub price_points: i64,
}

/// A reserved gift went back into the stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GiftReleasedV1 {
    /// The gift.
    pub gift_id: GiftId,
    /// Who had reserved it.
    pub customer_id: CustomerId,
}

/// A notification's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotificationEventV1 {
    /// The notification.
    pub notification_id: NotificationId,
    /// Whom it was for.
    pub customer_id: CustomerId,
    /// The mission it was about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mission_id: Option<MissionId>,
    /// Telegram's `message_id`, when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram_message_id: Option<i64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_names_its_known_version_and_round_trips_in_its_envelope() {
        let event = DomainEvent::RewardGranted(RewardGrantedV1 {
            reward_id: RewardId::new(),
            mission_id: MissionId::new(),
            customer_id: "p1".parse().expect("valid"),
            points: 5,
            moves_wallet: true,
        });
        let envelope = EventEnvelope::new(event.clone(), Some(SagaId::new()), Utc::now());
        assert_eq!(
            (envelope.event_type.as_str(), envelope.schema_version),
            ("RewardGranted", 1)
        );
        let json = serde_json::to_value(&envelope).expect("encodes");
        assert_eq!(json["event"]["type"], "RewardGranted.v1");
        let back: EventEnvelope = serde_json::from_value(json).expect("decodes");
        assert_eq!(back, envelope);
        assert!(DomainEvent::KNOWN.contains(&event.name_and_version()));
    }
}
