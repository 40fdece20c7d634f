//! Metrics: one Prometheus recorder per process, rendered at `GET /metrics` in the text
//! exposition format, with histogram buckets sized for saga latencies. The metric names every
//! service records are listed here, so that dashboards and alerts have one place to look.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Sagas started, by `saga_type`.
pub const SAGAS_STARTED: &str = "saga_started_total";
/// Sagas that reached a terminal state, by `saga_type` and `outcome`.
pub const SAGAS_FINISHED: &str = "saga_finished_total";
/// From creation to the terminal state, by `saga_type` and `outcome`.
pub const SAGA_DURATION: &str = "saga_duration_seconds";
/// From a step's first attempt to its success or final failure, by `step` and `outcome`.
pub const STEP_DURATION: &str = "saga_step_duration_seconds";
/// Attempts after the first, by `step`.
pub const STEP_RETRIES: &str = "saga_step_retries_total";
/// Compensations that finished, by `step` (the compensating action) and `outcome`.
pub const COMPENSATIONS: &str = "saga_compensations_total";
/// Messages parked on the dead-letter stream, by `consumer`.
pub const DEAD_LETTERS: &str = "saga_dead_letters_total";
/// Outbox rows not yet acknowledged by JetStream, by `service`.
pub const OUTBOX_BACKLOG: &str = "saga_outbox_backlog";
/// Sagas not in a terminal state, plus parked (`failed`) ones, by `state`.
pub const SAGAS_ACTIVE: &str = "saga_active";
/// Seconds since the least recently changed running or compensating saga last changed: a
/// stuck saga makes it grow.
pub const OLDEST_ACTIVE: &str = "saga_oldest_active_seconds";
/// How late timers fired.
pub const TIMER_LAG: &str = "saga_timer_lag_seconds";
/// Messages waiting for or held by a durable consumer, by `consumer`.
pub const CONSUMER_PENDING: &str = "saga_consumer_pending";
/// Telegram `sendMessage` calls, by `result` (`sent` or the failure code).
pub const TELEGRAM_CALLS: &str = "saga_telegram_calls_total";
/// The Telegram circuit breaker: 0 closed, 1 open.
pub const TELEGRAM_CIRCUIT_OPEN: &str = "saga_telegram_circuit_open";
/// Messages of the `notify.telegram` queue the telegram worker settled, by `result`: `sent`,
/// `already_sent` and `already_failed` (a redelivery under a key already settled: acked, not
/// sent again), `failed` (refused for good: acked), `retry` (Telegram failing or its breaker
/// open: handed back with a delay), `dead_letter` (undecodable, a reused key, or out of
/// deliveries).
pub const TELEGRAM_QUEUED_DELIVERIES: &str = "saga_telegram_queued_deliveries_total";
/// The gift worker's circuit breaker around its call to the telegram service: 1 from the
/// moment it opens until it lets a call through again, else 0.
pub const GIFT_NOTIFY_BREAKER_OPEN: &str = "saga_gift_notify_breaker_open";
/// Transitions of the gift worker's circuit breaker, by `to` (`open`, `half_open`, `closed`).
pub const GIFT_NOTIFY_BREAKER_TRANSITIONS: &str = "saga_gift_notify_breaker_transitions_total";
/// Gift messages queued on `notify.telegram` by the fallback instead of being sent during the
/// step, by `reason` (`breaker_open`: not called at all; `call_failed`: the call and its
/// retries failed).
pub const GIFT_NOTIFY_QUEUED: &str = "saga_gift_notify_queued_total";
/// The gift worker's guarded call to the telegram service (breaker, retries and timeouts
/// included), by `outcome`: `sent`, `refused` (a permanent answer), `failed` (queued after the
/// retries) or `rejected` (the breaker was open: no call was made).
pub const GIFT_NOTIFY_CALL_DURATION: &str = "saga_gift_notify_call_seconds";
/// Domain events a reader skipped because it does not know their type or version, by
/// `consumer` and `event_type`.
pub const EVENTS_SKIPPED: &str = "saga_events_skipped_total";
/// Domain events a reader applied, by `consumer`.
pub const EVENTS_APPLIED: &str = "saga_events_applied_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    if metrics::set_global_recorder(recorder).is_err() {
                        tracing::warn!("a metrics recorder was already installed");
                    }
                    describe();
                    handle
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics disabled");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// The help text of every metric named here (Prometheus' `# HELP` lines).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SAGAS_STARTED, "Sagas started, by saga_type");
    describe_counter!(
        SAGAS_FINISHED,
        "Sagas that reached a terminal state, by saga_type and outcome"
    );
    describe_histogram!(
        SAGA_DURATION,
        Unit::Seconds,
        "From a saga's creation to its terminal state, by saga_type and outcome"
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "From a step's first attempt to its success or final failure, by step and outcome"
    );
    describe_counter!(STEP_RETRIES, "Step attempts after the first, by step");
    describe_counter!(
        COMPENSATIONS,
        "Compensations that finished, by step and outcome"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Messages parked on the dead-letter stream, by consumer"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox rows not yet acknowledged by JetStream, by service"
    );
    describe_gauge!(
        SAGAS_ACTIVE,
        "Sagas not in a terminal state, plus parked (failed) ones, by state"
    );
    describe_gauge!(
        OLDEST_ACTIVE,
        Unit::Seconds,
        "Seconds since the least recently changed running or compensating saga last changed"
    );
    describe_histogram!(TIMER_LAG, Unit::Seconds, "How late timers fired");
    describe_gauge!(
        CONSUMER_PENDING,
        "Messages waiting for or held by a durable consumer, by consumer"
    );
    describe_counter!(
        TELEGRAM_CALLS,
        "Telegram sendMessage calls, by result (sent or the failure code)"
    );
    describe_gauge!(
        TELEGRAM_CIRCUIT_OPEN,
        "The Telegram circuit breaker: 0 closed, 1 open"
    );
    describe_counter!(
        EVENTS_SKIPPED,
        "Domain events a reader skipped (unknown type or version), by consumer and event_type"
    );
    describe_counter!(
        EVENTS_APPLIED,
        "Domain events a reader applied, by consumer"
    );
}

/// `GET /metrics` in the Prometheus text format.
pub fn route() -> Router {
    let handle = handle();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// Every 5 s until `shutdown`, records the outbox backlog of `service` and what waits for
/// its durable consumer.
pub async fn run_gauges(
    service: &'static str,
    publisher: crate::outbox::Publisher,
    consumer: Option<
        async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    >,
    shutdown: CancellationToken,
) {
    loop {
        if let Ok(backlog) = publisher.backlog().await {
            metrics::gauge!(OUTBOX_BACKLOG, "service" => service).set(backlog as f64);
        }
        let info = match &consumer {
            Some(consumer) => consumer.get_info().await.ok(),
            None => None,
        };
        if let Some(info) = info {
            let pending = info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0);
            metrics::gauge!(CONSUMER_PENDING, "consumer" => info.name.clone()).set(pending as f64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Keeps the histograms' windows fresh until `shutdown`.
pub async fn run_upkeep(shutdown: CancellationToken) {
    let handle = handle();
    loop {
        handle.run_upkeep();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
