//! Typed identifiers, parsed at the edges so that a `MissionId` can never be passed where a
//! `RewardId` is meant. Uuid-based ids are v7 (time-ordered) when minted here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_id!(
    /// One saga instance.
    SagaId
);
uuid_id!(
    /// One message on JetStream (command, reply or event); the key of every inbox.
    MessageId
);
uuid_id!(
    /// A mission, owned by the mission worker.
    MissionId
);
uuid_id!(
    /// A reward, owned by the reward worker.
    RewardId
);
uuid_id!(
    /// A notification row, owned by the telegram worker.
    NotificationId
);
uuid_id!(
    /// A gift of the catalogue, owned by the gift worker.
    GiftId
);

/// Namespace of the deterministic message ids (uuid v5) derived below.
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_5a0e_93f4_4b8e_a3c2_7f0e_52b1_d9a4);

impl MessageId {
    /// The id of a saga's command for one attempt of one step in one phase. It is derived, not
    /// drawn, so that a re-send after a timeout carries the same id and the worker's inbox turns
    /// it into a re-send of the stored reply instead of a second effect.
    pub fn for_command(saga: SagaId, step_index: u16, phase: crate::Phase, attempt: u32) -> Self {
        let name = format!("{}:{}:{}:{}", saga.0, phase.as_str(), step_index, attempt);
        Self(Uuid::new_v5(&MESSAGE_NAMESPACE, name.as_bytes()))
    }

    /// The id of the reply to a command: one command has exactly one reply id, however often it
    /// is re-sent.
    pub fn for_reply(command: MessageId) -> Self {
        let name = format!("reply:{}", command.0);
        Self(Uuid::new_v5(&MESSAGE_NAMESPACE, name.as_bytes()))
    }
}

/// A player of the game. Opaque text from the game backend: 1 to 64 characters of letters,
/// digits, `-`, `_`, `.` or `:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

/// Why a text is not a valid [`CustomerId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("customer_id must be 1 to 64 characters of letters, digits, '-', '_', '.' or ':'")]
pub struct InvalidCustomerId;

impl CustomerId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = InvalidCustomerId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let valid = !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if valid {
            Ok(Self(value))
        } else {
            Err(InvalidCustomerId)
        }
    }
}

impl FromStr for CustomerId {
    type Err = InvalidCustomerId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<CustomerId> for String {
    fn from(id: CustomerId) -> Self {
        id.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Phase;

    #[test]
    fn command_ids_are_stable_per_attempt_and_distinct_across_attempts() {
        let saga = SagaId::new();
        let first = MessageId::for_command(saga, 1, Phase::Forward, 1);
        assert_eq!(first, MessageId::for_command(saga, 1, Phase::Forward, 1));
        assert_ne!(first, MessageId::for_command(saga, 1, Phase::Forward, 2));
        assert_ne!(first, MessageId::for_command(saga, 1, Phase::Compensate, 1));
        assert_ne!(
            first,
            MessageId::for_command(SagaId::new(), 1, Phase::Forward, 1)
        );
        assert_ne!(MessageId::for_reply(first), first);
    }

    #[test]
    fn customer_ids_are_checked() {
        assert!("player-42".parse::<CustomerId>().is_ok());
        assert!("".parse::<CustomerId>().is_err());
        assert!("a b".parse::<CustomerId>().is_err());
        assert!("x".repeat(65).parse::<CustomerId>().is_err());
        let parsed: Result<CustomerId, _> = serde_json::from_str("\"has space\"");
        assert!(parsed.is_err());
    }
}
