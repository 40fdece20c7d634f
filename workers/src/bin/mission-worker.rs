//! The mission worker binary: HTTP on `SAGA_MISSION_ADDR` (default `127.0.0.1:8091`), commands
//! from `cmd.mission.>`, look-ups on `svc.mission.mission`, until SIGTERM. With
//! `SAGA_MIGRATE_ONLY=true` it migrates its schema and exits.

use contracts::Worker;
use saga_workers::mission::{MIGRATOR, MissionWorker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    saga_workers::runtime::run_binary(
        "mission-worker",
        Worker::Mission,
        &MIGRATOR,
        "127.0.0.1:8091",
        |context, shutdown| {
            let worker = MissionWorker::new(context.pool.clone());
            Ok((worker.api(), worker.run(context.clone(), shutdown)))
        },
    )
    .await
}
