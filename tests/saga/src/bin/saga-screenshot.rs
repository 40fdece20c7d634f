//! Logs in to the running platform's saga page with a token that can read (in headless
//! Chromium, through chromedriver) and writes a screenshot of one of its pages:
//! `saga-screenshot --token <read token> --path /ui/sagas/<id> --out .run/saga-page.png`.

use clap::Parser;
use saga_tests::browser::Browser;

/// What to shoot.
#[derive(Debug, Parser)]
struct Args {
    /// The platform's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// An API token with the `read` scope.
    #[arg(long, env = "SAGA_READ_TOKEN", hide_env_values = true)]
    token: String,
    /// The page.
    #[arg(long, default_value = "/ui")]
    path: String,
    /// Where the PNG goes.
    #[arg(long, default_value = ".run/saga-page.png")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let browser = Browser::start().await?;
    browser.log_in(&args.base_url, &args.token).await?;
    browser
        .client
        .goto(&format!("{}{}", args.base_url, args.path))
        .await?;
    std::fs::write(&args.out, browser.client.screenshot().await?)?;
    browser.close().await?;
    eprintln!(
        "screenshot of {}{} written to {}",
        args.base_url,
        args.path,
        args.out.display()
    );
    Ok(())
}
