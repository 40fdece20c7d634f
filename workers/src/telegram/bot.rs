//! The Telegram Bot API client: one `sendMessage` call, guarded by a timeout and a circuit
//! breaker, and the mapping of Telegram's answers to sent messages or failures. The bot token
//! is part of the Bot API URL: it is kept in a [`SecretString`], never logged, never shown by
//! `Debug`, and stripped from every HTTP error before it is formatted.

use std::time::Duration;

use contracts::StepFailure;
use failsafe::futures::CircuitBreaker as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::TelegramSettings;

/// Consecutive retryable failures (5xx, 429, timeouts, network errors) that open the breaker.
pub const BREAKER_FAILURES: u32 = 5;

/// How long an open breaker refuses calls before it lets one through again.
pub const BREAKER_OPEN: Duration = Duration::from_secs(10);

/// The token put in the Bot API URL when none is configured (the stand-in accepts any).
const STAND_IN_TOKEN: &str = "stand-in";

/// The longest piece of a Telegram error description kept in a failure.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// Failure codes of the `telegram.send` step.
pub mod codes {
    /// No chat is linked to the customer (permanent).
    pub const CHAT_NOT_LINKED: &str = "chat_not_linked";
    /// Telegram answered 429 (retryable, with `retry_after_ms` when it gave one).
    pub const RATE_LIMITED: &str = "telegram_rate_limited";
    /// A 5xx, a timeout, a network error or an unreadable answer (retryable).
    pub const UNAVAILABLE: &str = "telegram_unavailable";
    /// The circuit breaker is open; Telegram was not called (retryable).
    pub const CIRCUIT_OPEN: &str = "telegram_circuit_open";
    /// A worker stopped during the call: whether Telegram got the message is unknown, and it
    /// is not sent again (permanent).
    pub const DELIVERY_UNKNOWN: &str = "telegram_delivery_unknown";
    /// Telegram answered 400: chat not found, text refused (permanent).
    pub const BAD_REQUEST: &str = "telegram_bad_request";
    /// Telegram answered 401: the bot token is wrong (permanent).
    pub const UNAUTHORIZED: &str = "telegram_unauthorized";
    /// Telegram answered 403: the user blocked the bot (permanent).
    pub const FORBIDDEN: &str = "telegram_forbidden";
    /// Telegram answered another 4xx (permanent).
    pub const REJECTED: &str = "telegram_rejected";
    /// A failed notification whose stored error names no code (permanent).
    pub const NOTIFICATION_FAILED: &str = "notification_failed";
}

/// Why a `sendMessage` call did not deliver the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFailure {
    /// One of [`codes`].
    pub code: &'static str,
    /// What happened (never the token or the URL).
    pub detail: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// When Telegram said to wait (429's `retry_after`), or how long the open breaker refuses.
    pub retry_after_ms: Option<u64>,
}

impl SendFailure {
    pub(crate) fn permanent(code: &'static str, detail: String) -> Self {
        Self {
            code,
            detail,
            retryable: false,
            retry_after_ms: None,
        }
    }

    pub(crate) fn retryable(code: &'static str, detail: String) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(code, detail)
        }
    }

    /// Whether the failure counts against the circuit breaker: Telegram unreachable, failing or
    /// rate limiting, not a refusal of this one message.
    pub fn trips_breaker(&self) -> bool {
        matches!(self.code, codes::UNAVAILABLE | codes::RATE_LIMITED)
    }

    /// Whether the Bot API was called at all (an open breaker does not call it).
    pub fn called_telegram(&self) -> bool {
        self.code != codes::CIRCUIT_OPEN
    }

    /// The failure as a step failure, without output.
    pub fn to_step_failure(&self) -> StepFailure {
        let failure = if self.retryable {
            StepFailure::retryable(self.code, self.detail.clone())
        } else {
            StepFailure::permanent(self.code, self.detail.clone())
        };
        StepFailure {
            retry_after_ms: self.retry_after_ms,
            ..failure
        }
    }

    /// How the failure is stored in `notifications.last_error`.
    pub(crate) fn stored(&self) -> String {
        format!("{}: {}", self.code, self.detail)
    }
}

/// The parts of a Bot API answer this worker reads.
#[derive(Debug, Default, Deserialize)]
struct BotAnswer {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<BotParameters>,
}

#[derive(Debug, Default, Deserialize)]
struct BotParameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// Maps a Bot API answer (HTTP status and body) to the sent message's `message_id` or the
/// failure: 2xx with `ok` and a `message_id` is sent; 429 is `telegram_rate_limited` (with
/// `parameters.retry_after` in milliseconds); 400, 401 and 403 are `telegram_bad_request`,
/// `telegram_unauthorized` and `telegram_forbidden`; other 4xx `telegram_rejected`; 5xx and
/// anything unreadable `telegram_unavailable`.
pub fn classify_answer(status: u16, body: &[u8]) -> Result<i64, SendFailure> {
    let answer: Option<BotAnswer> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let message_id = answer
            .as_ref()
            .filter(|a| a.ok)
            .and_then(|a| a.result.as_ref())
            .and_then(|r| r.get("message_id"))
            .and_then(Value::as_i64);
        return message_id.ok_or_else(|| {
            SendFailure::retryable(
                codes::UNAVAILABLE,
                format!("Telegram answered {status} without a sent message"),
            )
        });
    }
    let description = answer
        .as_ref()
        .and_then(|a| a.description.as_deref())
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.chars().take(MAX_DESCRIPTION_CHARS).collect::<String>())
        .unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no description")
                .to_owned()
        });
    let detail = format!("Telegram answered {status}: {description}");
    let failure = match status {
        429 => {
            let retry_after = answer
                .as_ref()
                .and_then(|a| a.parameters.as_ref())
                .and_then(|p| p.retry_after);
            SendFailure {
                retry_after_ms: retry_after.map(|s| s.saturating_mul(1000)),
                ..SendFailure::retryable(codes::RATE_LIMITED, detail)
            }
        }
        400 => SendFailure::permanent(codes::BAD_REQUEST, detail),
        401 => SendFailure::permanent(codes::UNAUTHORIZED, detail),
        403 => SendFailure::permanent(codes::FORBIDDEN, detail),
        402..=499 => SendFailure::permanent(codes::REJECTED, detail),
        _ => SendFailure::retryable(codes::UNAVAILABLE, detail),
    };
    Err(failure)
}

/// The circuit breaker guarding the Bot API.
type Breaker = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

/// A Bot API client for `sendMessage`, behind a circuit breaker. Cheap to clone; clones share
/// the breaker. Its `Debug` shows the base URL, never the token.
#[derive(Clone)]
pub struct BotClient {
    http: reqwest::Client,
    base: String,
    /// `{base}/bot{token}/sendMessage`: the token is in it.
    send_url: SecretString,
    breaker: Breaker,
}

impl std::fmt::Debug for BotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotClient")
            .field("base", &self.base)
            .field("token", &"[redacted]")
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl BotClient {
    /// A client for the Bot API at `settings.telegram_api_base`. Without a token it uses a
    /// placeholder (the API there is then a stand-in) and warns once.
    pub fn new(settings: &TelegramSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let base = settings
            .telegram_api_base
            .trim()
            .trim_end_matches('/')
            .to_owned();
        reqwest::Url::parse(&base)
            .with_context(|| format!("SAGA_TELEGRAM_API_BASE {base:?} is not a URL"))?;
        let token = match settings
            .telegram_bot_token
            .as_ref()
            .map(|t| t.expose_secret().trim())
        {
            Some(token) if !token.is_empty() => token.to_owned(),
            _ => {
                tracing::warn!(
                    "no Telegram bot token configured: using the Bot API at {base} as a stand-in"
                );
                STAND_IN_TOKEN.to_owned()
            }
        };
        let send_url = SecretString::from(format!("{base}/bot{token}/sendMessage"));
        // reqwest is built with `rustls-no-provider`: one provider for the whole process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.telegram_timeout_ms.max(1)))
            // A redirect would carry the token elsewhere; the Bot API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                anyhow::anyhow!("building the Telegram HTTP client: {}", e.without_url())
            })?;
        let breaker = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                BREAKER_FAILURES,
                failsafe::backoff::constant(BREAKER_OPEN),
            ))
            .build();
        Ok(Self {
            http,
            base,
            send_url,
            breaker,
        })
    }

    /// The Bot API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `text` to `chat_id` with one `sendMessage` call; answers Telegram's `message_id`.
    /// While the breaker is open it answers `telegram_circuit_open` without calling.
    pub async fn send_message(&self, chat_id: i64, text: &str) -> Result<i64, SendFailure> {
        let call = self.call(chat_id, text);
        let answer = match self
            .breaker
            .call_with(SendFailure::trips_breaker, call)
            .await
        {
            Ok(message_id) => Ok(message_id),
            Err(failsafe::Error::Inner(failure)) => Err(failure),
            Err(failsafe::Error::Rejected) => Err(SendFailure {
                retry_after_ms: u64::try_from(BREAKER_OPEN.as_millis()).ok(),
                ..SendFailure::retryable(
                    codes::CIRCUIT_OPEN,
                    format!(
                        "Telegram failed {BREAKER_FAILURES} times in a row; \
                         calls are paused for up to {} s",
                        BREAKER_OPEN.as_secs()
                    ),
                )
            }),
        };
        let result = match &answer {
            Ok(_) => "sent".to_owned(),
            Err(failure) => failure.code.to_string(),
        };
        metrics::counter!(runtime::metrics::TELEGRAM_CALLS, "result" => result).increment(1);
        let open = matches!(&answer, Err(f) if f.code == codes::CIRCUIT_OPEN);
        metrics::gauge!(runtime::metrics::TELEGRAM_CIRCUIT_OPEN).set(if open { 1.0 } else { 0.0 });
        answer
    }

    async fn call(&self, chat_id: i64, text: &str) -> Result<i64, SendFailure> {
        use tracing::Instrument as _;
        let span = if !runtime::telemetry::exporting() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "telegram.sendMessage",
                otel.name = "POST sendMessage",
                otel.kind = "client",
                http.request.method = "POST",
                url.full = %format!("{}/bot<token>/sendMessage", self.base),
                http.response.status_code = tracing::field::Empty,
                error = tracing::field::Empty,
            )
        };
        let answer = async {
            let body = serde_json::json!({ "chat_id": chat_id, "text": text });
            let response = self
                .http
                .post(self.send_url.expose_secret())
                .json(&body)
                .send()
                .await
                .map_err(|e| self.transport_failure(e))?;
            let status = response.status().as_u16();
            tracing::Span::current().record("http.response.status_code", status);
            let body = response
                .bytes()
                .await
                .map_err(|e| self.transport_failure(e))?;
            classify_answer(status, &body)
        }
        .instrument(span.clone())
        .await;
        if let Err(failure) = &answer {
            span.record("error", failure.code);
        }
        answer
    }

    /// A timeout or network error as a retryable failure, without the URL (it holds the token).
    fn transport_failure(&self, error: reqwest::Error) -> SendFailure {
        let timed_out = error.is_timeout();
        let error = error.without_url();
        let mut detail = if timed_out {
            format!("Telegram did not answer in time: {error}")
        } else {
            format!("Telegram could not be reached: {error}")
        };
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        // Belt and braces: no cause may carry the token.
        let secret = self.send_url.expose_secret();
        if let Some(token) = secret
            .strip_prefix(&format!("{}/bot", self.base))
            .and_then(|rest| rest.strip_suffix("/sendMessage"))
            && !token.is_empty()
        {
            detail = detail.replace(token, "[redacted]");
        }
        SendFailure::retryable(codes::UNAVAILABLE, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telegram_stand_in::{self, FaultSpec, StandIn};
    use serde_json::json;

    const TOKEN: &str = "123456:SECRET-token_value";

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("JSON encodes")
    }

    fn failure(status: u16, answer: Value) -> SendFailure {
        classify_answer(status, &body(answer)).expect_err("a failure")
    }

    #[test]
    fn a_sent_message_answers_its_id() {
        let answer = json!({"ok": true, "result": {"message_id": 77, "chat": {"id": 1}}});
        assert_eq!(classify_answer(200, &body(answer)), Ok(77));
        let odd = failure(200, json!({"ok": true, "result": {}}));
        assert_eq!((odd.code, odd.retryable), (codes::UNAVAILABLE, true));
        let html = classify_answer(200, b"<html>proxy</html>").expect_err("a failure");
        assert_eq!(html.code, codes::UNAVAILABLE);
    }

    #[test]
    fn a_rate_limit_is_retryable_with_its_wait() {
        let f = failure(
            429,
            json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 3",
                   "parameters": {"retry_after": 3}}),
        );
        assert_eq!(f.code, codes::RATE_LIMITED);
        assert!(f.retryable && f.trips_breaker());
        assert_eq!(f.retry_after_ms, Some(3000));
        assert_eq!(
            f.detail,
            "Telegram answered 429: Too Many Requests: retry after 3"
        );
        let step = f.to_step_failure();
        assert_eq!(step.retry_after_ms, Some(3000));
        assert!(step.retryable);
        assert_eq!(failure(429, json!({"ok": false})).retry_after_ms, None);
    }

    #[test]
    fn statuses_map_to_codes() {
        let cases = [
            (400, codes::BAD_REQUEST, false),
            (401, codes::UNAUTHORIZED, false),
            (403, codes::FORBIDDEN, false),
            (404, codes::REJECTED, false),
            (409, codes::REJECTED, false),
            (500, codes::UNAVAILABLE, true),
            (502, codes::UNAVAILABLE, true),
            (503, codes::UNAVAILABLE, true),
        ];
        for (status, code, retryable) in cases {
            let f = failure(
                status,
                json!({"ok": false, "error_code": status, "description": "x"}),
            );
            assert_eq!((f.code, f.retryable), (code, retryable), "{status}");
            assert_eq!(f.trips_breaker(), retryable, "{status}");
            assert_eq!(f.retry_after_ms, None);
            assert_eq!(f.to_step_failure().retryable, retryable);
        }
        let forbidden = failure(
            403,
            json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
        );
        assert_eq!(
            forbidden.detail,
            "Telegram answered 403: Forbidden: bot was blocked by the user"
        );
        let bare = classify_answer(502, b"<html>Bad Gateway</html>").expect_err("a failure");
        assert_eq!(bare.detail, "Telegram answered 502: Bad Gateway");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let settings = TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            ..TelegramSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("[redacted]") && !shown.contains("SECRET"),
            "{shown}"
        );
        let client = BotClient::new(&settings).expect("a client");
        let shown = format!("{client:?}");
        assert!(
            shown.contains("api.telegram.org") && !shown.contains("SECRET"),
            "{shown}"
        );
        let shown = format!("{:?}", TelegramSettings::default());
        assert!(shown.contains("telegram_bot_token: None"), "{shown}");
    }

    #[test]
    fn settings_default_and_read_partially() {
        let settings: TelegramSettings =
            serde_json::from_value(json!({"telegram_bot_token": TOKEN})).expect("settings parse");
        assert_eq!(
            settings
                .telegram_bot_token
                .as_ref()
                .map(ExposeSecret::expose_secret),
            Some(TOKEN)
        );
        assert_eq!(settings.telegram_api_base, "https://api.telegram.org");
        assert_eq!(settings.telegram_timeout_ms, 3000);
        assert!(
            BotClient::new(&TelegramSettings {
                telegram_api_base: "not a url".into(),
                ..TelegramSettings::default()
            })
            .is_err()
        );
    }

    async fn stand_in() -> (
        StandIn,
        BotClient,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let state = StandIn::default();
        let (addr, task) = telegram_stand_in::spawn_with_state("127.0.0.1:0", state.clone())
            .await
            .expect("bind the stand-in on a free port");
        let client = BotClient::new(&TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            telegram_api_base: format!("http://{addr}/"),
            telegram_timeout_ms: 2000,
        })
        .expect("a client");
        (state, client, task)
    }

    #[tokio::test]
    async fn the_client_sends_and_maps_the_stand_in_answers() {
        let (state, client, task) = stand_in().await;
        assert_eq!(client.send_message(42, "hello").await, Ok(1));
        assert_eq!(client.send_message(42, "again").await, Ok(2));
        state
            .push_fault(FaultSpec {
                status: 429,
                count: 1,
                retry_after: Some(2),
            })
            .expect("a fault");
        let f = client
            .send_message(42, "hi")
            .await
            .expect_err("rate limited");
        assert_eq!(
            (f.code, f.retry_after_ms),
            (codes::RATE_LIMITED, Some(2000))
        );
        state.block(&json!(7)).expect("blocked");
        let f = client.send_message(7, "hi").await.expect_err("blocked");
        assert_eq!((f.code, f.retryable), (codes::FORBIDDEN, false));
        let sent = state.messages();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[0].text.as_deref(), Some("hello"));
        assert_eq!(sent[0].chat_id, json!(42));
        task.abort();
    }

    #[tokio::test]
    async fn the_breaker_opens_on_failures_but_not_on_refusals() {
        let (state, client, task) = stand_in().await;
        let fault = |status, count| FaultSpec {
            status,
            count,
            retry_after: None,
        };
        state.push_fault(fault(400, 10)).expect("a fault");
        for _ in 0..10 {
            let f = client.send_message(1, "hi").await.expect_err("refused");
            assert_eq!(f.code, codes::BAD_REQUEST);
        }
        state
            .push_fault(fault(500, BREAKER_FAILURES))
            .expect("a fault");
        for _ in 0..BREAKER_FAILURES {
            let f = client.send_message(1, "hi").await.expect_err("failing");
            assert_eq!(f.code, codes::UNAVAILABLE);
        }
        let calls = state.messages().len();
        let f = client.send_message(1, "hi").await.expect_err("open");
        assert_eq!((f.code, f.retryable), (codes::CIRCUIT_OPEN, true));
        assert!(!f.called_telegram());
        assert_eq!(
            state.messages().len(),
            calls,
            "an open breaker does not call"
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_network_error_is_retryable_and_hides_the_token() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("an address");
        drop(listener);
        let client = BotClient::new(&TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            telegram_api_base: format!("http://{addr}"),
            telegram_timeout_ms: 1000,
        })
        .expect("a client");
        let f = client.send_message(1, "hi").await.expect_err("unreachable");
        assert_eq!((f.code, f.retryable), (codes::UNAVAILABLE, true));
        assert!(
            !f.detail.contains("SECRET") && !f.detail.contains("123456"),
            "{}",
            f.detail
        );
    }

    #[tokio::test]
    async fn a_slow_answer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        let server = tokio::spawn(async move {
            // Accept and never answer.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = BotClient::new(&TelegramSettings {
            telegram_bot_token: Some(TOKEN.into()),
            telegram_api_base: format!("http://{addr}"),
            telegram_timeout_ms: 200,
        })
        .expect("a client");
        let f = client.send_message(1, "hi").await.expect_err("timed out");
        assert_eq!((f.code, f.retryable), (codes::UNAVAILABLE, true));
        assert!(f.detail.contains("in time"), "{}", f.detail);
        assert!(!f.detail.contains("SECRET"), "{}", f.detail);
        server.abort();
    }
}
