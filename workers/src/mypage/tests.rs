//! The projection against the real servers of the machine, on both stores: MariaDB
//! (`SAGA_TEST_MARIADB_URL`, default `mysql://root@127.0.0.1:3306`) and PostgreSQL
//! (`SAGA_TEST_DATABASE_URL`), with NATS JetStream (`SAGA_TEST_NATS_URL`). Each test makes its
//! own databases and its own stream prefix, publishes the envelopes itself, and drops what it
//! made.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use contracts::command::NotificationStatus;
use contracts::event::{
    GiftIssuedV1, GiftReleasedV1, MessageUpdatedV1, MissionUpdatedV1, NotificationEventV1,
    RewardGrantedV1, RewardRevokedV1, SagaFinishedV1, WalletMovedV1,
};
use contracts::topology::Stream;
use contracts::{
    CustomerId, DomainEvent, EventEnvelope, GiftId, MissionId, NotificationId, RewardId, SagaId,
    Topology,
};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor as _};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::MypageWorker;
use super::store::{Backend, Snapshot, Store};
use super::view::GIFT_EXCHANGE;

const WAIT: Duration = Duration::from_secs(30);

fn postgres_admin_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn mariadb_server_url() -> String {
    std::env::var("SAGA_TEST_MARIADB_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn nats_url() -> String {
    std::env::var("SAGA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A view's database made for one test.
struct Database {
    backend: Backend,
    name: String,
    url: String,
}

impl Database {
    /// A database that does not exist yet: the store creates it (MariaDB), or it is made here
    /// (PostgreSQL, whose store makes only its schema).
    async fn new(backend: Backend) -> anyhow::Result<Self> {
        let name = format!("mypage_t_{}", short_id());
        let url = match backend {
            Backend::MariaDb => format!("{}/{name}", mariadb_server_url()),
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await?;
                conn.close().await?;
                let (base, _) = admin.rsplit_once('/').context("a database URL")?;
                format!("{base}/{name}")
            }
        };
        Ok(Self { backend, name, url })
    }

    async fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::connect(&SecretString::from(self.url.clone()), 8).await?)
    }

    async fn drop(self) -> anyhow::Result<()> {
        match self.backend {
            Backend::MariaDb => {
                let mut conn = sqlx::MySqlConnection::connect(&mariadb_server_url()).await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{}`",
                    self.name
                )))
                .await?;
                conn.close().await?;
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await?;
                conn.close().await?;
            }
        }
        Ok(())
    }
}

/// NATS with streams under a prefix of the test's own.
struct Nats {
    js: jetstream::Context,
    topology: Topology,
}

impl Nats {
    async fn new() -> anyhow::Result<Self> {
        let client = async_nats::connect(nats_url()).await?;
        let js = jetstream::new(client);
        let topology = Topology::new(&format!("mp{}", short_id()));
        runtime::jetstream::ensure_streams(&js, &topology, 1).await?;
        Ok(Self { js, topology })
    }

    /// Publishes `envelope` under its own message id, or under a fresh one (a republish).
    async fn publish(&self, envelope: &EventEnvelope, fresh_id: bool) -> anyhow::Result<()> {
        let outgoing =
            runtime::jetstream::encode_event(&self.topology, envelope, &Default::default())?;
        let id = if fresh_id {
            Uuid::new_v4().to_string()
        } else {
            envelope.message_id.to_string()
        };
        runtime::jetstream::publish(&self.js, &outgoing, Some(&id))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Publishes many envelopes, waiting for the acks together.
    async fn publish_all(&self, envelopes: &[EventEnvelope]) -> anyhow::Result<()> {
        for chunk in envelopes.chunks(256) {
            let mut acks = Vec::with_capacity(chunk.len());
            for envelope in chunk {
                let outgoing = runtime::jetstream::encode_event(
                    &self.topology,
                    envelope,
                    &Default::default(),
                )?;
                let headers = runtime::jetstream::header_map(
                    &outgoing.headers,
                    Some(&envelope.message_id.to_string()),
                );
                acks.push(
                    self.js
                        .publish_with_headers(outgoing.subject, headers, outgoing.payload.into())
                        .await?,
                );
            }
            for ack in acks {
                ack.await?;
            }
        }
        Ok(())
    }

    async fn publish_raw(&self, subject: String, payload: Vec<u8>) -> anyhow::Result<()> {
        self.js.publish(subject, payload.into()).await?.await?;
        Ok(())
    }

    async fn head(&self) -> anyhow::Result<u64> {
        Ok(super::feed::stream_head(&self.js, &self.topology).await?.0)
    }

    async fn drop(self) {
        for stream in Stream::ALL {
            let _ = self.js.delete_stream(self.topology.stream(stream)).await;
        }
    }
}

/// Runs `test` on scratch databases of `backends` and a stream prefix of its own, and drops
/// them afterwards, whether it passed or not.
async fn on_scratch(
    backends: &[Backend],
    test: impl AsyncFnOnce(&[Database], &Nats) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let nats = Nats::new().await?;
    let mut databases = Vec::new();
    let mut made = Ok(());
    for backend in backends {
        match Database::new(*backend).await {
            Ok(database) => databases.push(database),
            Err(error) => {
                made = Err(error);
                break;
            }
        }
    }
    let result = match made {
        Ok(()) => test(&databases, &nats).await,
        Err(error) => Err(error),
    };
    nats.drop().await;
    for database in databases {
        if let Err(error) = database.drop().await
            && result.is_ok()
        {
            return Err(error);
        }
    }
    result
}

/// A worker running on a store, with its API served on a free port.
struct Running {
    worker: MypageWorker,
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    async fn start(store: Store, nats: &Nats, batch: usize) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let worker = MypageWorker::new(store, nats.js.clone(), nats.topology.clone(), batch);
        let stop = CancellationToken::new();
        let (routes, _) = worker.api();
        let router = routes.fallback(runtime::problem::route_not_found);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let serving = stop.clone();
        let mut tasks = vec![tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { serving.cancelled().await })
                .await;
        })];
        let running = worker.clone();
        let until = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _ = running.run(until).await;
        }));
        Ok(Self {
            worker,
            base,
            http: reqwest::Client::new(),
            stop,
            tasks,
        })
    }

    fn store(&self) -> &Store {
        self.worker.store()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .send()
            .await?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.call(reqwest::Method::GET, path).await?;
        if status != StatusCode::OK {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Waits until the serving generation has applied everything through `sequence`.
    async fn caught_up(&self, sequence: u64) -> anyhow::Result<()> {
        wait_for(
            WAIT,
            &format!("the view to apply through {sequence}"),
            || async {
                let serving = self.store().serving().await?;
                Ok((serving.applied_through >= super::store::sequence(sequence)).then_some(()))
            },
        )
        .await
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let serving = self.store().serving().await?;
        Ok(self.store().snapshot(serving.generation).await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for task in self.tasks {
            task.await?;
        }
        self.worker.close().await;
        Ok(())
    }
}

async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Event times that only go forward.
struct Clock(DateTime<Utc>);

impl Clock {
    fn new() -> Self {
        Self(Utc::now())
    }

    fn envelope(&mut self, event: DomainEvent, saga: SagaId) -> EventEnvelope {
        self.0 += chrono::Duration::microseconds(10);
        EventEnvelope::new(event, Some(saga), self.0)
    }
}

/// What one finished saga published, and the ids to look its row up by.
struct Published {
    mission: MissionId,
    reward: RewardId,
    notification: NotificationId,
    events: Vec<EventEnvelope>,
}

/// The events of a `mission_reward` saga that completed: `balance` is the wallet after it.
fn completed(clock: &mut Clock, customer: &CustomerId, points: i64, balance: i64) -> Published {
    let (saga, mission, reward, notification) = (
        SagaId::new(),
        MissionId::new(),
        RewardId::new(),
        NotificationId::new(),
    );
    let updated = |status: &str, reward_id| {
        DomainEvent::MissionUpdated(MissionUpdatedV1 {
            id: mission,
            status: status.into(),
            reward_id,
            customer_id: customer.clone(),
        })
    };
    let events = vec![
        clock.envelope(updated("COMPLETED", None), saga),
        clock.envelope(
            DomainEvent::RewardGranted(RewardGrantedV1 {
                reward_id: reward,
                mission_id: mission,
                customer_id: customer.clone(),
                points,
                moves_wallet: false,
            }),
            saga,
        ),
        clock.envelope(
            DomainEvent::WalletCredited(WalletMovedV1 {
                customer_id: customer.clone(),
                points,
                balance,
            }),
            saga,
        ),
        clock.envelope(updated("REWARDED", Some(reward)), saga),
        clock.envelope(
            DomainEvent::NotificationSent(NotificationEventV1 {
                notification_id: notification,
                customer_id: customer.clone(),
                mission_id: Some(mission),
                telegram_message_id: Some(4242),
                error_code: None,
            }),
            saga,
        ),
        clock.envelope(
            DomainEvent::MessageUpdated(MessageUpdatedV1 {
                id: Some(notification),
                mission_id: mission,
                status: NotificationStatus::Sent,
            }),
            saga,
        ),
        clock.envelope(
            DomainEvent::SagaFinished(SagaFinishedV1 {
                saga_id: saga,
                saga_type: "mission_reward".into(),
                state: "completed".into(),
            }),
            saga,
        ),
    ];
    Published {
        mission,
        reward,
        notification,
        events,
    }
}

/// The events of a `mission_reward` saga refused after its reward was paid: compensated.
fn compensated(clock: &mut Clock, customer: &CustomerId, balance: i64) -> Published {
    let (saga, mission, reward) = (SagaId::new(), MissionId::new(), RewardId::new());
    let updated = |status: &str| {
        DomainEvent::MissionUpdated(MissionUpdatedV1 {
            id: mission,
            status: status.into(),
            reward_id: None,
            customer_id: customer.clone(),
        })
    };
    let grant = RewardGrantedV1 {
        reward_id: reward,
        mission_id: mission,
        customer_id: customer.clone(),
        points: 30,
        moves_wallet: false,
    };
    let revoke = RewardRevokedV1 {
        reward_id: reward,
        mission_id: mission,
        customer_id: customer.clone(),
        points: 30,
        moves_wallet: false,
    };
    let moved = |balance| WalletMovedV1 {
        customer_id: customer.clone(),
        points: 30,
        balance,
    };
    let events = vec![
        clock.envelope(updated("COMPLETED"), saga),
        clock.envelope(DomainEvent::RewardGranted(grant), saga),
        clock.envelope(DomainEvent::WalletCredited(moved(balance + 30)), saga),
        clock.envelope(DomainEvent::WalletDebited(moved(balance)), saga),
        clock.envelope(DomainEvent::RewardRevoked(revoke), saga),
        clock.envelope(updated("OPEN"), saga),
        clock.envelope(
            DomainEvent::SagaFinished(SagaFinishedV1 {
                saga_id: saga,
                saga_type: "mission_reward".into(),
                state: "compensated".into(),
            }),
            saga,
        ),
    ];
    Published {
        mission,
        reward,
        notification: NotificationId::new(),
        events,
    }
}

/// The events of a `gift_exchange` saga that completed with its message queued.
fn exchanged(
    clock: &mut Clock,
    customer: &CustomerId,
    balance: i64,
) -> (SagaId, GiftId, String, Vec<EventEnvelope>) {
    let (saga, gift) = (SagaId::new(), GiftId::new());
    let voucher = format!("V{}", &short_id()[..8]).to_ascii_uppercase();
    let events = vec![
        clock.envelope(
            DomainEvent::WalletDebited(WalletMovedV1 {
                customer_id: customer.clone(),
                points: 40,
                balance,
            }),
            saga,
        ),
        clock.envelope(
            DomainEvent::GiftIssued(GiftIssuedV1 {
                gift_id: gift,
                gift_name: "Dragon mug ☕".into(),
                customer_id: customer.clone(),
                voucher_code: voucher.clone(),
                price_points: 40,
            }),
            saga,
        ),
        clock.envelope(
            DomainEvent::SagaFinished(SagaFinishedV1 {
                saga_id: saga,
                saga_type: GIFT_EXCHANGE.into(),
                state: "completed".into(),
            }),
            saga,
        ),
    ];
    (saga, gift, voucher, events)
}

/// An exchange compensated after its reservation: the gift went back.
fn released(clock: &mut Clock, customer: &CustomerId) -> Vec<EventEnvelope> {
    let saga = SagaId::new();
    vec![
        clock.envelope(
            DomainEvent::GiftReleased(GiftReleasedV1 {
                gift_id: GiftId::new(),
                customer_id: customer.clone(),
            }),
            saga,
        ),
        clock.envelope(
            DomainEvent::SagaFinished(SagaFinishedV1 {
                saga_id: saga,
                saga_type: GIFT_EXCHANGE.into(),
                state: "compensated".into(),
            }),
            saga,
        ),
    ]
}

fn customer() -> CustomerId {
    format!("player-{}", short_id())
        .parse()
        .expect("a valid customer id")
}

/// Lots of sagas of many customers (for rebuild and replica tests).
fn traffic(clock: &mut Clock, sagas: usize) -> Vec<EventEnvelope> {
    let customers: Vec<_> = (0..7).map(|_| customer()).collect();
    let mut events = Vec::new();
    for n in 0..sagas {
        let who = &customers[n % customers.len()];
        let balance = i64::try_from(n).unwrap_or(0) * 10;
        match n % 4 {
            0 | 1 => events.extend(completed(clock, who, 10, balance).events),
            2 => events.extend(compensated(clock, who, balance).events),
            _ => events.extend(exchanged(clock, who, balance).3),
        }
    }
    events
}

async fn each_query_finds_the_row(database: &Database, nats: &Nats) -> anyhow::Result<()> {
    let backend = database.backend;
    let running = Running::start(database.store().await?, nats, 500).await?;
    let (mut clock, who) = (Clock::new(), customer());
    let done = completed(&mut clock, &who, 150, 150);
    let undone = compensated(&mut clock, &who, 150);
    let (saga, gift, voucher, exchange) = exchanged(&mut clock, &who, 110);
    let given_back = released(&mut clock, &who);
    for envelope in done
        .events
        .iter()
        .chain(&undone.events)
        .chain(&exchange)
        .chain(&given_back)
    {
        nats.publish(envelope, false).await?;
    }
    running.caught_up(nats.head().await?).await?;

    let row = running
        .get(&format!("/v1/mypages/{}", done.mission))
        .await?;
    assert_eq!(
        row,
        json!({
            "mission_id": done.mission.to_string(),
            "customer_id": who.as_str(),
            "mission_status": "REWARDED",
            "reward_id": done.reward.to_string(),
            "reward_points": 150,
            "telegram_id": done.notification.to_string(),
            "notification_status": "sent",
            "telegram_message_id": 4242,
            "updated_at": row["updated_at"],
        }),
        "{backend:?}"
    );
    let updated: DateTime<Utc> = serde_json::from_value(row["updated_at"].clone())?;
    assert_eq!(
        updated,
        super::view::micros(done.events[5].occurred_at),
        "the newest change the row reflects"
    );
    let open = running
        .get(&format!("/v1/mypages/{}", undone.mission))
        .await?;
    assert_eq!(
        (
            &open["mission_status"],
            &open["reward_id"],
            &open["reward_points"]
        ),
        (&json!("OPEN"), &Value::Null, &Value::Null),
        "a compensated saga's row: {open}"
    );

    let by_reward = running
        .get(&format!("/v1/mypages?reward_id={}", done.reward))
        .await?;
    assert_eq!(
        by_reward["items"].as_array().map(Vec::len),
        Some(1),
        "{by_reward}"
    );
    assert_eq!(
        by_reward["items"][0]["mission_id"],
        done.mission.to_string()
    );
    assert_eq!(by_reward["items"][0]["kind"], "mission");
    let by_telegram = running
        .get(&format!("/v1/mypages?telegram_id={}", done.notification))
        .await?;
    assert_eq!(
        by_telegram["items"][0]["mission_id"],
        done.mission.to_string()
    );
    let revoked = running
        .get(&format!("/v1/mypages?reward_id={}", undone.reward))
        .await?;
    assert_eq!(revoked["items"], json!([]), "a revoked reward is on no row");

    let mine = running
        .get(&format!("/v1/mypages?customer_id={who}"))
        .await?;
    assert_eq!(mine["wallet_balance"], 110, "{mine}");
    assert!(mine["next_cursor"].is_null());
    let items = mine["items"].as_array().context("items")?;
    assert_eq!(items.len(), 4, "{mine}");
    let gift_row = items
        .iter()
        .find(|i| i["saga_id"] == saga.to_string())
        .context("the gift exchange")?;
    assert_eq!(gift_row["saga_id"], saga.to_string());
    assert_eq!(gift_row["gift_id"], gift.to_string());
    assert_eq!(gift_row["gift_name"], "Dragon mug ☕");
    assert_eq!(gift_row["voucher_code"], voucher);
    assert_eq!(gift_row["notification_status"], "queued");
    assert_eq!(gift_row["exchange_state"], "completed");
    assert_eq!(gift_row["gift_status"], "issued");
    let back = items
        .iter()
        .find(|i| i["saga_id"] == json!(given_back[0].saga_id))
        .context("the exchange given back")?;
    assert_eq!(
        (
            &back["kind"],
            &back["gift_status"],
            &back["exchange_state"],
            &back["voucher_code"]
        ),
        (
            &json!("gift"),
            &json!("released"),
            &json!("compensated"),
            &Value::Null
        ),
        "{back}"
    );

    // Keyset pages, one row each, walk the same rows in the same order.
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = running
            .get(&format!(
                "/v1/mypages?customer_id={who}&limit=1&cursor={cursor}"
            ))
            .await?;
        walked.extend(page["items"].as_array().context("items")?.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(&walked, items);

    for (path, status, code) in [
        (
            format!("/v1/mypages/{}", Uuid::now_v7()),
            404,
            "mypage_not_found",
        ),
        (
            "/v1/mypages/not-a-mission".to_owned(),
            404,
            "mypage_not_found",
        ),
        ("/v1/mypages".to_owned(), 400, "invalid_query"),
        (
            format!("/v1/mypages?customer_id={who}&reward_id={}", done.reward),
            400,
            "invalid_query",
        ),
        (
            "/v1/mypages?reward_id=nope".to_owned(),
            400,
            "invalid_query",
        ),
        (
            format!("/v1/mypages?customer_id={who}&limit=0"),
            400,
            "invalid_query",
        ),
        (
            format!("/v1/mypages?customer_id={who}&limit=501"),
            400,
            "invalid_query",
        ),
        (
            format!("/v1/mypages?customer_id={who}&cursor=nope"),
            400,
            "invalid_query",
        ),
    ] {
        let (got, problem) = running.call(reqwest::Method::GET, &path).await?;
        assert_eq!(
            (got.as_u16(), problem["code"].as_str()),
            (status, Some(code)),
            "{path}: {problem}"
        );
    }
    running.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mypage_each_query_finds_the_row_on_mariadb() -> anyhow::Result<()> {
    on_scratch(&[Backend::MariaDb], async |db, nats| {
        each_query_finds_the_row(&db[0], nats).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mypage_each_query_finds_the_row_on_postgres() -> anyhow::Result<()> {
    on_scratch(&[Backend::Postgres], async |db, nats| {
        each_query_finds_the_row(&db[0], nats).await
    })
    .await
}

async fn duplicates_and_replays_change_nothing(
    database: &Database,
    nats: &Nats,
) -> anyhow::Result<()> {
    let backend = database.backend;
    let running = Running::start(database.store().await?, nats, 500).await?;
    let mut clock = Clock::new();
    let events = traffic(&mut clock, 24);
    nats.publish_all(&events).await?;
    running.caught_up(nats.head().await?).await?;
    let before = running.snapshot().await?;
    assert!(before.rows.len() >= 24, "{} rows", before.rows.len());

    // Every event again, under new Nats-Msg-Ids (new stream sequences), in reverse order too.
    for envelope in events.iter().chain(events.iter().rev()) {
        nats.publish(envelope, true).await?;
    }
    running.caught_up(nats.head().await?).await?;
    assert_eq!(
        running.snapshot().await?,
        before,
        "{backend:?}: republished events"
    );

    // A second replica over the same store reads the stream from its position: nothing new.
    let replica = Running::start(database.store().await?, nats, 7).await?;
    let served = replica
        .get(&format!("/v1/mypages/{}", events[0].event_mission()))
        .await?;
    assert_eq!(served["mission_id"], events[0].event_mission().to_string());
    running.stop().await?;
    // And a replay of the whole stream into a new generation builds the same view.
    let status = replica.worker.rebuild(&CancellationToken::new()).await?;
    assert_eq!(status.serving_generation, 2, "{status:?}");
    assert_eq!(
        status.replayed,
        i64::try_from(events.len() * 3).unwrap_or(0),
        "every message replayed once"
    );
    assert_eq!(
        replica.snapshot().await?,
        before,
        "{backend:?}: replayed events"
    );
    replica.stop().await?;
    Ok(())
}

trait MissionOf {
    fn event_mission(&self) -> MissionId;
}

impl MissionOf for EventEnvelope {
    fn event_mission(&self) -> MissionId {
        match &self.event {
            DomainEvent::MissionUpdated(m) => m.id,
            _ => MissionId(Uuid::nil()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mypage_duplicates_and_replays_change_nothing_on_mariadb() -> anyhow::Result<()> {
    on_scratch(&[Backend::MariaDb], async |db, nats| {
        duplicates_and_replays_change_nothing(&db[0], nats).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mypage_duplicates_and_replays_change_nothing_on_postgres() -> anyhow::Result<()> {
    on_scratch(&[Backend::Postgres], async |db, nats| {
        duplicates_and_replays_change_nothing(&db[0], nats).await
    })
    .await
}

fn counter(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| line.starts_with(name))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn unknown_is_skipped_and_garbage_is_parked(
    database: &Database,
    nats: &Nats,
) -> anyhow::Result<()> {
    let metrics = runtime::metrics::handle();
    let running = Running::start(database.store().await?, nats, 500).await?;
    let (mut clock, who) = (Clock::new(), customer());
    let first = completed(&mut clock, &who, 5, 5);
    let second = completed(&mut clock, &who, 7, 12);

    nats.publish_all(&first.events).await?;
    let strange = format!("PlayerDanced{}", short_id());
    let mut unknown = serde_json::to_value(&first.events[0])?;
    unknown["event_type"] = json!(strange);
    unknown["event"]["type"] = json!(format!("{strange}.v1"));
    unknown["message_id"] = json!(Uuid::now_v7());
    nats.publish_raw(
        nats.topology.event_subject("mission", &strange),
        serde_json::to_vec(&unknown)?,
    )
    .await?;
    let mut newer = serde_json::to_value(&first.events[0])?;
    newer["schema_version"] = json!(9);
    newer["event"]["type"] = json!("MissionUpdated.v9");
    newer["event"]["status"] = json!("DANCING");
    newer["message_id"] = json!(Uuid::now_v7());
    nats.publish_raw(
        nats.topology.event_subject("mission", "MissionUpdated"),
        serde_json::to_vec(&newer)?,
    )
    .await?;
    let garbage_subject = nats.topology.event_subject("mission", "MissionUpdated");
    nats.publish_raw(
        garbage_subject.clone(),
        b"{\"not\": \"an envelope\"".to_vec(),
    )
    .await?;
    nats.publish_all(&second.events).await?;
    running.caught_up(nats.head().await?).await?;

    // The projection kept going past all three.
    let row = running
        .get(&format!("/v1/mypages/{}", second.mission))
        .await?;
    assert_eq!(row["notification_status"], "sent");
    let row = running
        .get(&format!("/v1/mypages/{}", first.mission))
        .await?;
    assert_eq!(
        row["mission_status"], "REWARDED",
        "a newer version is not applied"
    );
    let scrape = metrics.render();
    assert_eq!(
        counter(
            &scrape,
            "saga_events_skipped_total",
            &[("consumer", "mypage"), ("event_type", &strange)]
        ),
        1.0,
        "{scrape}"
    );

    // The garbage is parked, once, with its reason; a rebuild replays past it without parking
    // it again.
    let parked = dead_letters(nats).await?;
    assert_eq!(parked.len(), 1, "{parked:?}");
    let (subject, headers) = &parked[0];
    assert_eq!(
        subject,
        &nats.topology.dead_letter_subject(&garbage_subject)
    );
    assert!(
        headers
            .get(runtime::dead_letter::REASON)
            .is_some_and(|r| r.as_str().contains("not an event envelope")),
        "{headers:?}"
    );
    assert_eq!(
        headers
            .get(runtime::dead_letter::CONSUMER)
            .map(|c| c.as_str()),
        Some("mypage")
    );
    running.worker.rebuild(&CancellationToken::new()).await?;
    assert_eq!(dead_letters(nats).await?.len(), 1);
    running.stop().await?;
    Ok(())
}

/// The dead letters of the test's streams: (subject, headers).
async fn dead_letters(nats: &Nats) -> anyhow::Result<Vec<(String, async_nats::HeaderMap)>> {
    let mut stream = nats
        .js
        .get_stream(nats.topology.stream(Stream::DeadLetters))
        .await?;
    let last = stream.info().await?.state.last_sequence;
    let mut parked = Vec::new();
    for sequence in 1..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            parked.push((message.subject.to_string(), message.headers));
        }
    }
    Ok(parked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mypage_unknown_events_are_skipped_and_garbage_is_parked_on_mariadb() -> anyhow::Result<()>
{
    on_scratch(&[Backend::MariaDb], async |db, nats| {
        unknown_is_skipped_and_garbage_is_parked(&db[0], nats).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mypage_unknown_events_are_skipped_and_garbage_is_parked_on_postgres() -> anyhow::Result<()>
{
    on_scratch(&[Backend::Postgres], async |db, nats| {
        unknown_is_skipped_and_garbage_is_parked(&db[0], nats).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mypage_a_rebuild_during_live_traffic_ends_identical_to_the_live_view() -> anyhow::Result<()>
{
    on_scratch(&[Backend::MariaDb, Backend::Postgres], async |db, nats| {
        rebuild_during_live_traffic(&db[0], &db[1], nats).await
    })
    .await
}

async fn rebuild_during_live_traffic(
    maria: &Database,
    postgres: &Database,
    nats: &Nats,
) -> anyhow::Result<()> {
    // Two replicas on MariaDB (both project, both replay the rebuild), and one live-only view
    // on PostgreSQL to compare with.
    let rebuilt = Running::start(maria.store().await?, nats, 200).await?;
    let other_replica = Running::start(maria.store().await?, nats, 50).await?;
    let reference = Running::start(postgres.store().await?, nats, 500).await?;

    let mut clock = Clock::new();
    let before = traffic(&mut clock, 600);
    nats.publish_all(&before).await?;
    rebuilt.caught_up(nats.head().await?).await?;

    // Live traffic all along the rebuild.
    let stop_traffic = CancellationToken::new();
    let publisher = {
        let (js, topology, stop) = (nats.js.clone(), nats.topology.clone(), stop_traffic.clone());
        tokio::spawn(async move {
            let live = Nats { js, topology };
            let mut clock = Clock::new();
            let mut published = 0usize;
            while !stop.is_cancelled() {
                let events = traffic(&mut clock, 4);
                published += events.len();
                live.publish_all(&events).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(published)
        })
    };

    let (status, started) = rebuilt
        .call(reqwest::Method::POST, "/v1/mypages/rebuild")
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(
        (
            &started["state"],
            &started["replayed"],
            &started["generation"]
        ),
        (&json!("running"), &json!(0), &json!(2)),
        "{started}"
    );
    let (status, conflict) = rebuilt
        .call(reqwest::Method::POST, "/v1/mypages/rebuild")
        .await?;
    assert_eq!(
        (status, conflict["code"].as_str()),
        (StatusCode::CONFLICT, Some("rebuild_running")),
        "{conflict}"
    );
    // Reads keep being served meanwhile, from the old generation.
    let early = before[0].event_mission();
    let served = rebuilt.get(&format!("/v1/mypages/{early}")).await?;
    assert_eq!(served["mission_id"], early.to_string());
    let progress = rebuilt.get("/v1/mypages/rebuild").await?;
    if progress["state"] == "running" {
        assert_eq!(progress["serving_generation"], 1, "{progress}");
    }

    let done = wait_for(WAIT, "the rebuild to finish", || async {
        let status = rebuilt.get("/v1/mypages/rebuild").await?;
        Ok((status["state"] == "done").then_some(status))
    })
    .await?;
    assert_eq!(
        (&done["generation"], &done["serving_generation"]),
        (&json!(2), &json!(2)),
        "{done}"
    );
    assert!(
        done["replayed"].as_i64().unwrap_or(0) >= i64::try_from(before.len())?,
        "{done}"
    );
    assert!(!done["finished_at"].is_null(), "{done}");
    // Traffic goes on after the switch, then stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_traffic.cancel();
    let published = publisher.await??;
    assert!(published > 0);

    let head = nats.head().await?;
    rebuilt.caught_up(head).await?;
    reference.caught_up(head).await?;
    let (left, right) = (rebuilt.snapshot().await?, reference.snapshot().await?);
    assert_eq!(left.rows.len(), right.rows.len());
    assert_eq!(left.wallets.len(), right.wallets.len());
    assert_eq!(
        left, right,
        "the rebuilt view (MariaDB) equals the live one (PostgreSQL)"
    );
    // The replaced generation is dropped.
    wait_for(WAIT, "generation 1 to be dropped", || async {
        let old = rebuilt.store().snapshot(1).await?;
        Ok((old.rows.is_empty() && old.wallets.is_empty()).then_some(()))
    })
    .await?;

    // The other way round: a rebuild on PostgreSQL (from the command line's entry point) ends
    // identical to the MariaDB view.
    let status = reference.worker.rebuild(&CancellationToken::new()).await?;
    assert_eq!(status.serving_generation, 2);
    assert_eq!(reference.snapshot().await?, left);

    for running in [rebuilt, other_replica, reference] {
        running.stop().await?;
    }
    Ok(())
}
