//! Recovery in seconds: the whole platform is killed with SIGKILL under load and started again
//! the way `./dev.sh up` starts it (the `saga-platform` binary, same database and NATS), and
//! every saga that was in flight must be terminal within 5 s of the restart being ready, with
//! every wallet exact (balance = its ledger = its granted rewards) and every reward granted once.
//!
//! One kind of saga is printed apart: a saga whose Telegram call the kill cut in the middle.
//! Telegram has no idempotency key, so the telegram worker holds a sending lease (its call
//! timeout + 1 s, 4 s by default) and never calls again while it may be live: that saga ends
//! (`completed`, the notification `telegram_delivery_unknown`) once the lease has run out, and
//! the redelivered command comes back right then; it too must be terminal within the 5 s.
//!
//! The platform runs as a real process, not in-process: only a process can be killed without
//! running any of its shutdown paths (no drain, no outbox flush, no acks, NATS connections cut
//! by the kernel), which is what a crash is. The binary comes from `cargo build --workspace
//! --bins` (`SAGA_BIN_DIR` overrides where it is looked for). The step timeout is the
//! production default (10 s): recovery must not wait for it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

const SAGAS: usize = 100;
const RECOVERY: Duration = Duration::from_secs(5);

fn admin_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn nats_url() -> String {
    std::env::var("SAGA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `target/<profile>/saga-platform`, next to this test's own executable.
fn platform_binary() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var("SAGA_BIN_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let exe = std::env::current_exe()?;
            let mut dir = exe.parent().context("no directory")?.to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let binary = dir.join("saga-platform");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first",
            binary.display()
        );
    }
    Ok(binary)
}

/// The platform as a child process; killed when dropped.
struct PlatformProcess {
    child: Child,
}

impl PlatformProcess {
    fn start(env: &[(String, String)], log: &PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(platform_binary()?)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self { child })
    }

    /// SIGKILL, like `kill -9`.
    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for PlatformProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the platform at {base} is not ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let response = http.request(method, url).json(&body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// (terminal sagas, all sagas).
async fn progress(db: &mut PgConnection) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state IN ('completed', 'compensated', 'failed', \
         'cancelled')), count(*) FROM orchestrator.sagas",
    )
    .fetch_one(db)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_the_whole_platform_every_saga_in_flight_ends_within_seconds()
-> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let id = Uuid::new_v4().simple().to_string();
    let database = format!("saga_rec_{}", &id[..16]);
    let prefix = format!("r{}", &id[..12]);
    let mut admin = PgConnection::connect(&admin_url()).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await?;
    let (server, _) = admin_url()
        .rsplit_once('/')
        .map(|(s, d)| (s.to_owned(), d.to_owned()))
        .context("database URL without a path")?;
    let database_url = format!("{server}/{database}");

    let token = format!("admin-{}", Uuid::new_v4().simple());
    let notify = format!("notify-{}", Uuid::new_v4().simple());
    let tokens = json!({"tokens": [
        {"name": "recovery-admin", "sha256": runtime::auth::sha256_hex(&token), "scopes": ["admin"]},
        {"name": "recovery-notify", "sha256": runtime::auth::sha256_hex(&notify), "scopes": ["notify"]},
    ]});
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("SAGA_DATABASE_URL", database_url.clone()),
        ("SAGA_NATS_URL", nats_url()),
        ("SAGA_NATS_PREFIX", prefix.clone()),
        ("SAGA_GATEWAY_ADDR", format!("127.0.0.1:{port}")),
        ("SAGA_STAND_IN_ADDR", "127.0.0.1:0".to_owned()),
        ("SAGA_API_TOKENS", tokens.to_string()),
        ("SAGA_GIFT_SERVICE_TOKEN", notify),
        ("SAGA_DATABASE_MAX_CONNECTIONS", "8".to_owned()),
        (
            "RUST_LOG",
            "warn,saga_runtime=info,saga_orchestrator=info".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // Beside the binary, wherever the target directory is (CARGO_TARGET_DIR included).
    let log = platform_binary()?.with_file_name(format!("recovery-{}.log", &id[..8]));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()?;

    let platform = PlatformProcess::start(&env, &log)?;
    wait_ready(&http, &base).await?;

    // One customer with a linked chat and a mission each.
    let missions: Vec<(String, String, i64)> = futures::stream::iter(0..SAGAS)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let customer = format!("rec-{i}-{}", Uuid::new_v4().simple());
                let points = 10 + i64::try_from(i)?;
                let chat = 5_000_000 + i64::try_from(i)?;
                let (status, body) = call(
                    &http,
                    reqwest::Method::PUT,
                    format!("{base}/v1/telegram/chats/{customer}"),
                    json!({"chat_id": chat}),
                )
                .await?;
                anyhow::ensure!(status == 200, "linking a chat: {status} {body}");
                let (status, mission) = call(
                    &http,
                    reqwest::Method::POST,
                    format!("{base}/v1/missions"),
                    json!({"customer_id": customer, "title": "Survive the crash", "reward_points": points}),
                )
                .await?;
                anyhow::ensure!(status == 201, "creating a mission: {status} {mission}");
                let mission = mission["id"].as_str().context("mission id")?.to_owned();
                Ok::<_, anyhow::Error>((customer, mission, points))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    // Load: every saga started at once, then the whole platform killed in the middle.
    let mut db = PgConnection::connect(&database_url).await?;
    let started = futures::future::join_all(missions.iter().map(|(_, mission, _)| {
        call(
            &http,
            reqwest::Method::POST,
            format!("{base}/v1/sagas"),
            json!({"type": "mission_reward", "input": {"mission_id": mission}}),
        )
    }))
    .await;
    for answer in started {
        let (status, body) = answer?;
        anyhow::ensure!(status == 202, "starting a saga: {status} {body}");
    }
    let loaded = Instant::now();
    loop {
        let (terminal, all) = progress(&mut db).await?;
        if terminal >= all / 5 || loaded.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    platform.kill()?;
    let killed = Instant::now();
    let (terminal, all) = progress(&mut db).await?;
    let in_flight = all - terminal;
    let flying: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orchestrator.sagas \
         WHERE state NOT IN ('completed', 'compensated', 'failed', 'cancelled')",
    )
    .fetch_all(&mut db)
    .await?;
    eprintln!("kill -9 with {in_flight} of {all} sagas in flight");
    assert_eq!(all, i64::try_from(SAGAS)?);
    assert!(
        in_flight >= 10,
        "the kill must catch sagas in flight: {in_flight}"
    );

    // Restart, as ./dev.sh up does; measure until every saga is terminal.
    let platform = PlatformProcess::start(&env, &log)?;
    wait_ready(&http, &base).await?;
    let ready = Instant::now();
    let ready_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut db)
        .await?;
    let restart = ready - killed;
    let recovered = loop {
        let now = progress(&mut db).await?;
        if now.0 == now.1 {
            break ready.elapsed();
        }
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("after 60 s, {} sagas are still not terminal", now.1 - now.0);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // When each saga in flight ended, after the restart was ready; and whether the kill cut
    // its Telegram call.
    let ended: Vec<(Uuid, f64, bool)> = sqlx::query_as(
        "SELECT s.id, extract(epoch FROM s.updated_at - $2)::float8, \
                COALESCE(n.last_error LIKE 'telegram_delivery_unknown%', false) \
         FROM orchestrator.sagas s LEFT JOIN telegram.notifications n ON n.saga_id = s.id \
         WHERE s.id = ANY($1)",
    )
    .bind(&flying)
    .bind(ready_at)
    .fetch_all(&mut db)
    .await?;
    let slowest = |cut: bool| {
        ended
            .iter()
            .filter(|(_, _, c)| *c == cut)
            .map(|(_, took, _)| Duration::from_secs_f64(took.max(0.0)))
            .max()
    };
    let (others, cut) = (slowest(false), slowest(true));
    let cut_count = ended.iter().filter(|(_, _, c)| *c).count();
    eprintln!(
        "recovery: kill -9 with {in_flight} of {SAGAS} sagas in flight; the restart was ready \
         {:.2} s after the kill; every saga was terminal {:.2} s after the restart was ready \
         ({:.2} s after the kill)",
        restart.as_secs_f64(),
        recovered.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
    );
    eprintln!(
        "recovery: the {} sagas in flight whose Telegram call the kill did not cut were all \
         terminal {:.2} s after the restart was ready; {cut_count} whose call it cut ended {} \
         (their notification: telegram_delivery_unknown, after the telegram worker's sending lease)",
        ended.len() - cut_count,
        others.unwrap_or_default().as_secs_f64(),
        cut.map_or("-".to_owned(), |c| format!(
            "{:.2} s after it",
            c.as_secs_f64()
        )),
    );

    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state::text, count(*) FROM orchestrator.sagas GROUP BY state ORDER BY state",
    )
    .fetch_all(&mut db)
    .await?;
    let untold: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT s.id::text, n.last_error FROM orchestrator.sagas s \
         LEFT JOIN telegram.notifications n ON n.saga_id = s.id \
         WHERE n.status IS DISTINCT FROM 'sent'",
    )
    .fetch_all(&mut db)
    .await?;
    assert!(
        untold.iter().all(|(_, error)| error
            .as_deref()
            .is_some_and(|e| e.starts_with("telegram_delivery_unknown"))),
        "a customer is untold only when the kill cut the Telegram call: {untold:?}"
    );
    assert_eq!(
        states,
        [("completed".to_owned(), i64::try_from(SAGAS)?)],
        "every saga completed"
    );

    // Wallets exact: balance = ledger = granted rewards = the mission's points, once each.
    let wallets: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT w.customer_id, w.balance, \
                COALESCE((SELECT sum(points) FROM wallet.wallet_entries e \
                          WHERE e.customer_id = w.customer_id), 0)::int8, \
                COALESCE((SELECT sum(points) FROM reward.rewards r \
                          WHERE r.customer_id = w.customer_id AND r.status = 'GRANTED'), 0)::int8 \
         FROM wallet.wallets w",
    )
    .fetch_all(&mut db)
    .await?;
    assert_eq!(wallets.len(), SAGAS, "one wallet per customer");
    for (customer, balance, ledger, granted) in &wallets {
        let points = missions
            .iter()
            .find(|(c, _, _)| c == customer)
            .map(|(_, _, p)| *p)
            .context("a customer of the test")?;
        assert_eq!(
            (*balance, *ledger, *granted),
            (points, points, points),
            "wallet {customer}: balance, ledger, granted rewards"
        );
    }
    let rewards: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT saga_id FROM reward.rewards GROUP BY saga_id \
         HAVING count(*) = 1) once",
    )
    .fetch_one(&mut db)
    .await?;
    assert_eq!(rewards, i64::try_from(SAGAS)?, "one reward per saga");
    assert!(
        others.unwrap_or_default() <= RECOVERY,
        "every saga in flight must be terminal within {RECOVERY:?} of the restart; it took {others:?} (log: {})",
        log.display()
    );
    assert!(
        cut.unwrap_or_default() <= RECOVERY,
        "a saga whose Telegram call was cut ends once the sending lease ran out, within \
         {RECOVERY:?} of the restart: {cut:?} (log: {})",
        log.display()
    );

    platform.kill()?;
    db.close().await?;
    let nats = async_nats::connect(nats_url()).await?;
    let js = async_nats::jetstream::new(nats);
    let topology = contracts::Topology::new(&prefix);
    for stream in contracts::topology::Stream::ALL {
        let _ = js.delete_stream(topology.stream(stream)).await;
    }
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .await?;
    let _ = std::fs::remove_file(&log);
    Ok(())
}
