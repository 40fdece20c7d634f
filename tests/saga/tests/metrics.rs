//! `/metrics` of the platform: it parses as Prometheus text, its counters move by exactly what
//! a known run did, and every metric the Grafana dashboard and the alert rules name is really
//! exposed. In its own test binary, so that no other test's sagas move the counters.

use std::collections::BTreeSet;
use std::io::BufRead as _;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value as Metric};
use reqwest::Method;
use saga_tests::TestPlatform;
use serde_json::{Value, json};
use workers::telegram_stand_in::FaultSpec;

const WAIT: Duration = Duration::from_secs(30);

async fn scrape(p: &TestPlatform) -> anyhow::Result<(String, Scrape)> {
    let response = p.http.get(format!("{}/metrics", p.base)).send().await?;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await?;
    let parsed = Scrape::parse(std::io::Cursor::new(text.clone()).lines())?;
    Ok((text, parsed))
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matches =
        |s: &&Sample| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
    scrape
        .samples
        .iter()
        .filter(matches)
        .map(|s| match &s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Metric::Summary(_) => 0.0,
        })
        .sum()
}

/// Checks the exposition the way `promtool check metrics` does for what we emit: every family
/// has a TYPE, counters end in `_total`, names and label names are valid, no sample repeats.
fn lint(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut typed = std::collections::HashMap::new();
    let mut seen = BTreeSet::new();
    let valid = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                problems.push(format!("bad TYPE line: {line}"));
                continue;
            };
            if kind == "counter" && !name.ends_with("_total") {
                problems.push(format!("counter {name} does not end in _total"));
            }
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid(name) {
            problems.push(format!("invalid metric name: {line}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        if !typed.contains_key(family) {
            problems.push(format!("{name} has no TYPE"));
        }
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s).to_owned();
        if !seen.insert(series.clone()) {
            problems.push(format!("repeated series {series}"));
        }
        if line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .is_none()
        {
            problems.push(format!("bad value: {line}"));
        }
    }
    problems
}

/// Metric families named in PromQL expressions (histogram suffixes removed).
fn named_metrics(expressions: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in expressions {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("saga_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn dashboard_expressions() -> anyhow::Result<Vec<String>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/saga-platform.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut expressions = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "panel ids are unique"
        );
        assert!(
            panel["title"].is_string() && panel["type"].is_string(),
            "{panel}"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{panel}");
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            assert!(target["refId"].is_string(), "{target}");
            expressions.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    Ok(expressions)
}

fn alert_expressions() -> anyhow::Result<Vec<String>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/saga-alerts.yml"
    );
    let text = std::fs::read_to_string(path)?;
    let expressions: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(|e| e.trim().to_owned()))
        .collect();
    assert!(
        expressions.len() >= 3,
        "stuck sagas, DLQ growth, compensation failures"
    );
    Ok(expressions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_count_a_known_run_and_cover_the_dashboard() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (_, before) = scrape(&p).await?;

    let (_, _, happy) = p.customer_with_mission(10).await?;
    let saga = p.start_saga(happy["id"].as_str().expect("id")).await?;
    assert_eq!(p.wait_terminal(&saga, WAIT).await?["state"], "completed");

    let (_, _, retried) = p.customer_with_mission(10).await?;
    p.stand_in().push_fault(FaultSpec {
        status: 500,
        count: 1,
        retry_after: None,
    })?;
    let saga = p.start_saga(retried["id"].as_str().expect("id")).await?;
    assert_eq!(p.wait_terminal(&saga, WAIT).await?["state"], "completed");

    let (status, _, _) = p
        .call(
            Method::PUT,
            "/v1/rewards/budget",
            Some(json!({"remaining_points": 0})),
        )
        .await?;
    assert_eq!(status, 200);
    let (_, _, refused) = p.customer_with_mission(10).await?;
    let saga = p.start_saga(refused["id"].as_str().expect("id")).await?;
    assert_eq!(p.wait_terminal(&saga, WAIT).await?["state"], "compensated");

    let js = async_nats::jetstream::new(p.nats.clone());
    js.publish(format!("{}.cmd.reward.grant", p.prefix), "garbage".into())
        .await?
        .await?;
    saga_tests::wait_for(WAIT, "the dead letter to be counted", || async {
        let (_, after) = scrape(&p).await?;
        Ok((value(
            &after,
            "saga_dead_letters_total",
            &[("consumer", "worker-reward")],
        ) >= 1.0)
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (text, after) = scrape(&p).await?;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let mission_reward = ("saga_type", "mission_reward");
    assert_eq!(delta("saga_started_total", &[mission_reward]), 3.0);
    assert_eq!(
        delta(
            "saga_finished_total",
            &[mission_reward, ("outcome", "completed")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "saga_finished_total",
            &[mission_reward, ("outcome", "compensated")]
        ),
        1.0
    );
    assert_eq!(
        delta("saga_duration_seconds", &[("outcome", "completed")]),
        2.0
    );
    assert_eq!(
        delta("saga_step_retries_total", &[("step", "telegram.send")]),
        1.0
    );
    assert_eq!(
        delta("saga_step_retries_total", &[("step", "reward.grant")]),
        0.0
    );
    assert_eq!(
        delta(
            "saga_step_duration_seconds",
            &[("step", "reward.grant"), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "saga_step_duration_seconds",
            &[("step", "reward.grant"), ("outcome", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "saga_compensations_total",
            &[("step", "mission.reopen"), ("outcome", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        delta("saga_telegram_calls_total", &[("result", "sent")]),
        2.0
    );
    assert_eq!(
        delta(
            "saga_telegram_calls_total",
            &[("result", "telegram_unavailable")]
        ),
        1.0
    );
    assert_eq!(
        delta("saga_dead_letters_total", &[("consumer", "worker-reward")]),
        1.0
    );
    assert!(
        delta("saga_timer_lag_seconds", &[]) >= 1.0,
        "the retry's backoff timer fired"
    );
    assert_eq!(
        value(
            &after,
            "saga_outbox_backlog",
            &[("service", "orchestrator")]
        ),
        0.0
    );
    assert_eq!(value(&after, "saga_active", &[("state", "running")]), 0.0);

    let problems = lint(&text);
    assert!(problems.is_empty(), "{problems:#?}");
    if let Ok(output) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())?;
            child.wait_with_output()
        })
    {
        assert!(
            output.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let exposed: BTreeSet<String> = after.samples.iter().map(|s| s.metric.clone()).collect();
    let families: BTreeSet<String> = exposed
        .iter()
        .map(|n| {
            ["_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_owned()
        })
        .collect();
    let mut named = named_metrics(&dashboard_expressions()?);
    named.extend(named_metrics(&alert_expressions()?));
    let missing: Vec<_> = named.iter().filter(|n| !families.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alerts name metrics /metrics lacks: {missing:?}"
    );
    p.stop().await
}
