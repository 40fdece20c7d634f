//! The hardened edges, through the real platform: slow clients are cut off, oversized and
//! malformed requests get problem+json with the right status (405, 413, 414, 415, 431, NUL
//! characters, dates out of range, arrays where an object belongs), starts are rate-limited per
//! token, bulk commands are bounded, a message too large to park whole is parked truncated, a
//! message on a subject nobody serves is parked, and a dead letter replays only to the
//! platform's own streams.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use reqwest::Method;
use saga_tests::{TestPlatform, default_settings, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn assert_problem(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    expected: (u16, &str),
) {
    assert_eq!(
        (status, body["code"].as_str()),
        (expected.0, Some(expected.1)),
        "{body}"
    );
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_problem() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let http = &p.http;

    let big = json!({"customer_id": "p1", "title": "x".repeat(100_000), "reward_points": 5});
    let response = http
        .post(format!("{}/v1/missions", p.base))
        .json(&big)
        .send()
        .await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    assert_problem(
        status,
        &headers,
        &response.json().await?,
        (413, "payload_too_large"),
    );
    // Its body was not read: the connection is closed, and the answer says so, so that the
    // client does not send its next request on it.
    assert_eq!(headers["connection"], "close");

    let (status, headers, body) = p
        .call(
            Method::POST,
            "/v1/missions",
            Some(json!({"customer_id": "p1", "title": "nul\u{0}here", "reward_points": 5})),
        )
        .await?;
    assert_problem(status, &headers, &body, (422, "invalid_body"));
    let (status, headers, body) = p.call(Method::GET, "/v1/missions/%00", None).await?;
    assert_problem(status, &headers, &body, (404, "mission_not_found"));
    let (status, headers, body) = p
        .call(Method::GET, "/v1/sagas?customer_id=%00", None)
        .await?;
    assert_problem(status, &headers, &body, (400, "invalid_query"));

    for date in [
        "0001-01-01T00:00:00Z",
        "%2B275000-01-01T00:00:00Z",
        "9999-99-99",
    ] {
        let (status, headers, body) = p
            .call(
                Method::GET,
                &format!("/v1/sagas?created_after={date}"),
                None,
            )
            .await?;
        assert_problem(status, &headers, &body, (400, "invalid_query"));
    }
    let (status, headers, body) = p
        .call(
            Method::POST,
            "/v1/sagas/cancel",
            Some(json!({"created_before": "0001-01-01T00:00:00Z"})),
        )
        .await?;
    assert_problem(status, &headers, &body, (422, "invalid_body"));

    for body in [json!([1, 2]), json!("text"), json!(7)] {
        let (status, headers, problem) = p.call(Method::POST, "/v1/sagas", Some(body)).await?;
        assert_problem(status, &headers, &problem, (422, "invalid_body"));
    }

    let response = http.delete(format!("{}/v1/sagas", p.base)).send().await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    assert_problem(
        status,
        &headers,
        &response.json().await?,
        (405, "method_not_allowed"),
    );
    assert!(headers.contains_key("allow"));

    let response = http
        .get(format!("{}/v1/sagas?type={}", p.base, "a".repeat(9_000)))
        .send()
        .await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    assert_problem(
        status,
        &headers,
        &response.json().await?,
        (414, "uri_too_long"),
    );

    let response = http
        .get(format!("{}/v1/sagas", p.base))
        .header("x-padding", "b".repeat(20_000))
        .send()
        .await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    assert_problem(
        status,
        &headers,
        &response.json().await?,
        (431, "headers_too_large"),
    );

    let response = http
        .post(format!("{}/v1/missions", p.base))
        .header("content-type", "text/plain")
        .body("customer_id=p1")
        .send()
        .await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    assert_problem(
        status,
        &headers,
        &response.json().await?,
        (415, "unsupported_media_type"),
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_and_starts_are_rate_limited_per_token() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.edge.header_timeout_ms = 1_000;
    settings.edge.starts_per_second = 1;
    settings.edge.starts_burst = 2;
    let p = TestPlatform::start_with(settings).await?;

    let address = p.base.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let cut = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")?;
        let mut buffer = [0u8; 512];
        // The rest of the headers never comes: the server must give up by itself.
        let _ = stream.read(&mut buffer);
        Ok(started.elapsed())
    })
    .await??;
    assert!(
        cut < Duration::from_secs(5),
        "the slow client was held {cut:?}"
    );

    let (_, _, mission) = p.customer_with_mission(5).await?;
    let body = json!({"type": "mission_reward", "input": {"mission_id": mission["id"]}});
    let game = Some(p.tokens.game.as_str());
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let (status, headers, _) = p
            .call_as(game, Method::POST, "/v1/sagas", Some(body.clone()))
            .await?;
        if status == 429 {
            retry_after = headers.get("retry-after").cloned();
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some(), "429 says when to come back");
    let (status, _, _) = p
        .call_as(
            Some(p.tokens.admin.as_str()),
            Method::POST,
            "/v1/sagas",
            Some(body),
        )
        .await?;
    assert_ne!(status, 429, "another token has its own quota");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stray_and_foreign_messages_are_parked_not_kept() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.orchestrator.stray_sweep_secs = 1;
    let p = TestPlatform::start_with(settings).await?;
    let js = async_nats::jetstream::new(p.nats.clone());

    let near_limit = vec![b'x'; 1024 * 1024 - 200];
    js.publish(format!("{}.cmd.reward.grant", p.prefix), near_limit.into())
        .await?
        .await?;
    js.publish(format!("{}.cmd.nobody.listens", p.prefix), "stray".into())
        .await?
        .await?;
    let parked = wait_for(WAIT, "both to be parked", || async {
        let page = p.get("/v1/dead-letters").await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        Ok((items.len() >= 2).then_some(items))
    })
    .await?;
    let truncated = parked
        .iter()
        .find(|d| {
            d["original_subject"]
                .as_str()
                .is_some_and(|s| s.ends_with("cmd.reward.grant"))
        })
        .expect("the large one");
    let headers = &truncated["headers"];
    assert_eq!(
        headers["Dlq-Original-Size"],
        json!((1024 * 1024 - 200).to_string()),
        "{truncated}"
    );
    assert_eq!(
        headers["Dlq-Original-Sha256"].as_str().map(str::len),
        Some(64),
        "{truncated}"
    );
    let stray = parked
        .iter()
        .find(|d| {
            d["original_subject"]
                .as_str()
                .is_some_and(|s| s.ends_with("cmd.nobody.listens"))
        })
        .expect("the stray");
    assert!(
        stray["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no consumer serves")),
        "{stray}"
    );
    let stream = js
        .get_stream(
            contracts::Topology::new(&p.prefix).stream(contracts::topology::Stream::Commands),
        )
        .await?
        .get_info()
        .await?;
    assert_eq!(stream.state.messages, 0, "nothing stays behind");

    let id = truncated["id"].as_u64().expect("id");
    let (status, _, problem) = p
        .call(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
        .await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("dead_letter_truncated"))
    );

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Dlq-Original-Subject", "$JS.API.STREAM.DELETE.DLQ");
    headers.insert("Dlq-Reason", "planted");
    js.publish_with_headers(format!("{}.dlq.planted", p.prefix), headers, "{}".into())
        .await?
        .await?;
    let planted = wait_for(WAIT, "the planted dead letter", || async {
        let page = p.get("/v1/dead-letters").await?;
        Ok(page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|d| d["reason"] == "planted").cloned()))
    })
    .await?;
    let id = planted["id"].as_u64().expect("id");
    let (status, _, problem) = p
        .call(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
        .await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("dead_letter_not_replayable")),
        "{problem}"
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_command_is_bounded_per_call() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.skip_workers = vec![contracts::Worker::Reward];
    let p = TestPlatform::start_with(settings).await?;
    for _ in 0..3 {
        let (_, _, mission) = p.customer_with_mission(5).await?;
        let id = p.start_saga(mission["id"].as_str().expect("id")).await?;
        // Past its first step, waiting for the reward step nobody answers: cancelled, it stays
        // `running` until that step answers. (Cancelled before the mission step answered, it
        // would compensate at once and match no more.)
        wait_for(WAIT, "the reward step in flight", || async {
            let saga = p.get(&format!("/v1/sagas/{id}")).await?;
            let steps = saga["steps"].as_array().cloned().unwrap_or_default();
            let reward_sent = steps
                .iter()
                .any(|s| s["name"] == "reward.grant" && s["state"] == "running");
            Ok(reward_sent.then_some(()))
        })
        .await?;
    }
    let (status, _, first) = p
        .call(Method::POST, "/v1/sagas/cancel", Some(json!({"limit": 2})))
        .await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["matched"].clone(), first["more"].clone()),
        (json!(2), json!(true)),
        "{first}"
    );
    // The cancelled sagas still wait for their step in flight (nobody answers it), so they
    // still match: a call bounded above them all takes them all, and says there is no more.
    let (_, _, all) = p
        .call(Method::POST, "/v1/sagas/cancel", Some(json!({"limit": 3})))
        .await?;
    assert_eq!(
        (all["matched"].clone(), all["more"].clone()),
        (json!(3), json!(false)),
        "{all}"
    );
    let (status, _, problem) = p
        .call(Method::POST, "/v1/sagas/cancel", Some(json!({"limit": 0})))
        .await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_body"))
    );
    p.stop().await
}
