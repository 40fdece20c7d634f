//! The seed's synchronous request/response: the gift worker tells the customer about their
//! voucher by calling the telegram service, `POST {telegram_url}/v1/telegram/messages` with
//! `Idempotency-Key: gift:<saga_id>`, guarded three ways:
//!
//! - a **timeout** per try (`gift_call_timeout_ms`), never past the whole call's budget
//!   (`gift_call_budget_ms`, itself well inside the runtime's call budget);
//! - **retries** with exponential backoff and jitter (backon), honouring the answer's
//!   `Retry-After` (backon's `adjust` hook); a wait that would pass the budget ends the retries;
//! - a **circuit breaker** ([`super::breaker`], failsafe) around the whole guarded call: only
//!   failures another try might fix count against it (a refusal is an answer, not an outage).
//!
//! When the guarded call fails, or the breaker is open, the caller falls back to the queue
//! ([`Notified::Queued`]): the same keyed message goes to `notify.telegram`, and the telegram
//! worker delivers it exactly once when Telegram is back (the key makes a message that the
//! failed call did deliver after all count as delivered). A permanent refusal (no chat linked,
//! the bot blocked, a malformed request) is [`Notified::Refused`], never queued.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable as _};
use contracts::{CustomerId, NotificationId};
use failsafe::futures::CircuitBreaker as _;
use runtime::metrics::{GIFT_NOTIFY_CALL_DURATION, GIFT_NOTIFY_QUEUED};
use serde_json::Value;

use super::GiftSettings;
use super::breaker::{Breaker, breaker};

/// Less than this left of the budget is not worth another try.
const MIN_TRY: Duration = Duration::from_millis(100);

/// The longest `Retry-After` believed (a longer one ends the retries anyway).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Outcomes of the guarded call, as [`GIFT_NOTIFY_CALL_DURATION`] labels them.
const OUTCOMES: [&str; 4] = ["sent", "refused", "failed", "rejected"];

/// Reasons of a fallback, as [`GIFT_NOTIFY_QUEUED`] labels them.
const REASONS: [&str; 2] = ["breaker_open", "call_failed"];

/// What the guarded call came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notified {
    /// The telegram service sent the message (now, or earlier under the same key).
    Sent {
        /// Its notification.
        notification_id: NotificationId,
    },
    /// The telegram service refused the message for good: it is not queued.
    Refused {
        /// Its problem code (`chat_not_linked`, `telegram_forbidden`, ...).
        code: String,
        /// Its problem detail.
        detail: String,
    },
    /// Fall back to the queue: the call failed after its retries, or the breaker is open.
    Queued {
        /// `breaker_open` or `call_failed`.
        reason: &'static str,
        /// The last failure (none when the breaker refused the call).
        failure: Option<CallFailure>,
    },
}

/// Why one try failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFailure {
    /// The telegram service's problem code, or what went wrong on the way.
    pub code: String,
    /// What happened.
    pub detail: String,
    /// Whether another try may succeed (and so whether it counts against the breaker).
    pub retryable: bool,
    /// When the answer said to try again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl CallFailure {
    fn retryable(code: &str, detail: String, retry_after: Option<Duration>) -> Self {
        Self {
            code: code.to_owned(),
            detail,
            retryable: true,
            retry_after,
        }
    }
}

/// Parses a `Retry-After` header given in seconds (the form every service of the platform
/// sends; an HTTP date is ignored).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let seconds: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Maps the telegram service's answer to the sent notification or a failure: `200`/`201` with
/// the notification's `id` is sent; `408`, `429` and `5xx` are retryable (with their
/// `Retry-After`); any other `4xx` is a refusal, with the problem's `code`.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<NotificationId, CallFailure> {
    let answer: Option<Value> = serde_json::from_slice(body).ok();
    let text = |key: &str| {
        answer
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if status == 200 || status == 201 {
        return text("id").and_then(|id| id.parse().ok()).ok_or_else(|| {
            CallFailure::retryable(
                "telegram_service_unreadable",
                format!("the telegram service answered {status} without a notification id"),
                None,
            )
        });
    }
    let code = text("code").unwrap_or_else(|| format!("telegram_service_{status}"));
    let detail = text("detail")
        .unwrap_or_else(|| format!("the telegram service answered {status}"))
        .chars()
        .take(500)
        .collect();
    let retryable = status == 408 || status == 429 || !(400..500).contains(&status);
    Err(CallFailure {
        code,
        detail,
        retryable,
        retry_after: parse_retry_after(retry_after),
    })
}

/// The guarded call. Cheap to clone; clones share the breaker.
#[derive(Clone, Debug)]
pub struct Notifier {
    http: reqwest::Client,
    url: String,
    token: Option<secrecy::SecretString>,
    call_timeout: Duration,
    budget: Duration,
    backoff: ExponentialBuilder,
    breaker: Breaker,
}

impl Notifier {
    /// A notifier calling the telegram service at `settings.telegram_url`.
    pub fn new(settings: &GiftSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let base = settings.telegram_url.trim().trim_end_matches('/');
        reqwest::Url::parse(base)
            .with_context(|| format!("SAGA_TELEGRAM_URL {base:?} is not a URL"))?;
        register_metrics();
        // reqwest is built with `rustls-no-provider`: one provider for the whole process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the telegram service's HTTP client")?;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(settings.gift_retry_initial_ms.max(1)))
            .with_max_delay(Duration::from_millis(
                settings
                    .gift_retry_max_ms
                    .max(settings.gift_retry_initial_ms),
            ))
            .with_max_times(settings.gift_call_retries)
            .with_jitter();
        Ok(Self {
            http,
            url: format!("{base}/v1/telegram/messages"),
            token: settings.gift_service_token.clone(),
            call_timeout: Duration::from_millis(settings.gift_call_timeout_ms.max(1)),
            budget: settings.call_budget(),
            backoff,
            breaker: breaker(
                settings.gift_breaker_failures,
                Duration::from_millis(settings.gift_breaker_open_ms),
            ),
        })
    }

    /// Sends `text` to `customer` under `key` through the guard (see the module's
    /// documentation); `trace` holds the W3C trace headers to pass on.
    pub async fn notify(
        &self,
        key: &str,
        saga: contracts::SagaId,
        customer: &CustomerId,
        text: &str,
        trace: &BTreeMap<String, String>,
    ) -> Notified {
        let started = Instant::now();
        let deadline = started + self.budget;
        let body = serde_json::json!({ "customer_id": customer, "text": text, "saga_id": saga });
        let attempt = || self.try_once(key, &body, trace, deadline);
        let retried = attempt
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(|failure: &CallFailure| failure.retryable)
            .adjust(|failure: &CallFailure, backoff: Option<Duration>| {
                next_wait(backoff, failure.retry_after, Instant::now(), deadline)
            })
            .notify(|failure: &CallFailure, wait: Duration| {
                tracing::debug!(%key, code = %failure.code, wait_ms = wait.as_millis() as u64, "telegram service call failed; trying again");
            });
        let guarded = self
            .breaker
            .call_with(|failure: &CallFailure| failure.retryable, retried)
            .await;
        let (outcome, notified) = match guarded {
            Ok(notification_id) => ("sent", Notified::Sent { notification_id }),
            Err(failsafe::Error::Inner(failure)) if !failure.retryable => (
                "refused",
                Notified::Refused {
                    code: failure.code,
                    detail: failure.detail,
                },
            ),
            Err(failsafe::Error::Inner(failure)) => (
                "failed",
                Notified::Queued {
                    reason: "call_failed",
                    failure: Some(failure),
                },
            ),
            Err(failsafe::Error::Rejected) => (
                "rejected",
                Notified::Queued {
                    reason: "breaker_open",
                    failure: None,
                },
            ),
        };
        metrics::histogram!(GIFT_NOTIFY_CALL_DURATION, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if let Notified::Queued { reason, failure } = &notified {
            metrics::counter!(GIFT_NOTIFY_QUEUED, "reason" => *reason).increment(1);
            match failure {
                Some(f) => {
                    tracing::warn!(%key, code = %f.code, detail = %f.detail, "the telegram service did not take the gift message: queued")
                }
                None => {
                    tracing::debug!(%key, "breaker open: gift message queued without calling")
                }
            }
        }
        notified
    }

    /// One try, within the per-try timeout and what is left of the budget.
    async fn try_once(
        &self,
        key: &str,
        body: &Value,
        trace: &BTreeMap<String, String>,
        deadline: Instant,
    ) -> Result<NotificationId, CallFailure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < MIN_TRY {
            return Err(CallFailure::retryable(
                "telegram_service_timeout",
                "the call's time budget is spent".into(),
                None,
            ));
        }
        let mut request = self
            .http
            .post(&self.url)
            .timeout(self.call_timeout.min(left))
            .header("idempotency-key", key)
            .json(body);
        if let Some(token) = &self.token {
            use secrecy::ExposeSecret as _;
            request = request.bearer_auth(token.expose_secret());
        }
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = trace.get(name) {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.map_err(transport_failure)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(transport_failure)?;
        classify(status, retry_after.as_deref(), &bytes)
    }
}

/// The wait before the next try: the backoff's, or longer when the answer asked (Retry-After);
/// none (stop retrying) when the backoff is spent or the wait would leave no useful try within
/// the budget.
pub fn next_wait(
    backoff: Option<Duration>,
    retry_after: Option<Duration>,
    now: Instant,
    deadline: Instant,
) -> Option<Duration> {
    let wait = backoff?.max(retry_after.unwrap_or_default());
    (now + wait + MIN_TRY <= deadline).then_some(wait)
}

fn transport_failure(error: reqwest::Error) -> CallFailure {
    let (code, what) = if error.is_timeout() {
        ("telegram_service_timeout", "did not answer in time")
    } else {
        ("telegram_service_unreachable", "could not be reached")
    };
    let error = error.without_url();
    let mut detail = format!("the telegram service {what}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    CallFailure::retryable(code, detail, None)
}

/// Makes the notifier's metrics visible on `/metrics` before the first call.
pub fn register_metrics() {
    use runtime::metrics::{GIFT_NOTIFY_BREAKER_OPEN, GIFT_NOTIFY_BREAKER_TRANSITIONS};
    let _ = runtime::metrics::handle();
    metrics::describe_gauge!(
        GIFT_NOTIFY_BREAKER_OPEN,
        "1 while the gift worker's breaker around the telegram service is open"
    );
    metrics::describe_counter!(
        GIFT_NOTIFY_BREAKER_TRANSITIONS,
        "Transitions of the gift worker's breaker, by the state it went to"
    );
    metrics::describe_counter!(
        GIFT_NOTIFY_QUEUED,
        "Gift messages queued on notify.telegram instead of sent during the step, by reason"
    );
    metrics::describe_histogram!(
        GIFT_NOTIFY_CALL_DURATION,
        metrics::Unit::Seconds,
        "The gift worker's guarded call to the telegram service, by outcome"
    );
    // Registered (at 0), not set: a breaker of this process may be open already.
    let _ = metrics::gauge!(GIFT_NOTIFY_BREAKER_OPEN);
    for to in ["open", "half_open", "closed"] {
        metrics::counter!(GIFT_NOTIFY_BREAKER_TRANSITIONS, "to" => to).increment(0);
    }
    for reason in REASONS {
        metrics::counter!(GIFT_NOTIFY_QUEUED, "reason" => reason).increment(0);
    }
    for outcome in OUTCOMES {
        let _ = metrics::histogram!(GIFT_NOTIFY_CALL_DURATION, "outcome" => outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("JSON encodes")
    }

    #[test]
    fn a_sent_notification_answers_its_id() {
        let id = NotificationId::new();
        let answer = body(json!({"id": id, "status": "sent", "telegram_message_id": 3}));
        assert_eq!(classify(201, None, &answer), Ok(id));
        assert_eq!(classify(200, None, &answer), Ok(id));
        let odd = classify(201, None, b"{}").expect_err("no id");
        assert!(odd.retryable);
    }

    #[test]
    fn outages_are_retryable_with_their_wait_and_refusals_are_not() {
        let problem = |code: &str| body(json!({"code": code, "detail": "d", "status": 0}));
        let unavailable =
            classify(503, Some("3"), &problem("telegram_unavailable")).expect_err("a failure");
        assert_eq!(
            unavailable,
            CallFailure {
                code: "telegram_unavailable".into(),
                detail: "d".into(),
                retryable: true,
                retry_after: Some(Duration::from_secs(3)),
            }
        );
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                classify(status, None, b"")
                    .expect_err("a failure")
                    .retryable,
                "{status}"
            );
        }
        for (status, code) in [
            (422, "chat_not_linked"),
            (422, "telegram_forbidden"),
            (409, "idempotency_key_reused"),
            (400, "invalid_idempotency_key"),
        ] {
            let refused = classify(status, None, &problem(code)).expect_err("refused");
            assert_eq!((refused.code.as_str(), refused.retryable), (code, false));
        }
        let bare = classify(404, None, b"not found").expect_err("refused");
        assert_eq!(
            (bare.code.as_str(), bare.retryable),
            ("telegram_service_404", false)
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after(Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(Some(" 10 ")),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
        assert_eq!(parse_retry_after(Some("99999999")), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn the_wait_honours_retry_after_within_the_budget() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(5);
        let ms = Duration::from_millis;
        assert_eq!(next_wait(Some(ms(200)), None, now, deadline), Some(ms(200)));
        assert_eq!(
            next_wait(Some(ms(200)), Some(ms(2000)), now, deadline),
            Some(ms(2000)),
            "Retry-After is honoured"
        );
        assert_eq!(
            next_wait(Some(ms(3000)), Some(ms(1000)), now, deadline),
            Some(ms(3000)),
            "never shorter than the backoff"
        );
        assert_eq!(
            next_wait(Some(ms(200)), Some(ms(10_000)), now, deadline),
            None,
            "a wait past the budget ends the retries"
        );
        assert_eq!(next_wait(None, None, now, deadline), None, "backoff spent");
    }
}
