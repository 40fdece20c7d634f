//! Operator controls through the HTTP API against the real services: cancel (one and bulk),
//! retry (one and bulk), the list filters, and dead-letter listing and replay. The reward
//! worker is played by the test where a step must stay in flight or fail on cue.

use std::time::Duration;

use contracts::reply::{RewardGrantedV1, output_of};
use contracts::{Action, Reply, RewardId, StepFailure, Worker};
use reqwest::Method;
use saga_tests::{FakeWorker, TestPlatform, compensation_names, default_settings, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn without_reward_worker() -> anyhow::Result<(TestPlatform, FakeWorker)> {
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    let platform = TestPlatform::start_with(settings).await?;
    let reward = FakeWorker::attach(&platform, Worker::Reward).await?;
    Ok((platform, reward))
}

fn granted() -> Reply {
    Reply::Succeeded {
        output: output_of(&RewardGrantedV1 {
            reward_id: RewardId::new(),
        }),
    }
}

fn done() -> Reply {
    Reply::Succeeded {
        output: Default::default(),
    }
}

async fn state_of(p: &TestPlatform, id: &str) -> anyhow::Result<Value> {
    p.get(&format!("/v1/sagas/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_saga_waits_for_the_step_in_flight_then_undoes_it_and_ends_cancelled()
-> anyhow::Result<()> {
    let (p, reward) = without_reward_worker().await?;
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let mission_id = mission["id"].as_str().expect("id");
    let saga_id = p.start_saga(mission_id).await?;
    let grant = reward.next(WAIT).await?;
    assert_eq!(grant.body.action(), Action::GrantReward);

    let (status, _, saga) = p
        .call(Method::POST, &format!("/v1/sagas/{saga_id}/cancel"), None)
        .await?;
    assert_eq!(status, 202, "{saga}");
    assert_eq!(
        (saga["state"].clone(), saga["stop_reason"].clone()),
        (json!("running"), json!("cancelled"))
    );
    let (status, _, _) = p
        .call(Method::POST, &format!("/v1/sagas/{saga_id}/cancel"), None)
        .await?;
    assert_eq!(status, 202, "cancelling twice is harmless");

    reward.reply(&grant, granted()).await?;
    let revoke = reward.next(WAIT).await?;
    assert_eq!(
        revoke.body.action(),
        Action::RevokeReward,
        "{:?}",
        revoke.body
    );
    reward.reply(&revoke, done()).await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "cancelled", "{saga}");
    assert_eq!(
        compensation_names(&saga),
        ["reward.revoke", "mission.reopen"]
    );
    assert_eq!(
        p.get(&format!("/v1/missions/{mission_id}")).await?["status"],
        "OPEN"
    );

    let (status, headers, problem) = p
        .call(Method::POST, &format!("/v1/sagas/{saga_id}/cancel"), None)
        .await?;
    assert_eq!(
        (status, problem["code"].clone()),
        (409, json!("saga_terminal"))
    );
    assert_eq!(headers["content-type"], "application/problem+json");
    let (status, _, problem) = p
        .call(
            Method::POST,
            &format!("/v1/sagas/{}/cancel", uuid::Uuid::now_v7()),
            None,
        )
        .await?;
    assert_eq!(
        (status, problem["code"].clone()),
        (404, json!("saga_not_found"))
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_past_its_pivot_cannot_be_cancelled() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (_, _, mission) = p.customer_with_mission(25).await?;
    p.stand_in()
        .push_fault(workers::telegram_stand_in::FaultSpec {
            status: 500,
            count: 3,
            retry_after: None,
        })?;
    let saga_id = p.start_saga(mission["id"].as_str().expect("id")).await?;
    wait_for(WAIT, "the telegram step to start", || async {
        let saga = state_of(&p, &saga_id).await?;
        Ok((saga["steps"][4]["attempts"].as_u64() >= Some(1)).then_some(()))
    })
    .await?;
    let (status, _, problem) = p
        .call(Method::POST, &format!("/v1/sagas/{saga_id}/cancel"), None)
        .await?;
    assert_eq!(
        (status, problem["code"].clone()),
        (409, json!("saga_past_pivot")),
        "{problem}"
    );
    assert_eq!(p.wait_terminal(&saga_id, WAIT).await?["state"], "completed");
    p.stop().await
}

/// Drives a saga on a held mission until its `reward.revoke` compensation fails for good.
async fn failed_saga(p: &TestPlatform, reward: &FakeWorker) -> anyhow::Result<String> {
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let mission_id = mission["id"].as_str().expect("id");
    let (status, _, _) = p
        .call(
            Method::POST,
            &format!("/v1/missions/{mission_id}/hold"),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let saga_id = p.start_saga(mission_id).await?;
    let grant = reward.next(WAIT).await?;
    reward.reply(&grant, granted()).await?;
    let revoke = reward.next(WAIT).await?;
    assert_eq!(
        revoke.body.action(),
        Action::RevokeReward,
        "{:?}",
        revoke.body
    );
    reward
        .reply(
            &revoke,
            Reply::Failed(StepFailure::permanent(
                "ledger_closed",
                "the ledger refused the debit",
            )),
        )
        .await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "failed", "{saga}");
    assert_eq!(
        compensation_names(&saga),
        ["wallet.debit", "reward.revoke"],
        "the wallet gave the points back; the revoke could not finish"
    );
    assert_eq!(saga["compensations"][1]["state"], "failed");
    Ok(saga_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_failed_saga_resumes_the_compensation_that_could_not_finish()
-> anyhow::Result<()> {
    let (p, reward) = without_reward_worker().await?;
    let saga_id = failed_saga(&p, &reward).await?;

    let (status, _, saga) = p
        .call(Method::POST, &format!("/v1/sagas/{saga_id}/retry"), None)
        .await?;
    assert_eq!(status, 202, "{saga}");
    assert_eq!(saga["state"], "compensating");
    let revoke = reward.next(WAIT).await?;
    assert_eq!(revoke.attempt, 2);
    reward.reply(&revoke, done()).await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(
        compensation_names(&saga),
        ["wallet.debit", "reward.revoke", "mission.reopen"]
    );
    assert_eq!(saga["compensations"][1]["attempts"], 2);

    let (status, _, problem) = p
        .call(Method::POST, &format!("/v1/sagas/{saga_id}/retry"), None)
        .await?;
    assert_eq!(
        (status, problem["code"].clone()),
        (409, json!("saga_not_failed"))
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancel_and_bulk_retry_answer_how_many_they_affected() -> anyhow::Result<()> {
    let (p, reward) = without_reward_worker().await?;
    let mut stuck = Vec::new();
    for _ in 0..3 {
        let (_, _, mission) = p.customer_with_mission(5).await?;
        stuck.push(p.start_saga(mission["id"].as_str().expect("id")).await?);
    }
    let mut grants = Vec::new();
    for _ in 0..3 {
        grants.push(reward.next(WAIT).await?);
    }
    let (status, _, outcome) = p
        .call(
            Method::POST,
            "/v1/sagas/cancel",
            Some(json!({"state": "running"})),
        )
        .await?;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        (outcome["matched"].clone(), outcome["affected"].clone()),
        (json!(3), json!(3)),
        "{outcome}"
    );
    for grant in &grants {
        reward
            .reply(
                grant,
                Reply::Failed(StepFailure::retryable("busy", "try later")),
            )
            .await?;
    }
    for id in &stuck {
        let saga = p.wait_terminal(id, WAIT).await?;
        assert_eq!(saga["state"], "cancelled", "{saga}");
        assert_eq!(
            compensation_names(&saga),
            ["mission.reopen"],
            "a step that did not succeed is not undone"
        );
    }

    let failed = [
        failed_saga(&p, &reward).await?,
        failed_saga(&p, &reward).await?,
    ];
    let (status, _, outcome) = p
        .call(Method::POST, "/v1/sagas/retry", Some(json!({})))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        (outcome["matched"].clone(), outcome["affected"].clone()),
        (json!(2), json!(2)),
        "{outcome}"
    );
    for _ in 0..2 {
        let revoke = reward.next(WAIT).await?;
        reward.reply(&revoke, done()).await?;
    }
    for id in &failed {
        assert_eq!(p.wait_terminal(id, WAIT).await?["state"], "compensated");
    }
    let (status, _, outcome) = p
        .call(
            Method::POST,
            "/v1/sagas/cancel",
            Some(json!({"state": "completed"})),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(outcome["affected"], 0);
    let (status, _, problem) = p
        .call(
            Method::POST,
            "/v1/sagas/cancel",
            Some(json!({"colour": "red"})),
        )
        .await?;
    assert_eq!(
        (status, problem["code"].clone()),
        (422, json!("invalid_body"))
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_can_be_found_by_customer_mission_type_state_and_time() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (customer, _, first) = p.customer_with_mission(5).await?;
    let second = p.create_mission(&customer, "Second quest", 5).await?;
    let (_, _, other) = p.customer_with_mission(5).await?;
    let mut ids = Vec::new();
    for mission in [&first, &second, &other] {
        let id = p.start_saga(mission["id"].as_str().expect("id")).await?;
        p.wait_terminal(&id, WAIT).await?;
        ids.push(id);
    }
    let listed = |query: String| {
        let p = &p;
        async move {
            let page = p.get(&format!("/v1/sagas?{query}")).await?;
            Ok::<_, anyhow::Error>(
                page["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
                    .collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(
        listed(format!("customer_id={customer}")).await?,
        [ids[1].clone(), ids[0].clone()]
    );
    assert_eq!(
        listed(format!("mission_id={}", other["id"].as_str().expect("id"))).await?,
        [ids[2].clone()]
    );
    assert_eq!(
        listed("type=mission_reward&state=completed".into())
            .await?
            .len(),
        3
    );
    assert!(listed("type=other".into()).await?.is_empty());
    let second_saga = state_of(&p, &ids[1]).await?;
    let created = second_saga["created_at"].as_str().expect("created_at");
    let encoded = created.replace(':', "%3A").replace('+', "%2B");
    assert_eq!(
        listed(format!("created_after={encoded}")).await?,
        [ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(
        listed(format!("created_before={encoded}")).await?,
        [ids[0].clone()]
    );
    let (status, _, problem) = p
        .call(Method::GET, "/v1/sagas?created_after=yesterday", None)
        .await?;
    assert_eq!(
        (status, problem["code"].clone()),
        (400, json!("invalid_query"))
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_their_reason_and_can_be_replayed() -> anyhow::Result<()> {
    use futures::StreamExt;
    let p = TestPlatform::start().await?;
    let subject = format!("{}.cmd.mission.complete", p.prefix);
    let js = async_nats::jetstream::new(p.nats.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    js.publish_with_headers(subject.clone(), headers, "not a command".into())
        .await?
        .await?;

    let letters = wait_for(WAIT, "a dead letter", || async {
        let page = p.get("/v1/dead-letters").await?;
        Ok(page["items"]
            .as_array()
            .filter(|items| !items.is_empty())
            .cloned())
    })
    .await?;
    let letter = &letters[0];
    assert_eq!(letter["original_subject"], subject.as_str());
    assert_eq!(letter["payload"], "not a command");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("undecodable")),
        "{letter}"
    );
    assert_eq!(letter["consumer"], "worker-mission");
    assert_eq!(
        letter["headers"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );

    let mut seen = p.nats.subscribe(subject.clone()).await?;
    let id = letter["id"].as_u64().expect("id");
    let (status, _, replayed) = p
        .call(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
        .await?;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["subject"], subject.as_str());
    let again = tokio::time::timeout(WAIT, seen.next())
        .await?
        .expect("the replayed message");
    assert_eq!(&again.payload[..], b"not a command");
    let replayed_headers = again.headers.expect("headers");
    assert_eq!(
        replayed_headers
            .get("traceparent")
            .map(|v| v.as_str().to_owned()),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned())
    );
    assert!(replayed_headers.get("Dlq-Reason").is_none());

    let relisted = wait_for(WAIT, "the replayed garbage to be parked again", || async {
        let page = p.get("/v1/dead-letters").await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        Ok((items.len() == 1 && items[0]["id"].as_u64() != Some(id)).then_some(items))
    })
    .await?;
    assert_eq!(relisted[0]["payload"], "not a command");
    let (status, _, problem) = p
        .call(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
        .await?;
    assert_eq!(
        (status, problem["code"].clone()),
        (404, json!("dead_letter_not_found"))
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_deadline_a_saga_before_the_pivot_compensates() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    settings.orchestrator.policies.deadline = Duration::from_millis(800);
    let p = TestPlatform::start_with(settings).await?;
    let reward = FakeWorker::attach(&p, Worker::Reward).await?;
    let (_, _, mission) = p.customer_with_mission(5).await?;
    let saga_id = p.start_saga(mission["id"].as_str().expect("id")).await?;
    let grant = reward.next(WAIT).await?;
    let stopped = wait_for(WAIT, "the deadline to fire", || async {
        let saga = state_of(&p, &saga_id).await?;
        Ok((saga["stop_reason"] == "deadline_exceeded").then_some(saga))
    })
    .await?;
    assert_eq!(
        stopped["state"], "running",
        "the step in flight is awaited first"
    );
    reward.reply(&grant, granted()).await?;
    let revoke = reward.next(WAIT).await?;
    reward.reply(&revoke, done()).await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(
        compensation_names(&saga),
        ["reward.revoke", "mission.reopen"]
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_saga_keeps_the_definition_version_it_started_with() -> anyhow::Result<()> {
    use orchestrator::definition::{Policies, Registry, mission_reward_v2};
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    let mut p = TestPlatform::start_with(settings.clone()).await?;
    let reward = FakeWorker::attach(&p, Worker::Reward).await?;
    let (_, _, old_mission) = p.customer_with_mission(5).await?;
    let old = p
        .start_saga(old_mission["id"].as_str().expect("id"))
        .await?;
    let grant = reward.next(WAIT).await?;

    let mut v3 = mission_reward_v2(&Policies::default());
    v3.version = 3;
    v3.steps.pop();
    let mut registry = Registry::builtin(&Policies::default());
    registry.insert(v3);
    settings.definitions = Some(registry);
    settings.skip_workers = Vec::new();
    p.redeploy(settings).await?;

    let (_, _, new_mission) = p.customer_with_mission(5).await?;
    let new = p
        .start_saga(new_mission["id"].as_str().expect("id"))
        .await?;
    let new_saga = p.wait_terminal(&new, WAIT).await?;
    assert_eq!(new_saga["state"], "completed", "{new_saga}");
    assert_eq!(new_saga["definition_version"], 3);
    assert_eq!(new_saga["steps"].as_array().map(Vec::len), Some(5));

    reward.reply(&grant, granted()).await?;
    let old_saga = p.wait_terminal(&old, WAIT).await?;
    assert_eq!(old_saga["state"], "completed", "{old_saga}");
    assert_eq!(old_saga["definition_version"], 2);
    let steps: Vec<_> = old_saga["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["state"].clone())
        .collect();
    assert_eq!(
        steps,
        vec![json!("succeeded"); 6],
        "v2's six steps ran to the end"
    );
    p.stop().await
}
