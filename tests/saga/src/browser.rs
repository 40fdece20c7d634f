//! A real browser for the page tests: Debian's `chromium`, headless, driven over WebDriver by
//! Debian's `chromedriver` (started on a spare loopback port) through fantoccini, so that a test
//! logs in through the form and clicks like a person would.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A headless Chromium session; the driver process stops when it is dropped.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    profile: std::path::PathBuf,
}

fn program(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> anyhow::Result<Self> {
        let chromium = program("SAGA_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("SAGA_CHROMEDRIVER", "/usr/bin/chromedriver");
        for tool in [&chromium, &chromedriver] {
            if !std::path::Path::new(tool).exists() {
                bail!(
                    "{tool} is missing: ./dev.sh test installs Debian's chromium and chromium-driver"
                );
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {chromedriver}"))?;
        let profile =
            std::env::temp_dir().join(format!("saga-browser-{}", uuid::Uuid::new_v4().simple()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(%error, "chromedriver not ready yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => bail!("chromedriver did not start a session: {error}"),
            }
        };
        Ok(Self {
            client,
            driver,
            profile,
        })
    }

    /// Logs in to the saga page at `base` with `token` through its form.
    pub async fn log_in(&self, base: &str, token: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("{base}/ui")).await?;
        let field = self.client.find(Locator::Id("token")).await?;
        field.send_keys(token).await?;
        self.client
            .find(Locator::Id("login"))
            .await?
            .click()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .client
            .current_url()
            .await?
            .path()
            .starts_with("/ui/login")
        {
            if Instant::now() > deadline {
                bail!("still on the login page: {}", self.html().await?);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Logs out with the page's button; the browser is back at the login form.
    pub async fn log_out(&self, base: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("{base}/ui")).await?;
        self.click("logout").await?;
        self.wait_until(Duration::from_secs(10), "the login form", |html| {
            html.contains("id=\"token\"")
        })
        .await?;
        Ok(())
    }

    /// The page's current DOM as HTML.
    pub async fn html(&self) -> anyhow::Result<String> {
        Ok(self.client.source().await?)
    }

    /// Clicks the element with this id.
    pub async fn click(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .find(Locator::Id(id))
            .await
            .with_context(|| format!("no element #{id} on the page"))?
            .click()
            .await
            .with_context(|| format!("clicking #{id}"))?;
        Ok(())
    }

    /// Answers the page's `confirm()` (or alert): OK when `accept`, else Cancel; returns its
    /// question. Waits up to 5 s for it to open.
    pub async fn answer_dialog(&self, accept: bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let question = loop {
            match self.client.get_alert_text().await {
                Ok(text) => break text,
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(%error, "no dialog yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => bail!("no dialog opened: {error}"),
            }
        };
        if accept {
            self.client.accept_alert().await?;
        } else {
            self.client.dismiss_alert().await?;
        }
        Ok(question)
    }

    /// Waits until the page's DOM satisfies `check` (the page may reload meanwhile); returns
    /// that DOM.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            // During a reload the source may briefly not be readable: try again.
            if let Ok(html) = self.html().await {
                if check(&html) {
                    return Ok(html);
                }
                last = html;
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; the page: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
        closed.map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
