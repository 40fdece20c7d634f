//! The gift worker binary: HTTP on `SAGA_GIFT_ADDR` (default `127.0.0.1:8095`), commands from
//! `cmd.gift.>`, look-ups on `svc.gift.gift`; it starts sagas at `SAGA_ORCHESTRATOR_URL` and
//! tells customers through the telegram service at `SAGA_TELEGRAM_URL`, until SIGTERM.

use contracts::Worker;
use saga_workers::gift::{GiftSettings, GiftWorker, MIGRATOR};
use saga_workers::runtime::{WorkerContext, WorkerSettings, serve_worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("gift-worker");
    let settings: WorkerSettings = runtime::config::load()?;
    let gift: GiftSettings = runtime::config::load()?;
    let addr = runtime::config::listen_addr("gift", "127.0.0.1:8095")?;
    let shutdown = runtime::shutdown::on_signal();
    let context = WorkerContext::connect(&settings, Worker::Gift, &MIGRATOR).await?;
    let worker = GiftWorker::new(context.pool.clone(), &gift)?;
    let api = worker.api();
    let background = worker.run(context.clone(), shutdown.clone());
    let result = serve_worker(&context, &addr, api, background, shutdown).await;
    telemetry.shutdown().await;
    result
}
