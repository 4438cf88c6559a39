//! `infermq-bench`: the end-to-end load generator (docs/LOADGEN.md). Publishes jobs to a
//! model's queue, measures throughput, latency and losses, and prints a report (`--json` for
//! the machine-readable one). Exits with an error when any job was never answered.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use infermq::config::Settings;
use infermq_tools::bench::{self, BenchArgs};

#[derive(Parser)]
#[command(
    name = "infermq-bench",
    version,
    about = "Load generator for infermq: publishes jobs and measures throughput, latency, losses"
)]
struct Cli {
    /// Configuration file (TOML), layered over the defaults and under INFERMQ__SECTION__KEY:
    /// `broker.tls` is used by `amqps://` URLs, `log` sets the logging.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    infermq::telemetry::logging::init(settings.log.format, &settings.log.level)
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let reports = bench::run(&cli.args, &settings.broker.tls).await?;
        let lost: u64 = reports.iter().map(|r| r.lost).sum();
        if lost > 0 {
            bail!("{lost} jobs were never answered");
        }
        Ok(())
    })
}
