//! The envelope every saga message travels in. The body is JSON; the envelope's `headers` (W3C
//! `traceparent`, `tracestate`) travel as NATS message headers so that any consumer can continue
//! the trace without decoding the body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{MessageId, SagaId};

/// Which way a saga is moving when it sends a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A forward step.
    Forward,
    /// The compensation of a completed step.
    Compensate,
}

impl Phase {
    /// The phase as text.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Compensate => "compensate",
        }
    }
}

/// A saga message: who it belongs to, which step and attempt, and its body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// The message's own id; every inbox deduplicates on it.
    pub message_id: MessageId,
    /// For a reply: the id of the command it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<MessageId>,
    /// The saga this message belongs to.
    pub saga_id: SagaId,
    /// The saga's type (`mission_reward`); replies go to `reply.<saga_type>`.
    pub saga_type: String,
    /// The step's name (`reward.grant`), or the compensation's action name.
    pub step: String,
    /// The step's position in its saga definition.
    pub step_index: u16,
    /// Forward step or compensation.
    pub phase: Phase,
    /// 1 for the first attempt; a re-send after a timeout keeps the attempt (and message id).
    pub attempt: u32,
    /// When the orchestrator first sent this attempt's command (a reply carries it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Trace-context headers (`traceparent`, `tracestate`); carried as NATS headers.
    #[serde(skip)]
    pub headers: BTreeMap<String, String>,
    /// The command or reply.
    pub body: B,
}

impl<B> Envelope<B> {
    /// The envelope of the reply to this message: same saga, step, phase and attempt, a reply id
    /// derived from this message's id, the same trace headers.
    pub fn reply<R>(&self, body: R) -> Envelope<R> {
        Envelope {
            message_id: MessageId::for_reply(self.message_id),
            correlation_id: Some(self.message_id),
            saga_id: self.saga_id,
            saga_type: self.saga_type.clone(),
            step: self.step.clone(),
            step_index: self.step_index,
            phase: self.phase,
            attempt: self.attempt,
            sent_at: self.sent_at,
            headers: self.headers.clone(),
            body,
        }
    }
}
