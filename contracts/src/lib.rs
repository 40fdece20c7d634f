//! The contracts every service of the saga platform shares, and nothing else: typed ids, the
//! JetStream topology (stream names and subjects), the message envelope, and the versioned
//! command, reply and domain-event types. No I/O lives here; every crate depends on this one.
//!
//! Compatibility rule: message types are `#[serde(tag = "type")]` enums whose variants carry a
//! version suffix (`mission.complete.v1`); a change is either additive (a new optional field) or
//! a new variant, never an edit of an existing one.

pub mod action;
pub mod command;
pub mod envelope;
pub mod event;
pub mod ids;
pub mod reply;
pub mod topology;

pub use action::{Action, Worker};
pub use command::Command;
pub use envelope::{Envelope, Phase};
pub use event::{DomainEvent, EventEnvelope};
pub use ids::{CustomerId, GiftId, MessageId, MissionId, NotificationId, RewardId, SagaId};
pub use reply::{Reply, StepFailure};
pub use topology::Topology;
