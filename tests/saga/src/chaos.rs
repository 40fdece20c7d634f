//! The chaos suite: the platform as separate processes (two orchestrators and two of each
//! worker) against its own nats-server and, where it can make one, its own PostgreSQL, both on
//! spare loopback ports so that they can be killed and restarted. A mix of sagas runs while a
//! random service is killed with SIGKILL every one to three seconds and restarted, nats-server
//! and PostgreSQL are restarted, and every orchestrator is killed at once. After the last fault
//! the suite waits for quiet and checks the platform's promises in the databases, the streams
//! and the Telegram stand-in: every saga terminal with the outcome its kind calls for, no reward,
//! credit, debit, mission change or message twice, compensations exactly once in reverse order,
//! and nothing in the dead-letter stream but the garbage injected on purpose.
//!
//! Gift exchanges run beside the mission sagas, through either gift worker replica (each asks
//! its own orchestrator replica for the saga): customers who earned their points before the
//! faults, a gift with stock for only half of its exchanges, one sold out, one that nobody can
//! pay. After quiet (and once every queued gift message is delivered): every exchange terminal
//! with the outcome and refusal its kind calls for; one voucher per completed exchange and none
//! for a compensated one; the exchanges moved each wallet by minus the prices of its vouchers,
//! and the debits of all of them add up to the prices of the vouchers issued; per gift, stock
//! left + vouchers issued = initial stock; at most one Telegram message per voucher, and exactly
//! one for a notification recorded `sent`.

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
    /// Gift exchanges to run beside them (their own customers, their own sagas).
    pub exchanges: usize,
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
    /// `sagas` sagas and a fifth as many gift exchanges, at concurrency 16, with the binaries
    /// next to the running executable.
    pub fn new(sagas: usize) -> anyhow::Result<Self> {
        Ok(Self {
            sagas,
            exchanges: sagas / 5,
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
    /// The gift exchanges run beside the sagas.
    pub gifts: GiftFigures,
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
            "chaos: sagas={} outcomes[{}] {} faults: kills={} nats_restarts={} pg_restarts={} \
             recovery_after_killing_every_orchestrator={} sigterm_drain={} timers_measured={} \
             timer_lag_p99={} elapsed={:.1}s \
             violations={}",
            self.sagas,
            outcomes.join(" "),
            self.gifts,
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
    pub(crate) gifts: Vec<u16>,
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
            gifts: fleet.ports_of("gift-worker"),
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

    // The gift customers earn their points first: before any fault, and before `prepare` queues
    // Telegram faults on the stand-in for the mission sagas.
    let gift_plan = prepare_gifts(&cluster.ends, &client, config.exchanges).await?;
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
    let gift_plan = Arc::new(Mutex::new(gift_plan));
    let gift_submitter = spawn_gift_submitter(
        client.clone(),
        cluster.ends.gifts.clone(),
        gift_plan.clone(),
        (config.concurrency / 4).max(1),
        config.spread,
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
    gift_submitter.await?;
    if !all_orchestrators_killed || !drained {
        summary
            .violations
            .push("the run ended before every fault was injected".into());
    }

    wait_for_quiet(&cluster.ends, &client, Duration::from_secs(180)).await?;
    watcher.abort();
    if let Some(undelivered) =
        wait_for_gift_notifications(&cluster.ends, Duration::from_secs(60)).await?
    {
        summary
            .violations
            .push(format!("gift messages still undelivered {undelivered}"));
    }
    let planned = planned.lock().await;
    let gift_plan = gift_plan.lock().await;
    let (outcomes, violations) = check_promises(
        &cluster.ends,
        &client,
        &planned,
        Some(&gift_plan),
        garbage,
        true,
    )
    .await?;
    summary.outcomes = outcomes;
    summary
        .violations
        .extend(violations.into_iter().map(|v| v.what));
    let (gifts, violations) = check_gifts(&cluster.ends, &client, &gift_plan).await?;
    summary.gifts = gifts;
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

/// What a gift exchange of the mix is made to meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExchangeKind {
    /// A gift with stock to spare, paid from points earned before: completes.
    Plain,
    /// A gift with stock for half of its exchanges: each completes, or is refused
    /// `out_of_stock`, and exactly as many complete as there was stock.
    Scarce,
    /// A gift with no stock: refused `out_of_stock` at `gift.reserve`, nothing debited.
    SoldOut,
    /// A gift dearer than any gift customer's points: refused `insufficient_balance` at
    /// `wallet.debit`, the reservation released.
    Unpayable,
}

impl ExchangeKind {
    /// Every kind, in the order of the run's gifts (one gift per kind).
    const ALL: [ExchangeKind; 4] = [
        ExchangeKind::Plain,
        ExchangeKind::Scarce,
        ExchangeKind::SoldOut,
        ExchangeKind::Unpayable,
    ];

    /// The kind of the `i`-th exchange: 60 % plain, 20 % scarce, 10 % sold out, 10 % unpayable.
    pub(crate) fn of(i: usize) -> Self {
        match i % 10 {
            3 | 7 => ExchangeKind::Scarce,
            5 => ExchangeKind::SoldOut,
            9 => ExchangeKind::Unpayable,
            _ => ExchangeKind::Plain,
        }
    }

    /// Where the gift of this kind stands in [`GiftPlan::gifts`].
    fn gift(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// The gift's name and price.
    fn catalogue(self) -> (&'static str, i64) {
        match self {
            ExchangeKind::Plain => ("Chaos mug", 10),
            ExchangeKind::Scarce => ("Chaos dragon", 25),
            ExchangeKind::SoldOut => ("Chaos comet", 15),
            ExchangeKind::Unpayable => ("Chaos castle", 1_000_000),
        }
    }

    /// Whether its exchange may complete.
    fn may_complete(self) -> bool {
        matches!(self, ExchangeKind::Plain | ExchangeKind::Scarce)
    }

    /// The step and refusal with which its exchange may be compensated, if it may.
    fn refusal(self) -> Option<(&'static str, &'static str)> {
        match self {
            ExchangeKind::Plain => None,
            ExchangeKind::Scarce | ExchangeKind::SoldOut => Some(("gift.reserve", "out_of_stock")),
            ExchangeKind::Unpayable => Some(("wallet.debit", "insufficient_balance")),
        }
    }

    /// What its exchange must end as, in words.
    fn expected(self) -> &'static str {
        match self {
            ExchangeKind::Plain => "completed",
            ExchangeKind::Scarce => "completed or compensated (out_of_stock)",
            ExchangeKind::SoldOut => "compensated (out_of_stock)",
            ExchangeKind::Unpayable => "compensated (insufficient_balance)",
        }
    }
}

/// A gift of the run's catalogue.
pub(crate) struct PlannedGift {
    pub(crate) id: String,
    pub(crate) name: &'static str,
    pub(crate) price: i64,
    pub(crate) initial_stock: i64,
}

/// A customer who exchanges gifts: their chat, and the mission saga that earned their points
/// (run to completion before the faults).
pub(crate) struct GiftCustomer {
    pub(crate) customer_id: String,
    pub(crate) chat_id: i64,
    pub(crate) points: i64,
    pub(crate) mission_id: String,
    pub(crate) saga_id: String,
}

/// One exchange of the mix: its kind, gift and customer (indices), and its saga once started.
pub(crate) struct PlannedExchange {
    pub(crate) kind: ExchangeKind,
    pub(crate) gift: usize,
    pub(crate) customer: usize,
    pub(crate) saga_id: Option<String>,
}

/// The gift side of a run: the catalogue, the customers and the exchanges.
#[derive(Default)]
pub(crate) struct GiftPlan {
    pub(crate) gifts: Vec<PlannedGift>,
    pub(crate) customers: Vec<GiftCustomer>,
    pub(crate) exchanges: Vec<PlannedExchange>,
}

impl GiftPlan {
    /// Sagas the plan started or means to start: the customers' mission sagas and the
    /// exchanges.
    pub(crate) fn sagas(&self) -> usize {
        self.customers.len() + self.exchanges.len()
    }
}

/// What the gift side came to.
#[derive(Clone, Debug, Default)]
pub struct GiftFigures {
    /// Exchanges planned.
    pub exchanges: usize,
    /// Final states of their sagas and how many ended in each.
    pub outcomes: BTreeMap<String, usize>,
    /// Refusals that compensated them (`out_of_stock`, `insufficient_balance`).
    pub refusals: BTreeMap<String, usize>,
    /// Vouchers issued.
    pub vouchers: usize,
    /// The prices of the vouchers issued.
    pub vouchers_value: i64,
    /// Points the exchanges' sagas debited.
    pub debited: i64,
    /// Points their compensations credited back (a debit undone: only an exchange that
    /// passed its deadline before the pivot).
    pub credited: i64,
    /// `notification_status` of the completed exchanges (`sent`, `queued`), or the code with
    /// which `gift.notify` failed.
    pub notified: BTreeMap<String, usize>,
    /// Voucher messages the Telegram stand-in accepted.
    pub messages: usize,
}

impl std::fmt::Display for GiftFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |map: &BTreeMap<String, usize>| {
            map.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if self.exchanges == 0 {
            return write!(f, "gifts[exchanges=0]");
        }
        write!(
            f,
            "gifts[exchanges={} outcomes[{}] refused[{}] vouchers={} vouchers_value={} \
             debited={} credited_back={} notified[{}] voucher_messages={}]",
            self.exchanges,
            join(&self.outcomes),
            join(&self.refusals),
            self.vouchers,
            self.vouchers_value,
            self.debited,
            self.credited,
            join(&self.notified),
            self.messages,
        )
    }
}

/// Makes the gift side of the mix for `exchanges` exchanges: one gift per [`ExchangeKind`]
/// (the scarce one with stock for half of its exchanges, the sold-out one with none, the
/// unpayable one dearer than anyone's points), a customer per five exchanges with a linked chat
/// and the points their exchanges may need, earned with a mission saga that is run to
/// completion here, before any fault.
pub(crate) async fn prepare_gifts(
    cluster: &Endpoints,
    client: &Client,
    exchanges: usize,
) -> anyhow::Result<GiftPlan> {
    use reqwest::Method;
    if exchanges == 0 {
        return Ok(GiftPlan::default());
    }
    let kinds: Vec<ExchangeKind> = (0..exchanges).map(ExchangeKind::of).collect();
    let of_kind = |kind: ExchangeKind| {
        i64::try_from(kinds.iter().filter(|k| **k == kind).count()).unwrap_or(i64::MAX)
    };
    let mut gifts = Vec::new();
    for kind in ExchangeKind::ALL {
        let (name, price) = kind.catalogue();
        let stock = match kind {
            ExchangeKind::Plain | ExchangeKind::Unpayable => of_kind(kind) + 3,
            ExchangeKind::Scarce => (of_kind(kind) / 2).max(1),
            ExchangeKind::SoldOut => 0,
        };
        let body = json!({"name": name, "price_points": price, "stock": stock});
        let (status, gift) = client
            .call(Method::POST, &cluster.gifts, "/v1/gifts", Some(&body), None)
            .await?;
        if status != 201 {
            bail!("creating a gift: {status} {gift}");
        }
        gifts.push(PlannedGift {
            id: gift["id"].as_str().context("gift id")?.to_owned(),
            name,
            price,
            initial_stock: stock,
        });
    }

    let customers = exchanges.div_ceil(5);
    let exchanges: Vec<PlannedExchange> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| PlannedExchange {
            kind: *kind,
            gift: kind.gift(),
            customer: i % customers,
            saga_id: None,
        })
        .collect();
    // Enough for every exchange that may be paid, and a little to spare: no payable exchange
    // may be refused for want of points, whatever order they run in.
    let mut points = vec![7_i64; customers];
    for exchange in &exchanges {
        if exchange.kind.may_complete() {
            points[exchange.customer] += gifts[exchange.gift].price;
        }
    }
    let customers = futures::stream::iter(points.into_iter().enumerate())
        .map(|(j, points)| async move {
            let customer_id = format!("chaos-gift-{j}");
            let chat_id = 700_000 + i64::try_from(j).unwrap_or(0);
            client
                .call(
                    Method::PUT,
                    &cluster.telegrams,
                    &format!("/v1/telegram/chats/{customer_id}"),
                    Some(&json!({"chat_id": chat_id})),
                    None,
                )
                .await?;
            let body = json!({"customer_id": customer_id, "title": format!("Chaos savings {j}"), "reward_points": points});
            let (status, mission) = client
                .call(Method::POST, &cluster.missions, "/v1/missions", Some(&body), None)
                .await?;
            if status != 201 {
                bail!("creating a mission: {status} {mission}");
            }
            let mission_id = mission["id"].as_str().context("mission id")?.to_owned();
            let body = json!({"type": "mission_reward", "input": {"mission_id": mission_id}});
            let (status, saga) = client
                .call(
                    Method::POST,
                    &cluster.orchestrators,
                    "/v1/sagas",
                    Some(&body),
                    Some(&format!("chaos-savings-{j}")),
                )
                .await?;
            if status != 202 {
                bail!("starting a mission saga: {status} {saga}");
            }
            let saga_id = saga["id"].as_str().context("saga id")?.to_owned();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, saga) = client
                    .call(Method::GET, &cluster.orchestrators, &format!("/v1/sagas/{saga_id}"), None, None)
                    .await?;
                match saga["state"].as_str() {
                    Some("completed") => break,
                    Some("running" | "compensating") if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => bail!("earning {points} points for {customer_id}: {saga}"),
                }
            }
            let (_, wallet) = client
                .call(Method::GET, &cluster.wallets, &format!("/v1/wallets/{customer_id}"), None, None)
                .await?;
            if wallet["balance"].as_i64() != Some(points) {
                bail!("{customer_id} earned {points} points but the wallet says {wallet}");
            }
            Ok::<_, anyhow::Error>(GiftCustomer {
                customer_id,
                chat_id,
                points,
                mission_id,
                saga_id,
            })
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(GiftPlan {
        gifts,
        customers,
        exchanges,
    })
}

/// Starts the planned exchanges in the background, `concurrency` at a time, paced so that
/// starting them all takes about `spread`; each with the `Idempotency-Key` `chaos-gift-{i}`,
/// through whichever gift replica answers (a replica whose orchestrator is down answers 503:
/// the same key is then tried on the other).
fn spawn_gift_submitter(
    client: Client,
    ports: Vec<u16>,
    plan: Arc<Mutex<GiftPlan>>,
    concurrency: usize,
    spread: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let total = plan.lock().await.exchanges.len();
        let pace = spread * u32::try_from(concurrency).unwrap_or(1)
            / u32::try_from(total.max(1)).unwrap_or(1);
        futures::stream::iter(0..total)
            .for_each_concurrent(concurrency, |i| {
                let client = client.clone();
                let ports = ports.clone();
                let plan = plan.clone();
                async move {
                    let (gift_id, customer_id) = {
                        let plan = plan.lock().await;
                        let exchange = &plan.exchanges[i];
                        (
                            plan.gifts[exchange.gift].id.clone(),
                            plan.customers[exchange.customer].customer_id.clone(),
                        )
                    };
                    let body = json!({"customer_id": customer_id});
                    let key = format!("chaos-gift-{i}");
                    match client
                        .call(
                            reqwest::Method::POST,
                            &ports,
                            &format!("/v1/gifts/{gift_id}/exchanges"),
                            Some(&body),
                            Some(&key),
                        )
                        .await
                    {
                        Ok((202, saga)) => {
                            plan.lock().await.exchanges[i].saga_id =
                                saga["id"].as_str().map(str::to_owned);
                        }
                        Ok((status, problem)) => {
                            eprintln!("an exchange was refused: {status} {problem}")
                        }
                        Err(error) => eprintln!("an exchange could not be started: {error:#}"),
                    }
                    tokio::time::sleep(pace).await;
                }
            })
            .await;
    })
}

/// Waits until the gift side has nothing left to deliver: no row in the gift worker's outbox,
/// nothing on `notify.telegram` that the telegram worker's consumer has yet to deliver or see
/// acknowledged, no gift notification pending or being sent (for at most `timeout`). Returns
/// what was still undelivered when the time ran out.
///
/// The consumer's counts are asked rather than the stream's: after nats-server was killed, a
/// message the consumer had acknowledged can stay in the work-queue stream (the acknowledgement
/// survived the crash, the deletion did not), never to be delivered again.
async fn wait_for_gift_notifications(
    cluster: &Endpoints,
    timeout: Duration,
) -> anyhow::Result<Option<String>> {
    use async_nats::jetstream::consumer::pull;
    let mut db = PgConnection::connect(&cluster.database_url).await?;
    let js = async_nats::jetstream::new(connect_nats(&cluster.nats_url).await?);
    let deadline = Instant::now() + timeout;
    loop {
        let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM gift.outbox")
            .fetch_one(&mut db)
            .await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM telegram.notifications \
             WHERE idempotency_key LIKE 'gift:%' AND status IN ('pending', 'sending')",
        )
        .fetch_one(&mut db)
        .await?;
        let mut consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = js
            .get_stream("NOTIFY")
            .await?
            .get_consumer("telegram-notify")
            .await
            .map_err(|e| anyhow::anyhow!("the telegram-notify consumer: {e}"))?;
        let info = consumer.info().await?;
        let queued = info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
        if outbox == 0 && pending == 0 && queued == 0 {
            return Ok(None);
        }
        if Instant::now() > deadline {
            return Ok(Some(format!(
                "after {timeout:?}: {outbox} rows in the gift outbox, {queued} messages on \
                 notify.telegram not delivered, {pending} gift notifications pending or sending"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks the gift side's promises: every exchange terminal as its kind calls for; vouchers
/// once per completed exchange and never for a compensated one; each exchange's saga moved its
/// customer's wallet by minus the price of the voucher it issued (per saga, per customer, in
/// all); per gift, stock left + vouchers issued = initial stock; at most one Telegram message
/// per voucher, and exactly one for a notification recorded `sent`.
pub(crate) async fn check_gifts(
    cluster: &Endpoints,
    client: &Client,
    plan: &GiftPlan,
) -> anyhow::Result<(GiftFigures, Vec<Violation>)> {
    let mut figures = GiftFigures {
        exchanges: plan.exchanges.len(),
        ..GiftFigures::default()
    };
    let mut violations = Violations(Vec::new());
    if plan.exchanges.is_empty() {
        return Ok((figures, violations.0));
    }
    let mut db = PgConnection::connect(&cluster.database_url).await?;

    let sagas: Vec<(uuid::Uuid, String, Value)> = sqlx::query_as(
        "SELECT id, state::text, context FROM orchestrator.sagas WHERE saga_type = 'gift_exchange'",
    )
    .fetch_all(&mut db)
    .await?;
    let sagas: HashMap<String, (String, Value)> = sagas
        .into_iter()
        .map(|(id, state, context)| (id.to_string(), (state, context)))
        .collect();
    // The step each saga failed at for good: (name, code).
    let failed: Vec<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT st.saga_id, st.name, st.last_error FROM orchestrator.saga_steps st \
         JOIN orchestrator.sagas s ON s.id = st.saga_id \
         WHERE s.saga_type = 'gift_exchange' AND st.state = 'failed' ORDER BY st.step_index",
    )
    .fetch_all(&mut db)
    .await?;
    let mut failed_at: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (saga, step, error) in failed {
        let code = error
            .as_deref()
            .and_then(|e| e.split(':').next())
            .unwrap_or_default()
            .to_owned();
        failed_at
            .entry(saga.to_string())
            .or_default()
            .push((step, code));
    }
    let reservations: Vec<(uuid::Uuid, uuid::Uuid, String, i64, String, Option<String>)> =
        sqlx::query_as(
            "SELECT saga_id, gift_id, customer_id, price_points, status, voucher_code \
             FROM gift.reservations",
        )
        .fetch_all(&mut db)
        .await?;
    let reservation_of: HashMap<String, (String, String, i64, String, Option<String>)> =
        reservations
            .iter()
            .map(|(saga, gift, customer, price, status, voucher)| {
                (
                    saga.to_string(),
                    (
                        gift.to_string(),
                        customer.clone(),
                        *price,
                        status.clone(),
                        voucher.clone(),
                    ),
                )
            })
            .collect();
    // Every wallet entry of an exchange's saga: (saga, customer, kind, signed points).
    let entries: Vec<(uuid::Uuid, String, String, i64)> = sqlx::query_as(
        "SELECT e.saga_id, e.customer_id, e.kind, e.points FROM wallet.wallet_entries e \
         JOIN orchestrator.sagas s ON s.id = e.saga_id WHERE s.saga_type = 'gift_exchange'",
    )
    .fetch_all(&mut db)
    .await?;
    let notifications: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT idempotency_key, status, last_error FROM telegram.notifications \
         WHERE idempotency_key LIKE 'gift:%'",
    )
    .fetch_all(&mut db)
    .await?;
    let notification_of: HashMap<String, (String, Option<String>)> = notifications
        .into_iter()
        .map(|(key, status, error)| (key, (status, error)))
        .collect();
    let stocks: Vec<(uuid::Uuid, i64)> = sqlx::query_as("SELECT id, stock FROM gift.gifts")
        .fetch_all(&mut db)
        .await?;
    let stock_of: HashMap<String, i64> = stocks
        .into_iter()
        .map(|(id, stock)| (id.to_string(), stock))
        .collect();

    // The stand-in's accepted messages: per voucher they name (and to which chats), and the
    // others per chat.
    let (_, messages) = client
        .call(
            reqwest::Method::GET,
            &[cluster.stand_in_port],
            "/control/messages",
            None,
            None,
        )
        .await?;
    let mut told: HashMap<String, Vec<i64>> = HashMap::new();
    let mut other_messages: HashMap<i64, usize> = HashMap::new();
    for message in messages.as_array().cloned().unwrap_or_default() {
        if message["status"] != 200 {
            continue;
        }
        let chat = message["chat_id"].as_i64().unwrap_or(0);
        let text = message["text"].as_str().unwrap_or_default();
        match text.rsplit_once("Your voucher code: ") {
            Some((_, code)) => told.entry(code.trim().to_owned()).or_default().push(chat),
            None => *other_messages.entry(chat).or_default() += 1,
        }
    }

    let mut planned_sagas = std::collections::HashSet::new();
    let mut completed_of_gift = vec![0_i64; plan.gifts.len()];
    for (i, exchange) in plan.exchanges.iter().enumerate() {
        let gift = &plan.gifts[exchange.gift];
        let customer = &plan.customers[exchange.customer];
        let Some(saga_id) = &exchange.saga_id else {
            violations.push(
                Broken::Lost,
                format!(
                    "exchange {i} ({:?}) of {}: its saga was never started",
                    exchange.kind, customer.customer_id
                ),
            );
            continue;
        };
        planned_sagas.insert(saga_id.clone());
        let Some((state, context)) = sagas.get(saga_id) else {
            violations.push(Broken::Lost, format!("exchange saga {saga_id}: not stored"));
            continue;
        };
        *figures.outcomes.entry(state.clone()).or_default() += 1;
        let refusal = failed_at.get(saga_id).and_then(|f| f.first()).cloned();
        let ok = match state.as_str() {
            "completed" => exchange.kind.may_complete(),
            "compensated" => exchange.kind.refusal().is_some_and(|(step, code)| {
                refusal
                    .as_ref()
                    .is_some_and(|(s, c)| (s.as_str(), c.as_str()) == (step, code))
            }),
            _ => false,
        };
        if !ok {
            violations.push(
                Broken::Lost,
                format!(
                    "exchange saga {saga_id} ({:?}): ended {state} (failed steps {:?}), expected {}",
                    exchange.kind,
                    failed_at.get(saga_id),
                    exchange.kind.expected()
                ),
            );
        }
        let reservation = reservation_of.get(saga_id);
        let key = format!("gift:{saga_id}");
        let notification = notification_of.get(&key);
        match state.as_str() {
            "completed" => {
                completed_of_gift[exchange.gift] += 1;
                let voucher = context["voucher_code"].as_str();
                let issued = reservation.is_some_and(|(g, c, price, status, code)| {
                    *g == gift.id
                        && *c == customer.customer_id
                        && *price == gift.price
                        && status == "issued"
                        && code.is_some()
                        && code.as_deref() == voucher
                });
                if !issued {
                    violations.push(
                        Broken::Other,
                        format!(
                            "exchange saga {saga_id}: completed with voucher {voucher:?} but its reservation is {reservation:?}"
                        ),
                    );
                }
                let failed_notify = failed_at
                    .get(saga_id)
                    .and_then(|f| f.iter().find(|(step, _)| step == "gift.notify"));
                let status = match (context["notification_status"].as_str(), failed_notify) {
                    (Some(status), None) => status.to_owned(),
                    (None, Some((_, code))) => code.clone(),
                    _ => format!("{:?}", context["notification_status"]),
                };
                *figures.notified.entry(status.clone()).or_default() += 1;
                // A worker killed during the call to Telegram cannot know whether the message
                // went out: it is not sent again (at most once), and the step fails with
                // telegram_delivery_unknown. Any other outcome is a broken promise.
                if !["sent", "queued", "telegram_delivery_unknown"].contains(&status.as_str()) {
                    violations.push(
                        Broken::Other,
                        format!("exchange saga {saga_id}: completed, notification {status}"),
                    );
                }
                let chats = voucher
                    .and_then(|v| told.get(v))
                    .cloned()
                    .unwrap_or_default();
                if chats.iter().any(|chat| *chat != customer.chat_id) {
                    violations.push(
                        Broken::Other,
                        format!(
                            "exchange saga {saga_id}: its voucher went to chats {chats:?}, not {}",
                            customer.chat_id
                        ),
                    );
                }
                if chats.len() > 1 {
                    violations.push(
                        Broken::Duplicate,
                        format!(
                            "exchange saga {saga_id}: voucher {voucher:?} told {} times",
                            chats.len()
                        ),
                    );
                }
                match notification {
                    Some((status, _)) if status == "sent" && chats.is_empty() => violations.push(
                        Broken::Lost,
                        format!(
                            "exchange saga {saga_id}: notification {key} recorded sent, but Telegram never got voucher {voucher:?}"
                        ),
                    ),
                    Some((status, error)) if status == "pending" || status == "sending" => {
                        violations.push(
                            Broken::Lost,
                            format!(
                                "exchange saga {saga_id}: notification {key} still {status} ({error:?})"
                            ),
                        );
                    }
                    None if status == "sent" || status == "queued" => violations.push(
                        Broken::Lost,
                        format!(
                            "exchange saga {saga_id}: notification {status} but the telegram service has no notification {key}"
                        ),
                    ),
                    _ => {}
                }
            }
            "compensated" => {
                if let Some(refusal) = &refusal {
                    *figures.refusals.entry(refusal.1.clone()).or_default() += 1;
                }
                if reservation
                    .is_some_and(|(.., status, code)| status != "released" || code.is_some())
                {
                    violations.push(
                        Broken::Other,
                        format!("exchange saga {saga_id}: compensated but its reservation is {reservation:?}"),
                    );
                }
                if notification.is_some() {
                    violations.push(
                        Broken::Other,
                        format!(
                            "exchange saga {saga_id}: compensated but notification {key} exists"
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    // Vouchers: one per completed exchange, none else; each code once.
    let issued: Vec<_> = reservations
        .iter()
        .filter(|(.., status, _)| status == "issued")
        .collect();
    figures.vouchers = issued.len();
    figures.vouchers_value = issued.iter().map(|(_, _, _, price, ..)| *price).sum();
    let completed = figures.outcomes.get("completed").copied().unwrap_or(0);
    if issued.len() != completed {
        violations.push(
            if issued.len() > completed {
                Broken::Duplicate
            } else {
                Broken::Lost
            },
            format!(
                "{} vouchers issued for {completed} completed exchanges",
                issued.len()
            ),
        );
    }
    let mut codes: HashMap<&str, usize> = HashMap::new();
    for (.., code) in &issued {
        *codes
            .entry(code.as_deref().unwrap_or_default())
            .or_default() += 1;
    }
    for (code, n) in codes.iter().filter(|(_, n)| **n > 1) {
        violations.push(
            Broken::Duplicate,
            format!("voucher {code} issued {n} times"),
        );
    }
    for (saga, .., status, _) in &reservations {
        let saga = saga.to_string();
        if !planned_sagas.contains(&saga) {
            violations.push(
                Broken::Other,
                format!("a reservation ({status}) of saga {saga}, which no exchange started"),
            );
        } else if status == "reserved" {
            violations.push(
                Broken::Lost,
                format!("exchange saga {saga}: ended with its gift still reserved"),
            );
        }
    }
    for (code, chats) in &told {
        if !codes.contains_key(code.as_str()) {
            violations.push(
                Broken::Other,
                format!("chats {chats:?} were told voucher {code}, which no exchange issued"),
            );
        }
    }
    figures.messages = told.values().map(Vec::len).sum();
    for customer in &plan.customers {
        let others = other_messages.get(&customer.chat_id).copied().unwrap_or(0);
        if others > 1 {
            violations.push(
                Broken::Duplicate,
                format!(
                    "chat {} ({}): told {others} times besides its vouchers (one mission)",
                    customer.chat_id, customer.customer_id
                ),
            );
        }
    }

    // The wallet: each exchange's saga moved its customer's points by minus the price of its
    // voucher (by nothing without one), with at most one debit and one compensating credit;
    // per customer, and in all.
    let mut moves: HashMap<String, (i64, usize, usize)> = HashMap::new();
    let mut net_of_customer: HashMap<&str, i64> = HashMap::new();
    let mut debits = 0_i64;
    let mut credits = 0_i64;
    for (saga, customer, kind, points) in &entries {
        let entry = moves.entry(saga.to_string()).or_default();
        entry.0 += points;
        if kind == "debit" {
            entry.1 += 1;
            debits -= points;
        } else {
            entry.2 += 1;
            credits += points;
        }
        *net_of_customer.entry(customer.as_str()).or_default() += points;
    }
    figures.debited = debits;
    figures.credited = credits;
    for (saga, (net, debit_count, credit_count)) in &moves {
        let price = reservation_of
            .get(saga)
            .filter(|(.., status, _)| status == "issued")
            .map_or(0, |(_, _, price, ..)| *price);
        if *net != -price || *debit_count > 1 || *credit_count > 1 {
            violations.push(
                if *net < -price || *debit_count > 1 || *credit_count > 1 {
                    Broken::Duplicate
                } else {
                    Broken::Lost
                },
                format!(
                    "exchange saga {saga}: the wallet moved {net} in {debit_count} debits and {credit_count} credits; its voucher cost {price}"
                ),
            );
        }
    }
    for (saga, (_, _, price, status, _)) in &reservation_of {
        if status == "issued" && !moves.contains_key(saga) {
            violations.push(
                Broken::Lost,
                format!("exchange saga {saga}: a voucher worth {price} issued, nothing debited"),
            );
        }
    }
    let mut spent_of_customer: HashMap<&str, i64> = HashMap::new();
    for (_, _, customer, price, status, _) in &reservations {
        if status == "issued" {
            *spent_of_customer.entry(customer.as_str()).or_default() += price;
        }
    }
    let balances: Vec<(String, i64)> =
        sqlx::query_as("SELECT customer_id, balance FROM wallet.wallets")
            .fetch_all(&mut db)
            .await?;
    let balance_of: HashMap<String, i64> = balances.into_iter().collect();
    let mission_sagas: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, state::text FROM orchestrator.sagas WHERE saga_type = 'mission_reward'",
    )
    .fetch_all(&mut db)
    .await?;
    let mission_saga_state: HashMap<String, String> = mission_sagas
        .into_iter()
        .map(|(id, state)| (id.to_string(), state))
        .collect();
    for customer in &plan.customers {
        let id = customer.customer_id.as_str();
        let net = net_of_customer.get(id).copied().unwrap_or(0);
        let spent = spent_of_customer.get(id).copied().unwrap_or(0);
        let state = mission_saga_state.get(&customer.saga_id);
        if state.map(String::as_str) != Some("completed") {
            violations.push(
                Broken::Lost,
                format!(
                    "{id}: the saga {} that earned their points is {state:?}",
                    customer.saga_id
                ),
            );
        }
        let balance = balance_of.get(id).copied();
        if balance != Some(customer.points - spent) {
            violations.push(
                Broken::Other,
                format!(
                    "{id}: earned {}, bought vouchers for {spent}, but the wallet holds {balance:?}",
                    customer.points
                ),
            );
        }
        if net != -spent {
            violations.push(
                if net < -spent {
                    Broken::Duplicate
                } else {
                    Broken::Lost
                },
                format!(
                    "{id}: the exchanges moved the wallet by {net}, the vouchers issued to them cost {spent}"
                ),
            );
        }
    }
    if debits - credits != figures.vouchers_value {
        violations.push(
            if debits - credits > figures.vouchers_value {
                Broken::Duplicate
            } else {
                Broken::Lost
            },
            format!(
                "the exchanges debited {debits} points and credited {credits} back, the vouchers issued cost {}",
                figures.vouchers_value
            ),
        );
    }

    // The stock: what is left plus what was issued is what there was.
    for (index, gift) in plan.gifts.iter().enumerate() {
        let left = stock_of.get(&gift.id).copied().unwrap_or(-1);
        let issued = i64::try_from(
            issued
                .iter()
                .filter(|(_, g, ..)| g.to_string() == gift.id)
                .count(),
        )
        .unwrap_or(i64::MAX);
        if left + issued != gift.initial_stock {
            violations.push(
                if left + issued > gift.initial_stock {
                    Broken::Duplicate
                } else {
                    Broken::Lost
                },
                format!(
                    "gift {} ({}): {left} left + {issued} issued, {} in stock at first",
                    gift.name, gift.id, gift.initial_stock
                ),
            );
        }
        // Every scarce exchange can pay: exactly as many complete as there was stock.
        let kind = ExchangeKind::ALL[index];
        let started = i64::try_from(
            plan.exchanges
                .iter()
                .filter(|e| e.gift == index && e.saga_id.is_some())
                .count(),
        )
        .unwrap_or(i64::MAX);
        if kind == ExchangeKind::Scarce
            && completed_of_gift[index] != started.min(gift.initial_stock)
        {
            violations.push(
                Broken::Other,
                format!(
                    "gift {}: {} of {started} exchanges completed with {} in stock",
                    gift.name, completed_of_gift[index], gift.initial_stock
                ),
            );
        }
    }
    Ok((figures, violations.0))
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
/// `gifts`: the gift side of the run, if any (its sagas count as planned, its customers'
/// wallets are checked as granted rewards minus the vouchers bought; [`check_gifts`] checks
/// the rest). `every_saga_planned`: the run started no saga but the planned ones (the stored
/// count must match). `garbage`: the dead letters injected on purpose.
pub(crate) async fn check_promises(
    cluster: &Endpoints,
    client: &Client,
    planned: &[Planned],
    gifts: Option<&GiftPlan>,
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
    let started = planned.len() + gifts.map_or(0, GiftPlan::sagas);
    if every_saga_planned && sagas.len() != started {
        violations.push(
            Broken::Lost,
            format!("{} sagas stored for {started} started", sagas.len()),
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

    // Every wallet holds what its ledger says, never below zero: the rewards granted, less the
    // vouchers bought (none for a mission-only customer).
    let has_gifts: bool = sqlx::query_scalar("SELECT to_regclass('gift.reservations') IS NOT NULL")
        .fetch_one(&mut db)
        .await?;
    let spent = if has_gifts {
        "COALESCE((SELECT sum(price_points) FROM gift.reservations g WHERE g.customer_id = w.customer_id AND g.status = 'issued'), 0)::int8"
    } else {
        "0::int8"
    };
    let wallets: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT w.customer_id, w.balance, \
                COALESCE((SELECT sum(points) FROM wallet.wallet_entries e WHERE e.customer_id = w.customer_id), 0)::int8, \
                COALESCE((SELECT sum(points) FROM reward.rewards r WHERE r.customer_id = w.customer_id AND r.status = 'GRANTED'), 0)::int8, \
                {spent} \
         FROM wallet.wallets w",
    )))
    .fetch_all(&mut db)
    .await?;
    for (customer, balance, ledger, granted, spent) in wallets {
        if balance != ledger || balance != granted - spent || balance < 0 {
            violations.push(Broken::Duplicate, format!(
                "wallet {customer}: balance {balance}, ledger {ledger}, granted rewards {granted}, vouchers bought {spent}"
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
    let missions = planned.iter().map(|p| &p.mission_id).chain(
        gifts
            .iter()
            .flat_map(|g| g.customers.iter().map(|c| &c.mission_id)),
    );
    for mission_id in missions {
        let seen = events.get(mission_id).copied().unwrap_or(0);
        // Every kind changes its mission twice: COMPLETED, then REWARDED or OPEN again.
        if seen > 2 {
            violations.push(
                Broken::Duplicate,
                format!("mission {mission_id}: {seen} MissionUpdated events, at most 2 expected"),
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
