//! Runs the Telegram Bot API stand-in (see `saga_workers::telegram_stand_in`) on
//! `SAGA_STAND_IN_ADDR` (default `127.0.0.1:8081`) until SIGTERM or Ctrl-C.

use saga_workers::telegram_stand_in::{StandIn, serve};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("telegram-stand-in");
    let addr = runtime::config::listen_addr("stand_in", "127.0.0.1:8081")?;
    let listener = TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "telegram stand-in listening");
    let shutdown = runtime::shutdown::on_signal();
    let result = serve(listener, StandIn::default(), async move {
        shutdown.cancelled().await
    })
    .await;
    telemetry.shutdown().await;
    Ok(result?)
}
