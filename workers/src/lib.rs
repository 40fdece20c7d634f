//! placeholder
pub mod telegram_stand_in;
