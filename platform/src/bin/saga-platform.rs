//! Runs the whole platform in one process: every public route on `SAGA_GATEWAY_ADDR`
//! (default `http://127.0.0.1:8080`), until SIGTERM.

use saga_platform::{Platform, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("saga-platform");
    let settings = Settings::from_env()?;
    let shutdown = runtime::shutdown::on_signal();
    let mut platform = Platform::start(settings, shutdown).await?;
    tracing::info!(base_url = %platform.base_url(), "ready");
    let result = platform.wait().await;
    telemetry.shutdown().await;
    result
}
