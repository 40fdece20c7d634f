//! `sagactl mypage rebuild|status`: start a rebuild of the my-page view (a replay of the
//! domain events into a new generation) and, with `--wait`, follow it until reads are served
//! from it; or show where the last rebuild stands.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::cli::{MypageCommand, RebuildArgs};
use crate::client::{ApiClient, Call};
use crate::error::CliError;
use crate::model::{RebuildStatus, read};
use crate::output::{self, Output};

/// How often `--wait` asks.
const POLL: Duration = Duration::from_secs(1);

/// Runs a `mypage` command.
pub async fn run(client: &ApiClient, out: Output, command: MypageCommand) -> Result<(), CliError> {
    match command {
        MypageCommand::Status => {
            let status = client
                .send(Call::get(&["v1", "mypages", "rebuild"]))
                .await?;
            show(out, &status)
        }
        MypageCommand::Rebuild(args) => rebuild(client, out, args).await,
    }
}

async fn rebuild(client: &ApiClient, out: Output, args: RebuildArgs) -> Result<(), CliError> {
    let started = client
        .send(Call::post(&["v1", "mypages", "rebuild"]))
        .await?;
    if !args.wait {
        return show(out, &started);
    }
    let generation = read::<RebuildStatus>("the rebuild", &started)?.generation;
    let spinner = if out.is_json() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} rebuilding: {msg} ({elapsed})") {
        spinner.set_style(style);
    }
    spinner.enable_steady_tick(Duration::from_millis(120));
    let wait = async {
        loop {
            let status = client
                .send(Call::get(&["v1", "mypages", "rebuild"]))
                .await?;
            let view: RebuildStatus = read("the rebuild", &status)?;
            spinner.set_message(format!("{} events replayed", view.replayed));
            let ours = generation.is_none() || view.generation == generation;
            if ours && view.state != "running" {
                return Ok::<Value, CliError>(status);
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let finished = match args.timeout {
        None => wait.await,
        Some(seconds) => tokio::time::timeout(Duration::from_secs(seconds), wait)
            .await
            .map_err(|_| {
                CliError::TimedOut(format!("the rebuild has not finished after {seconds}s"))
            })?,
    };
    spinner.finish_and_clear();
    show(out, &finished?)
}

fn show(out: Output, status: &Value) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(status);
    }
    let view: RebuildStatus = read("the rebuild", status)?;
    let number = |n: Option<i64>| n.map_or_else(|| "-".into(), |n| n.to_string());
    out.table(&output::fields([
        ("state", view.state),
        ("replayed", format!("{} events", view.replayed)),
        ("generation", number(view.generation)),
        ("serving", number(view.serving_generation)),
        ("started", output::time(view.started_at)),
        ("finished", output::time(view.finished_at)),
    ]))
}
