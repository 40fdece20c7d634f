//! The test harness of the end-to-end suite: starts the whole platform in-process against the
//! real PostgreSQL and NATS JetStream of the machine, isolated per test by a fresh database
//! and a fresh stream/subject prefix, and offers the HTTP calls a client makes.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use platform::{Platform, Settings};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where the suite's PostgreSQL and NATS are (`SAGA_TEST_DATABASE_URL` names the server's
/// admin database; `SAGA_TEST_NATS_URL` the NATS server).
fn admin_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn nats_url() -> String {
    std::env::var("SAGA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A platform started for one test.
pub struct TestPlatform {
    platform: Option<Platform>,
    /// The gateway's base URL.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The test's database URL.
    pub database_url: String,
    /// The test's NATS server.
    pub nats_url: String,
    /// The test's stream/subject prefix.
    pub prefix: String,
    database: String,
    /// NATS, for tests that publish on their own.
    pub nats: async_nats::Client,
    /// The API tokens of this platform (`http` sends the admin one).
    pub tokens: TestTokens,
    /// The MariaDB database of the Mypage view, when the test put it there.
    mariadb: Option<secrecy::SecretString>,
}

/// The NATS a test platform runs on.
pub struct NatsTarget {
    /// Its URL.
    pub url: String,
    /// The stream and subject prefix (empty: the production names).
    pub prefix: String,
    /// A client for the test's own use.
    pub client: async_nats::Client,
}

/// One API token per scope, generated for a test platform.
#[derive(Clone, Debug)]
pub struct TestTokens {
    /// Scope `admin`.
    pub admin: String,
    /// Scope `game`.
    pub game: String,
    /// Scope `read`.
    pub reader: String,
    /// Scope `operate`.
    pub operator: String,
    /// Scope `notify`.
    pub notify: String,
}

impl TestTokens {
    fn generate() -> Self {
        let token = |scope: &str| format!("{scope}-{}", Uuid::new_v4().simple());
        Self {
            admin: token("admin"),
            game: token("game"),
            reader: token("reader"),
            operator: token("operator"),
            notify: token("notify"),
        }
    }

    /// The platform's token configuration: the hashes, names and scopes.
    pub fn configuration(&self) -> runtime::auth::Tokens {
        let entry = |name: &str, token: &str, scope: &str| json!({"name": name, "sha256": runtime::auth::sha256_hex(token), "scopes": [scope]});
        let file = json!({"tokens": [
            entry("test-admin", &self.admin, "admin"),
            entry("test-game", &self.game, "game"),
            entry("test-reader", &self.reader, "read"),
            entry("test-operator", &self.operator, "operate"),
            entry("test-notify", &self.notify, "notify"),
        ]});
        runtime::auth::Tokens::parse(&file.to_string()).expect("a valid token file")
    }
}

/// `settings` with the Mypage view on MariaDB (`SAGA_TEST_MARIADB_URL`, default
/// `mysql://root@127.0.0.1:3306`), in a database of its own that the platform's stop drops.
pub fn on_mariadb(mut settings: Settings) -> Settings {
    let server = std::env::var("SAGA_TEST_MARIADB_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let name = format!("mypage_t_{}", &Uuid::new_v4().simple().to_string()[..12]);
    settings.mypage.mypage_database_url = Some(format!("{server}/{name}").into());
    settings
}

/// Knobs a test may turn before the platform starts.
pub fn default_settings() -> Settings {
    let mut settings = Settings {
        platform: platform::PlatformSettings {
            gateway_addr: "127.0.0.1:0".into(),
            stand_in_addr: "127.0.0.1:0".into(),
        },
        orchestrator: Default::default(),
        workers: Default::default(),
        telegram: Default::default(),
        gift: Default::default(),
        mypage: Default::default(),
        skip_workers: Vec::new(),
        definitions: None,
        edge: Default::default(),
        tokens: Default::default(),
        nats_passwords: Default::default(),
    };
    settings.orchestrator.policies.step_timeout = Duration::from_secs(5);
    settings.orchestrator.policies.telegram_timeout = Duration::from_secs(10);
    settings.orchestrator.infra.database_max_connections = 8;
    settings.workers.infra.database_max_connections = 4;
    settings
}

impl TestPlatform {
    /// Starts a platform with the default test settings.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(default_settings()).await
    }

    /// Starts a platform with `settings` (database and NATS are filled in here).
    pub async fn start_with(settings: Settings) -> anyhow::Result<Self> {
        Self::start_prepared(settings, |_| async { Ok(()) }).await
    }

    /// Like [`TestPlatform::start_with`], after `prepare` ran against the fresh database's URL
    /// (a test that needs data from an earlier release, say).
    pub async fn start_prepared<F, Fut>(settings: Settings, prepare: F) -> anyhow::Result<Self>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let id = Uuid::new_v4().simple().to_string();
        let nats = NatsTarget {
            url: nats_url(),
            prefix: format!("t{}", &id[..12]),
            client: async_nats::connect(nats_url()).await?,
        };
        Self::launch(settings, nats, prepare).await
    }

    /// Starts a platform on a NATS server of the test's own (`nats`), with `settings`.
    pub async fn start_on_nats(settings: Settings, nats: NatsTarget) -> anyhow::Result<Self> {
        Self::launch(settings, nats, |_| async { Ok(()) }).await
    }

    async fn launch<F, Fut>(
        settings: Settings,
        nats: NatsTarget,
        prepare: F,
    ) -> anyhow::Result<Self>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("saga_t_{}", &id[..16]);
        let mariadb = settings
            .mypage
            .mypage_database_url
            .clone()
            .filter(|url| secrecy::ExposeSecret::expose_secret(url).starts_with("mysql:"));
        let NatsTarget {
            url: nats_url,
            prefix,
            client: nats,
        } = nats;
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .context("PostgreSQL admin connection")?;
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .await?;
        conn.close().await?;
        let (base_url, _) = admin
            .rsplit_once('/')
            .context("database URL without a path")?;
        let database_url = format!("{base_url}/{database}");
        prepare(database_url.clone()).await?;
        let tokens = TestTokens::generate();
        let platform = Platform::start(
            Self::wire(settings, &database_url, &nats_url, &prefix, &tokens),
            CancellationToken::new(),
        )
        .await?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", tokens.admin).parse()?,
        );
        Ok(Self {
            base: platform.base_url(),
            platform: Some(platform),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()?,
            database_url,
            nats_url,
            prefix,
            database,
            nats,
            tokens,
            mariadb,
        })
    }

    fn wire(
        mut settings: Settings,
        database_url: &str,
        nats_url: &str,
        prefix: &str,
        tokens: &TestTokens,
    ) -> Settings {
        settings.tokens = tokens.configuration();
        settings.gift.gift_service_token = Some(tokens.notify.as_str().into());
        for infra in [
            &mut settings.orchestrator.infra,
            &mut settings.workers.infra,
        ] {
            infra.database_url = database_url.into();
            infra.nats_url = nats_url.to_owned();
            infra.nats_prefix = prefix.to_owned();
        }
        settings
    }

    /// Stops the platform and starts it again with `settings` on the same database and
    /// streams: a redeploy.
    pub async fn redeploy(&mut self, settings: Settings) -> anyhow::Result<()> {
        if let Some(platform) = self.platform.take() {
            platform.stop().await?;
        }
        let platform = Platform::start(
            Self::wire(
                settings,
                &self.database_url,
                &self.nats_url,
                &self.prefix,
                &self.tokens,
            ),
            CancellationToken::new(),
        )
        .await?;
        self.base = platform.base_url();
        self.platform = Some(platform);
        Ok(())
    }

    /// The in-process Telegram stand-in.
    pub fn stand_in(&self) -> &workers::telegram_stand_in::StandIn {
        let platform = self.platform.as_ref().expect("running");
        &platform
            .stand_in
            .as_ref()
            .expect("the tests run without a bot token")
            .1
    }

    /// The stand-in's base URL.
    pub fn stand_in_url(&self) -> String {
        let platform = self.platform.as_ref().expect("running");
        format!("http://{}", platform.stand_in.as_ref().expect("stand-in").0)
    }

    /// `METHOD base+path` with an optional JSON body: (status, headers, JSON body or null).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, headers, body))
    }

    /// Like [`TestPlatform::call`], with `token` (`None`: no token at all).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut request = client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, headers, body))
    }

    /// GET returning the JSON body, failing on a non-2xx status.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, _, body) = self.call(reqwest::Method::GET, path, None).await?;
        if !(200..300).contains(&status) {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Creates a mission for `customer` worth `points`.
    pub async fn create_mission(
        &self,
        customer: &str,
        title: &str,
        points: i64,
    ) -> anyhow::Result<Value> {
        let (status, _, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/missions",
                Some(json!({"customer_id": customer, "title": title, "reward_points": points})),
            )
            .await?;
        if status != 201 {
            bail!("creating a mission: {status} {body}");
        }
        Ok(body)
    }

    /// Links `customer` to Telegram chat `chat_id`.
    pub async fn link_chat(&self, customer: &str, chat_id: i64) -> anyhow::Result<()> {
        let (status, _, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/telegram/chats/{customer}"),
                Some(json!({"chat_id": chat_id})),
            )
            .await?;
        if status != 200 {
            bail!("linking a chat: {status} {body}");
        }
        Ok(())
    }

    /// Starts a mission_reward saga for `mission_id`; returns the saga's id.
    pub async fn start_saga(&self, mission_id: &str) -> anyhow::Result<String> {
        let (status, _, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/sagas",
                Some(json!({"type": "mission_reward", "input": {"mission_id": mission_id}})),
            )
            .await?;
        if status != 202 {
            bail!("starting a saga: {status} {body}");
        }
        body["id"]
            .as_str()
            .map(str::to_owned)
            .context("saga without id")
    }

    /// Polls the saga until it is terminal (or `timeout` passes).
    pub async fn wait_terminal(&self, saga_id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let saga = self.get(&format!("/v1/sagas/{saga_id}")).await?;
            let state = saga["state"].as_str().unwrap_or_default();
            if matches!(state, "completed" | "compensated" | "failed" | "cancelled") {
                return Ok(saga);
            }
            if Instant::now() > deadline {
                bail!("saga {saga_id} still {state} after {timeout:?}: {saga}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A fresh mission worth `points` for an existing `customer`: (customer, chat id (0: not
    /// looked up), mission).
    pub async fn create_mission_for(
        &self,
        customer: &str,
        points: i64,
    ) -> anyhow::Result<(String, i64, Value)> {
        let mission = self
            .create_mission(customer, "Slay the dragon", points)
            .await?;
        Ok((customer.to_owned(), 0, mission))
    }

    /// A customer with a linked chat and a fresh mission: (customer, chat id, mission).
    pub async fn customer_with_mission(&self, points: i64) -> anyhow::Result<(String, i64, Value)> {
        let n = Uuid::new_v4().as_u128();
        let customer = format!("player-{}", n % 1_000_000_000);
        let chat_id = i64::try_from(n % 9_000_000_000).unwrap_or(1) + 1_000;
        self.link_chat(&customer, chat_id).await?;
        let mission = self
            .create_mission(&customer, "Slay the dragon", points)
            .await?;
        Ok((customer, chat_id, mission))
    }

    /// Stops the platform, drops its databases and streams.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(platform) = self.platform.take() {
            platform.stop().await?;
        }
        if let Some(url) = self.mariadb.take() {
            use secrecy::ExposeSecret as _;
            let url = url.expose_secret().to_owned();
            if let Some((server, name)) = url.rsplit_once('/') {
                use sqlx::Connection as _;
                let mut conn = sqlx::MySqlConnection::connect(server).await?;
                sqlx::Executor::execute(
                    &mut conn,
                    sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")),
                )
                .await?;
                conn.close().await?;
            }
        }
        // A test on a server of its own (no prefix) throws the server away instead.
        if !self.prefix.is_empty() {
            let js = async_nats::jetstream::new(self.nats.clone());
            let topology = contracts::Topology::new(&self.prefix);
            for stream in contracts::topology::Stream::ALL {
                let _ = js.delete_stream(topology.stream(stream)).await;
            }
        }
        let mut conn = PgConnection::connect(&admin_url()).await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )))
        .await?;
        Ok(())
    }
}

/// The names of a saga's compensations (its `GET` body), in the order they ran.
pub fn compensation_names(saga: &Value) -> Vec<String> {
    saga["compensations"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `check` returns `Some`, polling every 50 ms, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A test playing one worker: it pulls that worker's commands from the real JetStream consumer
/// and answers them as the test decides (the platform runs without that worker).
pub struct FakeWorker {
    consumer:
        async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    js: async_nats::jetstream::Context,
    topology: contracts::Topology,
}

impl FakeWorker {
    /// Takes over `worker`'s durable consumer on `platform`'s streams.
    pub async fn attach(
        platform: &TestPlatform,
        worker: contracts::Worker,
    ) -> anyhow::Result<Self> {
        let js = async_nats::jetstream::new(platform.nats.clone());
        let topology = contracts::Topology::new(&platform.prefix);
        let consumer = runtime::jetstream::ensure_consumer(
            &js,
            &topology,
            contracts::topology::Stream::Commands,
            &topology.worker_consumer(worker),
            &topology.worker_commands(worker),
        )
        .await?;
        Ok(Self {
            consumer,
            js,
            topology,
        })
    }

    /// The next command (acked), or an error after `timeout`.
    pub async fn next(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<contracts::Envelope<contracts::Command>> {
        use futures::StreamExt;
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .expires(timeout)
            .messages()
            .await?;
        let message = batch
            .next()
            .await
            .context("no command arrived in time")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(runtime::jetstream::decode(&message)?)
    }

    /// Answers `command` with `reply`.
    pub async fn reply(
        &self,
        command: &contracts::Envelope<contracts::Command>,
        reply: contracts::Reply,
    ) -> anyhow::Result<()> {
        let envelope = command.reply(reply);
        let outgoing = runtime::jetstream::encode(
            self.topology
                .reply_subject(&command.saga_type, command.body.action().worker()),
            &envelope,
        )?;
        runtime::jetstream::publish(&self.js, &outgoing, Some(&envelope.message_id.to_string()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

pub mod browser;
pub mod chaos;
pub mod demo;
pub mod processes;
