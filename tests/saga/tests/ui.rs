//! The saga page in a real browser: headless Chromium (Debian's `chromium`) renders `/ui` and a
//! compensated saga's `/ui/sagas/{id}`, and the rendered DOM must list the sagas, show both
//! lanes with the compensations in the order they ran, and link the trace. A screenshot of the
//! compensated saga is left in `target/saga-page.png`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use saga_tests::TestPlatform;

const WAIT: Duration = Duration::from_secs(30);

fn chromium() -> PathBuf {
    let path = std::env::var("SAGA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is missing: ./dev.sh test installs Debian's chromium",
        path.display()
    );
    path
}

fn browse(url: &str, extra: &[String]) -> anyhow::Result<String> {
    let profile = std::env::temp_dir().join(format!("saga-ui-{}", uuid::Uuid::new_v4().simple()));
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()?;
    let _ = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

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

    let list = browse(&format!("{}/ui", p.base), &["--dump-dom".into()])?;
    assert!(
        list.contains(&format!("href=\"/ui/sagas/{completed}\"")),
        "{list}"
    );
    assert!(
        list.contains(&format!("href=\"/ui/sagas/{compensated}\"")),
        "{list}"
    );
    assert_eq!(list.matches("class=\"saga\"").count(), 2);
    let filtered = browse(
        &format!("{}/ui?state=compensated", p.base),
        &["--dump-dom".into()],
    )?;
    assert!(
        filtered.contains(&compensated) && !filtered.contains(&completed),
        "{filtered}"
    );

    let url = format!("{}/ui/sagas/{compensated}", p.base);
    let page = browse(&url, &["--dump-dom".into()])?;
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
    browse(&url, &[format!("--screenshot={}", screenshot.display())])?;
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
