//! Every action a worker can perform for a saga. A saga definition names its steps and their
//! compensations by these; the topology derives command subjects from them.

use serde::{Deserialize, Serialize};

/// A worker: one bounded context that owns its data and consumes its own command subjects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worker {
    /// Missions of a customer.
    Mission,
    /// Rewards granted for missions, and the reward budget.
    Reward,
    /// The customers' balances and their ledger.
    Wallet,
    /// The gift catalogue, reservations and vouchers.
    Gift,
    /// Telegram chats and notifications.
    Telegram,
}

impl Worker {
    /// Every worker.
    pub const ALL: [Worker; 5] = [
        Worker::Mission,
        Worker::Reward,
        Worker::Wallet,
        Worker::Gift,
        Worker::Telegram,
    ];

    /// The worker named `name` in subjects.
    pub fn parse(name: &str) -> Option<Worker> {
        Worker::ALL.into_iter().find(|w| w.as_str() == name)
    }

    /// The worker's name as it appears in subjects and consumer names.
    pub fn as_str(self) -> &'static str {
        match self {
            Worker::Mission => "mission",
            Worker::Reward => "reward",
            Worker::Wallet => "wallet",
            Worker::Gift => "gift",
            Worker::Telegram => "telegram",
        }
    }
}

/// One action of one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Mark the customer's mission COMPLETED.
    #[serde(rename = "mission.complete")]
    CompleteMission,
    /// Undo `mission.complete`: the mission is OPEN again.
    #[serde(rename = "mission.reopen")]
    ReopenMission,
    /// Set the mission's reward and status REWARDED; publishes `MissionUpdated`.
    #[serde(rename = "mission.attach_reward")]
    AttachReward,
    /// Undo `mission.attach_reward`.
    #[serde(rename = "mission.detach_reward")]
    DetachReward,
    /// Record on the mission what the customer was told; publishes `MessageUpdated`.
    #[serde(rename = "mission.record_message")]
    RecordMessage,
    /// Create the reward (version 1 of the command also credits the wallet).
    #[serde(rename = "reward.grant")]
    GrantReward,
    /// Undo `reward.grant`: mark the reward REVOKED (version 1 also debits the wallet).
    #[serde(rename = "reward.revoke")]
    RevokeReward,
    /// Add points to the customer's wallet.
    #[serde(rename = "wallet.credit")]
    CreditWallet,
    /// Take points from the customer's wallet (refused below zero).
    #[serde(rename = "wallet.debit")]
    DebitWallet,
    /// Take one gift from the stock for this saga.
    #[serde(rename = "gift.reserve")]
    ReserveGift,
    /// Undo `gift.reserve`: the gift goes back into the stock.
    #[serde(rename = "gift.release")]
    ReleaseGift,
    /// Issue the reserved gift's voucher.
    #[serde(rename = "gift.issue")]
    IssueGift,
    /// Tell the customer about the voucher (the guarded synchronous call to Telegram).
    #[serde(rename = "gift.notify")]
    NotifyGift,
    /// Send the customer a Telegram message and store the notification row.
    #[serde(rename = "telegram.send")]
    SendNotification,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 14] = [
        Action::CompleteMission,
        Action::ReopenMission,
        Action::AttachReward,
        Action::DetachReward,
        Action::RecordMessage,
        Action::GrantReward,
        Action::RevokeReward,
        Action::CreditWallet,
        Action::DebitWallet,
        Action::ReserveGift,
        Action::ReleaseGift,
        Action::IssueGift,
        Action::NotifyGift,
        Action::SendNotification,
    ];

    /// The worker that performs this action.
    pub fn worker(self) -> Worker {
        match self {
            Action::CompleteMission
            | Action::ReopenMission
            | Action::AttachReward
            | Action::DetachReward
            | Action::RecordMessage => Worker::Mission,
            Action::GrantReward | Action::RevokeReward => Worker::Reward,
            Action::CreditWallet | Action::DebitWallet => Worker::Wallet,
            Action::ReserveGift | Action::ReleaseGift | Action::IssueGift | Action::NotifyGift => {
                Worker::Gift
            }
            Action::SendNotification => Worker::Telegram,
        }
    }

    /// The action's name within its worker (the last token of its subject).
    pub fn verb(self) -> &'static str {
        match self {
            Action::CompleteMission => "complete",
            Action::ReopenMission => "reopen",
            Action::AttachReward => "attach_reward",
            Action::DetachReward => "detach_reward",
            Action::RecordMessage => "record_message",
            Action::GrantReward => "grant",
            Action::RevokeReward => "revoke",
            Action::CreditWallet => "credit",
            Action::DebitWallet => "debit",
            Action::ReserveGift => "reserve",
            Action::ReleaseGift => "release",
            Action::IssueGift => "issue",
            Action::NotifyGift => "notify",
            Action::SendNotification => "send",
        }
    }

    /// `worker.verb`, the name a step carries in the API (`reward.grant`).
    pub fn name(self) -> &'static str {
        match self {
            Action::CompleteMission => "mission.complete",
            Action::ReopenMission => "mission.reopen",
            Action::AttachReward => "mission.attach_reward",
            Action::DetachReward => "mission.detach_reward",
            Action::RecordMessage => "mission.record_message",
            Action::GrantReward => "reward.grant",
            Action::RevokeReward => "reward.revoke",
            Action::CreditWallet => "wallet.credit",
            Action::DebitWallet => "wallet.debit",
            Action::ReserveGift => "gift.reserve",
            Action::ReleaseGift => "gift.release",
            Action::IssueGift => "gift.issue",
            Action::NotifyGift => "gift.notify",
            Action::SendNotification => "telegram.send",
        }
    }

    /// The `type` tag of one version of this action's command (`reward.grant.v2`).
    pub fn command_type(self, version: u16) -> String {
        format!("{}.v{version}", self.name())
    }

    /// The context fields a reply to this action may carry in its `output` (see
    /// [`crate::reply::check_output`]).
    pub fn output_keys(self) -> &'static [&'static str] {
        match self {
            Action::CompleteMission => &["customer_id", "mission_title", "reward_points"],
            Action::GrantReward => &["reward_id"],
            Action::ReserveGift => &["gift_name", "price_points"],
            Action::IssueGift => &["voucher_code"],
            Action::NotifyGift => &["notification_status", "notification_id"],
            Action::SendNotification => &[
                "notification_id",
                "notification_status",
                "telegram_message_id",
            ],
            Action::ReopenMission
            | Action::AttachReward
            | Action::DetachReward
            | Action::RecordMessage
            | Action::RevokeReward
            | Action::CreditWallet
            | Action::DebitWallet
            | Action::ReleaseGift => &[],
        }
    }

    /// Looks an action up by its `worker.verb` name.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_with_worker_and_verb_and_serde() {
        for action in Action::ALL {
            assert_eq!(
                action.name(),
                format!("{}.{}", action.worker().as_str(), action.verb())
            );
            assert_eq!(action.command_type(1), format!("{}.v1", action.name()));
            assert_eq!(
                serde_json::to_value(action).ok(),
                Some(serde_json::Value::String(action.name().into()))
            );
            assert_eq!(Action::from_name(action.name()), Some(action));
        }
    }
}
