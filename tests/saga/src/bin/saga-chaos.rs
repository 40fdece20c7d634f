//! The long chaos suite: `saga-chaos --sagas 1000` runs the platform as separate processes
//! under SIGKILLs and restarts of nats-server and PostgreSQL, with gift exchanges beside the
//! mission sagas (`--exchanges`, a fifth of `--sagas` by default), prints one summary line and
//! exits non-zero on any violation. Build the services first (`cargo build --release --workspace
//! --bins`); the binaries are looked for next to this one, or in `SAGA_BIN_DIR`.

#![allow(
    clippy::print_stdout,
    reason = "the summary line is the program's output"
)]

use std::time::Duration;

use clap::Parser;
use saga_tests::chaos::{ChaosConfig, run};

#[derive(Parser, Debug)]
#[command(
    about = "Runs sagas while killing and restarting the platform's processes, then checks every promise"
)]
struct Args {
    /// Sagas to run.
    #[arg(long, default_value_t = 1000)]
    sagas: usize,
    /// Gift exchanges to run beside them (default: a fifth of --sagas).
    #[arg(long)]
    exchanges: Option<usize>,
    /// Sagas started at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds over which the sagas are started (the faults happen meanwhile).
    #[arg(long, default_value_t = 120)]
    spread_secs: u64,
    /// Seed of the fault schedule.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ChaosConfig::new(args.sagas)?;
    config.concurrency = args.concurrency;
    if let Some(exchanges) = args.exchanges {
        config.exchanges = exchanges;
    }
    config.spread = Duration::from_secs(args.spread_secs);
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    let summary = run(config).await?;
    for violation in &summary.violations {
        eprintln!("violation: {violation}");
    }
    println!("{summary}");
    if !summary.violations.is_empty() {
        eprintln!("logs kept in {}", summary.work_dir.display());
        std::process::exit(1);
    }
    Ok(())
}
