//! Every action a worker can perform for a saga. A saga definition names its steps and their
//! compensations by these; the topology derives command subjects from them.

use serde::{Deserialize, Serialize};

/// A worker: one bounded context that owns its data and consumes its own command subjects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worker {
    /// Missions of a customer.
    Mission,
    /// Rewards, wallets and the reward budget.
    Reward,
    /// Telegram chats and notifications.
    Telegram,
}

impl Worker {
    /// Every worker.
    pub const ALL: [Worker; 3] = [Worker::Mission, Worker::Reward, Worker::Telegram];

    /// The worker's name as it appears in subjects and consumer names.
    pub fn as_str(self) -> &'static str {
        match self {
            Worker::Mission => "mission",
            Worker::Reward => "reward",
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
    /// Create the reward and credit the customer's wallet.
    #[serde(rename = "reward.grant")]
    GrantReward,
    /// Undo `reward.grant`: debit the wallet, mark the reward REVOKED.
    #[serde(rename = "reward.revoke")]
    RevokeReward,
    /// Send the customer a Telegram message and store the notification row.
    #[serde(rename = "telegram.send")]
    SendNotification,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::CompleteMission,
        Action::ReopenMission,
        Action::AttachReward,
        Action::DetachReward,
        Action::RecordMessage,
        Action::GrantReward,
        Action::RevokeReward,
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
            Action::SendNotification => "telegram.send",
        }
    }

    /// The `type` tag of this action's current command version.
    pub fn command_type(self) -> &'static str {
        match self {
            Action::CompleteMission => "mission.complete.v1",
            Action::ReopenMission => "mission.reopen.v1",
            Action::AttachReward => "mission.attach_reward.v1",
            Action::DetachReward => "mission.detach_reward.v1",
            Action::RecordMessage => "mission.record_message.v1",
            Action::GrantReward => "reward.grant.v1",
            Action::RevokeReward => "reward.revoke.v1",
            Action::SendNotification => "telegram.send.v1",
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
            assert_eq!(action.command_type(), format!("{}.v1", action.name()));
            assert_eq!(
                serde_json::to_value(action).ok(),
                Some(serde_json::Value::String(action.name().into()))
            );
            assert_eq!(Action::from_name(action.name()), Some(action));
        }
    }
}
