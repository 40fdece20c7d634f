//! The reward worker binary: HTTP on `SAGA_REWARD_ADDR` (default `127.0.0.1:8092`), commands
//! from `cmd.reward.>`, until SIGTERM.

use contracts::Worker;
use saga_workers::reward::{MIGRATOR, RewardWorker};
use saga_workers::runtime::{WorkerContext, WorkerSettings, serve_worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("reward-worker");
    let settings: WorkerSettings = runtime::config::load()?;
    let addr = runtime::config::listen_addr("reward", "127.0.0.1:8092")?;
    let shutdown = runtime::shutdown::on_signal();
    let context = WorkerContext::connect(&settings, Worker::Reward, &MIGRATOR).await?;
    let worker = RewardWorker::new(context.pool.clone());
    let api = worker.api();
    let background = worker.run(context.clone(), shutdown.clone());
    let result = serve_worker(&context, &addr, api, background, shutdown).await;
    telemetry.shutdown().await;
    result
}
