//! The platform as separate processes, shared by the chaos suite and the demonstrations: spare
//! loopback ports, supervised child processes with their logs in a work directory, a
//! PostgreSQL of the run's own (`initdb`, run as the `postgres` user when root), readiness
//! waits, and the service fleet (two replicas of every service plus the Telegram stand-in).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sqlx::{Connection, Executor, PgConnection};

/// One service binary of the platform: its listen-address variable, the public path prefixes
/// it serves (what the gateway routes to it), the exact paths where a POST carrying an
/// `Idempotency-Key` is safe to send twice (the service stores the key with the request's
/// hash), and the other services it calls (`(variable, binary)`: the variable gets that
/// service's base URL).
#[derive(Clone, Copy, Debug)]
pub struct Service {
    /// The binary (`target/<profile>/<binary>`).
    pub binary: &'static str,
    /// The variable naming its listen address.
    pub addr_var: &'static str,
    /// Public path prefixes it serves (whole segments).
    pub routes: &'static [&'static str],
    /// Paths (`=` exact, or `~` regex) where a POST with an `Idempotency-Key` may be retried.
    pub keyed_posts: &'static [&'static str],
    /// Services it calls: `(variable, binary)`.
    pub calls: &'static [(&'static str, &'static str)],
    /// The variable that gets the run's service token (scopes `game` and `notify`), for a
    /// service that calls others.
    pub service_token: Option<&'static str>,
}

/// The services every run starts, two replicas each.
pub const SERVICES: &[Service] = &[
    Service {
        binary: "orchestrator",
        addr_var: "SAGA_ORCHESTRATOR_ADDR",
        routes: &["/v1/sagas", "/v1/definitions", "/v1/dead-letters", "/ui"],
        keyed_posts: &["= /v1/sagas"],
        calls: &[],
        service_token: None,
    },
    Service {
        binary: "mission-worker",
        addr_var: "SAGA_MISSION_ADDR",
        routes: &["/v1/missions"],
        keyed_posts: &[],
        calls: &[],
        service_token: None,
    },
    Service {
        binary: "reward-worker",
        addr_var: "SAGA_REWARD_ADDR",
        routes: &["/v1/rewards"],
        keyed_posts: &[],
        calls: &[],
        service_token: None,
    },
    Service {
        binary: "wallet-worker",
        addr_var: "SAGA_WALLET_ADDR",
        routes: &["/v1/wallets"],
        keyed_posts: &[],
        calls: &[],
        service_token: None,
    },
    Service {
        binary: "telegram-worker",
        addr_var: "SAGA_TELEGRAM_ADDR",
        routes: &["/v1/telegram"],
        keyed_posts: &[],
        calls: &[],
        service_token: None,
    },
    Service {
        binary: "gift-worker",
        addr_var: "SAGA_GIFT_ADDR",
        routes: &["/v1/gifts"],
        keyed_posts: &["~ ^/v1/gifts/[^/]+/exchanges$"],
        calls: &[
            ("SAGA_ORCHESTRATOR_URL", "orchestrator"),
            ("SAGA_TELEGRAM_URL", "telegram-worker"),
        ],
        service_token: Some("SAGA_GIFT_SERVICE_TOKEN"),
    },
];

/// Finds the directory of the service binaries: `SAGA_BIN_DIR`, or the target directory of the
/// running executable (a test runs from `target/<profile>/deps`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("SAGA_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable without a directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    check_bin_dir(&dir)?;
    Ok(dir)
}

/// `dir` when given (it must hold every service binary), else [`bin_dir`].
pub fn bin_dir_or(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(dir) => {
            check_bin_dir(&dir)?;
            Ok(dir)
        }
        None => bin_dir(),
    }
}

/// Fails unless every service binary is in `dir`.
pub fn check_bin_dir(dir: &Path) -> anyhow::Result<()> {
    for binary in SERVICES
        .iter()
        .map(|s| s.binary)
        .chain(["telegram-stand-in"])
    {
        if !dir.join(binary).exists() {
            bail!(
                "no {binary} in {}: build the services first (cargo build --workspace --bins)",
                dir.display()
            );
        }
    }
    Ok(())
}

/// A tiny deterministic random source (fault schedules).
pub struct Dice(pub u64);

impl Dice {
    /// The next number.
    pub fn roll(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.roll() % n.max(1)
    }
}

/// A loopback port nobody listens on, never the same one twice in a run.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port")
}

/// Whether something accepts connections on loopback `port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// One supervised process, its output appended to `log`. Dropping it kills it.
pub struct Process {
    /// A short name (`orchestrator-1`).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment on top of ours.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// The running child, if any.
    pub child: Option<Child>,
    /// Its HTTP port, if it serves one.
    pub http: Option<u16>,
}

impl Process {
    /// A process not started yet.
    pub fn new(name: &str, program: impl Into<PathBuf>, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log,
            child: None,
            http: None,
        }
    }

    /// Starts it (again).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to 10 s; returns whether it exited 0 in time, and how long
    /// it took (a process that does not exit in time is killed).
    pub fn terminate(&mut self) -> (bool, Duration) {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return (true, Duration::ZERO);
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                return (status.success(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        (false, started.elapsed())
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("not running")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(())
    }

    /// Waits (asynchronously, polling every 5 ms) up to `timeout` for the process to exit;
    /// `None` if it still runs (it is then left running).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether it still runs (a process that exited is reaped).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this process runs as root (then PostgreSQL runs as `postgres`).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// A PostgreSQL instance of the run's own, in its work directory.
pub struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    /// Its loopback port.
    pub port: u16,
    as_postgres: bool,
}

impl OwnPostgres {
    fn find_bin() -> Option<PathBuf> {
        if let Ok(dir) = std::env::var("SAGA_CHAOS_PG_BIN") {
            return Some(PathBuf::from(dir));
        }
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop()
    }

    fn pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let status = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
        } else {
            Command::new(&program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
        };
        if !status.success() {
            bail!("{tool} {args:?} failed: {status}");
        }
        Ok(())
    }

    /// `initdb` in `work/pg` and a start; `None` when no PostgreSQL binaries are installed.
    pub async fn create(work: &Path) -> anyhow::Result<Option<Self>> {
        let Some(bin) = Self::find_bin() else {
            return Ok(None);
        };
        let root = running_as_root();
        let dir = work.join("pg");
        std::fs::create_dir_all(&dir)?;
        if root {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(work)
                .status()?;
        }
        let me = Self {
            bin,
            dir,
            port: free_port()?,
            as_postgres: root,
        };
        let dir = me.dir.to_string_lossy().to_string();
        me.pg(
            "initdb",
            &[
                "-D",
                &dir,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        me.start()?;
        Ok(Some(me))
    }

    /// Starts the server (waits until it accepts connections).
    pub fn start(&self) -> anyhow::Result<()> {
        let dir = self.dir.to_string_lossy().to_string();
        let log = self.dir.join("server.log").to_string_lossy().to_string();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} -c max_connections=200",
            self.port
        );
        self.pg(
            "pg_ctl",
            &[
                "-D", &dir, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        )
    }

    /// A crash and a restart: `immediate` stops without a checkpoint, so the start recovers
    /// from the WAL.
    pub fn crash_and_restart(&self) -> anyhow::Result<()> {
        let dir = self.dir.to_string_lossy().to_string();
        self.pg("pg_ctl", &["-D", &dir, "-m", "immediate", "-w", "stop"])?;
        self.start()
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().to_string();
        let _ = self.pg("pg_ctl", &["-D", &dir, "-m", "fast", "-w", "stop"]);
    }
}

/// The run's database: a PostgreSQL of its own in `work` when the machine has the binaries
/// (else the server named by `SAGA_TEST_DATABASE_URL`), and a fresh database `database` on it
/// (suffixed with the process id on a shared server). Returns the server and the URL.
pub async fn fresh_database(
    work: &Path,
    database: &str,
) -> anyhow::Result<(Option<OwnPostgres>, String)> {
    let pg = OwnPostgres::create(work).await?;
    let (admin_url, database_url) = match &pg {
        Some(pg) => (pg.url("postgres"), pg.url(database)),
        None => {
            let admin = std::env::var("SAGA_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap_or_default();
            (admin, format!("{base}/{database}_{}", std::process::id()))
        }
    };
    let db_name = database_url
        .rsplit('/')
        .next()
        .unwrap_or(database)
        .to_owned();
    let mut admin = PgConnection::connect(&admin_url).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
        )))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .await?;
    admin.close().await?;
    Ok((pg, database_url))
}

/// The API tokens of this run's processes, drawn once per run: `admin` for the run's own client
/// (it freezes wallets, holds missions, reads metrics), `load` (scopes `game` and `read`) for a
/// load generator such as siege.
pub struct RunTokens {
    /// Every scope.
    pub admin: String,
    /// Starts sagas, reads.
    pub load: String,
    /// Starts sagas, sends Telegram messages: a service calling others.
    pub service: String,
}

impl RunTokens {
    /// The run's tokens.
    pub fn get() -> &'static RunTokens {
        static TOKENS: std::sync::OnceLock<RunTokens> = std::sync::OnceLock::new();
        TOKENS.get_or_init(|| {
            let token = |name: &str| format!("{name}-{}", uuid::Uuid::new_v4().simple());
            RunTokens {
                admin: token("admin"),
                load: token("load"),
                service: token("service"),
            }
        })
    }

    /// `SAGA_API_TOKENS`: their hashes, names and scopes.
    pub fn config(&self) -> String {
        let entry = |name: &str, token: &str, scopes: &[&str]| serde_json::json!({"name": name, "sha256": runtime::auth::sha256_hex(token), "scopes": scopes});
        serde_json::json!({"tokens": [
            entry("run-admin", &self.admin, &["admin"]),
            entry("run-load", &self.load, &["game", "read"]),
            entry("run-service", &self.service, &["game", "notify"]),
        ]})
        .to_string()
    }

    /// An HTTP client presenting the admin token on every request.
    pub fn admin_client(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value: reqwest::header::HeaderValue = format!("Bearer {}", self.admin).parse()?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        Ok(reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .build()?)
    }
}

/// The settings every service process of a run gets: its database and NATS, short step
/// timeouts, the Telegram stand-in as the Bot API, the run's API tokens, JSON logs (with the
/// timer lines the chaos suite measures).
pub fn service_env(
    database_url: &str,
    nats_url: &str,
    stand_in_port: u16,
) -> Vec<(String, String)> {
    [
        ("SAGA_DATABASE_URL", database_url.to_owned()),
        ("SAGA_DATABASE_MAX_CONNECTIONS", "6".to_owned()),
        ("SAGA_NATS_URL", nats_url.to_owned()),
        ("SAGA_POLICIES__STEP_TIMEOUT", "2000".to_owned()),
        ("SAGA_POLICIES__TELEGRAM_TIMEOUT", "8000".to_owned()),
        ("SAGA_TELEGRAM_TIMEOUT_MS", "3000".to_owned()),
        (
            "SAGA_TELEGRAM_API_BASE",
            format!("http://127.0.0.1:{stand_in_port}"),
        ),
        (
            "RUST_LOG",
            "warn,saga_runtime=info,saga_orchestrator::timers=debug".to_owned(),
        ),
        ("SAGA_LOG_FORMAT", "json".to_owned()),
        ("SAGA_API_TOKENS", RunTokens::get().config()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The settings of one service replica (replicas count from 0).
pub type ServiceEnv<'a> = dyn Fn(&Service, usize) -> Vec<(String, String)> + 'a;

/// Every service of [`SERVICES`] as `replicas` processes each (not started), plus the Telegram
/// stand-in (started by [`Fleet::start_all`]).
pub struct Fleet {
    /// The service processes, in [`SERVICES`] order, replicas together (`orchestrator-1` first).
    pub services: Vec<Process>,
    /// The Telegram stand-in.
    pub stand_in: Process,
    /// The stand-in's port.
    pub stand_in_port: u16,
    /// HTTP ports per binary.
    pub ports: BTreeMap<&'static str, Vec<u16>>,
}

impl Fleet {
    /// Plans the processes: `env` gives each service replica's settings (replicas count from
    /// 0; the listen address and the URLs of the services it calls are added), `url_of` the
    /// base URL under which a service calls another one (a gateway; when `None`, the callee's
    /// replica of the same number as the caller's, so that a client can get round a dead
    /// callee replica by retrying on the other caller replica).
    pub fn plan(
        bin_dir: &Path,
        work: &Path,
        replicas: usize,
        stand_in_port: u16,
        env: &ServiceEnv<'_>,
        url_of: Option<&dyn Fn(&str) -> String>,
    ) -> anyhow::Result<Self> {
        let mut ports: BTreeMap<&'static str, Vec<u16>> = BTreeMap::new();
        for service in SERVICES {
            for _ in 0..replicas {
                ports.entry(service.binary).or_default().push(free_port()?);
            }
        }
        // Replica `n` of a service calls replica `n` of another (wrapping around), so that one
        // killed replica of the callee leaves the other caller replica a way through.
        let same_replica = |binary: &str, replica: usize| {
            let port = ports
                .get(binary)
                .filter(|p| !p.is_empty())
                .map(|p| p[replica % p.len()]);
            format!("http://127.0.0.1:{}", port.unwrap_or(0))
        };
        let mut services = Vec::new();
        for service in SERVICES {
            for (replica, port) in ports[service.binary].iter().enumerate() {
                let mut env = env(service, replica);
                env.push((service.addr_var.to_owned(), format!("127.0.0.1:{port}")));
                for (var, callee) in service.calls {
                    let url = url_of.map_or_else(|| same_replica(callee, replica), |f| f(callee));
                    env.push(((*var).to_owned(), url));
                }
                if let Some(var) = service.service_token {
                    env.push((var.to_owned(), RunTokens::get().service.clone()));
                }
                let name = format!("{}-{}", service.binary, replica + 1);
                let mut process = Process::new(
                    &name,
                    bin_dir.join(service.binary),
                    work.join(format!("{name}.log")),
                );
                process.env = env;
                process.http = Some(*port);
                services.push(process);
            }
        }
        let mut stand_in = Process::new(
            "telegram-stand-in",
            bin_dir.join("telegram-stand-in"),
            work.join("telegram-stand-in.log"),
        );
        stand_in.env = vec![(
            "SAGA_STAND_IN_ADDR".into(),
            format!("127.0.0.1:{stand_in_port}"),
        )];
        Ok(Self {
            services,
            stand_in,
            stand_in_port,
            ports,
        })
    }

    /// The HTTP ports of `binary`'s replicas.
    pub fn ports_of(&self, binary: &str) -> Vec<u16> {
        self.ports.get(binary).cloned().unwrap_or_default()
    }

    /// Starts the stand-in and the first orchestrator (it creates the streams and migrates
    /// before the rest race), without waiting.
    pub fn start_first(&mut self) -> anyhow::Result<()> {
        self.stand_in.start()?;
        self.services[0].start()
    }

    /// Waits for the first orchestrator, starts the rest, waits until every service is ready.
    pub async fn start_rest(&mut self, work: &Path) -> anyhow::Result<()> {
        let first = self.services[0]
            .http
            .context("orchestrator without a port")?;
        wait_ready(first, Duration::from_secs(60), work).await?;
        for service in self.services.iter_mut().skip(1) {
            service.start()?;
        }
        for service in &self.services {
            if let Some(port) = service.http {
                wait_ready(port, Duration::from_secs(60), work).await?;
            }
        }
        Ok(())
    }

    /// SIGTERMs every service (each must exit 0 within 10 s), then the stand-in; returns the
    /// complaints.
    pub fn stop(&mut self) -> Vec<String> {
        let mut complaints = Vec::new();
        for service in self.services.iter_mut() {
            let (clean, took) = service.terminate();
            if !clean {
                complaints.push(format!(
                    "{} did not exit 0 within 10 s of SIGTERM ({took:?})",
                    service.name
                ));
            }
        }
        self.stand_in.terminate();
        complaints
    }
}

/// Waits until `GET /readyz` on loopback `port` answers 2xx, polling every 100 ms, for at most
/// `timeout`; the error names `work` (where the logs are).
pub async fn wait_ready(port: u16, timeout: Duration, work: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the service on port {port} did not become ready; logs in {}",
                work.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to NATS given one URL or a comma-separated list of them.
pub async fn connect_nats(urls: &str) -> anyhow::Result<async_nats::Client> {
    let addrs = urls
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("NATS URLs {urls:?}"))?;
    Ok(async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await?)
}

/// A work directory under the temporary directory, named `{prefix}-{pid}-{seed}`.
pub fn work_dir(prefix: &str, seed: u64) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}-{}-{seed}", std::process::id()))
}
