//! The orchestrator binary: loads its configuration from `SAGA_*` variables and runs until
//! SIGTERM. With `SAGA_MIGRATE_ONLY=true` it migrates its schema and exits.

use saga_orchestrator::app::{Config, Orchestrator};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("orchestrator");
    let config: Config = runtime::config::load()?;
    let result = if config.infra.migrate_only {
        let migrated = Orchestrator::migrate(&config).await;
        if migrated.is_ok() {
            tracing::info!("migrated; SAGA_MIGRATE_ONLY is set, exiting");
        }
        migrated
    } else {
        let shutdown = runtime::shutdown::on_signal();
        Orchestrator::build(config).await?.run(shutdown).await
    };
    telemetry.shutdown().await;
    result
}
