//! The workers of the saga platform: a small runtime (durable pull consumer, inbox row in the
//! same transaction as the domain write, reply publishing through the outbox, retryable vs
//! fatal errors, the domain-event consumer) and one worker per bounded context: mission,
//! reward, wallet, gift, telegram. Plus a Telegram Bot API stand-in for local runs and tests.
//! Every worker has the same floor plan: `mod.rs` (its command handler), `store.rs` (all of its
//! SQL), `api.rs` (its HTTP routes).

pub mod gift;
pub mod mission;
pub mod mypage;
pub mod reward;
pub mod runtime;
pub mod telegram;
pub mod telegram_stand_in;
pub mod wallet;
