//! `infermq-bench`: the end-to-end load generator.
//!
//! It speaks only the wire contract (PROTOCOL.md): declares `<prefix>.predict.<model>` like a
//! worker would, publishes pre-built KServe v2 jobs (JSON or binary) with confirms, and reads the
//! results from its own exclusive reply queue, accounting for every job (answered, errored, lost,
//! duplicated) with publish → result latency. With `--echo` it first measures the ceiling the
//! broker allows on this machine by running the same load against an in-process echo consumer
//! ([`echo`]), then against the real model queue, and prints both and their ratio.
//!
//! Layout: [`bodies`] builds the jobs ([`sequences`] those of different lengths: token ids or
//! text), [`wire`] holds names, properties and result decoding,
//! [`load`] drives one run, [`stats`] keeps the pure accounting, [`echo`] is the echo consumer.

mod bodies;
mod echo;
mod load;
mod sequences;
mod stats;
mod wire;

#[cfg(test)]
mod integration_tests;

use std::time::Duration;

use anyhow::Context;
use lapin::options::QueueDeleteOptions;
use lapin::Connection;

use infermq::broker::tls::TlsSettings;
use infermq::client::{broker_urls, connect_broker, model_queue};
use serde::Serialize;

use bodies::BodyTemplate;
use echo::EchoConsumer;
use infermq::broker::Topology;
use infermq::protocol::DataType;
use load::{run_load, LoadPlan, Pace};
pub use stats::{BenchReport, LatencyMs};

/// Flags of `infermq-bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub url: String,
    /// Prefix of every broker object name.
    #[arg(long, default_value = "infermq")]
    pub prefix: String,
    /// Model whose queue (`<prefix>.predict.<model>`) gets the jobs.
    #[arg(long)]
    pub model: String,
    /// Jobs per run.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: u64,
    /// Rows per job (dimension 0 of the input).
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    /// Values per row.
    #[arg(long, default_value_t = 4)]
    pub features: usize,
    /// Input datatype (FP32 only).
    #[arg(long, default_value = "FP32")]
    pub datatype: String,
    /// Name of the model input.
    #[arg(long, default_value = "input")]
    pub input_name: String,
    /// Closed loop: jobs kept in flight.
    #[arg(long, default_value_t = 256, conflicts_with = "rate")]
    pub window: u64,
    /// Open loop: jobs per second on a fixed schedule (replaces --window).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Send v2 binary extension bodies instead of JSON.
    #[arg(long)]
    pub binary: bool,
    /// Measure the echo ceiling first, then the model queue, and print the ratio.
    #[arg(long)]
    pub echo: bool,
    /// Measure only the echo ceiling.
    #[arg(long, conflicts_with = "echo")]
    pub echo_only: bool,
    /// Give up when no result (or publish) has happened for this long, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seed of the random input values.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Token sequences instead of FP32 rows: `input_ids` (ids drawn in 0..--vocab) and
    /// `attention_mask` (1) INT64 [rows, L], L drawn in MIN..MAX (both included) or fixed (N).
    #[arg(long, value_name = "MIN..MAX", conflicts_with = "text")]
    pub length_range: Option<sequences::LengthRange>,
    /// Vocabulary size the token ids of --length-range are drawn below.
    #[arg(long, default_value_t = 2048)]
    pub vocab: usize,
    /// Text instead of FP32 rows: each job holds --rows lines of FILE, drawn at random, in the
    /// BYTES input `text` [rows] (FILE defaults to the bundled encoder's corpus).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "models/encoder/genesis.txt")]
    pub text: Option<std::path::PathBuf>,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct JsonOutput<'a> {
    reports: &'a [BenchReport],
    /// Model jobs/s ÷ echo jobs/s, when both ran.
    ratio: Option<f64>,
}

/// Runs the benchmark the flags describe, prints its report and returns one report per run
/// (echo first when it ran).
/// `tls` is used by `amqps://` URLs (`broker.tls` of the configuration).
pub async fn run(args: &BenchArgs, tls: &TlsSettings) -> anyhow::Result<Vec<BenchReport>> {
    // A name no worker could serve is refused before any queue is declared.
    infermq::protocol::ModelName::parse(&args.model)
        .map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    let datatype = DataType::parse(&args.datatype)
        .with_context(|| format!("--datatype {} is not a v2 datatype", args.datatype))?;
    let pace = match args.rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => Pace::Rate(rate),
        Some(rate) => anyhow::bail!("--rate must be a positive number of jobs/s, got {rate}"),
        None => Pace::Window(args.window.max(1)),
    };
    anyhow::ensure!(
        args.timeout_s.is_finite() && args.timeout_s > 0.0,
        "--timeout-s must be positive, got {}",
        args.timeout_s
    );
    let bodies = sequences::bodies(args, datatype)?;
    let urls = broker_urls(&args.url);
    let (connection, node) = connect_broker(&urls, tls, "infermq-bench")
        .await
        .with_context(|| {
            let shown: Vec<String> = urls.iter().map(|u| redact(u)).collect();
            format!("connecting to the broker at {}", shown.join(", "))
        })?;
    tracing::info!(%node, "Broker node connected");
    let reports = run_all(&connection, args, tls, pace, &bodies).await;
    if connection.status().connected() {
        let _ = connection.close(200, "bench done".into()).await;
    }
    let reports = reports?;
    print_reports(&reports, args.json)?;
    Ok(reports)
}

async fn run_all(
    connection: &Connection,
    args: &BenchArgs,
    tls: &TlsSettings,
    pace: Pace,
    bodies: &BodyTemplate,
) -> anyhow::Result<Vec<BenchReport>> {
    let setup = connection.create_channel().await?;
    let mut reports = Vec::new();
    if args.echo || args.echo_only {
        let queue = wire::echo_queue(&model_queue(&args.prefix, &args.model)?);
        wire::declare_job_queue(&setup, &queue, &args.prefix).await?;
        let echo = EchoConsumer::start(
            connect_broker(&broker_urls(&args.url), tls, "infermq-bench-echo")
                .await?
                .0,
            &queue,
            &Topology::new(args.prefix.as_str(), 5).results_queue(),
        )
        .await?;
        let report = run_load(connection, &plan(args, pace, bodies, "echo", &queue)).await;
        let stopped = echo.stop().await;
        let deleted = setup
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        reports.push(report?);
        stopped.context("echo consumer failed")?;
        deleted.with_context(|| format!("deleting {queue}"))?;
    }
    if !args.echo_only {
        let queue = model_queue(&args.prefix, &args.model)?;
        wire::declare_job_queue(&setup, &queue, &args.prefix).await?;
        reports.push(run_load(connection, &plan(args, pace, bodies, "model", &queue)).await?);
    }
    let _ = setup.close(200, "bench setup done".into()).await;
    Ok(reports)
}

fn plan<'a>(
    args: &BenchArgs,
    pace: Pace,
    bodies: &'a BodyTemplate,
    label: &'a str,
    queue: &'a str,
) -> LoadPlan<'a> {
    LoadPlan {
        label,
        queue,
        jobs: args.jobs,
        rows_per_job: args.rows as u64,
        pace,
        timeout: Duration::from_secs_f64(args.timeout_s),
        bodies,
    }
}

/// `model jobs/s ÷ echo jobs/s` when both runs are in `reports`.
pub fn ratio(reports: &[BenchReport]) -> Option<f64> {
    let echo = reports.iter().find(|r| r.label == "echo")?;
    let model = reports.iter().find(|r| r.label == "model")?;
    (echo.jobs_per_s > 0.0).then(|| model.jobs_per_s / echo.jobs_per_s)
}

fn print_reports(reports: &[BenchReport], json: bool) -> anyhow::Result<()> {
    let ratio = ratio(reports);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&JsonOutput { reports, ratio })?
        );
        return Ok(());
    }
    for r in reports {
        println!("{}", human(r));
    }
    if let Some(ratio) = ratio {
        println!("ratio (model jobs/s ÷ echo jobs/s): {ratio:.3}");
    }
    Ok(())
}

/// The human-readable block for one run.
pub fn human(r: &BenchReport) -> String {
    let l = &r.latency_ms;
    let mut out = format!(
        "[{}] {} {}: {} jobs × {} rows, {} published, {} answered ({} ok) in {:.3} s\n  \
         throughput: {:.1} jobs/s, {:.1} rows/s (publish rate {:.1} jobs/s)\n  \
         latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n  \
         lost {}, duplicated {}, unexpected {}",
        r.label,
        r.queue,
        r.mode,
        r.jobs,
        r.rows_per_job,
        r.published,
        r.answered,
        r.ok,
        r.duration_s,
        r.jobs_per_s,
        r.rows_per_s,
        r.publish_rate,
        l.p50,
        l.p90,
        l.p99,
        l.max,
        r.lost,
        r.duplicated,
        r.unexpected,
    );
    if let Some(mean) = r.batch_size_mean {
        out.push_str(&format!(", mean batch size {mean:.2}"));
    }
    for (code, n) in &r.errors_by_code {
        out.push_str(&format!("\n  errors {code}: {n}"));
    }
    out
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(argv: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let a = parse(&["--model", "iris"]).unwrap();
        assert_eq!(a.prefix, "infermq");
        assert_eq!((a.jobs, a.rows, a.features, a.window), (10_000, 1, 4, 256));
        assert_eq!(
            (a.rate, a.binary, a.echo, a.echo_only, a.json),
            (None, false, false, false, false)
        );
        assert_eq!(a.timeout_s, 60.0);
        assert_eq!(a.input_name, "input");
        assert_eq!(a.datatype, "FP32");
        assert!(parse(&[]).is_err(), "--model is required");
    }

    #[test]
    fn lengths_and_text_are_flags_of_their_own() {
        let a = parse(&["--model", "encoder", "--length-range", "8..128"]).unwrap();
        let want = sequences::LengthRange { min: 8, max: 128 };
        assert_eq!((a.length_range, a.vocab, a.text), (Some(want), 2048, None));
        let a = parse(&["--model", "encoder", "--text"]).unwrap();
        assert_eq!(
            a.text.unwrap(),
            std::path::Path::new("models/encoder/genesis.txt")
        );
        assert!(parse(&["--model", "m", "--text", "--length-range", "4"]).is_err());
        assert!(parse(&["--model", "m", "--length-range", "9..8"]).is_err());
    }

    #[test]
    fn window_and_rate_exclude_each_other() {
        assert!(parse(&["--model", "m", "--window", "8", "--rate", "100"]).is_err());
        let a = parse(&["--model", "m", "--rate", "100"]).unwrap();
        assert_eq!(a.rate, Some(100.0));
        assert!(parse(&["--model", "m", "--echo", "--echo-only"]).is_err());
    }

    #[test]
    fn ratio_needs_both_runs() {
        let t0 = std::time::Instant::now();
        let report = |label: &str, secs: u64| {
            let mut t = stats::Tracker::new(10);
            for i in 0..10 {
                t.on_publish(i, t0);
                let at = t0 + Duration::from_secs(secs);
                t.on_result(&stats::Outcome {
                    index: Some(i),
                    at,
                    error_code: None,
                    batch_size: None,
                });
            }
            t.report(label, "q", "window=1", 1, t0)
        };
        let echo = report("echo", 1);
        let model = report("model", 4);
        assert_eq!(ratio(&[echo.clone(), model.clone()]), Some(0.25));
        assert_eq!(ratio(&[echo]), None);
        assert!(human(&model).contains("lost 0, duplicated 0"));
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
    }
}
