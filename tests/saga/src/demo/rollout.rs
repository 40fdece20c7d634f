//! The zero-downtime redeploy demonstration: two replicas of every HTTP service behind a local
//! nginx (routing each path prefix to its service, as the Istio VirtualService does), `siege
//! -c2` against a URL file mixing reads and saga starts, and meanwhile a rolling restart of
//! every service, one replica at a time: SIGTERM, `/readyz` must turn 503 before the process
//! exits, it must exit 0, it starts again, `/readyz` 200, and only then the next replica. A
//! client loop starts sagas through nginx with an `Idempotency-Key` each (siege cannot give each
//! URL its own header). At the end siege must report 100.00 % availability, and every saga
//! started during the run must be terminal with the outcome its kind calls for.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

use super::{find_program, say, secs, secs_or_na};
use crate::chaos::{self, Broken, Client, Endpoints};
use crate::processes::{self, Fleet, Process, SERVICES, free_port};

/// nginx's passive health: after this many failed attempts (a refused connection, a timeout, a
/// 502 or a 503) a replica is left alone for [`FAIL_TIMEOUT_SECS`].
const MAX_FAILS: u32 = 1;
/// How long nginx leaves a failed replica alone before trying it again.
const FAIL_TIMEOUT_SECS: u64 = 2;
/// `SAGA_SHUTDOWN_DELAY_MS` of every service: how long it keeps serving, not ready, after
/// SIGTERM.
const SHUTDOWN_DELAY_MS: u64 = 500;

/// What to run.
#[derive(Clone, Debug)]
pub struct RolloutConfig {
    /// How long siege runs; the rolling restart happens meanwhile.
    pub seconds: u64,
    /// siege's concurrent users.
    pub concurrency: usize,
    /// siege's random delay before each request, at most this many seconds.
    pub delay: f64,
    /// Keyed saga starts per second from the demo's own client.
    pub keyed_per_second: u32,
    /// How long a restarted replica serves before the next one is stopped (at least nginx's
    /// `fail_timeout`, so that nginx tries it again first).
    pub settle: Duration,
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Keep the work directory (every process's log) even when nothing went wrong.
    pub keep_logs: bool,
}

impl RolloutConfig {
    /// 60 s of `siege -c2` without delay (as Debian's siegerc), 4 keyed saga starts per
    /// second, the binaries in `bin_dir` (default: next to the running executable, or
    /// `SAGA_BIN_DIR`).
    pub fn new(seconds: u64, bin_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Ok(Self {
            seconds,
            concurrency: 2,
            delay: 0.0,
            keyed_per_second: 4,
            settle: Duration::from_secs(FAIL_TIMEOUT_SECS + 1),
            bin_dir: processes::bin_dir_or(bin_dir)?,
            keep_logs: false,
        })
    }
}

/// What the demonstration saw.
#[derive(Clone, Debug, Default)]
pub struct RolloutSummary {
    /// Requests siege made (its transactions and its failures).
    pub requests: u64,
    /// Requests siege counted as failed (a connection error or a 5xx answer).
    pub failed: u64,
    /// siege's availability, in percent.
    pub availability: Option<f64>,
    /// Sagas started during the run that are not terminal, or not ending as their kind calls
    /// for, or were never started.
    pub lost: usize,
    /// Sagas started with an `Idempotency-Key` by the demo's client, and its failed attempts
    /// (5xx answers or connection errors; each was retried with the same key).
    pub keyed: (usize, usize),
    /// Sagas started during the run, by final state.
    pub outcomes: BTreeMap<String, usize>,
    /// Replicas restarted.
    pub restarts: usize,
    /// Of those, the ones whose `/readyz` answered 503 before the process exited.
    pub not_ready_before_exit: usize,
    /// Of those, the ones that exited 0 within 30 s of SIGTERM.
    pub clean_exits: usize,
    /// The longest time from SIGTERM to exit.
    pub longest_drain: Option<Duration>,
    /// Requests nginx passed to a second replica (from its access log).
    pub retried: usize,
    /// How long the run took.
    pub elapsed: Duration,
    /// What went wrong, each described.
    pub violations: Vec<String>,
    /// Where the logs are.
    pub work_dir: PathBuf,
}

impl std::fmt::Display for RolloutSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "requests={} failed={} availability={} lost={} restarts={} \
             not_ready_before_exit={}/{} clean_exits={}/{} longest_drain={} keyed_sagas={} \
             keyed_failed={} nginx_retried={} sagas_during_run[{}] elapsed={} violations={}",
            self.requests,
            self.failed,
            self.availability
                .map_or_else(|| "n/a".to_owned(), |a| format!("{a:.2}%")),
            self.lost,
            self.restarts,
            self.not_ready_before_exit,
            self.restarts,
            self.clean_exits,
            self.restarts,
            secs_or_na(self.longest_drain),
            self.keyed.0,
            self.keyed.1,
            self.retried,
            outcomes.join(" "),
            secs(self.elapsed),
            self.violations.len(),
        )
    }
}

/// The nginx configuration: an upstream of both replicas per service, a location per path
/// prefix, and the retry rules.
fn nginx_config(dir: &Path, port: u16, fleet: &Fleet) -> String {
    let d = dir.display();
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Generated by saga-rollout-demo: the local stand-in for the Istio gateway and\n\
         # VirtualService (deploy/istio), on loopback only.\n\
         daemon off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/logs/error.log notice;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20 log_format upstreams '$time_iso8601 \"$request\" $status rt=$request_time '\n\
         \x20                      'upstream=$upstream_addr upstream_status=$upstream_status '\n\
         \x20                      'key=\"$http_idempotency_key\"';\n\
         \x20 access_log {d}/logs/access.log upstreams;\n\
         \x20 client_body_temp_path {d}/tmp/body;\n\
         \x20 proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp/scgi;\n\
         \n\
         \x20 # A POST that carries an Idempotency-Key, on a route whose service stores the key\n\
         \x20 # with the request's hash: a second delivery answers with the first one's result.\n\
         \x20 map \"$request_method:$http_idempotency_key\" $keyed_post {{\n\
         \x20   default 0;\n\
         \x20   \"~^POST:.+\" 1;\n\
         \x20 }}\n"
    );
    // Passive health only (nginx without the commercial active checks): a replica that refused
    // a connection, timed out, or answered 502/503 is left alone for fail_timeout, then tried
    // again. No upstream keep-alive: every request opens its own connection, so a replica that
    // stopped listening refuses it before anything was sent, and such a request, POST or not,
    // can go to the other replica safely.
    for service in SERVICES {
        let _ = writeln!(c, "  upstream {} {{", service.binary);
        for port in fleet.ports_of(service.binary) {
            let _ = writeln!(
                c,
                "    server 127.0.0.1:{port} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_SECS}s;"
            );
        }
        let _ = writeln!(c, "  }}");
    }
    let _ = writeln!(
        c,
        "\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port};\n\
         \x20   proxy_set_header Host $http_host;\n\
         \x20   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20   proxy_connect_timeout 1s;\n\
         \x20   proxy_send_timeout 10s;\n\
         \x20   proxy_read_timeout 30s;\n\
         \x20   # When another replica may get the request (the Istio routes' retryOn:\n\
         \x20   # connect-failure, reset, gateway-error). nginx never passes a request with a\n\
         \x20   # non-idempotent method (POST, PATCH) on once it was sent to a replica, unless\n\
         \x20   # `non_idempotent` is listed: a POST that reached a replica which then failed may\n\
         \x20   # have acted, and sending it again could act twice. So everywhere GET, HEAD, PUT\n\
         \x20   # and DELETE are retried on error, timeout, 502 and 503, and a POST only when its\n\
         \x20   # connection failed before it was sent; only the keyed locations below add\n\
         \x20   # non_idempotent.\n\
         \x20   proxy_next_upstream error timeout http_502 http_503;\n\
         \x20   proxy_next_upstream_tries 3;\n\
         \x20   proxy_next_upstream_timeout 10s;\n"
    );
    // Keyed POST routes first: exact and regex locations win over the prefix ones below, and
    // the regex ones are tried in order.
    for service in SERVICES {
        for (i, path) in service.keyed_posts.iter().enumerate() {
            let named = format!("@{}_keyed_{i}", service.binary.replace('-', "_"));
            let _ = writeln!(
                c,
                "    location {path} {{\n\
                 \x20     # A POST with an Idempotency-Key may go to the other replica even after it\n\
                 \x20     # was sent: the service answers a second delivery with the first result.\n\
                 \x20     error_page 418 = {named};\n\
                 \x20     if ($keyed_post) {{ return 418; }}\n\
                 \x20     proxy_pass http://{};\n\
                 \x20   }}\n\
                 \x20   location {named} {{\n\
                 \x20     proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n\
                 \x20     proxy_pass http://{};\n\
                 \x20   }}",
                service.binary, service.binary
            );
        }
    }
    for service in SERVICES {
        for prefix in service.routes {
            let _ = writeln!(
                c,
                "    location ~ ^{prefix}(/|$) {{ proxy_pass http://{}; }}",
                service.binary
            );
        }
    }
    let _ = writeln!(
        c,
        "    location / {{\n\
         \x20     default_type application/problem+json;\n\
         \x20     return 404 '{{\"type\":\"about:blank\",\"title\":\"Not Found\",\"status\":404,\"code\":\"route_not_found\"}}';\n\
         \x20   }}\n\
         \x20 }}\n\
         }}"
    );
    c
}

/// Starts nginx as our own process (`daemon off`, its pid file and logs in `dir`), after
/// `nginx -t` accepted the configuration.
async fn start_nginx(
    nginx: &Path,
    dir: &Path,
    port: u16,
    fleet: &Fleet,
) -> anyhow::Result<Process> {
    for sub in ["logs", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(dir, port, fleet))?;
    let args = vec![
        "-e".to_owned(),
        dir.join("logs/error.log").to_string_lossy().to_string(),
        "-p".to_owned(),
        format!("{}/", dir.display()),
        "-c".to_owned(),
        conf.to_string_lossy().to_string(),
    ];
    let tested = std::process::Command::new(nginx)
        .arg("-t")
        .args(&args)
        .output()?;
    if !tested.status.success() {
        bail!(
            "nginx -t refused {}: {}",
            conf.display(),
            String::from_utf8_lossy(&tested.stderr)
        );
    }
    let mut process = Process::new("nginx", nginx, dir.join("logs/nginx.out"));
    process.args = args;
    process.start()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes::listening(port) {
        if Instant::now() > deadline || !process.running() {
            bail!("nginx did not start; see {}", dir.join("logs").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(process)
}

/// One rolling-restart step, as seen from outside.
struct Restart {
    /// From SIGTERM until `/readyz` answered 503 (`None`: never seen).
    not_ready_after: Option<Duration>,
    /// Whether a poll found the port closed before any 503.
    refused_first: bool,
    /// How it exited, and when.
    exit: Option<(ExitStatus, Duration)>,
    /// From the start until `/readyz` 200.
    ready_after: Duration,
}

/// SIGTERM, polling `/readyz` every few milliseconds on fresh connections until the process
/// exited; waits for the exit (30 s at most, then SIGKILL); starts it again and waits for
/// `/readyz` 200.
async fn restart(process: &mut Process, work: &Path) -> anyhow::Result<Restart> {
    let port = process.http.context("a service without a port")?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_millis(300))
            .build()?;
        tokio::spawn(async move {
            let started = Instant::now();
            let mut refused_first = false;
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(40) {
                match http
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 503 => {
                        return (Some(started.elapsed()), refused_first);
                    }
                    Ok(_) => {}
                    Err(_) => refused_first = true,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (None, refused_first)
        })
    };
    // The poller's first request goes out before the signal.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let signalled = Instant::now();
    process.signal_term()?;
    let exit = match process.wait_exit(Duration::from_secs(30)).await {
        Some(status) => Some((status, signalled.elapsed())),
        None => {
            process.kill();
            None
        }
    };
    stop.store(true, Ordering::SeqCst);
    let (not_ready, refused_first) = poller.await?;
    // The poller's clock started a few milliseconds before the signal.
    let not_ready_after = not_ready.map(|d| d.saturating_sub(Duration::from_millis(5)));
    let started = Instant::now();
    process.start()?;
    processes::wait_ready(port, Duration::from_secs(60), work).await?;
    Ok(Restart {
        not_ready_after,
        refused_first,
        exit,
        ready_after: started.elapsed(),
    })
}

/// A customer with a linked chat and a completed saga, made before siege starts: what its
/// URL file reads.
struct Warm {
    customer: String,
    mission_id: String,
    saga_id: String,
}

async fn warm_up(client: &Client, gateway: u16, n: usize) -> anyhow::Result<Vec<Warm>> {
    use reqwest::Method;
    let gateway = [gateway];
    let mut warm = Vec::new();
    for i in 0..n {
        let customer = format!("rollout-warm-{i}");
        let chat = 900_000 + i64::try_from(i).unwrap_or(0);
        client
            .call(
                Method::PUT,
                &gateway,
                &format!("/v1/telegram/chats/{customer}"),
                Some(&json!({"chat_id": chat})),
                None,
            )
            .await?;
        let (status, mission) = client
            .call(
                Method::POST,
                &gateway,
                "/v1/missions",
                Some(&json!({"customer_id": customer, "title": format!("Warm-up quest {i}"), "reward_points": 10})),
                None,
            )
            .await?;
        if status != 201 {
            bail!("creating a mission through nginx: {status} {mission}");
        }
        let mission_id = mission["id"].as_str().context("mission id")?.to_owned();
        let (status, saga) = client
            .call(
                Method::POST,
                &gateway,
                "/v1/sagas",
                Some(&json!({"type": "mission_reward", "input": {"mission_id": mission_id}})),
                Some(&format!("rollout-warm-{i}")),
            )
            .await?;
        if status != 202 {
            bail!("starting a saga through nginx: {status} {saga}");
        }
        let saga_id = saga["id"].as_str().context("saga id")?.to_owned();
        warm.push(Warm {
            customer,
            mission_id,
            saga_id,
        });
    }
    for w in &warm {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, saga) = client
                .call(
                    Method::GET,
                    &gateway,
                    &format!("/v1/sagas/{}", w.saga_id),
                    None,
                    None,
                )
                .await?;
            if saga["state"] == "completed" {
                break;
            }
            if Instant::now() > deadline {
                bail!("warm-up saga {} did not complete: {saga}", w.saga_id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(warm)
}

/// siege's URL file: reads of sagas, missions, wallets, the budget and chats, and saga starts
/// (for a mission already rewarded: each such saga is refused at its first step and ends
/// without effect).
fn url_file(base: &str, warm: &[Warm]) -> String {
    let mut urls = String::new();
    for w in warm {
        let _ = writeln!(urls, "{base}/v1/sagas/{}", w.saga_id);
        let _ = writeln!(urls, "{base}/v1/missions/{}", w.mission_id);
        let _ = writeln!(urls, "{base}/v1/wallets/{}", w.customer);
        let _ = writeln!(urls, "{base}/v1/telegram/chats/{}", w.customer);
        let _ = writeln!(urls, "{base}/v1/rewards/budget");
        let _ = writeln!(
            urls,
            "{base}/v1/sagas POST {{\"type\":\"mission_reward\",\"input\":{{\"mission_id\":\"{}\"}}}}",
            w.mission_id
        );
    }
    urls
}

fn siege_rc(delay: f64) -> String {
    format!(
        "verbose = false\ncolor = off\nquiet = false\njson_output = true\nshow-logfile = false\n\
         logging = false\nparser = false\nprotocol = HTTP/1.1\nchunked = true\ncache = false\n\
         connection = close\ndelay = {delay}\ninternet = false\nbenchmark = false\n\
         failures = 1000000\ntimeout = 30\nurl-escaping = true\n"
    )
}

/// siege's JSON summary: (transactions, failed transactions, availability).
fn parse_siege(output: &str) -> Option<(u64, u64, f64)> {
    let start = output.find('{')?;
    let end = output.rfind('}')?;
    let summary: Value = serde_json::from_str(output.get(start..=end)?).ok()?;
    Some((
        summary["transactions"].as_u64()?,
        summary["failed_transactions"].as_u64()?,
        summary["availability"].as_f64()?,
    ))
}

/// Runs the demonstration.
pub async fn run(config: RolloutConfig) -> anyhow::Result<RolloutSummary> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t0 = Instant::now();
    let nginx = find_program("nginx").context(
        "nginx is not installed. On Debian or Ubuntu: `apt-get install -y nginx` (the demo runs \
         its own nginx process on a loopback port; the system service is not used)",
    )?;
    let siege = find_program("siege")
        .context("siege is not installed. On Debian or Ubuntu: `apt-get install -y siege`")?;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let work = processes::work_dir("saga-rollout-demo", clock);
    std::fs::create_dir_all(&work)?;
    let mut summary = RolloutSummary {
        work_dir: work.clone(),
        ..RolloutSummary::default()
    };
    say(t0, &format!("work dir {}", work.display()));

    let nats_port = free_port()?;
    let mut nats = Process::new("nats-server", "nats-server", work.join("nats-server.log"));
    nats.args = vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        nats_port.to_string(),
        "-js".into(),
        "-sd".into(),
        work.join("nats").to_string_lossy().to_string(),
    ];
    nats.start()?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let (pg, database_url) = processes::fresh_database(&work, "saga_rollout_demo").await?;
    say(
        t0,
        &format!(
            "nats-server -js on {nats_url}, PostgreSQL of its own at {}",
            database_url.rsplit('@').next().unwrap_or_default()
        ),
    );
    let gateway_port = free_port()?;
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let stand_in_port = free_port()?;
    let env = |_: &processes::Service, _| {
        let mut env = processes::service_env(&database_url, &nats_url, stand_in_port);
        // After SIGTERM, keep serving this long with `/readyz` at 503 before closing the
        // listener (what a load balancer needs to see the replica leave); a platform without
        // the setting ignores it.
        env.push((
            "SAGA_SHUTDOWN_DELAY_MS".into(),
            SHUTDOWN_DELAY_MS.to_string(),
        ));
        env
    };
    // A service calling another one goes through the gateway, as through a Kubernetes Service.
    let url_of = |_: &str| gateway.clone();
    let mut fleet = Fleet::plan(
        &config.bin_dir,
        &work,
        2,
        stand_in_port,
        &env,
        Some(&url_of),
    )?;
    fleet.start_first()?;
    fleet.start_rest(&work).await?;
    say(
        t0,
        &format!(
            "{} service processes ready, 2 of each: {}",
            fleet.services.len(),
            SERVICES
                .iter()
                .map(|s| s.binary)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let nginx_dir = work.join("nginx");
    let mut nginx = start_nginx(&nginx, &nginx_dir, gateway_port, &fleet).await?;
    say(
        t0,
        &format!(
            "nginx on {gateway} (config {}): /v1/sagas /v1/dead-letters /ui → orchestrators, \
             /v1/missions → mission, /v1/rewards → reward, /v1/wallets → wallet, /v1/telegram → telegram",
            nginx_dir.join("nginx.conf").display()
        ),
    );

    let ends = Endpoints::of(&fleet, &database_url, &nats_url);
    let client = Client::new(Duration::from_secs(10))?;
    let warm = warm_up(&client, gateway_port, 4).await?;
    let keyed_total = usize::try_from(config.seconds * u64::from(config.keyed_per_second))
        .unwrap_or(usize::MAX)
        .max(1);
    let planned = chaos::prepare(&ends, &client, keyed_total).await?;
    say(
        t0,
        &format!(
            "warm-up sagas completed through nginx; {keyed_total} missions prepared for keyed saga starts"
        ),
    );

    let mut db = PgConnection::connect(&database_url).await?;
    let (run_started,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT now()").fetch_one(&mut db).await?;
    let urls = work.join("siege-urls.txt");
    std::fs::write(&urls, url_file(&gateway, &warm))?;
    let rc = work.join("siegerc");
    std::fs::write(&rc, siege_rc(config.delay))?;
    let mut siege_process = Process::new("siege", &siege, work.join("siege.log"));
    siege_process.args = vec![
        "-R".into(),
        rc.to_string_lossy().to_string(),
        format!("-c{}", config.concurrency),
        format!("-t{}S", config.seconds),
        format!("-d{}", config.delay),
        "-T".into(),
        "application/json".into(),
        "-H".into(),
        format!("Authorization: Bearer {}", processes::RunTokens::get().load),
        "-f".into(),
        urls.to_string_lossy().to_string(),
    ];
    siege_process.start()?;
    let siege_started = Instant::now();
    say(
        t0,
        &format!(
            "siege -c{} -t{}S -d{} -f {} (GET sagas, missions, wallets, chats, budget; POST /v1/sagas)",
            config.concurrency,
            config.seconds,
            config.delay,
            urls.display()
        ),
    );
    let submitted = Arc::new(AtomicUsize::new(0));
    let planned = Arc::new(Mutex::new(planned));
    let submitter = chaos::spawn_submitter(
        client.clone(),
        vec![gateway_port],
        planned.clone(),
        submitted.clone(),
        1,
        // Paced to end within siege's run (each start also takes its own time).
        Duration::from_secs(config.seconds) * 4 / 5,
        "rollout",
    );
    say(
        t0,
        &format!(
            "and {} keyed saga starts per second through nginx (Idempotency-Key rollout-<n>)",
            config.keyed_per_second
        ),
    );

    // The rolling restart, one replica at a time, after a few seconds of steady traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut drains = Vec::new();
    for i in 0..fleet.services.len() {
        if siege_started.elapsed() >= Duration::from_secs(config.seconds) {
            summary.violations.push(format!(
                "siege ended before {} was restarted: give it more --seconds",
                fleet.services[i].name
            ));
            break;
        }
        let name = fleet.services[i].name.clone();
        let step = restart(&mut fleet.services[i], &work).await?;
        summary.restarts += 1;
        let mut line = format!("restarted {name}: SIGTERM → ");
        match step.not_ready_after {
            Some(d) => {
                summary.not_ready_before_exit += 1;
                let _ = write!(line, "/readyz 503 after {} ms → ", d.as_millis());
            }
            None => {
                line.push_str("/readyz never answered 503 → ");
                summary.violations.push(format!(
                    "{name}: /readyz never answered 503 between SIGTERM and its exit{}",
                    if step.refused_first {
                        " (the port closed first)"
                    } else {
                        ""
                    }
                ));
            }
        }
        match step.exit {
            Some((status, took)) => {
                drains.push(took);
                let code = status
                    .code()
                    .map_or_else(|| status.to_string(), |c| c.to_string());
                let _ = write!(line, "exited {code} after {} ms", took.as_millis());
                if status.success() {
                    summary.clean_exits += 1;
                } else {
                    summary
                        .violations
                        .push(format!("{name}: exited {status} after SIGTERM"));
                }
            }
            None => {
                line.push_str("still running after 30 s (killed)");
                summary
                    .violations
                    .push(format!("{name}: did not exit within 30 s of SIGTERM"));
            }
        }
        let _ = write!(line, " → ready again after {}", secs(step.ready_after));
        say(t0, &line);
        tokio::time::sleep(config.settle).await;
    }
    summary.longest_drain = drains.into_iter().max();
    say(t0, "rolling restart done; waiting for siege to finish");

    let siege_deadline = Duration::from_secs(config.seconds + 60);
    let status = loop {
        if let Some(status) = siege_process.wait_exit(Duration::from_millis(500)).await {
            break Some(status);
        }
        if siege_started.elapsed() > siege_deadline {
            siege_process.kill();
            break None;
        }
    };
    let output = std::fs::read_to_string(work.join("siege.log")).unwrap_or_default();
    match (status, parse_siege(&output)) {
        (Some(_), Some((transactions, failed, availability))) => {
            summary.requests = transactions + failed;
            summary.failed = failed;
            summary.availability = Some(availability);
            if failed > 0 || availability < 100.0 {
                summary.violations.push(format!(
                    "siege: {failed} failed requests, availability {availability:.2} % (see {} and {})",
                    work.join("siege.log").display(),
                    nginx_dir.join("logs/access.log").display()
                ));
            }
        }
        _ => summary.violations.push(format!(
            "siege did not report (exit {status:?}); see {}",
            work.join("siege.log").display()
        )),
    }
    say(
        t0,
        &format!(
            "siege done: {} requests, {} failed; waiting for the keyed starts",
            summary.requests, summary.failed
        ),
    );
    let submitter_deadline = Duration::from_secs(config.seconds + 120);
    if tokio::time::timeout(submitter_deadline, submitter)
        .await
        .is_err()
    {
        summary
            .violations
            .push("the keyed saga starts did not finish in time".into());
    }
    summary.keyed = (
        submitted.load(Ordering::SeqCst),
        client.failures(gateway_port),
    );
    if summary.keyed.1 > 0 {
        summary.violations.push(format!(
            "{} keyed saga starts failed through nginx (retried with the same key)",
            summary.keyed.1
        ));
    }

    say(t0, "waiting for every saga to be terminal");
    if let Err(error) = chaos::wait_for_quiet(&ends, &client, Duration::from_secs(180)).await {
        say(t0, &format!("{error:#}"));
    }
    let during: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state::text, count(*) FROM orchestrator.sagas WHERE created_at >= $1 GROUP BY 1",
    )
    .bind(run_started)
    .fetch_all(&mut db)
    .await?;
    let terminal = ["completed", "compensated", "failed", "cancelled"];
    for (state, count) in during {
        let count = usize::try_from(count).unwrap_or(0);
        if !terminal.contains(&state.as_str()) {
            summary.lost += count;
            summary.violations.push(format!(
                "{count} sagas started during the run are still {state}"
            ));
        }
        summary.outcomes.insert(state, count);
    }
    let planned = planned.lock().await;
    let (_, violations) = chaos::check_promises(&ends, &client, &planned, None, 0, false).await?;
    for violation in violations {
        // A saga still running is counted above already.
        let still_open = ["ended running", "ended compensating"]
            .iter()
            .any(|s| violation.what.contains(s));
        if violation.kind == Broken::Lost && !still_open {
            summary.lost += 1;
        }
        summary.violations.push(violation.what);
    }
    let access = std::fs::read_to_string(nginx_dir.join("logs/access.log")).unwrap_or_default();
    // `$upstream_addr` lists every replica tried, comma-separated.
    summary.retried = access
        .lines()
        .filter_map(|l| {
            let tried = l.split(" upstream=").nth(1)?;
            tried.split(" upstream_status=").next()
        })
        .filter(|tried| tried.contains(','))
        .count();

    say(t0, "checks done; stopping every process");
    summary.violations.extend(fleet.stop());
    nginx.terminate();
    nats.terminate();
    drop(fleet);
    drop(pg);
    summary.elapsed = t0.elapsed();
    if summary.violations.is_empty() && !config.keep_logs {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(summary)
}
