//! The reward worker binary: HTTP on `SAGA_REWARD_ADDR` (default `127.0.0.1:8092`), commands
//! from `cmd.reward.>`, until SIGTERM. With `SAGA_MIGRATE_ONLY=true` it migrates its schema and
//! exits.

use contracts::Worker;
use saga_workers::reward::{MIGRATOR, RewardWorker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    saga_workers::runtime::run_binary(
        "reward-worker",
        Worker::Reward,
        &MIGRATOR,
        "127.0.0.1:8092",
        |context, shutdown| {
            let worker = RewardWorker::new(context.pool.clone());
            Ok((worker.api(), worker.run(context.clone(), shutdown)))
        },
    )
    .await
}
