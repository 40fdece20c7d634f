//! `/ui`: how many sagas are in each state, and the sagas newest first, filtered by state, type
//! and every search key, a page at a time (`limit`, 100 by default, and a keyset `cursor` like
//! the API's), kept current by `list.js`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use runtime::auth::Caller;
use uuid::Uuid;

use super::{Refresh, UiState, badge, encode, escape, nav, page, unavailable};
use crate::api::SagaView;
use crate::definition::key_noun;
use crate::machine::SagaState;
use crate::store::ListFilter;

/// The page size without `limit`.
const PAGE: i64 = 100;

/// Counts stop here: a state with more sagas shows this many and a `+`.
const COUNT_CAP: i64 = 10_000;

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

    /// The query string of these filters with `state` replaced (`None`: none) and `extra`
    /// added, for links.
    fn link(&self, names: &[&str], state: Option<&str>, extra: &[(&str, &str)]) -> String {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(state) = state {
            pairs.push(("state".into(), state.into()));
        }
        for name in names {
            if let Some(value) = self.value(name) {
                pairs.push(((*name).to_owned(), value));
            }
        }
        for (name, value) in extra {
            pairs.push(((*name).to_owned(), (*value).to_owned()));
        }
        if pairs.is_empty() {
            return "/ui".into();
        }
        let query: Vec<String> = pairs
            .iter()
            .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
            .collect();
        format!("/ui?{}", query.join("&"))
    }
}

fn encode_cursor(saga: &SagaView) -> String {
    let raw = format!("{}|{}", saga.created_at.timestamp_micros(), saga.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (micros, id) = raw.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// `GET /ui`.
pub(super) async fn show(
    State(ui): State<UiState>,
    caller: Option<Extension<Caller>>,
    Query(parameters): Query<Vec<(String, String)>>,
) -> (StatusCode, Html<String>) {
    let filters = Filters(parameters.into_iter().collect());
    let registry = ui.api.engine.registry();
    let keys = registry.search_key_names();
    let state = filters.value("state").and_then(|s| SagaState::parse(&s));
    let limit = filters
        .value("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| (1..=500).contains(l))
        .unwrap_or(PAGE);
    let cursor = filters.value("cursor");
    let after = cursor.as_deref().and_then(decode_cursor);
    let filter = ListFilter {
        state,
        saga_type: filters.value("type"),
        keys: keys
            .iter()
            .filter_map(|key| Some(((*key).to_owned(), filters.value(key)?)))
            .collect(),
        limit: limit + 1,
        after,
        ..ListFilter::default()
    };
    let store = ui.api.engine.store();
    let (sagas, counts) =
        match tokio::try_join!(store.list(&filter), store.count_by_state(COUNT_CAP)) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "saga page: listing failed");
                return unavailable("Sagas", "The saga store");
            }
        };
    let mut sagas: Vec<SagaView> = sagas.into_iter().map(SagaView::from).collect();
    let more = sagas.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    sagas.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    // Links keep the filters (and a page size that is not the default).
    let mut names: Vec<&str> = vec!["type"];
    names.extend(keys.iter().copied());
    let limit_text = limit.to_string();
    let size: Vec<(&str, &str)> = if limit == PAGE {
        Vec::new()
    } else {
        vec![("limit", limit_text.as_str())]
    };

    let mut body = nav(&caller);
    body.push_str("<h1>Sagas</h1><div id=\"counts\">");
    let counted: BTreeMap<String, i64> = counts.into_iter().collect();
    let total: i64 = counted.values().sum();
    let shown = |n: i64| {
        if n >= COUNT_CAP {
            format!("{n}+")
        } else {
            n.to_string()
        }
    };
    let _ = write!(
        body,
        "<a class=\"count{current}\" data-state=\"\" href=\"{href}\">all<b>{total}</b></a>",
        current = if state.is_none() { " current" } else { "" },
        href = escape(&filters.link(&names, None, &size)),
        total = if counted.values().any(|n| *n >= COUNT_CAP) {
            format!("{total}+")
        } else {
            total.to_string()
        },
    );
    for s in SagaState::ALL {
        let n = counted.get(s.as_str()).copied().unwrap_or(0);
        let _ = write!(
            body,
            "<a class=\"count{current}\" data-state=\"{state}\" href=\"{href}\">{badge}<b>{n}</b></a>",
            current = if state == Some(s) { " current" } else { "" },
            state = s.as_str(),
            href = escape(&filters.link(&names, Some(s.as_str()), &size)),
            badge = badge(s.as_str()),
            n = shown(n),
        );
    }
    body.push_str(
        "</div><form method=\"get\" action=\"/ui\"><select name=\"state\"><option value=\"\">any state</option>",
    );
    for s in SagaState::ALL {
        let selected = if state == Some(s) { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{}</option>", s.as_str());
    }
    body.push_str("</select>");
    for name in &names {
        let _ = write!(
            body,
            "<input name=\"{name}\" placeholder=\"{label}\" value=\"{value}\">",
            name = escape(name),
            label = escape(&name.replace('_', " ")),
            value = escape(filters.given(name)),
        );
    }
    if limit != PAGE {
        let _ = write!(
            body,
            "<input type=\"hidden\" name=\"limit\" value=\"{limit}\">"
        );
    }
    body.push_str("<button type=\"submit\">Filter</button></form>");
    let _ = write!(
        body,
        "<p class=\"muted\" id=\"shown\">{} shown, newest first{}; <span id=\"live\">refreshes every 5 s</span>.</p>",
        sagas.len(),
        if cursor.is_some() {
            ", after the first page"
        } else {
            ""
        },
    );
    body.push_str("<table id=\"sagas\"><tr><th>saga</th><th>type</th><th>state</th>");
    for key in &keys {
        let _ = write!(body, "<th>{}</th>", escape(&key_noun(key)));
    }
    body.push_str("<th>step</th><th>created</th><th>updated</th></tr>");
    let next = if more {
        sagas.last().map(encode_cursor)
    } else {
        None
    };
    for view in sagas {
        let values = registry
            .get(&view.saga_type, view.definition_version)
            .map(|d| d.search_values(&view.input, &view.context))
            .unwrap_or_default();
        let current = view
            .steps
            .iter()
            .find(|s| s.state != "succeeded" && s.state != "pending")
            .map_or("", |s| s.name.as_str());
        let _ = write!(
            body,
            "<tr class=\"saga\" id=\"saga-{id}\" data-state=\"{state}\"><td><a href=\"/ui/sagas/{id}\">{id}</a></td><td>{ty}</td><td>{badge}</td>",
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
    body.push_str("</table><div class=\"paging\" id=\"paging\">");
    if cursor.is_some() {
        let state = state.map(SagaState::as_str);
        let _ = write!(
            body,
            "<a id=\"first-page\" href=\"{}\">← newest</a>",
            escape(&filters.link(&names, state, &size))
        );
    }
    if let Some(next) = next {
        let state = state.map(SagaState::as_str);
        let mut extra = size.clone();
        extra.push(("cursor", next.as_str()));
        let _ = write!(
            body,
            "<a id=\"next-page\" href=\"{}\">older →</a>",
            escape(&filters.link(&names, state, &extra))
        );
    }
    body.push_str("</div>");
    (
        StatusCode::OK,
        page("Sagas", &body, Refresh::Script("list.js"), &[]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_filters_and_encode_them() {
        let filters = Filters(
            [
                ("type".to_owned(), "mission_reward".to_owned()),
                ("customer_id".to_owned(), "a b".to_owned()),
                ("mission_id".to_owned(), String::new()),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(
            filters.link(
                &["type", "customer_id", "mission_id"],
                Some("failed"),
                &[("cursor", "x=")]
            ),
            "/ui?state=failed&type=mission_reward&customer_id=a%20b&cursor=x%3D"
        );
        assert_eq!(Filters(BTreeMap::new()).link(&["type"], None, &[]), "/ui");
    }

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("a time");
        let id = Uuid::now_v7();
        let raw = format!("{}|{}", at.timestamp_micros(), id);
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(decode_cursor(&cursor), Some((at, id)));
        assert_eq!(decode_cursor("not a cursor"), None);
    }
}
