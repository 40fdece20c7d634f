//! `sagactl history <id>`: every attempt of every step and compensation of a saga (start,
//! end, outcome, error) and every operator action (who, what, when), oldest first, read
//! page by page from `GET /v1/sagas/{id}/history`.

use serde_json::json;

use crate::cli::HistoryArgs;
use crate::client::{ApiClient, Call, id_segment};
use crate::error::CliError;
use crate::model::{HistoryEntry, read};
use crate::output::{self, Output};

/// `sagactl history`.
pub async fn history(client: &ApiClient, out: Output, args: HistoryArgs) -> Result<(), CliError> {
    let id = id_segment("saga", &args.id)?;
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = Vec::new();
        if let Some(limit) = args.limit {
            query.push(("limit".to_owned(), limit.to_string()));
        }
        if let Some(cursor) = &cursor {
            query.push(("cursor".to_owned(), cursor.clone()));
        }
        let page = client
            .send(Call::get(&["v1", "sagas", id, "history"]).query(query))
            .await?;
        let page_items = page["items"]
            .as_array()
            .cloned()
            .ok_or_else(|| CliError::Unexpected {
                what: format!("GET /v1/sagas/{id}/history"),
                detail: "no items".into(),
            })?;
        let empty = page_items.is_empty();
        items.extend(page_items);
        match page["next_cursor"].as_str().filter(|c| !c.is_empty()) {
            Some(next) if !empty => cursor = Some(next.to_owned()),
            _ => break,
        }
    }
    if out.is_json() {
        return out.json(&json!({"items": items, "next_cursor": null}));
    }
    let mut table = output::table(&["AT", "KIND", "STEP", "ATTEMPT", "OUTCOME", "DETAIL"]);
    for item in &items {
        let entry: HistoryEntry = read("a history entry", item)?;
        let detail = match (&entry.actor, &entry.action, &entry.error) {
            (Some(actor), action, _) if entry.kind == "operator" => {
                format!("{actor}: {}", action.as_deref().unwrap_or("-"))
            }
            (_, _, Some(error)) => output::cut(error, 80),
            _ => "-".into(),
        };
        table.add_row(vec![
            output::clock(entry.at),
            entry.kind,
            output::or_dash(entry.step.as_deref()),
            entry.attempt.map_or_else(|| "-".into(), |a| a.to_string()),
            output::or_dash(entry.outcome.as_deref()),
            detail,
        ]);
    }
    if items.is_empty() {
        out.note(format!("saga {id} has no history yet"));
        return Ok(());
    }
    out.table(&table)
}
