//! The JetStream cluster demonstration: three nats-server processes on loopback ports form a
//! JetStream cluster, the platform's streams are created at three replicas, and two
//! orchestrators and two of each worker (their own PostgreSQL) run a load of sagas, the chaos
//! suite's mix that completes and that compensates. Mid-load one NATS node (picked by the seed)
//! is killed with SIGKILL and restarted a few seconds later. When every saga is terminal the
//! chaos suite's checks run: none lost (every saga terminal with the outcome its kind calls
//! for), no duplicate effect (no mission rewarded twice, no wallet credited or debited twice
//! for a saga, at most one message per chat, every wallet's balance equal to its ledger).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{say, secs, secs_or_na};
use crate::chaos::{self, Broken, Client, Endpoints};
use crate::processes::{self, Dice, Fleet, Process, free_port};

/// How many NATS nodes the cluster has.
const NODES: usize = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Sagas to run.
    pub sagas: usize,
    /// Sagas started at once.
    pub concurrency: usize,
    /// How long starting all sagas should take (the node is killed meanwhile).
    pub spread: Duration,
    /// Picks the node, when it dies, and for how long.
    pub seed: u64,
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Keep the work directory (every process's log) even when nothing went wrong.
    pub keep_logs: bool,
    /// Give every service the comma-separated list of all three nodes as `SAGA_NATS_URL`
    /// (the platform's NATS connect does not accept a list yet); otherwise each replica gets
    /// one node, the replicas spread over the three, and finds the others through the
    /// cluster's gossip (the `connect_urls` nats-server announces).
    pub url_list: bool,
}

impl ClusterConfig {
    /// `sagas` sagas over 20 s, 8 at a time, a seed from the clock, the binaries in `bin_dir`
    /// (default: next to the running executable, or `SAGA_BIN_DIR`).
    pub fn new(sagas: usize, bin_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            sagas,
            concurrency: 8,
            spread: Duration::from_secs(20),
            seed: clock ^ u64::from(std::process::id()),
            bin_dir: processes::bin_dir_or(bin_dir)?,
            keep_logs: false,
            url_list: false,
        })
    }
}

/// What the demonstration saw.
#[derive(Clone, Debug, Default)]
pub struct ClusterSummary {
    /// Sagas started.
    pub sagas: usize,
    /// Sagas lost: not started, not stored, not terminal, or not ending as their kind calls for.
    pub lost: usize,
    /// Effects duplicated (rewards, credits, debits, messages, mission changes, wallets off
    /// their ledger).
    pub duplicates: usize,
    /// Final states and how many ended in each.
    pub outcomes: BTreeMap<String, usize>,
    /// The node killed (`nats-2`).
    pub killed_node: String,
    /// Whether it led the JetStream meta group when it was killed (`None`: not known).
    pub was_meta_leader: Option<bool>,
    /// Stream and consumer groups it led when it was killed.
    pub groups_led: usize,
    /// How long it stayed down.
    pub down_for: Duration,
    /// From its restart until its `/healthz` said JetStream was current again.
    pub recovered_in: Option<Duration>,
    /// The longest time without a saga finishing, from the kill until the last saga was started.
    pub longest_stall: Option<Duration>,
    /// The longest a saga took from its start to its terminal state.
    pub slowest_saga: Option<Duration>,
    /// How long the run took.
    pub elapsed: Duration,
    /// Broken promises, each described.
    pub violations: Vec<String>,
    /// Where the logs are.
    pub work_dir: PathBuf,
}

impl std::fmt::Display for ClusterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let leader = match self.was_meta_leader {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        write!(
            f,
            "sagas={} lost={} duplicates={} killed_node={} recovered_in={} elapsed={} \
             meta_leader={leader} groups_led={} down_for={} longest_stall={} slowest_saga={} {} \
             violations={}",
            self.sagas,
            self.lost,
            self.duplicates,
            self.killed_node,
            secs_or_na(self.recovered_in),
            secs(self.elapsed),
            self.groups_led,
            secs(self.down_for),
            secs_or_na(self.longest_stall),
            secs_or_na(self.slowest_saga),
            outcomes.join(" "),
            self.violations.len(),
        )
    }
}

/// One nats-server of the cluster.
struct NatsNode {
    name: String,
    client_port: u16,
    monitor_port: u16,
    process: Process,
}

impl NatsNode {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn monitor(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.monitor_port)
    }
}

/// Writes a config file per node (`server_name`, `jetstream { store_dir }`, `cluster { name,
/// listen, routes }`, the monitoring port), checks each with `nats-server -t -c`.
fn configure_nodes(work: &Path) -> anyhow::Result<Vec<NatsNode>> {
    let ports: Vec<(u16, u16, u16)> = (0..NODES)
        .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, cluster, _)| format!("    \"nats-route://127.0.0.1:{cluster}\""))
        .collect();
    let mut nodes = Vec::new();
    for (i, (client, cluster, monitor)) in ports.iter().enumerate() {
        let name = format!("nats-{}", i + 1);
        let store = work.join(&name);
        let config = format!(
            "# {name} of the demonstration's JetStream cluster (loopback only).\n\
             server_name: {name}\n\
             listen: \"127.0.0.1:{client}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n\
             cluster {{\n  name: saga-demo\n  listen: \"127.0.0.1:{cluster}\"\n  routes: [\n{}\n  ]\n}}\n",
            store.display(),
            routes.join("\n"),
        );
        let path = work.join(format!("{name}.conf"));
        std::fs::write(&path, config)?;
        let checked = std::process::Command::new("nats-server")
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .context("running nats-server -t (is nats-server installed?)")?;
        if !checked.status.success() {
            bail!(
                "nats-server -t -c {} refused the config: {}{}",
                path.display(),
                String::from_utf8_lossy(&checked.stdout),
                String::from_utf8_lossy(&checked.stderr)
            );
        }
        let mut process = Process::new(&name, "nats-server", work.join(format!("{name}.log")));
        process.args = vec!["-c".into(), path.to_string_lossy().to_string()];
        nodes.push(NatsNode {
            name,
            client_port: *client,
            monitor_port: *monitor,
            process,
        });
    }
    Ok(nodes)
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Whether the node says it is healthy (JetStream current) on `/healthz`.
async fn healthy(http: &reqwest::Client, node: &NatsNode) -> bool {
    http.get(node.monitor("/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The JetStream meta leader as `node` sees it.
async fn meta_leader(http: &reqwest::Client, node: &NatsNode) -> Option<String> {
    let jsz = get_json(http, &node.monitor("/jsz")).await?;
    let leader = jsz["meta_cluster"]["leader"].as_str()?;
    (!leader.is_empty()).then(|| leader.to_owned())
}

/// How many stream and consumer groups `node` leads, from its `/jsz`.
async fn groups_led(http: &reqwest::Client, node: &NatsNode) -> usize {
    let Some(jsz) = get_json(
        http,
        &node.monitor("/jsz?accounts=true&streams=true&consumers=true"),
    )
    .await
    else {
        return 0;
    };
    let mut led = 0;
    for account in jsz["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            if stream["cluster"]["leader"] == node.name.as_str() {
                led += 1;
            }
            for consumer in stream["consumer_detail"].as_array().into_iter().flatten() {
                if consumer["cluster"]["leader"] == node.name.as_str() {
                    led += 1;
                }
            }
        }
    }
    led
}

/// Waits until every node is healthy and they agree on a meta leader; returns it.
async fn wait_cluster(
    http: &reqwest::Client,
    nodes: &[NatsNode],
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        for node in nodes {
            if healthy(http, node).await {
                leaders.push(meta_leader(http, node).await);
            }
        }
        if leaders.len() == nodes.len()
            && let Some(Some(leader)) = leaders.first()
            && leaders
                .iter()
                .all(|l| l.as_deref() == Some(leader.as_str()))
        {
            return Ok(leader.clone());
        }
        if Instant::now() > deadline {
            bail!("the JetStream cluster did not form within {timeout:?}: {leaders:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every platform stream must have three replicas, all current.
async fn check_streams(nats_url: &str, violations: &mut Vec<String>) -> anyhow::Result<()> {
    let nats = processes::connect_nats(nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let topology = contracts::Topology::new("");
    for which in contracts::topology::Stream::ALL {
        let name = topology.stream(which);
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        let info = stream
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        let replicas = info.config.num_replicas;
        let current = info
            .cluster
            .as_ref()
            .map_or(0, |c| c.replicas.iter().filter(|p| p.current).count());
        if replicas != NODES || current + 1 != NODES {
            violations.push(format!(
                "stream {name}: {replicas} replicas configured, {} current besides its leader",
                current
            ));
        }
    }
    Ok(())
}

/// The longest a terminal saga took from its start to its last change.
async fn slowest_saga(database_url: &str) -> anyhow::Result<Option<Duration>> {
    use sqlx::Connection as _;
    let mut db = sqlx::PgConnection::connect(database_url).await?;
    let (ms,): (Option<f64>,) = sqlx::query_as(
        "SELECT max(extract(epoch FROM updated_at - created_at) * 1000)::float8 \
         FROM orchestrator.sagas \
         WHERE state IN ('completed', 'compensated', 'failed', 'cancelled')",
    )
    .fetch_one(&mut db)
    .await?;
    Ok(ms.map(|ms| Duration::from_secs_f64((ms / 1000.0).max(0.0))))
}

/// Runs the demonstration.
pub async fn run(config: ClusterConfig) -> anyhow::Result<ClusterSummary> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t0 = Instant::now();
    let work = processes::work_dir("saga-cluster-demo", config.seed);
    std::fs::create_dir_all(&work)?;
    let mut summary = ClusterSummary {
        sagas: config.sagas,
        work_dir: work.clone(),
        ..ClusterSummary::default()
    };
    say(
        t0,
        &format!("work dir {} (seed {})", work.display(), config.seed),
    );
    // Spread nearby seeds apart (seeds 2 and 3 would otherwise roll the same).
    let mut dice = Dice(config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let victim = usize::try_from(dice.below(NODES as u64)).unwrap_or(0);
    let kill_at = 25 + dice.below(21);
    summary.down_for = Duration::from_millis(3000 + dice.below(3000));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut nodes = configure_nodes(&work)?;
    for node in nodes.iter_mut() {
        node.process.start()?;
    }
    let leader = wait_cluster(&http, &nodes, Duration::from_secs(60)).await?;
    say(
        t0,
        &format!(
            "JetStream cluster of {NODES} nats-server nodes up (configs checked with nats-server -t), meta leader {leader}"
        ),
    );

    let (pg, database_url) = processes::fresh_database(&work, "saga_cluster_demo").await?;
    say(
        t0,
        &format!(
            "PostgreSQL of its own at {}",
            database_url.rsplit('@').next().unwrap_or_default()
        ),
    );
    let nats_url = nodes
        .iter()
        .map(NatsNode::url)
        .collect::<Vec<_>>()
        .join(",");
    let stand_in_port = free_port()?;
    let node_urls: Vec<String> = nodes.iter().map(NatsNode::url).collect();
    let next_node = std::sync::atomic::AtomicUsize::new(0);
    let env = |_: &processes::Service, _| {
        let url = if config.url_list {
            nats_url.clone()
        } else {
            node_urls[next_node.fetch_add(1, Ordering::SeqCst) % NODES].clone()
        };
        let mut env = processes::service_env(&database_url, &url, stand_in_port);
        env.push(("SAGA_NATS_REPLICAS".into(), NODES.to_string()));
        env
    };
    let mut fleet = Fleet::plan(&config.bin_dir, &work, 2, stand_in_port, &env, None)?;
    fleet.start_first()?;
    fleet.start_rest(&work).await?;
    say(
        t0,
        &format!(
            "{} service processes ready (2 of each: {}), SAGA_NATS_URL={}, SAGA_NATS_REPLICAS={NODES}",
            fleet.services.len(),
            processes::SERVICES
                .iter()
                .map(|s| s.binary)
                .collect::<Vec<_>>()
                .join(", "),
            if config.url_list {
                nats_url.clone()
            } else {
                "one node each, spread over the three".to_owned()
            }
        ),
    );
    check_streams(&nats_url, &mut summary.violations).await?;
    let ends = Endpoints::of(&fleet, &database_url, &nats_url);
    let client = Client::new(Duration::from_secs(10))?;
    let planned = chaos::prepare(&ends, &client, config.sagas).await?;
    say(
        t0,
        &format!(
            "{} missions prepared (70 % plain, 20 % that compensate, 10 % Telegram trouble)",
            planned.len()
        ),
    );

    // Saga completions, seen through a node that stays up.
    let watch_node = &nodes[(victim + 1) % NODES];
    let watcher_nats = processes::connect_nats(&watch_node.url()).await?;
    let mut finished_events = watcher_nats.subscribe("evt.saga.SagaFinished").await?;
    let finishes: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let watcher = {
        let finishes = finishes.clone();
        tokio::spawn(async move {
            while finished_events.next().await.is_some() {
                finishes.lock().await.push(Instant::now());
            }
        })
    };

    let submitted = Arc::new(AtomicUsize::new(0));
    let planned = Arc::new(Mutex::new(planned));
    let load_started = Instant::now();
    let submitter = chaos::spawn_submitter(
        client.clone(),
        ends.orchestrators.clone(),
        planned.clone(),
        submitted.clone(),
        config.concurrency,
        config.spread,
        "cluster",
    );
    say(
        t0,
        &format!(
            "starting {} sagas over {}, {} at a time; {} will be killed at {kill_at} % for {}",
            config.sagas,
            secs(config.spread),
            config.concurrency,
            nodes[victim].name,
            secs(summary.down_for)
        ),
    );

    summary.killed_node = nodes[victim].name.clone();
    let mut killed_at: Option<Instant> = None;
    let mut restarted_at: Option<Instant> = None;
    let load_deadline = Instant::now() + config.spread * 3 + Duration::from_secs(120);
    loop {
        let done = submitter.is_finished();
        let progress = submitted.load(Ordering::SeqCst) * 100 / config.sagas.max(1);
        if killed_at.is_none() && (progress as u64 >= kill_at || done) {
            let node = &nodes[victim];
            let leader = meta_leader(&http, node).await;
            summary.was_meta_leader = leader.as_ref().map(|l| *l == node.name);
            summary.groups_led = groups_led(&http, node).await;
            nodes[victim].process.kill();
            killed_at = Some(Instant::now());
            say(
                t0,
                &format!(
                    "SIGKILL {} at {progress} % of the load (meta leader: {}; it led {} stream/consumer groups)",
                    nodes[victim].name,
                    leader.as_deref().unwrap_or("unknown"),
                    summary.groups_led
                ),
            );
        }
        if let Some(at) = killed_at
            && restarted_at.is_none()
            && at.elapsed() >= summary.down_for
        {
            let mut survivors_leader = None;
            for (i, node) in nodes.iter().enumerate() {
                if i != victim && survivors_leader.is_none() {
                    survivors_leader = meta_leader(&http, node).await;
                }
            }
            nodes[victim].process.start()?;
            restarted_at = Some(Instant::now());
            say(
                t0,
                &format!(
                    "restarted {} after {} down (meta leader as the others saw it: {})",
                    nodes[victim].name,
                    secs(at.elapsed()),
                    survivors_leader.as_deref().unwrap_or("none")
                ),
            );
        }
        if let Some(at) = restarted_at
            && summary.recovered_in.is_none()
            && healthy(&http, &nodes[victim]).await
        {
            summary.recovered_in = Some(at.elapsed());
            let leader = meta_leader(&http, &nodes[victim]).await;
            say(
                t0,
                &format!(
                    "{} is healthy again (JetStream current) {} after its restart; meta leader {}",
                    nodes[victim].name,
                    secs(at.elapsed()),
                    leader.as_deref().unwrap_or("unknown")
                ),
            );
        }
        if done && summary.recovered_in.is_some() {
            break;
        }
        if Instant::now() > load_deadline {
            summary.violations.push(format!(
                "{} did not recover by the end of the load (restarted: {})",
                nodes[victim].name,
                restarted_at.is_some()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let submitter_timeout = load_deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(submitter_timeout, submitter)
        .await
        .is_err()
    {
        summary
            .violations
            .push("the load did not finish in time".into());
    }
    let load_ended = Instant::now();
    say(
        t0,
        &format!(
            "all {} sagas submitted in {}; waiting for every saga to be terminal",
            config.sagas,
            secs(load_started.elapsed())
        ),
    );
    // Bounded by the whole-saga deadline (5 min by default) and a margin: a saga not terminal
    // by then is lost.
    if let Err(error) = chaos::wait_for_quiet(&ends, &client, Duration::from_secs(330)).await {
        say(t0, &format!("{error:#}"));
    }
    watcher.abort();
    let planned = planned.lock().await;
    let (outcomes, violations) =
        chaos::check_promises(&ends, &client, &planned, None, 0, true).await?;
    summary.outcomes = outcomes;
    for violation in violations {
        match violation.kind {
            Broken::Lost => summary.lost += 1,
            Broken::Duplicate => summary.duplicates += 1,
            Broken::Other => {}
        }
        summary.violations.push(violation.what);
    }
    if let Some(killed) = killed_at {
        let mut times: Vec<Instant> = finishes
            .lock()
            .await
            .iter()
            .copied()
            .filter(|t| *t >= killed && *t <= load_ended)
            .collect();
        times.sort();
        let mut edges = vec![killed];
        edges.extend(times);
        edges.push(load_ended);
        summary.longest_stall = edges.windows(2).map(|w| w[1] - w[0]).max();
    }
    summary.slowest_saga = slowest_saga(&database_url).await?;
    say(t0, "checks done; stopping every process");
    summary.violations.extend(fleet.stop());
    for node in nodes.iter_mut() {
        node.process.terminate();
    }
    drop(fleet);
    drop(pg);
    summary.elapsed = t0.elapsed();
    if summary.violations.is_empty() && !config.keep_logs {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(summary)
}
