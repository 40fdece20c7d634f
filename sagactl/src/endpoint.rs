//! Where the platform is and which token to show it. `--url`/`SAGACTL_URL` and
//! `--token`/`SAGACTL_TOKEN` win; without them `sagactl` talks to the platform `./dev.sh up`
//! started: `http://$SAGA_GATEWAY_ADDR` (else `http://127.0.0.1:8080`), with the `admin` token
//! of the nearest `.run/api-tokens.json` above the current directory. The token stays a
//! [`SecretString`]: it is never printed, logged or put in an error.

use std::path::{Path, PathBuf};

use reqwest::Url;
use secrecy::SecretString;

use crate::error::CliError;

/// The gateway `./dev.sh up` serves on unless `SAGA_GATEWAY_ADDR` says otherwise.
pub const LOCAL_GATEWAY: &str = "127.0.0.1:8080";

/// The file `./dev.sh up` writes the local tokens to, relative to the checkout.
pub const LOCAL_TOKENS: &str = ".run/api-tokens.json";

/// The entry of [`LOCAL_TOKENS`] used when no token is given.
pub const LOCAL_TOKEN_NAME: &str = "admin";

/// A platform to talk to.
pub struct Endpoint {
    /// The base URL every route is under.
    pub base: Url,
    /// The bearer token.
    pub token: SecretString,
}

/// Where the values come from when no flag or `SAGACTL_*` variable gives them.
#[derive(Clone, Debug)]
pub struct LocalDefaults {
    /// `SAGA_GATEWAY_ADDR`, if set.
    pub gateway_addr: Option<String>,
    /// Where the search for `.run/api-tokens.json` starts.
    pub start_dir: Option<PathBuf>,
}

impl LocalDefaults {
    /// The defaults of this process: its environment and current directory.
    pub fn from_process() -> Self {
        Self {
            gateway_addr: std::env::var("SAGA_GATEWAY_ADDR")
                .ok()
                .filter(|a| !a.trim().is_empty()),
            start_dir: std::env::current_dir().ok(),
        }
    }
}

impl Endpoint {
    /// The endpoint from the given URL and token, filling what is missing from `local`.
    pub fn resolve(
        url: Option<String>,
        token: Option<String>,
        local: &LocalDefaults,
    ) -> Result<Self, CliError> {
        let base = match url.filter(|u| !u.trim().is_empty()) {
            Some(url) => parse_base(&url)?,
            None => {
                let addr = local.gateway_addr.as_deref().unwrap_or(LOCAL_GATEWAY);
                if addr.contains("://") {
                    parse_base(addr)?
                } else {
                    parse_base(&format!("http://{addr}"))?
                }
            }
        };
        let token = match token.filter(|t| !t.trim().is_empty()) {
            Some(token) => SecretString::from(token.trim().to_owned()),
            None => local_token(local.start_dir.as_deref())?,
        };
        Ok(Self { base, token })
    }
}

fn parse_base(url: &str) -> Result<Url, CliError> {
    let parsed = Url::parse(url.trim())
        .map_err(|e| CliError::Usage(format!("the platform URL {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(CliError::Usage(format!(
            "the platform URL {url:?} must be an http:// or https:// URL"
        )));
    }
    Ok(parsed)
}

/// The `admin` token of the nearest `.run/api-tokens.json` at or above `start`.
fn local_token(start: Option<&Path>) -> Result<SecretString, CliError> {
    let missing = || {
        CliError::Usage(
            "no API token: pass --token, set SAGACTL_TOKEN, or run sagactl inside the checkout \
             after `./dev.sh up` (it reads the admin token from .run/api-tokens.json)"
                .into(),
        )
    };
    let file = start
        .into_iter()
        .flat_map(Path::ancestors)
        .map(|dir| dir.join(LOCAL_TOKENS))
        .find(|file| file.is_file())
        .ok_or_else(missing)?;
    let text = std::fs::read_to_string(&file).map_err(CliError::io(format!(
        "reading the local tokens {}",
        file.display()
    )))?;
    let tokens: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{} is not a JSON object of tokens by name: {e}",
                file.display()
            ))
        })?;
    tokens
        .get(LOCAL_TOKEN_NAME)
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::from(t.to_owned()))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{} has no {LOCAL_TOKEN_NAME:?} token; pass --token or set SAGACTL_TOKEN",
                file.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sagactl-endpoint-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).expect("scratch directory");
        dir
    }

    #[test]
    fn flags_win_over_the_local_platform() {
        let local = LocalDefaults {
            gateway_addr: Some("127.0.0.1:9999".into()),
            start_dir: None,
        };
        let endpoint = Endpoint::resolve(
            Some("https://saga.example/base/".into()),
            Some(" tok ".into()),
            &local,
        )
        .expect("endpoint");
        assert_eq!(endpoint.base.as_str(), "https://saga.example/base/");
        assert_eq!(endpoint.token.expose_secret(), "tok");
    }

    #[test]
    fn without_flags_the_gateway_address_and_the_nearest_token_file_are_used() {
        let dir = scratch("walk");
        std::fs::create_dir_all(dir.join(".run")).expect(".run");
        std::fs::write(
            dir.join(LOCAL_TOKENS),
            r#"{"game": "g", "admin": "the-admin-token"}"#,
        )
        .expect("tokens");
        let local = LocalDefaults {
            gateway_addr: Some("127.0.0.1:18080".into()),
            start_dir: Some(dir.join("a/b")),
        };
        let endpoint = Endpoint::resolve(None, None, &local).expect("endpoint");
        assert_eq!(endpoint.base.as_str(), "http://127.0.0.1:18080/");
        assert_eq!(endpoint.token.expose_secret(), "the-admin-token");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_default_gateway_is_port_8080_and_no_token_is_a_usage_error() {
        let dir = scratch("none");
        let local = LocalDefaults {
            gateway_addr: None,
            start_dir: Some(dir.join("a")),
        };
        let endpoint = Endpoint::resolve(None, Some("t".into()), &local).expect("endpoint");
        assert_eq!(endpoint.base.as_str(), "http://127.0.0.1:8080/");
        let error = Endpoint::resolve(
            None,
            None,
            &LocalDefaults {
                gateway_addr: None,
                start_dir: None,
            },
        )
        .err()
        .expect("no token");
        assert!(matches!(error, CliError::Usage(_)), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_url_must_be_http() {
        let local = LocalDefaults {
            gateway_addr: None,
            start_dir: None,
        };
        assert!(Endpoint::resolve(Some("ftp://x".into()), Some("t".into()), &local).is_err());
        assert!(Endpoint::resolve(Some("not a url".into()), Some("t".into()), &local).is_err());
    }
}
