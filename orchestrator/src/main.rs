//! The orchestrator binary: loads its configuration from `SAGA_*` variables and runs until
//! SIGTERM.

use saga_orchestrator::app::{Config, Orchestrator};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("orchestrator");
    let config: Config = runtime::config::load()?;
    let shutdown = runtime::shutdown::on_signal();
    let result = Orchestrator::build(config).await?.run(shutdown).await;
    telemetry.shutdown().await;
    result
}
