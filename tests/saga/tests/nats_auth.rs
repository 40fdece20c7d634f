//! NATS with authentication and least privilege, on a nats-server of the test's own running the
//! repository's configuration (`deploy/nats/nats-server.conf`): the whole platform completes a
//! saga with each of its parts logged in as its own user, an anonymous client is refused, and a
//! worker's user cannot publish a command or answer as another worker.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use saga_tests::{NatsTarget, TestPlatform, default_settings, wait_for};
use secrecy::SecretString;

const WAIT: Duration = Duration::from_secs(30);

/// A nats-server with the repository's configuration on a spare loopback port; killed on drop.
struct AuthNats {
    child: Child,
    url: String,
    passwords: BTreeMap<String, String>,
    store: std::path::PathBuf,
}

impl AuthNats {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = std::env::temp_dir().join(format!("saga-nats-auth-{}", uuid::Uuid::new_v4()));
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/nats/nats-server.conf");
        let mut passwords = BTreeMap::new();
        let mut command = Command::new("nats-server");
        command
            .args(["-c", &config.display().to_string(), "-a", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-sd", &store.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for user in platform::NATS_USERS.iter().chain(["observer"].iter()) {
            let password = format!("{user}-{}", uuid::Uuid::new_v4().simple());
            command.env(
                format!("NATS_{}_PASSWORD", user.to_ascii_uppercase()),
                &password,
            );
            passwords.insert((*user).to_owned(), password);
        }
        Ok(Self {
            child: command.spawn()?,
            url: format!("nats://127.0.0.1:{port}"),
            passwords,
            store,
        })
    }

    async fn connect_as(&self, user: &str) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .user_and_password(user.to_owned(), self.passwords[user].clone())
            .connect(&self.url)
            .await?)
    }

    async fn wait_up(&self) -> anyhow::Result<()> {
        wait_for(WAIT, "nats-server to listen", || async {
            Ok(self.connect_as("observer").await.ok().map(|_| ()))
        })
        .await
    }
}

impl Drop for AuthNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Whether JetStream stored a publish by `client` on `subject` (a refused publish gets no ack).
async fn stored(client: &async_nats::Client, subject: &str) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    match js.publish(subject.to_owned(), "forged".into()).await {
        Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack)
            .await
            .is_ok_and(|ack| ack.is_ok()),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_logs_in_as_itself_and_nobody_else_gets_in() -> anyhow::Result<()> {
    let server = AuthNats::start()?;
    server.wait_up().await?;

    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(&server.url);
    let anonymous = tokio::time::timeout(Duration::from_secs(5), anonymous).await;
    assert!(
        !matches!(anonymous, Ok(Ok(_))),
        "an anonymous client is refused"
    );
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password("mission".into(), "not-the-password".into())
        .connect(&server.url)
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");

    let mut settings = default_settings();
    settings.nats_passwords = server
        .passwords
        .iter()
        .map(|(user, password)| (user.clone(), SecretString::from(password.clone())))
        .collect();
    let p = TestPlatform::start_on_nats(
        settings,
        NatsTarget {
            url: server.url.clone(),
            prefix: String::new(),
            client: server.connect_as("observer").await?,
        },
    )
    .await?;
    let (customer, _, mission) = p.customer_with_mission(30).await?;
    let saga = p
        .wait_terminal(
            &p.start_saga(mission["id"].as_str().expect("id")).await?,
            WAIT,
        )
        .await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(
        p.get(&format!("/v1/wallets/{customer}")).await?["balance"],
        30
    );

    let mission_user = server.connect_as("mission").await?;
    assert!(
        !stored(&mission_user, "cmd.reward.grant").await,
        "only the orchestrator publishes commands"
    );
    assert!(
        !stored(&mission_user, "reply.mission_reward.reward").await,
        "a worker answers only as itself"
    );
    assert!(
        !stored(&mission_user, "evt.wallet.WalletCredited").await,
        "a worker publishes only its own context's events"
    );
    assert!(
        stored(&mission_user, "reply.mission_reward.mission").await,
        "its own reply subject is open to it"
    );
    let observer = server.connect_as("observer").await?;
    assert!(!stored(&observer, "evt.saga.SagaFinished").await);
    let orchestrator = server.connect_as("orchestrator").await?;
    assert!(
        !stored(&orchestrator, "reply.mission_reward.reward").await,
        "the orchestrator cannot answer its own commands"
    );
    p.stop().await
}
