//! The circuit breaker around the gift worker's whole guarded call to the telegram service
//! (failsafe: a breaker only; the retries and timeouts are the notifier's). After
//! `failures` guarded calls in a row failed, it opens for `open`: calls are refused at once and
//! the message goes to the queue. Then it lets calls through again (half open); the first
//! success closes it, a failure opens it again.
//!
//! Its state and transitions are metrics, through failsafe's [`Instrument`] hooks:
//! [`GIFT_NOTIFY_BREAKER_OPEN`] (1 from opening until a call is let through again) and
//! [`GIFT_NOTIFY_BREAKER_TRANSITIONS`] by `to`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use failsafe::Instrument;
use failsafe::backoff::Constant;
use failsafe::failure_policy::ConsecutiveFailures;
use runtime::metrics::{GIFT_NOTIFY_BREAKER_OPEN, GIFT_NOTIFY_BREAKER_TRANSITIONS};

/// The breaker.
pub type Breaker = failsafe::StateMachine<ConsecutiveFailures<Constant>, BreakerMetrics>;

/// A breaker that opens after `failures` consecutive failures, for `open`.
pub fn breaker(failures: u32, open: Duration) -> Breaker {
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            failures.max(1),
            failsafe::backoff::constant(open),
        ))
        .instrument(BreakerMetrics::default())
        .build()
}

/// Records the breaker's state and transitions as metrics.
#[derive(Debug, Default)]
pub struct BreakerMetrics {
    /// failsafe reports `closed` when the breaker is built: that is not a transition.
    built: AtomicBool,
}

impl BreakerMetrics {
    fn transition(to: &'static str) {
        metrics::counter!(GIFT_NOTIFY_BREAKER_TRANSITIONS, "to" => to).increment(1);
    }
}

impl Instrument for BreakerMetrics {
    fn on_call_rejected(&self) {
        metrics::gauge!(GIFT_NOTIFY_BREAKER_OPEN).set(1.0);
    }

    fn on_open(&self) {
        tracing::warn!("the telegram service keeps failing: gift messages are queued");
        metrics::gauge!(GIFT_NOTIFY_BREAKER_OPEN).set(1.0);
        Self::transition("open");
    }

    fn on_half_open(&self) {
        tracing::info!("trying the telegram service again");
        metrics::gauge!(GIFT_NOTIFY_BREAKER_OPEN).set(0.0);
        Self::transition("half_open");
    }

    fn on_closed(&self) {
        // Being built is not closing: it leaves the gauge alone (another breaker of the
        // process, in a test, may be open).
        if self.built.swap(true, Ordering::SeqCst) {
            tracing::info!("the telegram service answers again: gift messages are sent at once");
            metrics::gauge!(GIFT_NOTIFY_BREAKER_OPEN).set(0.0);
            Self::transition("closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_consecutive_failures_and_closes_after_a_success() {
        let breaker = breaker(2, Duration::from_millis(50));
        assert!(breaker.is_call_permitted());
        breaker.on_error();
        assert!(breaker.is_call_permitted(), "one failure is not enough");
        breaker.on_success();
        breaker.on_error();
        assert!(breaker.is_call_permitted(), "a success resets the count");
        breaker.on_error();
        assert!(!breaker.is_call_permitted(), "open");
        std::thread::sleep(Duration::from_millis(80));
        assert!(breaker.is_call_permitted(), "half open");
        breaker.on_error();
        assert!(!breaker.is_call_permitted(), "open again");
        std::thread::sleep(Duration::from_millis(80));
        assert!(breaker.is_call_permitted(), "half open");
        breaker.on_success();
        assert!(breaker.is_call_permitted(), "closed");
        breaker.on_error();
        assert!(
            breaker.is_call_permitted(),
            "closed: counting again from zero"
        );
    }
}
