//! Replies and commands that cannot be forged or misrouted, against the real NATS JetStream and
//! PostgreSQL: a reply is applied only when it answers the command the orchestrator sent for the
//! saga's current attempt, on the reply subject of the worker that owns the step, and produces
//! only what that step may produce; a worker runs a command only when the subject's action is
//! the payload's. Everything else is parked on the dead-letter stream with its reason, and the
//! saga completes honestly.

use std::time::Duration;

use contracts::reply::{RewardGrantedV1, output_of};
use contracts::{Action, Envelope, MessageId, Reply, RewardId, Worker};
use saga_tests::{FakeWorker, TestPlatform, default_settings, wait_for};
use serde_json::{Map, Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn granted() -> Reply {
    Reply::Succeeded {
        output: output_of(&RewardGrantedV1 {
            reward_id: RewardId::new(),
        }),
    }
}

/// Publishes a message as an attacker on the bus would.
async fn publish(p: &TestPlatform, outgoing: runtime::jetstream::Outgoing) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(p.nats.clone());
    runtime::jetstream::publish(&js, &outgoing, Some(&uuid::Uuid::new_v4().to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The reasons of the dead letters parked so far.
async fn dead_letter_reasons(p: &TestPlatform) -> anyhow::Result<Vec<String>> {
    let page = p.get("/v1/dead-letters?limit=100").await?;
    Ok(page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["reason"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

async fn parked_with(p: &TestPlatform, needle: &str) -> anyhow::Result<String> {
    wait_for(
        WAIT,
        &format!("a dead letter saying {needle:?}"),
        || async {
            Ok(dead_letter_reasons(p)
                .await?
                .into_iter()
                .find(|r| r.contains(needle)))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replies_are_parked_and_the_saga_completes_honestly() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    let p = TestPlatform::start_with(settings).await?;
    let reward = FakeWorker::attach(&p, Worker::Reward).await?;
    let topology = contracts::Topology::new(&p.prefix);
    let (customer, _, mission) = p.customer_with_mission(40).await?;
    let saga_id = p.start_saga(mission["id"].as_str().expect("id")).await?;
    let grant = reward.next(WAIT).await?;
    assert_eq!(grant.body.action(), Action::GrantReward);

    // 1. A reply naming a command id the orchestrator never sent.
    let mut wrong_id = grant.reply(granted());
    wrong_id.correlation_id = Some(MessageId::new());
    wrong_id.message_id = MessageId::for_reply(MessageId::new());
    let subject = topology.reply_subject("mission_reward", Worker::Reward);
    publish(&p, runtime::jetstream::encode(subject, &wrong_id)?).await?;
    parked_with(&p, "not an answer to a command").await?;

    // 2. The right ids, from the wrong worker's subject.
    let from_mission = grant.reply(granted());
    let subject = topology.reply_subject("mission_reward", Worker::Mission);
    publish(&p, runtime::jetstream::encode(subject, &from_mission)?).await?;
    parked_with(&p, "the mission worker answered for reward.grant").await?;

    // 3. The right ids and subject, an output that takes the saga over.
    let mut output = Map::new();
    output.insert("reward_id".into(), json!(RewardId::new()));
    output.insert("customer_id".into(), json!("attacker"));
    let hijack = grant.reply(Reply::Succeeded { output });
    let subject = topology.reply_subject("mission_reward", Worker::Reward);
    publish(&p, runtime::jetstream::encode(subject, &hijack)?).await?;
    parked_with(&p, "does not produce \"customer_id\"").await?;

    let saga = p.get(&format!("/v1/sagas/{saga_id}")).await?;
    assert_eq!(saga["state"], "running", "the saga did not move: {saga}");
    assert_eq!(saga["steps"][1]["state"], "running", "{saga}");

    // The genuine reply still counts: none of the forgeries took its message id.
    reward.reply(&grant, granted()).await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["context"]["customer_id"], customer.as_str());
    assert_eq!(
        p.get(&format!("/v1/wallets/{customer}")).await?["balance"],
        40
    );
    assert_eq!(p.get("/v1/wallets/attacker").await?["balance"], 0);
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_sent_on_the_revoke_subject_is_parked_not_run() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let topology = contracts::Topology::new(&p.prefix);
    let (customer, _, mission) = p.customer_with_mission(10).await?;
    let mut body = Map::new();
    body.insert("type".into(), json!("reward.grant.v2"));
    body.insert("mission_id".into(), mission["id"].clone());
    body.insert("customer_id".into(), json!(customer));
    body.insert("reward_points".into(), json!(999_999));
    let saga = contracts::SagaId::new();
    let forged = Envelope {
        message_id: MessageId::for_command(saga, 1, contracts::Phase::Compensate, 1),
        correlation_id: None,
        saga_id: saga,
        saga_type: "mission_reward".into(),
        step: "reward.revoke".into(),
        step_index: 1,
        phase: contracts::Phase::Compensate,
        attempt: 1,
        sent_at: None,
        headers: Default::default(),
        body: Value::Object(body),
    };
    let subject = topology.command_subject(Action::RevokeReward);
    publish(&p, runtime::jetstream::encode(subject, &forged)?).await?;
    let reason = parked_with(&p, "does not match the payload").await?;
    assert!(reason.contains("reward.grant"), "{reason}");
    assert_eq!(
        p.get(&format!("/v1/wallets/{customer}")).await?["balance"],
        0,
        "nothing was granted"
    );
    p.stop().await
}
