//! The saga page: server-rendered pages for operators, with nothing loaded from elsewhere, so
//! that it works offline and under the page's Content-Security-Policy (`script-src 'self'`: no
//! inline script; every script is a file under `/ui/assets/`).
//!
//! - `/ui` ([`list`]): counts by state, the sagas newest first, filtered by state, type and
//!   every search key the definitions declare, 100 a page with a keyset cursor, kept current by
//!   `/ui/assets/list.js` (a short poll of the page itself; without script the page refreshes
//!   itself every 5 s).
//! - `/ui/sagas/{id}` ([`detail`]): one saga's lanes of forward steps and compensations, its
//!   full history as a timeline (the data of `GET /v1/sagas/{id}/history`), a link to its trace,
//!   and cancel and retry buttons. While the saga is not terminal, `/ui/assets/live.js` follows
//!   its server-sent events and shows the page again when its state changes.
//! - `/ui/dead-letters` ([`dead_letters`]): what no consumer could handle, newest first, with
//!   replay and discard buttons.
//! - `/docs` ([`docs`]): Swagger UI over `/openapi.json`, its files compiled in.
//!
//! The buttons act through the API itself (`/ui/assets/actions.js`: a `confirm()`, then a
//! same-origin `fetch` that carries the login cookie), so the edge checks the token's scope
//! exactly as for any other client, and the page shows the API's answer, a `403` for a token
//! without `operate` included. A token without `operate` sees the buttons disabled.

mod assets;
mod dead_letters;
mod detail;
mod docs;
mod list;

use axum::Extension;
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use chrono::{DateTime, Utc};
use runtime::auth::{Caller, Needed, Scope};

use crate::api::ApiState;

/// What the page needs besides the API's state.
#[derive(Clone)]
pub struct UiState {
    /// The API's state (store, definitions).
    pub api: ApiState,
    /// A URL with `{trace_id}` where the trace viewer shows a trace.
    pub trace_url_template: String,
}

/// `/ui`, `/ui/sagas/{id}`, `/ui/dead-letters`, the page's scripts, and the API docs at `/docs`.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/ui", get(list::show))
        .route("/ui/sagas/{id}", get(detail::show))
        .route("/ui/dead-letters", get(dead_letters::show))
        .route("/ui/assets/{name}", get(assets::serve))
        .with_state(state)
        .merge(docs::router())
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

/// Percent-encodes a query parameter's value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}\
h1{font-size:20px}a{color:#2456c7}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{padding:6px 10px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}\
th{background:#eef1f5}.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}\
.running,.retrying,.compensating{background:#4a76d4}.pending{background:#aab1bd}.succeeded,.completed,.applied{background:#2e8b57}\
.compensated,.cancelled,.resent{background:#c17d11}.failed{background:#c0392b}.recorded,.refused{background:#8a93a3}\
.lane{display:flex;gap:10px;flex-wrap:wrap;margin:8px 0 20px}.box{background:#fff;border:1px solid #d5dae2;\
border-radius:6px;padding:10px;min-width:170px}.box h3{margin:0 0 6px;font-size:14px}.error{color:#c0392b;\
font-size:12px;max-width:420px;overflow-wrap:anywhere}.muted{color:#6b7383;font-size:12px}\
form{margin:12px 0}input,select{padding:4px;margin-right:6px}\
nav{display:flex;gap:16px;align-items:center;margin-bottom:12px}nav form{margin:0 0 0 auto}\
#counts{display:flex;gap:8px;flex-wrap:wrap;margin:8px 0 12px}.count{background:#fff;border:1px solid #d5dae2;\
border-radius:6px;padding:6px 10px;text-decoration:none;color:#1d2330}.count b{font-size:16px;margin-left:6px}\
.count.current{border-color:#2456c7;box-shadow:0 0 0 1px #2456c7}\
.paging{display:flex;gap:16px;margin:12px 0}td.buttons{white-space:nowrap}.actions{display:flex;gap:8px;align-items:center;margin:12px 0}\
button{padding:5px 12px;border-radius:5px;border:1px solid #8a93a3;background:#fff;cursor:pointer}\
button.danger{border-color:#c0392b;color:#c0392b}button:disabled{opacity:.5;cursor:not-allowed}\
.message{padding:8px 12px;border-radius:6px;margin:10px 0}.message:empty{display:none}\
.message.ok{background:#e3f4ea;border:1px solid #2e8b57}.message.error{background:#fbe9e7;border:1px solid #c0392b}\
.message.info{background:#eef1f5;border:1px solid #aab1bd}\
.timeline{list-style:none;padding:0;margin:8px 0 20px;border-left:3px solid #d5dae2}\
.timeline li{position:relative;margin:0 0 8px 0;padding:6px 10px 6px 18px;background:#fff}\
.timeline li:before{content:'';position:absolute;left:-8px;top:11px;width:11px;height:11px;border-radius:50%;background:#aab1bd}\
.timeline li.operator:before{background:#c17d11}.timeline li.compensation_started:before,.timeline li.compensation_ended:before{background:#8e44ad}\
.timeline li.step_ended:before{background:#2e8b57}.timeline .at{font-family:monospace;color:#6b7383;margin-right:8px}\
code,.payload{font-family:monospace;font-size:12px;overflow-wrap:anywhere}";

/// How a page keeps itself current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refresh {
    /// It does not (a terminal saga, a missing one).
    Never,
    /// It loads itself again every 5 s.
    Every5s,
    /// A script keeps it current; without script, it loads itself again every 5 s.
    Script(&'static str),
}

/// A whole page: `scripts` are the page's own scripts (files under `/ui/assets/`).
fn page(title: &str, body: &str, refresh: Refresh, scripts: &[&str]) -> Html<String> {
    let mut head = String::new();
    match refresh {
        Refresh::Never => {}
        Refresh::Every5s => head.push_str("<meta http-equiv=\"refresh\" content=\"5\">"),
        Refresh::Script(script) => {
            head.push_str(&format!(
                "<script src=\"/ui/assets/{script}\" defer></script>\
                 <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"
            ));
        }
    }
    for script in scripts {
        head.push_str(&format!(
            "<script src=\"/ui/assets/{script}\" defer></script>"
        ));
    }
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{head}\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    ))
}

/// The links between the pages, and the log-out button.
fn nav(caller: &Option<Extension<Caller>>) -> String {
    let who = caller.as_ref().map_or(String::new(), |Extension(c)| {
        format!(
            "<span class=\"muted\" id=\"caller\">{} · {}</span>",
            escape(&c.name),
            c.scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    format!(
        "<nav><a href=\"/ui\">Sagas</a><a href=\"/ui/dead-letters\">Dead letters</a>\
         <a href=\"/docs/\">API docs</a>{who}<form method=\"post\" action=\"/ui/logout\">\
         <button type=\"submit\" id=\"logout\">Log out</button></form></nav>"
    )
}

/// Whether the caller's token may cancel, retry, replay and discard.
fn may_operate(caller: &Option<Extension<Caller>>) -> bool {
    caller
        .as_ref()
        .is_some_and(|Extension(c)| c.allows(Needed::Scope(Scope::Operate)))
}

/// What a token without `operate` is told where the buttons are.
fn read_only_note(caller: &Option<Extension<Caller>>) -> String {
    if may_operate(caller) {
        return String::new();
    }
    let name = caller
        .as_ref()
        .map_or("this token".to_owned(), |Extension(c)| {
            format!("The token {:?}", c.name)
        });
    format!(
        "<p class=\"message info\" id=\"read-only\">{} can only read: the buttons need a token with \
         the <code>operate</code> scope (log out, then log in with one).</p>",
        escape(&name)
    )
}

/// A button that calls the API (see `actions.js`): `method` on `url`, after the browser asked
/// `confirm`. Disabled for a token that may not operate.
#[derive(Clone, Copy, Debug)]
struct Action<'a> {
    id: &'a str,
    label: &'a str,
    method: &'a str,
    url: &'a str,
    confirm: &'a str,
    /// What the page does after a success: `reload`, or `remove:<element id>`.
    then: &'a str,
    danger: bool,
}

fn button(action: Action<'_>, allowed: bool) -> String {
    format!(
        "<button type=\"button\" class=\"act{danger}\" id=\"{id}\" data-method=\"{method}\" \
         data-url=\"{url}\" data-confirm=\"{confirm}\" data-then=\"{then}\"{disabled}>{label}</button>",
        danger = if action.danger { " danger" } else { "" },
        id = escape(action.id),
        method = escape(action.method),
        url = escape(action.url),
        confirm = escape(action.confirm),
        then = escape(action.then),
        disabled = if allowed {
            ""
        } else {
            " disabled title=\"needs a token with the operate scope\""
        },
        label = escape(action.label),
    )
}

/// Where the answers of the buttons are shown.
const MESSAGE: &str = "<p class=\"message\" id=\"message\" role=\"status\" aria-live=\"polite\"></p>\
<noscript><p class=\"message info\">The buttons need JavaScript; <code>sagactl</code> does the same from a terminal.</p></noscript>";

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

/// A page that says the store (or JetStream) did not answer.
fn unavailable(title: &str, what: &str) -> (axum::http::StatusCode, Html<String>) {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        page(
            title,
            &format!("<p>{} did not answer.</p>", escape(what)),
            Refresh::Every5s,
            &[],
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::{encode, escape};

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
