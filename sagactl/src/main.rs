//! `sagactl`: the operator's command line of the reward saga platform. It starts, lists,
//! follows, cancels and retries sagas (one by id, or every saga a filter matches), handles dead
//! letters, lists the saga definitions, shows a saga's history and rebuilds the my-page view,
//! all through the platform's HTTP API with a scoped bearer token. This file only parses the
//! command line, picks the command and turns its result into an exit code.

mod bulk;
mod cli;
mod client;
mod dead_letters;
mod definitions;
mod endpoint;
mod error;
mod filter;
mod history;
mod model;
mod mypage;
mod output;
mod sagas;
mod sse;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

use crate::cli::{Cli, Command, DefinitionCommand, OperateArgs};
use crate::client::ApiClient;
use crate::endpoint::{Endpoint, LocalDefaults};
use crate::error::CliError;
use crate::output::Output;
use crate::sagas::Operation;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(CliError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", with_causes(&error));
            error.exit_code()
        }
    }
}

/// The error's message followed by the causes its message does not already tell.
fn with_causes(error: &CliError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let out = Output::new(cli.json);
    if let Command::Completions(args) = &cli.command {
        let mut command = Cli::command();
        let mut stdout = std::io::stdout().lock();
        clap_complete::generate(args.shell, &mut command, "sagactl", &mut stdout);
        return Ok(ExitCode::SUCCESS);
    }
    let endpoint = Endpoint::resolve(cli.url, cli.token, &LocalDefaults::from_process())?;
    let client = ApiClient::new(endpoint)?;
    match cli.command {
        Command::Start(args) => sagas::start(&client, out, args).await?,
        Command::Get(args) => sagas::get(&client, out, &args.id).await?,
        Command::List(args) => sagas::list(&client, out, args).await?,
        Command::Watch(args) => {
            let ended = watch::watch(&client, out, args).await?;
            if !ended.completed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Cancel(args) => operate(&client, out, Operation::Cancel, args).await?,
        Command::Retry(args) => operate(&client, out, Operation::Retry, args).await?,
        Command::History(args) => history::history(&client, out, args).await?,
        Command::DeadLetters(command) => dead_letters::run(&client, out, command).await?,
        Command::Definitions(DefinitionCommand::List) => definitions::list(&client, out).await?,
        Command::Mypage(command) => mypage::run(&client, out, command).await?,
        Command::Completions(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `cancel`/`retry`: of one saga by id, or of every saga the filter flags match.
async fn operate(
    client: &ApiClient,
    out: Output,
    operation: Operation,
    args: OperateArgs,
) -> Result<(), CliError> {
    match &args.id {
        Some(id) => sagas::operate(client, out, operation, id).await,
        None => bulk::bulk(client, out, operation, args).await,
    }
}
