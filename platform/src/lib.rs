//! The whole platform in one process, for a newcomer's first run and for the end-to-end tests:
//! the orchestrator and the mission, reward, wallet and telegram workers, behind one gateway address
//! that routes every public path as the Istio gateway does in a cluster; plus the Telegram Bot
//! API stand-in when no bot token is configured.

use std::net::SocketAddr;

use anyhow::Context as _;
use contracts::Worker;
use orchestrator::app::{Config as OrchestratorConfig, Orchestrator};
use runtime::auth::Tokens;
use runtime::edge::{Edge, EdgeSettings};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use workers::gift::{self, GiftSettings, GiftWorker};
use workers::mission::{self, MissionWorker};
use workers::mypage::{MypageSettings, MypageWorker};
use workers::reward::{self, RewardWorker};
use workers::runtime::{WorkerContext, WorkerSettings};
use workers::telegram::{self, TelegramSettings, TelegramWorker};
use workers::telegram_stand_in::{self, StandIn};
use workers::wallet::{self, WalletWorker};

/// Settings of the one-process platform (`SAGA_*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSettings {
    /// Where every public route answers (`SAGA_GATEWAY_ADDR`).
    pub gateway_addr: String,
    /// Where the Telegram stand-in listens when no bot token is set (`SAGA_STAND_IN_ADDR`).
    pub stand_in_addr: String,
}

impl Default for PlatformSettings {
    fn default() -> Self {
        Self {
            gateway_addr: "127.0.0.1:8080".into(),
            stand_in_addr: "127.0.0.1:8081".into(),
        }
    }
}

/// Everything the platform reads from its environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Gateway and stand-in addresses.
    pub platform: PlatformSettings,
    /// The orchestrator's configuration (database, NATS, policies).
    pub orchestrator: OrchestratorConfig,
    /// The workers' consumer settings.
    pub workers: WorkerSettings,
    /// Telegram settings.
    pub telegram: TelegramSettings,
    /// The gift worker's settings (its orchestrator and telegram URLs are the gateway's here).
    pub gift: GiftSettings,
    /// The mypage worker (`SAGA_MYPAGE_DATABASE_URL`: `mysql://…` for MariaDB, else the
    /// platform's PostgreSQL, schema `mypage`); its NATS and PostgreSQL settings are the
    /// workers'.
    pub mypage: MypageSettings,
    /// Workers not to run in this process (a test may play one itself).
    pub skip_workers: Vec<Worker>,
    /// Saga definitions to run instead of the built-in ones.
    pub definitions: Option<orchestrator::definition::Registry>,
    /// The HTTP edge's limits (`SAGA_REQUEST_TIMEOUT_MS`, ...).
    pub edge: EdgeSettings,
    /// The API tokens (`SAGA_API_TOKENS_FILE` or `SAGA_API_TOKENS`).
    pub tokens: Tokens,
    /// NATS passwords by service (orchestrator, mission, ...) for a NATS server with one user
    /// per service: each part of the platform then logs in as its own user. Read from
    /// `NATS_<SERVICE>_PASSWORD`, the variables the server's configuration
    /// (`deploy/nats/nats-server.conf`) reads too.
    pub nats_passwords: BTreeMap<String, SecretString>,
}

/// The services of the platform that log in to NATS, by user name.
pub const NATS_USERS: [&str; 7] = [
    "orchestrator",
    "mission",
    "reward",
    "wallet",
    "gift",
    "telegram",
    "mypage",
];

/// The NATS passwords found in `NATS_<SERVICE>_PASSWORD` variables.
pub fn nats_passwords_from_env() -> BTreeMap<String, SecretString> {
    NATS_USERS
        .iter()
        .filter_map(|user| {
            let password =
                std::env::var(format!("NATS_{}_PASSWORD", user.to_ascii_uppercase())).ok()?;
            Some(((*user).to_owned(), SecretString::from(password)))
        })
        .collect()
}

impl Settings {
    /// `infra` logged in as `user` when a password is known for it.
    fn as_user(
        &self,
        infra: &runtime::config::Infrastructure,
        user: &str,
    ) -> runtime::config::Infrastructure {
        let mut infra = infra.clone();
        if let Some(password) = self.nats_passwords.get(user) {
            infra.nats_user = Some(user.to_owned());
            infra.nats_password = Some(password.clone());
        }
        infra
    }

    fn worker(&self, worker: Worker) -> WorkerSettings {
        WorkerSettings {
            infra: self.as_user(&self.workers.infra, worker.as_str()),
            ..self.workers.clone()
        }
    }
}

impl Settings {
    /// Loads every part from defaults and `SAGA_*` variables.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            platform: runtime::config::load()?,
            orchestrator: runtime::config::load()?,
            workers: runtime::config::load()?,
            telegram: runtime::config::load()?,
            gift: runtime::config::load()?,
            mypage: runtime::config::load()?,
            skip_workers: Vec::new(),
            definitions: None,
            edge: runtime::config::load()?,
            tokens: Tokens::from_env()?,
            nats_passwords: nats_passwords_from_env(),
        })
    }
}

/// A running platform.
pub struct Platform {
    /// The gateway's address.
    pub gateway: SocketAddr,
    /// The stand-in, when the platform runs one.
    pub stand_in: Option<(SocketAddr, StandIn)>,
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
}

impl Platform {
    /// Starts everything; returns once the gateway listens.
    pub async fn start(
        mut settings: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut tasks = JoinSet::new();
        let stand_in = if settings
            .telegram
            .telegram_bot_token
            .as_ref()
            .is_none_or(|t| t.expose_secret().trim().is_empty())
        {
            let state = StandIn::default();
            let (addr, _task) = telegram_stand_in::spawn_with_state(
                &settings.platform.stand_in_addr,
                state.clone(),
            )
            .await
            .with_context(|| {
                format!(
                    "binding the Telegram stand-in on {}",
                    settings.platform.stand_in_addr
                )
            })?;
            settings.telegram.telegram_api_base = format!("http://{addr}");
            tracing::warn!(%addr, "no SAGA_TELEGRAM_BOT_TOKEN: messages go to the Telegram Bot API stand-in");
            Some((addr, state))
        } else {
            None
        };
        let orchestrator_config = OrchestratorConfig {
            infra: settings.as_user(&settings.orchestrator.infra, "orchestrator"),
            ..settings.orchestrator.clone()
        };
        let orchestrator = match settings.definitions.clone() {
            Some(registry) => Orchestrator::build_with(orchestrator_config, registry).await?,
            None => Orchestrator::build(orchestrator_config).await?,
        };
        let mission_ctx = WorkerContext::connect(
            &settings.worker(Worker::Mission),
            Worker::Mission,
            &mission::MIGRATOR,
        )
        .await?;
        let reward_ctx = WorkerContext::connect(
            &settings.worker(Worker::Reward),
            Worker::Reward,
            &reward::MIGRATOR,
        )
        .await?;
        let wallet_ctx = WorkerContext::connect(
            &settings.worker(Worker::Wallet),
            Worker::Wallet,
            &wallet::MIGRATOR,
        )
        .await?;
        let telegram_ctx = WorkerContext::connect(
            &settings.worker(Worker::Telegram),
            Worker::Telegram,
            &telegram::MIGRATOR,
        )
        .await?;
        let gift_ctx = WorkerContext::connect(
            &settings.worker(Worker::Gift),
            Worker::Gift,
            &gift::MIGRATOR,
        )
        .await?;
        // The gift worker calls the orchestrator and the telegram service through the gateway,
        // so the gateway's address is known first.
        let listener = tokio::net::TcpListener::bind(&settings.platform.gateway_addr)
            .await
            .with_context(|| {
                format!("binding the gateway on {}", settings.platform.gateway_addr)
            })?;
        let gateway = listener.local_addr()?;
        let gift = GiftWorker::new(
            gift_ctx.pool.clone(),
            &settings.gift.at_gateway(&format!("http://{gateway}")),
        )?;
        let mypage = MypageWorker::connect(&MypageSettings {
            infra: settings.as_user(&settings.workers.infra, "mypage"),
            ..settings.mypage.clone()
        })
        .await?;
        let mission = MissionWorker::new(mission_ctx.pool.clone());
        let reward = RewardWorker::new(reward_ctx.pool.clone());
        let wallet = WalletWorker::new(wallet_ctx.pool.clone());
        let telegram = TelegramWorker::new(telegram_ctx.pool.clone(), &settings.telegram)?;

        let (orchestrator_api, mut openapi) = orchestrator.api();
        let mut router = orchestrator_api
            .merge(orchestrator.health())
            .merge(orchestrator.ui());
        for (routes, doc) in [
            mission.api(),
            reward.api(),
            wallet.api(),
            gift.api(),
            telegram.api(),
            mypage.api(),
        ] {
            router = router.merge(routes);
            openapi.merge(doc);
        }
        openapi.info = runtime::openapi::document(
            "Reward saga platform",
            "Every service of the platform behind one address: the orchestrator (sagas, \
             definitions, dead letters) and the mission, reward, wallet, gift, telegram and \
             Mypage services. The saga page (`/ui`, with its login at `/ui/login`) and Swagger \
             UI over this document (`/docs`) are pages for people, not part of this API.",
        )
        .info;
        let edge = Edge::new(settings.edge.clone(), settings.tokens.clone());
        let router = router
            .merge(runtime::auth::login_routes(edge.tokens()))
            .merge(runtime::http::openapi_route(openapi))
            .merge(runtime::metrics::route())
            .fallback(runtime::problem::route_not_found);

        let mut background = JoinSet::new();
        orchestrator
            .spawn_background(&mut background, &shutdown)
            .await?;
        tasks.spawn(async move {
            while background.join_next().await.is_some() {}
            Ok(())
        });
        let runs = |worker: Worker| !settings.skip_workers.contains(&worker);
        if runs(Worker::Mission) {
            tasks.spawn(mission.run(mission_ctx.clone(), shutdown.clone()));
        }
        if runs(Worker::Reward) {
            tasks.spawn(reward.run(reward_ctx.clone(), shutdown.clone()));
        }
        if runs(Worker::Wallet) {
            tasks.spawn(wallet.run(wallet_ctx.clone(), shutdown.clone()));
        }
        if runs(Worker::Gift) {
            tasks.spawn(gift.run(gift_ctx.clone(), shutdown.clone()));
        }
        let mypage_readiness = mypage.readiness().clone();
        tasks.spawn(mypage.clone().run(shutdown.clone()));
        if runs(Worker::Telegram) {
            tasks.spawn(telegram.run(telegram_ctx.clone(), shutdown.clone()));
        }

        let readiness = orchestrator.readiness();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            edge.serve(listener, router, stop).await?;
            Ok(())
        });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            readiness.stop_accepting();
            mypage_readiness.stop_accepting();
            for ctx in [mission_ctx, reward_ctx, wallet_ctx, gift_ctx, telegram_ctx] {
                ctx.readiness.stop_accepting();
            }
        });
        tracing::info!(%gateway, "platform listening");
        Ok(Self {
            gateway,
            stand_in,
            tasks,
            shutdown,
        })
    }

    /// The gateway's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// Stops everything and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until every part has stopped (after the shutdown token fired).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}
