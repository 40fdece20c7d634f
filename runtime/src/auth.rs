//! API tokens and their scopes: who may call which route. Every route but `/healthz` and
//! `/readyz` needs `Authorization: Bearer <token>` (the saga page also takes the token from its
//! login cookie). A token is configured only as the SHA-256 of its value, with a name and its
//! scopes, from `SAGA_API_TOKENS_FILE` (a mounted Secret) or `SAGA_API_TOKENS` (the same JSON):
//!
//! ```json
//! {"tokens": [{"name": "game-backend", "sha256": "<hex>", "scopes": ["game"]}]}
//! ```
//!
//! No token configured means every protected route answers 401: secure by default. A missing or
//! unknown token is 401 `unauthenticated` / `invalid_token`, a token without the route's scope
//! 403 `insufficient_scope`, both problem+json. The token itself is never logged: requests carry
//! the caller's name ([`Caller`]) onwards.
//!
//! | scope | may |
//! |---|---|
//! | `game` | create missions, link chats, start sagas, exchange gifts; read a saga, mission, wallet, gift, chat or my-page by its id |
//! | `read` | every `GET`: lists, the saga page, `/metrics`, the OpenAPI document |
//! | `operate` | everything `read` may, and cancel, retry (one and bulk), dead letters, the Mypage rebuild |
//! | `notify` | send a Telegram message (`POST /v1/telegram/messages`: the gift worker's service token) |
//! | `admin` | everything, plus the budget, freezes, holds and the gift catalogue |

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

/// The name of the saga page's login cookie.
pub const COOKIE: &str = "saga_token";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The game backend's calls.
    Game,
    /// Every read.
    Read,
    /// Operator actions.
    Operate,
    /// Sending Telegram messages for another service.
    Notify,
    /// Everything.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::Game,
        Scope::Read,
        Scope::Operate,
        Scope::Notify,
        Scope::Admin,
    ];

    /// The scope as written in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Game => "game",
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Notify => "notify",
            Scope::Admin => "admin",
        }
    }
}

/// Who is calling: the token's name and scopes (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's configured name.
    pub name: String,
    /// Its scopes.
    pub scopes: BTreeSet<Scope>,
}

impl Caller {
    /// Whether the caller may call a route that needs `needed`.
    pub fn allows(&self, needed: Needed) -> bool {
        if self.scopes.contains(&Scope::Admin) {
            return true;
        }
        let reads = self.scopes.contains(&Scope::Read) || self.scopes.contains(&Scope::Operate);
        match needed {
            Needed::Scope(Scope::Read) => reads,
            Needed::Scope(scope) => self.scopes.contains(&scope),
            Needed::GameOrRead => reads || self.scopes.contains(&Scope::Game),
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needed {
    /// One scope (or `admin`).
    Scope(Scope),
    /// `game` or `read` (or `admin`): reading one thing by its id.
    GameOrRead,
}

impl Needed {
    fn describe(self) -> String {
        match self {
            Needed::Scope(scope) => format!("the {} scope", scope.as_str()),
            Needed::GameOrRead => "the game or read scope".into(),
        }
    }
}

/// The scope a request needs; `None` for the routes anyone may call (health, the login page).
pub fn needed(method: &Method, path: &str) -> Option<Needed> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    match (read, parts.as_slice()) {
        (_, ["healthz"] | ["readyz"]) => None,
        (_, ["ui", "login"] | ["ui", "logout"]) => None,
        (true, ["v1", "sagas", _] | ["v1", "sagas", _, "events"]) => Some(Needed::GameOrRead),
        (true, ["v1", "missions", _] | ["v1", "wallets", _] | ["v1", "gifts", ..]) => {
            Some(Needed::GameOrRead)
        }
        (true, ["v1", "telegram", "chats", _] | ["v1", "mypages", ..]) => Some(Needed::GameOrRead),
        (true, _) => Some(Needed::Scope(Scope::Read)),
        (false, ["v1", "sagas"] | ["v1", "missions"]) if *method == Method::POST => {
            Some(Needed::Scope(Scope::Game))
        }
        (false, ["v1", "gifts", _, "exchanges"]) if *method == Method::POST => {
            Some(Needed::Scope(Scope::Game))
        }
        (false, ["v1", "telegram", "chats", _]) if *method == Method::PUT => {
            Some(Needed::Scope(Scope::Game))
        }
        (false, ["v1", "telegram", "messages"]) if *method == Method::POST => {
            Some(Needed::Scope(Scope::Notify))
        }
        (false, ["v1", "sagas", "cancel" | "retry"] | ["v1", "sagas", _, "cancel" | "retry"])
            if *method == Method::POST =>
        {
            Some(Needed::Scope(Scope::Operate))
        }
        (false, ["v1", "dead-letters", ..] | ["v1", "mypages", "rebuild"]) => {
            Some(Needed::Scope(Scope::Operate))
        }
        (false, _) => Some(Needed::Scope(Scope::Admin)),
    }
}

/// One configured token.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenEntry {
    /// Its name, shown in logs and operator history.
    pub name: String,
    /// The hex SHA-256 of the token's value.
    pub sha256: String,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
}

/// The token file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TokenFile {
    /// Every token.
    pub tokens: Vec<TokenEntry>,
}

/// Why the token configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("reading the API token file {0}: {1}")]
    Read(String, std::io::Error),
    /// The JSON is not a token file.
    #[error("the API token configuration is not valid: {0}")]
    Invalid(String),
}

/// The configured tokens, by the SHA-256 of their value.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl Tokens {
    /// Parses a token file's JSON.
    pub fn parse(json: &str) -> Result<Self, TokenError> {
        let file: TokenFile =
            serde_json::from_str(json).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let mut by_hash = HashMap::new();
        for entry in file.tokens {
            let bytes = hex_bytes(&entry.sha256).ok_or_else(|| {
                TokenError::Invalid(format!(
                    "token {:?}: sha256 is not 64 hex digits",
                    entry.name
                ))
            })?;
            by_hash.insert(
                bytes,
                Caller {
                    name: entry.name,
                    scopes: entry.scopes,
                },
            );
        }
        Ok(Self { by_hash })
    }

    /// From `SAGA_API_TOKENS_FILE`, else `SAGA_API_TOKENS`, else none (every protected route
    /// then answers 401).
    pub fn from_env() -> Result<Self, TokenError> {
        if let Ok(path) = std::env::var("SAGA_API_TOKENS_FILE")
            && !path.trim().is_empty()
        {
            let json = std::fs::read_to_string(&path).map_err(|e| TokenError::Read(path, e))?;
            return Self::parse(&json);
        }
        match std::env::var("SAGA_API_TOKENS") {
            Ok(json) if !json.trim().is_empty() => Self::parse(&json),
            _ => {
                tracing::warn!(
                    "no API tokens configured (SAGA_API_TOKENS_FILE or SAGA_API_TOKENS): every route but the health checks answers 401"
                );
                Ok(Self::default())
            }
        }
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The caller a presented token stands for.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        self.by_hash.get(&sha256(token))
    }
}

/// The SHA-256 of a token, as configured.
pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The hex form of [`sha256`] (what a token file holds).
pub fn sha256_hex(token: &str) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_bytes(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The token a request presents: its bearer token, else the page's login cookie.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The middleware that authorizes every request (see the module documentation); the
/// [`Caller`] goes into the request's extensions.
pub async fn authorize(
    State(tokens): State<Arc<Tokens>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let Some(needed) = needed(request.method(), &path) else {
        return next.run(request).await;
    };
    let page = path == "/ui" || path.starts_with("/ui/");
    let Some(token) = presented(request.headers()) else {
        if page && request.method() == Method::GET {
            return Redirect::to(&format!("/ui/login?next={}", encode_next(&request)))
                .into_response();
        }
        return challenge(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this route needs an API token: Authorization: Bearer <token>",
        ));
    };
    let Some(caller) = tokens.caller(&token).cloned() else {
        return challenge(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the API token is not one this platform knows",
        ));
    };
    if !caller.allows(needed) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "the token {:?} may not {} {path}: it needs {}",
                caller.name,
                request.method(),
                needed.describe()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn challenge(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"reward-saga\""),
    );
    response
}

/// The page to come back to after logging in: only paths of the page itself.
fn encode_next(request: &Request) -> String {
    let target = request.uri().path_and_query().map_or("/ui", |p| p.as_str());
    target
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The saga page's login: `GET /ui/login` shows a form for a token, `POST /ui/login` checks it
/// (it must carry the `read` scope) and keeps it in an HttpOnly, SameSite=Strict cookie,
/// `POST /ui/logout` forgets it.
pub fn login_routes(tokens: Arc<Tokens>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .with_state(tokens)
}

/// `GET /ui/login` query and `POST /ui/login` form.
#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    /// The API token.
    #[serde(default)]
    pub token: String,
    /// Where to go afterwards (a path of the page).
    #[serde(default)]
    pub next: String,
}

fn safe_next(next: &str) -> &str {
    let page = (next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?"))
        && !next.contains("//")
        && !next.contains('\\');
    if page { next } else { "/ui" }
}

fn login_page(next: &str, message: &str) -> String {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · sagas</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}\
         input{{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}}\
         button{{padding:.5rem 1rem}} .error{{color:#b00020}}</style></head><body>\
         <h1>Saga platform</h1><p>Log in with an API token that has the <code>read</code> scope.</p>\
         <p class=\"error\" id=\"login-error\">{}</p>\
         <form method=\"post\" action=\"/ui/login\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required>\
         <button type=\"submit\" id=\"login\">Log in</button></form></body></html>",
        escape(message),
        escape(safe_next(next)),
    )
}

async fn login_form(
    axum::extract::Query(form): axum::extract::Query<LoginForm>,
) -> axum::response::Html<String> {
    axum::response::Html(login_page(&form.next, ""))
}

async fn login(
    State(tokens): State<Arc<Tokens>>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let token = form.token.trim();
    let allowed = tokens
        .caller(token)
        .is_some_and(|caller| caller.allows(Needed::Scope(Scope::Read)));
    if !allowed {
        let page = login_page(&form.next, "That token is unknown or lacks the read scope.");
        return (StatusCode::UNAUTHORIZED, axum::response::Html(page)).into_response();
    }
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
    let mut response = Redirect::to(safe_next(&form.next)).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("saga_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: &[Scope]) -> Caller {
        Caller {
            name: "t".into(),
            scopes: scopes.iter().copied().collect(),
        }
    }

    #[test]
    fn routes_need_the_documented_scopes() {
        let cases = [
            (Method::GET, "/healthz", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/ui/login", None),
            (Method::POST, "/v1/sagas", Some(Needed::Scope(Scope::Game))),
            (Method::GET, "/v1/sagas", Some(Needed::Scope(Scope::Read))),
            (Method::GET, "/v1/sagas/x", Some(Needed::GameOrRead)),
            (
                Method::POST,
                "/v1/sagas/x/cancel",
                Some(Needed::Scope(Scope::Operate)),
            ),
            (
                Method::POST,
                "/v1/sagas/retry",
                Some(Needed::Scope(Scope::Operate)),
            ),
            (
                Method::POST,
                "/v1/missions",
                Some(Needed::Scope(Scope::Game)),
            ),
            (
                Method::POST,
                "/v1/missions/x/hold",
                Some(Needed::Scope(Scope::Admin)),
            ),
            (
                Method::DELETE,
                "/v1/missions/x/hold",
                Some(Needed::Scope(Scope::Admin)),
            ),
            (
                Method::PUT,
                "/v1/rewards/budget",
                Some(Needed::Scope(Scope::Admin)),
            ),
            (
                Method::POST,
                "/v1/wallets/p/freeze",
                Some(Needed::Scope(Scope::Admin)),
            ),
            (
                Method::PUT,
                "/v1/telegram/chats/p",
                Some(Needed::Scope(Scope::Game)),
            ),
            (
                Method::POST,
                "/v1/telegram/messages",
                Some(Needed::Scope(Scope::Notify)),
            ),
            (Method::POST, "/v1/gifts", Some(Needed::Scope(Scope::Admin))),
            (
                Method::PATCH,
                "/v1/gifts/x",
                Some(Needed::Scope(Scope::Admin)),
            ),
            (
                Method::POST,
                "/v1/gifts/x/exchanges",
                Some(Needed::Scope(Scope::Game)),
            ),
            (
                Method::POST,
                "/v1/dead-letters/1/replay",
                Some(Needed::Scope(Scope::Operate)),
            ),
            (
                Method::POST,
                "/v1/mypages/rebuild",
                Some(Needed::Scope(Scope::Operate)),
            ),
            (Method::GET, "/metrics", Some(Needed::Scope(Scope::Read))),
            (Method::GET, "/ui", Some(Needed::Scope(Scope::Read))),
            (Method::POST, "/nowhere", Some(Needed::Scope(Scope::Admin))),
        ];
        for (method, path, expected) in cases {
            assert_eq!(needed(&method, path), expected, "{method} {path}");
        }
        let game = caller(&[Scope::Game]);
        assert!(game.allows(Needed::GameOrRead));
        assert!(!game.allows(Needed::Scope(Scope::Read)));
        assert!(!game.allows(Needed::Scope(Scope::Operate)));
        assert!(caller(&[Scope::Admin]).allows(Needed::Scope(Scope::Notify)));
        assert!(caller(&[Scope::Read]).allows(Needed::GameOrRead));
        let operator = caller(&[Scope::Operate]);
        assert!(
            operator.allows(Needed::Scope(Scope::Read)),
            "an operator reads what it acts on"
        );
        assert!(!operator.allows(Needed::Scope(Scope::Admin)));
        assert!(!caller(&[Scope::Read]).allows(Needed::Scope(Scope::Operate)));
    }

    #[test]
    fn tokens_are_known_by_their_hash_only() {
        let json = format!(
            r#"{{"tokens": [{{"name": "ops", "sha256": "{}", "scopes": ["operate", "read"]}}]}}"#,
            sha256_hex("s3cret-value")
        );
        let tokens = Tokens::parse(&json).expect("parses");
        let ops = tokens.caller("s3cret-value").expect("known");
        assert_eq!(ops.name, "ops");
        assert!(tokens.caller("s3cret-valuE").is_none());
        assert!(
            Tokens::parse(r#"{"tokens": [{"name": "x", "sha256": "zz", "scopes": []}]}"#).is_err()
        );
        assert!(Tokens::parse("[]").is_err());
    }

    #[test]
    fn the_login_only_returns_to_the_page() {
        assert_eq!(safe_next("/ui/sagas/x"), "/ui/sagas/x");
        assert_eq!(safe_next("/ui?state=failed"), "/ui?state=failed");
        assert_eq!(safe_next("https://evil.example/ui"), "/ui");
        assert_eq!(safe_next("//evil.example"), "/ui");
        assert_eq!(safe_next("/v1/sagas"), "/ui");
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_login_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented(&headers).as_deref(), Some("abc"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; saga_token=xyz; b=2"),
        );
        assert_eq!(presented(&headers).as_deref(), Some("xyz"));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&headers), None);
    }
}
