//! The command line: every command, flag and environment variable `sagactl` accepts, with
//! the help text people read. Parsing only; what each command does is in its own module.

use clap::{Args, Parser, Subcommand};

use crate::filter::FilterArgs;

const AFTER_HELP: &str = "\
Where the platform is:
  --url / SAGACTL_URL      default: http://$SAGA_GATEWAY_ADDR, else http://127.0.0.1:8080
  --token / SAGACTL_TOKEN  default: the \"admin\" entry of the nearest .run/api-tokens.json
                           above the current directory (written by ./dev.sh up)
  The token is sent only as a bearer token: sagactl never prints it.

Output: tables by default; --json prints JSON on stdout and nothing else (watch prints one
JSON saga per line). Errors go to stderr as `error: <code> (<status>): <detail>`.

Exit codes: 0 success (watch: the saga completed), 1 an error, a refusal, an unconfirmed bulk
command, or a watched saga that ended other than completed, 2 a bad command line.";

/// The operator's command line of the reward saga platform.
#[derive(Parser)]
#[command(name = "sagactl", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The platform's base URL.
    #[arg(
        long,
        env = "SAGACTL_URL",
        global = true,
        value_name = "URL",
        help_heading = "Platform"
    )]
    pub url: Option<String>,
    /// The API token (a bearer token; its scope decides what is allowed).
    #[arg(
        long,
        env = "SAGACTL_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Platform"
    )]
    pub token: Option<String>,
    /// Print JSON on stdout instead of tables.
    #[arg(long, global = true, help_heading = "Platform")]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a saga.
    Start(StartArgs),
    /// Show one saga: its state, input, context, steps and compensations.
    Get(IdArgs),
    /// List sagas, newest first.
    List(ListArgs),
    /// Follow a saga live until it ends; exit 0 if it completed, 1 otherwise.
    Watch(WatchArgs),
    /// Cancel a running saga, or (with filter flags) every saga the filter matches.
    Cancel(OperateArgs),
    /// Retry a failed saga, or (with filter flags) every saga the filter matches.
    Retry(OperateArgs),
    /// Show every attempt of every step and compensation of a saga, and every operator action.
    History(HistoryArgs),
    /// What no consumer could handle.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// The saga definitions the platform runs.
    #[command(subcommand)]
    Definitions(DefinitionCommand),
    /// The my-page projection.
    #[command(subcommand)]
    Mypage(MypageCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionArgs),
}

/// `start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The saga type (mission_reward, gift_exchange, ...).
    #[arg(value_name = "TYPE")]
    pub saga_type: String,
    /// The saga's input: a JSON object, `@file` to read it from a file, or `-` for stdin.
    #[arg(long, short, value_name = "JSON", default_value = "{}")]
    pub input: String,
    /// Starting twice with the same key and input gives the same saga.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// A command about one saga.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The saga's id.
    pub id: String,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Which sagas.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Sagas per page, 1 to 500 (the platform's default: 50).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=500), help_heading = "Paging")]
    pub limit: Option<u16>,
    /// Start after this page cursor (the `next_cursor` of the page before).
    #[arg(long, conflicts_with = "all", help_heading = "Paging")]
    pub cursor: Option<String>,
    /// Follow the cursors and list every matching saga.
    #[arg(long, help_heading = "Paging")]
    pub all: bool,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The saga's id.
    pub id: String,
    /// Give up (exit 1) when the saga has not ended after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Poll every this many milliseconds where the platform cannot stream changes.
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(50..))]
    pub interval_ms: u64,
    /// Poll even when the platform can stream changes (server-sent events).
    #[arg(long)]
    pub poll: bool,
}

/// `cancel` and `retry`: one saga by id, or every saga a filter matches.
#[derive(Debug, Args)]
pub struct OperateArgs {
    /// The saga's id; leave it out and give filter flags to act on every matching saga.
    #[arg(required_unless_present = "filter", conflicts_with = "filter")]
    pub id: Option<String>,
    /// Which sagas (bulk). The state defaults to running for cancel, failed for retry.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Act without asking (bulk). Without it sagactl asks on a terminal and refuses otherwise.
    #[arg(long, short, help_heading = "Bulk")]
    pub yes: bool,
    /// Sagas per bulk call, 1 to 5000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=5000), help_heading = "Bulk")]
    pub batch: u16,
}

/// `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The saga's id.
    pub id: String,
    /// Entries per request (every page is fetched).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub limit: Option<u16>,
}

/// `dead-letters ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters, newest first.
    List(DeadLetterListArgs),
    /// Publish a dead letter again on its original subject (and remove it from the stream).
    Replay(DeadLetterIdArgs),
    /// Remove a dead letter without replaying it.
    Discard(DeadLetterIdArgs),
}

/// `dead-letters list`.
#[derive(Debug, Args)]
pub struct DeadLetterListArgs {
    /// Dead letters per page, 1 to 200 (the platform's default: 50).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub limit: Option<u16>,
    /// Only dead letters older than this id (the `next_before` of the page before).
    #[arg(long, conflicts_with = "all")]
    pub before: Option<u64>,
    /// Follow the pages and list every dead letter.
    #[arg(long)]
    pub all: bool,
}

/// `dead-letters replay|discard`.
#[derive(Debug, Args)]
pub struct DeadLetterIdArgs {
    /// The dead letter's id (its sequence in the dead-letter stream).
    pub id: u64,
}

/// `definitions ...`.
#[derive(Debug, Subcommand)]
pub enum DefinitionCommand {
    /// List the saga types, their versions and steps.
    List,
}

/// `mypage ...`.
#[derive(Debug, Subcommand)]
pub enum MypageCommand {
    /// Rebuild the my-page view by replaying the domain events.
    Rebuild(RebuildArgs),
    /// Show where the last rebuild stands.
    Status,
}

/// `mypage rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Wait until the rebuild has finished and reads are served from it.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting (exit 1) after this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "wait")]
    pub timeout: Option<u64>,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cancel_takes_an_id_or_a_filter_but_not_both_nor_neither() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["sagactl"], args].concat());
        assert!(parse(&["cancel", "s1"]).is_ok());
        assert!(parse(&["cancel", "--state", "running", "--yes"]).is_ok());
        assert!(parse(&["retry", "--customer-id", "p", "--batch", "10"]).is_ok());
        assert!(parse(&["cancel"]).is_err(), "neither an id nor a filter");
        assert!(parse(&["cancel", "s1", "--type", "t"]).is_err(), "both");
        assert!(parse(&["cancel", "--state", "sleeping"]).is_err());
        assert!(parse(&["list", "--all", "--cursor", "c"]).is_err());
    }
}
