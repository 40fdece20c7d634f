//! Stream names and subjects of the platform's JetStream layout, optionally under a prefix so
//! that several platforms (or tests) share one nats-server without seeing each other.
//!
//! | stream       | subjects        | retention  | read by                                   |
//! |--------------|-----------------|------------|-------------------------------------------|
//! | `SAGA_CMD`   | `cmd.<worker>.<verb>` | work queue | one durable pull consumer per worker |
//! | `SAGA_REPLY` | `reply.<saga_type>.<worker>` | work queue | one durable consumer, all orchestrators |
//! | `DOMAIN_EVT` | `evt.<context>.<event>` | limits   | projections (replayable)                |
//! | `DLQ`        | `dlq.<original subject>` | limits  | operators                               |
//! | `NOTIFY`     | `notify.<channel>`    | work queue | the channel's sender (telegram)          |

use crate::{Action, Worker};

/// The streams of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Commands from the orchestrator to the workers.
    Commands,
    /// Replies from the workers to the orchestrator.
    Replies,
    /// Domain events, replayable.
    Events,
    /// Dead letters: messages no consumer could handle, with the reason.
    DeadLetters,
    /// Messages queued for a channel (Telegram) when the synchronous call could not deliver
    /// them: the asynchronous path delivers each exactly once.
    Notifications,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 5] = [
        Stream::Commands,
        Stream::Replies,
        Stream::Events,
        Stream::DeadLetters,
        Stream::Notifications,
    ];

    fn base_name(self) -> &'static str {
        match self {
            Stream::Commands => "SAGA_CMD",
            Stream::Replies => "SAGA_REPLY",
            Stream::Events => "DOMAIN_EVT",
            Stream::DeadLetters => "DLQ",
            Stream::Notifications => "NOTIFY",
        }
    }

    fn subject_root(self) -> &'static str {
        match self {
            Stream::Commands => "cmd",
            Stream::Replies => "reply",
            Stream::Events => "evt",
            Stream::DeadLetters => "dlq",
            Stream::Notifications => "notify",
        }
    }
}

/// Names the streams and subjects under one prefix (empty in production).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    /// A topology under `prefix`. Characters other than ASCII letters and digits are dropped so
    /// that the prefix is valid in both stream names and subject tokens.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.chars().filter(char::is_ascii_alphanumeric).collect(),
        }
    }

    /// The prefix in use (empty when none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn subject(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}.{rest}", self.prefix)
        }
    }

    /// The name of a stream.
    pub fn stream(&self, stream: Stream) -> String {
        if self.prefix.is_empty() {
            stream.base_name().to_owned()
        } else {
            format!(
                "{}_{}",
                self.prefix.to_ascii_uppercase(),
                stream.base_name()
            )
        }
    }

    /// The wildcard subject a stream captures.
    pub fn stream_subjects(&self, stream: Stream) -> String {
        self.subject(&format!("{}.>", stream.subject_root()))
    }

    /// The subject of one action's commands.
    pub fn command_subject(&self, action: Action) -> String {
        self.subject(&format!(
            "cmd.{}.{}",
            action.worker().as_str(),
            action.verb()
        ))
    }

    /// The filter of one worker's durable consumer.
    pub fn worker_commands(&self, worker: Worker) -> String {
        self.subject(&format!("cmd.{}.>", worker.as_str()))
    }

    /// The durable consumer name of a worker.
    pub fn worker_consumer(&self, worker: Worker) -> String {
        format!("worker-{}", worker.as_str())
    }

    /// The subject on which `worker` answers the commands of sagas of `saga_type`: the worker is
    /// part of it, so that NATS permissions let a worker answer only as itself and the
    /// orchestrator can tell who answered.
    pub fn reply_subject(&self, saga_type: &str, worker: Worker) -> String {
        self.subject(&format!("reply.{saga_type}.{}", worker.as_str()))
    }

    /// The saga type and worker a reply subject names, if it is one.
    pub fn parse_reply_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, Worker)> {
        let rest = if self.prefix.is_empty() {
            subject
        } else {
            subject
                .strip_prefix(self.prefix.as_str())?
                .strip_prefix('.')?
        };
        let mut tokens = rest.split('.');
        let (Some("reply"), Some(saga_type), Some(worker), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return None;
        };
        Some((saga_type, Worker::parse(worker)?))
    }

    /// The durable consumer name all orchestrator replicas share.
    pub fn orchestrator_consumer(&self) -> String {
        "orchestrator".to_owned()
    }

    /// The subject of one domain event of one bounded context.
    pub fn event_subject(&self, context: &str, event: &str) -> String {
        self.subject(&format!("evt.{context}.{event}"))
    }

    /// The subject a dead letter of a message first published on `original` is parked under.
    pub fn dead_letter_subject(&self, original: &str) -> String {
        let unprefixed = if self.prefix.is_empty() {
            original
        } else {
            original
                .strip_prefix(&format!("{}.", self.prefix))
                .unwrap_or(original)
        };
        self.subject(&format!("dlq.{unprefixed}"))
    }

    /// The stream a subject of this topology belongs to, if any.
    pub fn stream_of(&self, subject: &str) -> Option<Stream> {
        let rest = if self.prefix.is_empty() {
            subject
        } else {
            subject
                .strip_prefix(self.prefix.as_str())?
                .strip_prefix('.')?
        };
        let root = rest.split('.').next()?;
        Stream::ALL
            .into_iter()
            .find(|s| s.subject_root() == root && rest.len() > root.len() + 1)
    }

    /// The subject of messages queued for one channel (`notify.telegram`).
    pub fn notify_subject(&self, channel: &str) -> String {
        self.subject(&format!("notify.{channel}"))
    }

    /// The core-NATS request subject on which a worker answers look-ups (not a stream).
    pub fn lookup_subject(&self, worker: Worker, what: &str) -> String {
        self.subject(&format!("svc.{}.{what}", worker.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_topology_uses_the_documented_names() {
        let t = Topology::default();
        assert_eq!(t.stream(Stream::Commands), "SAGA_CMD");
        assert_eq!(t.stream_subjects(Stream::Commands), "cmd.>");
        assert_eq!(t.command_subject(Action::GrantReward), "cmd.reward.grant");
        assert_eq!(t.worker_commands(Worker::Mission), "cmd.mission.>");
        assert_eq!(
            t.reply_subject("mission_reward", Worker::Reward),
            "reply.mission_reward.reward"
        );
        assert_eq!(
            t.parse_reply_subject("reply.mission_reward.reward"),
            Some(("mission_reward", Worker::Reward))
        );
        assert_eq!(t.parse_reply_subject("reply.mission_reward"), None);
        assert_eq!(t.parse_reply_subject("reply.mission_reward.nobody"), None);
        assert_eq!(t.parse_reply_subject("reply.a.reward.extra"), None);
        assert_eq!(t.stream_of("cmd.reward.grant"), Some(Stream::Commands));
        assert_eq!(t.stream_of("dlq.cmd.x"), Some(Stream::DeadLetters));
        assert_eq!(t.stream_of("cmd"), None);
        assert_eq!(t.stream_of("$JS.API.STREAM.DELETE.X"), None);
        assert_eq!(
            t.event_subject("mission", "MissionUpdated"),
            "evt.mission.MissionUpdated"
        );
        assert_eq!(
            t.dead_letter_subject("cmd.reward.grant"),
            "dlq.cmd.reward.grant"
        );
    }

    #[test]
    fn prefixed_topology_keeps_everything_apart() {
        let t = Topology::new("t-42x");
        assert_eq!(t.stream(Stream::Replies), "T42X_SAGA_REPLY");
        assert_eq!(t.stream_subjects(Stream::Replies), "t42x.reply.>");
        assert_eq!(
            t.command_subject(Action::SendNotification),
            "t42x.cmd.telegram.send"
        );
        assert_eq!(
            t.dead_letter_subject("t42x.cmd.telegram.send"),
            "t42x.dlq.cmd.telegram.send"
        );
        assert_eq!(
            t.parse_reply_subject("t42x.reply.gift_exchange.gift"),
            Some(("gift_exchange", Worker::Gift))
        );
        assert_eq!(t.parse_reply_subject("reply.gift_exchange.gift"), None);
    }
}
