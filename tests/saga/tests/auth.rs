//! API tokens with scopes, through the real platform: every protected route of the served
//! OpenAPI document answers 401 without a token or with an unknown one, and 403 with a token that
//! lacks its scope, each as problem+json, and the scopes the document gives each operation are
//! the ones the platform lets through; the saga page sends a browser to its login form, and a
//! token with the read scope logs in with an HttpOnly, SameSite=Strict cookie.

use reqwest::Method;
use runtime::auth::{Needed, Scope};
use saga_tests::TestPlatform;
use serde_json::Value;

/// One operation of the OpenAPI document, with its path parameters filled in.
struct Route {
    method: Method,
    path: String,
    /// The scopes its `security` requirements name (empty for a public operation).
    scopes: Vec<String>,
}

/// Every operation of the OpenAPI document.
fn routes(openapi: &Value) -> Vec<Route> {
    let mut routes = Vec::new();
    for (path, item) in openapi["paths"].as_object().into_iter().flatten() {
        let concrete = path
            .split('/')
            .map(|segment| match segment {
                "{customer_id}" => "player-1".to_owned(),
                s if s.starts_with('{') => uuid::Uuid::now_v7().to_string(),
                s => s.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, operation) in item.as_object().into_iter().flatten() {
            if let Ok(method) = method.to_ascii_uppercase().parse::<Method>() {
                let scopes = operation["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|requirement| requirement["bearer"].as_array().cloned())
                    .flatten()
                    .filter_map(|scope| scope.as_str().map(str::to_owned))
                    .collect();
                routes.push(Route {
                    method,
                    path: concrete.clone(),
                    scopes,
                });
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_with_its_scope() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let openapi = p.get("/openapi.json").await?;
    let (public, routes): (Vec<Route>, Vec<Route>) = routes(&openapi)
        .into_iter()
        .partition(|r| r.scopes.is_empty());
    let mut public: Vec<String> = public.into_iter().map(|r| r.path).collect();
    public.sort();
    assert_eq!(public, ["/healthz", "/readyz"], "the public operations");
    for documented in ["/metrics", "/openapi.json"] {
        assert!(
            routes.iter().any(|r| r.path == documented),
            "{documented} is in the document"
        );
    }
    assert!(routes.len() > 20, "{}", routes.len());
    let tokens = &p.tokens;
    let holders = [
        (Scope::Game, tokens.game.as_str()),
        (Scope::Read, tokens.reader.as_str()),
        (Scope::Operate, tokens.operator.as_str()),
        (Scope::Notify, tokens.notify.as_str()),
    ];
    for Route {
        method,
        path,
        scopes,
    } in &routes
    {
        for token in [None, Some("not-a-token")] {
            let (status, headers, problem) = p.call_as(token, method.clone(), path, None).await?;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {problem}");
            assert_eq!(headers["content-type"], "application/problem+json");
            assert!(
                matches!(
                    problem["code"].as_str(),
                    Some("unauthenticated" | "invalid_token")
                ),
                "{problem}"
            );
            assert!(headers.contains_key("www-authenticate"));
        }
        let needed = runtime::auth::needed(method, path).expect("a protected route");
        for (scope, token) in holders {
            let allowed = match needed {
                Needed::Scope(Scope::Read) => matches!(scope, Scope::Read | Scope::Operate),
                Needed::Scope(needed) => needed == scope,
                Needed::GameOrRead => matches!(scope, Scope::Game | Scope::Read | Scope::Operate),
            };
            assert_eq!(
                scopes.iter().any(|s| s == scope.as_str()),
                allowed,
                "{method} {path}: the document's scopes {scopes:?} and the {} token",
                scope.as_str()
            );
            if allowed {
                continue;
            }
            let (status, _, problem) = p.call_as(Some(token), method.clone(), path, None).await?;
            assert_eq!(
                (status, problem["code"].as_str()),
                (403, Some("insufficient_scope")),
                "{method} {path} with the {} token: {problem}",
                scope.as_str()
            );
        }
        assert!(
            scopes.iter().any(|s| s == "admin"),
            "{method} {path}: admin may do everything"
        );
    }
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = p.call_as(None, Method::GET, path, None).await?;
        assert_eq!(status, 200, "{path} needs no token");
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_game_token_plays_and_reads_what_it_started_but_not_more() -> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let game = Some(p.tokens.game.as_str());
    let (status, _, mission) = p
        .call_as(
            game,
            Method::POST,
            "/v1/missions",
            Some(serde_json::json!({"customer_id": "player-7", "title": "Find the key", "reward_points": 5})),
        )
        .await?;
    assert_eq!(status, 201, "{mission}");
    let (status, _, saga) = p
        .call_as(
            game,
            Method::POST,
            "/v1/sagas",
            Some(serde_json::json!({"type": "mission_reward", "input": {"mission_id": mission["id"]}})),
        )
        .await?;
    assert_eq!(status, 202, "{saga}");
    let id = saga["id"].as_str().expect("id");
    let (status, _, _) = p
        .call_as(game, Method::GET, &format!("/v1/sagas/{id}"), None)
        .await?;
    assert_eq!(status, 200);
    for (method, path) in [
        (Method::GET, "/v1/sagas".to_owned()),
        (Method::POST, format!("/v1/sagas/{id}/cancel")),
        (Method::PUT, "/v1/rewards/budget".to_owned()),
        (Method::POST, "/v1/wallets/player-7/freeze".to_owned()),
        (Method::GET, "/metrics".to_owned()),
    ] {
        let (status, _, problem) = p.call_as(game, method.clone(), &path, None).await?;
        assert_eq!(status, 403, "{method} {path}: {problem}");
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_page_asks_a_browser_to_log_in_and_keeps_the_token_in_a_strict_cookie()
-> anyhow::Result<()> {
    let p = TestPlatform::start().await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = client
        .get(format!("{}/ui?state=failed", p.base))
        .send()
        .await?;
    assert_eq!(page.status(), 303);
    assert_eq!(
        page.headers()["location"],
        "/ui/login?next=/ui%3Fstate%3Dfailed"
    );

    let form = client.get(format!("{}/ui/login", p.base)).send().await?;
    assert_eq!(form.status(), 200);
    let policy = form.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(form.text().await?.contains("name=\"token\""));

    let refused = client
        .post(format!("{}/ui/login", p.base))
        .form(&[("token", p.tokens.game.as_str()), ("next", "/ui")])
        .send()
        .await?;
    assert_eq!(refused.status(), 401, "a game token cannot read the page");

    let logged_in = client
        .post(format!("{}/ui/login", p.base))
        .form(&[
            ("token", p.tokens.reader.as_str()),
            ("next", "https://elsewhere.example/"),
        ])
        .send()
        .await?;
    assert_eq!(logged_in.status(), 303);
    assert_eq!(
        logged_in.headers()["location"],
        "/ui",
        "never sent elsewhere"
    );
    let cookie = logged_in.headers()["set-cookie"].to_str()?.to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("a cookie").to_owned();
    let list = client
        .get(format!("{}/ui", p.base))
        .header("cookie", pair)
        .send()
        .await?;
    assert_eq!(list.status(), 200);
    assert!(list.headers().contains_key("content-security-policy"));
    p.stop().await
}
