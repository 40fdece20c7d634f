//! The telegram worker binary: HTTP on `SAGA_TELEGRAM_ADDR` (default `127.0.0.1:8093`),
//! commands from `cmd.telegram.>`, the Bot API at `SAGA_TELEGRAM_API_BASE` with the token from
//! `SAGA_TELEGRAM_BOT_TOKEN`, until SIGTERM. With `SAGA_MIGRATE_ONLY=true` it migrates its
//! schema and exits.

use contracts::Worker;
use saga_workers::telegram::{MIGRATOR, TelegramSettings, TelegramWorker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    saga_workers::runtime::run_binary(
        "telegram-worker",
        Worker::Telegram,
        &MIGRATOR,
        "127.0.0.1:8093",
        |context, shutdown| {
            let telegram: TelegramSettings = runtime::config::load()?;
            let worker = TelegramWorker::new(context.pool.clone(), &telegram)?;
            Ok((worker.api(), worker.run(context.clone(), shutdown)))
        },
    )
    .await
}
