//! `/ui/sagas/{id}`: one saga. Its state and trace, the cancel or retry button its state allows,
//! a lane of forward steps and a lane of compensations (each with its attempts, errors and
//! durations), its full history as a timeline (every attempt and every operator action, a page
//! of [`HISTORY_PAGE`] entries at a time: `?history=<cursor>`), and its input and context.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use contracts::SagaId;
use runtime::auth::Caller;
use serde::Deserialize;

use super::{
    Action, MESSAGE, Refresh, UiState, badge, button, escape, may_operate, nav, page,
    read_only_note, took, unavailable, when,
};
use crate::api::SagaView;
use crate::history::{HistoryEntry, HistoryKind};
use crate::machine::SagaState;

/// History entries shown at once.
const HISTORY_PAGE: i64 = 200;

/// Query of `/ui/sagas/{id}`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct DetailQuery {
    /// Show the history after this entry (a cursor the page made).
    #[serde(default)]
    history: Option<String>,
}

/// One history entry as a line of the timeline.
fn entry(item: &HistoryEntry) -> String {
    let at = item.at.format("%Y-%m-%d %H:%M:%S%.3f");
    let outcome = item.outcome.as_deref().unwrap_or("");
    let error = item.error.as_deref().map_or(String::new(), |e| {
        format!("<div class=\"error\">{}</div>", escape(e))
    });
    let attempt = item
        .attempt
        .map_or(String::new(), |a| format!(" attempt {a}"));
    let step = escape(item.step.as_deref().unwrap_or("?"));
    let what = match item.kind {
        HistoryKind::StepStarted | HistoryKind::CompensationStarted => {
            let noun = if item.kind == HistoryKind::StepStarted {
                "step"
            } else {
                "compensation"
            };
            if outcome == "resent" {
                format!(
                    "{noun} <b>{step}</b>{attempt} sent again {}",
                    badge("resent")
                )
            } else {
                format!("{noun} <b>{step}</b>{attempt} sent")
            }
        }
        HistoryKind::StepEnded | HistoryKind::CompensationEnded => {
            let noun = if item.kind == HistoryKind::StepEnded {
                "step"
            } else {
                "compensation"
            };
            format!("{noun} <b>{step}</b>{attempt} ended {}", badge(outcome))
        }
        HistoryKind::Operator => {
            let class = if outcome == "applied" {
                "applied"
            } else {
                "refused"
            };
            format!(
                "operator <b class=\"actor\">{actor}</b>: <b class=\"action\">{action}</b> \
                 <span class=\"state {class}\">{outcome}</span>{input}",
                actor = escape(item.actor.as_deref().unwrap_or("?")),
                action = escape(item.action.as_deref().unwrap_or("?")),
                outcome = escape(outcome),
                input = item.input.as_ref().map_or(String::new(), |i| format!(
                    " <code>{}</code>",
                    escape(&i.to_string())
                )),
            )
        }
    };
    format!(
        "<li class=\"entry {kind}\" data-kind=\"{kind}\"><span class=\"at\">{at}</span>{what}{error}</li>",
        kind = item.kind.as_str(),
    )
}

/// `GET /ui/sagas/{id}`.
pub(super) async fn show(
    State(ui): State<UiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    Query(query): Query<DetailQuery>,
) -> (StatusCode, Html<String>) {
    let missing = || {
        (
            StatusCode::NOT_FOUND,
            page(
                "No such saga",
                &format!(
                    "{}<h1>No saga {}</h1><p><a href=\"/ui\">All sagas</a></p>",
                    nav(&caller),
                    escape(&id)
                ),
                Refresh::Never,
                &[],
            ),
        )
    };
    let Ok(saga_id) = id.parse::<SagaId>() else {
        return missing();
    };
    let after = query
        .history
        .as_deref()
        .and_then(|h| h.parse::<i64>().ok())
        .filter(|h| *h > 0)
        .unwrap_or(0);
    let store = ui.api.engine.store();
    let (stored, history) = match tokio::try_join!(
        store.get(saga_id),
        store.history(saga_id, after, HISTORY_PAGE + 1)
    ) {
        Ok((Some(stored), history)) => (stored, history.unwrap_or_default()),
        Ok((None, _)) => return missing(),
        Err(error) => {
            tracing::warn!(%error, "saga page: reading a saga failed");
            return unavailable("Saga", "The saga store");
        }
    };
    let view = SagaView::from(stored.saga);
    let state = SagaState::parse(&view.state);
    let terminal = state.is_some_and(SagaState::is_terminal);
    let mut body = nav(&caller);
    let _ = write!(
        body,
        "<h1 id=\"saga\" data-saga-id=\"{id}\" data-state=\"{state}\">Saga {id} {badge}</h1>\
         <p class=\"muted\">{ty} v{version} · created {created} · updated {updated}{stop}{live}</p>",
        id = view.id,
        state = escape(&view.state),
        live = if terminal {
            ""
        } else {
            " · <span id=\"live\">follows the saga</span>"
        },
        badge = badge(&view.state),
        ty = escape(&view.saga_type),
        version = view.definition_version,
        created = view.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
        updated = view.updated_at.format("%H:%M:%S%.3f"),
        stop = view
            .stop_reason
            .as_deref()
            .map_or(String::new(), |r| format!(
                " · stopped: <span id=\"stop-reason\">{}</span>",
                escape(r)
            )),
    );
    if let Some(trace_id) = &view.trace_id {
        let url = ui.trace_url_template.replace("{trace_id}", trace_id);
        let _ = write!(
            body,
            "<p>Trace <a id=\"trace\" href=\"{}\">{}</a></p>",
            escape(&url),
            escape(trace_id)
        );
    }

    let allowed = may_operate(&caller);
    let cancel_url = format!("/v1/sagas/{}/cancel", view.id);
    let retry_url = format!("/v1/sagas/{}/retry", view.id);
    let cancel_text = format!(
        "Cancel saga {}? It stops going forward: the step in flight is awaited, then what the \
         saga did is compensated.",
        view.id
    );
    let retry_text = format!(
        "Retry saga {}? The step or compensation that stopped runs again with a fresh retry budget.",
        view.id
    );
    body.push_str("<div class=\"actions\" id=\"actions\">");
    match state {
        Some(SagaState::Running) => body.push_str(&button(
            Action {
                id: "cancel",
                label: "Cancel…",
                method: "POST",
                url: &cancel_url,
                confirm: &cancel_text,
                then: "reload",
                danger: true,
            },
            allowed,
        )),
        Some(SagaState::Failed) => body.push_str(&button(
            Action {
                id: "retry",
                label: "Retry…",
                method: "POST",
                url: &retry_url,
                confirm: &retry_text,
                then: "reload",
                danger: false,
            },
            allowed,
        )),
        _ => {
            let _ = write!(
                body,
                "<span class=\"muted\">A {} saga takes no cancel or retry.</span>",
                escape(&view.state)
            );
        }
    }
    body.push_str("</div>");
    if matches!(state, Some(SagaState::Running | SagaState::Failed)) {
        body.push_str(&read_only_note(&caller));
    }
    body.push_str(MESSAGE);

    body.push_str("<h2>Steps</h2><div class=\"lane\" id=\"forward-lane\">");
    for step in &view.steps {
        let _ = write!(
            body,
            "<div class=\"box step\" data-state=\"{state}\"><h3>{name}</h3>{badge}\
             <div class=\"muted\">attempts {attempts} · {took}</div>\
             <div class=\"muted\">{start} → {end}</div>{error}</div>",
            state = escape(&step.state),
            name = escape(&step.name),
            badge = badge(&step.state),
            attempts = step.attempts,
            took = took(step.started_at, step.finished_at),
            start = when(step.started_at),
            end = when(step.finished_at),
            error = step
                .last_error
                .as_deref()
                .map_or(String::new(), |e| format!(
                    "<div class=\"error\">{}</div>",
                    escape(e)
                )),
        );
    }
    body.push_str("</div><h2>Compensations</h2><div class=\"lane\" id=\"compensation-lane\">");
    if view.compensations.is_empty() {
        body.push_str("<p class=\"muted\">None ran.</p>");
    }
    for c in &view.compensations {
        let _ = write!(
            body,
            "<div class=\"box compensation\" data-state=\"{state}\"><h3>{name}</h3>{badge}\
             <div class=\"muted\">undoes {step} · attempts {attempts} · {took}</div>\
             <div class=\"muted\">{start} → {end}</div>{error}</div>",
            state = escape(&c.state),
            name = escape(&c.name),
            badge = badge(&c.state),
            step = escape(&c.step),
            attempts = c.attempts,
            took = took(c.started_at, c.finished_at),
            start = when(c.started_at),
            end = when(c.finished_at),
            error = c.last_error.as_deref().map_or(String::new(), |e| format!(
                "<div class=\"error\">{}</div>",
                escape(e)
            )),
        );
    }
    body.push_str("</div>");

    let page_size = usize::try_from(HISTORY_PAGE).unwrap_or(usize::MAX);
    let more = history.len() > page_size;
    let shown = &history[..history.len().min(page_size)];
    body.push_str("<h2>History</h2>");
    if after > 0 {
        let _ = write!(
            body,
            "<p><a id=\"history-first\" href=\"/ui/sagas/{}\">← from the start</a></p>",
            view.id
        );
    }
    body.push_str("<ol class=\"timeline\" id=\"history\">");
    if shown.is_empty() {
        body.push_str("<li class=\"muted\">Nothing recorded yet.</li>");
    }
    for (_, item) in shown {
        body.push_str(&entry(item));
    }
    body.push_str("</ol>");
    if more && let Some((last, _)) = shown.last() {
        let _ = write!(
            body,
            "<p><a id=\"history-next\" href=\"/ui/sagas/{}?history={last}\">later entries →</a></p>",
            view.id
        );
    }

    body.push_str("<h2>Context</h2><table>");
    for (key, value) in view.input.iter().chain(view.context.iter()) {
        let _ = write!(
            body,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(key),
            escape(&value.to_string())
        );
    }
    body.push_str("</table>");
    (
        StatusCode::OK,
        page(
            &format!("Saga {}", view.id),
            &body,
            if terminal {
                Refresh::Never
            } else {
                Refresh::Script("live.js")
            },
            &["actions.js"],
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn blank(kind: HistoryKind) -> HistoryEntry {
        HistoryEntry {
            at: Utc::now(),
            kind,
            step: None,
            phase: None,
            attempt: None,
            outcome: None,
            error: None,
            actor: None,
            action: None,
            input: None,
        }
    }

    #[test]
    fn timeline_lines_say_what_happened_escaped() {
        let ended = HistoryEntry {
            step: Some("reward.grant".into()),
            attempt: Some(2),
            outcome: Some("retrying".into()),
            error: Some("<busy>".into()),
            ..blank(HistoryKind::StepEnded)
        };
        let line = entry(&ended);
        assert!(
            line.contains("step <b>reward.grant</b> attempt 2 ended"),
            "{line}"
        );
        assert!(line.contains("&lt;busy&gt;"), "{line}");
        let operator = HistoryEntry {
            actor: Some("ops".into()),
            action: Some("cancel".into()),
            outcome: Some("saga_terminal".into()),
            ..blank(HistoryKind::Operator)
        };
        let line = entry(&operator);
        assert!(line.contains("<b class=\"actor\">ops</b>"), "{line}");
        assert!(line.contains("state refused\">saga_terminal"), "{line}");
    }
}
