//! The seed's demonstrations, reproduced on one machine with loopback traffic only:
//! [`cluster`] (a JetStream cluster losing a node under load) and [`rollout`] (a rolling restart
//! of every service behind nginx under siege). Each prints what it does in short lines, keeps
//! every process's log in its work directory, and ends with one summary line.

#![allow(
    clippy::print_stdout,
    reason = "the demonstrations narrate what they do on stdout"
)]

pub mod cluster;
pub mod rollout;

use std::time::{Duration, Instant};

/// Prints one progress line, prefixed with the seconds since `since`.
pub(crate) fn say(since: Instant, line: &str) {
    println!("[{:6.1}s] {line}", since.elapsed().as_secs_f64());
}

/// `1.23s`.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `1.23s`, or `n/a`.
pub(crate) fn secs_or_na(d: Option<Duration>) -> String {
    d.map_or_else(|| "n/a".to_owned(), secs)
}

/// Where `program` is: on the `PATH`, or in `/usr/sbin` (nginx, for a user without it on the
/// `PATH`).
pub(crate) fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
