//! The chaos suite: the platform as separate processes (two orchestrators and two of each
//! worker) against its own nats-server and, where it can make one, its own PostgreSQL, both on
//! spare loopback ports so that they can be killed and restarted. A mix of sagas runs while a
//! random service is killed with SIGKILL every one to three seconds and restarted, nats-server
//! and PostgreSQL are restarted, and every orchestrator is killed at once. After the last fault
//! the suite waits for quiet and checks the platform's promises in the databases, the streams
//! and the Telegram stand-in: every saga terminal with the outcome its kind calls for, no reward,
//! credit, debit, mission change or message twice, compensations exactly once in reverse order,
//! and nothing in the dead-letter stream but the garbage injected on purpose.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

pub use crate::processes::bin_dir;
use crate::processes::{Dice, Fleet, OwnPostgres, Process, connect_nats, free_port};

/// What to run.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Sagas to run.
    pub sagas: usize,
    /// Sagas in flight at once.
    pub concurrency: usize,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// How long starting all sagas should take: the faults happen meanwhile.
    pub spread: Duration,
    /// Where the service binaries are (`orchestrator`, `mission-worker`, ...).
    pub bin_dir: PathBuf,
}

impl ChaosConfig {
    /// `sagas` sagas at concurrency 16 with the binaries next to the running executable.
    pub fn new(sagas: usize) -> anyhow::Result<Self> {
        Ok(Self {
            sagas,
            concurrency: 16,
            seed: u64::from(std::process::id()) ^ 0x5eed,
            spread: Duration::from_secs(30),
            bin_dir: bin_dir()?,
        })
    }
}

/// What the suite saw.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Sagas started.
    pub sagas: usize,
    /// Final states and how many ended in each.
    pub outcomes: BTreeMap<String, usize>,
    /// Services killed with SIGKILL (and restarted).
    pub kills: usize,
    /// nats-server restarts.
    pub nats_restarts: usize,
    /// PostgreSQL restarts.
    pub pg_restarts: usize,
    /// From one orchestrator's restart after every orchestrator was killed, until the first
    /// saga completed.
    pub recovery: Option<Duration>,
    /// Timers fired outside outages, and the 99th percentile of how late they fired.
    pub timers: (usize, Option<Duration>),
    /// How long the SIGTERMed orchestrator took to drain and exit.
    pub drain: Option<Duration>,
    /// How long the run took.
    pub elapsed: Duration,
    /// Broken promises, each described.
    pub violations: Vec<String>,
    /// Where the logs are.
    pub work_dir: PathBuf,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "chaos: sagas={} outcomes[{}] faults: kills={} nats_restarts={} pg_restarts={} \
             recovery_after_killing_every_orchestrator={} sigterm_drain={} timers_measured={} \
             timer_lag_p99={} elapsed={:.1}s \
             violations={}",
            self.sagas,
            outcomes.join(" "),
            self.kills,
            self.nats_restarts,
            self.pg_restarts,
            self.recovery
                .map_or("n/a".to_owned(), |d| format!("{:.2}s", d.as_secs_f64())),
            self.drain
                .map_or("n/a".to_owned(), |d| format!("{:.2}s", d.as_secs_f64())),
            self.timers.0,
            self.timers
                .1
                .map_or("n/a".to_owned(), |d| format!("{}ms", d.as_millis())),
            self.elapsed.as_secs_f64(),
            self.violations.len(),
        )
    }
}

/// What a saga of the mix is made to meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Plain,
    FrozenWallet,
    HeldMission,
    BlockedChat,
    NoChat,
}

impl Kind {
    /// The kind of the `i`-th saga: 70 % plain, 20 % that compensate, 10 % Telegram trouble.
    pub(crate) fn of(i: usize) -> Kind {
        match i % 20 {
            14 | 15 => Kind::FrozenWallet,
            16 | 17 => Kind::HeldMission,
            18 => Kind::BlockedChat,
            19 => Kind::NoChat,
            _ => Kind::Plain,
        }
    }

    /// The final state its saga must reach.
    pub(crate) fn expected(self) -> &'static str {
        match self {
            Kind::FrozenWallet | Kind::HeldMission => "compensated",
            _ => "completed",
        }
    }
}

/// One saga of the mix: its kind, its customer's chat, its mission, and its id once started.
pub(crate) struct Planned {
    pub(crate) kind: Kind,
    pub(crate) chat_id: i64,
    pub(crate) mission_id: String,
    pub(crate) saga_id: Option<String>,
}

/// The HTTP side: calls a service through whichever of its replicas answers, and counts the
/// calls each port failed.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) failures: Arc<std::sync::Mutex<HashMap<u16, usize>>>,
}

impl Client {
    /// A client presenting the run's admin token, whose requests time out after `timeout`.
    pub(crate) fn new(timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: crate::processes::RunTokens::get().admin_client(timeout)?,
            failures: Arc::default(),
        })
    }

    /// `method path` on the replicas in turn until one answers below 500 (90 s at most).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        ports: &[u16],
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut round = 0usize;
        loop {
            let port = ports[round % ports.len()];
            round += 1;
            let mut request = self
                .http
                .request(method.clone(), format!("http://127.0.0.1:{port}{path}"));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            match request.send().await {
                Ok(response) if response.status().as_u16() < 500 => {
                    let status = response.status().as_u16();
                    let value = response.json().await.unwrap_or(Value::Null);
                    return Ok((status, value));
                }
                _ => self.failed(port),
            }
            if Instant::now() > deadline {
                bail!("{method} {path}: no replica answered");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn failed(&self, port: u16) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *failures.entry(port).or_default() += 1;
    }

    /// Calls to `port` that failed so far.
    pub(crate) fn failures(&self, port: u16) -> usize {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.get(&port).copied().unwrap_or(0)
    }
}

/// Where a run's platform answers: what preparing the mix and checking the promises need.
pub(crate) struct Endpoints {
    pub(crate) database_url: String,
    /// One NATS URL or a comma-separated list.
    pub(crate) nats_url: String,
    pub(crate) orchestrators: Vec<u16>,
    pub(crate) missions: Vec<u16>,
    pub(crate) wallets: Vec<u16>,
    pub(crate) telegrams: Vec<u16>,
    pub(crate) stand_in_port: u16,
    /// Every service process's name and HTTP port (their `/metrics` must parse).
    pub(crate) metrics: Vec<(String, u16)>,
}

impl Endpoints {
    /// The endpoints of `fleet`, on `database_url` and `nats_url`.
    pub(crate) fn of(fleet: &Fleet, database_url: &str, nats_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            nats_url: nats_url.to_owned(),
            orchestrators: fleet.ports_of("orchestrator"),
            missions: fleet.ports_of("mission-worker"),
            wallets: fleet.ports_of("wallet-worker"),
            telegrams: fleet.ports_of("telegram-worker"),
            stand_in_port: fleet.stand_in_port,
            metrics: fleet
                .services
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.http?)))
                .collect(),
        }
    }
}

struct Cluster {
    work: PathBuf,
    nats: Process,
    pg: Option<OwnPostgres>,
    fleet: Fleet,
    ends: Endpoints,
}

impl Cluster {
    async fn start(config: &ChaosConfig, work: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&work)?;
        let nats_port = free_port()?;
        let nats_store = work.join("nats");
        let mut nats = Process::new("nats-server", "nats-server", work.join("nats-server.log"));
        nats.args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            nats_port.to_string(),
            "-js".into(),
            "-sd".into(),
            nats_store.to_string_lossy().to_string(),
        ];
        nats.start()?;
        let (pg, database_url) = crate::processes::fresh_database(&work, "saga_chaos").await?;
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let stand_in_port = free_port()?;
        let env = |_: &crate::processes::Service, _| {
            crate::processes::service_env(&database_url, &nats_url, stand_in_port)
        };
        let mut fleet = Fleet::plan(&config.bin_dir, &work, 2, stand_in_port, &env, None)?;
        // One orchestrator first: it creates the streams and migrates before the rest race.
        fleet.start_first()?;
        let ends = Endpoints::of(&fleet, &database_url, &nats_url);
        Ok(Self {
            work,
            nats,
            pg,
            fleet,
            ends,
        })
    }

    async fn wait_ready(&self, port: u16) -> anyhow::Result<()> {
        crate::processes::wait_ready(port, Duration::from_secs(60), &self.work).await
    }

    async fn start_all(&mut self) -> anyhow::Result<()> {
        self.fleet.start_rest(&self.work).await
    }
}

/// Runs the suite.
pub async fn run(config: ChaosConfig) -> anyhow::Result<Summary> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let work =
        std::env::temp_dir().join(format!("saga-chaos-{}-{}", std::process::id(), config.seed));
    let mut cluster = Cluster::start(&config, work.clone()).await?;
    cluster.start_all().await?;
    let client = Client::new(Duration::from_secs(10))?;
    let mut summary = Summary {
        sagas: config.sagas,
        work_dir: work,
        ..Summary::default()
    };

    let planned = prepare(&cluster.ends, &client, config.sagas).await?;
    let garbage = inject_garbage(&cluster.ends.nats_url).await?;

    let nats = connect_nats(&cluster.ends.nats_url).await?;
    let mut finished = nats.subscribe("evt.saga.SagaFinished").await?;
    let completions = Arc::new(AtomicUsize::new(0));
    let counter = completions.clone();
    let first_completion_after: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let watcher = {
        let first = first_completion_after.clone();
        tokio::spawn(async move {
            while finished.next().await.is_some() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut first = first.lock().await;
                if first.is_none() {
                    *first = Some(Instant::now());
                }
            }
        })
    };

    let submitted = Arc::new(AtomicUsize::new(0));
    let planned = Arc::new(Mutex::new(planned));
    let submitter = spawn_submitter(
        client.clone(),
        cluster.ends.orchestrators.clone(),
        planned.clone(),
        submitted.clone(),
        config.concurrency,
        config.spread,
        "chaos",
    );

    let mut dice = Dice(config.seed | 1);
    let mut nats_restarted = false;
    let mut pg_restarted = false;
    let mut all_orchestrators_killed = false;
    let mut drained = false;
    // Windows in which no timer could fire (no orchestrator, or no database).
    let mut outages: Vec<(std::time::SystemTime, std::time::SystemTime)> = Vec::new();
    while !submitter.is_finished() {
        tokio::time::sleep(Duration::from_millis(1000 + dice.below(2000))).await;
        let progress = submitted.load(Ordering::SeqCst) * 100 / config.sagas.max(1);
        if !nats_restarted && progress >= 30 {
            cluster.nats.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.nats.start()?;
            summary.nats_restarts += 1;
            nats_restarted = true;
        } else if !pg_restarted && progress >= 50 && cluster.pg.is_some() {
            if let Some(pg) = &cluster.pg {
                let down = std::time::SystemTime::now();
                pg.crash_and_restart()?;
                outages.push((down, std::time::SystemTime::now()));
                summary.pg_restarts += 1;
            }
            pg_restarted = true;
        } else if !drained && progress >= 85 {
            // SIGTERM one orchestrator under load: it must drain and exit 0 within 10 s, and
            // the other must not fail a single request meanwhile.
            cluster.wait_ready(cluster.ends.orchestrators[0]).await?;
            let before = client.failures(cluster.ends.orchestrators[0]);
            let (clean, took) = cluster.fleet.services[1].terminate();
            if !clean {
                summary.violations.push(format!(
                    "orchestrator-2 did not exit 0 within 10 s of SIGTERM ({took:?})"
                ));
            }
            cluster.fleet.services[1].start()?;
            cluster.wait_ready(cluster.ends.orchestrators[1]).await?;
            let failed = client.failures(cluster.ends.orchestrators[0]) - before;
            if failed > 0 {
                summary.violations.push(format!(
                    "{failed} requests to orchestrator-1 failed while orchestrator-2 drained"
                ));
            }
            summary.drain = Some(took);
            drained = true;
        } else if !all_orchestrators_killed && progress >= 70 {
            for service in cluster
                .fleet
                .services
                .iter_mut()
                .filter(|s| s.name.starts_with("orchestrator"))
            {
                service.kill();
                summary.kills += 1;
            }
            let down = std::time::SystemTime::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            *first_completion_after.lock().await = None;
            let restarted = Instant::now();
            cluster.fleet.services[0].start()?;
            let first = wait_first(&first_completion_after, Duration::from_secs(60)).await;
            summary.recovery = first.map(|at| at.duration_since(restarted));
            outages.push((down, std::time::SystemTime::now()));
            if summary.recovery.is_none_or(|d| d > Duration::from_secs(5)) {
                summary.violations.push(format!(
                    "after every orchestrator was killed, the first saga completed {:?} after one restarted (at most 5 s)",
                    summary.recovery
                ));
            }
            cluster.fleet.services[1].start()?;
            all_orchestrators_killed = true;
        } else {
            let victim =
                usize::try_from(dice.below(cluster.fleet.services.len() as u64)).unwrap_or(0);
            cluster.fleet.services[victim].kill();
            summary.kills += 1;
            tokio::time::sleep(Duration::from_millis(200 + dice.below(600))).await;
            cluster.fleet.services[victim].start()?;
        }
    }
    submitter.await?;
    if !all_orchestrators_killed || !drained {
        summary
            .violations
            .push("the run ended before every fault was injected".into());
    }

    wait_for_quiet(&cluster.ends, &client, Duration::from_secs(180)).await?;
    watcher.abort();
    let planned = planned.lock().await;
    let (outcomes, violations) =
        check_promises(&cluster.ends, &client, &planned, garbage, true).await?;
    summary.outcomes = outcomes;
    summary
        .violations
        .extend(violations.into_iter().map(|v| v.what));
    summary.timers = timer_lag(&summary.work_dir, &outages)?;
    if summary
        .timers
        .1
        .is_some_and(|p99| p99 > Duration::from_secs(1))
    {
        summary
            .violations
            .push(format!("timer lag p99 {:?} is over 1 s", summary.timers.1));
    }
    summary.elapsed = started.elapsed();
    summary.violations.extend(cluster.fleet.stop());
    cluster.nats.terminate();
    drop(cluster);
    if summary.violations.is_empty() {
        let _ = std::fs::remove_dir_all(&summary.work_dir);
    }
    Ok(summary)
}

/// Starts the planned sagas in the background, `concurrency` at a time, paced so that starting
/// them all takes about `spread`; each with the `Idempotency-Key` `{key_prefix}-{i}`, through
/// whichever orchestrator answers. `submitted` counts the attempts made.
pub(crate) fn spawn_submitter(
    client: Client,
    ports: Vec<u16>,
    planned: Arc<Mutex<Vec<Planned>>>,
    submitted: Arc<AtomicUsize>,
    concurrency: usize,
    spread: Duration,
    key_prefix: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let total = planned.lock().await.len();
        let pace = spread * u32::try_from(concurrency).unwrap_or(1)
            / u32::try_from(total.max(1)).unwrap_or(1);
        futures::stream::iter(0..total)
            .for_each_concurrent(concurrency, |i| {
                let client = client.clone();
                let ports = ports.clone();
                let planned = planned.clone();
                let submitted = submitted.clone();
                async move {
                    let mission_id = planned.lock().await[i].mission_id.clone();
                    let body =
                        json!({"type": "mission_reward", "input": {"mission_id": mission_id}});
                    let key = format!("{key_prefix}-{i}");
                    match client
                        .call(
                            reqwest::Method::POST,
                            &ports,
                            "/v1/sagas",
                            Some(&body),
                            Some(&key),
                        )
                        .await
                    {
                        Ok((202, saga)) => {
                            planned.lock().await[i].saga_id =
                                saga["id"].as_str().map(str::to_owned);
                        }
                        Ok((status, problem)) => {
                            eprintln!("a saga was refused: {status} {problem}")
                        }
                        Err(error) => eprintln!("a saga could not be started: {error:#}"),
                    }
                    submitted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pace).await;
                }
            })
            .await;
    })
}

async fn wait_first(first: &Arc<Mutex<Option<Instant>>>, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(at) = *first.lock().await {
            return Some(at);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Makes the mix: `sagas` customers, chats, missions, frozen wallets, held missions and blocked
/// chats as their kinds call for, and Telegram faults on the stand-in.
pub(crate) async fn prepare(
    cluster: &Endpoints,
    client: &Client,
    sagas: usize,
) -> anyhow::Result<Vec<Planned>> {
    use reqwest::Method;
    let stand_in = [cluster.stand_in_port];
    let planned = futures::stream::iter(0..sagas)
        .map(|i| async move {
            let kind = Kind::of(i);
            let customer = format!("chaos-{i}");
            let chat_id = 500_000 + i64::try_from(i).unwrap_or(0);
            if kind != Kind::NoChat {
                client
                    .call(Method::PUT, &cluster.telegrams, &format!("/v1/telegram/chats/{customer}"), Some(&json!({"chat_id": chat_id})), None)
                    .await?;
            }
            if kind == Kind::BlockedChat {
                client
                    .call(Method::POST, &stand_in, "/control/blocked", Some(&json!({"chat_id": chat_id})), None)
                    .await?;
            }
            if kind == Kind::FrozenWallet {
                client
                    .call(Method::POST, &cluster.wallets, &format!("/v1/wallets/{customer}/freeze"), None, None)
                    .await?;
            }
            let (status, mission) = client
                .call(
                    Method::POST,
                    &cluster.missions,
                    "/v1/missions",
                    Some(&json!({"customer_id": customer, "title": format!("Chaos quest {i}"), "reward_points": 10})),
                    None,
                )
                .await?;
            if status != 201 {
                bail!("creating a mission: {status} {mission}");
            }
            let mission_id = mission["id"].as_str().context("mission id")?.to_owned();
            if kind == Kind::HeldMission {
                client
                    .call(Method::POST, &cluster.missions, &format!("/v1/missions/{mission_id}/hold"), None, None)
                    .await?;
            }
            Ok::<_, anyhow::Error>(Planned {
                kind,
                chat_id,
                mission_id,
                saga_id: None,
            })
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (status, retry_after) in [(500, None), (429, Some(1)), (502, None)] {
        client
            .call(
                Method::POST,
                &stand_in,
                "/control/faults",
                Some(&json!({"status": status, "count": 3, "retry_after": retry_after})),
                None,
            )
            .await?;
    }
    Ok(planned)
}

/// Publishes garbage on command and reply subjects; returns how many.
async fn inject_garbage(nats_url: &str) -> anyhow::Result<usize> {
    let nats = connect_nats(nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let subjects = [
        "cmd.mission.complete",
        "cmd.reward.grant",
        "reply.mission_reward",
    ];
    for subject in subjects {
        js.publish(subject, "chaos garbage".into()).await?.await?;
    }
    Ok(subjects.len())
}

/// Waits until no saga is `running` or `compensating` (for at most `timeout`).
pub(crate) async fn wait_for_quiet(
    cluster: &Endpoints,
    client: &Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut open = 0;
        for state in ["running", "compensating"] {
            let (_, page) = client
                .call(
                    reqwest::Method::GET,
                    &cluster.orchestrators,
                    &format!("/v1/sagas?state={state}&limit=500"),
                    None,
                    None,
                )
                .await?;
            open += page["items"].as_array().map_or(0, Vec::len);
        }
        if open == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{open} sagas are still not terminal after {timeout:?} of quiet");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Which promise a violation broke: a saga lost (not started, not stored, or not ending as its
/// kind calls for), an effect duplicated (a reward, credit, debit, message or mission change
/// twice, or a wallet off its ledger), or another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broken {
    Lost,
    Duplicate,
    Other,
}

/// One broken promise, described.
#[derive(Clone, Debug)]
pub(crate) struct Violation {
    pub(crate) kind: Broken,
    pub(crate) what: String,
}

/// Collects violations by kind.
struct Violations(Vec<Violation>);

impl Violations {
    fn push(&mut self, kind: Broken, what: String) {
        self.0.push(Violation { kind, what });
    }
}

/// Checks the platform's promises for `planned` in the databases, the streams and the Telegram
/// stand-in; returns how many sagas ended in each final state, and the violations.
/// `every_saga_planned`: the run started no saga but the planned ones (the stored count must
/// match). `garbage`: the dead letters injected on purpose.
pub(crate) async fn check_promises(
    cluster: &Endpoints,
    client: &Client,
    planned: &[Planned],
    garbage: usize,
    every_saga_planned: bool,
) -> anyhow::Result<(BTreeMap<String, usize>, Vec<Violation>)> {
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut violations = Violations(Vec::new());
    let mut db = PgConnection::connect(&cluster.database_url).await?;

    let sagas: Vec<(uuid::Uuid, String, Value)> =
        sqlx::query_as("SELECT id, state::text, context FROM orchestrator.sagas")
            .fetch_all(&mut db)
            .await?;
    let sagas: HashMap<String, (String, Value)> = sagas
        .into_iter()
        .map(|(id, state, context)| (id.to_string(), (state, context)))
        .collect();
    if every_saga_planned && sagas.len() != planned.len() {
        violations.push(
            Broken::Lost,
            format!("{} sagas stored for {} started", sagas.len(), planned.len()),
        );
    }
    let missions: Vec<(uuid::Uuid, String, Option<uuid::Uuid>, Option<String>)> =
        sqlx::query_as("SELECT id, status, reward_id, notification_status FROM mission.missions")
            .fetch_all(&mut db)
            .await?;
    let missions: HashMap<String, (String, Option<uuid::Uuid>, Option<String>)> = missions
        .into_iter()
        .map(|(id, status, reward, note)| (id.to_string(), (status, reward, note)))
        .collect();
    let rewards: Vec<(uuid::Uuid, uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, mission_id, status FROM reward.rewards")
            .fetch_all(&mut db)
            .await?;
    let mut rewards_of: HashMap<String, Vec<(uuid::Uuid, String)>> = HashMap::new();
    for (id, mission, status) in rewards {
        rewards_of
            .entry(mission.to_string())
            .or_default()
            .push((id, status));
    }
    let (_, messages) = client
        .call(
            reqwest::Method::GET,
            &[cluster.stand_in_port],
            "/control/messages",
            None,
            None,
        )
        .await?;
    let mut delivered: HashMap<i64, usize> = HashMap::new();
    for message in messages.as_array().cloned().unwrap_or_default() {
        if message["status"] == 200 {
            *delivered
                .entry(message["chat_id"].as_i64().unwrap_or(0))
                .or_default() += 1;
        }
    }

    for plan in planned {
        let Some(saga_id) = &plan.saga_id else {
            violations.push(
                Broken::Lost,
                format!("mission {}: its saga was never started", plan.mission_id),
            );
            continue;
        };
        let Some((state, context)) = sagas.get(saga_id) else {
            violations.push(Broken::Lost, format!("saga {saga_id}: not stored"));
            continue;
        };
        *outcomes.entry(state.clone()).or_default() += 1;
        if state != plan.kind.expected() {
            violations.push(
                Broken::Lost,
                format!(
                    "saga {saga_id} ({:?}): ended {state}, expected {}",
                    plan.kind,
                    plan.kind.expected()
                ),
            );
        }
        let mission = missions.get(&plan.mission_id);
        let granted = rewards_of
            .get(&plan.mission_id)
            .cloned()
            .unwrap_or_default();
        if granted.len() > 1 {
            violations.push(
                Broken::Duplicate,
                format!(
                    "mission {}: {} rewards granted",
                    plan.mission_id,
                    granted.len()
                ),
            );
        }
        let messages = delivered.get(&plan.chat_id).copied().unwrap_or(0);
        if messages > 1 {
            violations.push(
                Broken::Duplicate,
                format!("chat {}: told {messages} times", plan.chat_id),
            );
        }
        match state.as_str() {
            "completed" => {
                let reward = context["reward_id"].as_str().unwrap_or_default();
                let ok = mission.is_some_and(|(status, reward_id, note)| {
                    status == "REWARDED"
                        && reward_id.map(|r| r.to_string()).as_deref() == Some(reward)
                        && note.is_some()
                });
                if !ok {
                    violations.push(
                        Broken::Other,
                        format!("saga {saga_id}: completed but mission is {mission:?}"),
                    );
                }
                if granted.iter().any(|(_, status)| status != "GRANTED") {
                    violations.push(
                        Broken::Other,
                        format!("saga {saga_id}: completed but its reward is {granted:?}"),
                    );
                }
                // Telegram has no idempotency key: a worker killed during the call cannot know
                // whether the message went out, so it is sent at most once. A notification
                // recorded as sent must have arrived exactly once.
                let note = mission.and_then(|(_, _, note)| note.as_deref());
                if note == Some("sent") && messages != 1 {
                    let kind = if messages > 1 {
                        Broken::Duplicate
                    } else {
                        Broken::Other
                    };
                    violations.push(
                        kind,
                        format!(
                            "saga {saga_id}: notification sent but chat {} told {messages} times",
                            plan.chat_id
                        ),
                    );
                }
                if plan.kind == Kind::Plain && note.is_none() {
                    violations.push(
                        Broken::Other,
                        format!("saga {saga_id}: no message recorded on the mission"),
                    );
                }
            }
            "compensated" | "cancelled" => {
                if !mission
                    .is_some_and(|(status, reward_id, _)| status == "OPEN" && reward_id.is_none())
                {
                    violations.push(
                        Broken::Other,
                        format!("saga {saga_id}: {state} but mission is {mission:?}"),
                    );
                }
                if granted.iter().any(|(_, status)| status != "REVOKED") {
                    violations.push(
                        Broken::Other,
                        format!("saga {saga_id}: {state} but its reward is {granted:?}"),
                    );
                }
                if messages != 0 {
                    violations.push(
                        Broken::Other,
                        format!("saga {saga_id}: {state} but the customer was told"),
                    );
                }
            }
            _ => {}
        }
    }

    let wallets: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT w.customer_id, w.balance, \
                COALESCE((SELECT sum(points) FROM wallet.wallet_entries e WHERE e.customer_id = w.customer_id), 0)::int8, \
                COALESCE((SELECT sum(points) FROM reward.rewards r WHERE r.customer_id = w.customer_id AND r.status = 'GRANTED'), 0)::int8 \
         FROM wallet.wallets w",
    )
    .fetch_all(&mut db)
    .await?;
    for (customer, balance, ledger, granted) in wallets {
        if balance != ledger || balance != granted || balance < 0 {
            violations.push(Broken::Duplicate, format!(
                "wallet {customer}: balance {balance}, ledger {ledger}, granted rewards {granted}"
            ));
        }
    }
    // Each reward's saga moved the wallet by exactly the reward while it stands, and by
    // nothing once revoked; never credited or debited twice.
    let moves: Vec<(uuid::Uuid, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT r.id, r.status, r.points, \
                COALESCE(sum(e.points), 0)::int8, \
                count(e.id) FILTER (WHERE e.kind = 'credit'), \
                count(e.id) FILTER (WHERE e.kind = 'debit') \
         FROM reward.rewards r LEFT JOIN wallet.wallet_entries e ON e.saga_id = r.saga_id \
         GROUP BY r.id, r.status, r.points",
    )
    .fetch_all(&mut db)
    .await?;
    for (reward, status, points, net, credits, debits) in moves {
        let expected = if status == "GRANTED" { points } else { 0 };
        if net != expected || credits > 1 || debits > 1 {
            violations.push(Broken::Duplicate, format!(
                "reward {reward} ({status}, {points} points): the wallet moved {net} in {credits} credits and {debits} debits"
            ));
        }
    }

    let orders: Vec<(uuid::Uuid, Vec<i16>, Vec<i16>)> = sqlx::query_as(
        "SELECT s.id, \
                COALESCE((SELECT array_agg(c.step_index ORDER BY c.run_order) FROM orchestrator.saga_compensations c \
                          WHERE c.saga_id = s.id AND c.state = 'succeeded'), '{}'), \
                COALESCE((SELECT array_agg(st.step_index ORDER BY st.step_index DESC) FROM orchestrator.saga_steps st \
                          WHERE st.saga_id = s.id AND st.state = 'compensated'), '{}') \
         FROM orchestrator.sagas s WHERE s.state IN ('compensated', 'cancelled')",
    )
    .fetch_all(&mut db)
    .await?;
    for (saga, ran, undone) in orders {
        if ran != undone {
            violations.push(
                Broken::Other,
                format!("saga {saga}: compensations ran for steps {ran:?}, expected {undone:?}"),
            );
        }
    }

    let events = count_mission_events(&cluster.nats_url).await?;
    for plan in planned {
        let seen = events.get(&plan.mission_id).copied().unwrap_or(0);
        // Every kind changes its mission twice: COMPLETED, then REWARDED or OPEN again.
        if seen > 2 {
            violations.push(
                Broken::Duplicate,
                format!(
                    "mission {}: {seen} MissionUpdated events, at most 2 expected",
                    plan.mission_id
                ),
            );
        }
    }

    for (name, port) in &cluster.metrics {
        let text = client
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        match prometheus_parse::Scrape::parse(lines) {
            Ok(scrape) if !scrape.samples.is_empty() => {}
            Ok(_) => violations.push(Broken::Other, format!("{name}: /metrics is empty")),
            Err(error) => violations.push(
                Broken::Other,
                format!("{name}: /metrics does not parse: {error}"),
            ),
        }
    }

    let nats = connect_nats(&cluster.nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let dlq = js.get_stream("DLQ").await?.get_info().await?;
    let parked = usize::try_from(dlq.state.messages).unwrap_or(usize::MAX);
    if parked != garbage {
        violations.push(
            Broken::Other,
            format!("{parked} dead letters, {garbage} injected"),
        );
    }
    Ok((outcomes, violations.0))
}

/// How many timers the orchestrators fired and the 99th percentile of their lag, from the
/// `timer fired` lines of their JSON logs.
fn timer_lag(
    work: &Path,
    outages: &[(std::time::SystemTime, std::time::SystemTime)],
) -> anyhow::Result<(usize, Option<Duration>)> {
    // A timer that fell due while no orchestrator or no database was up cannot fire on time;
    // it counts from one second after the outage ended (the restart's own start-up).
    let in_outage = |due: std::time::SystemTime| {
        outages
            .iter()
            .any(|(from, to)| due >= *from && due <= *to + Duration::from_secs(1))
    };
    let mut lags = Vec::new();
    for entry in std::fs::read_dir(work)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("orchestrator") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if event["message"] != "timer fired" {
                continue;
            }
            let (Some(lag), Some(fired)) = (
                event["lag_ms"].as_u64(),
                event["timestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
            ) else {
                continue;
            };
            let due = std::time::SystemTime::from(fired) - Duration::from_millis(lag);
            if !in_outage(due) {
                lags.push(lag);
            }
        }
    }
    lags.sort_unstable();
    let p99 = (!lags.is_empty()).then(|| {
        let rank = (lags.len() * 99).div_ceil(100).clamp(1, lags.len());
        Duration::from_millis(lags[rank - 1])
    });
    Ok((lags.len(), p99))
}

/// `MissionUpdated` events per mission in `DOMAIN_EVT`.
async fn count_mission_events(nats_url: &str) -> anyhow::Result<HashMap<String, usize>> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let nats = connect_nats(nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let stream = js.get_stream("DOMAIN_EVT").await?;
    let total = stream.get_info().await?.state.messages;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: "evt.mission.MissionUpdated".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut counts = HashMap::new();
    let mut messages = consumer.messages().await?;
    let mut seen = 0u64;
    while seen < total {
        let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
        let Ok(Some(Ok(message))) = next else {
            break;
        };
        seen += 1;
        let event = serde_json::from_slice::<Value>(&message.payload).unwrap_or_default();
        if let Some(id) = event["id"].as_str() {
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    Ok(counts)
}
