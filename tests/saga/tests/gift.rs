//! Gift exchanges end to end: a customer earns points with a mission saga, then exchanges them
//! for a gift (`POST /v1/gifts/{id}/exchanges` → the `gift_exchange` saga: `gift.reserve`,
//! `wallet.debit`, `gift.issue`, `gift.notify`), against the real PostgreSQL and NATS JetStream,
//! with the Telegram stand-in failing on purpose for the fallback and the breaker.
//!
//! These need the platform to run the gift and wallet workers and the `gift_exchange`
//! definition (and `mission_reward` v2, whose `wallet.credit` pays the points).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use prometheus_parse::{Sample, Scrape, Value as Metric};
use reqwest::Method;
use saga_tests::{TestPlatform, default_settings, wait_for};
use serde_json::{Value, json};
use workers::telegram_stand_in::FaultSpec;

const WAIT: Duration = Duration::from_secs(30);

/// A platform with the built-in definitions (`gift_exchange` and `mission_reward` v2 among
/// them) and every worker.
async fn platform() -> anyhow::Result<TestPlatform> {
    TestPlatform::start_with(default_settings()).await
}

/// A customer with a linked chat and `points` in their wallet, earned with a mission saga:
/// (customer, chat id).
async fn earn(p: &TestPlatform, points: i64) -> anyhow::Result<(String, i64)> {
    let (customer, chat, mission) = p.customer_with_mission(points).await?;
    let saga = p
        .start_saga(mission["id"].as_str().context("mission id")?)
        .await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    if saga["state"] != "completed" {
        bail!("earning points: {saga}");
    }
    let balance = balance(p, &customer).await?;
    if balance != points {
        bail!("earned {points} points but the balance is {balance}");
    }
    Ok((customer, chat))
}

async fn balance(p: &TestPlatform, customer: &str) -> anyhow::Result<i64> {
    p.get(&format!("/v1/wallets/{customer}")).await?["balance"]
        .as_i64()
        .context("a balance")
}

async fn create_gift(
    p: &TestPlatform,
    name: &str,
    price: i64,
    stock: i64,
) -> anyhow::Result<String> {
    let (status, headers, gift) = p
        .call(
            Method::POST,
            "/v1/gifts",
            Some(json!({"name": name, "price_points": price, "stock": stock})),
        )
        .await?;
    if status != 201 {
        bail!("creating a gift: {status} {gift}");
    }
    let id = gift["id"].as_str().context("gift id")?.to_owned();
    assert_eq!(headers["location"], format!("/v1/gifts/{id}").as_str());
    Ok(id)
}

async fn stock(p: &TestPlatform, gift: &str) -> anyhow::Result<i64> {
    p.get(&format!("/v1/gifts/{gift}")).await?["stock"]
        .as_i64()
        .context("a stock")
}

/// Starts an exchange; returns the saga's id.
async fn exchange(p: &TestPlatform, gift: &str, customer: &str) -> anyhow::Result<String> {
    let (status, headers, saga) = p
        .call(
            Method::POST,
            &format!("/v1/gifts/{gift}/exchanges"),
            Some(json!({"customer_id": customer})),
        )
        .await?;
    if status != 202 {
        bail!("starting an exchange: {status} {saga}");
    }
    let id = saga["id"].as_str().context("saga id")?.to_owned();
    assert_eq!(headers["location"], format!("/v1/sagas/{id}").as_str());
    assert_eq!(saga["type"], "gift_exchange");
    Ok(id)
}

/// The texts the stand-in accepted for `chat`.
fn delivered(p: &TestPlatform, chat: i64) -> Vec<String> {
    p.stand_in()
        .messages()
        .into_iter()
        .filter(|m| m.status == 200 && m.chat_id == json!(chat))
        .filter_map(|m| m.text)
        .collect()
}

fn step_states(saga: &Value) -> Vec<(String, String)> {
    saga["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or_default().to_owned(),
                        s["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_voucher(code: &str) -> bool {
    code.len() == 19
        && code.split('-').count() == 4
        && code.split('-').all(|g| {
            g.len() == 4
                && g.bytes()
                    .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_reserves_debits_issues_a_voucher_and_tells_the_customer_once()
-> anyhow::Result<()> {
    let p = platform().await?;
    let (customer, chat) = earn(&p, 500).await?;
    let gift = create_gift(&p, "Dragon mug", 120, 3).await?;
    let before = delivered(&p, chat).len();

    let saga = exchange(&p, &gift, &customer).await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(
        step_states(&saga),
        [
            ("gift.reserve", "succeeded"),
            ("wallet.debit", "succeeded"),
            ("gift.issue", "succeeded"),
            ("gift.notify", "succeeded"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let voucher = saga["context"]["voucher_code"]
        .as_str()
        .context("a voucher in the context")?;
    assert!(is_voucher(voucher), "{voucher}");
    assert_eq!(saga["context"]["notification_status"], "sent");
    assert_eq!(saga["context"]["price_points"], 120);
    assert_eq!(stock(&p, &gift).await?, 2);
    assert_eq!(balance(&p, &customer).await?, 380);

    let texts = delivered(&p, chat);
    assert_eq!(texts.len(), before + 1, "{texts:?}");
    let told = texts.last().context("a message")?;
    assert!(
        told.contains("Dragon mug") && told.contains(voucher),
        "{told}"
    );
    let notifications = p
        .get(&format!(
            "/v1/telegram/notifications?idempotency_key=gift:{}",
            saga["id"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(notifications["items"][0]["status"], "sent");

    // The same Idempotency-Key and body: the same exchange, nothing new.
    let start = |key: &'static str| {
        let path = format!("/v1/gifts/{gift}/exchanges");
        let body = json!({"customer_id": customer});
        let http = p.http.clone();
        let url = format!("{}{path}", p.base);
        async move {
            let response = http
                .post(url)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let saga: Value = response.json().await?;
            anyhow::Ok((status, saga["id"].clone()))
        }
    };
    let (first_status, first) = start("buy-the-mug").await?;
    let (second_status, second) = start("buy-the-mug").await?;
    assert_eq!((first_status, second_status), (202, 202));
    assert_eq!(first, second);
    let saga = p
        .wait_terminal(first.as_str().context("saga id")?, WAIT)
        .await?;
    assert_eq!(saga["state"], "completed");
    assert_eq!(stock(&p, &gift).await?, 1);
    assert_eq!(balance(&p, &customer).await?, 260);

    let (status, _, problem) = p
        .call(
            Method::POST,
            &format!("/v1/gifts/{}/exchanges", uuid::Uuid::now_v7()),
            Some(json!({"customer_id": customer})),
        )
        .await?;
    assert_eq!((status, &problem["code"]), (404, &json!("gift_not_found")));

    let doc = p.get("/openapi.json").await?;
    for path in [
        "/v1/gifts",
        "/v1/gifts/{id}",
        "/v1/gifts/{id}/exchanges",
        "/v1/telegram/messages",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_points_compensate_and_the_gift_goes_back_to_the_stock() -> anyhow::Result<()> {
    let p = platform().await?;
    let (customer, chat) = earn(&p, 50).await?;
    let gift = create_gift(&p, "Golden sword", 120, 1).await?;
    let before = delivered(&p, chat).len();

    let saga = exchange(&p, &gift, &customer).await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(saga_tests::compensation_names(&saga), ["gift.release"]);
    let failed = step_states(&saga);
    assert_eq!(failed[1], ("wallet.debit".to_owned(), "failed".to_owned()));
    assert_eq!(stock(&p, &gift).await?, 1);
    assert_eq!(balance(&p, &customer).await?, 50);
    assert_eq!(delivered(&p, chat).len(), before, "nobody is told");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stock_compensates_with_nothing_debited() -> anyhow::Result<()> {
    let p = platform().await?;
    let (customer, _) = earn(&p, 500).await?;
    let gift = create_gift(&p, "Sold-out shield", 100, 0).await?;
    let entries_before = p.get(&format!("/v1/wallets/{customer}")).await?["entries"].clone();

    let saga = exchange(&p, &gift, &customer).await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(
        step_states(&saga)[0],
        ("gift.reserve".to_owned(), "failed".to_owned())
    );
    assert!(saga_tests::compensation_names(&saga).is_empty());
    assert_eq!(stock(&p, &gift).await?, 0);
    let wallet = p.get(&format!("/v1/wallets/{customer}")).await?;
    assert_eq!(wallet["balance"], 500);
    assert_eq!(wallet["entries"], entries_before, "nothing debited");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_customers_race_for_the_last_five() -> anyhow::Result<()> {
    let p = platform().await?;
    let gift = create_gift(&p, "Limited dragon egg", 100, 5).await?;
    let customers = futures::future::try_join_all((0..20).map(|_| earn(&p, 100))).await?;

    let sagas =
        futures::future::try_join_all(customers.iter().map(|(c, _)| exchange(&p, &gift, c)))
            .await?;
    let finished =
        futures::future::try_join_all(sagas.iter().map(|s| p.wait_terminal(s, WAIT * 2))).await?;
    let completed = finished
        .iter()
        .filter(|s| s["state"] == "completed")
        .count();
    let compensated = finished
        .iter()
        .filter(|s| s["state"] == "compensated")
        .count();
    assert_eq!((completed, compensated), (5, 15));
    assert_eq!(stock(&p, &gift).await?, 0);
    let mut balances = Vec::new();
    for (customer, _) in &customers {
        balances.push(balance(&p, customer).await?);
    }
    assert!(balances.iter().all(|b| *b >= 0), "{balances:?}");
    assert_eq!(balances.iter().filter(|b| **b == 0).count(), 5);
    assert_eq!(balances.iter().filter(|b| **b == 100).count(), 15);
    let vouchers: std::collections::BTreeSet<_> = finished
        .iter()
        .filter_map(|s| s["context"]["voucher_code"].as_str())
        .collect();
    assert_eq!(vouchers.len(), 5, "one voucher per completed exchange");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_down_the_exchange_completes_queued_and_the_message_arrives_once_after_recovery()
-> anyhow::Result<()> {
    let p = platform().await?;
    let (customer, chat) = earn(&p, 300).await?;
    let gift = create_gift(&p, "Crystal ball", 100, 10).await?;
    p.stand_in().push_fault(FaultSpec {
        status: 500,
        count: 100_000,
        retry_after: None,
    })?;

    let saga = exchange(&p, &gift, &customer).await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["context"]["notification_status"], "queued");
    let voucher = saga["context"]["voucher_code"]
        .as_str()
        .context("a voucher")?
        .to_owned();
    assert_eq!(balance(&p, &customer).await?, 200);
    assert!(delivered(&p, chat).iter().all(|t| !t.contains(&voucher)));

    // Telegram is back (the stand-in forgets its faults, and what it answered so far).
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.stand_in().reset();
    wait_for(
        Duration::from_secs(90),
        "the queued message to arrive",
        || async {
            Ok(delivered(&p, chat)
                .iter()
                .any(|t| t.contains(&voucher))
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copies = delivered(&p, chat)
        .iter()
        .filter(|t| t.contains(&voucher))
        .count();
    assert_eq!(copies, 1, "exactly once");
    let told = delivered(&p, chat);
    assert!(told.iter().any(|t| t.contains("Crystal ball")));
    let notifications = p
        .get(&format!(
            "/v1/telegram/notifications?idempotency_key=gift:{}",
            saga["id"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(notifications["items"][0]["status"], "sent");
    p.stop().await
}

async fn scrape(p: &TestPlatform) -> anyhow::Result<Scrape> {
    let text = p
        .http
        .get(format!("{}/metrics", p.base))
        .send()
        .await?
        .text()
        .await?;
    Ok(Scrape::parse(std::io::Cursor::new(text).lines())?)
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matches =
        |s: &&Sample| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
    scrape
        .samples
        .iter()
        .filter(matches)
        .map(|s| match &s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Metric::Summary(_) => 0.0,
        })
        .sum()
}

/// Observations of a histogram at or below `le` seconds.
fn at_most(scrape: &Scrape, name: &str, labels: &[(&str, &str)], le: f64) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match &s.value {
            Metric::Histogram(buckets) => buckets
                .iter()
                .find(|b| (b.less_than - le).abs() < 1e-9)
                .map(|b| b.count),
            _ => None,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_and_closes_again() -> anyhow::Result<()> {
    let p = platform().await?;
    let (customer, chat) = earn(&p, 1000).await?;
    let gift = create_gift(&p, "Bag of gems", 1, 100).await?;
    let transitions = "saga_gift_notify_breaker_transitions_total";
    let calls = "saga_gift_notify_call_seconds";
    let before = scrape(&p).await?;
    p.stand_in().push_fault(FaultSpec {
        status: 500,
        count: 100_000,
        retry_after: None,
    })?;

    let mut vouchers = BTreeMap::new();
    let mut record = |saga: &Value| {
        if let Some(voucher) = saga["context"]["voucher_code"].as_str() {
            vouchers.insert(
                voucher.to_owned(),
                saga["context"]["notification_status"].clone(),
            );
        }
    };
    // Failing calls, one exchange after another, until the breaker opens.
    let mut opened = false;
    for _ in 0..10 {
        let saga = exchange(&p, &gift, &customer).await?;
        let saga = p.wait_terminal(&saga, WAIT).await?;
        assert_eq!(saga["state"], "completed", "{saga}");
        assert_eq!(saga["context"]["notification_status"], "queued");
        record(&saga);
        let now = scrape(&p).await?;
        if value(&now, transitions, &[("to", "open")])
            > value(&before, transitions, &[("to", "open")])
        {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker opened");

    // Open: the next exchange is answered from the fallback without calling, fast.
    let open = scrape(&p).await?;
    assert_eq!(value(&open, "saga_gift_notify_breaker_open", &[]), 1.0);
    let saga = exchange(&p, &gift, &customer).await?;
    let saga = p.wait_terminal(&saga, WAIT).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["context"]["notification_status"], "queued");
    record(&saga);
    let after = scrape(&p).await?;
    let rejected = [("outcome", "rejected")];
    let fast = value(&after, calls, &rejected) - value(&open, calls, &rejected);
    assert!(fast >= 1.0, "the open breaker refused the call");
    let within_5ms =
        at_most(&after, calls, &rejected, 0.005) - at_most(&open, calls, &rejected, 0.005);
    assert_eq!(within_5ms, fast, "every refused call took at most 5 ms");
    assert!(
        value(
            &after,
            "saga_gift_notify_queued_total",
            &[("reason", "breaker_open")]
        ) > value(
            &open,
            "saga_gift_notify_queued_total",
            &[("reason", "breaker_open")]
        )
    );

    // Telegram back: after the open time a call goes through, succeeds, and the breaker closes.
    p.stand_in().reset();
    wait_for(
        Duration::from_secs(90),
        "an exchange to be told at once again",
        || async {
            let saga = exchange(&p, &gift, &customer).await?;
            let saga = p.wait_terminal(&saga, WAIT).await?;
            let sent = saga["context"]["notification_status"] == "sent";
            if !sent {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(sent.then_some(saga))
        },
    )
    .await
    .map(|saga| record(&saga))?;
    let closed = scrape(&p).await?;
    assert!(
        value(&closed, transitions, &[("to", "closed")])
            > value(&before, transitions, &[("to", "closed")])
    );
    assert_eq!(value(&closed, "saga_gift_notify_breaker_open", &[]), 0.0);

    // Every exchange's message arrives, each exactly once, queued or not.
    wait_for(
        Duration::from_secs(90),
        "every queued message to arrive",
        || async {
            let texts = delivered(&p, chat);
            Ok(vouchers
                .keys()
                .all(|v| texts.iter().any(|t| t.contains(v.as_str())))
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let texts = delivered(&p, chat);
    for voucher in vouchers.keys() {
        let copies = texts
            .iter()
            .filter(|t| t.contains(voucher.as_str()))
            .count();
        assert_eq!(copies, 1, "{voucher}");
    }
    let delivered_from_queue = value(
        &scrape(&p).await?,
        "saga_telegram_queued_deliveries_total",
        &[("result", "sent")],
    ) - value(
        &before,
        "saga_telegram_queued_deliveries_total",
        &[("result", "sent")],
    );
    let queued = vouchers.values().filter(|s| *s == "queued").count();
    assert!(delivered_from_queue >= queued as f64 - 0.5);
    p.stop().await
}
