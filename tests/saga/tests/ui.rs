//! The saga page in a real browser: headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`) logs in through the page's form, renders `/ui` and a compensated saga's
//! `/ui/sagas/{id}`, and the rendered DOM must list the sagas, show both lanes with the
//! compensations in the order they ran, and link the trace. A screenshot of the compensated
//! saga is left in `target/saga-page.png`.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use saga_tests::TestPlatform;
use saga_tests::browser::Browser;

const WAIT: Duration = Duration::from_secs(30);

fn position(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not on the page"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_page_lists_sagas_and_shows_both_lanes_of_a_compensated_one() -> anyhow::Result<()>
{
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

    let browser = Browser::start().await?;
    browser.log_in(&p.base, &p.tokens.reader).await?;
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
    browser
        .client
        .goto(&format!("{}/ui?state=compensated", p.base))
        .await?;
    let filtered = browser.html().await?;
    assert!(
        filtered.contains(&compensated) && !filtered.contains(&completed),
        "{filtered}"
    );

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
    let trace_id = saga["trace_id"].as_str().expect("trace id");
    assert!(
        page.contains(&format!("/trace/{trace_id}")),
        "the trace link"
    );

    let screenshot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/saga-page.png");
    std::fs::write(&screenshot, browser.client.screenshot().await?)?;
    browser.close().await?;
    assert!(
        std::fs::metadata(&screenshot)?.len() > 10_000,
        "a real screenshot"
    );

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
