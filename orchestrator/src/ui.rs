//! The saga page: a server-rendered view for operators, with nothing loaded from elsewhere, so
//! that it works offline. `/ui` lists sagas (filters by state, type and every search key the
//! definitions declare, such as customer and mission, each also a column; it refreshes itself
//! every 5 s), `/ui/sagas/{id}` shows one saga's timeline: a lane of forward steps and a lane of
//! compensations, each with its attempts, errors and durations, and a link to the saga's trace
//! built from `SAGA_TRACE_URL_TEMPLATE`. While the saga is not terminal, its page follows it
//! live: one small script served from here (`/ui/assets/live.js`, allowed by the page's
//! `script-src 'self'`) listens to `/v1/sagas/{id}/events` and shows the page again when the
//! saga's state changes; without script the page refreshes itself every 5 s instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use chrono::{DateTime, Utc};
use contracts::SagaId;

use crate::api::{ApiState, SagaView};
use crate::definition::key_noun;
use crate::machine::SagaState;
use crate::store::ListFilter;

/// What the page needs besides the API's state.
#[derive(Clone)]
pub struct UiState {
    /// The API's state (store, definitions).
    pub api: ApiState,
    /// A URL with `{trace_id}` where the trace viewer shows a trace.
    pub trace_url_template: String,
}

/// `/ui`, `/ui/sagas/{id}` and the page's script.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/ui", get(list))
        .route("/ui/sagas/{id}", get(detail))
        .route("/ui/assets/live.js", get(live_script))
        .with_state(state)
}

/// The script of a saga's page: follows the saga's events and shows the page again when its
/// state changes; stops listening once the saga is terminal.
const LIVE_JS: &str = r#"// Follows the saga shown on this page (its server-sent events) and shows the page again when
// the saga's state changes. Served by the orchestrator: the page loads nothing from elsewhere.
(function () {
  "use strict";
  var page = document.getElementById("saga");
  if (!page || !window.EventSource) { return; }
  var shown = page.getAttribute("data-state");
  var terminal = ["completed", "compensated", "failed", "cancelled"];
  var status = document.getElementById("live");
  var events = new EventSource("/v1/sagas/" + encodeURIComponent(page.getAttribute("data-saga-id")) + "/events");
  events.onopen = function () { if (status) { status.textContent = "live"; } };
  events.onerror = function () { if (status) { status.textContent = "reconnecting…"; } };
  events.addEventListener("saga", function (event) {
    var saga;
    try { saga = JSON.parse(event.data); } catch (e) { return; }
    if (terminal.indexOf(saga.state) >= 0) { events.close(); }
    if (saga.state !== shown) { window.location.reload(); }
  });
})();
"#;

async fn live_script() -> impl axum::response::IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "max-age=300"),
        ],
        LIVE_JS,
    )
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}\
h1{font-size:20px}a{color:#2456c7}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{padding:6px 10px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}\
th{background:#eef1f5}.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}\
.running,.retrying,.compensating{background:#4a76d4}.pending{background:#aab1bd}.succeeded,.completed{background:#2e8b57}\
.compensated,.cancelled{background:#c17d11}.failed{background:#c0392b}.recorded{background:#8a93a3}\
.lane{display:flex;gap:10px;flex-wrap:wrap;margin:8px 0 20px}.box{background:#fff;border:1px solid #d5dae2;\
border-radius:6px;padding:10px;min-width:170px}.box h3{margin:0 0 6px;font-size:14px}.error{color:#c0392b;\
font-size:12px;max-width:260px;overflow-wrap:anywhere}.muted{color:#6b7383;font-size:12px}\
form{margin:12px 0}input,select{padding:4px;margin-right:6px}";

/// How a page keeps itself current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refresh {
    /// It does not (a terminal saga, a missing one).
    Never,
    /// It loads itself again every 5 s.
    Every5s,
    /// Its script follows the saga's events; without script, every 5 s.
    Live,
}

fn page(title: &str, body: &str, refresh: Refresh) -> Html<String> {
    let refresh = match refresh {
        Refresh::Never => "",
        Refresh::Every5s => "<meta http-equiv=\"refresh\" content=\"5\">",
        Refresh::Live => {
            "<script src=\"/ui/assets/live.js\" defer></script>\
             <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"
        }
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    ))
}

fn badge(state: &str) -> String {
    format!("<span class=\"state {0}\">{0}</span>", escape(state))
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or("–".into(), |t| t.format("%H:%M:%S%.3f").to_string())
}

fn took(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format!("{} ms", (e - s).num_milliseconds()),
        _ => "–".into(),
    }
}

/// The filters of `/ui` as given (`state`, `type` and search keys; the last value of a name
/// counts, other names are ignored), and the value of one when it filters something.
struct Filters(BTreeMap<String, String>);

impl Filters {
    fn given(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    fn value(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.trim().is_empty()).cloned()
    }
}

async fn list(
    State(ui): State<UiState>,
    Query(parameters): Query<Vec<(String, String)>>,
) -> (StatusCode, Html<String>) {
    let filters = Filters(parameters.into_iter().collect());
    let registry = ui.api.engine.registry();
    let keys = registry.search_key_names();
    let state = filters.value("state").and_then(|s| SagaState::parse(&s));
    let filter = ListFilter {
        state,
        saga_type: filters.value("type"),
        keys: keys
            .iter()
            .filter_map(|key| Some(((*key).to_owned(), filters.value(key)?)))
            .collect(),
        limit: 100,
        ..ListFilter::default()
    };
    let sagas = match ui.api.engine.store().list(&filter).await {
        Ok(sagas) => sagas,
        Err(error) => {
            tracing::warn!(%error, "saga page: listing failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "Sagas",
                    "<p>The saga store did not answer.</p>",
                    Refresh::Every5s,
                ),
            );
        }
    };
    let mut body = String::from(
        "<h1>Sagas</h1><form method=\"get\" action=\"/ui\"><select name=\"state\"><option value=\"\">any state</option>",
    );
    for s in SagaState::ALL {
        let selected = if state == Some(s) { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{}</option>", s.as_str());
    }
    body.push_str("</select>");
    for name in std::iter::once("type").chain(keys.iter().copied()) {
        let _ = write!(
            body,
            "<input name=\"{name}\" placeholder=\"{label}\" value=\"{value}\">",
            name = escape(name),
            label = escape(&name.replace('_', " ")),
            value = escape(filters.given(name)),
        );
    }
    body.push_str("<button type=\"submit\">Filter</button></form>");
    let _ = write!(
        body,
        "<p class=\"muted\">{} shown, newest first; refreshes every 5 s.</p>",
        sagas.len()
    );
    body.push_str("<table id=\"sagas\"><tr><th>saga</th><th>type</th><th>state</th>");
    for key in &keys {
        let _ = write!(body, "<th>{}</th>", escape(&key_noun(key)));
    }
    body.push_str("<th>step</th><th>created</th><th>updated</th></tr>");
    for saga in sagas {
        let values = registry
            .get(&saga.saga_type, saga.definition_version)
            .map(|d| d.search_values(&saga.input, &saga.context))
            .unwrap_or_default();
        let view = SagaView::from(saga);
        let current = view
            .steps
            .iter()
            .find(|s| s.state != "succeeded" && s.state != "pending")
            .map_or("", |s| s.name.as_str());
        let _ = write!(
            body,
            "<tr class=\"saga\" data-state=\"{state}\"><td><a href=\"/ui/sagas/{id}\">{id}</a></td><td>{ty}</td><td>{badge}</td>",
            state = escape(&view.state),
            id = view.id,
            ty = escape(&view.saga_type),
            badge = badge(&view.state),
        );
        for key in &keys {
            let value = values.get(*key).map_or("–", String::as_str);
            let _ = write!(body, "<td>{}</td>", escape(value));
        }
        let _ = write!(
            body,
            "<td>{current}</td><td>{created}</td><td>{updated}</td></tr>",
            current = escape(current),
            created = view.created_at.format("%Y-%m-%d %H:%M:%S"),
            updated = view.updated_at.format("%H:%M:%S%.3f"),
        );
    }
    body.push_str("</table>");
    (StatusCode::OK, page("Sagas", &body, Refresh::Every5s))
}

async fn detail(State(ui): State<UiState>, Path(id): Path<String>) -> (StatusCode, Html<String>) {
    let missing = || {
        (
            StatusCode::NOT_FOUND,
            page(
                "No such saga",
                &format!(
                    "<h1>No saga {}</h1><p><a href=\"/ui\">All sagas</a></p>",
                    escape(&id)
                ),
                Refresh::Never,
            ),
        )
    };
    let Ok(saga_id) = id.parse::<SagaId>() else {
        return missing();
    };
    let stored = match ui.api.engine.store().get(saga_id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return missing(),
        Err(error) => {
            tracing::warn!(%error, "saga page: reading a saga failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "Saga",
                    "<p>The saga store did not answer.</p>",
                    Refresh::Every5s,
                ),
            );
        }
    };
    let view = SagaView::from(stored.saga);
    let terminal = SagaState::parse(&view.state).is_some_and(SagaState::is_terminal);
    let mut body = format!(
        "<p><a href=\"/ui\">All sagas</a></p>\
         <h1 id=\"saga\" data-saga-id=\"{id}\" data-state=\"{state}\">Saga {id} {badge}</h1>\
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
            .map_or(String::new(), |r| format!(" · stopped: {}", escape(r))),
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
    body.push_str("</div><h2>Context</h2><table>");
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
                Refresh::Live
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
