//! The commands about sagas one at a time: `start`, `get`, `list`, and `cancel`/`retry` of one
//! saga by id, with the way a saga and a page of sagas are drawn for people.

use std::io::Read as _;

use serde_json::{Value, json};

use crate::cli::{ListArgs, StartArgs};
use crate::client::{ApiClient, Call, id_segment};
use crate::error::CliError;
use crate::model::{Saga, read};
use crate::output::{self, Output};

/// The operator commands on one saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `POST .../cancel`.
    Cancel,
    /// `POST .../retry`.
    Retry,
}

impl Operation {
    /// The route's last segment.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Retry => "retry",
        }
    }

    /// The state the bulk command acts on when no `--state` is given.
    pub fn default_state(self) -> &'static str {
        match self {
            Self::Cancel => "running",
            Self::Retry => "failed",
        }
    }
}

/// `sagactl start`.
pub async fn start(client: &ApiClient, out: Output, args: StartArgs) -> Result<(), CliError> {
    let input = input_of(&args.input)?;
    let mut call =
        Call::post(&["v1", "sagas"]).json(json!({"type": args.saga_type, "input": input}));
    if let Some(key) = args.idempotency_key {
        call = call.header("idempotency-key", key);
    }
    let saga = client.send(call).await?;
    if out.is_json() {
        return out.json(&saga);
    }
    let view: Saga = read("the started saga", &saga)?;
    out.line(format!(
        "started saga {} ({} v{}): {}",
        view.id, view.saga_type, view.definition_version, view.state
    ))?;
    out.line(format!("follow it with: sagactl watch {}", view.id))
}

/// The saga input of `--input`: JSON, `@file` or `-` (stdin); it must be an object.
fn input_of(text: &str) -> Result<Value, CliError> {
    let (source, text) = match text.strip_prefix('@') {
        Some(path) => (
            path.to_owned(),
            std::fs::read_to_string(path).map_err(CliError::io(format!("reading {path}")))?,
        ),
        None if text == "-" => {
            let mut buffer = String::new();
            std::io::stdin()
                .read_to_string(&mut buffer)
                .map_err(CliError::io("reading the input from stdin"))?;
            ("stdin".to_owned(), buffer)
        }
        None => ("--input".to_owned(), text.to_owned()),
    };
    let input: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("the saga input ({source}) is not JSON: {e}")))?;
    if !input.is_object() {
        return Err(CliError::Usage(format!(
            "the saga input ({source}) must be a JSON object, like {{\"mission_id\": \"...\"}}"
        )));
    }
    Ok(input)
}

/// `GET /v1/sagas/{id}`.
pub async fn fetch(client: &ApiClient, id: &str) -> Result<Value, CliError> {
    client
        .send(Call::get(&["v1", "sagas", id_segment("saga", id)?]))
        .await
}

/// `sagactl get`.
pub async fn get(client: &ApiClient, out: Output, id: &str) -> Result<(), CliError> {
    let saga = fetch(client, id).await?;
    if out.is_json() {
        return out.json(&saga);
    }
    show(out, &read("the saga", &saga)?)
}

/// `sagactl cancel <id>` and `sagactl retry <id>`.
pub async fn operate(
    client: &ApiClient,
    out: Output,
    operation: Operation,
    id: &str,
) -> Result<(), CliError> {
    let saga = client
        .send(Call::post(&[
            "v1",
            "sagas",
            id_segment("saga", id)?,
            operation.verb(),
        ]))
        .await?;
    if out.is_json() {
        return out.json(&saga);
    }
    let view: Saga = read("the saga", &saga)?;
    let what = match operation {
        Operation::Cancel => {
            "cancelling: it stops going forward, compensates what it did once the step in flight \
             answers, and ends cancelled"
        }
        Operation::Retry => "retrying: what stopped it runs again with a fresh retry budget",
    };
    out.line(format!("saga {} is {what}", view.id))?;
    out.line(format!(
        "state {}{}; follow it with: sagactl watch {}",
        view.state,
        view.stop_reason
            .as_deref()
            .map(|r| format!(" (stop reason {r})"))
            .unwrap_or_default(),
        view.id
    ))
}

/// A saga for people: a header, its steps, its compensations.
pub fn show(out: Output, saga: &Saga) -> Result<(), CliError> {
    let header = output::fields([
        ("id", saga.id.clone()),
        (
            "type",
            format!("{} (v{})", saga.saga_type, saga.definition_version),
        ),
        ("state", saga.state.clone()),
        ("stop reason", output::or_dash(saga.stop_reason.as_deref())),
        ("input", output::pairs(&saga.input)),
        ("context", output::pairs(&saga.context)),
        ("trace", output::or_dash(saga.trace_id.as_deref())),
        ("created", output::time(saga.created_at)),
        ("updated", output::time(saga.updated_at)),
    ]);
    out.table(&header)?;
    out.line("")?;
    let mut steps = output::table(&[
        "#",
        "STEP",
        "STATE",
        "ATTEMPTS",
        "STARTED",
        "TOOK",
        "LAST ERROR",
    ]);
    for (i, step) in saga.steps.iter().enumerate() {
        steps.add_row(vec![
            (i + 1).to_string(),
            step.name.clone(),
            step.state.clone(),
            step.attempts.to_string(),
            output::time(step.started_at),
            output::duration(step.started_at, step.finished_at),
            output::cut(step.last_error.as_deref().unwrap_or_default(), 60),
        ]);
    }
    out.table(&steps)?;
    if !saga.compensations.is_empty() {
        out.line("")?;
        let mut compensations = output::table(&[
            "COMPENSATION",
            "UNDOES",
            "STATE",
            "ATTEMPTS",
            "STARTED",
            "TOOK",
            "LAST ERROR",
        ]);
        for c in &saga.compensations {
            compensations.add_row(vec![
                c.name.clone(),
                c.step.clone(),
                c.state.clone(),
                c.attempts.to_string(),
                output::time(c.started_at),
                output::duration(c.started_at, c.finished_at),
                output::cut(c.last_error.as_deref().unwrap_or_default(), 60),
            ]);
        }
        out.table(&compensations)?;
    }
    Ok(())
}

/// One page of `GET /v1/sagas`: its items and the next cursor.
pub async fn page(
    client: &ApiClient,
    query: Vec<(String, String)>,
) -> Result<(Vec<Value>, Option<String>), CliError> {
    let page = client
        .send(Call::get(&["v1", "sagas"]).query(query))
        .await?;
    let items = page["items"]
        .as_array()
        .cloned()
        .ok_or_else(|| CliError::Unexpected {
            what: "GET /v1/sagas".into(),
            detail: "no items".into(),
        })?;
    let next = page["next_cursor"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Ok((items, next))
}

/// `sagactl list`.
pub async fn list(client: &ApiClient, out: Output, args: ListArgs) -> Result<(), CliError> {
    let mut query = args.filter.query();
    if let Some(limit) = args.limit {
        query.push(("limit".into(), limit.to_string()));
    }
    let mut cursor = args.cursor;
    let mut items = Vec::new();
    let next = loop {
        let mut this = query.clone();
        if let Some(cursor) = &cursor {
            this.push(("cursor".into(), cursor.clone()));
        }
        let (page, next) = page(client, this).await?;
        items.extend(page);
        match next {
            Some(next) if args.all => cursor = Some(next),
            next => break next,
        }
    };
    if out.is_json() {
        return out.json(&json!({"items": items, "next_cursor": next}));
    }
    let mut table = output::table(&["ID", "TYPE", "STATE", "AT STEP", "CREATED", "UPDATED"]);
    for item in &items {
        let saga: Saga = read("a listed saga", item)?;
        let at = match (saga.is_terminal(), saga.current_step()) {
            (false, Some(step)) => format!("{} ({})", step.name, step.state),
            _ => "-".into(),
        };
        let state = match &saga.stop_reason {
            Some(reason) if !saga.is_terminal() => format!("{} ({reason})", saga.state),
            _ => saga.state.clone(),
        };
        table.add_row(vec![
            saga.id,
            saga.saga_type,
            state,
            at,
            output::time(saga.created_at),
            output::time(saga.updated_at),
        ]);
    }
    if items.is_empty() {
        out.note("no saga matches");
    } else {
        out.table(&table)?;
    }
    if let Some(next) = next {
        out.note(format!(
            "more sagas match: --cursor {next} for the next page, --all for every one"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_must_be_a_json_object() {
        assert_eq!(
            input_of(r#"{"mission_id": "m"}"#).ok(),
            Some(json!({"mission_id": "m"}))
        );
        assert!(matches!(input_of("[1]"), Err(CliError::Usage(_))));
        assert!(matches!(input_of("{nope"), Err(CliError::Usage(_))));
        assert!(matches!(
            input_of("@/no/such/file"),
            Err(CliError::Io { .. })
        ));
    }
}
