//! What can go wrong in a `sagactl` run, how each failure reads on stderr, and which exit code
//! it ends with. A problem+json answer keeps the platform's stable `code` and `detail`; no
//! message ever contains the API token (the client never puts it anywhere but the
//! `Authorization` header).

use std::fmt;
use std::process::ExitCode;

/// A failed `sagactl` run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The platform answered with an RFC 9457 problem.
    #[error("{code} ({status}): {detail}{hint}", hint = Hint(*.status, code, method, path))]
    Problem {
        /// The HTTP status.
        status: u16,
        /// The platform's stable error code (`saga_not_found`, ...).
        code: String,
        /// What went wrong this time.
        detail: String,
        /// The request's method.
        method: String,
        /// The request's path (no query, no token).
        path: String,
    },
    /// The platform answered with an error that is not problem+json (a proxy in between, say).
    #[error("{method} {path} answered HTTP {status}: {body}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The start of the answer's body.
        body: String,
    },
    /// The platform could not be reached, or its answer could not be read.
    #[error("cannot reach the platform at {base}: {source}")]
    Transport {
        /// The base URL.
        base: String,
        /// The cause (its text names the URL, never the token).
        #[source]
        source: reqwest::Error,
    },
    /// A successful answer that is not the JSON it should be.
    #[error("{what}: unexpected answer: {detail}")]
    Unexpected {
        /// The request or the object read.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A bad command line: a value clap could not check (a JSON input, a missing token, ...).
    #[error("{0}")]
    Usage(String),
    /// A bulk command that was not confirmed.
    #[error("{0}")]
    NotConfirmed(String),
    /// The wait for a saga or a rebuild ran out.
    #[error("{0}")]
    TimedOut(String),
    /// Writing the output or reading a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit code: 2 for a bad command line (like clap's own usage errors), 1 for
    /// everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A hint after a problem whose usual cause is on the caller's side.
struct Hint<'a>(u16, &'a str, &'a str, &'a str);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Hint(status, code, method, path) = *self;
        match (status, code) {
            (401, _) => write!(
                f,
                "\nhint: the platform did not accept the token; pass --token or set SAGACTL_TOKEN \
                 (locally: the admin entry of .run/api-tokens.json, `./dev.sh tokens admin`)"
            ),
            (403, _) => write!(
                f,
                "\nhint: this token's scopes do not allow {method} {path}; use a token with the \
                 scope named above (reading needs read, starting game, acting operate; admin \
                 allows everything)"
            ),
            (404, "route_not_found") => write!(
                f,
                "\nhint: nothing behind this URL serves {method} {path}: the platform is older \
                 than this sagactl, or the service that owns the route is not behind it"
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(status: u16, code: &str) -> CliError {
        CliError::Problem {
            status,
            code: code.into(),
            detail: "what happened".into(),
            method: "GET".into(),
            path: "/v1/definitions".into(),
        }
    }

    #[test]
    fn a_problem_reads_as_its_code_status_and_detail() {
        assert_eq!(
            problem(409, "saga_terminal").to_string(),
            "saga_terminal (409): what happened"
        );
    }

    #[test]
    fn a_missing_route_says_nothing_serves_it() {
        let text = problem(404, "route_not_found").to_string();
        assert!(
            text.contains("nothing behind this URL serves GET /v1/definitions"),
            "{text}"
        );
        assert!(
            problem(401, "unauthorized")
                .to_string()
                .contains("SAGACTL_TOKEN")
        );
    }

    #[test]
    fn only_usage_errors_exit_2() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), ExitCode::from(2));
        assert_eq!(
            problem(404, "saga_not_found").exit_code(),
            ExitCode::from(1)
        );
    }
}
