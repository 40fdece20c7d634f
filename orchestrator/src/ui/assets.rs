//! The page's scripts, served from here (the page's `script-src 'self'` allows nothing else):
//!
//! - `live.js`: follows the saga of a saga's page (its server-sent events) and shows the page
//!   again when its state changes;
//! - `list.js`: keeps the list of sagas current with a short poll of the page itself;
//! - `actions.js`: the buttons: asks for a confirmation, calls the API, shows its answer.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The scripts by name.
const SCRIPTS: [(&str, &str); 3] = [
    ("live.js", include_str!("assets/live.js")),
    ("list.js", include_str!("assets/list.js")),
    ("actions.js", include_str!("assets/actions.js")),
];

/// `GET /ui/assets/{name}`.
pub(super) async fn serve(Path(name): Path<String>) -> Response {
    match SCRIPTS.iter().find(|(script, _)| *script == name) {
        Some((_, source)) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *source,
        )
            .into_response(),
        None => runtime::ApiError::not_found("asset_not_found", format!("no asset {name}"))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::SCRIPTS;

    #[test]
    fn scripts_are_strict_and_load_nothing_from_elsewhere() {
        for (name, source) in SCRIPTS {
            assert!(source.contains("\"use strict\""), "{name}");
            assert!(
                !source.contains("http://") && !source.contains("https://"),
                "{name}"
            );
            assert!(
                !source.contains("eval(") && !source.contains("innerHTML"),
                "{name}"
            );
        }
    }
}
