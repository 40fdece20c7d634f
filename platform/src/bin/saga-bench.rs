//! The benchmark: against a running platform, three phases of `mission_reward` sagas (a warm-up
//! at concurrency 10, a throughput phase of N sagas at concurrency C, a latency phase of N1 sagas
//! one at a time), each saga started with `Prefer: wait=30` so that its latency is the time until
//! the platform answers with the finished saga. Per measured phase it prints sagas per second,
//! p50/p90/p99, the CPU time per saga of the platform, its nats-server, PostgreSQL (the
//! backends of the platform's database and the server's background processes) and MariaDB
//! (the Mypage view), and the PostgreSQL transactions and statements per saga.
//!
//! With `--vs-restate <run.sh>` it then runs the Restate peer (`../shared/peers/restate/run.sh`)
//! with the same N, C, N1 and warm-up on the same PostgreSQL and prints one table side by side,
//! with our ratio to Restate.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    reason = "the benchmark's figures are its output; counts are far below 2^52"
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use comfy_table::{Cell, CellAlignment, Table, presets};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

#[derive(Parser, Debug)]
#[command(
    about = "Runs mission_reward sagas (warm-up, throughput at concurrency C, latency one at a time) and prints throughput, latency, CPU, transactions and statements per saga; --vs-restate runs the Restate peer the same way and prints both side by side"
)]
struct Args {
    /// The platform's gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// An API token with the admin scope (it sets the budget, then plays the game backend).
    #[arg(long, env = "SAGA_API_TOKEN", hide_env_values = true)]
    token: String,
    /// Sagas of the throughput phase.
    #[arg(long, short = 'n', default_value_t = 2000)]
    sagas: usize,
    /// Sagas in flight at once in the throughput phase.
    #[arg(long, short = 'c', default_value_t = 50)]
    concurrency: usize,
    /// Sagas of the latency phase (one at a time).
    #[arg(long, default_value_t = 200)]
    latency_sagas: usize,
    /// Sagas of the warm-up (concurrency 10, not measured).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// PostgreSQL with the right to read its statistics (`pg_stat_activity` of every database).
    #[arg(
        long,
        env = "SAGA_BENCH_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    admin_url: String,
    /// The platform's database.
    #[arg(long, default_value = "saga")]
    database: String,
    /// The file holding the PID of the platform's nats-server (else every nats-server counts).
    #[arg(long)]
    nats_pid_file: Option<PathBuf>,
    /// The Restate peer's script: run it after ours with the same sizes and print both.
    #[arg(long)]
    vs_restate: Option<PathBuf>,
    /// Before measuring, store this many more finished sagas (copies of the newest completed
    /// one, with its steps and history, each under new ids and keys), to measure throughput
    /// with a large store.
    #[arg(long, default_value_t = 0)]
    seed_finished: u64,
    /// The machine counts as quiet below this share of busy CPU (percent) over 2 s.
    #[arg(long, default_value_t = 25)]
    quiet_busy: u64,
}

/// What one measured phase gave.
#[derive(Debug, Default)]
struct Phase {
    ok: usize,
    errors: usize,
    sagas_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    /// CPU milliseconds per saga, by process group.
    cpu: Vec<(String, f64)>,
    transactions: Option<f64>,
    statements: Option<f64>,
}

impl Phase {
    fn cpu_total(&self) -> f64 {
        self.cpu
            .iter()
            .filter(|(name, _)| name != "client")
            .map(|(_, ms)| ms)
            .sum()
    }
}

/// One process's CPU time (user + system, all threads) in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 * 10.0
}

/// The PIDs of every process named `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// Busy and total jiffies of the machine.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let get = |i: usize| cpu.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    (busy, busy + get(3) + get(4))
}

/// Waits (at most 90 s) for a 2 s window with less than `limit` percent of the machine busy.
async fn wait_quiet(limit: u64) {
    let started = Instant::now();
    loop {
        let (busy0, total0) = machine_jiffies();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (busy1, total1) = machine_jiffies();
        let busy = 100 * (busy1 - busy0) / (total1 - total0).max(1);
        if busy < limit || started.elapsed() > Duration::from_secs(90) {
            eprintln!(
                "   quiet after {:.0} s (busy {busy}%)",
                started.elapsed().as_secs_f64()
            );
            return;
        }
    }
}

/// The processes whose CPU a phase counts, re-read at each snapshot (PostgreSQL backends come
/// and go).
struct Processes<'a> {
    postgres: &'a PgPool,
    database: &'a str,
    nats: Vec<u32>,
}

impl Processes<'_> {
    async fn postgres_pids(&self) -> anyhow::Result<Vec<u32>> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
             OR backend_type NOT IN ('client backend', 'autovacuum worker', 'parallel worker')",
        )
        .bind(self.database)
        .fetch_all(self.postgres)
        .await?;
        Ok(pids
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .collect())
    }

    async fn snapshot(&self) -> anyhow::Result<HashMap<(&'static str, u32), f64>> {
        let mut groups: Vec<(&'static str, Vec<u32>)> = vec![
            ("platform", pids_named("saga-platform")),
            ("nats-server", self.nats.clone()),
            ("postgres", self.postgres_pids().await?),
            ("mariadb", pids_named("mariadbd")),
            ("client", vec![std::process::id()]),
        ];
        let mut snapshot = HashMap::new();
        for (group, pids) in groups.drain(..) {
            for pid in pids {
                snapshot.insert((group, pid), cpu_ms(pid));
            }
        }
        Ok(snapshot)
    }
}

/// CPU milliseconds per group between two snapshots (a process that left counts up to the
/// first snapshot only; one that came counts from its start).
fn cpu_between(
    before: &HashMap<(&'static str, u32), f64>,
    after: &HashMap<(&'static str, u32), f64>,
) -> Vec<(String, f64)> {
    ["platform", "nats-server", "postgres", "mariadb", "client"]
        .into_iter()
        .map(|group| {
            let total: f64 = after
                .iter()
                .filter(|((g, _), _)| *g == group)
                .map(|(key, now)| now - before.get(key).copied().unwrap_or(0.0))
                .filter(|delta| *delta > 0.0)
                .sum();
            (group.to_owned(), total)
        })
        .collect()
}

/// Transactions and statements of the platform's database so far. PostgreSQL publishes a
/// backend's transaction counts when it goes idle, at most once a second (and 10 s later for
/// one that then stays idle), so callers read it after letting the backends settle.
async fn database_counts(pool: &PgPool, database: &str) -> anyhow::Result<(i64, Option<i64>)> {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    let transactions: i64 = sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(database)
    .fetch_one(pool)
    .await?;
    let statements: Option<i64> = sqlx::query_scalar(
        "SELECT sum(s.calls)::bigint FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
    )
    .bind(database)
    .fetch_one(pool)
    .await
    .ok()
    .flatten();
    Ok((transactions, statements))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank within the slice"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
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

/// The platform's client and base address.
struct Platform {
    http: reqwest::Client,
    base: String,
}

impl Platform {
    /// Makes `count` missions (each with a customer of its own and a linked Telegram chat).
    async fn missions(&self, label: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        futures::stream::iter(0..count)
            .map(|i| {
                let customer = format!("bench-{}-{label}-{i}", &run[..8]);
                async move {
                    let link = self
                        .http
                        .put(format!("{}/v1/telegram/chats/{customer}", self.base))
                        .json(&json!({"chat_id": 100_000 + i}))
                        .send()
                        .await?;
                    if !link.status().is_success() {
                        bail!("linking a chat: {}", link.status());
                    }
                    let mission = post(
                        &self.http,
                        format!("{}/v1/missions", self.base),
                        json!({"customer_id": customer, "title": format!("Bench mission {i}"), "reward_points": 10}),
                    )
                    .await?;
                    mission["id"]
                        .as_str()
                        .map(str::to_owned)
                        .context("mission without id")
                }
            })
            .buffered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Runs one saga and waits for its end: `Prefer: wait=30` on the start, then (if it was
    /// still running) a long poll.
    async fn run_saga(&self, mission_id: String) -> anyhow::Result<(Duration, String)> {
        let begun = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/sagas", self.base))
            .header("prefer", "wait=30")
            .json(&json!({"type": "mission_reward", "input": {"mission_id": mission_id}}))
            .send()
            .await?;
        let status = response.status();
        let mut saga: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST /v1/sagas: {status} {saga}");
        }
        let terminal = |saga: &Value| {
            matches!(
                saga["state"].as_str(),
                Some("completed" | "compensated" | "failed" | "cancelled")
            )
        };
        let deadline = begun + Duration::from_secs(120);
        while !terminal(&saga) {
            if Instant::now() > deadline {
                bail!("saga {} did not end within 120 s", saga["id"]);
            }
            let id = saga["id"].as_str().context("saga without id")?.to_owned();
            saga = self
                .http
                .get(format!("{}/v1/sagas/{id}?wait=30s", self.base))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
        }
        Ok((
            begun.elapsed(),
            saga["state"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// Runs the sagas of `missions` at `concurrency`.
    async fn run(
        &self,
        missions: Vec<String>,
        concurrency: usize,
    ) -> (Duration, Vec<anyhow::Result<(Duration, String)>>) {
        let started = Instant::now();
        let results = futures::stream::iter(missions)
            .map(|mission| self.run_saga(mission))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        (started.elapsed(), results)
    }
}

/// How long PostgreSQL's statistics take to include every backend's counts.
const STATS_SETTLE: Duration = Duration::from_secs(11);

async fn measure(
    platform: &Platform,
    processes: &Processes<'_>,
    args: &Args,
    label: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Phase> {
    eprintln!("== {label}: {count} sagas at concurrency {concurrency}");
    let missions = platform.missions(label, count).await?;
    tokio::time::sleep(STATS_SETTLE).await;
    wait_quiet(args.quiet_busy).await;
    // The idle rate (timer sweeps, relays), to take out of the settling time after the phase.
    let idle_from = Instant::now();
    let idle_start = database_counts(processes.postgres, processes.database).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_end = database_counts(processes.postgres, processes.database).await?;
    let idle_seconds = idle_from.elapsed().as_secs_f64();
    let cpu_before = processes.snapshot().await?;
    let (elapsed, results) = platform.run(missions, concurrency).await;
    let cpu_after = processes.snapshot().await?;
    let settle_from = Instant::now();
    tokio::time::sleep(STATS_SETTLE).await;
    let end = database_counts(processes.postgres, processes.database).await?;
    let settle_seconds = settle_from.elapsed().as_secs_f64();

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
                    eprintln!("   error: {error:#}");
                }
            }
        }
    }
    outcomes.remove("completed");
    if !outcomes.is_empty() {
        eprintln!("   not completed: {outcomes:?}");
    }
    latencies.sort();
    let ok = latencies.len();
    let per_saga = |x: f64| x / ok.max(1) as f64;
    let idle_rate = |a: i64, b: i64| (b - a) as f64 / idle_seconds;
    let transactions = per_saga(
        (end.0 - idle_end.0) as f64 - idle_rate(idle_start.0, idle_end.0) * settle_seconds,
    );
    let statements = match (idle_start.1, idle_end.1, end.1) {
        (Some(a), Some(b), Some(c)) => {
            Some(per_saga((c - b) as f64 - idle_rate(a, b) * settle_seconds))
        }
        _ => None,
    };
    let phase = Phase {
        ok,
        errors,
        sagas_per_s: ok as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 50.0),
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        cpu: cpu_between(&cpu_before, &cpu_after)
            .into_iter()
            .map(|(group, ms)| (group, per_saga(ms)))
            .collect(),
        transactions: Some(transactions),
        statements,
    };
    println!(
        "{label}: sagas={count} concurrency={concurrency} completed={ok} errors={errors} elapsed={:.2}s throughput={:.1} sagas/s p50={:.2} ms p90={:.2} ms p99={:.2} ms",
        elapsed.as_secs_f64(),
        phase.sagas_per_s,
        phase.p50_ms,
        phase.p90_ms,
        phase.p99_ms
    );
    println!(
        "{label}: cpu ms/saga: {} total={:.3} (client not counted); transactions/saga={:.1} statements/saga={}",
        phase
            .cpu
            .iter()
            .map(|(group, ms)| format!("{group}={ms:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        phase.cpu_total(),
        transactions,
        statements.map_or_else(
            || "n/a (pg_stat_statements not loaded)".to_owned(),
            |s| format!("{s:.1}")
        ),
    );
    Ok(phase)
}

/// Stores `count` more finished sagas in the platform's database, copies of the newest
/// completed `mission_reward` saga (its row, steps and history) under new ids and search keys,
/// dated before it, 50,000 per statement. Returns how many sagas the store holds then.
async fn seed_finished(admin_url: &str, database: &str, count: u64) -> anyhow::Result<i64> {
    use std::str::FromStr as _;
    let options = sqlx::postgres::PgConnectOptions::from_str(admin_url)?.database(database);
    let pool = PgPool::connect_with(options).await?;
    let started = Instant::now();
    let mut done = 0;
    while done < count {
        let chunk = (count - done).min(50_000);
        sqlx::query(
            "WITH template AS (SELECT * FROM orchestrator.sagas \
                 WHERE state = 'completed' AND saga_type = 'mission_reward' \
                 ORDER BY updated_at DESC LIMIT 1), \
             ids AS (SELECT gen_random_uuid() AS id, gen_random_uuid() AS mission, g \
                 FROM generate_series(1, $1::int) g), \
             sagas AS (INSERT INTO orchestrator.sagas (id, saga_type, definition_version, state, \
                     input, context, version, created_at, updated_at, search_keys) \
                 SELECT i.id, t.saga_type, t.definition_version, t.state, \
                     jsonb_build_object('mission_id', i.mission), t.context, t.version, \
                     t.created_at - make_interval(secs => i.g + $2), \
                     t.updated_at - make_interval(secs => i.g + $2), \
                     t.search_keys || jsonb_build_object('mission_id', i.mission::text, \
                         'customer_id', 'seeded-' || (i.g + $2)) \
                 FROM ids i, template t), \
             steps AS (INSERT INTO orchestrator.saga_steps \
                 SELECT i.id, st.step_index, st.name, st.state, st.attempts, st.started_at, \
                     st.finished_at, st.last_error, st.retry_base \
                 FROM ids i, orchestrator.saga_steps st \
                 WHERE st.saga_id = (SELECT id FROM template)) \
             INSERT INTO orchestrator.saga_history (saga_id, at, kind, step, phase, attempt, \
                 outcome, error, actor, action, input) \
             SELECT i.id, h.at, h.kind, h.step, h.phase, h.attempt, h.outcome, h.error, \
                 h.actor, h.action, h.input \
             FROM ids i, orchestrator.saga_history h WHERE h.saga_id = (SELECT id FROM template)",
        )
        .bind(i32::try_from(chunk).unwrap_or(i32::MAX))
        .bind(i64::try_from(done).unwrap_or(i64::MAX) as f64)
        .execute(&pool)
        .await
        .context("seeding finished sagas (run a saga first: the newest completed one is copied)")?;
        done += chunk;
        eprintln!(
            "   seeded {done} of {count} finished sagas ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    sqlx::query("ANALYZE orchestrator.sagas, orchestrator.saga_steps, orchestrator.saga_history")
        .execute(&pool)
        .await?;
    let stored = sqlx::query_scalar("SELECT count(*) FROM orchestrator.sagas")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(stored)
}

/// Runs the Restate peer's script with the same sizes and reads its phases.
fn run_restate(script: &PathBuf, args: &Args) -> anyhow::Result<(Phase, Phase)> {
    eprintln!("== the Restate peer: {}", script.display());
    let output = std::process::Command::new("bash")
        .arg(script)
        .env("N", args.sagas.to_string())
        .env("C", args.concurrency.to_string())
        .env("N1", args.latency_sagas.to_string())
        .env("WARMUP", args.warmup.to_string())
        .env("QUIET_BUSY", args.quiet_busy.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!("{} failed: {}", script.display(), output.status);
    }
    let mut phases: HashMap<String, Phase> = HashMap::new();
    let mut last = None;
    for line in stdout.lines() {
        if let Some(result) = line.strip_prefix("RESULT ") {
            let result: Value = serde_json::from_str(result).context("a RESULT line")?;
            let label = result["label"].as_str().unwrap_or_default().to_owned();
            let number = |key: &str| result[key].as_f64().unwrap_or(0.0);
            phases.insert(
                label.clone(),
                Phase {
                    ok: result["ok"].as_u64().unwrap_or(0).try_into().unwrap_or(0),
                    errors: result["errors"]
                        .as_u64()
                        .unwrap_or(0)
                        .try_into()
                        .unwrap_or(0),
                    sagas_per_s: number("sagas_per_s"),
                    p50_ms: number("p50_ms"),
                    p90_ms: number("p90_ms"),
                    p99_ms: number("p99_ms"),
                    ..Phase::default()
                },
            );
            last = Some(label);
        } else if let Some(cpu) = line.trim().strip_prefix("cpu ms/saga:") {
            let Some(phase) = last.as_ref().and_then(|label| phases.get_mut(label)) else {
                continue;
            };
            // `name=value` pairs, where a name may hold spaces
            // (`postgres(our backends+bg procs)=1.305`).
            let mut name = String::new();
            phase.cpu.clear();
            for token in cpu.split_whitespace() {
                match token.split_once('=') {
                    Some((last, value)) => {
                        name.push_str(last);
                        if let Ok(value) = value.parse() {
                            phase.cpu.push((std::mem::take(&mut name), value));
                        }
                        name.clear();
                    }
                    None => {
                        name.push_str(token);
                        name.push(' ');
                    }
                }
            }
        }
    }
    let mut take = |label: &str| {
        phases
            .remove(label)
            .with_context(|| format!("the peer printed no {label} result"))
    };
    Ok((take("throughput")?, take("latency")?))
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "n/a".to_owned()
    }
}

fn side_by_side(args: &Args, ours: (&Phase, &Phase), restate: (&Phase, &Phase)) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_header(vec![
            "",
            "reward saga platform",
            "Restate",
            "ours / Restate",
        ]);
    let mut row = |what: String, a: f64, b: f64, unit: &str| {
        table.add_row(vec![
            Cell::new(what),
            Cell::new(format!("{a:.1}{unit}")).set_alignment(CellAlignment::Right),
            Cell::new(format!("{b:.1}{unit}")).set_alignment(CellAlignment::Right),
            Cell::new(ratio(a, b)).set_alignment(CellAlignment::Right),
        ]);
    };
    let c = args.concurrency;
    row(
        format!("sagas/s at c={c}"),
        ours.0.sagas_per_s,
        restate.0.sagas_per_s,
        "",
    );
    row(
        format!("p50 at c={c}"),
        ours.0.p50_ms,
        restate.0.p50_ms,
        " ms",
    );
    row(
        format!("p99 at c={c}"),
        ours.0.p99_ms,
        restate.0.p99_ms,
        " ms",
    );
    row(
        "p50 at c=1".to_owned(),
        ours.1.p50_ms,
        restate.1.p50_ms,
        " ms",
    );
    row(
        "p99 at c=1".to_owned(),
        ours.1.p99_ms,
        restate.1.p99_ms,
        " ms",
    );
    row(
        format!("CPU/saga at c={c}, all processes"),
        ours.0.cpu_total(),
        restate.0.cpu_total(),
        " ms",
    );
    row(
        "CPU/saga at c=1, all processes".to_owned(),
        ours.1.cpu_total(),
        restate.1.cpu_total(),
        " ms",
    );
    let detail = |phase: &Phase| {
        phase
            .cpu
            .iter()
            .filter(|(name, _)| name != "client")
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    table.add_row(vec![
        Cell::new(format!("  CPU/saga at c={c} by process (ms)")),
        Cell::new(detail(ours.0)),
        Cell::new(detail(restate.0)),
        Cell::new(""),
    ]);
    let counts = |phase: &Phase| {
        format!(
            "{} tx, {} statements",
            phase
                .transactions
                .map_or_else(|| "n/a".to_owned(), |t| format!("{t:.1}")),
            phase
                .statements
                .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.1}")),
        )
    };
    table.add_row(vec![
        Cell::new("PostgreSQL per saga at c=1"),
        Cell::new(counts(ours.1)),
        Cell::new("(its own log, not PostgreSQL)"),
        Cell::new(""),
    ]);
    let done = |throughput: &Phase, latency: &Phase| {
        format!(
            "{} + {} ({} errors)",
            throughput.ok,
            latency.ok,
            throughput.errors + latency.errors
        )
    };
    table.add_row(vec![
        Cell::new(format!("sagas completed (c={c} + c=1)")),
        Cell::new(done(ours.0, ours.1)),
        Cell::new(done(restate.0, restate.1)),
        Cell::new(""),
    ]);
    table.add_row(vec![
        Cell::new("steps per saga"),
        Cell::new("6 (mission, reward, wallet, telegram, mission, message)"),
        Cell::new("5"),
        Cell::new(""),
    ]);
    table
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
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()?;
    let platform = Platform {
        http,
        base: args.base_url.trim_end_matches('/').to_owned(),
    };
    platform
        .http
        .put(format!("{}/v1/rewards/budget", platform.base))
        .json(&json!({"remaining_points": null}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("the platform does not answer; start it with ./dev.sh up")?;
    let postgres = PgPool::connect(&args.admin_url)
        .await
        .context("PostgreSQL (--admin-url)")?;
    let nats = match &args.nats_pid_file {
        Some(file) => vec![
            std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?
                .trim()
                .parse()
                .context("the nats-server PID file")?,
        ],
        None => pids_named("nats-server"),
    };
    let processes = Processes {
        postgres: &postgres,
        database: &args.database,
        nats,
    };

    eprintln!("== warm-up: {} sagas at concurrency 10", args.warmup);
    if args.seed_finished > 0 {
        let warmup = platform.missions("seed", 1).await?;
        let _ = platform.run(warmup, 1).await;
        eprintln!("== seeding {} finished sagas", args.seed_finished);
        let stored = seed_finished(&args.admin_url, &args.database, args.seed_finished).await?;
        println!("seeded: the store holds {stored} sagas");
    }
    let warmup = platform.missions("warmup", args.warmup).await?;
    let (_, results) = platform.run(warmup, 10).await;
    if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
        bail!("the warm-up failed: {error:#}");
    }
    let throughput = measure(
        &platform,
        &processes,
        &args,
        "throughput",
        args.sagas,
        args.concurrency,
    )
    .await?;
    let latency = measure(
        &platform,
        &processes,
        &args,
        "latency",
        args.latency_sagas,
        1,
    )
    .await?;
    let failed = throughput.errors + latency.errors;

    if let Some(script) = &args.vs_restate {
        let restate = run_restate(script, &args)?;
        println!();
        println!(
            "{}",
            side_by_side(&args, (&throughput, &latency), (&restate.0, &restate.1))
        );
    }
    if failed > 0 {
        bail!("{failed} sagas failed to run");
    }
    Ok(())
}
