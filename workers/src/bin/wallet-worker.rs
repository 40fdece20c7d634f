//! The wallet worker binary: HTTP on `SAGA_WALLET_ADDR` (default `127.0.0.1:8094`), commands
//! from `cmd.wallet.>` and version-1 rewards from `evt.reward.>`, until SIGTERM.

use contracts::Worker;
use saga_workers::runtime::{WorkerContext, WorkerSettings, serve_worker};
use saga_workers::wallet::{MIGRATOR, WalletWorker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("wallet-worker");
    let settings: WorkerSettings = runtime::config::load()?;
    let addr = runtime::config::listen_addr("wallet", "127.0.0.1:8094")?;
    let shutdown = runtime::shutdown::on_signal();
    let context = WorkerContext::connect(&settings, Worker::Wallet, &MIGRATOR).await?;
    let worker = WalletWorker::new(context.pool.clone());
    let api = worker.api();
    let background = worker.run(context.clone(), shutdown.clone());
    let result = serve_worker(&context, &addr, api, background, shutdown).await;
    telemetry.shutdown().await;
    result
}
