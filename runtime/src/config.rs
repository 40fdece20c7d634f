//! Configuration: built-in defaults, then environment variables with the `SAGA_` prefix
//! (nested fields separated by `__`, e.g. `SAGA_POLICIES__TELEGRAM__MAX_ATTEMPTS`), so that a
//! Kubernetes ConfigMap and Secret map onto it directly.

use figment::Figment;
use figment::providers::{Env, Serialized};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The environment prefix of every setting.
pub const ENV_PREFIX: &str = "SAGA_";

/// Loads `T` from its defaults overridden by `SAGA_*` environment variables.
pub fn load<T>() -> Result<T, Box<figment::Error>>
where
    T: Default + Serialize + for<'de> Deserialize<'de>,
{
    Figment::from(Serialized::defaults(T::default()))
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
        .extract()
        .map_err(Box::new)
}

/// The listen address of one service's HTTP API: `SAGA_<SERVICE>_ADDR` (for example
/// `SAGA_REWARD_ADDR`), else `default`.
pub fn listen_addr(service: &str, default: &str) -> Result<String, Box<figment::Error>> {
    #[derive(Deserialize)]
    struct Listen {
        addr: String,
    }
    let prefix = format!("{ENV_PREFIX}{}_", service.to_ascii_uppercase());
    Figment::from(Serialized::default("addr", default))
        .merge(Env::prefixed(&prefix).only(&["addr"]))
        .extract::<Listen>()
        .map(|listen| listen.addr)
        .map_err(Box::new)
}

/// Where the shared infrastructure is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Infrastructure {
    /// PostgreSQL URL (`SAGA_DATABASE_URL`); it may hold a password, so it is a secret: never
    /// serialized, never shown by `Debug`.
    #[serde(default = "default_database_url", skip_serializing)]
    pub database_url: SecretString,
    /// Connections in each service's pool (`SAGA_DATABASE_MAX_CONNECTIONS`).
    pub database_max_connections: u32,
    /// NATS URL (`SAGA_NATS_URL`): `nats://` or `tls://`, several separated by commas.
    pub nats_url: String,
    /// The NATS user this service logs in as (`SAGA_NATS_USER`); none for a server without
    /// authentication.
    pub nats_user: Option<String>,
    /// That user's password (`SAGA_NATS_PASSWORD`). A secret: never serialized or shown.
    #[serde(skip_serializing)]
    pub nats_password: Option<SecretString>,
    /// A PEM file of the CA that signed the NATS servers' certificates, for `tls://` URLs
    /// (`SAGA_NATS_CA_FILE`).
    pub nats_ca_file: Option<String>,
    /// Prefix of every stream and subject (`SAGA_NATS_PREFIX`), empty in production.
    pub nats_prefix: String,
    /// Replicas of every stream (`SAGA_NATS_REPLICAS`): 1 locally, 3 on a cluster.
    pub nats_replicas: usize,
    /// Migrate the service's schema and exit, without connecting to NATS
    /// (`SAGA_MIGRATE_ONLY`): what a deployment's migration job runs.
    pub migrate_only: bool,
}

fn default_database_url() -> SecretString {
    SecretString::from("postgres://postgres@127.0.0.1:5432/saga")
}

impl Default for Infrastructure {
    fn default() -> Self {
        Self {
            database_url: default_database_url(),
            database_max_connections: 16,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            nats_ca_file: None,
            nats_prefix: String::new(),
            nats_replicas: 1,
            migrate_only: false,
        }
    }
}

impl Infrastructure {
    /// The database URL with any password masked, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact_url(self.database_url.expose_secret())
    }
}

/// Masks the password of a URL (`postgres://user:secret@host` → `postgres://user:***@host`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_address_has_a_default() {
        assert_eq!(
            listen_addr("nosuchservice", "127.0.0.1:9").ok().as_deref(),
            Some("127.0.0.1:9")
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
