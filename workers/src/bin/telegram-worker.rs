//! The telegram worker binary: HTTP on `SAGA_TELEGRAM_ADDR` (default `127.0.0.1:8093`),
//! commands from `cmd.telegram.>`, the Bot API at `SAGA_TELEGRAM_API_BASE` with the token from
//! `SAGA_TELEGRAM_BOT_TOKEN`, until SIGTERM.

use contracts::Worker;
use saga_workers::runtime::{WorkerContext, WorkerSettings, serve_worker};
use saga_workers::telegram::{MIGRATOR, TelegramSettings, TelegramWorker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("telegram-worker");
    let settings: WorkerSettings = runtime::config::load()?;
    let telegram: TelegramSettings = runtime::config::load()?;
    let addr = runtime::config::listen_addr("telegram", "127.0.0.1:8093")?;
    let shutdown = runtime::shutdown::on_signal();
    let context = WorkerContext::connect(&settings, Worker::Telegram, &MIGRATOR).await?;
    let worker = TelegramWorker::new(context.pool.clone(), &telegram)?;
    let api = worker.api();
    let background = worker.run(context.clone(), shutdown.clone());
    let result = serve_worker(&context, &addr, api, background, shutdown).await;
    telemetry.shutdown().await;
    result
}
