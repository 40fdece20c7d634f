//! The workers of the saga platform: a small runtime (durable pull consumer, inbox row in the
//! same transaction as the domain write, reply publishing through the outbox, retryable vs
//! fatal errors) and one worker per bounded context: mission, reward, telegram. Plus a
//! Telegram Bot API stand-in for local runs and tests.

pub mod mission;
pub mod reward;
pub mod runtime;
pub mod telegram;
pub mod telegram_stand_in;
