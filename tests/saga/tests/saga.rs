//! Whole mission-reward sagas through the HTTP API against the real PostgreSQL and NATS
//! JetStream: the happy path, every compensation a user can cause, Telegram trouble,
//! idempotency, bad input, dead letters and duplicate deliveries.

use std::time::Duration;

use reqwest::Method;
use saga_tests::{TestPlatform, compensation_names, wait_for};
use serde_json::{Value, json};
use workers::telegram_stand_in::FaultSpec;

const SAGA_TIMEOUT: Duration = Duration::from_secs(30);

fn step<'a>(saga: &'a Value, name: &str) -> &'a Value {
    saga["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or(&Value::Null)
}

fn sent_to(
    platform: &TestPlatform,
    chat_id: i64,
) -> Vec<workers::telegram_stand_in::ReceivedMessage> {
    platform
        .stand_in()
        .messages()
        .into_iter()
        .filter(|m| m.chat_id == json!(chat_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_for_a_new_mission_completes_and_pays_and_tells_the_customer() -> anyhow::Result<()>
{
    let p = TestPlatform::start().await?;
    let (customer, chat_id, mission) = p.customer_with_mission(120).await?;
    let mission_id = mission["id"].as_str().expect("mission id");
    let saga_id = p.start_saga(mission_id).await?;
    let saga = p.wait_terminal(&saga_id, SAGA_TIMEOUT).await?;

    assert_eq!(saga["state"], "completed", "{saga}");
    let steps = saga["steps"].as_array().expect("steps");
    let names: Vec<_> = steps
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "mission.complete",
            "reward.grant",
            "wallet.credit",
            "mission.attach_reward",
            "telegram.send",
            "mission.record_message"
        ]
    );
    assert_eq!(saga["definition_version"], 2);
    for s in steps {
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(s["attempts"], 1, "{s}");
        assert!(
            s["started_at"].is_string() && s["finished_at"].is_string(),
            "{s}"
        );
    }
    assert!(saga["compensations"].as_array().is_some_and(Vec::is_empty));
    assert_eq!(saga["context"]["customer_id"], customer.as_str());

    let mission = p.get(&format!("/v1/missions/{mission_id}")).await?;
    assert_eq!(mission["status"], "REWARDED");
    assert_eq!(mission["reward_id"], saga["context"]["reward_id"]);
    assert_eq!(mission["notification_status"], "sent");
    assert_eq!(
        mission["notification_id"],
        saga["context"]["notification_id"]
    );

    let wallet = p.get(&format!("/v1/wallets/{customer}")).await?;
    assert_eq!(wallet["balance"], 120);
    let entries = wallet["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{wallet}");
    assert_eq!(
        (entries[0]["kind"].clone(), entries[0]["points"].clone()),
        (json!("credit"), json!(120))
    );
    assert_eq!(entries[0]["saga_id"], saga["id"]);

    let messages = sent_to(&p, chat_id);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let text = messages[0].text.clone().unwrap_or_default();
    assert!(text.contains("Slay the dragon"), "{text}");
    assert_eq!(messages[0].status, 200);
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_compensates_and_reopens_the_mission() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (status, _, _) = p
        .call(
            Method::PUT,
            "/v1/rewards/budget",
            Some(json!({"remaining_points": 50})),
        )
        .await?;
    assert_eq!(status, 200);
    let (customer, chat_id, mission) = p.customer_with_mission(100).await?;
    let mission_id = mission["id"].as_str().expect("mission id");
    let saga = p
        .wait_terminal(&p.start_saga(mission_id).await?, SAGA_TIMEOUT)
        .await?;

    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(step(&saga, "reward.grant")["state"], "failed");
    assert!(
        step(&saga, "reward.grant")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("budget_exhausted"))
    );
    assert_eq!(compensation_names(&saga), ["mission.reopen"]);
    assert_eq!(step(&saga, "mission.complete")["state"], "compensated");
    assert_eq!(
        p.get(&format!("/v1/missions/{mission_id}")).await?["status"],
        "OPEN"
    );
    assert_eq!(
        p.get(&format!("/v1/wallets/{customer}")).await?["balance"],
        0
    );
    assert_eq!(p.get("/v1/rewards/budget").await?["remaining_points"], 50);
    assert!(sent_to(&p, chat_id).is_empty());
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_wallet_compensates_and_reopens_the_mission() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (customer, _, mission) = p.customer_with_mission(100).await?;
    let (status, _, wallet) = p
        .call(
            Method::POST,
            &format!("/v1/wallets/{customer}/freeze"),
            None,
        )
        .await?;
    assert_eq!((status, wallet["frozen"].clone()), (200, json!(true)));
    let mission_id = mission["id"].as_str().expect("mission id");
    let saga = p
        .wait_terminal(&p.start_saga(mission_id).await?, SAGA_TIMEOUT)
        .await?;

    assert_eq!(saga["state"], "compensated", "{saga}");
    assert!(
        step(&saga, "wallet.credit")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("wallet_frozen"))
    );
    assert_eq!(
        compensation_names(&saga),
        ["reward.revoke", "mission.reopen"]
    );
    let reward_id = saga["context"]["reward_id"].as_str().expect("granted");
    assert_eq!(
        p.get(&format!("/v1/rewards/{reward_id}")).await?["status"],
        "REVOKED"
    );
    assert_eq!(
        p.get(&format!("/v1/missions/{mission_id}")).await?["status"],
        "OPEN"
    );
    assert_eq!(
        p.get(&format!("/v1/wallets/{customer}")).await?["balance"],
        0
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attach_revokes_the_granted_reward_and_reopens_in_reverse_order()
-> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (customer, chat_id, mission) = p.customer_with_mission(75).await?;
    let mission_id = mission["id"].as_str().expect("mission id");
    let (status, _, held) = p
        .call(
            Method::POST,
            &format!("/v1/missions/{mission_id}/hold"),
            None,
        )
        .await?;
    assert_eq!((status, held["on_hold"].clone()), (200, json!(true)));
    let saga = p
        .wait_terminal(&p.start_saga(mission_id).await?, SAGA_TIMEOUT)
        .await?;

    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(step(&saga, "reward.grant")["state"], "compensated");
    assert!(
        step(&saga, "mission.attach_reward")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("mission_on_hold"))
    );
    assert_eq!(
        compensation_names(&saga),
        ["wallet.debit", "reward.revoke", "mission.reopen"]
    );
    for c in saga["compensations"].as_array().expect("compensations") {
        assert_eq!(c["state"], "succeeded", "{c}");
    }
    let reward_id = saga["context"]["reward_id"]
        .as_str()
        .expect("the reward was granted");
    assert_eq!(
        p.get(&format!("/v1/rewards/{reward_id}")).await?["status"],
        "REVOKED"
    );
    let wallet = p.get(&format!("/v1/wallets/{customer}")).await?;
    assert_eq!(wallet["balance"], 0, "{wallet}");
    let kinds: Vec<_> = wallet["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("debit"), json!("credit")]);
    let mission = p.get(&format!("/v1/missions/{mission_id}")).await?;
    assert_eq!(
        (mission["status"].clone(), mission["reward_id"].clone()),
        (json!("OPEN"), Value::Null)
    );
    assert!(sent_to(&p, chat_id).is_empty());
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_answering_500_twice_then_200_still_completes() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (_, chat_id, mission) = p.customer_with_mission(10).await?;
    p.stand_in().push_fault(FaultSpec {
        status: 500,
        count: 2,
        retry_after: None,
    })?;
    let saga = p
        .wait_terminal(
            &p.start_saga(mission["id"].as_str().expect("id")).await?,
            SAGA_TIMEOUT,
        )
        .await?;

    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(step(&saga, "telegram.send")["attempts"], 3);
    assert_eq!(step(&saga, "telegram.send")["state"], "succeeded");
    let statuses: Vec<u16> = sent_to(&p, chat_id).iter().map(|m| m.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_429_is_retried_no_sooner_than_retry_after() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (_, chat_id, mission) = p.customer_with_mission(10).await?;
    p.stand_in().push_fault(FaultSpec {
        status: 429,
        count: 1,
        retry_after: Some(1),
    })?;
    let saga = p
        .wait_terminal(
            &p.start_saga(mission["id"].as_str().expect("id")).await?,
            SAGA_TIMEOUT,
        )
        .await?;

    assert_eq!(saga["state"], "completed", "{saga}");
    let calls = sent_to(&p, chat_id);
    assert_eq!(
        calls.iter().map(|m| m.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let first = calls[0].received_at;
    let second = calls[1].received_at;
    let gap = second - first;
    assert!(
        gap >= chrono::TimeDelta::milliseconds(1000),
        "retried after {gap}"
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_403_completes_with_the_notification_failed_and_the_reward_kept()
-> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (customer, chat_id, mission) = p.customer_with_mission(40).await?;
    p.stand_in().push_fault(FaultSpec {
        status: 403,
        count: 1,
        retry_after: None,
    })?;
    let mission_id = mission["id"].as_str().expect("id");
    let saga = p
        .wait_terminal(&p.start_saga(mission_id).await?, SAGA_TIMEOUT)
        .await?;

    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(step(&saga, "telegram.send")["state"], "failed");
    assert_eq!(step(&saga, "telegram.send")["attempts"], 1);
    assert!(
        step(&saga, "telegram.send")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("telegram_forbidden"))
    );
    assert_eq!(step(&saga, "mission.record_message")["state"], "succeeded");
    assert_eq!(
        p.get(&format!("/v1/wallets/{customer}")).await?["balance"],
        40
    );
    let mission = p.get(&format!("/v1/missions/{mission_id}")).await?;
    assert_eq!(mission["status"], "REWARDED");
    assert_eq!(mission["notification_status"], "failed");
    assert_eq!(sent_to(&p, chat_id).len(), 1);
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_starts_with_one_idempotency_key_make_one_saga_and_one_reward()
-> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (customer, chat_id, mission) = p.customer_with_mission(30).await?;
    let body = json!({"type": "mission_reward", "input": {"mission_id": mission["id"]}});
    let calls = (0..20).map(|_| {
        p.http
            .post(format!("{}/v1/sagas", p.base))
            .header("Idempotency-Key", "reward-once-123")
            .json(&body)
            .send()
    });
    let mut ids = Vec::new();
    for response in futures::future::join_all(calls).await {
        let response = response?;
        assert_eq!(response.status(), 202);
        let location = response.headers()["location"].to_str()?.to_owned();
        let saga: Value = response.json().await?;
        assert_eq!(
            location,
            format!("/v1/sagas/{}", saga["id"].as_str().expect("id"))
        );
        ids.push(saga["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let saga = p
        .wait_terminal(ids[0].as_str().expect("id"), SAGA_TIMEOUT)
        .await?;
    assert_eq!(saga["state"], "completed");
    assert_eq!(
        p.get("/v1/sagas").await?["items"].as_array().map(Vec::len),
        Some(1)
    );
    let wallet = p.get(&format!("/v1/wallets/{customer}")).await?;
    assert_eq!(
        (
            wallet["balance"].clone(),
            wallet["entries"].as_array().map(Vec::len)
        ),
        (json!(30), Some(1))
    );
    assert_eq!(sent_to(&p, chat_id).len(), 1);

    let other = json!({"type": "mission_reward", "input": {"mission_id": uuid::Uuid::now_v7()}});
    let response = p
        .http
        .post(format!("{}/v1/sagas", p.base))
        .header("Idempotency-Key", "reward-once-123")
        .json(&other)
        .send()
        .await?;
    assert_eq!(response.status(), 409);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        response.json::<Value>().await?["code"],
        "idempotency_key_reused"
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_problem_and_writes_nothing() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (_, _, mission) = p.customer_with_mission(10).await?;
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            p.http
                .post(format!("{}/v1/sagas", p.base))
                .header("content-type", "application/json")
                .body("{\"type\": "),
            400,
            "malformed_json",
        ),
        (
            "not JSON at all",
            p.http
                .post(format!("{}/v1/sagas", p.base))
                .body("type=mission_reward"),
            415,
            "unsupported_media_type",
        ),
        (
            "unknown saga type",
            p.http
                .post(format!("{}/v1/sagas", p.base))
                .json(&json!({"type": "nope", "input": {}})),
            422,
            "unknown_saga_type",
        ),
        (
            "missing type",
            p.http
                .post(format!("{}/v1/sagas", p.base))
                .json(&json!({"input": {"mission_id": mission["id"]}})),
            422,
            "invalid_body",
        ),
        (
            "missing mission_id",
            p.http
                .post(format!("{}/v1/sagas", p.base))
                .json(&json!({"type": "mission_reward", "input": {}})),
            422,
            "invalid_input",
        ),
        (
            "wrongly typed mission_id",
            p.http
                .post(format!("{}/v1/sagas", p.base))
                .json(&json!({"type": "mission_reward", "input": {"mission_id": 7}})),
            422,
            "invalid_input",
        ),
        (
            "input not an object",
            p.http
                .post(format!("{}/v1/sagas", p.base))
                .json(&json!({"type": "mission_reward", "input": "x"})),
            422,
            "invalid_input",
        ),
        (
            "unknown mission",
            p.http.post(format!("{}/v1/sagas", p.base)).json(
                &json!({"type": "mission_reward", "input": {"mission_id": uuid::Uuid::now_v7()}}),
            ),
            422,
            "unknown_reference",
        ),
        (
            "unknown saga id",
            p.http
                .get(format!("{}/v1/sagas/{}", p.base, uuid::Uuid::now_v7())),
            404,
            "saga_not_found",
        ),
        (
            "garbage saga id",
            p.http.get(format!("{}/v1/sagas/not-an-id", p.base)),
            404,
            "saga_not_found",
        ),
        (
            "bad list filter",
            p.http.get(format!("{}/v1/sagas?state=sleeping", p.base)),
            400,
            "invalid_query",
        ),
        (
            "bad cursor",
            p.http.get(format!("{}/v1/sagas?cursor=zzz", p.base)),
            400,
            "invalid_query",
        ),
        (
            "unknown route",
            p.http.get(format!("{}/v2/nothing", p.base)),
            404,
            "route_not_found",
        ),
    ];
    for (name, request, status, code) in cases {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem: Value = response.json().await?;
        assert_eq!(problem["code"], code, "{name}: {problem}");
        assert_eq!(problem["status"], status, "{name}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
    }
    assert_eq!(
        p.get("/v1/sagas").await?["items"],
        json!([]),
        "nothing was written"
    );
    assert_eq!(
        p.get(&format!(
            "/v1/missions/{}",
            mission["id"].as_str().expect("id")
        ))
        .await?["status"],
        "OPEN"
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_command_is_dead_lettered_with_its_reason_and_the_worker_keeps_serving()
-> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let js = async_nats::jetstream::new(p.nats.clone());
    let subject = format!("{}.cmd.mission.complete", p.prefix);
    js.publish(subject.clone(), "this is not a command".into())
        .await?
        .await?;

    let topology = contracts::Topology::new(&p.prefix);
    let dlq = js
        .get_stream(topology.stream(contracts::topology::Stream::DeadLetters))
        .await?;
    let letter = wait_for(Duration::from_secs(10), "a dead letter", || {
        let dlq = dlq.clone();
        async move { Ok(dlq.get_raw_message(1).await.ok()) }
    })
    .await?;
    assert_eq!(
        letter.subject.as_str(),
        format!("{}.dlq.cmd.mission.complete", p.prefix)
    );
    assert_eq!(&letter.payload[..], b"this is not a command");
    let headers = letter.headers;
    assert_eq!(
        headers
            .get("Dlq-Original-Subject")
            .map(|v| v.as_str().to_owned()),
        Some(subject)
    );
    let reason = headers
        .get("Dlq-Reason")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(reason.contains("undecodable"), "{reason}");

    let (_, _, mission) = p.customer_with_mission(5).await?;
    let saga = p
        .wait_terminal(
            &p.start_saga(mission["id"].as_str().expect("id")).await?,
            SAGA_TIMEOUT,
        )
        .await?;
    assert_eq!(saga["state"], "completed");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_replies_delivered_twice_change_nothing() -> anyhow::Result<()> {
    use futures::StreamExt;
    let p = TestPlatform::start().await?;
    let mut commands = p.nats.subscribe(format!("{}.cmd.>", p.prefix)).await?;
    let mut replies = p.nats.subscribe(format!("{}.reply.>", p.prefix)).await?;
    let (customer, chat_id, mission) = p.customer_with_mission(60).await?;
    let mission_id = mission["id"].as_str().expect("id");
    let saga_id = p.start_saga(mission_id).await?;
    let before = p.wait_terminal(&saga_id, SAGA_TIMEOUT).await?;
    assert_eq!(before["state"], "completed");
    let mission_before = p.get(&format!("/v1/missions/{mission_id}")).await?;

    let mut captured = Vec::new();
    for subscription in [&mut commands, &mut replies] {
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), subscription.next()).await
        {
            captured.push(message);
        }
    }
    assert_eq!(captured.len(), 12, "six commands and six replies");
    let js = async_nats::jetstream::new(p.nats.clone());
    for message in &captured {
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        js.publish_with_headers(message.subject.clone(), headers, message.payload.clone())
            .await?
            .await?;
    }
    let topology = contracts::Topology::new(&p.prefix);
    wait_for(
        Duration::from_secs(15),
        "the duplicates to be consumed",
        || {
            let js = js.clone();
            let topology = topology.clone();
            async move {
                for stream in [
                    contracts::topology::Stream::Commands,
                    contracts::topology::Stream::Replies,
                ] {
                    let info = js
                        .get_stream(topology.stream(stream))
                        .await?
                        .get_info()
                        .await?;
                    if info.state.messages > 0 {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let after = p.get(&format!("/v1/sagas/{saga_id}")).await?;
    assert_eq!(after, before, "the saga did not move");
    assert_eq!(
        p.get(&format!("/v1/missions/{mission_id}")).await?,
        mission_before
    );
    let wallet = p.get(&format!("/v1/wallets/{customer}")).await?;
    assert_eq!(
        (
            wallet["balance"].clone(),
            wallet["entries"].as_array().map(Vec::len)
        ),
        (json!(60), Some(1))
    );
    assert_eq!(sent_to(&p, chat_id).len(), 1, "one message");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_listed_newest_first_with_keyset_paging_and_a_state_filter() -> anyhow::Result<()>
{
    let p = TestPlatform::start().await?;
    let (status, _, _) = p
        .call(
            Method::PUT,
            "/v1/rewards/budget",
            Some(json!({"remaining_points": 0})),
        )
        .await?;
    assert_eq!(status, 200);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, _, mission) = p.customer_with_mission(5).await?;
        let id = p.start_saga(mission["id"].as_str().expect("id")).await?;
        p.wait_terminal(&id, SAGA_TIMEOUT).await?;
        ids.push(id);
    }
    let first = p.get("/v1/sagas?limit=2").await?;
    let page: Vec<_> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(page, [json!(ids[2]), json!(ids[1])]);
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = p.get(&format!("/v1/sagas?limit=2&cursor={cursor}")).await?;
    let page: Vec<_> = second["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(page, [json!(ids[0])]);
    assert!(second["next_cursor"].is_null());
    assert_eq!(
        p.get("/v1/sagas?state=compensated").await?["items"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        p.get("/v1/sagas?state=completed").await?["items"],
        json!([])
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_the_openapi_document_answer() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    assert_eq!(p.get("/healthz").await?["status"], "ok");
    assert_eq!(p.get("/readyz").await?["status"], "ready");
    let doc = p.get("/openapi.json").await?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    // Its own name and license, not those of the library that built it.
    assert_eq!(doc["info"]["title"], "Reward saga platform");
    assert_eq!(doc["info"]["license"]["identifier"], "Apache-2.0");
    assert!(doc["info"].get("contact").is_none(), "{}", doc["info"]);
    // Every operation has an id of its own (what links and generated clients name it by).
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                !id.is_empty() && ids.insert(id.to_owned()),
                "{method} {path}: operationId {id:?}"
            );
        }
    }
    for path in [
        "/v1/sagas",
        "/v1/sagas/{id}",
        "/v1/missions",
        "/v1/missions/{id}",
        "/v1/wallets/{customer_id}",
        "/v1/wallets/{customer_id}/freeze",
        "/v1/rewards/budget",
        "/v1/telegram/chats/{customer_id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_forget_inbox_rows_past_their_retention_and_keep_recent_ones() -> anyhow::Result<()>
{
    use sqlx::{Connection, Executor};
    let mut p = TestPlatform::start().await?;
    let (_, _, mission) = p.customer_with_mission(5).await?;
    let saga = p
        .wait_terminal(
            &p.start_saga(mission["id"].as_str().expect("id")).await?,
            SAGA_TIMEOUT,
        )
        .await?;
    assert_eq!(saga["state"], "completed");
    let mut db = sqlx::PgConnection::connect(&p.database_url).await?;
    let count = "SELECT count(*) FROM mission.inbox";
    let recent: i64 = sqlx::query_scalar(count).fetch_one(&mut db).await?;
    assert_eq!(recent, 3, "complete, attach_reward and record_message");
    db.execute(
        "INSERT INTO mission.inbox (message_id, reply_subject, reply_payload, processed_at) \
         VALUES (gen_random_uuid(), 'x', 'x', now() - interval '8 days')",
    )
    .await?;
    p.redeploy(saga_tests::default_settings()).await?;
    let left = wait_for(
        Duration::from_secs(10),
        "the old inbox row to be pruned",
        || {
            let url = p.database_url.clone();
            async move {
                let mut db = sqlx::PgConnection::connect(&url).await?;
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mission.inbox")
                    .fetch_one(&mut db)
                    .await?;
                Ok((n == 3).then_some(n))
            }
        },
    )
    .await?;
    assert_eq!(left, 3, "recent rows stay");
    p.stop().await
}
