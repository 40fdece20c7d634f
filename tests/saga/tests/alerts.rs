//! The alert rules and the Grafana dashboard on the real tools (Debian's `prometheus` package,
//! which `./dev.sh test` installs):
//!
//! - `promtool check rules` accepts `deploy/prometheus/saga-alerts.yml` and `promtool test
//!   rules` passes its unit tests (`saga-alerts.test.yml`), which show every alert firing and
//!   not firing;
//! - a real Prometheus (its own configuration and data in a temporary directory, a spare
//!   loopback port) scrapes a test platform's gateway every second with the admin token and
//!   loads the alert rules. After a known run (sagas completed, retried after a Telegram 500 and
//!   compensated, dead letters from a worker and from the Mypage projector, an event of a type
//!   nobody knows, gift exchanges queued while Telegram fails until the gift worker's breaker
//!   opens, then Telegram back, a Mypage rebuild) every query of the dashboard, evaluated through
//!   Prometheus's HTTP API, returns data, every rule evaluates without error, and the
//!   dead-letter alert fires.
//!
//! In its own test binary: the metrics recorder is per process, so no other test's sagas move
//! the counters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::Method;
use saga_tests::{TestPlatform, default_settings, wait_for};
use serde_json::{Value, json};
use workers::telegram_stand_in::FaultSpec;

const WAIT: Duration = Duration::from_secs(30);

fn tool(variable: &str, default: &str) -> anyhow::Result<String> {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    if !Path::new(&path).exists() {
        bail!("{path} is missing: ./dev.sh test installs Debian's prometheus package");
    }
    Ok(path)
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command; fails with its output unless it succeeds.
fn run(program: &str, args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {program}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{program} {args:?} failed:\n{text}");
    }
    Ok(text)
}

#[test]
fn promtool_checks_the_alert_rules_and_passes_their_unit_tests() -> anyhow::Result<()> {
    let promtool = tool("SAGA_PROMTOOL", "/usr/bin/promtool")?;
    let dir = repository().join("deploy/prometheus");
    let checked = run(&promtool, &["check", "rules", "saga-alerts.yml"], &dir)?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(&promtool, &["test", "rules", "saga-alerts.test.yml"], &dir)?;
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has a unit test that shows it firing and one that shows it quiet.
    let rules = std::fs::read_to_string(dir.join("saga-alerts.yml"))?;
    let tests = std::fs::read_to_string(dir.join("saga-alerts.test.yml"))?;
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:").map(str::trim))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert} has no test where it stays quiet"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert} has no test where it fires"
        );
    }
    Ok(())
}

/// A Prometheus process with its own directory; stopped and removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second with `token`, with the
    /// repository's alert rules.
    async fn start(target: &str, token: &str) -> anyhow::Result<Self> {
        let binary = tool("SAGA_PROMETHEUS", "/usr/bin/prometheus")?;
        let dir =
            std::env::temp_dir().join(format!("saga-prometheus-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("data"))?;
        let rules = repository()
            .join("deploy/prometheus/saga-alerts.yml")
            .canonicalize()?;
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{
                "job_name": "saga-platform",
                "metrics_path": "/metrics",
                "authorization": {"credentials": token},
                "static_configs": [{"targets": [target]}],
            }],
        });
        // YAML is a superset of JSON.
        std::fs::write(dir.join("prometheus.yml"), config.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let prometheus = Self {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        wait_for(WAIT, "Prometheus to be ready", || async {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            Ok(ready.then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; its log: {}", prometheus.log()))?;
        Ok(prometheus)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`'s `data`.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await?
            .json()
            .await?;
        if answer["status"] != "success" {
            bail!("{path} {query:?}: {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// An instant query's result.
    async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every query of the dashboard, with Grafana's variables given values Prometheus takes.
fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        repository().join("deploy/grafana/saga-platform.json"),
    )?)?;
    let mut queries = Vec::new();
    let mut panels: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            assert!(!expr.contains('$'), "a variable left in {expr}");
            queries.push((panel["title"].as_str().unwrap_or_default().to_owned(), expr));
        }
    }
    assert!(queries.len() >= 20, "{queries:?}");
    Ok(queries)
}

/// A sample's value as a number (`NaN` when Prometheus says so).
fn number(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn start_mission_saga(p: &TestPlatform, points: i64) -> anyhow::Result<Value> {
    let (_, _, mission) = p.customer_with_mission(points).await?;
    let saga = p
        .start_saga(mission["id"].as_str().context("mission id")?)
        .await?;
    p.wait_terminal(&saga, WAIT).await
}

/// The platform's own counter (or gauge) summed over the series that match `labels`.
async fn exposed(p: &TestPlatform, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
    let text = p
        .http
        .get(format!("{}/metrics", p.base))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels.iter().all(|label| l.contains(label))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// Garbage for the reward worker, and for the Mypage projector.
async fn garbage(p: &TestPlatform) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(p.nats.clone());
    js.publish(format!("{}.cmd.reward.grant", p.prefix), "garbage".into())
        .await?
        .await?;
    js.publish(
        format!("{}.evt.mission.MissionUpdated", p.prefix),
        "not an event".into(),
    )
    .await?
    .await?;
    Ok(())
}

/// A saga whose Telegram step fails once with a 500 and is retried after a backoff timer.
async fn retried_saga(p: &TestPlatform) -> anyhow::Result<()> {
    p.stand_in().push_fault(FaultSpec {
        status: 500,
        count: 1,
        retry_after: None,
    })?;
    let saga = start_mission_saga(p, 10).await?;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["steps"][4]["attempts"], 2, "{saga}");
    Ok(())
}

/// The known run: what each panel of the dashboard shows.
///
/// The processes make a labelled series at its first observation, so Prometheus's `rate()` and
/// `increase()` see only what comes after the first scrape of it: the run makes the retries,
/// timer firings and dead letters twice, some seconds apart.
async fn known_run(p: &TestPlatform) -> anyhow::Result<()> {
    // Completed after one Telegram 500 (a retry, a backoff timer), and completed at once.
    retried_saga(p).await?;
    assert_eq!(start_mission_saga(p, 10).await?["state"], "completed");

    // Compensated: the reward budget is spent.
    let budget = |points: Value| async move {
        let (status, _, _) = p
            .call(
                Method::PUT,
                "/v1/rewards/budget",
                Some(json!({ "remaining_points": points })),
            )
            .await?;
        assert_eq!(status, 200);
        anyhow::Ok(())
    };
    budget(json!(0)).await?;
    assert_eq!(start_mission_saga(p, 10).await?["state"], "compensated");
    budget(Value::Null).await?;

    // Dead letters, and an event of a type nobody knows (skipped).
    garbage(p).await?;
    let js = async_nats::jetstream::new(p.nats.clone());
    js.publish(
        format!("{}.evt.mission.MissionRenamed", p.prefix),
        json!({"event_type": "MissionRenamed", "schema_version": 1})
            .to_string()
            .into(),
    )
    .await?
    .await?;

    // Gift exchanges while Telegram fails: queued by the fallback until the breaker opens,
    // then queued without a call; Telegram back, the breaker closes again.
    let (customer, _, mission) = p.customer_with_mission(1000).await?;
    let earned = p
        .start_saga(mission["id"].as_str().context("mission id")?)
        .await?;
    assert_eq!(p.wait_terminal(&earned, WAIT).await?["state"], "completed");
    let (status, _, gift) = p
        .call(
            Method::POST,
            "/v1/gifts",
            Some(json!({"name": "Lantern", "price_points": 1, "stock": 100})),
        )
        .await?;
    assert_eq!(status, 201, "{gift}");
    let gift = gift["id"].as_str().context("gift id")?.to_owned();
    p.stand_in().push_fault(FaultSpec {
        status: 500,
        count: 100_000,
        retry_after: None,
    })?;
    let exchange = || async {
        let (status, _, saga) = p
            .call(
                Method::POST,
                &format!("/v1/gifts/{gift}/exchanges"),
                Some(json!({ "customer_id": customer })),
            )
            .await?;
        assert_eq!(status, 202, "{saga}");
        p.wait_terminal(saga["id"].as_str().context("saga id")?, WAIT)
            .await
    };
    for _ in 0..4 {
        let saga = exchange().await?;
        assert_eq!(saga["context"]["notification_status"], "queued", "{saga}");
    }
    assert!(
        exposed(
            p,
            "saga_gift_notify_queued_total",
            &["reason=\"breaker_open\""]
        )
        .await?
            >= 1.0,
        "the breaker opened and the fallback queued without calling"
    );
    p.stand_in().reset();
    wait_for(Duration::from_secs(60), "the breaker to close", || async {
        let saga = exchange().await?;
        if saga["context"]["notification_status"] == "sent" {
            return Ok(Some(()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(None)
    })
    .await?;

    // Once more, the first ones scraped by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    garbage(p).await?;
    retried_saga(p).await?;

    // A Mypage rebuild.
    let (status, _, rebuild) = p.call(Method::POST, "/v1/mypages/rebuild", None).await?;
    assert!(status == 202 || status == 200, "{status} {rebuild}");
    wait_for(WAIT, "the parked messages to be counted", || async {
        let worker = exposed(
            p,
            "saga_dead_letters_total",
            &["consumer=\"worker-reward\""],
        )
        .await?;
        let mypage = exposed(p, "saga_dead_letters_total", &["consumer=\"mypage\""]).await?;
        let skipped = exposed(p, "saga_events_skipped_total", &["MissionRenamed"]).await?;
        Ok((worker >= 1.0 && mypage >= 1.0 && skipped >= 1.0).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query_after_a_known_run() -> anyhow::Result<()> {
    let mut settings = default_settings();
    // The gift worker's breaker opens after two failed calls and tries again after 2 s.
    settings.gift.gift_breaker_failures = 2;
    settings.gift.gift_breaker_open_ms = 2000;
    settings.gift.gift_call_retries = 0;
    let p = TestPlatform::start_with(settings).await?;
    let target = p.base.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target, &p.tokens.admin).await?;
    wait_for(WAIT, "the first scrapes", || async {
        let up = prometheus.query("up{job=\"saga-platform\"}").await?;
        Ok((up.len() == 1 && number(&up[0]) == 1.0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; Prometheus's log: {}", prometheus.log()))?;

    known_run(&p).await?;
    // A couple of scrapes after the run (and the platform's 5 s gauges refreshed).
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut empty = Vec::new();
    let mut answered = 0;
    for (panel, expr) in dashboard_queries()? {
        let result = prometheus.query(&expr).await?;
        if result.is_empty() {
            empty.push(format!("{panel}: {expr}"));
        } else if result.iter().all(|s| number(s).is_nan()) {
            empty.push(format!("{panel}: {expr} (only NaN: {result:?})"));
        } else {
            answered += 1;
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data after the known run:\n{}",
        empty.join("\n")
    );
    assert!(answered >= 20);

    // The rules load and evaluate; the dead letters of the run fire their alert.
    let rules = prometheus.api("rules", &[]).await?;
    let mut names = Vec::new();
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            assert_eq!(rule["health"], "ok", "{rule}");
            names.push(rule["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(names.len(), 6, "{names:?}");
    wait_for(WAIT, "the dead-letter alert to fire", || async {
        let alerts = prometheus.api("alerts", &[]).await?;
        Ok(alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["labels"]["alertname"] == "SagaDeadLettersGrowing" && a["state"] == "firing")
            .then_some(()))
    })
    .await?;
    drop(prometheus);
    p.stop().await
}
