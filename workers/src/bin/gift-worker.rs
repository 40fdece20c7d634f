//! The gift worker binary: HTTP on `SAGA_GIFT_ADDR` (default `127.0.0.1:8095`), commands from
//! `cmd.gift.>`, look-ups on `svc.gift.gift`; it starts sagas at `SAGA_ORCHESTRATOR_URL` and
//! tells customers through the telegram service at `SAGA_TELEGRAM_URL`, until SIGTERM. With
//! `SAGA_MIGRATE_ONLY=true` it migrates its schema and exits.

use contracts::Worker;
use saga_workers::gift::{GiftSettings, GiftWorker, MIGRATOR};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    saga_workers::runtime::run_binary(
        "gift-worker",
        Worker::Gift,
        &MIGRATOR,
        "127.0.0.1:8095",
        |context, shutdown| {
            let gift: GiftSettings = runtime::config::load()?;
            let worker = GiftWorker::new(context.pool.clone(), &gift)?;
            Ok((worker.api(), worker.run(context.clone(), shutdown)))
        },
    )
    .await
}
