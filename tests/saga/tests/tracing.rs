//! One trace per saga, exported over OTLP/HTTP to a receiver in this test: the HTTP span of
//! `POST /v1/sagas`, the orchestrator's span per step attempt (children of it), every worker's
//! span (children of the attempt it served) and the Telegram client span, with the saga's
//! attributes; a retried step has a span per attempt. A recognisable bot token appears in no
//! span, log line, metric or API answer. In its own test binary: it installs the process's
//! tracing.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use saga_tests::{TestPlatform, default_settings};
use workers::telegram_stand_in::{FaultSpec, StandIn};

/// Shaped like a bot token (`<bot id>:<secret>`) but too short to be mistaken for a real one.
const TOKEN: &str = "4242:RecognisableTestToken-zq8Xv3Lm";

type Spans = Arc<Mutex<Vec<Span>>>;

async fn receive(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        let mut spans = spans.lock().expect("spans");
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        a.value.as_ref()?.value.as_ref().map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_saga_through_every_service_and_the_token_stays_secret()
-> anyhow::Result<()> {
    let spans: Spans = Arc::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}/v1/traces", receiver.local_addr()?);
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(receiver, app).await });
    let logs = Captured::default();
    let writer = logs.clone();
    let telemetry = runtime::telemetry::init_with_writer(
        "saga-platform",
        move || writer.clone(),
        Some(endpoint),
    );

    let stand_in = StandIn::default();
    let (stand_in_addr, _server) =
        workers::telegram_stand_in::spawn_with_state("127.0.0.1:0", stand_in.clone()).await?;
    let mut settings = default_settings();
    settings.telegram.telegram_bot_token = Some(TOKEN.into());
    settings.telegram.telegram_api_base = format!("http://{stand_in_addr}");
    let p = TestPlatform::start_with(settings).await?;

    let (_, _, mission) = p.customer_with_mission(15).await?;
    stand_in.push_fault(FaultSpec {
        status: 500,
        count: 1,
        retry_after: None,
    })?;
    let saga_id = p.start_saga(mission["id"].as_str().expect("id")).await?;
    let saga = p.wait_terminal(&saga_id, Duration::from_secs(30)).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    let trace_id = saga["trace_id"].as_str().expect("trace id").to_owned();
    let metrics = p
        .http
        .get(format!("{}/metrics", p.base))
        .send()
        .await?
        .text()
        .await?;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let flushed = tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    })
    .await?;
    let spans = spans.lock().expect("spans").clone();
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let by_id: HashMap<String, &Span> = trace.iter().map(|s| (hex(&s.span_id), *s)).collect();
    let named = |name: &str| {
        trace
            .iter()
            .filter(|s| s.name == name)
            .copied()
            .collect::<Vec<_>>()
    };

    let http = named("POST /v1/sagas");
    assert_eq!(
        http.len(),
        1,
        "one server span roots the saga: {:?}",
        trace.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let root = hex(&http[0].span_id);

    let steps = [
        ("mission.complete", "mission", 1),
        ("reward.grant", "reward", 1),
        ("wallet.credit", "wallet", 1),
        ("mission.attach_reward", "mission", 1),
        ("telegram.send", "telegram", 2),
        ("mission.record_message", "mission", 1),
    ];
    for (step, worker, attempts) in steps {
        let attempt_spans = named(&format!("saga.step {step}"));
        assert_eq!(attempt_spans.len(), attempts, "{step}: a span per attempt");
        for span in &attempt_spans {
            assert_eq!(
                hex(&span.parent_span_id),
                root,
                "{step} is a child of the request"
            );
            assert_eq!(
                attribute(span, "saga.id").as_deref(),
                Some(saga_id.as_str())
            );
            assert_eq!(
                attribute(span, "saga.type").as_deref(),
                Some("mission_reward")
            );
            assert_eq!(attribute(span, "saga.step").as_deref(), Some(step));
            assert_eq!(
                attribute(span, "mission.id").as_deref(),
                mission["id"].as_str()
            );
            assert!(
                attribute(span, "customer.id").is_some_and(|c| c.starts_with("player-")),
                "{step}"
            );
            let served = named(&format!("{worker} {step}"))
                .into_iter()
                .filter(|w| w.parent_span_id == span.span_id)
                .count();
            assert_eq!(
                served,
                1,
                "{step} attempt {:?}: the worker's span is its child",
                attribute(span, "saga.attempt")
            );
        }
    }
    let telegram = named("saga.step telegram.send");
    let failed: Vec<_> = telegram
        .iter()
        .filter(|s| s.status.as_ref().is_some_and(|st| st.code == 2))
        .collect();
    assert_eq!(failed.len(), 1, "the first telegram attempt failed");
    assert_eq!(attribute(failed[0], "saga.attempt").as_deref(), Some("1"));
    assert_eq!(
        attribute(failed[0], "error.type").as_deref(),
        Some("telegram_unavailable")
    );

    let clients = named("POST sendMessage");
    assert_eq!(clients.len(), 2, "one client span per Telegram call");
    for client in &clients {
        let parent = by_id
            .get(&hex(&client.parent_span_id))
            .expect("the client span's parent is in the trace");
        assert_eq!(parent.name, "telegram telegram.send");
        let url = attribute(client, "url.full").unwrap_or_default();
        assert!(url.ends_with("/bot<token>/sendMessage"), "{url}");
    }

    let secret_parts = [TOKEN, TOKEN.split(':').nth(1).expect("token secret")];
    for span in &spans {
        let dump = format!("{span:?}");
        for part in secret_parts {
            assert!(!dump.contains(part), "the token is in span {}", span.name);
        }
    }
    let logs = String::from_utf8(logs.0.lock().expect("logs").clone())?;
    assert!(logs.contains(&saga_id), "the logs were captured");
    for part in secret_parts {
        assert!(!logs.contains(part), "the token is in the logs");
        assert!(!metrics.contains(part), "the token is in /metrics");
        assert!(!saga.to_string().contains(part), "the token is in the saga");
        let received = serde_json::to_string(&stand_in.messages())?;
        assert!(!received.contains(part), "the stand-in recorded the token");
    }
    std::io::stderr().flush()?;
    p.stop().await?;
    flushed.shutdown().await;
    Ok(())
}
