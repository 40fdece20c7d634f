//! The wallet worker binary: HTTP on `SAGA_WALLET_ADDR` (default `127.0.0.1:8094`), commands
//! from `cmd.wallet.>` and version-1 rewards from `evt.reward.>`, until SIGTERM. With
//! `SAGA_MIGRATE_ONLY=true` it migrates its schema and exits.

use contracts::Worker;
use saga_workers::wallet::{MIGRATOR, WalletWorker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    saga_workers::runtime::run_binary(
        "wallet-worker",
        Worker::Wallet,
        &MIGRATOR,
        "127.0.0.1:8094",
        |context, shutdown| {
            let worker = WalletWorker::new(context.pool.clone());
            Ok((worker.api(), worker.run(context.clone(), shutdown)))
        },
    )
    .await
}
