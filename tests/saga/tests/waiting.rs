//! Waiting for a saga's result without polling, through the real platform: the long poll
//! `GET /v1/sagas/{id}?wait=`, `POST /v1/sagas` with `Prefer: wait=`, the server-sent events of
//! `GET /v1/sagas/{id}/events` and the saga page following them live in Chromium. A waiter reads
//! the saga once and then costs no query while it waits, on whichever replica it waits: a second
//! platform on the same database and NATS prefix plays the other replica, and the store's read
//! counter (`saga_store_reads_total`) proves it.
//!
//! The read counter is one per process: the tests of this file take turns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use contracts::{Action, Reply, StepFailure, Worker};
use platform::{Platform, Settings};
use reqwest::Method;
use saga_tests::browser::Browser;
use saga_tests::{FakeWorker, TestPlatform, default_settings, wait_for};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// The tests of this file share the process's metrics: one at a time.
static TURN: Mutex<()> = Mutex::const_new(());

/// Another replica of `p`'s platform: the same database, NATS prefix and tokens, `settings`
/// otherwise (what the harness does for its own platform).
async fn replica_of(p: &TestPlatform, mut settings: Settings) -> anyhow::Result<Platform> {
    settings.tokens = p.tokens.configuration();
    settings.gift.gift_service_token = Some(p.tokens.notify.as_str().into());
    for infra in [
        &mut settings.orchestrator.infra,
        &mut settings.workers.infra,
    ] {
        infra.database_url = p.database_url.as_str().into();
        infra.nats_url = p.nats_url.clone();
        infra.nats_prefix = p.prefix.clone();
    }
    Platform::start(settings, CancellationToken::new()).await
}

/// `saga_store_reads_total` by `query`, from `/metrics`.
async fn reads(p: &TestPlatform) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = p
        .http
        .get(format!("{}/metrics", p.base))
        .send()
        .await?
        .text()
        .await?;
    let mut reads = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("saga_store_reads_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let query = labels
            .split(',')
            .find_map(|l| l.strip_prefix("query=\""))
            .map(|q| q.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        reads.insert(query, value.trim().parse()?);
    }
    Ok(reads)
}

/// How many more reads of `query` `after` shows than `before`.
fn more(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, query: &str) -> f64 {
    after.get(query).copied().unwrap_or(0.0) - before.get(query).copied().unwrap_or(0.0)
}

/// Every read the waiters could have caused: all but the background loops' sweeps.
fn waiter_reads(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> f64 {
    after
        .keys()
        .filter(|q| !matches!(q.as_str(), "due_timers" | "activity"))
        .map(|q| more(before, after, q))
        .sum()
}

/// `GET base+path` with `token`: (status, JSON body, how long it took).
async fn get_as(base: &str, token: &str, path: &str) -> anyhow::Result<(u16, Value, Duration)> {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(90))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body, started.elapsed()))
}

/// `POST /v1/sagas` for `mission` with `Prefer: <prefer>`: (status, headers, body, time).
async fn start_preferring(
    p: &TestPlatform,
    mission: &str,
    prefer: &str,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value, Duration)> {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/sagas", p.base))
        .bearer_auth(&p.tokens.game)
        .header("prefer", prefer)
        .timeout(Duration::from_secs(90))
        .json(&json!({"type": "mission_reward", "input": {"mission_id": mission}}))
        .send()
        .await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, headers, body, started.elapsed()))
}

/// A server-sent event stream, read as it comes.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(base: &str, token: &str, saga_id: &str) -> anyhow::Result<(u16, Self)> {
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/sagas/{saga_id}/events"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((
            status,
            Self {
                response,
                buffer: String::new(),
            },
        ))
    }

    fn content_type(&self) -> String {
        self.response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The next event (name, data as JSON), or `None` when the stream ended.
    async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<(String, Value)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Ok(Some((name, serde_json::from_str(&data)?)));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .map_err(|_| anyhow::anyhow!("no event within {timeout:?}"))??;
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }
}

fn refused() -> Reply {
    Reply::Failed(StepFailure::permanent(
        "budget_exhausted",
        "no budget left (the test says so)",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_reads_once_then_waits_on_any_replica_for_free_and_hears_the_end()
-> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    settings.orchestrator.policies.step_timeout = Duration::from_secs(60);
    let p = TestPlatform::start_with(settings.clone()).await?;
    let reward = FakeWorker::attach(&p, Worker::Reward).await?;
    let replica = replica_of(&p, settings).await?;
    let other = replica.base_url();

    let (_, _, mission) = p.customer_with_mission(10).await?;
    let (status, headers, saga, took) =
        start_preferring(&p, mission["id"].as_str().expect("id"), "wait=1").await?;
    assert_eq!(
        status, 202,
        "the saga cannot end while its step is held: {saga}"
    );
    assert_eq!(headers["preference-applied"], "wait=1");
    assert!(headers["location"].to_str()?.starts_with("/v1/sagas/"));
    assert!(took >= Duration::from_millis(950), "it waited: {took:?}");
    assert_eq!(saga["state"], "running");
    let saga_id = saga["id"].as_str().expect("id").to_owned();
    let grant = reward.next(WAIT).await?;
    assert_eq!(grant.body.action(), Action::GrantReward);

    // Three waiters, two of them on the other replica, for 3 s on a saga that does not move.
    let before = reads(&p).await?;
    let game = p.tokens.game.clone();
    let here = tokio::spawn({
        let (base, token, path) = (
            p.base.clone(),
            game.clone(),
            format!("/v1/sagas/{saga_id}?wait=3s"),
        );
        async move { get_as(&base, &token, &path).await }
    });
    let there = tokio::spawn({
        let (base, token, path) = (
            other.clone(),
            game.clone(),
            format!("/v1/sagas/{saga_id}?wait=3"),
        );
        async move { get_as(&base, &token, &path).await }
    });
    let (status, mut events) = Events::open(&other, &p.tokens.reader, &saga_id).await?;
    assert_eq!(status, 200);
    assert!(
        events.content_type().starts_with("text/event-stream"),
        "{}",
        events.content_type()
    );
    let (name, first) = events.next(WAIT).await?.expect("the current saga at once");
    assert_eq!(
        (name.as_str(), first["state"].as_str()),
        ("saga", Some("running"))
    );
    assert_eq!(first["id"], saga_id);
    for (replica, waiter) in [("this", here), ("the other", there)] {
        let (status, body, took) = waiter.await??;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "running", "on {replica} replica: {body}");
        assert!(
            took >= Duration::from_millis(2_900) && took < Duration::from_secs(10),
            "on {replica} replica the wait ran its course: {took:?}"
        );
    }
    let after = reads(&p).await?;
    eprintln!(
        "reads while three clients waited 3 s: {:?} -> {:?}",
        before, after
    );
    assert_eq!(
        more(&before, &after, "saga"),
        3.0,
        "one read per waiter, when it started"
    );
    assert_eq!(
        waiter_reads(&before, &after),
        3.0,
        "and nothing else: {before:?} -> {after:?}"
    );

    // Now the saga moves on this replica while clients wait on both.
    let before = reads(&p).await?;
    let here = tokio::spawn({
        let (base, token, path) = (
            p.base.clone(),
            game.clone(),
            format!("/v1/sagas/{saga_id}?wait=30s"),
        );
        async move { get_as(&base, &token, &path).await }
    });
    let there = tokio::spawn({
        let (base, token, path) = (
            other.clone(),
            game.clone(),
            format!("/v1/sagas/{saga_id}?wait=30000ms"),
        );
        async move { get_as(&base, &token, &path).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let released = Instant::now();
    reward.reply(&grant, refused()).await?;
    for (replica, waiter) in [("this", here), ("the other", there)] {
        let (status, body, _) = waiter.await??;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some("compensated")),
            "on {replica} replica: {body}"
        );
    }
    let answered = released.elapsed();
    eprintln!("both long polls answered {answered:?} after the reply that ended the saga");
    assert!(
        answered < Duration::from_secs(5),
        "as soon as it ended: {answered:?}"
    );
    let (name, moved) = events
        .next(WAIT)
        .await?
        .expect("the change to compensating");
    assert_eq!(
        (name.as_str(), moved["state"].as_str()),
        ("saga", Some("compensating"))
    );
    let (_, last) = events.next(WAIT).await?.expect("the terminal state");
    assert_eq!(last["state"], "compensated");
    assert_eq!(last["compensations"][0]["name"], "mission.reopen");
    assert!(
        events.next(WAIT).await?.is_none(),
        "the stream ends after the terminal state"
    );
    let after = reads(&p).await?;
    assert_eq!(
        more(&before, &after, "saga"),
        2.0,
        "{before:?} -> {after:?}"
    );
    let (_, saga, _) = get_as(&p.base, &game, &format!("/v1/sagas/{saga_id}")).await?;
    assert_eq!(saga["state"], "compensated");

    replica.stop().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_answers_with_the_finished_saga_and_waits_are_checked() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    let p = TestPlatform::start().await?;
    let (_, _, mission) = p.customer_with_mission(10).await?;
    let (status, headers, saga, took) = start_preferring(
        &p,
        mission["id"].as_str().expect("id"),
        "respond-async, wait=100",
    )
    .await?;
    eprintln!("POST /v1/sagas with Prefer: wait answered {status} after {took:?}");
    assert_eq!(
        (status, saga["state"].as_str()),
        (200, Some("completed")),
        "{saga}"
    );
    assert_eq!(headers["preference-applied"], "wait=60", "at most 60 s");
    assert_eq!(headers["content-type"], "application/json");
    let saga_id = saga["id"].as_str().expect("id").to_owned();
    assert_eq!(
        headers["location"].to_str()?,
        format!("/v1/sagas/{saga_id}")
    );
    assert_eq!(saga["steps"].as_array().map(Vec::len), Some(6));

    let game = p.tokens.game.clone();
    let (status, body, took) =
        get_as(&p.base, &game, &format!("/v1/sagas/{saga_id}?wait=10s")).await?;
    assert_eq!((status, body["state"].as_str()), (200, Some("completed")));
    assert!(
        took < Duration::from_secs(2),
        "a terminal saga answers at once: {took:?}"
    );
    let (status, body, _) =
        get_as(&p.base, &game, &format!("/v1/sagas/{saga_id}?wait=500ms")).await?;
    assert_eq!((status, body["state"].as_str()), (200, Some("completed")));
    for bad in ["61s", "61", "60001ms", "soon", "-1"] {
        let (status, problem, _) =
            get_as(&p.base, &game, &format!("/v1/sagas/{saga_id}?wait={bad}")).await?;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_query")),
            "wait={bad}: {problem}"
        );
    }
    let unknown = uuid::Uuid::now_v7();
    let (status, problem, _) =
        get_as(&p.base, &game, &format!("/v1/sagas/{unknown}?wait=1")).await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("saga_not_found"))
    );
    let (status, _) = Events::open(&p.base, &game, &unknown.to_string()).await?;
    assert_eq!(status, 404);

    let (status, mut events) = Events::open(&p.base, &game, &saga_id).await?;
    assert_eq!(status, 200);
    let (_, only) = events.next(WAIT).await?.expect("the current saga");
    assert_eq!(only["state"], "completed");
    assert!(
        events.next(WAIT).await?.is_none(),
        "a terminal saga's stream ends at once"
    );

    // A key used before: the replay waits just the same.
    let (_, _, second) = p.customer_with_mission(10).await?;
    let body = json!({"type": "mission_reward", "input": {"mission_id": second["id"]}});
    for expected in [200, 200] {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/sagas", p.base))
            .bearer_auth(&game)
            .header("prefer", "wait=20")
            .header("idempotency-key", format!("wait-{}", second["id"]))
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), expected);
        assert_eq!(response.headers()["preference-applied"], "wait=20");
        let saga: Value = response.json().await?;
        assert_eq!(saga["state"], "completed");
    }

    let (status, definitions, _) = get_as(&p.base, &p.tokens.reader, "/v1/definitions").await?;
    assert_eq!(status, 200, "{definitions}");
    let items = definitions["items"].as_array().expect("items");
    let find = |ty: &str, version: u64| {
        items
            .iter()
            .find(|d| d["type"] == ty && d["version"] == version)
            .cloned()
            .unwrap_or_else(|| panic!("{ty} v{version} in {definitions}"))
    };
    assert_eq!(find("mission_reward", 1)["latest"], false);
    let v2 = find("mission_reward", 2);
    assert_eq!(v2["latest"], true);
    let pivots: Vec<&str> = v2["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["pivot"] == true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(pivots, ["telegram.send"]);
    assert_eq!(
        v2["steps"][1],
        json!({"name": "reward.grant", "compensation": "reward.revoke", "pivot": false})
    );
    assert_eq!(v2["steps"][5]["compensation"], Value::Null);
    assert_eq!(find("gift_exchange", 1)["steps"][2]["pivot"], true);
    let (status, _, _) = get_as(&p.base, &game, "/v1/definitions").await?;
    assert_eq!(status, 403, "reading the definitions needs the read scope");

    let (status, headers, _) = p
        .call_as(
            Some(&p.tokens.reader),
            Method::GET,
            "/ui/assets/live.js",
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()?
            .starts_with("text/javascript")
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_page_follows_a_running_saga_live() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    settings.orchestrator.policies.step_timeout = Duration::from_secs(60);
    let p = TestPlatform::start_with(settings).await?;
    let reward = FakeWorker::attach(&p, Worker::Reward).await?;
    let (_, _, mission) = p.customer_with_mission(10).await?;
    let saga_id = p.start_saga(mission["id"].as_str().expect("id")).await?;
    let grant = reward.next(WAIT).await?;

    let browser = Browser::start().await?;
    browser.log_in(&p.base, &p.tokens.reader).await?;
    browser
        .client
        .goto(&format!("{}/ui/sagas/{saga_id}", p.base))
        .await?;
    let page = browser.html().await?;
    assert!(page.contains("data-state=\"running\""), "{page}");
    assert!(page.contains("src=\"/ui/assets/live.js\""), "{page}");
    wait_for(WAIT, "the page to follow the saga's events", || async {
        Ok(browser.html().await?.contains(">live<").then_some(()))
    })
    .await?;

    reward.reply(&grant, refused()).await?;
    let page = wait_for(WAIT, "the page to show the saga compensated", || async {
        let page = browser.html().await?;
        Ok(page.contains("data-state=\"compensated\"").then_some(page))
    })
    .await?;
    assert!(
        page.contains("<h3>mission.reopen</h3>"),
        "the compensation lane: {page}"
    );
    assert!(
        !page.contains("live.js"),
        "a terminal saga's page follows nothing"
    );
    browser.close().await?;
    p.stop().await
}
