//! A saga's full history through the real platform: every attempt of every step and
//! compensation (sent, ended, with outcome and error) and every operator action (the token's
//! name, what, with which input, applied or refused), oldest first and keyset-paged by
//! `GET /v1/sagas/{id}/history`.

use std::time::Duration;

use contracts::reply::{RewardGrantedV1, output_of};
use contracts::{Action, Reply, RewardId, StepFailure, Worker};
use reqwest::Method;
use saga_tests::{FakeWorker, TestPlatform, default_settings, wait_for};
use serde_json::{Value, json};
use workers::telegram_stand_in::FaultSpec;

const WAIT: Duration = Duration::from_secs(30);

/// Every entry of a saga's history, read in pages of `page`.
async fn history(p: &TestPlatform, saga_id: &str, page: usize) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let body = p
            .get(&format!(
                "/v1/sagas/{saga_id}/history?limit={page}&cursor={cursor}"
            ))
            .await?;
        let page_items = body["items"].as_array().cloned().unwrap_or_default();
        assert!(page_items.len() <= page, "{body}");
        items.extend(page_items);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return Ok(items),
        }
    }
}

/// One line per entry: `kind step #attempt outcome`, or `operator action by actor: outcome`.
fn lines(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or("-").to_owned();
            if e["kind"] == "operator" {
                format!(
                    "operator {} by {}: {}",
                    text("action"),
                    text("actor"),
                    text("outcome")
                )
            } else {
                format!(
                    "{} {} #{} {}",
                    text("kind"),
                    text("step"),
                    e["attempt"],
                    text("outcome")
                )
            }
        })
        .collect()
}

fn assert_in_order(items: &[Value]) {
    let times: Vec<&str> = items.iter().filter_map(|e| e["at"].as_str()).collect();
    assert_eq!(times.len(), items.len());
    let parsed: Vec<chrono::DateTime<chrono::Utc>> = times
        .iter()
        .map(|t| t.parse().expect("an RFC 3339 time"))
        .collect();
    assert!(
        parsed.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_and_every_operator_action_is_in_the_history() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    let p = TestPlatform::start_with(settings).await?;
    let reward = FakeWorker::attach(&p, Worker::Reward).await?;
    let operator = Some(p.tokens.operator.as_str());
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let mission_id = mission["id"].as_str().expect("id");
    let saga_id = p.start_saga(mission_id).await?;

    // reward.grant fails once (retryable), then its second attempt is held in flight.
    let first = reward.next(WAIT).await?;
    reward
        .reply(
            &first,
            Reply::Failed(StepFailure {
                code: "database_busy".into(),
                message: "try again".into(),
                retryable: true,
                retry_after_ms: None,
                output: Default::default(),
            }),
        )
        .await?;
    let second = reward.next(WAIT).await?;
    assert_eq!(
        (second.body.action(), second.attempt),
        (Action::GrantReward, 2)
    );

    // An operator tries a retry (refused: the saga is not failed), then cancels it.
    let (status, _, problem) = p
        .call_as(
            operator,
            Method::POST,
            &format!("/v1/sagas/{saga_id}/retry"),
            None,
        )
        .await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("saga_not_failed"))
    );
    let (status, _, _) = p
        .call_as(
            operator,
            Method::POST,
            &format!("/v1/sagas/{saga_id}/cancel"),
            None,
        )
        .await?;
    assert_eq!(status, 202);

    // The grant succeeds after all; its compensation fails for good: the saga is parked.
    reward
        .reply(
            &second,
            Reply::Succeeded {
                output: output_of(&RewardGrantedV1 {
                    reward_id: RewardId::new(),
                }),
            },
        )
        .await?;
    let revoke = reward.next(WAIT).await?;
    assert_eq!(revoke.body.action(), Action::RevokeReward);
    reward
        .reply(
            &revoke,
            Reply::Failed(StepFailure::permanent(
                "ledger_locked",
                "the ledger is locked",
            )),
        )
        .await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "failed", "{saga}");

    // An operator retries it with a bulk retry by mission: the compensation runs again.
    let filter = json!({"mission_id": mission_id});
    let (status, _, outcome) = p
        .call_as(operator, Method::POST, "/v1/sagas/retry", Some(filter))
        .await?;
    assert_eq!(
        (status, outcome["affected"].as_u64()),
        (200, Some(1)),
        "{outcome}"
    );
    let again = reward.next(WAIT).await?;
    assert_eq!(
        (again.body.action(), again.attempt),
        (Action::RevokeReward, 2)
    );
    reward
        .reply(
            &again,
            Reply::Succeeded {
                output: Default::default(),
            },
        )
        .await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "cancelled", "{saga}");

    let items = history(&p, &saga_id, 3).await?;
    assert_in_order(&items);
    let expected = [
        "step_started mission.complete #1 -",
        "step_ended mission.complete #1 succeeded",
        "step_started reward.grant #1 -",
        "step_ended reward.grant #1 retrying",
        "step_started reward.grant #2 -",
        "operator retry by test-operator: saga_not_failed",
        "operator cancel by test-operator: applied",
        "step_ended reward.grant #2 succeeded",
        "compensation_started reward.revoke #1 -",
        "compensation_ended reward.revoke #1 failed",
        "operator bulk_retry by test-operator: applied",
        "compensation_started reward.revoke #2 -",
        "compensation_ended reward.revoke #2 succeeded",
        "compensation_started mission.reopen #1 -",
        "compensation_ended mission.reopen #1 succeeded",
    ];
    assert_eq!(lines(&items), expected, "{items:#?}");
    let find = |line: &str| {
        let at = expected
            .iter()
            .position(|e| *e == line)
            .expect("an expected line");
        &items[at]
    };
    assert_eq!(
        find("step_ended reward.grant #1 retrying")["error"],
        "database_busy: try again"
    );
    assert_eq!(
        find("compensation_ended reward.revoke #1 failed")["error"],
        "ledger_locked: the ledger is locked"
    );
    let bulk = find("operator bulk_retry by test-operator: applied");
    assert_eq!(bulk["input"]["mission_id"], mission_id, "{bulk}");
    assert_eq!(
        (
            bulk["step"].clone(),
            bulk["phase"].clone(),
            bulk["attempt"].clone()
        ),
        (Value::Null, Value::Null, Value::Null)
    );
    let started = find("compensation_started reward.revoke #2 -");
    assert_eq!(started["phase"], "compensate");
    assert_eq!(find("step_started reward.grant #2 -")["phase"], "forward");

    // Keyset pages: any page size gives the same entries, oldest first.
    assert_eq!(history(&p, &saga_id, 500).await?, items);
    let (status, _, problem) = p
        .call(
            Method::GET,
            &format!("/v1/sagas/{}/history", uuid::Uuid::now_v7()),
            None,
        )
        .await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("saga_not_found"))
    );
    for bad in ["limit=0", "limit=501", "cursor=garbage", "cursor=-5"] {
        let (status, _, problem) = p
            .call(
                Method::GET,
                &format!("/v1/sagas/{saga_id}/history?{bad}"),
                None,
            )
            .await?;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_query")),
            "{bad}"
        );
    }
    let (status, _, _) = p
        .call_as(
            Some(&p.tokens.game),
            Method::GET,
            &format!("/v1/sagas/{saga_id}/history"),
            None,
        )
        .await?;
    assert_eq!(status, 403, "the history needs the read scope");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_retry_and_refused_operator_actions_are_in_the_history() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let operator = Some(p.tokens.operator.as_str());
    let (_, _, mission) = p.customer_with_mission(10).await?;
    p.stand_in().push_fault(FaultSpec {
        status: 500,
        count: 2,
        retry_after: None,
    })?;
    let saga_id = p.start_saga(mission["id"].as_str().expect("id")).await?;
    wait_for(WAIT, "telegram.send's second attempt", || async {
        let saga = p.get(&format!("/v1/sagas/{saga_id}")).await?;
        Ok((saga["steps"][4]["attempts"].as_u64() >= Some(2)).then_some(()))
    })
    .await?;
    let (status, _, problem) = p
        .call_as(
            operator,
            Method::POST,
            &format!("/v1/sagas/{saga_id}/cancel"),
            None,
        )
        .await?;
    assert_eq!(status, 409, "{problem}");
    let refusal = problem["code"].as_str().unwrap_or_default().to_owned();
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    let (status, _, _) = p
        .call_as(
            operator,
            Method::POST,
            &format!("/v1/sagas/{saga_id}/retry"),
            None,
        )
        .await?;
    assert_eq!(status, 409);

    let items = history(&p, &saga_id, 100).await?;
    assert_in_order(&items);
    let lines = lines(&items);
    let telegram: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("telegram.send"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        telegram,
        [
            "step_started telegram.send #1 -",
            "step_ended telegram.send #1 retrying",
            "step_started telegram.send #2 -",
            "step_ended telegram.send #2 retrying",
            "step_started telegram.send #3 -",
            "step_ended telegram.send #3 succeeded",
        ],
        "{lines:#?}"
    );
    let failed = items
        .iter()
        .find(|e| e["step"] == "telegram.send" && e["outcome"] == "retrying")
        .expect("a failed attempt");
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the failure is recorded: {failed}"
    );
    assert!(
        lines.contains(&format!("operator cancel by test-operator: {refusal}")),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"operator retry by test-operator: saga_not_failed".to_owned()),
        "{lines:#?}"
    );
    let steps = items.iter().filter(|e| e["kind"] == "step_ended").count();
    assert_eq!(
        steps,
        6 + 2,
        "six steps ended, two attempts retried: {lines:#?}"
    );
    p.stop().await
}
