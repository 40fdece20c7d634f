//! The zero-downtime redeploy demonstration: `saga-rollout-demo --seconds 60` runs two replicas
//! of every service behind its own nginx, restarts every replica one at a time under `siege -c2
//! -t60S`, and checks siege's availability, that `/readyz` turned 503 before each replica
//! exited, that each exited 0, and that no saga started meanwhile was lost. Its last line reads
//! `requests=N failed=0 availability=100.00% lost=0 ...`; it exits 1 otherwise. Needs Debian's
//! `nginx` and `siege`; build the services first (`cargo build --release --workspace --bins`).

#![allow(
    clippy::print_stdout,
    reason = "the summary line is the program's output"
)]

use std::path::PathBuf;

use clap::Parser;
use saga_tests::demo::rollout::{RolloutConfig, run};

#[derive(Parser, Debug)]
#[command(
    about = "Restarts every service replica by replica behind nginx under siege; checks 100 % availability and no lost saga"
)]
struct Args {
    /// How long siege runs (the rolling restart must fit in it).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// siege's concurrent users.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// siege's random delay before each request, at most this many seconds.
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
    /// Sagas started per second with an Idempotency-Key by the demo's own client.
    #[arg(long, default_value_t = 4)]
    keyed_per_second: u32,
    /// Where the service binaries are (default: next to this program, or `SAGA_BIN_DIR`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the work directory with every process's log even when the run passes.
    #[arg(long)]
    keep_logs: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = RolloutConfig::new(args.seconds, args.bin_dir)?;
    config.concurrency = args.concurrency.max(1);
    config.delay = args.delay.max(0.0);
    config.keyed_per_second = args.keyed_per_second.max(1);
    config.keep_logs = args.keep_logs;
    let summary = run(config).await?;
    for violation in &summary.violations {
        println!("violation: {violation}");
    }
    if !summary.violations.is_empty() || args.keep_logs {
        println!("logs kept in {}", summary.work_dir.display());
    }
    println!("{summary}");
    if !summary.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
