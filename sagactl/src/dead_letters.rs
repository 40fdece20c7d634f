//! `sagactl dead-letters list|replay|discard`: what no consumer could handle, newest first;
//! a replay publishes one again on its original subject (and removes it from the stream); a
//! discard removes it without replaying.

use serde_json::{Value, json};

use crate::cli::{DeadLetterCommand, DeadLetterListArgs};
use crate::client::{ApiClient, Call};
use crate::error::CliError;
use crate::model::{DeadLetter, read};
use crate::output::{self, Output};

/// Runs a `dead-letters` command.
pub async fn run(
    client: &ApiClient,
    out: Output,
    command: DeadLetterCommand,
) -> Result<(), CliError> {
    match command {
        DeadLetterCommand::List(args) => list(client, out, args).await,
        DeadLetterCommand::Replay(args) => {
            let id = args.id.to_string();
            let replayed = client
                .send(Call::post(&["v1", "dead-letters", &id, "replay"]))
                .await?;
            if out.is_json() {
                return out.json(&replayed);
            }
            out.line(format!(
                "replayed dead letter {id} on {}",
                replayed["subject"]
                    .as_str()
                    .unwrap_or("its original subject")
            ))
        }
        DeadLetterCommand::Discard(args) => {
            let id = args.id.to_string();
            let answer = client
                .send(Call::delete(&["v1", "dead-letters", &id]))
                .await?;
            if out.is_json() {
                let answer = match answer {
                    Value::Null => json!({"id": args.id, "discarded": true}),
                    other => other,
                };
                return out.json(&answer);
            }
            out.line(format!("discarded dead letter {id}"))
        }
    }
}

async fn list(client: &ApiClient, out: Output, args: DeadLetterListArgs) -> Result<(), CliError> {
    let mut before = args.before;
    let mut items = Vec::new();
    let next = loop {
        let mut query = Vec::new();
        if let Some(limit) = args.limit {
            query.push(("limit".to_owned(), limit.to_string()));
        }
        if let Some(before) = before {
            query.push(("before".to_owned(), before.to_string()));
        }
        let page = client
            .send(Call::get(&["v1", "dead-letters"]).query(query))
            .await?;
        let page_items = page["items"]
            .as_array()
            .cloned()
            .ok_or_else(|| CliError::Unexpected {
                what: "GET /v1/dead-letters".into(),
                detail: "no items".into(),
            })?;
        let empty = page_items.is_empty();
        items.extend(page_items);
        match page["next_before"].as_u64() {
            Some(next) if args.all && !empty => before = Some(next),
            next => break next,
        }
    };
    if out.is_json() {
        return out.json(&json!({"items": items, "next_before": next}));
    }
    if items.is_empty() {
        out.note("no dead letters");
        return Ok(());
    }
    let mut table = output::table(&["ID", "PARKED", "SUBJECT", "CONSUMER", "REASON", "PAYLOAD"]);
    for item in &items {
        let letter: DeadLetter = read("a dead letter", item)?;
        let payload = match &letter.payload {
            Some(text) => output::cut(text, 40),
            None => format!("base64:{}", output::cut(&letter.payload_base64, 33)),
        };
        table.add_row(vec![
            letter.id.to_string(),
            output::time(letter.parked_at),
            letter.original_subject,
            letter.consumer,
            output::cut(&letter.reason, 60),
            payload,
        ]);
    }
    out.table(&table)?;
    if let Some(next) = next {
        out.note(format!(
            "older dead letters: --before {next} for the next page, --all for every one"
        ));
    }
    Ok(())
}
