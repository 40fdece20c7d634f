//! The benchmark: against a running platform, creates N missions (one customer and chat each),
//! then runs N `mission_reward` sagas at concurrency C and prints completed sagas per second,
//! the p50/p99 latency from `POST /v1/sagas` until the saga's `SagaFinished` event is seen on
//! NATS, and the CPU time the platform, nats-server and PostgreSQL spent per saga (from
//! `/proc`).

#![allow(
    clippy::print_stdout,
    reason = "the benchmark's figures are its output"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[derive(Parser, Debug)]
#[command(
    about = "Runs N mission_reward sagas at concurrency C and prints throughput, latency and CPU per saga"
)]
struct Args {
    /// The platform's gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// NATS, where `SagaFinished` events are observed.
    #[arg(long, env = "SAGA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The NATS user that watches the events (the read-only `observer` of
    /// deploy/nats/nats-server.conf), when the server asks for one.
    #[arg(long, env = "SAGA_NATS_USER")]
    nats_user: Option<String>,
    /// Its password.
    #[arg(long, env = "SAGA_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// The platform's stream/subject prefix, if any.
    #[arg(long, env = "SAGA_NATS_PREFIX", default_value = "")]
    nats_prefix: String,
    /// Sagas to run.
    #[arg(long, short = 'n', default_value_t = 2000)]
    sagas: usize,
    /// Sagas in flight at once.
    #[arg(long, short = 'c', default_value_t = 50)]
    concurrency: usize,
    /// An API token with the admin scope (it sets the budget, then plays the game backend).
    #[arg(long, env = "SAGA_API_TOKEN", hide_env_values = true)]
    token: String,
}

enum Finish {
    Waiting(oneshot::Sender<(Instant, String)>),
    Done(Instant, String),
}

type Finishes = Arc<Mutex<HashMap<String, Finish>>>;

fn record(finishes: &Finishes, id: String, at: Instant, state: String) {
    let mut map = finishes.lock().expect("finish map poisoned");
    match map.remove(&id) {
        Some(Finish::Waiting(tx)) => {
            let _ = tx.send((at, state));
        }
        _ => {
            map.insert(id, Finish::Done(at, state));
        }
    }
}

async fn await_finish(finishes: &Finishes, id: &str) -> anyhow::Result<(Instant, String)> {
    let rx = {
        let mut map = finishes.lock().expect("finish map poisoned");
        match map.remove(id) {
            Some(Finish::Done(at, state)) => return Ok((at, state)),
            _ => {
                let (tx, rx) = oneshot::channel();
                map.insert(id.to_owned(), Finish::Waiting(tx));
                rx
            }
        }
    };
    Ok(tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .context("saga did not finish within 120 s")??)
}

/// CPU seconds (user + system) of every process whose name is `name`.
fn cpu_seconds(name: &str) -> f64 {
    let ticks = 100.0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0u64;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total as f64 / ticks
}

const PROCESSES: [(&str, &str); 4] = [
    ("platform", "saga-platform"),
    ("nats-server", "nats-server"),
    ("postgres", "postgres"),
    ("bench", "saga-bench"),
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> anyhow::Result<Value> {
    let response = http.post(&url).json(&body).send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {body}");
    }
    Ok(body)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", args.token)
            .parse()
            .context("the token is not a valid header value")?,
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()?;
    let base = args.base_url.trim_end_matches('/').to_owned();
    http.put(format!("{base}/v1/rewards/budget"))
        .json(&json!({"remaining_points": null}))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .context("the platform does not answer; start it with ./dev.sh up")?;

    eprintln!("creating {} missions ...", args.sagas);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let missions: Vec<String> = futures::stream::iter(0..args.sagas)
        .map(|i| {
            let http = http.clone();
            let base = base.clone();
            let customer = format!("bench-{}-{i}", &run[..8]);
            async move {
                let link = http
                    .put(format!("{base}/v1/telegram/chats/{customer}"))
                    .json(&json!({"chat_id": 100_000 + i}))
                    .send()
                    .await?;
                if !link.status().is_success() {
                    bail!("linking a chat: {}", link.status());
                }
                let mission = post(
                    &http,
                    format!("{base}/v1/missions"),
                    json!({"customer_id": customer, "title": format!("Bench mission {i}"), "reward_points": 10}),
                )
                .await?;
                mission["id"].as_str().map(str::to_owned).context("mission without id")
            }
        })
        .buffered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    let finishes: Finishes = Arc::new(Mutex::new(HashMap::new()));
    let mut options = async_nats::ConnectOptions::new();
    if let (Some(user), Some(password)) = (&args.nats_user, &args.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    let nats = options.connect(&args.nats_url).await.context("NATS")?;
    let subject = contracts::Topology::new(&args.nats_prefix).event_subject("saga", "SagaFinished");
    let mut events = nats.subscribe(subject).await?;
    nats.flush().await?;
    let listener = {
        let finishes = finishes.clone();
        tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let at = Instant::now();
                let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else {
                    continue;
                };
                if let (Some(id), Some(state)) =
                    (event["saga_id"].as_str(), event["event"]["state"].as_str())
                {
                    record(&finishes, id.to_owned(), at, state.to_owned());
                }
            }
        })
    };

    eprintln!(
        "running {} sagas at concurrency {} ...",
        args.sagas, args.concurrency
    );
    let cpu_before: Vec<f64> = PROCESSES
        .iter()
        .map(|(_, name)| cpu_seconds(name))
        .collect();
    let started = Instant::now();
    let results: Vec<anyhow::Result<(Duration, String)>> = futures::stream::iter(missions)
        .map(|mission_id| {
            let http = http.clone();
            let base = base.clone();
            let finishes = finishes.clone();
            async move {
                let begun = Instant::now();
                let saga = post(
                    &http,
                    format!("{base}/v1/sagas"),
                    json!({"type": "mission_reward", "input": {"mission_id": mission_id}}),
                )
                .await?;
                let id = saga["id"].as_str().context("saga without id")?;
                let (at, state) = await_finish(&finishes, id).await?;
                Ok((at.duration_since(begun), state))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let cpu_after: Vec<f64> = PROCESSES
        .iter()
        .map(|(_, name)| cpu_seconds(name))
        .collect();
    listener.abort();

    let mut latencies = Vec::new();
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut errors = 0;
    for result in results {
        match result {
            Ok((latency, state)) => {
                *outcomes.entry(state.clone()).or_default() += 1;
                if state == "completed" {
                    latencies.push(latency);
                }
            }
            Err(error) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("error: {error:#}");
                }
            }
        }
    }
    latencies.sort();
    let completed = latencies.len();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let per_saga = |i: usize| (cpu_after[i] - cpu_before[i]) * 1000.0 / completed.max(1) as f64;
    println!(
        "sagas={} concurrency={} completed={} other={:?} errors={} elapsed={:.2}s throughput={:.1} sagas/s p50={:.2} ms p99={:.2} ms",
        args.sagas,
        args.concurrency,
        completed,
        outcomes
            .iter()
            .filter(|(s, _)| s.as_str() != "completed")
            .collect::<Vec<_>>(),
        errors,
        elapsed.as_secs_f64(),
        completed as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
    );
    let platform_total: f64 = (0..3).map(per_saga).sum();
    println!(
        "cpu per saga: platform={:.3} ms nats-server={:.3} ms postgres={:.3} ms total={:.3} ms (bench client {:.3} ms, not counted)",
        per_saga(0),
        per_saga(1),
        per_saga(2),
        platform_total,
        per_saga(3),
    );
    if errors > 0 {
        bail!("{errors} sagas failed to run");
    }
    Ok(())
}
