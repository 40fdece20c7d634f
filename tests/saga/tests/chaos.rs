//! The short chaos suite, run by CI: 200 sagas and 40 gift exchanges while services are killed
//! and restarted, nats-server and PostgreSQL restarted, and every orchestrator killed at once;
//! no promise may break.

use saga_tests::chaos::{ChaosConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sagas_and_forty_exchanges_keep_every_promise_through_kills_and_restarts()
-> anyhow::Result<()> {
    let summary = run(ChaosConfig::new(200)?).await?;
    eprintln!("{summary}");
    for violation in &summary.violations {
        eprintln!("violation: {violation}");
    }
    assert!(
        summary.violations.is_empty(),
        "{summary}; logs in {}",
        summary.work_dir.display()
    );
    assert!(summary.kills >= 3, "{summary}");
    assert_eq!(summary.nats_restarts, 1, "{summary}");
    // The gift side ran: vouchers issued, and both refusals met.
    let gifts = &summary.gifts;
    assert_eq!(gifts.exchanges, 40, "{summary}");
    assert!(gifts.vouchers > 0, "{summary}");
    for refusal in ["out_of_stock", "insufficient_balance"] {
        assert!(
            gifts.refusals.get(refusal).is_some_and(|n| *n > 0),
            "{summary}"
        );
    }
    Ok(())
}
