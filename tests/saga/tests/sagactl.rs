//! `sagactl`, the operator's command line, against the real platform: the built binary runs as
//! a subprocess (stdin not a terminal) and drives sagas end to end: start, watch, get, list,
//! cancel one held in flight, retry a failed one, bulk cancel and bulk retry by filter (a
//! refusal without `--yes`, then with it in bounded calls), and a dead letter replayed. Every
//! `--json` output must parse, every error must name the platform's problem code, and the
//! token must appear in no output.
//!
//! The binary is `target/<profile>/sagactl`, next to this test's own executable. The test
//! builds it first (`cargo build -p sagactl`, a no-op when it is fresh); `./dev.sh test` has
//! built every binary anyway (`cargo build --workspace --bins`).
//!
//! `definitions list`, `history`, `dead-letters discard`, `mypage rebuild` and `watch` over
//! server-sent events use `GET /v1/definitions`, `GET /v1/sagas/{id}/history`,
//! `DELETE /v1/dead-letters/{id}`, `POST /v1/mypages/rebuild` and `GET /v1/sagas/{id}/events`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use contracts::reply::{RewardGrantedV1, output_of};
use contracts::{Action, Reply, RewardId, StepFailure, Worker};
use reqwest::Method;
use saga_tests::{FakeWorker, TestPlatform, compensation_names, default_settings, wait_for};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(20);

/// How long one `sagactl` run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `sagactl` binary, built once per test process.
static BINARY: OnceCell<PathBuf> = OnceCell::const_new();

/// `target/<profile>/sagactl`: this test runs as `target/<profile>/deps/sagactl-<hash>`.
fn binary_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    Ok(profile_dir.join(format!("sagactl{}", std::env::consts::EXE_SUFFIX)))
}

/// Builds `sagactl` (a no-op when it is fresh) and returns its path.
async fn binary() -> anyhow::Result<PathBuf> {
    BINARY
        .get_or_try_init(|| async {
            let path = binary_path()?;
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = tokio::process::Command::new(cargo);
            build
                .current_dir(&workspace)
                .args(["build", "--quiet", "-p", "sagactl", "--bin", "sagactl"])
                .stdin(Stdio::null());
            if !cfg!(debug_assertions) {
                build.arg("--release");
            }
            let status = tokio::time::timeout(Duration::from_secs(900), build.status())
                .await
                .context("building sagactl took more than 15 minutes")??;
            ensure!(status.success(), "cargo build -p sagactl failed: {status}");
            ensure!(path.is_file(), "no sagactl binary at {}", path.display());
            Ok(path)
        })
        .await
        .cloned()
}

/// What one run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout as one JSON document.
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not one JSON document: {self:?}"))
    }
}

/// `sagactl` pointed at a test platform with one token, through `SAGACTL_URL` and
/// `SAGACTL_TOKEN` (never the local `.run/` of the checkout).
struct Sagactl {
    binary: PathBuf,
    base: String,
    token: String,
    /// Every token of the platform: none may appear in any output.
    secrets: Vec<String>,
}

impl Sagactl {
    async fn new(p: &TestPlatform, token: &str) -> anyhow::Result<Self> {
        let t = &p.tokens;
        Ok(Self {
            binary: binary().await?,
            base: p.base.clone(),
            token: token.to_owned(),
            secrets: [&t.admin, &t.game, &t.reader, &t.operator, &t.notify]
                .into_iter()
                .cloned()
                .collect(),
        })
    }

    /// The same platform with another token.
    fn with_token(&self, token: &str) -> Self {
        Self {
            binary: self.binary.clone(),
            base: self.base.clone(),
            token: token.to_owned(),
            secrets: self.secrets.clone(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .env("SAGACTL_URL", &self.base)
            .env("SAGACTL_TOKEN", &self.token)
            .env_remove("SAGA_GATEWAY_ADDR")
            .env("NO_COLOR", "1")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `sagactl args...` to its end.
    async fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        self.run_command(self.command(args), args).await
    }

    async fn run_command(
        &self,
        mut command: tokio::process::Command,
        args: &[&str],
    ) -> anyhow::Result<Run> {
        let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
            .await
            .with_context(|| format!("sagactl {args:?} ran for more than {RUN_TIMEOUT:?}"))??;
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout)?,
            stderr: String::from_utf8(output.stderr)?,
        };
        for secret in &self.secrets {
            ensure!(
                !run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()),
                "sagactl {args:?} printed a token"
            );
        }
        Ok(run)
    }

    /// Runs `sagactl --json args...`, which must succeed, and parses its stdout.
    async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let run = self.run(&[&["--json"], args].concat()).await?;
        if run.code != 0 {
            bail!("sagactl --json {args:?} failed: {run:?}");
        }
        run.json()
    }

    /// Runs `sagactl args...`, which must fail with `code`; returns its stderr.
    async fn fails(&self, code: i32, args: &[&str]) -> anyhow::Result<String> {
        let run = self.run(args).await?;
        ensure!(
            run.code == code,
            "sagactl {args:?} should exit {code}: {run:?}"
        );
        ensure!(
            run.stdout.is_empty(),
            "a failure prints nothing on stdout: {run:?}"
        );
        Ok(run.stderr)
    }
}

fn id_of(value: &Value) -> anyhow::Result<String> {
    value["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {value}"))
}

async fn without_reward_worker() -> anyhow::Result<(TestPlatform, FakeWorker)> {
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    let platform = TestPlatform::start_with(settings).await?;
    let reward = FakeWorker::attach(&platform, Worker::Reward).await?;
    Ok((platform, reward))
}

fn granted() -> Reply {
    Reply::Succeeded {
        output: output_of(&RewardGrantedV1 {
            reward_id: RewardId::new(),
        }),
    }
}

fn done() -> Reply {
    Reply::Succeeded {
        output: Default::default(),
    }
}

/// Drives a saga on a held mission until its `reward.revoke` compensation fails for good
/// (as in operators.rs).
async fn failed_saga(p: &TestPlatform, reward: &FakeWorker) -> anyhow::Result<String> {
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let mission_id = mission["id"].as_str().context("id")?;
    let (status, _, _) = p
        .call(
            Method::POST,
            &format!("/v1/missions/{mission_id}/hold"),
            None,
        )
        .await?;
    ensure!(status == 200, "holding the mission: {status}");
    let saga_id = p.start_saga(mission_id).await?;
    let grant = reward.next(WAIT).await?;
    reward.reply(&grant, granted()).await?;
    let revoke = reward.next(WAIT).await?;
    ensure!(
        revoke.body.action() == Action::RevokeReward,
        "{:?}",
        revoke.body
    );
    reward
        .reply(
            &revoke,
            Reply::Failed(StepFailure::permanent(
                "ledger_closed",
                "the ledger refused the debit",
            )),
        )
        .await?;
    let saga = p.wait_terminal(&saga_id, WAIT).await?;
    ensure!(saga["state"] == "failed", "{saga}");
    Ok(saga_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_starts_watches_gets_and_lists_a_saga_and_reports_problems() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let ctl = Sagactl::new(&p, &p.tokens.admin).await?;
    let (customer, _, mission) = p.customer_with_mission(40).await?;
    let mission_id = mission["id"].as_str().context("id")?;
    let input = json!({"mission_id": mission_id}).to_string();
    let key = format!("sagactl-{mission_id}");
    let start = [
        "start",
        "mission_reward",
        "--input",
        &input,
        "--idempotency-key",
        &key,
    ];

    let started = ctl.json(&start).await?;
    assert_eq!(started["type"], "mission_reward", "{started}");
    let id = id_of(&started)?;
    assert_eq!(
        id_of(&ctl.json(&start).await?)?,
        id,
        "the same idempotency key gives the same saga"
    );

    let watched = ctl.run(&["watch", &id, "--timeout", "30"]).await?;
    assert_eq!(watched.code, 0, "a completed saga exits 0: {watched:?}");
    assert!(
        watched
            .stdout
            .contains(&format!("saga {id} ended completed")),
        "{watched:?}"
    );
    assert!(
        watched.stdout.contains("step telegram.send: succeeded"),
        "{watched:?}"
    );
    assert!(watched.stderr.contains("watching saga"), "{watched:?}");

    let streamed = ctl.run(&["--json", "watch", &id]).await?;
    assert_eq!(streamed.code, 0, "{streamed:?}");
    let versions = streamed
        .stdout
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("one JSON saga per line: {streamed:?}"))?;
    assert_eq!(
        versions.last().map(|s| s["state"].clone()),
        Some(json!("completed"))
    );

    let polled = ctl
        .run(&["watch", &id, "--poll", "--interval-ms", "100"])
        .await?;
    assert_eq!(polled.code, 0, "{polled:?}");
    assert!(polled.stderr.contains("polling every 100ms"), "{polled:?}");

    let saga = ctl.json(&["get", &id]).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["context"]["customer_id"], customer.as_str(), "{saga}");
    let shown = ctl.run(&["get", &id]).await?;
    assert_eq!(shown.code, 0, "{shown:?}");
    for text in [
        "completed",
        "mission.complete",
        "reward.grant",
        "telegram.send",
    ] {
        assert!(shown.stdout.contains(text), "{text} in {shown:?}");
    }

    let page = ctl.json(&["list", "--customer-id", &customer]).await?;
    assert_eq!(page["items"][0]["id"], id.as_str(), "{page}");
    let second = p
        .start_saga(
            p.create_mission(&customer, "Second quest", 5).await?["id"]
                .as_str()
                .context("id")?,
        )
        .await?;
    p.wait_terminal(&second, WAIT).await?;
    let first_page = ctl
        .json(&["list", "--customer-id", &customer, "--limit", "1"])
        .await?;
    assert_eq!(first_page["items"].as_array().map(Vec::len), Some(1));
    assert!(first_page["next_cursor"].is_string(), "{first_page}");
    let every = ctl
        .json(&[
            "list",
            "--customer-id",
            &customer,
            "--limit",
            "1",
            "--all",
            "--state",
            "completed",
            "--created-after",
            "1h",
        ])
        .await?;
    let ids: Vec<_> = every["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, [json!(second), json!(id)], "{every}");
    let table = ctl.run(&["list", "--customer-id", &customer]).await?;
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("STATE"),
        "{table:?}"
    );

    let unknown = uuid::Uuid::now_v7().to_string();
    let stderr = ctl.fails(1, &["get", &unknown]).await?;
    assert!(stderr.contains("saga_not_found (404)"), "{stderr}");
    let stderr = ctl.fails(1, &["--json", "get", &unknown]).await?;
    assert!(stderr.contains("saga_not_found"), "{stderr}");
    let stderr = ctl
        .fails(1, &["start", "no_such_saga", "--input", &input])
        .await?;
    assert!(stderr.contains("unknown_saga_type (422)"), "{stderr}");
    let stderr = ctl
        .fails(2, &["start", "mission_reward", "--input", "{not json"])
        .await?;
    assert!(stderr.contains("not JSON"), "{stderr}");
    let stderr = ctl
        .with_token(&p.tokens.game)
        .fails(1, &["cancel", &id])
        .await?;
    assert!(
        stderr.contains("(403)"),
        "the game scope cannot cancel: {stderr}"
    );
    let stderr = ctl
        .with_token("not-a-token")
        .fails(1, &["get", &id])
        .await?;
    assert!(stderr.contains("(401)"), "{stderr}");

    // Without SAGACTL_URL and SAGACTL_TOKEN, inside a checkout: SAGA_GATEWAY_ADDR and the
    // admin token of the nearest .run/api-tokens.json.
    let checkout = std::env::temp_dir().join(format!("sagactl-checkout-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(checkout.join(".run"))?;
    std::fs::create_dir_all(checkout.join("orchestrator/src"))?;
    std::fs::write(
        checkout.join(".run/api-tokens.json"),
        json!({"game": p.tokens.game, "admin": p.tokens.admin}).to_string(),
    )?;
    let mut local = ctl.command(&["--json", "get", &id]);
    local
        .env_remove("SAGACTL_URL")
        .env_remove("SAGACTL_TOKEN")
        .env(
            "SAGA_GATEWAY_ADDR",
            p.base.trim_start_matches("http://").trim_end_matches('/'),
        )
        .current_dir(checkout.join("orchestrator/src"));
    let found = ctl.run_command(local, &["--json", "get", &id]).await?;
    let _ = std::fs::remove_dir_all(&checkout);
    assert_eq!(found.code, 0, "{found:?}");
    assert_eq!(found.json()?["id"], id.as_str());

    for shell in ["bash", "zsh", "fish"] {
        let script = ctl.run(&["completions", shell]).await?;
        assert_eq!(script.code, 0, "{script:?}");
        assert!(script.stdout.contains("sagactl"), "{shell}: {script:?}");
    }
    let help = ctl.run(&["--help"]).await?;
    assert_eq!(
        help.code, 0,
        "the help names the variables, not their values"
    );
    assert!(help.stdout.contains("SAGACTL_TOKEN"), "{help:?}");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_cancels_one_saga_retries_a_failed_one_and_acts_in_bulk_after_confirmation()
-> anyhow::Result<()> {
    let (p, reward) = without_reward_worker().await?;
    let ctl = Sagactl::new(&p, &p.tokens.admin).await?;

    // Cancel a saga whose reward.grant is held in flight (with a token of the operate scope
    // only); watch it end cancelled (exit 1).
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let held = p.start_saga(mission["id"].as_str().context("id")?).await?;
    let grant = reward.next(WAIT).await?;
    let cancelling = ctl
        .with_token(&p.tokens.operator)
        .json(&["cancel", &held])
        .await?;
    assert_eq!(
        (
            cancelling["state"].clone(),
            cancelling["stop_reason"].clone()
        ),
        (json!("running"), json!("cancelled")),
        "{cancelling}"
    );
    let mut watch = ctl.command(&["watch", &held, "--timeout", "30"]);
    let watch = tokio::spawn(async move { watch.output().await });
    reward.reply(&grant, granted()).await?;
    let revoke = reward.next(WAIT).await?;
    assert_eq!(
        revoke.body.action(),
        Action::RevokeReward,
        "{:?}",
        revoke.body
    );
    reward.reply(&revoke, done()).await?;
    let watched = tokio::time::timeout(RUN_TIMEOUT, watch).await???;
    let watched_out = String::from_utf8(watched.stdout)?;
    assert_eq!(
        watched.status.code(),
        Some(1),
        "a saga that ends other than completed exits 1: {watched_out}"
    );
    assert!(
        watched_out.contains(&format!("saga {held} ended cancelled")),
        "{watched_out}"
    );
    assert!(
        watched_out.contains("compensation reward.revoke (undoes reward.grant)"),
        "{watched_out}"
    );
    let stderr = ctl.fails(1, &["cancel", &held]).await?;
    assert!(stderr.contains("saga_terminal (409)"), "{stderr}");

    // Retry a saga whose compensation failed for good.
    let failed = failed_saga(&p, &reward).await?;
    let retried = ctl.json(&["retry", &failed]).await?;
    assert_eq!(retried["state"], "compensating", "{retried}");
    let revoke = reward.next(WAIT).await?;
    assert_eq!(revoke.attempt, 2);
    reward.reply(&revoke, done()).await?;
    let saga = p.wait_terminal(&failed, WAIT).await?;
    assert_eq!(saga["state"], "compensated", "{saga}");
    let stderr = ctl.fails(1, &["retry", &failed]).await?;
    assert!(stderr.contains("saga_not_failed (409)"), "{stderr}");

    // Bulk cancel of one customer's three sagas, all held in flight.
    let (customer, _, first) = p.customer_with_mission(5).await?;
    let mut stuck = vec![p.start_saga(first["id"].as_str().context("id")?).await?];
    for title in ["Second quest", "Third quest"] {
        let mission = p.create_mission(&customer, title, 5).await?;
        stuck.push(p.start_saga(mission["id"].as_str().context("id")?).await?);
    }
    let mut grants = Vec::new();
    for _ in 0..3 {
        grants.push(reward.next(WAIT).await?);
    }
    let refused = ctl
        .fails(1, &["cancel", "--customer-id", &customer])
        .await?;
    assert!(refused.contains("3 sagas match"), "{refused}");
    assert!(
        refused.contains("stdin is not a terminal") && refused.contains("--yes"),
        "{refused}"
    );
    for id in &stuck {
        let saga = p.get(&format!("/v1/sagas/{id}")).await?;
        assert_eq!(
            (saga["state"].clone(), saga["stop_reason"].clone()),
            (json!("running"), Value::Null),
            "nothing was cancelled without a confirmation: {saga}"
        );
    }
    let outcome = ctl
        .json(&[
            "cancel",
            "--customer-id",
            &customer,
            "--state",
            "running",
            "--yes",
            "--batch",
            "2",
        ])
        .await?;
    assert_eq!(
        (
            outcome["listed"].clone(),
            outcome["matched"].clone(),
            outcome["affected"].clone(),
            outcome["calls"].clone(),
            outcome["more"].clone()
        ),
        (json!(3), json!(3), json!(3), json!(2), json!(false)),
        "{outcome}"
    );
    for grant in &grants {
        reward
            .reply(
                grant,
                Reply::Failed(StepFailure::retryable("busy", "try later")),
            )
            .await?;
    }
    for id in &stuck {
        let saga = p.wait_terminal(id, WAIT).await?;
        assert_eq!(saga["state"], "cancelled", "{saga}");
        assert_eq!(compensation_names(&saga), ["mission.reopen"]);
    }
    let nothing = ctl
        .run(&["cancel", "--customer-id", &customer, "--yes"])
        .await?;
    assert_eq!(nothing.code, 0, "{nothing:?}");
    assert!(nothing.stderr.contains("no saga matches"), "{nothing:?}");

    // Bulk retry (the state defaults to failed), printed for people.
    let failed = [
        failed_saga(&p, &reward).await?,
        failed_saga(&p, &reward).await?,
    ];
    let retried = ctl
        .run(&["retry", "--type", "mission_reward", "--yes"])
        .await?;
    assert_eq!(retried.code, 0, "{retried:?}");
    assert!(
        retried
            .stdout
            .contains("retry: 2 of 2 listed sagas affected"),
        "{retried:?}"
    );
    assert!(retried.stderr.contains("2 sagas match"), "{retried:?}");
    for _ in 0..2 {
        let revoke = reward.next(WAIT).await?;
        reward.reply(&revoke, done()).await?;
    }
    for id in &failed {
        assert_eq!(p.wait_terminal(id, WAIT).await?["state"], "compensated");
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_lists_and_replays_a_dead_letter() -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let p = TestPlatform::start().await?;
    let ctl = Sagactl::new(&p, &p.tokens.admin).await?;
    let subject = format!("{}.cmd.reward.grant", p.prefix);
    let js = async_nats::jetstream::new(p.nats.clone());
    js.publish(subject.clone(), "not a command".into())
        .await?
        .await?;

    let letters = wait_for(WAIT, "a dead letter", || async {
        let page = ctl.json(&["dead-letters", "list"]).await?;
        Ok(page["items"]
            .as_array()
            .filter(|items| !items.is_empty())
            .cloned())
    })
    .await?;
    let letter = &letters[0];
    assert_eq!(letter["original_subject"], subject.as_str(), "{letter}");
    assert_eq!(letter["payload"], "not a command", "{letter}");
    assert_eq!(letter["consumer"], "worker-reward", "{letter}");
    let id = letter["id"].as_u64().context("id")?.to_string();
    let table = ctl.run(&["dead-letters", "list"]).await?;
    assert!(
        table.stdout.contains(&subject) && table.stdout.contains("not a command"),
        "{table:?}"
    );

    let mut seen = p.nats.subscribe(subject.clone()).await?;
    let replayed = ctl.json(&["dead-letters", "replay", &id]).await?;
    assert_eq!(replayed["subject"], subject.as_str(), "{replayed}");
    let again = tokio::time::timeout(WAIT, seen.next())
        .await?
        .context("the replayed message")?;
    assert_eq!(&again.payload[..], b"not a command");
    let relisted =
        wait_for(WAIT, "the replayed garbage to be parked again", || async {
            let page = ctl.json(&["dead-letters", "list", "--all"]).await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            Ok((items.len() == 1
                && items[0]["id"].as_u64().map(|i| i.to_string()) != Some(id.clone()))
            .then_some(items))
        })
        .await?;
    assert_eq!(relisted[0]["payload"], "not a command");
    let stderr = ctl.fails(1, &["dead-letters", "replay", &id]).await?;
    assert!(stderr.contains("dead_letter_not_found (404)"), "{stderr}");
    p.stop().await
}

/// A platform without `GET /v1/sagas/{id}/events` (it answers 404 `route_not_found`, as
/// before this round): `watch` polls `GET /v1/sagas/{id}` instead and still prints each change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_polls_a_platform_that_cannot_stream_changes() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Path as UrlPath, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    async fn saga(
        State(reads): State<Arc<AtomicUsize>>,
        UrlPath(id): UrlPath<String>,
    ) -> axum::Json<Value> {
        let read = reads.fetch_add(1, Ordering::SeqCst);
        let (state, step) = match read {
            0 => ("running", "running"),
            1 => ("running", "retrying"),
            _ => ("compensated", "failed"),
        };
        axum::Json(json!({
            "id": id, "type": "mission_reward", "definition_version": 2, "state": state,
            "steps": [{"name": "reward.grant", "state": step, "attempts": read + 1,
                       "last_error": "budget_exhausted: no budget left"}],
            "compensations": [], "updated_at": format!("2026-05-01T12:00:0{read}Z"),
        }))
    }
    async fn no_route() -> impl IntoResponse {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "application/problem+json")],
            json!({"type": "/problems/route_not_found", "title": "Not Found", "status": 404,
                   "detail": "no such route", "code": "route_not_found"})
            .to_string(),
        )
    }
    let reads = Arc::new(AtomicUsize::new(0));
    let router = axum::Router::new()
        .route("/v1/sagas/{id}", axum::routing::get(saga))
        .fallback(no_route)
        .with_state(reads.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let ctl = Sagactl {
        binary: binary().await?,
        base,
        token: "any".into(),
        secrets: vec!["any".into()],
    };
    let watched = ctl
        .run(&["watch", "s-1", "--interval-ms", "50", "--timeout", "30"])
        .await?;
    server.abort();
    assert_eq!(watched.code, 1, "a compensated saga exits 1: {watched:?}");
    assert!(watched.stderr.contains("polling every 50ms"), "{watched:?}");
    let lines: Vec<_> = watched.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{watched:?}");
    assert!(
        lines[1].ends_with("step reward.grant: running, attempt 1"),
        "{lines:?}"
    );
    assert!(
        lines[2]
            .ends_with("step reward.grant: retrying, attempt 2: budget_exhausted: no budget left"),
        "{lines:?}"
    );
    assert!(
        lines[3].ends_with("saga: running -> compensated"),
        "{lines:?}"
    );
    assert_eq!(lines[5], "saga s-1 ended compensated");
    assert!(reads.load(Ordering::SeqCst) >= 3);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The routes added in this round: definitions, history, discard, server-sent events, and the
// my-page rebuild.
// ---------------------------------------------------------------------------------------------

/// `GET /v1/definitions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_lists_the_definitions() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let ctl = Sagactl::new(&p, &p.tokens.reader).await?;
    let definitions = ctl.json(&["definitions", "list"]).await?;
    let mission_reward = definitions["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|d| d["type"] == "mission_reward" && d["latest"] == true)
        .cloned()
        .with_context(|| format!("the latest mission_reward in {definitions}"))?;
    let steps: Vec<_> = mission_reward["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(
        steps.first(),
        Some(&json!("mission.complete")),
        "{mission_reward}"
    );
    let table = ctl.run(&["definitions", "list"]).await?;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table.stdout.contains("mission_reward") && table.stdout.contains("mission.reopen"),
        "{table:?}"
    );
    p.stop().await
}

/// `GET /v1/sagas/{id}/history`, read in pages of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_shows_the_history_of_a_cancelled_saga() -> anyhow::Result<()> {
    let (p, reward) = without_reward_worker().await?;
    let ctl = Sagactl::new(&p, &p.tokens.admin).await?;
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let id = p.start_saga(mission["id"].as_str().context("id")?).await?;
    let grant = reward.next(WAIT).await?;
    ctl.json(&["cancel", &id]).await?;
    reward.reply(&grant, granted()).await?;
    let revoke = reward.next(WAIT).await?;
    reward.reply(&revoke, done()).await?;
    assert_eq!(p.wait_terminal(&id, WAIT).await?["state"], "cancelled");

    let history = ctl.json(&["history", &id, "--limit", "2"]).await?;
    let items = history["items"].as_array().context("items")?;
    let kinds: Vec<_> = items.iter().map(|e| e["kind"].clone()).collect();
    for kind in [
        "step_started",
        "step_ended",
        "compensation_started",
        "compensation_ended",
        "operator",
    ] {
        assert!(kinds.contains(&json!(kind)), "{kind} in {history}");
    }
    let operator = items
        .iter()
        .find(|e| e["kind"] == "operator")
        .context("the operator entry")?;
    assert_eq!(operator["action"], "cancel", "{operator}");
    let table = ctl.run(&["history", &id]).await?;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("reward.revoke"), "{table:?}");
    p.stop().await
}

/// `DELETE /v1/dead-letters/{id}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_discards_a_dead_letter() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let ctl = Sagactl::new(&p, &p.tokens.admin).await?;
    let js = async_nats::jetstream::new(p.nats.clone());
    js.publish(format!("{}.cmd.reward.grant", p.prefix), "garbage".into())
        .await?
        .await?;
    let letters = wait_for(WAIT, "a dead letter", || async {
        let page = ctl.json(&["dead-letters", "list"]).await?;
        Ok(page["items"]
            .as_array()
            .filter(|items| !items.is_empty())
            .cloned())
    })
    .await?;
    let id = letters[0]["id"].as_u64().context("id")?.to_string();
    let discarded = ctl.json(&["dead-letters", "discard", &id]).await?;
    assert_eq!(
        discarded["id"].as_u64().map(|i| i.to_string()),
        Some(id.clone()),
        "{discarded}"
    );
    let page = ctl.json(&["dead-letters", "list"]).await?;
    assert_eq!(page["items"], json!([]), "{page}");
    let stderr = ctl.fails(1, &["dead-letters", "discard", &id]).await?;
    assert!(stderr.contains("dead_letter_not_found"), "{stderr}");
    p.stop().await
}

/// `GET /v1/sagas/{id}/events`: watch follows the stream, not a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_watches_a_saga_through_server_sent_events() -> anyhow::Result<()> {
    let (p, reward) = without_reward_worker().await?;
    let ctl = Sagactl::new(&p, &p.tokens.reader).await?;
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let id = p.start_saga(mission["id"].as_str().context("id")?).await?;
    let grant = reward.next(WAIT).await?;
    let mut watch = ctl
        .command(&["--json", "watch", &id, "--timeout", "30"])
        .spawn()?;
    let mut lines = BufReader::new(watch.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await??
        .context("the first version of the saga")?;
    let first: Value = serde_json::from_str(&first)?;
    assert_eq!(first["state"], "running", "{first}");
    reward.reply(&grant, granted()).await?;
    let mut versions = vec![first];
    while let Some(line) = tokio::time::timeout(RUN_TIMEOUT, lines.next_line()).await?? {
        versions.push(serde_json::from_str(&line).with_context(|| line.clone())?);
    }
    let mut stderr = String::new();
    watch
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)
        .await?;
    let status = tokio::time::timeout(RUN_TIMEOUT, watch.wait()).await??;
    let stdout = format!("{versions:?}");
    assert!(!stderr.contains(&p.tokens.reader), "no token in the output");
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("server-sent events"), "{stderr}");
    assert!(versions.len() >= 2, "a version per change: {stdout}");
    assert_eq!(
        versions.last().map(|s| s["state"].clone()),
        Some(json!("completed"))
    );
    p.stop().await
}

/// Enable once the one-process platform serves `/v1/mypages/rebuild` (it runs the my-page
/// worker): 404 route_not_found today.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_rebuilds_the_mypage_view_and_waits_for_it() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let ctl = Sagactl::new(&p, &p.tokens.admin).await?;
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let id = p.start_saga(mission["id"].as_str().context("id")?).await?;
    p.wait_terminal(&id, WAIT).await?;
    let rebuilt = ctl
        .json(&["mypage", "rebuild", "--wait", "--timeout", "60"])
        .await?;
    assert_eq!(rebuilt["state"], "done", "{rebuilt}");
    assert_eq!(
        rebuilt["generation"], rebuilt["serving_generation"],
        "{rebuilt}"
    );
    let status = ctl.json(&["mypage", "status"]).await?;
    assert_eq!(status["state"], "done", "{status}");
    p.stop().await
}
