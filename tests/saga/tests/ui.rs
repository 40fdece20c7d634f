//! The saga page in a real browser: headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`) logs in through the page's form and clicks like a person would.
//!
//! - The list shows the counts by state, filters, pages with its cursor, and takes in a new
//!   saga without being reloaded; a compensated saga's page shows both lanes, the compensations
//!   in the order they ran, its history timeline and its trace link (a screenshot of it is left
//!   in `target/saga-page.png`).
//! - The dead-letter page lists what was parked; a reader sees the buttons disabled and, made
//!   to click anyway, the API's 403; an operator replays one entry and discards another, each
//!   after a confirmation, and sees them leave the list.
//! - An operator clicks cancel on a saga whose step is held in flight and sees it end
//!   `cancelled` once the step answers, then clicks retry on a failed saga and sees it move on
//!   to `compensated`.

use std::path::PathBuf;
use std::time::Duration;

use contracts::reply::{RewardGrantedV1, output_of};
use contracts::{Action, Command, Envelope, Reply, RewardId, StepFailure, Worker};
use fantoccini::Locator;
use reqwest::Method;
use saga_tests::browser::Browser;
use saga_tests::{FakeWorker, TestPlatform, default_settings, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `name` in the target directory (`CARGO_TARGET_DIR` when set), where screenshots go.
fn target_file(name: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
            PathBuf::from,
        )
        .join(name)
}

fn position(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not on the page"))
}

/// The number a state's count shows at the top of the list.
async fn count(browser: &Browser, state: &str) -> anyhow::Result<String> {
    Ok(browser
        .client
        .find(Locator::Css(&format!("a.count[data-state=\"{state}\"] b")))
        .await?
        .text()
        .await?)
}

/// The ids of the dead letters the API lists.
async fn dead_letter_ids(p: &TestPlatform) -> anyhow::Result<Vec<u64>> {
    let page = p.get("/v1/dead-letters").await?;
    Ok(page["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["id"].as_u64()).collect())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_counts_pages_and_follows_sagas_and_the_dead_letter_page_replays()
-> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let (_, _, happy) = p.customer_with_mission(10).await?;
    let completed = p.start_saga(happy["id"].as_str().expect("id")).await?;
    p.wait_terminal(&completed, WAIT).await?;
    let (_, _, held) = p.customer_with_mission(10).await?;
    let held_id = held["id"].as_str().expect("id");
    let (status, _, _) = p
        .call(Method::POST, &format!("/v1/missions/{held_id}/hold"), None)
        .await?;
    assert_eq!(status, 200);
    let compensated = p.start_saga(held_id).await?;
    let saga = p.wait_terminal(&compensated, WAIT).await?;
    assert_eq!(saga["state"], "compensated");
    let js = async_nats::jetstream::new(p.nats.clone());
    let subject = format!("{}.cmd.reward.grant", p.prefix);
    for garbage in ["garbage one", "garbage two"] {
        js.publish(subject.clone(), garbage.into()).await?.await?;
    }
    let parked = wait_for(WAIT, "two dead letters", || async {
        let ids = dead_letter_ids(&p).await?;
        Ok((ids.len() == 2).then_some(ids))
    })
    .await?;
    let (newest, oldest) = (parked[0], parked[1]);

    let browser = Browser::start().await?;
    browser.log_in(&p.base, &p.tokens.reader).await?;

    // The list: counts, filters, paging.
    browser.client.goto(&format!("{}/ui", p.base)).await?;
    let list = browser.html().await?;
    assert!(
        list.contains(&format!("href=\"/ui/sagas/{completed}\"")),
        "{list}"
    );
    assert!(
        list.contains(&format!("href=\"/ui/sagas/{compensated}\"")),
        "{list}"
    );
    assert_eq!(list.matches("class=\"saga\"").count(), 2);
    assert_eq!(count(&browser, "completed").await?, "1");
    assert_eq!(count(&browser, "compensated").await?, "1");
    assert_eq!(count(&browser, "running").await?, "0");
    assert_eq!(count(&browser, "").await?, "2");
    browser
        .client
        .find(Locator::Css("a.count[data-state=\"compensated\"]"))
        .await?
        .click()
        .await?;
    let filtered = browser
        .wait_until(WAIT, "the compensated sagas", |html| {
            html.contains("count current\" data-state=\"compensated\"")
        })
        .await?;
    assert!(
        filtered.contains(&compensated) && !filtered.contains(&format!("/ui/sagas/{completed}")),
        "{filtered}"
    );
    browser
        .client
        .goto(&format!("{}/ui?limit=1", p.base))
        .await?;
    let first = browser.html().await?;
    assert_eq!(first.matches("class=\"saga\"").count(), 1);
    assert!(
        first.contains(&format!("id=\"saga-{compensated}\"")),
        "newest first"
    );
    assert!(!first.contains("id=\"first-page\""));
    browser.click("next-page").await?;
    let second = browser
        .wait_until(WAIT, "the second page", |html| {
            html.contains("id=\"first-page\"")
        })
        .await?;
    assert_eq!(second.matches("class=\"saga\"").count(), 1);
    assert!(
        second.contains(&format!("id=\"saga-{completed}\"")),
        "{second}"
    );
    assert!(!second.contains("id=\"next-page\""), "the last page");

    // The list takes in a new saga, and its end, without being reloaded.
    browser.client.goto(&format!("{}/ui", p.base)).await?;
    browser
        .client
        .execute(
            "document.body.setAttribute('data-loaded-once', 'yes')",
            vec![],
        )
        .await?;
    let (_, _, later) = p.customer_with_mission(10).await?;
    let live = p.start_saga(later["id"].as_str().expect("id")).await?;
    let updated = browser
        .wait_until(WAIT, "the new saga on the list, completed", |html| {
            html.contains(&format!("id=\"saga-{live}\" data-state=\"completed\""))
        })
        .await?;
    assert!(
        updated.contains("data-loaded-once=\"yes\""),
        "updated in place, not reloaded"
    );
    assert_eq!(count(&browser, "completed").await?, "2");
    std::fs::write(
        target_file("saga-list.png"),
        browser.client.screenshot().await?,
    )?;

    // A compensated saga: lanes, history, trace; no buttons.
    let url = format!("{}/ui/sagas/{compensated}", p.base);
    browser.client.goto(&url).await?;
    let page = browser.html().await?;
    let forward = position(&page, "id=\"forward-lane\"");
    let lane = position(&page, "id=\"compensation-lane\"");
    assert!(forward < lane);
    assert_eq!(page[forward..lane].matches("class=\"box step\"").count(), 6);
    assert!(
        page[forward..lane].contains("mission_on_hold"),
        "the failed step shows its error"
    );
    let debit = position(&page[lane..], "<h3>wallet.debit</h3>");
    let revoke = position(&page[lane..], "<h3>reward.revoke</h3>");
    let reopen = position(&page[lane..], "<h3>mission.reopen</h3>");
    assert!(
        debit < revoke && revoke < reopen,
        "compensations in the order they ran"
    );
    let history = &page[position(&page, "id=\"history\"")..];
    let grant_sent = position(history, "step <b>reward.grant</b> attempt 1 sent");
    let grant_ended = position(history, "step <b>reward.grant</b> attempt 1 ended");
    let reopened = position(
        history,
        "compensation <b>mission.reopen</b> attempt 1 ended",
    );
    assert!(
        grant_sent < grant_ended && grant_ended < reopened,
        "the timeline in order"
    );
    assert!(!page.contains("id=\"cancel\"") && !page.contains("id=\"retry\""));
    let trace_id = saga["trace_id"].as_str().expect("trace id");
    assert!(
        page.contains(&format!("/trace/{trace_id}")),
        "the trace link"
    );
    let screenshot = target_file("saga-page.png");
    std::fs::write(&screenshot, browser.client.screenshot().await?)?;
    assert!(
        std::fs::metadata(&screenshot)?.len() > 10_000,
        "a real screenshot"
    );

    // The API docs for people: Swagger UI over /openapi.json, its own files only, under a
    // policy as strict as the page's; like every GET, only for a token that can read.
    browser.client.goto(&format!("{}/docs", p.base)).await?;
    let docs = browser
        .wait_until(WAIT, "Swagger UI to render the API", |html| {
            html.matches("class=\"opblock ").count() > 10
        })
        .await?;
    assert!(
        docs.contains("/v1/sagas/{id}/cancel"),
        "the operations are listed"
    );
    assert!(
        docs.contains("Reward saga platform"),
        "the document's title"
    );
    let (status, headers, _) = p
        .call_as(Some(&p.tokens.reader), Method::GET, "/docs/", None)
        .await?;
    assert_eq!(status, 200);
    let policy = headers["content-security-policy"].to_str()?;
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    let (status, _, _) = p.call_as(None, Method::GET, "/docs/", None).await?;
    assert_eq!(status, 401);

    // Dead letters, as a reader: listed, the buttons disabled, and the API's refusal shown
    // when one is clicked anyway.
    browser
        .client
        .goto(&format!("{}/ui/dead-letters", p.base))
        .await?;
    let letters = browser.html().await?;
    std::fs::write(
        target_file("saga-dead-letters.png"),
        browser.client.screenshot().await?,
    )?;
    assert!(
        position(&letters, &format!("id=\"dead-letter-{newest}\""))
            < position(&letters, &format!("id=\"dead-letter-{oldest}\"")),
        "newest first"
    );
    assert!(letters.contains(&subject), "{letters}");
    assert!(letters.contains("worker-reward"), "{letters}");
    assert!(letters.contains("garbage two"), "{letters}");
    assert!(letters.contains("id=\"read-only\""), "{letters}");
    let replay = browser
        .client
        .find(Locator::Id(&format!("replay-{newest}")))
        .await?;
    assert!(
        !replay.is_enabled().await?,
        "a reader's buttons are disabled"
    );
    browser
        .client
        .execute(
            "document.getElementById(arguments[0]).disabled = false",
            vec![Value::String(format!("replay-{newest}"))],
        )
        .await?;
    browser.click(&format!("replay-{newest}")).await?;
    browser.answer_dialog(true).await?;
    let refused = browser
        .wait_until(WAIT, "the refusal", |html| html.contains("Refused (403"))
        .await?;
    assert!(refused.contains("insufficient_scope"), "{refused}");
    assert!(refused.contains(&format!("id=\"dead-letter-{newest}\"")));
    assert_eq!(dead_letter_ids(&p).await?, [newest, oldest]);

    // As an operator: replay one (after a change of mind), discard the other.
    browser.log_out(&p.base).await?;
    browser.log_in(&p.base, &p.tokens.operator).await?;
    browser
        .client
        .goto(&format!("{}/ui/dead-letters", p.base))
        .await?;
    assert!(!browser.html().await?.contains("id=\"read-only\""));
    browser.click(&format!("replay-{newest}")).await?;
    let question = browser.answer_dialog(false).await?;
    assert!(
        question.contains(&format!("Replay dead letter {newest}")),
        "{question}"
    );
    browser
        .wait_until(WAIT, "nothing done", |html| {
            html.contains("nothing was done")
        })
        .await?;
    assert!(dead_letter_ids(&p).await?.contains(&newest));
    browser.click(&format!("replay-{newest}")).await?;
    browser.answer_dialog(true).await?;
    let replayed = browser
        .wait_until(WAIT, "the replayed dead letter to leave the list", |html| {
            !html.contains(&format!("id=\"dead-letter-{newest}\""))
        })
        .await?;
    assert!(
        replayed.contains(&format!("published again on {subject}")),
        "{replayed}"
    );
    assert!(!dead_letter_ids(&p).await?.contains(&newest));
    browser.click(&format!("discard-{oldest}")).await?;
    let question = browser.answer_dialog(true).await?;
    assert!(
        question.contains(&format!("Discard dead letter {oldest}")),
        "{question}"
    );
    browser
        .wait_until(
            WAIT,
            "the discarded dead letter to leave the list",
            |html| !html.contains(&format!("id=\"dead-letter-{oldest}\"")),
        )
        .await?;
    browser.client.refresh().await?;
    let again = browser.html().await?;
    assert!(
        !again.contains(&format!("id=\"dead-letter-{newest}\""))
            && !again.contains(&format!("id=\"dead-letter-{oldest}\"")),
        "{again}"
    );
    let ids = dead_letter_ids(&p).await?;
    assert!(!ids.contains(&newest) && !ids.contains(&oldest), "{ids:?}");
    browser.close().await?;

    let (status, _, _) = p
        .call(
            Method::GET,
            &format!("/ui/sagas/{}", uuid::Uuid::now_v7()),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    p.stop().await
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

/// The next command for `action` (a command sent again meanwhile is skipped).
async fn next_of(reward: &FakeWorker, action: Action) -> anyhow::Result<Envelope<Command>> {
    loop {
        let command = reward.next(WAIT).await?;
        if command.body.action() == action {
            return Ok(command);
        }
    }
}

/// Drives a saga on a held mission until its `reward.revoke` compensation fails for good.
async fn failed_saga(p: &TestPlatform, reward: &FakeWorker) -> anyhow::Result<String> {
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let mission_id = mission["id"].as_str().expect("id");
    let (status, _, _) = p
        .call(
            Method::POST,
            &format!("/v1/missions/{mission_id}/hold"),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let saga_id = p.start_saga(mission_id).await?;
    let grant = next_of(reward, Action::GrantReward).await?;
    reward.reply(&grant, granted()).await?;
    let revoke = next_of(reward, Action::RevokeReward).await?;
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
    assert_eq!(saga["state"], "failed", "{saga}");
    Ok(saga_id)
}

fn shows_state(html: &str, saga: &str, state: &str) -> bool {
    html.contains(&format!(
        "id=\"saga\" data-saga-id=\"{saga}\" data-state=\"{state}\""
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_and_retries_sagas_by_clicking() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.skip_workers = vec![Worker::Reward];
    // The browser takes its time: no command is sent again while the test holds it.
    settings.orchestrator.policies.step_timeout = Duration::from_secs(60);
    let p = TestPlatform::start_with(settings).await?;
    let reward = FakeWorker::attach(&p, Worker::Reward).await?;
    let (_, _, mission) = p.customer_with_mission(25).await?;
    let held = p.start_saga(mission["id"].as_str().expect("id")).await?;
    let grant = next_of(&reward, Action::GrantReward).await?;

    let browser = Browser::start().await?;
    let page = format!("{}/ui/sagas/{held}", p.base);
    browser.log_in(&p.base, &p.tokens.reader).await?;
    browser.client.goto(&page).await?;
    let cancel = browser.client.find(Locator::Id("cancel")).await?;
    assert!(!cancel.is_enabled().await?, "a reader may not cancel");
    assert!(browser.html().await?.contains("id=\"read-only\""));
    browser.log_out(&p.base).await?;

    // Cancel: confirmed, accepted, and the saga ends cancelled once the step answers.
    browser.log_in(&p.base, &p.tokens.operator).await?;
    browser.client.goto(&page).await?;
    assert!(shows_state(&browser.html().await?, &held, "running"));
    browser.click("cancel").await?;
    let question = browser.answer_dialog(true).await?;
    assert!(
        question.contains(&format!("Cancel saga {held}")),
        "{question}"
    );
    let accepted = browser
        .wait_until(WAIT, "the cancel to be accepted and shown", |html| {
            html.contains("id=\"stop-reason\">cancelled") && html.contains("accepted (202)")
        })
        .await?;
    assert!(
        shows_state(&accepted, &held, "running"),
        "the step in flight is awaited"
    );
    assert!(
        accepted.contains("<b class=\"actor\">test-operator</b>: <b class=\"action\">cancel</b>"),
        "the history shows who cancelled: {accepted}"
    );
    reward.reply(&grant, granted()).await?;
    let revoke = next_of(&reward, Action::RevokeReward).await?;
    reward.reply(&revoke, done()).await?;
    let cancelled = browser
        .wait_until(WAIT, "the page to show the saga cancelled", |html| {
            shows_state(html, &held, "cancelled")
        })
        .await?;
    assert!(cancelled.contains("<h3>reward.revoke</h3>"), "{cancelled}");
    assert_eq!(
        p.get(&format!("/v1/sagas/{held}")).await?["state"],
        "cancelled"
    );

    // Retry: a failed saga resumes and, once its compensation succeeds, ends compensated.
    let failed = failed_saga(&p, &reward).await?;
    browser
        .client
        .goto(&format!("{}/ui/sagas/{failed}", p.base))
        .await?;
    assert!(shows_state(&browser.html().await?, &failed, "failed"));
    browser.click("retry").await?;
    browser.answer_dialog(true).await?;
    let resumed = browser
        .wait_until(WAIT, "the retried saga to move", |html| {
            shows_state(html, &failed, "compensating")
        })
        .await?;
    assert!(resumed.contains("accepted (202)"), "{resumed}");
    let revoke = next_of(&reward, Action::RevokeReward).await?;
    assert_eq!(revoke.attempt, 2);
    reward.reply(&revoke, done()).await?;
    browser
        .wait_until(WAIT, "the page to show the saga compensated", |html| {
            shows_state(html, &failed, "compensated")
        })
        .await?;
    assert_eq!(
        p.get(&format!("/v1/sagas/{failed}")).await?["state"],
        "compensated"
    );
    browser.close().await?;
    p.stop().await
}
