//! The wallet as a bounded context of its own, against the real PostgreSQL and NATS JetStream:
//! the move of every balance and ledger entry out of the reward context, a version-1 mission
//! saga that runs through the upgrade and is credited exactly once, the ledger's paging, and a
//! balance that never goes below zero.

use std::time::Duration;

use contracts::Worker;
use orchestrator::definition::{Policies, Registry, mission_reward};
use reqwest::Method;
use saga_tests::{TestPlatform, compensation_names, default_settings, wait_for};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};

const WAIT: Duration = Duration::from_secs(30);

fn step_state(saga: &Value, name: &str) -> Value {
    saga["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .map(|s| s["state"].clone())
        .unwrap_or(Value::Null)
}

async fn wallet(p: &TestPlatform, customer: &str) -> anyhow::Result<Value> {
    p.get(&format!("/v1/wallets/{customer}")).await
}

/// Waits until the customer's balance is `balance`, and returns the wallet.
async fn balance_becomes(p: &TestPlatform, customer: &str, balance: i64) -> anyhow::Result<Value> {
    wait_for(
        WAIT,
        &format!("{customer}'s balance to be {balance}"),
        || async {
            let wallet = wallet(p, customer).await?;
            Ok((wallet["balance"] == balance).then_some(wallet))
        },
    )
    .await
}

fn kinds(wallet: &Value) -> Vec<Value> {
    wallet["entries"]
        .as_array()
        .map(|e| e.iter().map(|e| e["kind"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_saga_runs_through_the_upgrade_and_is_credited_exactly_once()
-> anyhow::Result<()> {
    // Before the upgrade: only version 1 exists, and the reward worker is down, so the sagas
    // wait at reward.grant.
    let mut before = default_settings();
    let mut v1_only = Registry::default();
    v1_only.insert(mission_reward(&Policies::default()));
    before.definitions = Some(v1_only);
    before.skip_workers = vec![Worker::Reward];
    let mut p = TestPlatform::start_with(before).await?;
    let (paid, _, mission) = p.customer_with_mission(70).await?;
    let paid_saga = p.start_saga(mission["id"].as_str().expect("id")).await?;
    let (refused, _, held) = p.customer_with_mission(30).await?;
    let held_id = held["id"].as_str().expect("id");
    let (status, _, _) = p
        .call(Method::POST, &format!("/v1/missions/{held_id}/hold"), None)
        .await?;
    assert_eq!(status, 200);
    let held_saga = p.start_saga(held_id).await?;
    for saga in [&paid_saga, &held_saga] {
        wait_for(WAIT, "reward.grant to be in flight", || async {
            let saga = p.get(&format!("/v1/sagas/{saga}")).await?;
            Ok((step_state(&saga, "reward.grant") == "running").then_some(()))
        })
        .await?;
    }

    // The upgrade: every worker, the built-in definitions (version 1 kept, version 2 newest).
    p.redeploy(default_settings()).await?;

    let saga = p.wait_terminal(&paid_saga, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["definition_version"], 1);
    let names: Vec<_> = saga["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["name"].clone(), s["state"].clone()))
        .collect();
    assert_eq!(names.len(), 5, "version 1's five steps: {names:?}");
    assert!(
        names.iter().all(|(_, state)| state == "succeeded"),
        "{names:?}"
    );
    let credited = balance_becomes(&p, &paid, 70).await?;
    let entries = credited["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "credited exactly once: {credited}");
    assert_eq!(entries[0]["reward_id"], saga["context"]["reward_id"]);

    let saga = p.wait_terminal(&held_saga, WAIT).await?;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(saga["definition_version"], 1);
    assert_eq!(
        compensation_names(&saga),
        ["reward.revoke", "mission.reopen"]
    );
    let undone = wait_for(WAIT, "the revoked reward to be debited", || async {
        let wallet = wallet(&p, &refused).await?;
        Ok((kinds(&wallet).len() == 2).then_some(wallet))
    })
    .await?;
    assert_eq!(undone["balance"], 0, "{undone}");
    assert_eq!(kinds(&undone), [json!("debit"), json!("credit")]);

    // A saga started after the upgrade runs version 2, whose wallet.credit step pays.
    let (_, _, again) = p.create_mission_for(&paid, 5).await?;
    let saga = p
        .wait_terminal(
            &p.start_saga(again["id"].as_str().expect("id")).await?,
            WAIT,
        )
        .await?;
    assert_eq!(
        (saga["state"].clone(), saga["definition_version"].clone()),
        (json!("completed"), json!(2)),
        "{saga}"
    );
    assert_eq!(step_state(&saga, "wallet.credit"), "succeeded");
    let wallet = balance_becomes(&p, &paid, 75).await?;
    assert_eq!(kinds(&wallet), [json!("credit"), json!("credit")]);
    p.stop().await
}

/// The reward context's tables as its migrations 0001 to 0003 left them, before the wallet
/// moved out: a database of the previous release.
async fn previous_release(database_url: String) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("reward-v1-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workers/migrations/reward");
    for name in [
        "0001_inbox_outbox.sql",
        "0002_rewards.sql",
        "0003_inbox_pruning.sql",
    ] {
        std::fs::copy(source.join(name), dir.join(name))?;
    }
    let old = sqlx::migrate::Migrator::new(dir.as_path()).await?;
    let pool = runtime::db::connect(&database_url.clone().into(), "reward", 2, &old).await?;
    pool.close().await;
    std::fs::remove_dir_all(&dir)?;
    let mut db = PgConnection::connect(&database_url).await?;
    db.execute(
        "INSERT INTO reward.wallets (customer_id, balance, frozen) VALUES \
             ('old-1', 150, false), ('old-2', 0, true); \
         INSERT INTO reward.wallet_entries (customer_id, reward_id, kind, points) VALUES \
             ('old-1', '018f0000-0000-7000-8000-000000000001', 'credit', 100), \
             ('old-1', '018f0000-0000-7000-8000-000000000002', 'credit', 50), \
             ('old-2', '018f0000-0000-7000-8000-000000000003', 'credit', 20), \
             ('old-2', '018f0000-0000-7000-8000-000000000003', 'debit', -20);",
    )
    .await?;
    db.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_moves_every_balance_and_entry_into_the_wallet() -> anyhow::Result<()> {
    let p = TestPlatform::start_prepared(default_settings(), previous_release).await?;

    let first = wallet(&p, "old-1").await?;
    assert_eq!(
        (first["balance"].clone(), first["frozen"].clone()),
        (json!(150), json!(false))
    );
    let points: Vec<_> = first["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["points"].clone())
        .collect();
    assert_eq!(points.len(), 2, "{first}");
    assert!(
        points.contains(&json!(100)) && points.contains(&json!(50)),
        "{first}"
    );
    let second = wallet(&p, "old-2").await?;
    assert_eq!(
        (second["balance"].clone(), second["frozen"].clone()),
        (json!(0), json!(true))
    );
    assert_eq!(second["entries"].as_array().map(Vec::len), Some(2));

    let mut db = PgConnection::connect(&p.database_url).await?;
    let left: Option<String> = sqlx::query_scalar("SELECT to_regclass('reward.wallets')::text")
        .fetch_one(&mut db)
        .await?;
    assert_eq!(left, None, "the reward context no longer has wallets");
    db.close().await?;

    // A moved wallet keeps working: a mission saga credits it.
    let (_, _, mission) = p.create_mission_for("old-1", 25).await?;
    let saga = p
        .wait_terminal(
            &p.start_saga(mission["id"].as_str().expect("id")).await?,
            WAIT,
        )
        .await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    balance_becomes(&p, "old-1", 175).await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_paged_newest_first_and_bad_pages_are_refused() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (customer, _, _) = p.customer_with_mission(1).await?;
    for points in [1, 2, 3] {
        let (_, _, mission) = p.create_mission_for(&customer, points).await?;
        let saga = p
            .wait_terminal(
                &p.start_saga(mission["id"].as_str().expect("id")).await?,
                WAIT,
            )
            .await?;
        assert_eq!(saga["state"], "completed");
    }
    let first = p.get(&format!("/v1/wallets/{customer}?limit=2")).await?;
    assert_eq!(first["balance"], 6);
    let points: Vec<_> = first["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["points"].clone())
        .collect();
    assert_eq!(points, [json!(3), json!(2)]);
    assert_eq!(first["entries"][0]["balance_after"], 6);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = p
        .get(&format!("/v1/wallets/{customer}?limit=2&cursor={cursor}"))
        .await?;
    assert_eq!(second["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["entries"][0]["points"], 1);
    assert!(second["next_cursor"].is_null());

    for query in ["limit=0", "limit=501", "cursor=nope"] {
        let (status, _, problem) = p
            .call(
                Method::GET,
                &format!("/v1/wallets/{customer}?{query}"),
                None,
            )
            .await?;
        assert_eq!(
            (status, problem["code"].clone()),
            (400, json!("invalid_query")),
            "{query}: {problem}"
        );
    }
    p.stop().await
}
