//! The mission worker binary: HTTP on `SAGA_MISSION_ADDR` (default `127.0.0.1:8091`), commands
//! from `cmd.mission.>`, until SIGTERM.

use contracts::Worker;
use saga_workers::mission::{MIGRATOR, MissionWorker};
use saga_workers::runtime::{WorkerContext, WorkerSettings, serve_worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("mission-worker");
    let settings: WorkerSettings = runtime::config::load()?;
    let addr = runtime::config::listen_addr("mission", "127.0.0.1:8091")?;
    let shutdown = runtime::shutdown::on_signal();
    let context = WorkerContext::connect(&settings, Worker::Mission, &MIGRATOR).await?;
    let worker = MissionWorker::new(context.pool.clone());
    let api = worker.api();
    let background = worker.run(context.clone(), shutdown.clone());
    let result = serve_worker(&context, &addr, api, background, shutdown).await;
    telemetry.shutdown().await;
    result
}
