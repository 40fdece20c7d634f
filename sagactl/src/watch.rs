//! `sagactl watch`: follows one saga until it ends and prints each change. It listens to
//! `GET /v1/sagas/{id}/events` (server-sent events, one saga per change) when the platform
//! answers it with `200 text/event-stream`, and polls `GET /v1/sagas/{id}` otherwise (a 404:
//! a platform without the route), or when the stream closes before the saga ended. People
//! see one line per change of the saga, a step or a compensation; `--json` prints each new
//! version of the saga as one JSON line.

use std::time::Duration;

use serde_json::Value;

use crate::cli::WatchArgs;
use crate::client::{ApiClient, Call, id_segment};
use crate::error::CliError;
use crate::model::{Saga, read};
use crate::output::{self, Output};
use crate::sagas;
use crate::sse::EventReader;

/// How a watch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The saga's terminal state.
    pub state: String,
}

impl Ended {
    /// Whether the saga completed (exit code 0).
    pub fn completed(&self) -> bool {
        self.state == "completed"
    }
}

/// `sagactl watch`: the saga's terminal state.
pub async fn watch(client: &ApiClient, out: Output, args: WatchArgs) -> Result<Ended, CliError> {
    let id = id_segment("saga", &args.id)?.to_owned();
    let follow = follow(client, out, &id, &args);
    match args.timeout {
        None => follow.await,
        Some(seconds) => tokio::time::timeout(Duration::from_secs(seconds), follow)
            .await
            .map_err(|_| CliError::TimedOut(format!("saga {id} has not ended after {seconds}s")))?,
    }
}

async fn follow(
    client: &ApiClient,
    out: Output,
    id: &str,
    args: &WatchArgs,
) -> Result<Ended, CliError> {
    let mut shown = Shown::default();
    if !args.poll {
        let events = client
            .open_events(Call::get(&["v1", "sagas", id, "events"]))
            .await?;
        if let Some(mut response) = events {
            out.note(format!("watching saga {id} (server-sent events)"));
            let mut reader = EventReader::default();
            while let Some(chunk) = response.chunk().await.map_err(|e| client.transport(e))? {
                for data in reader.push(&chunk) {
                    let saga: Value =
                        serde_json::from_str(&data).map_err(|e| CliError::Unexpected {
                            what: format!("an event of saga {id}"),
                            detail: format!("not JSON: {e}"),
                        })?;
                    if let Some(ended) = shown.show(out, saga)? {
                        return Ok(ended);
                    }
                }
            }
            out.note("the event stream closed before the saga ended; polling");
        }
    }
    if shown.last.is_none() {
        out.note(format!(
            "watching saga {id} (polling every {}ms)",
            args.interval_ms
        ));
    }
    let interval = Duration::from_millis(args.interval_ms);
    loop {
        let saga = sagas::fetch(client, id).await?;
        if let Some(ended) = shown.show(out, saga)? {
            return Ok(ended);
        }
        tokio::time::sleep(interval).await;
    }
}

/// The last version of the saga shown.
#[derive(Default)]
struct Shown {
    last: Option<(Value, Saga)>,
}

impl Shown {
    /// Shows `value` when it differs from the last one; `Some` once the saga has ended.
    fn show(&mut self, out: Output, value: Value) -> Result<Option<Ended>, CliError> {
        if self.last.as_ref().is_some_and(|(last, _)| *last == value) {
            return Ok(None);
        }
        let saga: Saga = read("the saga", &value)?;
        if out.is_json() {
            out.json_line(&value)?;
        } else {
            for line in changes(self.last.as_ref().map(|(_, s)| s), &saga) {
                out.line(line)?;
            }
        }
        let ended = saga.is_terminal().then(|| Ended {
            state: saga.state.clone(),
        });
        if let Some(ended) = &ended
            && !out.is_json()
        {
            out.line(format!("saga {} ended {}", saga.id, ended.state))?;
        }
        self.last = Some((value, saga));
        Ok(ended)
    }
}

/// The lines that tell people what changed from `before` to `now`.
fn changes(before: Option<&Saga>, now: &Saga) -> Vec<String> {
    let at = output::clock(now.updated_at);
    let mut lines = Vec::new();
    let stop = |saga: &Saga| {
        saga.stop_reason
            .as_deref()
            .map(|r| format!(" (stop reason {r})"))
            .unwrap_or_default()
    };
    match before {
        None => lines.push(format!(
            "{at}  saga {} ({} v{}): {}{}",
            now.id,
            now.saga_type,
            now.definition_version,
            now.state,
            stop(now)
        )),
        Some(before) if before.state != now.state || before.stop_reason != now.stop_reason => {
            lines.push(format!(
                "{at}  saga: {} -> {}{}",
                before.state,
                now.state,
                stop(now)
            ));
        }
        Some(_) => {}
    }
    for (i, step) in now.steps.iter().enumerate() {
        let old = before.and_then(|b| b.steps.get(i));
        let changed = match old {
            Some(old) => old.state != step.state || old.attempts != step.attempts,
            None => step.state != "pending",
        };
        if changed {
            lines.push(format!(
                "{at}  step {}: {}{}",
                step.name,
                step.state,
                attempt_and_error(step.attempts, step.last_error.as_deref(), &step.state)
            ));
        }
    }
    for (i, c) in now.compensations.iter().enumerate() {
        let old = before.and_then(|b| b.compensations.get(i));
        if old.is_none_or(|old| old.state != c.state || old.attempts != c.attempts) {
            lines.push(format!(
                "{at}  compensation {} (undoes {}): {}{}",
                c.name,
                c.step,
                c.state,
                attempt_and_error(c.attempts, c.last_error.as_deref(), &c.state)
            ));
        }
    }
    lines
}

fn attempt_and_error(attempts: u32, error: Option<&str>, state: &str) -> String {
    let mut text = String::new();
    if attempts > 1 || matches!(state, "running" | "retrying") {
        text.push_str(&format!(", attempt {attempts}"));
    }
    if let Some(error) = error.filter(|e| !e.is_empty())
        && matches!(state, "retrying" | "failed")
    {
        text.push_str(&format!(": {}", output::cut(error, 120)));
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn saga(value: Value) -> Saga {
        read("saga", &value).expect("saga")
    }

    #[test]
    fn the_first_version_shows_the_saga_and_every_step_that_started() {
        let now = saga(
            json!({"id": "s", "type": "t", "definition_version": 2, "state": "running",
            "steps": [{"name": "a", "state": "succeeded", "attempts": 1},
                      {"name": "b", "state": "running", "attempts": 1},
                      {"name": "c", "state": "pending"}]}),
        );
        let lines = changes(None, &now);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with("saga s (t v2): running"), "{lines:?}");
        assert!(lines[1].ends_with("step a: succeeded"), "{lines:?}");
        assert!(
            lines[2].ends_with("step b: running, attempt 1"),
            "{lines:?}"
        );
    }

    #[test]
    fn later_versions_show_only_what_changed() {
        let before = saga(json!({"id": "s", "state": "running",
            "steps": [{"name": "a", "state": "running", "attempts": 1}]}));
        let now = saga(
            json!({"id": "s", "state": "compensating", "stop_reason": "cancelled",
            "steps": [{"name": "a", "state": "retrying", "attempts": 2, "last_error": "busy: later"}],
            "compensations": [{"name": "a.undo", "step": "a", "state": "running", "attempts": 1}]}),
        );
        let lines = changes(Some(&before), &now);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].ends_with("saga: running -> compensating (stop reason cancelled)"),
            "{lines:?}"
        );
        assert!(
            lines[1].ends_with("step a: retrying, attempt 2: busy: later"),
            "{lines:?}"
        );
        assert!(
            lines[2].ends_with("compensation a.undo (undoes a): running, attempt 1"),
            "{lines:?}"
        );
        assert!(changes(Some(&now), &now).is_empty());
    }
}
