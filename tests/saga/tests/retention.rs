//! Retention: a finished saga older than the retention period goes, with its steps,
//! compensations, timers and history; a failed (parked) saga stays whatever its age.

use std::time::Duration;

use reqwest::Method;
use saga_tests::{TestPlatform, default_settings, wait_for};
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Rows stored about saga `id`, table by table.
async fn rows_of(db: &PgPool, id: Uuid) -> anyhow::Result<[i64; 4]> {
    let mut counts = [0; 4];
    for (count, table) in counts
        .iter_mut()
        .zip(["sagas", "saga_steps", "saga_history", "timers"])
    {
        let column = if table == "sagas" { "id" } else { "saga_id" };
        *count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM orchestrator.{table} WHERE {column} = $1"
        )))
        .bind(id)
        .fetch_one(db)
        .await?;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_go_with_their_history_and_failed_ones_stay() -> anyhow::Result<()> {
    let mut settings = default_settings();
    settings.orchestrator.retain_finished_secs = 4;
    settings.orchestrator.retention_sweep_secs = 1;
    let p = TestPlatform::start_with(settings).await?;
    let db = PgPool::connect(&p.database_url).await?;

    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, _, mission) = p.customer_with_mission(10).await?;
        let id = p
            .start_saga(mission["id"].as_str().unwrap_or_default())
            .await?;
        let saga = p.wait_terminal(&id, WAIT).await?;
        assert_eq!(saga["state"], "completed", "{saga}");
        ids.push(id);
    }
    let [gone, parked] = [&ids[0], &ids[1]].map(|id| Uuid::parse_str(id).expect("a uuid"));
    // The second one stands for a saga parked for an operator.
    sqlx::query("UPDATE orchestrator.sagas SET state = 'failed' WHERE id = $1")
        .bind(parked)
        .execute(&db)
        .await?;
    let before = rows_of(&db, gone).await?;
    assert!(
        before[0] == 1 && before[1] == 6 && before[2] >= 12,
        "{before:?}"
    );

    wait_for(WAIT, "the finished saga to be deleted", || async {
        let (status, _, _) = p
            .call(Method::GET, &format!("/v1/sagas/{gone}"), None)
            .await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    assert_eq!(rows_of(&db, gone).await?, [0; 4], "nothing of it is left");

    let (status, _, saga) = p
        .call(Method::GET, &format!("/v1/sagas/{parked}"), None)
        .await?;
    assert_eq!((status, saga["state"].as_str()), (200, Some("failed")));
    let kept = rows_of(&db, parked).await?;
    assert!(kept[0] == 1 && kept[1] == 6 && kept[2] >= 12, "{kept:?}");

    db.close().await;
    p.stop().await
}
