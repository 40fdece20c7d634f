//! Mypage end to end: whole sagas on the platform, and the players' read model that the mypage
//! worker projects from their domain events, on MariaDB and on PostgreSQL, against the real
//! servers of the machine.
//!
//! The one-process platform embeds the mypage worker: its view on MariaDB (`on_mariadb`,
//! `SAGA_TEST_MARIADB_URL` names the server, default `mysql://root@127.0.0.1:3306`) or in the
//! platform's PostgreSQL database, schema `mypage`.
//!
//! The projection's own cases (duplicates, replays, unknown and garbage messages, a rebuild
//! during live traffic, both stores) are the unit tests of `workers/src/mypage/tests.rs`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::Method;
use saga_tests::{TestPlatform, default_settings, on_mariadb, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The platform's Mypage routes.
struct Mypage<'a>(&'a TestPlatform);

impl Mypage<'_> {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.0.get(path).await
    }

    /// Waits until `mission`'s row passes `check`.
    async fn row_when(
        &self,
        mission: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        wait_for(WAIT, what, || async {
            let (status, _, row) = self
                .0
                .call(Method::GET, &format!("/v1/mypages/{mission}"), None)
                .await?;
            Ok((status == 200 && check(&row)).then_some(row))
        })
        .await
    }
}

fn id(value: &Value) -> anyhow::Result<String> {
    value["id"].as_str().map(str::to_owned).context("an id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_mission_saga_completes_its_row_shows_the_reward_and_the_sent_notification()
-> anyhow::Result<()> {
    let p = TestPlatform::start_with(on_mariadb(default_settings())).await?;
    let mypage = Mypage(&p);
    let (customer, _, mission) = p.customer_with_mission(150).await?;
    let mission = id(&mission)?;
    let saga = p.start_saga(&mission).await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");

    // The row reflects the finished saga within a second.
    let finished = Instant::now();
    let row = mypage
        .row_when(&mission, "the row to show the sent notification", |row| {
            row["notification_status"] == "sent" && row["mission_status"] == "REWARDED"
        })
        .await?;
    let lag = finished.elapsed();
    assert!(lag <= Duration::from_secs(1), "the row took {lag:?}");
    assert_eq!(row["mission_id"], mission);
    assert_eq!(row["customer_id"], customer);
    assert_eq!(row["reward_id"], saga["context"]["reward_id"]);
    assert_eq!(row["reward_points"], 150);
    assert_eq!(row["telegram_id"], saga["context"]["notification_id"]);

    // Each query finds it.
    let reward = row["reward_id"].as_str().context("a reward")?;
    let telegram = row["telegram_id"].as_str().context("a notification")?;
    for query in [
        format!("reward_id={reward}"),
        format!("telegram_id={telegram}"),
        format!("customer_id={customer}"),
    ] {
        let page = mypage.get(&format!("/v1/mypages?{query}")).await?;
        let items = page["items"].as_array().context("items")?;
        assert_eq!(items.len(), 1, "{query}: {page}");
        assert_eq!(items[0]["kind"], "mission");
        assert_eq!(items[0]["mission_id"], mission, "{query}");
    }
    let balance = wait_for(WAIT, "the balance to be projected", || async {
        let page = mypage
            .get(&format!("/v1/mypages?customer_id={customer}"))
            .await?;
        Ok(page["wallet_balance"].as_i64())
    })
    .await?;
    assert_eq!(balance, 150);

    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_sagas_row_shows_the_mission_open_and_no_reward() -> anyhow::Result<()> {
    let p = TestPlatform::start_with(default_settings()).await?;
    let mypage = Mypage(&p);
    let (customer, _, mission) = p.customer_with_mission(30).await?;
    let mission = id(&mission)?;
    // A moderation hold: the reward is paid, then attaching it is refused, so the saga revokes
    // the reward and reopens the mission.
    let (status, _, body) = p
        .call(Method::POST, &format!("/v1/missions/{mission}/hold"), None)
        .await?;
    assert_eq!(status, 200, "{body}");
    let saga = p.start_saga(&mission).await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    assert_eq!(saga["state"], "compensated", "{saga}");

    let row = mypage
        .row_when(&mission, "the row to show the mission open again", |row| {
            row["mission_status"] == "OPEN"
        })
        .await?;
    assert_eq!(
        (&row["reward_id"], &row["reward_points"]),
        (&Value::Null, &Value::Null),
        "{row}"
    );
    assert_eq!(row["customer_id"], customer);
    let revoked = saga["context"]["reward_id"]
        .as_str()
        .context("a granted reward")?;
    let page = mypage
        .get(&format!("/v1/mypages?reward_id={revoked}"))
        .await?;
    assert_eq!(page["items"], json!([]), "a revoked reward is on no row");
    let page = wait_for(WAIT, "the wallet to be given back", || async {
        let page = mypage
            .get(&format!("/v1/mypages?customer_id={customer}"))
            .await?;
        Ok((page["wallet_balance"] == 0).then_some(page))
    })
    .await?;
    assert_eq!(page["items"][0]["mission_id"], mission, "{page}");

    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gift_exchange_the_customers_list_holds_the_gift_with_its_voucher()
-> anyhow::Result<()> {
    let p = TestPlatform::start_with(on_mariadb(default_settings())).await?;
    let mypage = Mypage(&p);
    let (customer, _, mission) = p.customer_with_mission(300).await?;
    let earned = p.start_saga(&id(&mission)?).await?;
    let earned = p.wait_terminal(&earned, WAIT).await?;
    assert_eq!(earned["state"], "completed", "{earned}");

    let (status, _, gift) = p
        .call(
            Method::POST,
            "/v1/gifts",
            Some(json!({"name": "Dragon mug", "price_points": 120, "stock": 3})),
        )
        .await?;
    assert_eq!(status, 201, "{gift}");
    let gift = id(&gift)?;
    let (status, _, exchange) = p
        .call(
            Method::POST,
            &format!("/v1/gifts/{gift}/exchanges"),
            Some(json!({"customer_id": customer})),
        )
        .await?;
    assert_eq!(status, 202, "{exchange}");
    let saga = p.wait_terminal(&id(&exchange)?, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    let voucher = saga["context"]["voucher_code"]
        .as_str()
        .context("a voucher")?;

    let page = wait_for(WAIT, "the exchange on the customer's list", || async {
        let page = mypage
            .get(&format!("/v1/mypages?customer_id={customer}"))
            .await?;
        let listed = page["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["kind"] == "gift"));
        Ok((listed && page["wallet_balance"] == 180).then_some(page))
    })
    .await?;
    let row = page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["kind"] == "gift"))
        .context("the gift row")?;
    assert_eq!(row["saga_id"], saga["id"]);
    assert_eq!(row["gift_id"], gift);
    assert_eq!(row["gift_name"], "Dragon mug");
    assert_eq!(row["voucher_code"], voucher);
    let told = wait_for(WAIT, "the gift's notification to be projected", || async {
        let page = mypage
            .get(&format!("/v1/mypages?customer_id={customer}"))
            .await?;
        Ok(page["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|i| i["kind"] == "gift" && i["notification_status"] == "sent")
                .cloned()
        }))
    })
    .await?;
    assert_eq!(told["voucher_code"], voucher, "{told}");

    p.stop().await
}
