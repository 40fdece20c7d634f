//! `/ui/dead-letters`: what no consumer could handle, newest first (the data of
//! `GET /v1/dead-letters`, 50 a page, `?before=<id>` for older ones), each with its reason, its
//! original subject, the consumer that gave up, when it was parked and its payload, and replay
//! and discard buttons.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use runtime::auth::Caller;
use runtime::problem::ApiQuery;
use serde::Deserialize;

use super::{
    Action, MESSAGE, Refresh, UiState, button, escape, may_operate, nav, page, read_only_note,
    unavailable,
};
use crate::dead_letters::{DeadLetterQuery, list_dead_letters};

/// Dead letters shown at once.
const PAGE: usize = 50;

/// Payload characters shown.
const PAYLOAD_SHOWN: usize = 200;

/// Query of `/ui/dead-letters`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    /// Only dead letters older than this id.
    #[serde(default)]
    before: Option<String>,
}

/// `GET /ui/dead-letters`.
pub(super) async fn show(
    State(ui): State<UiState>,
    caller: Option<Extension<Caller>>,
    Query(query): Query<PageQuery>,
) -> (StatusCode, Html<String>) {
    let before = query.before.as_deref().and_then(|b| b.parse::<u64>().ok());
    let letters = match list_dead_letters(
        State(ui.api.clone()),
        ApiQuery(DeadLetterQuery {
            limit: Some(PAGE),
            before,
        }),
    )
    .await
    {
        Ok(axum::Json(letters)) => letters,
        Err(error) => {
            tracing::warn!(?error, "dead-letter page: listing failed");
            return unavailable("Dead letters", "JetStream");
        }
    };
    let allowed = may_operate(&caller);
    let mut body = nav(&caller);
    body.push_str("<h1>Dead letters</h1>");
    let _ = write!(
        body,
        "<p class=\"muted\" id=\"shown\"><span id=\"dead-letter-count\">{}</span> shown, newest first{}.</p>",
        letters.items.len(),
        if before.is_some() {
            ", after the first page"
        } else {
            ""
        },
    );
    if !letters.items.is_empty() {
        body.push_str(&read_only_note(&caller));
    }
    body.push_str(MESSAGE);
    if letters.items.is_empty() {
        body.push_str("<p id=\"no-dead-letters\">No dead letters.</p>");
    }
    body.push_str(
        "<table id=\"dead-letters\"><tr><th>id</th><th>parked</th><th>reason</th><th>subject</th>\
         <th>consumer</th><th>payload</th><th></th></tr>",
    );
    for letter in &letters.items {
        let row = format!("dead-letter-{}", letter.id);
        let replay_url = format!("/v1/dead-letters/{}/replay", letter.id);
        let discard_url = format!("/v1/dead-letters/{}", letter.id);
        let then = format!("remove:{row}");
        let replay_text = format!(
            "Replay dead letter {} on {}? It is published again with its headers and leaves the \
             dead-letter stream.",
            letter.id, letter.original_subject
        );
        let discard_text = format!(
            "Discard dead letter {}? It is removed and published nowhere.",
            letter.id
        );
        let payload = match &letter.payload {
            Some(text) if text.chars().count() > PAYLOAD_SHOWN => {
                format!("{}…", text.chars().take(PAYLOAD_SHOWN).collect::<String>())
            }
            Some(text) => text.clone(),
            None => format!("({} bytes, not UTF-8)", letter.payload_base64.len() * 3 / 4),
        };
        let _ = write!(
            body,
            "<tr class=\"dead-letter\" id=\"{row}\" data-id=\"{id}\"><td>{id}</td><td>{parked}</td>\
             <td class=\"error\">{reason}</td><td><code>{subject}</code></td><td>{consumer}</td>\
             <td class=\"payload\">{payload}</td><td class=\"buttons\">{replay} {discard}</td></tr>",
            id = letter.id,
            parked = letter.parked_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            reason = escape(&letter.reason),
            subject = escape(&letter.original_subject),
            consumer = escape(&letter.consumer),
            payload = escape(&payload),
            replay = button(
                Action {
                    id: &format!("replay-{}", letter.id),
                    label: "Replay…",
                    method: "POST",
                    url: &replay_url,
                    confirm: &replay_text,
                    then: &then,
                    danger: false,
                },
                allowed
            ),
            discard = button(
                Action {
                    id: &format!("discard-{}", letter.id),
                    label: "Discard…",
                    method: "DELETE",
                    url: &discard_url,
                    confirm: &discard_text,
                    then: &then,
                    danger: true,
                },
                allowed
            ),
        );
    }
    body.push_str("</table><div class=\"paging\" id=\"paging\">");
    if before.is_some() {
        body.push_str("<a id=\"first-page\" href=\"/ui/dead-letters\">← newest</a>");
    }
    if let Some(next) = letters.next_before {
        let _ = write!(
            body,
            "<a id=\"next-page\" href=\"/ui/dead-letters?before={next}\">older →</a>"
        );
    }
    body.push_str("</div>");
    (
        StatusCode::OK,
        page("Dead letters", &body, Refresh::Never, &["actions.js"]),
    )
}
