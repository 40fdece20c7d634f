//! The saga orchestrator: owns every saga's state machine, sends each step to its worker over
//! JetStream, applies the replies, fires the timers, and serves the HTTP API.

pub mod definition;
pub mod machine;
