//! The saga orchestrator: owns every saga's state machine, sends each step to its worker over
//! JetStream, applies the replies, fires the timers, keeps every saga's full history, tells
//! waiting clients when a saga changes state, and serves the HTTP API.

pub mod api;
pub mod app;
pub mod dead_letters;
pub mod definition;
pub mod engine;
pub mod history;
pub mod machine;
pub mod observe;
pub mod retention;
pub mod store;
pub mod strays;
pub mod ui;
pub mod watch;
