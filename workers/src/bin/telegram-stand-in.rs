//! Runs the Telegram Bot API stand-in (see `saga_workers::telegram_stand_in`)
//! on `SAGA_STAND_IN_ADDR` (default `127.0.0.1:8081`) until SIGTERM or ctrl-c.

use saga_workers::telegram_stand_in::{StandIn, serve};
use tokio::net::TcpListener;

/// The listen address used when `SAGA_STAND_IN_ADDR` is unset.
const DEFAULT_ADDR: &str = "127.0.0.1:8081";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("SAGA_STAND_IN_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_owned());
    let listener = TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "telegram stand-in listening");
    serve(listener, StandIn::default(), shutdown_signal()).await?;
    tracing::info!("telegram stand-in stopped");
    Ok(())
}

/// Resolves on ctrl-c or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
