//! Demonstrations against a running platform (`./dev.sh up`).
//!
//! `saga-demo breaker` is the seed's circuit-breaking demonstration: it gives a customer plenty
//! of points (a mission worth 1,000,000 points, a linked chat, its `mission_reward` saga), adds
//! a gift with plenty of stock, then runs Debian's `siege` against
//! `POST /v1/gifts/{id}/exchanges` while it drives the Telegram stand-in through its control API:
//! healthy for the first sixth of the run, answering 500 to every `sendMessage` until seven
//! twelfths, then healthy again. When siege is done and the platform is quiet it prints:
//!
//! - the exchanges siege saw answered and failed (0 failed: an exchange never waits for
//!   Telegram, the fallback queues the message instead);
//! - the gift worker's breaker transitions (`/metrics`);
//! - the p99 of the guarded call while the breaker was open (the calls it refused: < 5 ms);
//! - the messages queued and delivered, and whether every voucher reached the customer exactly
//!   once (the stand-in's record of accepted messages, by voucher).
//!
//! It exits non-zero when a promise is broken. Needs `siege` (`sudo apt-get install -y siege`).
//!
//! ```sh
//! ./dev.sh up
//! cargo run --release -p saga-platform --bin saga-demo -- breaker --seconds 90 --concurrency 10
//! ```

#![allow(
    clippy::print_stdout,
    reason = "the demonstration's report is its output"
)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use runtime::metrics::{
    GIFT_NOTIFY_BREAKER_TRANSITIONS, GIFT_NOTIFY_CALL_DURATION, GIFT_NOTIFY_QUEUED,
    TELEGRAM_QUEUED_DELIVERIES,
};
use serde_json::{Value, json};
use workers::gift::text::voucher_in;

#[derive(Parser, Debug)]
#[command(about = "Demonstrations against a running platform")]
struct Cli {
    #[command(subcommand)]
    demo: Demo,
}

#[derive(Subcommand, Debug)]
enum Demo {
    /// Gift exchanges under siege while Telegram fails and recovers: the fallback, the breaker,
    /// and every message delivered exactly once.
    Breaker(BreakerArgs),
}

#[derive(Args, Debug)]
struct BreakerArgs {
    /// The platform's gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// The Telegram stand-in (its control API).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    stand_in_url: String,
    /// How long siege runs, in seconds.
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// siege's concurrent users.
    #[arg(long, default_value_t = 10)]
    concurrency: u32,
    /// siege's delay: each user waits up to this many seconds between requests.
    #[arg(long, default_value_t = 0.5)]
    delay: f64,
    /// How long to wait, after siege, for the platform to deliver what was queued.
    #[arg(long, default_value_t = 180)]
    settle_seconds: u64,
    /// An API token with the admin scope (it creates the gift, then plays the game backend).
    #[arg(long, env = "SAGA_API_TOKEN", hide_env_values = true)]
    token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let broken = match cli.demo {
        Demo::Breaker(args) => breaker(&args).await?,
    };
    if broken.is_empty() {
        println!("\nevery promise kept");
        Ok(())
    } else {
        println!("\nbroken promises:");
        for promise in &broken {
            println!("  - {promise}");
        }
        std::process::exit(1);
    }
}

/// A running platform's public API and the stand-in's control API.
struct Platform {
    http: reqwest::Client,
    base: String,
    stand_in: String,
}

impl Platform {
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let (status, answer) = self.call(method.clone(), &url, body).await?;
        if status != want {
            bail!("{method} {path}: {status} {answer}");
        }
        Ok(answer)
    }

    async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?;
        Ok(Metrics::parse(&text))
    }

    async fn stand_in_messages(&self) -> anyhow::Result<Vec<Value>> {
        let (status, messages) = self
            .call(
                reqwest::Method::GET,
                &format!("{}/control/messages", self.stand_in),
                None,
            )
            .await?;
        if status != 200 {
            bail!("the stand-in's messages: {status}");
        }
        Ok(messages.as_array().cloned().unwrap_or_default())
    }

    async fn stand_in_control(&self, path: &str, body: Option<Value>) -> anyhow::Result<()> {
        let (status, answer) = self
            .call(
                reqwest::Method::POST,
                &format!("{}{path}", self.stand_in),
                body,
            )
            .await?;
        if !(200..300).contains(&status) {
            bail!("the stand-in's {path}: {status} {answer}");
        }
        Ok(())
    }
}

/// Samples of a Prometheus text exposition: (name, labels) → value.
#[derive(Debug, Default)]
struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter_map(|pair| {
                    let (key, value) = pair.split_once("=\"")?;
                    Some((
                        key.trim().to_owned(),
                        value.trim_end_matches('"').to_owned(),
                    ))
                })
                .collect();
            samples.push((name.to_owned(), labels, value));
        }
        Self(samples)
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// A histogram's cumulative buckets (`le` → count) for `labels`.
    fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> BTreeMap<u64, f64> {
        let mut buckets = BTreeMap::new();
        for (n, l, v) in &self.0 {
            if n != &format!("{name}_bucket")
                || !labels
                    .iter()
                    .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
            {
                continue;
            }
            let le = match l.get("le").map(String::as_str) {
                Some("+Inf") => u64::MAX,
                Some(le) => le
                    .parse::<f64>()
                    .map_or(u64::MAX, |s| (s * 1e6).round() as u64),
                None => continue,
            };
            *buckets.entry(le).or_insert(0.0) += v;
        }
        buckets
    }
}

/// The upper bound (µs) of the bucket holding the `q` quantile of the observations between two
/// scrapes, or `None` without observations.
fn quantile(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> Option<u64> {
    let delta: Vec<(u64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.get(le).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last().map(|(_, n)| *n)?;
    if total < 1.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

fn micros(le: u64) -> String {
    if le == u64::MAX {
        "more than the largest bucket".into()
    } else {
        format!("≤ {:.1} ms", le as f64 / 1000.0)
    }
}

/// siege's JSON summary.
#[derive(Debug, Default)]
struct Siege {
    transactions: u64,
    successful: u64,
    failed: u64,
    availability: f64,
    rate: f64,
}

fn parse_siege(output: &str) -> anyhow::Result<Siege> {
    let start = output.find('{').context("no summary in siege's output")?;
    let end = output.rfind('}').context("no summary in siege's output")?;
    let summary: Value = serde_json::from_str(&output[start..=end]).context("siege's summary")?;
    let number = |key: &str| summary[key].as_f64().unwrap_or(0.0);
    Ok(Siege {
        transactions: number("transactions") as u64,
        successful: number("successful_transactions") as u64,
        failed: number("failed_transactions") as u64,
        availability: number("availability"),
        rate: number("transaction_rate"),
    })
}

async fn breaker(args: &BreakerArgs) -> anyhow::Result<Vec<String>> {
    let siege_version = tokio::process::Command::new("siege")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if siege_version.is_err() {
        bail!("siege is not installed: sudo apt-get install -y siege");
    }
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", args.token)
            .parse()
            .context("the token is not a valid header value")?,
    );
    let p = Platform {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()?,
        base: args.base_url.trim_end_matches('/').to_owned(),
        stand_in: args.stand_in_url.trim_end_matches('/').to_owned(),
    };
    p.expect(reqwest::Method::GET, "/readyz", None, 200)
        .await
        .context("is the platform running (./dev.sh up)?")?;

    // A customer with plenty of points, earned the way every customer earns them.
    let n = uuid::Uuid::new_v4().as_u128();
    let customer = format!("demo-{:08x}", n as u32);
    let chat = i64::try_from(n % 1_000_000_000).unwrap_or(1) + 7_000_000_000;
    p.expect(
        reqwest::Method::PUT,
        &format!("/v1/telegram/chats/{customer}"),
        Some(json!({"chat_id": chat})),
        200,
    )
    .await?;
    let mission = p
        .expect(
            reqwest::Method::POST,
            "/v1/missions",
            Some(json!({"customer_id": customer, "title": "Survive the siege", "reward_points": 1_000_000})),
            201,
        )
        .await?;
    let saga = p
        .expect(
            reqwest::Method::POST,
            "/v1/sagas",
            Some(json!({"type": "mission_reward", "input": {"mission_id": mission["id"]}})),
            202,
        )
        .await?;
    let saga_id = saga["id"].as_str().context("saga id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let saga = p
            .expect(
                reqwest::Method::GET,
                &format!("/v1/sagas/{saga_id}"),
                None,
                200,
            )
            .await?;
        match saga["state"].as_str() {
            Some("completed") => break,
            Some("running" | "compensating") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => bail!("the customer's mission saga did not complete: {saga}"),
        }
    }
    let wallet = p
        .expect(
            reqwest::Method::GET,
            &format!("/v1/wallets/{customer}"),
            None,
            200,
        )
        .await?;
    println!(
        "customer {customer}: {} points, Telegram chat {chat}",
        wallet["balance"]
    );

    let stock = 1_000_000;
    let gift = p
        .expect(
            reqwest::Method::POST,
            "/v1/gifts",
            Some(json!({"name": "Siege survivor mug", "price_points": 1, "stock": stock})),
            201,
        )
        .await?;
    let gift_id = gift["id"].as_str().context("gift id")?.to_owned();
    println!("gift {gift_id}: 1 point each, {stock} in stock");

    p.stand_in_control("/control/reset", None).await?;
    let before = p.metrics().await?;
    let url = format!("{}/v1/gifts/{gift_id}/exchanges", p.base);
    let body = json!({"customer_id": customer}).to_string();
    println!(
        "siege: {} users for {} s against POST {url}; Telegram fails from {} s to {} s",
        args.concurrency,
        args.seconds,
        args.seconds / 6,
        args.seconds * 7 / 12
    );
    let siege = tokio::process::Command::new("siege")
        .arg(format!("-c{}", args.concurrency))
        .arg(format!("-t{}S", args.seconds))
        .arg(format!("-d{}", args.delay))
        .arg("-q")
        .arg("--content-type")
        .arg("application/json")
        .arg(format!("--header=Authorization: Bearer {}", args.token))
        .arg(format!("{url} POST {body}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting siege")?;
    let started = Instant::now();

    // Telegram's weather while siege runs.
    tokio::time::sleep(Duration::from_secs(args.seconds / 6)).await;
    p.stand_in_control(
        "/control/faults",
        Some(json!({"status": 500, "count": 100_000_000})),
    )
    .await?;
    println!(
        "{:>5.1} s  Telegram answers 500",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(
        Duration::from_secs(args.seconds * 7 / 12).saturating_sub(started.elapsed()),
    )
    .await;
    let mut received = p.stand_in_messages().await?;
    p.stand_in_control("/control/reset", None).await?;
    println!(
        "{:>5.1} s  Telegram is back",
        started.elapsed().as_secs_f64()
    );

    let output = siege
        .wait_with_output()
        .await
        .context("waiting for siege")?;
    let siege = parse_siege(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
        format!(
            "siege exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    println!("{:>5.1} s  siege done", started.elapsed().as_secs_f64());

    // Quiet: every queued message settled by the telegram worker.
    let settle = Instant::now() + Duration::from_secs(args.settle_seconds);
    let (after, queued, settled) = loop {
        let now = p.metrics().await?;
        let queued = now.sum(GIFT_NOTIFY_QUEUED, &[]) - before.sum(GIFT_NOTIFY_QUEUED, &[]);
        let settled = [
            "sent",
            "already_sent",
            "already_failed",
            "failed",
            "dead_letter",
        ]
        .iter()
        .map(|r| {
            now.sum(TELEGRAM_QUEUED_DELIVERIES, &[("result", r)])
                - before.sum(TELEGRAM_QUEUED_DELIVERIES, &[("result", r)])
        })
        .sum::<f64>();
        let running = now.sum("saga_active", &[("state", "running")]);
        if (settled >= queued && running < 1.0) || Instant::now() > settle {
            break (now, queued, settled);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    received.extend(p.stand_in_messages().await?);
    let left = p
        .expect(
            reqwest::Method::GET,
            &format!("/v1/gifts/{gift_id}"),
            None,
            200,
        )
        .await?["stock"]
        .as_i64()
        .unwrap_or(stock);
    let issued = stock - left;

    let mut broken = Vec::new();
    println!("\nexchanges (siege):");
    println!(
        "  answered {}, successful {}, failed {} ({:.2} % available, {:.1}/s)",
        siege.transactions, siege.successful, siege.failed, siege.availability, siege.rate
    );
    if siege.failed > 0 || siege.successful < siege.transactions {
        broken.push(format!(
            "{} exchanges failed or were refused",
            siege.failed + siege.transactions - siege.successful
        ));
    }
    println!("  vouchers issued: {issued}");

    println!("\nbreaker transitions (gift → telegram):");
    let mut transitions = BTreeMap::new();
    for to in ["open", "half_open", "closed"] {
        let n = after.sum(GIFT_NOTIFY_BREAKER_TRANSITIONS, &[("to", to)])
            - before.sum(GIFT_NOTIFY_BREAKER_TRANSITIONS, &[("to", to)]);
        transitions.insert(to, n);
        println!("  to {to}: {n}");
    }
    if transitions["open"] < 1.0 {
        broken.push("the breaker never opened".into());
    }
    if transitions["closed"] < 1.0 {
        broken.push("the breaker never closed again".into());
    }

    println!("\nthe guarded call (histogram {GIFT_NOTIFY_CALL_DURATION}):");
    for outcome in ["sent", "failed", "rejected", "refused"] {
        let labels = [("outcome", outcome)];
        let count = after.sum(&format!("{GIFT_NOTIFY_CALL_DURATION}_count"), &labels)
            - before.sum(&format!("{GIFT_NOTIFY_CALL_DURATION}_count"), &labels);
        let p99 = quantile(
            &before.buckets(GIFT_NOTIFY_CALL_DURATION, &labels),
            &after.buckets(GIFT_NOTIFY_CALL_DURATION, &labels),
            0.99,
        );
        let shown = p99.map_or_else(|| "-".to_owned(), micros);
        println!("  {outcome:>8}: {count:>7} calls, p99 {shown}");
    }
    let open_p99 = quantile(
        &before.buckets(GIFT_NOTIFY_CALL_DURATION, &[("outcome", "rejected")]),
        &after.buckets(GIFT_NOTIFY_CALL_DURATION, &[("outcome", "rejected")]),
        0.99,
    );
    match open_p99 {
        Some(le) if le <= 5_000 => println!("  p99 while open: {} (goal < 5 ms)", micros(le)),
        Some(le) => broken.push(format!("p99 while open was {} (goal < 5 ms)", micros(le))),
        None => broken.push("no call met an open breaker".into()),
    }

    println!("\nmessages:");
    let delivered = after.sum(TELEGRAM_QUEUED_DELIVERIES, &[("result", "sent")])
        - before.sum(TELEGRAM_QUEUED_DELIVERIES, &[("result", "sent")]);
    println!("  queued by the fallback: {queued}");
    println!("  settled from the queue: {settled} (delivered now: {delivered})");
    if settled < queued {
        broken.push(format!(
            "{} queued messages were not delivered in time",
            queued - settled
        ));
    }
    let mut per_voucher: BTreeMap<String, usize> = BTreeMap::new();
    for message in &received {
        if message["status"] != 200 {
            continue;
        }
        if let Some(voucher) = message["text"].as_str().and_then(voucher_in) {
            *per_voucher.entry(voucher.to_owned()).or_default() += 1;
        }
    }
    let twice = per_voucher.values().filter(|n| **n > 1).count();
    println!(
        "  vouchers told: {} of {issued}; told more than once: {twice}",
        per_voucher.len()
    );
    if twice > 0 {
        broken.push(format!("{twice} vouchers were told more than once"));
    }
    if i64::try_from(per_voucher.len()).unwrap_or(i64::MAX) != issued {
        broken.push(format!(
            "{} of {issued} vouchers were told",
            per_voucher.len()
        ));
    }
    Ok(broken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_quantiles_are_read_from_the_exposition() {
        let before = Metrics::parse(
            "# TYPE x histogram\nx_bucket{outcome=\"rejected\",le=\"0.001\"} 1\n\
             x_bucket{outcome=\"rejected\",le=\"0.005\"} 1\nx_bucket{outcome=\"rejected\",le=\"+Inf\"} 1\n",
        );
        let after = Metrics::parse(
            "x_bucket{outcome=\"rejected\",le=\"0.001\"} 90\n\
             x_bucket{outcome=\"rejected\",le=\"0.005\"} 101\nx_bucket{outcome=\"rejected\",le=\"+Inf\"} 101\n\
             c_total{to=\"open\"} 3\nc_total{to=\"closed\"} 2\ng 1\n",
        );
        let labels = [("outcome", "rejected")];
        assert_eq!(
            quantile(
                &before.buckets("x", &labels),
                &after.buckets("x", &labels),
                0.99
            ),
            Some(5_000)
        );
        assert_eq!(
            quantile(
                &before.buckets("x", &labels),
                &after.buckets("x", &labels),
                0.5
            ),
            Some(1_000)
        );
        assert_eq!(
            quantile(
                &after.buckets("x", &labels),
                &after.buckets("x", &labels),
                0.99
            ),
            None
        );
        assert_eq!(after.sum("c_total", &[("to", "open")]), 3.0);
        assert_eq!(after.sum("c_total", &[]), 5.0);
        assert_eq!(after.sum("g", &[]), 1.0);
    }

    #[test]
    fn the_siege_summary_is_read() {
        let output = "New configuration template added to /root/.siege\n{\t\"transactions\":\t\t\t 2883,\n\
                      \t\"availability\":\t\t 100.00,\n\t\"transaction_rate\":\t 1379.43,\n\
                      \t\"successful_transactions\": 2883,\n\t\"failed_transactions\": 0\n}\n";
        let siege = parse_siege(output).expect("a summary");
        assert_eq!(
            (siege.transactions, siege.successful, siege.failed),
            (2883, 2883, 0)
        );
        assert!(parse_siege("nothing").is_err());
    }
}
