//! Unit tests of the settings, and the gift worker against the real PostgreSQL and NATS JetStream of the machine: its steps'
//! idempotency and stock under concurrency, its catalogue and exchange routes, the guarded call
//! to a real telegram service (with the Bot API stand-in behind it), and the fallback queued
//! through the outbox exactly once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use contracts::command::{IssueGiftV1, NotifyGiftV1, ReleaseGiftV1, ReserveGiftV1};
use contracts::reply::{GiftNotificationStatus, GiftNotifiedV1};
use contracts::{Action, Command, Envelope, GiftId, MessageId, Phase, Reply, SagaId, Worker};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::store::{self, Gift};
use super::{GiftSettings, GiftWorker, MAX_CALL_BUDGET, MIGRATOR, notification_key, voucher};
use crate::runtime::commands::CALL_BUDGET;
use crate::runtime::{Handled, Handler as _, WorkerContext, WorkerSettings};
use crate::telegram::queue::{QueuedMessage, QueuedMessageV1};
use crate::telegram::tests::{Scratch, Telegram, nats_url, serve};
use crate::telegram_stand_in::FaultSpec;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn envelope(saga: SagaId, step: &str, body: Command) -> Envelope<Command> {
    Envelope {
        message_id: MessageId::new(),
        correlation_id: None,
        saga_id: saga,
        saga_type: "gift_exchange".into(),
        step: step.into(),
        step_index: 0,
        phase: Phase::Forward,
        attempt: 1,
        sent_at: None,
        headers: BTreeMap::from([("traceparent".to_owned(), TRACEPARENT.to_owned())]),
        body,
    }
}

fn reserve(saga: SagaId, gift: GiftId) -> Envelope<Command> {
    envelope(
        saga,
        "gift.reserve",
        Command::ReserveGift(ReserveGiftV1 {
            gift_id: gift,
            customer_id: "player-1".parse().expect("a customer"),
        }),
    )
}

fn release(saga: SagaId, gift: GiftId) -> Envelope<Command> {
    envelope(
        saga,
        "gift.release",
        Command::ReleaseGift(ReleaseGiftV1 { gift_id: gift }),
    )
}

fn issue(saga: SagaId, gift: GiftId) -> Envelope<Command> {
    envelope(
        saga,
        "gift.issue",
        Command::IssueGift(IssueGiftV1 {
            gift_id: gift,
            customer_id: "player-1".parse().expect("a customer"),
        }),
    )
}

fn notify(saga: SagaId, customer: &str, voucher: &str) -> Envelope<Command> {
    envelope(
        saga,
        "gift.notify",
        Command::NotifyGift(NotifyGiftV1 {
            gift_id: GiftId::new(),
            customer_id: customer.parse().expect("a customer"),
            gift_name: "Dragon mug".into(),
            voucher_code: voucher.into(),
        }),
    )
}

/// Runs one transactional command in its own transaction.
async fn handle(worker: &GiftWorker, command: &Envelope<Command>) -> Handled {
    let mut tx = worker.pool.begin().await.expect("a transaction");
    let handled = worker.handle(&mut tx, command).await.expect("handled");
    tx.commit().await.expect("committed");
    handled
}

fn output(handled: &Handled) -> Value {
    match &handled.reply {
        Reply::Succeeded { output } => Value::Object(output.clone()),
        Reply::Failed(failure) => json!({"failed": failure.code, "retryable": failure.retryable}),
    }
}

async fn stock(worker: &GiftWorker, gift: GiftId) -> i64 {
    store::gift(&worker.pool, gift)
        .await
        .expect("read")
        .expect("a gift")
        .stock
}

async fn worker_over(scratch: &Scratch, settings: &GiftSettings) -> GiftWorker {
    GiftWorker::new(scratch.pool.clone(), settings).expect("a worker")
}

#[tokio::test]
async fn steps_are_idempotent_per_saga_and_the_stock_never_goes_below_zero() {
    let scratch = Scratch::new("gift", &MIGRATOR).await;
    let worker = worker_over(&scratch, &GiftSettings::default()).await;
    let gift = store::insert_gift(&worker.pool, "Dragon mug", 120, 5)
        .await
        .expect("a gift");
    let gift = GiftId(gift.id);

    let sagas: Vec<SagaId> = (0..20).map(|_| SagaId::new()).collect();
    let answers = futures::future::join_all(sagas.iter().map(|saga| {
        let worker = worker.clone();
        let saga = *saga;
        async move { (saga, output(&handle(&worker, &reserve(saga, gift)).await)) }
    }))
    .await;
    let taken: Vec<SagaId> = answers
        .iter()
        .filter(|(_, o)| o == &json!({"gift_name": "Dragon mug", "price_points": 120}))
        .map(|(saga, _)| *saga)
        .collect();
    let refused = answers
        .iter()
        .filter(|(_, o)| o == &json!({"failed": "out_of_stock", "retryable": false}))
        .count();
    assert_eq!((taken.len(), refused), (5, 15), "{answers:?}");
    assert_eq!(stock(&worker, gift).await, 0);

    // A repeat answers the same, at the price of the reservation, and takes nothing.
    store::update_gift(
        &worker.pool,
        gift,
        &store::GiftChange {
            price_points: Some(999),
            ..Default::default()
        },
    )
    .await
    .expect("repriced");
    let again = output(&handle(&worker, &reserve(taken[0], gift)).await);
    assert_eq!(
        again,
        json!({"gift_name": "Dragon mug", "price_points": 120})
    );
    assert_eq!(stock(&worker, gift).await, 0);

    // Release gives one back, once.
    let done = json!({});
    assert_eq!(
        output(&handle(&worker, &release(taken[0], gift)).await),
        done
    );
    assert_eq!(
        output(&handle(&worker, &release(taken[0], gift)).await),
        done
    );
    assert_eq!(stock(&worker, gift).await, 1);
    assert_eq!(
        output(&handle(&worker, &release(SagaId::new(), gift)).await),
        done,
        "nothing reserved, nothing to undo"
    );
    assert_eq!(stock(&worker, gift).await, 1);
    assert_eq!(
        output(&handle(&worker, &issue(taken[0], gift)).await),
        json!({"failed": "gift_released", "retryable": false})
    );

    // Issue makes one voucher per saga.
    let issued = output(&handle(&worker, &issue(taken[1], gift)).await);
    let code = issued["voucher_code"]
        .as_str()
        .expect("a voucher")
        .to_owned();
    assert!(voucher::is_code(&code), "{code}");
    assert_eq!(
        output(&handle(&worker, &issue(taken[1], gift)).await),
        issued
    );
    let other = output(&handle(&worker, &issue(taken[2], gift)).await);
    assert_ne!(other, issued);
    assert_eq!(
        output(&handle(&worker, &release(taken[1], gift)).await),
        json!({"failed": "gift_already_issued", "retryable": false})
    );
    assert_eq!(
        output(&handle(&worker, &issue(SagaId::new(), gift)).await),
        json!({"failed": "gift_not_reserved", "retryable": false})
    );
    assert_eq!(
        output(&handle(&worker, &reserve(SagaId::new(), GiftId::new())).await),
        json!({"failed": "gift_not_found", "retryable": false})
    );
    assert_eq!(stock(&worker, gift).await, 1);
    scratch.drop().await;
}

async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_catalogue_adds_lists_reads_and_changes_gifts() {
    let scratch = Scratch::new("gift", &MIGRATOR).await;
    let worker = worker_over(&scratch, &GiftSettings::default()).await;
    let base = serve(worker.api().0.fallback(runtime::problem::route_not_found)).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{base}{path}");

    let (status, headers, mug) = call(
        &http,
        Method::POST,
        &url("/v1/gifts"),
        Some(json!({"name": " Dragon mug ", "price_points": 120, "stock": 3})),
    )
    .await;
    assert_eq!(status, 201, "{mug}");
    let id = mug["id"].as_str().expect("an id").to_owned();
    assert_eq!(headers["location"], format!("/v1/gifts/{id}").as_str());
    assert_eq!(
        (&mug["name"], &mug["price_points"], &mug["stock"]),
        (&json!("Dragon mug"), &json!(120), &json!(3))
    );
    for bad in [
        json!({"name": "", "price_points": 1, "stock": 1}),
        json!({"name": "x", "price_points": 0, "stock": 1}),
        json!({"name": "x", "price_points": 1, "stock": -1}),
        json!({"name": "x", "price_points": 1}),
    ] {
        let (status, _, problem) = call(&http, Method::POST, &url("/v1/gifts"), Some(bad)).await;
        assert_eq!((status, &problem["code"]), (422, &json!("invalid_body")));
    }
    for n in 0..4 {
        let (status, _, _) = call(
            &http,
            Method::POST,
            &url("/v1/gifts"),
            Some(json!({"name": format!("Gift {n}"), "price_points": 10, "stock": 0})),
        )
        .await;
        assert_eq!(status, 201);
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/gifts?limit=2&cursor={c}"),
            None => "/v1/gifts?limit=2".to_owned(),
        };
        let (status, _, page) = call(&http, Method::GET, &url(&path), None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|g| g["name"].as_str().unwrap_or_default().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["Dragon mug", "Gift 0", "Gift 1", "Gift 2", "Gift 3"]);
    let (_, _, all) = call(&http, Method::GET, &url("/v1/gifts"), None).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(all["next_cursor"], Value::Null);
    for bad in [
        "/v1/gifts?limit=0",
        "/v1/gifts?limit=501",
        "/v1/gifts?cursor=zzz",
        "/v1/gifts?limit=x",
    ] {
        let (status, _, problem) = call(&http, Method::GET, &url(bad), None).await;
        assert_eq!(
            (status, &problem["code"]),
            (400, &json!("invalid_query")),
            "{bad}"
        );
    }

    let (status, _, read) = call(&http, Method::GET, &url(&format!("/v1/gifts/{id}")), None).await;
    assert_eq!((status, &read), (200, &mug));
    for missing in [
        format!("/v1/gifts/{}", GiftId::new()),
        "/v1/gifts/nope".to_owned(),
    ] {
        let (status, _, problem) = call(&http, Method::GET, &url(&missing), None).await;
        assert_eq!((status, &problem["code"]), (404, &json!("gift_not_found")));
    }
    let (status, _, changed) = call(
        &http,
        Method::PATCH,
        &url(&format!("/v1/gifts/{id}")),
        Some(json!({"stock": 50, "price_points": 90})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (
            &changed["name"],
            &changed["price_points"],
            &changed["stock"]
        ),
        (&json!("Dragon mug"), &json!(90), &json!(50))
    );
    for bad in [
        json!({"stok": 5}),
        json!({"stock": -1}),
        json!({"name": " "}),
    ] {
        let (status, _, problem) = call(
            &http,
            Method::PATCH,
            &url(&format!("/v1/gifts/{id}")),
            Some(bad),
        )
        .await;
        assert_eq!((status, &problem["code"]), (422, &json!("invalid_body")));
    }
    let (status, _, problem) = call(
        &http,
        Method::PATCH,
        &url(&format!("/v1/gifts/{}", GiftId::new())),
        Some(json!({"stock": 1})),
    )
    .await;
    assert_eq!((status, &problem["code"]), (404, &json!("gift_not_found")));
    scratch.drop().await;
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// An orchestrator that records what it is asked and answers like `POST /v1/sagas`.
async fn orchestrator() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/v1/sagas",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push((headers, body.0));
                (
                    StatusCode::ACCEPTED,
                    [("location", "/v1/sagas/0192-saga")],
                    axum::Json(json!({"id": "0192-saga", "state": "running"})),
                )
            }
        }),
    );
    (serve(router).await, seen)
}

#[tokio::test]
async fn an_exchange_starts_its_saga_at_the_orchestrator_and_answers_what_it_answered() {
    let scratch = Scratch::new("gift", &MIGRATOR).await;
    let (orchestrator_url, seen) = orchestrator().await;
    let worker = worker_over(
        &scratch,
        &GiftSettings {
            orchestrator_url,
            ..GiftSettings::default()
        },
    )
    .await;
    let gift = store::insert_gift(&worker.pool, "Mug", 10, 1)
        .await
        .expect("a gift");
    let base = serve(worker.api().0).await;
    let http = reqwest::Client::new();
    let exchanges = format!("{base}/v1/gifts/{}/exchanges", gift.id);

    let response = http
        .post(&exchanges)
        .header("idempotency-key", "buy-1")
        .header("traceparent", TRACEPARENT)
        .header("authorization", "Bearer t0ken")
        .header("x-other", "not passed on")
        .json(&json!({"customer_id": "player-1"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.headers()["location"], "/v1/sagas/0192-saga");
    assert_eq!(
        response.json::<Value>().await.expect("JSON"),
        json!({"id": "0192-saga", "state": "running"})
    );
    {
        let seen = seen.lock().expect("lock");
        let (headers, body) = &seen[0];
        assert_eq!(
            body,
            &json!({"type": "gift_exchange", "input": {"gift_id": gift.id, "customer_id": "player-1"}})
        );
        assert_eq!(headers["idempotency-key"], "buy-1");
        assert_eq!(headers["traceparent"], TRACEPARENT);
        assert_eq!(headers["authorization"], "Bearer t0ken");
        assert!(!headers.contains_key("x-other"));
    }

    let (status, _, problem) = call(
        &http,
        Method::POST,
        &format!("{base}/v1/gifts/{}/exchanges", GiftId::new()),
        Some(json!({"customer_id": "player-1"})),
    )
    .await;
    assert_eq!((status, &problem["code"]), (404, &json!("gift_not_found")));
    let (status, _, problem) = call(
        &http,
        Method::POST,
        &exchanges,
        Some(json!({"customer_id": "no spaces allowed"})),
    )
    .await;
    assert_eq!(
        (status, &problem["code"]),
        (422, &json!("invalid_customer_id"))
    );
    assert_eq!(seen.lock().expect("lock").len(), 1, "refused before asking");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let nowhere = format!("http://{}", closed.local_addr().expect("an address"));
    drop(closed);
    let unreachable = worker_over(
        &scratch,
        &GiftSettings {
            orchestrator_url: nowhere,
            ..GiftSettings::default()
        },
    )
    .await;
    let base = serve(unreachable.api().0).await;
    let (status, _, problem) = call(
        &http,
        Method::POST,
        &format!("{base}/v1/gifts/{}/exchanges", gift.id),
        Some(json!({"customer_id": "player-1"})),
    )
    .await;
    assert_eq!(
        (status, &problem["code"]),
        (503, &json!("orchestrator_unavailable"))
    );
    scratch.drop().await;
}

fn metric(name: &str, labels: &str) -> f64 {
    let rendered = runtime::metrics::handle().render();
    let series = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_sends_refuses_or_queues_and_the_breaker_fails_fast_then_closes() {
    let telegram = Telegram::start().await;
    telegram.link("player-1", 31).await;
    let scratch = Scratch::new("gift", &MIGRATOR).await;
    let worker = worker_over(
        &scratch,
        &GiftSettings {
            telegram_url: telegram.base.clone(),
            gift_call_timeout_ms: 1000,
            gift_call_retries: 1,
            gift_retry_initial_ms: 20,
            gift_retry_max_ms: 50,
            gift_call_budget_ms: 3000,
            gift_breaker_failures: 2,
            gift_breaker_open_ms: 300,
            ..GiftSettings::default()
        },
    )
    .await;
    let opened = metric("saga_gift_notify_breaker_transitions_total", "to=\"open\"");
    let closed = metric(
        "saga_gift_notify_breaker_transitions_total",
        "to=\"closed\"",
    );

    let saga = SagaId::new();
    let sent = worker
        .call(&notify(saga, "player-1", "ABCD-EFGH-JKMN-PQRS"))
        .await
        .expect("handled");
    let notified: GiftNotifiedV1 = serde_json::from_value(output(&sent)).expect("an output");
    assert_eq!(notified.notification_status, GiftNotificationStatus::Sent);
    assert!(notified.notification_id.is_some() && sent.messages.is_empty());
    let again = worker
        .call(&notify(saga, "player-1", "ABCD-EFGH-JKMN-PQRS"))
        .await
        .expect("handled");
    assert_eq!(again.reply, sent.reply, "a repeat answers the same");
    assert_eq!(
        telegram.delivered(31),
        ["🎁 Your gift \"Dragon mug\" is on its way! Your voucher code: ABCD-EFGH-JKMN-PQRS"]
    );

    let refused = worker
        .call(&notify(SagaId::new(), "player-9", "ABCD-EFGH-JKMN-PQR0"))
        .await
        .expect("handled");
    assert_eq!(
        output(&refused),
        json!({"failed": "chat_not_linked", "retryable": false})
    );
    assert!(refused.messages.is_empty(), "a refusal is not queued");

    // Telegram failing: each guarded call fails after its retry and queues the message.
    telegram
        .stand_in
        .push_fault(FaultSpec {
            status: 500,
            count: 4,
            retry_after: None,
        })
        .expect("a fault");
    for n in 0..2 {
        let saga = SagaId::new();
        let queued = worker
            .call(&notify(saga, "player-1", "QUEU-EDQU-EUED-0000"))
            .await
            .expect("handled");
        let notified: GiftNotifiedV1 = serde_json::from_value(output(&queued)).expect("an output");
        assert_eq!(
            notified.notification_status,
            GiftNotificationStatus::Queued,
            "{n}"
        );
        assert_eq!(queued.messages.len(), 1);
        let message = &queued.messages[0];
        assert_eq!(message.subject, "notify.telegram");
        assert_eq!(message.headers["traceparent"], TRACEPARENT);
        let body: QueuedMessage = serde_json::from_slice(&message.payload).expect("decodes");
        assert_eq!(
            body,
            QueuedMessage::V1(QueuedMessageV1 {
                idempotency_key: format!("gift:{saga}"),
                customer_id: "player-1".parse().expect("a customer"),
                text: "🎁 Your gift \"Dragon mug\" is on its way! Your voucher code: QUEU-EDQU-EUED-0000".into(),
                saga_id: Some(saga),
            })
        );
    }
    let calls = telegram.stand_in.messages().len();
    assert_eq!(calls, 1 + 4, "one try and one retry per guarded call");

    // Open: the call is refused at once, without calling.
    let started = Instant::now();
    let fast = worker
        .call(&notify(SagaId::new(), "player-1", "FAST-FAST-FAST-FAST"))
        .await
        .expect("handled");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(5),
        "failing fast took {took:?}"
    );
    assert_eq!(fast.messages.len(), 1, "queued");
    assert_eq!(telegram.stand_in.messages().len(), calls, "not called");
    assert!(metric("saga_gift_notify_breaker_transitions_total", "to=\"open\"") > opened);
    assert_eq!(metric("saga_gift_notify_breaker_open", ""), 1.0);

    // After the open time one call goes through; Telegram is back, and the breaker closes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let back = worker
        .call(&notify(SagaId::new(), "player-1", "BACK-BACK-BACK-BACK"))
        .await
        .expect("handled");
    let notified: GiftNotifiedV1 = serde_json::from_value(output(&back)).expect("an output");
    assert_eq!(notified.notification_status, GiftNotificationStatus::Sent);
    assert!(
        metric(
            "saga_gift_notify_breaker_transitions_total",
            "to=\"closed\""
        ) > closed
    );
    assert_eq!(metric("saga_gift_notify_breaker_open", ""), 0.0);
    scratch.drop().await;
    telegram.scratch.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_answers_look_ups_and_commands_and_queues_through_the_outbox_once() {
    let scratch = Scratch::new("gift", &MIGRATOR).await;
    let prefix = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut settings = WorkerSettings::default();
    settings.infra.database_url = scratch.url.clone().into();
    settings.infra.nats_url = nats_url();
    settings.infra.nats_prefix = prefix;
    let context = WorkerContext::connect(&settings, Worker::Gift, &MIGRATOR)
        .await
        .expect("connected");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let nowhere = format!("http://{}", closed.local_addr().expect("an address"));
    drop(closed);
    let worker = GiftWorker::new(
        context.pool.clone(),
        &GiftSettings {
            telegram_url: nowhere,
            gift_call_retries: 0,
            ..GiftSettings::default()
        },
    )
    .expect("a worker");
    let gift: Gift = store::insert_gift(&context.pool, "Mug", 10, 2)
        .await
        .expect("a gift");
    let topology = context.topology.clone();
    let nats = context.nats.clone();
    let js = context.js.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(context, shutdown.clone()));

    let lookup = topology.lookup_subject(Worker::Gift, "gift");
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let asked = nats
            .request(lookup.clone(), json!({"id": gift.id}).to_string().into())
            .await;
        if let Ok(answer) = asked {
            break serde_json::from_slice::<Value>(&answer.payload).expect("JSON");
        }
        assert!(Instant::now() < deadline, "no look-up answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found, json!({"found": true}));
    let missing = nats
        .request(
            lookup.clone(),
            json!({"id": GiftId::new()}).to_string().into(),
        )
        .await
        .expect("an answer");
    assert_eq!(
        serde_json::from_slice::<Value>(&missing.payload).expect("JSON"),
        json!({"found": false})
    );

    let mut replies = nats
        .subscribe(topology.reply_subject("gift_exchange", contracts::Worker::Gift))
        .await
        .expect("subscribed");
    let mut queued = nats
        .subscribe(topology.notify_subject("telegram"))
        .await
        .expect("subscribed");
    let publish = |command: Envelope<Command>| {
        let js = js.clone();
        let subject = topology.command_subject(command.body.action());
        async move {
            let outgoing = runtime::jetstream::encode(subject, &command).expect("encodes");
            runtime::jetstream::publish(&js, &outgoing, None)
                .await
                .expect("published");
        }
    };

    let saga = SagaId::new();
    publish(reserve(saga, GiftId(gift.id))).await;
    let reply = next(&mut replies).await.expect("a reply");
    let reply: Envelope<Reply> = serde_json::from_slice(&reply.payload).expect("a reply");
    assert_eq!(
        reply.body,
        Reply::Succeeded {
            output: serde_json::from_value(json!({"gift_name": "Mug", "price_points": 10}))
                .expect("a map")
        }
    );

    let command = notify(saga, "player-1", "ABCD-ABCD-ABCD-ABCD");
    assert_eq!(command.body.action(), Action::NotifyGift);
    publish(command.clone()).await;
    let reply = next(&mut replies).await.expect("a reply");
    let first: Envelope<Reply> = serde_json::from_slice(&reply.payload).expect("a reply");
    let message = next(&mut queued).await.expect("a queued message");
    let body: QueuedMessage = serde_json::from_slice(&message.payload).expect("decodes");
    let QueuedMessage::V1(body) = body;
    assert_eq!(body.idempotency_key, format!("gift:{saga}"));
    assert_eq!(
        message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned()),
        Some(TRACEPARENT.to_owned())
    );
    // The same command again: its stored reply again, and its answer's queued message sent again
    // with the same Nats-Msg-Id, so that JetStream keeps it once (a plain subscriber sees both).
    publish(command).await;
    let reply = next(&mut replies).await.expect("a reply");
    let second: Envelope<Reply> = serde_json::from_slice(&reply.payload).expect("a reply");
    assert_eq!(second.body, first.body);
    let notified: GiftNotifiedV1 = match &first.body {
        Reply::Succeeded { output } => {
            serde_json::from_value(Value::Object(output.clone())).expect("an output")
        }
        other => panic!("not a success: {other:?}"),
    };
    assert_eq!(notified.notification_status, GiftNotificationStatus::Queued);
    let msg_id = |m: &async_nats::Message| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(runtime::jetstream::MSG_ID))
            .map(|v| v.as_str().to_owned())
    };
    let queued_id = msg_id(&message);
    assert!(queued_id.is_some(), "the queued message has a dedup id");
    while let Ok(Some(again)) = tokio::time::timeout(Duration::from_secs(2), queued.next()).await {
        assert_eq!(msg_id(&again), queued_id, "queued exactly once");
    }

    shutdown.cancel();
    running.await.expect("joined").expect("ran");
    for stream in contracts::topology::Stream::ALL {
        let _ = js.delete_stream(topology.stream(stream)).await;
    }
    scratch.drop().await;
}

#[test]
fn settings_default_and_read_partially() {
    let settings: GiftSettings = serde_json::from_value(serde_json::json!({
        "telegram_url": "http://gateway:8080", "gift_breaker_open_ms": 500
    }))
    .expect("settings parse");
    assert_eq!(settings.orchestrator_url, "http://127.0.0.1:8090");
    assert_eq!(settings.telegram_url, "http://gateway:8080");
    assert_eq!(settings.gift_breaker_open_ms, 500);
    assert_eq!(settings.gift_call_retries, 2);
    let gateway = settings.at_gateway("http://127.0.0.1:8080");
    assert_eq!(
        (
            gateway.orchestrator_url.as_str(),
            gateway.telegram_url.as_str()
        ),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080")
    );
}

#[test]
fn the_guarded_call_stays_well_inside_the_call_budget() {
    let defaults = GiftSettings::default();
    assert!(defaults.call_budget() + Duration::from_secs(5) <= CALL_BUDGET);
    let greedy = GiftSettings {
        gift_call_budget_ms: 600_000,
        ..GiftSettings::default()
    };
    assert_eq!(greedy.call_budget(), MAX_CALL_BUDGET);
    assert!(MAX_CALL_BUDGET < CALL_BUDGET);
}

#[test]
fn one_key_per_exchange() {
    let saga = SagaId::new();
    assert_eq!(notification_key(saga), format!("gift:{saga}"));
    assert!(crate::telegram::api::IdempotencyKey::is_valid(
        &notification_key(saga)
    ));
}

async fn next(subscriber: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    tokio::time::timeout(Duration::from_secs(15), subscriber.next())
        .await
        .ok()
        .flatten()
}
