//! Commands the orchestrator sends to the workers, one `...V1` struct per action. The
//! orchestrator builds a command from the saga's input and context (one flat JSON object with a
//! `type` tag), so a field a step needs is named the same as the output field that produced it.

use serde::{Deserialize, Serialize};

use crate::{Action, CustomerId, GiftId, MissionId, NotificationId, RewardId};

/// A command to a worker, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    /// `mission.complete.v1`
    #[serde(rename = "mission.complete.v1")]
    CompleteMission(CompleteMissionV1),
    /// `mission.reopen.v1`
    #[serde(rename = "mission.reopen.v1")]
    ReopenMission(ReopenMissionV1),
    /// `mission.attach_reward.v1`
    #[serde(rename = "mission.attach_reward.v1")]
    AttachReward(AttachRewardV1),
    /// `mission.detach_reward.v1`
    #[serde(rename = "mission.detach_reward.v1")]
    DetachReward(DetachRewardV1),
    /// `mission.record_message.v1`
    #[serde(rename = "mission.record_message.v1")]
    RecordMessage(RecordMessageV1),
    /// `reward.grant.v1`: create the reward and credit the wallet (`mission_reward` v1, from
    /// before the wallet was a context of its own).
    #[serde(rename = "reward.grant.v1")]
    GrantReward(GrantRewardV1),
    /// `reward.grant.v2`: create the reward only; the saga's `wallet.credit` step pays it.
    #[serde(rename = "reward.grant.v2")]
    GrantRewardV2(GrantRewardV1),
    /// `reward.revoke.v1`: revoke the reward and debit the wallet.
    #[serde(rename = "reward.revoke.v1")]
    RevokeReward(RevokeRewardV1),
    /// `reward.revoke.v2`: revoke the reward only; `wallet.debit` takes the points back.
    #[serde(rename = "reward.revoke.v2")]
    RevokeRewardV2(RevokeRewardV1),
    /// `wallet.credit.v1`
    #[serde(rename = "wallet.credit.v1")]
    CreditWallet(MovePointsV1),
    /// `wallet.debit.v1`
    #[serde(rename = "wallet.debit.v1")]
    DebitWallet(MovePointsV1),
    /// `gift.reserve.v1`
    #[serde(rename = "gift.reserve.v1")]
    ReserveGift(ReserveGiftV1),
    /// `gift.release.v1`
    #[serde(rename = "gift.release.v1")]
    ReleaseGift(ReleaseGiftV1),
    /// `gift.issue.v1`
    #[serde(rename = "gift.issue.v1")]
    IssueGift(IssueGiftV1),
    /// `gift.notify.v1`
    #[serde(rename = "gift.notify.v1")]
    NotifyGift(NotifyGiftV1),
    /// `telegram.send.v1`
    #[serde(rename = "telegram.send.v1")]
    SendNotification(SendNotificationV1),
}

impl Command {
    /// The action this command asks for.
    pub fn action(&self) -> Action {
        match self {
            Command::CompleteMission(_) => Action::CompleteMission,
            Command::ReopenMission(_) => Action::ReopenMission,
            Command::AttachReward(_) => Action::AttachReward,
            Command::DetachReward(_) => Action::DetachReward,
            Command::RecordMessage(_) => Action::RecordMessage,
            Command::GrantReward(_) | Command::GrantRewardV2(_) => Action::GrantReward,
            Command::RevokeReward(_) | Command::RevokeRewardV2(_) => Action::RevokeReward,
            Command::CreditWallet(_) => Action::CreditWallet,
            Command::DebitWallet(_) => Action::DebitWallet,
            Command::ReserveGift(_) => Action::ReserveGift,
            Command::ReleaseGift(_) => Action::ReleaseGift,
            Command::IssueGift(_) => Action::IssueGift,
            Command::NotifyGift(_) => Action::NotifyGift,
            Command::SendNotification(_) => Action::SendNotification,
        }
    }
}

/// Mark the mission COMPLETED for this saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompleteMissionV1 {
    /// The mission.
    pub mission_id: MissionId,
}

/// Reopen a mission this saga completed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReopenMissionV1 {
    /// The mission.
    pub mission_id: MissionId,
}

/// Attach the granted reward to the mission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttachRewardV1 {
    /// The mission.
    pub mission_id: MissionId,
    /// The reward `reward.grant` produced.
    pub reward_id: RewardId,
}

/// Detach a reward this saga attached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetachRewardV1 {
    /// The mission.
    pub mission_id: MissionId,
    /// The reward to detach.
    pub reward_id: RewardId,
}

/// Record on the mission what the customer was told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordMessageV1 {
    /// The mission.
    pub mission_id: MissionId,
    /// The notification `telegram.send` stored, when it got that far.
    #[serde(default)]
    pub notification_id: Option<NotificationId>,
    /// `sent` or `failed`; absent when the telegram step never answered.
    #[serde(default)]
    pub notification_status: Option<NotificationStatus>,
}

/// Create the reward for a completed mission and credit the wallet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrantRewardV1 {
    /// The mission the reward is for.
    pub mission_id: MissionId,
    /// The customer to credit.
    pub customer_id: CustomerId,
    /// How many points.
    pub reward_points: i64,
}

/// Revoke a reward: debit the wallet, mark it REVOKED.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevokeRewardV1 {
    /// The reward to revoke.
    pub reward_id: RewardId,
}

/// Move points into (`wallet.credit`) or out of (`wallet.debit`) a customer's wallet. The
/// wallet books it once per saga, step and direction, however often the command comes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MovePointsV1 {
    /// Whose wallet.
    pub customer_id: CustomerId,
    /// How many points (positive).
    pub points: i64,
}

/// Take one gift out of the stock for this saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReserveGiftV1 {
    /// The gift.
    pub gift_id: GiftId,
    /// Who takes it.
    pub customer_id: CustomerId,
}

/// Put the gift this saga reserved back into the stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseGiftV1 {
    /// The gift.
    pub gift_id: GiftId,
}

/// Issue the voucher of the gift this saga reserved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IssueGiftV1 {
    /// The gift.
    pub gift_id: GiftId,
    /// Who gets the voucher.
    pub customer_id: CustomerId,
}

/// Tell the customer about their voucher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotifyGiftV1 {
    /// The gift.
    pub gift_id: GiftId,
    /// Whom to tell.
    pub customer_id: CustomerId,
    /// The gift's name, named in the message.
    pub gift_name: String,
    /// The voucher `gift.issue` produced.
    pub voucher_code: String,
}

/// Tell the customer on Telegram that the mission's reward was paid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendNotificationV1 {
    /// The mission.
    pub mission_id: MissionId,
    /// Whom to tell.
    pub customer_id: CustomerId,
    /// The mission's title, named in the message.
    pub mission_title: String,
    /// The points paid.
    pub reward_points: i64,
}

/// Whether a notification reached the customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// Waiting for its first successful send.
    Pending,
    /// Telegram accepted it.
    Sent,
    /// It could not be delivered (permanent error, or retries exhausted).
    Failed,
}

impl NotificationStatus {
    /// The status as text.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Sent => "sent",
            NotificationStatus::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_flat_context_object_parses_into_the_tagged_command() {
        let mission_id = MissionId::new();
        let reward_id = RewardId::new();
        let raw = json!({
            "type": "mission.attach_reward.v1",
            "mission_id": mission_id,
            "reward_id": reward_id,
            "customer_id": "p1",
            "unrelated": 7
        });
        let command: Command = serde_json::from_value(raw).expect("parses");
        assert_eq!(
            command,
            Command::AttachReward(AttachRewardV1 {
                mission_id,
                reward_id
            })
        );
        assert_eq!(command.action(), Action::AttachReward);
    }

    #[test]
    fn a_missing_field_is_an_error() {
        let raw = json!({"type": "reward.grant.v1", "mission_id": MissionId::new()});
        assert!(serde_json::from_value::<Command>(raw).is_err());
    }
}
