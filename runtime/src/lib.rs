//! The process runtime every service of the platform shares: configuration loading, the
//! PostgreSQL pool (one schema per service), the JetStream topology and message codec, the
//! transactional outbox and its relay, dead letters, RFC 9457 problem responses, health routes,
//! logging and the shutdown signal. Nothing saga-specific lives here.

pub mod auth;
pub mod config;
pub mod consume;
pub mod db;
pub mod dead_letter;
pub mod edge;
pub mod http;
pub mod jetstream;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod problem;
pub mod shutdown;
pub mod telemetry;

pub use problem::{ApiError, ApiJson};
