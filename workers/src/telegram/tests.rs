//! The keyed send and the queue against the real PostgreSQL and NATS JetStream of the machine
//! (a scratch database and a stream prefix per test) and the in-process Bot API stand-in.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use contracts::Topology;
use contracts::topology::Stream;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::queue::{QueuedMessage, QueuedMessageV1};
use super::{TelegramSettings, TelegramWorker};
use crate::telegram_stand_in::{self, FaultSpec, StandIn};

/// A database made for one test, dropped by [`Scratch::drop`].
pub(crate) struct Scratch {
    /// Its pool, in the schema asked for, migrated.
    pub pool: PgPool,
    /// Its URL.
    pub url: String,
    name: String,
}

fn admin_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// NATS for tests.
pub(crate) fn nats_url() -> String {
    std::env::var("SAGA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

impl Scratch {
    /// A fresh database with `schema` migrated by `migrator`.
    pub(crate) async fn new(schema: &str, migrator: &sqlx::migrate::Migrator) -> Self {
        let name = format!("saga_w_{}", &Uuid::new_v4().simple().to_string()[..16]);
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.expect("PostgreSQL");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("a scratch database");
        conn.close().await.expect("closed");
        let (base, _) = admin.rsplit_once('/').expect("a database URL");
        let url = format!("{base}/{name}");
        let pool = runtime::db::connect(&SecretString::from(url.clone()), schema, 8, migrator)
            .await
            .expect("migrated");
        Self { pool, url, name }
    }

    /// Closes the pool and drops the database.
    pub(crate) async fn drop(self) {
        self.pool.close().await;
        let mut conn = PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL");
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .await
        .expect("dropped");
    }
}

/// Serves `router` on a free port; answers its base URL.
pub(crate) async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// A telegram worker over a scratch database and a fresh stand-in, its routes served.
pub(crate) struct Telegram {
    pub scratch: Scratch,
    pub worker: TelegramWorker,
    pub stand_in: StandIn,
    pub base: String,
    pub http: reqwest::Client,
}

impl Telegram {
    pub(crate) async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let scratch = Scratch::new("telegram", &super::MIGRATOR).await;
        let stand_in = StandIn::default();
        let (addr, _task) = telegram_stand_in::spawn_with_state("127.0.0.1:0", stand_in.clone())
            .await
            .expect("a stand-in");
        let worker = TelegramWorker::new(
            scratch.pool.clone(),
            &TelegramSettings {
                telegram_api_base: format!("http://{addr}"),
                telegram_timeout_ms: 2000,
                ..TelegramSettings::default()
            },
        )
        .expect("a worker");
        let (routes, _) = worker.api();
        let base = serve(routes.fallback(runtime::problem::route_not_found)).await;
        Self {
            scratch,
            worker,
            stand_in,
            base,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    pub(crate) async fn link(&self, customer: &str, chat: i64) {
        let (status, _, body) = self
            .call(
                Method::PUT,
                &format!("/v1/telegram/chats/{customer}"),
                None,
                Some(json!({"chat_id": chat})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// The stand-in's accepted messages to `chat`.
    pub(crate) fn delivered(&self, chat: i64) -> Vec<String> {
        self.stand_in
            .messages()
            .into_iter()
            .filter(|m| m.status == 200 && m.chat_id == json!(chat))
            .filter_map(|m| m.text)
            .collect()
    }
}

async fn send(
    t: &Telegram,
    key: Option<&str>,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    t.call(Method::POST, "/v1/telegram/messages", key, Some(body))
        .await
}

#[tokio::test]
async fn a_keyed_message_is_sent_once_and_its_outcome_repeated() {
    let t = Telegram::start().await;
    let hello = json!({"customer_id": "player-1", "text": "hello"});

    let (status, _, body) = send(&t, None, hello.clone()).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_idempotency_key"))
    );
    let (status, _, body) = send(&t, Some("a key"), hello.clone()).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_idempotency_key"))
    );
    let (status, _, body) = send(
        &t,
        Some("k0"),
        json!({"customer_id": "player-1", "text": " "}),
    )
    .await;
    assert_eq!((status, &body["code"]), (422, &json!("invalid_body")));
    let (status, _, body) = send(
        &t,
        Some("k0"),
        json!({"customer_id": "not valid!", "text": "x"}),
    )
    .await;
    assert_eq!((status, &body["code"]), (422, &json!("invalid_body")));

    let (status, headers, body) = send(&t, Some("k1"), hello.clone()).await;
    assert_eq!(
        (status, &body["code"]),
        (422, &json!("chat_not_linked")),
        "{body}"
    );
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|c| c == "application/problem+json")
    );
    t.link("player-1", 4242).await;
    let (status, _, body) = send(&t, Some("k1"), hello.clone()).await;
    assert_eq!(
        (status, &body["code"]),
        (422, &json!("chat_not_linked")),
        "a failed key answers its stored outcome"
    );

    let (status, headers, sent) = send(&t, Some("k2"), hello.clone()).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["status"], "sent");
    assert_eq!(sent["idempotency_key"], "k2");
    assert_eq!(sent["saga_id"], Value::Null);
    assert_eq!(sent["mission_id"], Value::Null);
    assert!(sent["telegram_message_id"].is_i64());
    let id = sent["id"].as_str().expect("an id");
    assert_eq!(
        headers["location"],
        format!("/v1/telegram/notifications/{id}").as_str()
    );
    let (status, _, again) = send(&t, Some("k2"), hello.clone()).await;
    assert_eq!((status, &again), (200, &sent));
    let (status, _, body) = send(
        &t,
        Some("k2"),
        json!({"customer_id": "player-1", "text": "other"}),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("idempotency_key_reused"))
    );
    let (status, _, body) = send(
        &t,
        Some("k2"),
        json!({"customer_id": "player-2", "text": "hello"}),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("idempotency_key_reused"))
    );
    assert_eq!(t.delivered(4242), ["hello"]);

    let (status, _, listed) = t
        .call(
            Method::GET,
            "/v1/telegram/notifications?idempotency_key=k2",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"], json!([sent]));

    t.stand_in.block(&json!(4242)).expect("blocked");
    let (status, _, body) = send(&t, Some("k3"), hello.clone()).await;
    assert_eq!((status, &body["code"]), (422, &json!("telegram_forbidden")));
    t.scratch.drop().await;
}

#[tokio::test]
async fn a_retryable_failure_stays_pending_and_a_later_request_delivers_it() {
    let t = Telegram::start().await;
    t.link("player-1", 77).await;
    let body = json!({"customer_id": "player-1", "text": "your voucher"});
    t.stand_in
        .push_fault(FaultSpec {
            status: 500,
            count: 1,
            retry_after: None,
        })
        .expect("a fault");
    let (status, headers, problem) = send(&t, Some("gift:1"), body.clone()).await;
    assert_eq!(
        (status, &problem["code"]),
        (503, &json!("telegram_unavailable"))
    );
    assert_eq!(headers["retry-after"], "1");
    t.stand_in
        .push_fault(FaultSpec {
            status: 429,
            count: 1,
            retry_after: Some(3),
        })
        .expect("a fault");
    let (status, headers, problem) = send(&t, Some("gift:1"), body.clone()).await;
    assert_eq!(
        (status, &problem["code"]),
        (503, &json!("telegram_rate_limited"))
    );
    assert_eq!(headers["retry-after"], "3");
    let (_, _, listed) = t
        .call(
            Method::GET,
            "/v1/telegram/notifications?idempotency_key=gift:1",
            None,
            None,
        )
        .await;
    assert_eq!(listed["items"][0]["status"], "pending");
    assert_eq!(listed["items"][0]["attempts"], 2);
    let (status, _, sent) = send(&t, Some("gift:1"), body.clone()).await;
    assert_eq!((status, &sent["status"]), (201, &json!("sent")));
    assert_eq!(t.delivered(77), ["your voucher"]);
    t.scratch.drop().await;
}

#[tokio::test]
async fn a_live_lease_answers_wait_and_an_expired_one_is_never_sent_again() {
    let t = Telegram::start().await;
    t.link("player-1", 5).await;
    let body = json!({"customer_id": "player-1", "text": "hi"});
    // An attempt that took the lease and is (or was) calling Telegram.
    sqlx::query(
        "INSERT INTO notifications (id, idempotency_key, customer_id, text, status, chat_id, sending_until) \
         VALUES ($1, 'held', 'player-1', 'hi', 'sending', 5, now() + interval '30 seconds'), \
                ($2, 'died', 'player-1', 'hi', 'sending', 5, now() - interval '1 second')",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .execute(&t.scratch.pool)
    .await
    .expect("rows");
    let (status, headers, problem) = send(&t, Some("held"), body.clone()).await;
    assert_eq!(
        (status, &problem["code"]),
        (503, &json!("notification_sending"))
    );
    let wait: u64 = headers["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((29..=30).contains(&wait), "{wait}");
    let (status, _, problem) = send(&t, Some("died"), body.clone()).await;
    assert_eq!(
        (status, &problem["code"]),
        (422, &json!("telegram_delivery_unknown"))
    );
    assert!(t.delivered(5).is_empty());
    t.scratch.drop().await;
}

/// Publishes `payload` on the test's `notify.telegram`.
async fn enqueue(js: &jetstream::Context, topology: &Topology, payload: Vec<u8>) {
    js.publish(topology.notify_subject("telegram"), payload.into())
        .await
        .expect("published")
        .await
        .expect("stored");
}

fn queued(key: &str, customer: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&QueuedMessage::from(QueuedMessageV1 {
        idempotency_key: key.into(),
        customer_id: customer.parse().expect("a customer"),
        text: text.into(),
        saga_id: None,
    }))
    .expect("encodes")
}

async fn eventually<F: FnMut() -> bool>(timeout: Duration, what: &str, mut check: F) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_delivered_exactly_once() {
    let t = Telegram::start().await;
    t.link("player-1", 11).await;
    t.link("player-2", 12).await;
    let nats = async_nats::connect(nats_url()).await.expect("NATS");
    let js = jetstream::new(nats);
    let prefix = format!("w{}", &Uuid::new_v4().simple().to_string()[..10]);
    let topology = Topology::new(&prefix);
    runtime::jetstream::ensure_streams(&js, &topology, 1)
        .await
        .expect("streams");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(super::queue::run(
        t.worker.delivery.clone(),
        js.clone(),
        topology.clone(),
        16,
        shutdown.clone(),
    ));

    // Sent during the synchronous call already: the queued copy is not sent again.
    let (status, _, _) = send(
        &t,
        Some("gift:a"),
        json!({"customer_id": "player-1", "text": "A"}),
    )
    .await;
    assert_eq!(status, 201);
    enqueue(&js, &topology, queued("gift:a", "player-1", "A")).await;
    // Queued twice (two fallbacks of one exchange): sent once.
    enqueue(&js, &topology, queued("gift:b", "player-1", "B")).await;
    enqueue(&js, &topology, queued("gift:b", "player-1", "B")).await;
    // Telegram failing at first: handed back, delivered after recovery.
    t.stand_in
        .push_fault(FaultSpec {
            status: 502,
            count: 1,
            retry_after: None,
        })
        .expect("a fault");
    enqueue(&js, &topology, queued("gift:c", "player-2", "C")).await;
    // Garbage, and a key reused for another text: dead letters.
    enqueue(&js, &topology, b"not json".to_vec()).await;
    enqueue(&js, &topology, queued("gift:a", "player-1", "not A")).await;

    eventually(Duration::from_secs(20), "the queue to drain", || {
        t.delivered(12) == ["C"] && t.delivered(11).len() >= 2
    })
    .await;
    let dlq = js
        .get_stream(topology.stream(Stream::DeadLetters))
        .await
        .expect("the DLQ");
    let mut parked = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while parked < 2 && Instant::now() < deadline {
        parked = dlq.clone().info().await.expect("info").state.messages;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(parked, 2, "the garbage and the reused key are parked");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut to_11 = t.delivered(11);
    to_11.sort();
    assert_eq!(to_11, ["A", "B"], "each key once");
    assert_eq!(t.delivered(12), ["C"]);
    // A copy that met the other copy's live lease comes back soon, and is then acked.
    let notify = js
        .get_stream(topology.stream(Stream::Notifications))
        .await
        .expect("the stream");
    let deadline = Instant::now() + Duration::from_secs(15);
    while notify.clone().info().await.expect("info").state.messages > 0 {
        assert!(Instant::now() < deadline, "every queued message is settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut to_11 = t.delivered(11);
    to_11.sort();
    assert_eq!(to_11, ["A", "B"], "still each key once");

    shutdown.cancel();
    running.await.expect("joined").expect("ran");
    for stream in Stream::ALL {
        let _ = js.delete_stream(topology.stream(stream)).await;
    }
    t.scratch.drop().await;
}
