//! `generate-bench`: a closed-loop load generator for generation jobs (decoder models), sent
//! straight to the queue or through the gateway's OpenAI-compatible API.
//!
//! Reads a JSONL file of jobs (`{"prompt": "...", "max_tokens": N}` per line), keeps
//! `--concurrency` jobs in flight, asks for streamed answers and stamps every piece on arrival:
//! - on the queue (the default, [`queue`]): jobs published to `<prefix>.predict.<model>`, pieces
//!   read from one exclusive reply queue and matched to jobs by `correlation_id`;
//! - through the gateway (`--gateway URL`, [`gateway`]): one request per job to
//!   `/v1/completions` or `/v1/chat/completions` (`--route`) with `stream: true` and
//!   `stream_options.include_usage`, each client on its own keep-alive HTTP/1.1 connection, the
//!   server-sent events read by [`sse`]. It sends what the `openai` package sends
//!   (`scripts/bench-gateway-openai.py` is the same load through that package), at a fraction
//!   of its CPU, so that on a small machine the client takes little from the worker.
//!
//! Per job, either way: time to first token (publish or request → first piece; through the
//! gateway, the first chunk with text), time per output token ((last piece − first piece) /
//! (completion_tokens − 1), the last piece being the one with the finish reason) and completion
//! tokens (from the final `usage`). The JSON report is the same for both. Error answers (the
//! queue's `x-error-code`, the gateway's HTTP statuses and error events), unroutable or refused
//! publishes, malformed streams, jobs never finished and stray messages are all counted in it;
//! the exit status is non-zero when any job did not finish cleanly.

mod gateway;
mod queue;
mod sse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use infermq::config::Settings;

#[derive(Parser)]
#[command(
    name = "generate-bench",
    version,
    about = "Closed-loop load generator for infermq generation jobs: tokens/s, TTFT, TPOT"
)]
struct Cli {
    /// Configuration file (TOML), layered over the defaults and under INFERMQ__SECTION__KEY:
    /// `broker.tls` is used by `amqps://` URLs, `log` sets the logging.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Broker URL (or a comma-separated list of the nodes of a cluster).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    /// Queue prefix of the fleet.
    #[arg(long, default_value = "infermq")]
    prefix: String,
    /// Send the jobs through this gateway (`http://host:port`, the `openai` package's
    /// `base_url` without `/v1`) instead of the queue; --url and --prefix are then unused.
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// The gateway's route: `completions` (the prompt as is) or `chat` (the prompt as one user
    /// message, which the model's chat template wraps).
    #[arg(long, value_enum, default_value_t = Route::Completions)]
    route: Route,
    /// The gateway's API key, sent as `Authorization: Bearer` (a gateway without keys needs none).
    #[arg(long, env = "INFERMQ_GATEWAY_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The decoder model to send the jobs to.
    #[arg(long)]
    model: String,
    /// JSONL file: one job a line, `{"prompt": "...", "max_tokens": N}`.
    #[arg(long)]
    jobs: PathBuf,
    /// Jobs kept in flight (closed loop).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Jobs to run (default: every line of --jobs once); more than the file has cycles through it.
    #[arg(long)]
    count: Option<usize>,
    /// First line of --jobs to use (0-based), e.g. to give every run its own prompts.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Sampling temperature sent with each job (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Give up when nothing (piece, answer, confirm; through the gateway: on a connection that
    /// waits for one) has arrived for this long.
    #[arg(long, default_value_t = 600.0)]
    idle_timeout_s: f64,
    /// Write the JSON report here (it is printed to standard output too).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Put every job's measurements in the report (`per_job`).
    #[arg(long)]
    per_job: bool,
    /// Free-form labels copied into the report.
    #[arg(long, default_value = "infermq")]
    system: String,
    #[arg(long, default_value = "continuous")]
    mode: String,
}

/// The gateway's generation routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Route {
    Completions,
    Chat,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Completions => "/v1/completions",
            Route::Chat => "/v1/chat/completions",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct JobSpec {
    prompt: String,
    max_tokens: u64,
}

/// One job's measurements, filled in by either path.
#[derive(Debug, Default)]
struct JobState {
    /// The publish, or the request sent: TTFT and end-to-end count from here.
    published: Option<Instant>,
    first: Option<Instant>,
    last: Option<Instant>,
    pieces: u64,
    /// The queue path: the `sequence` the next piece should carry.
    next_sequence: Option<u64>,
    out_of_order: bool,
    /// Settled: finished, or failed (`error`). Published and not done is unfinished.
    done: bool,
    /// `code: detail`; the code is what `error_codes` counts.
    error: Option<String>,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    finish_reason: Option<String>,
    max_tokens: u64,
}

/// What a run measured, whichever way its jobs went.
struct Outcome {
    /// One per job, in the order of the specs.
    states: Vec<JobState>,
    wall: Duration,
    /// The queue path: messages for no job of this run, or for a job already settled.
    stray: u64,
    /// The gateway path: HTTP connections opened.
    connections: Option<usize>,
}

/// The wall time of a run: start → the last piece of any job, or → now if the run gave up.
fn wall(states: &[JobState], started: Instant, gave_up: bool) -> Duration {
    if gave_up {
        return started.elapsed();
    }
    states
        .iter()
        .filter_map(|s| s.last)
        .max()
        .map(|last| last.duration_since(started))
        .unwrap_or_else(|| started.elapsed())
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct JobReport {
    index: usize,
    max_tokens: u64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    pieces: u64,
    finish_reason: Option<String>,
    ttft_ms: Option<f64>,
    tpot_ms: Option<f64>,
    e2e_ms: Option<f64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    system: String,
    mode: String,
    model: String,
    /// The queue path: the model's queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    /// The gateway path: the route (`/v1/completions`, `/v1/chat/completions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    /// The gateway path: HTTP connections opened (one per client when they all stay alive).
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<usize>,
    concurrency: usize,
    jobs: usize,
    completed: usize,
    errors: usize,
    error_codes: BTreeMap<String, usize>,
    /// Jobs sent but never finished (the run gave up after --idle-timeout-s).
    unfinished: usize,
    /// Messages whose correlation id names no job of this run, or that came after a job ended.
    stray_messages: u64,
    /// Jobs whose pieces came out of `sequence` order.
    out_of_order_jobs: usize,
    total_prompt_tokens: u64,
    total_completion_tokens: u64,
    max_tokens_asked: u64,
    finish_reasons: BTreeMap<String, usize>,
    wall_s: f64,
    tokens_per_s: f64,
    ttft_ms: Percentiles,
    tpot_ms: Percentiles,
    e2e_ms: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_job: Option<Vec<JobReport>>,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    // Nearest rank, as infermq-bench does.
    let at = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    };
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    Percentiles {
        p50: round(at(50.0)),
        p90: round(at(90.0)),
        p99: round(at(99.0)),
        mean: round(mean),
        max: round(v.last().copied().unwrap_or(0.0)),
    }
}

fn read_jobs(path: &PathBuf) -> anyhow::Result<Vec<JobSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut jobs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let job: JobSpec = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        anyhow::ensure!(
            job.max_tokens >= 1,
            "{} line {}: max_tokens must be ≥ 1",
            path.display(),
            n + 1
        );
        jobs.push(job);
    }
    anyhow::ensure!(!jobs.is_empty(), "{} holds no job", path.display());
    Ok(jobs)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    infermq::telemetry::logging::init(settings.log.format, &settings.log.level)
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&cli, &settings))?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = &cli.out {
        std::fs::write(out, format!("{text}\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    eprintln!(
        "generate-bench {} {} c={} jobs={} completed={} errors={} unfinished={} tokens={} wall={:.2}s {:.1} tok/s ttft p50/p99 {:.1}/{:.1} ms tpot p50/p99 {:.2}/{:.2} ms",
        report.model,
        report.queue.as_deref().or(report.route.as_deref()).unwrap_or(""),
        report.concurrency,
        report.jobs,
        report.completed,
        report.errors,
        report.unfinished,
        report.total_completion_tokens,
        report.wall_s,
        report.tokens_per_s,
        report.ttft_ms.p50,
        report.ttft_ms.p99,
        report.tpot_ms.p50,
        report.tpot_ms.p99
    );
    if report.errors > 0 || report.unfinished > 0 {
        bail!(
            "{} jobs answered with an error, {} never finished ({:?})",
            report.errors,
            report.unfinished,
            report.error_codes
        );
    }
    Ok(())
}

async fn run(cli: &Cli, settings: &Settings) -> anyhow::Result<Report> {
    let file_jobs = read_jobs(&cli.jobs)?;
    let count = cli
        .count
        .unwrap_or(file_jobs.len().saturating_sub(cli.skip).max(1));
    let specs: Vec<JobSpec> = (0..count)
        .map(|i| file_jobs[(cli.skip + i) % file_jobs.len()].clone())
        .collect();
    let idle = Duration::from_secs_f64(cli.idle_timeout_s.max(0.001));
    let (outcome, queue, route) = match &cli.gateway {
        Some(url) => {
            let target = gateway::Target::new(url, cli.route)?;
            let outcome = gateway::run(cli, target, &specs, idle).await?;
            (outcome, None, Some(cli.route.path().to_owned()))
        }
        None => {
            let queue = infermq::client::model_queue(&cli.prefix, &cli.model)?;
            let outcome = queue::run(cli, settings, &queue, &specs, idle).await?;
            (outcome, Some(queue), None)
        }
    };
    Ok(report(cli, &specs, outcome, queue, route))
}

/// The report of a run: per-job measurements, their percentiles and the counts.
fn report(
    cli: &Cli,
    specs: &[JobSpec],
    outcome: Outcome,
    queue: Option<String>,
    route: Option<String>,
) -> Report {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut ttft = Vec::new();
    let mut tpot = Vec::new();
    let mut e2e = Vec::new();
    let mut error_codes = BTreeMap::new();
    let mut finish_reasons = BTreeMap::new();
    let mut per_job = Vec::new();
    let (mut completed, mut errors, mut unfinished, mut out_of_order) = (0, 0, 0, 0);
    let (mut prompt_tokens, mut completion_tokens) = (0u64, 0u64);
    for (index, s) in outcome.states.iter().enumerate() {
        let mut job = JobReport {
            index,
            max_tokens: s.max_tokens,
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            pieces: s.pieces,
            finish_reason: s.finish_reason.clone(),
            ttft_ms: None,
            tpot_ms: None,
            e2e_ms: None,
            error: s.error.clone(),
        };
        if s.out_of_order {
            out_of_order += 1;
        }
        if let Some(error) = &s.error {
            errors += 1;
            let code = error.split(':').next().unwrap_or("").to_owned();
            *error_codes.entry(code).or_insert(0) += 1;
        } else if !s.done {
            if s.published.is_some() {
                unfinished += 1;
            }
        } else if let (Some(p), Some(f), Some(l)) = (s.published, s.first, s.last) {
            completed += 1;
            let tokens = s.completion_tokens.unwrap_or(0);
            completion_tokens += tokens;
            prompt_tokens += s.prompt_tokens.unwrap_or(0);
            *finish_reasons
                .entry(s.finish_reason.clone().unwrap_or_default())
                .or_insert(0) += 1;
            job.ttft_ms = Some(ms(f.duration_since(p)));
            job.e2e_ms = Some(ms(l.duration_since(p)));
            ttft.push(ms(f.duration_since(p)));
            e2e.push(ms(l.duration_since(p)));
            if tokens > 1 {
                let t = ms(l.duration_since(f)) / (tokens - 1) as f64;
                job.tpot_ms = Some(t);
                tpot.push(t);
            }
        }
        per_job.push(job);
    }
    let wall_s = outcome.wall.as_secs_f64();
    Report {
        system: cli.system.clone(),
        mode: cli.mode.clone(),
        model: cli.model.clone(),
        queue,
        route,
        connections: outcome.connections,
        concurrency: cli.concurrency.max(1),
        jobs: specs.len(),
        completed,
        errors,
        error_codes,
        unfinished,
        stray_messages: outcome.stray,
        out_of_order_jobs: out_of_order,
        total_prompt_tokens: prompt_tokens,
        total_completion_tokens: completion_tokens,
        max_tokens_asked: specs.iter().map(|s| s.max_tokens).sum(),
        finish_reasons,
        wall_s: (wall_s * 1000.0).round() / 1000.0,
        tokens_per_s: if wall_s > 0.0 {
            ((completion_tokens as f64 / wall_s) * 100.0).round() / 100.0
        } else {
            0.0
        },
        ttft_ms: percentiles(ttft),
        tpot_ms: percentiles(tpot),
        e2e_ms: percentiles(e2e),
        per_job: cli.per_job.then_some(per_job),
    }
}
