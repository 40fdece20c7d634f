//! The JetStream cluster demonstration: `saga-cluster-demo --sagas 300` runs three nats-server
//! nodes as a JetStream cluster (streams at three replicas), two of every service, and a load of
//! sagas while one node is killed with SIGKILL and restarted; then checks that no saga was lost
//! and no effect duplicated. Its last line reads `sagas=N lost=0 duplicates=0 ...`; it exits 1 on
//! any violation. Build the services first (`cargo build --release --workspace --bins`).

#![allow(
    clippy::print_stdout,
    reason = "the summary line is the program's output"
)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use saga_tests::demo::cluster::{ClusterConfig, run};

#[derive(Parser, Debug)]
#[command(
    about = "Runs sagas on a 3-node JetStream cluster while one node is killed and restarted, then checks every promise"
)]
struct Args {
    /// Sagas to run.
    #[arg(long, default_value_t = 300)]
    sagas: usize,
    /// Sagas started at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds over which the sagas are started (the node is killed meanwhile).
    #[arg(long, default_value_t = 20)]
    spread_secs: u64,
    /// Picks the node killed, when and for how long (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the service binaries are (default: next to this program, or `SAGA_BIN_DIR`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the work directory with every process's log even when the run passes.
    #[arg(long)]
    keep_logs: bool,
    /// Give every service all three node URLs, comma-separated, as SAGA_NATS_URL (needs a
    /// platform whose NATS connect accepts a list); by default each replica gets one node.
    #[arg(long)]
    nats_url_list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ClusterConfig::new(args.sagas, args.bin_dir)?;
    config.concurrency = args.concurrency.max(1);
    config.url_list = args.nats_url_list;
    config.spread = Duration::from_secs(args.spread_secs);
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
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
