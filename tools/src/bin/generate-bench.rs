//! `generate-bench`: a closed-loop load generator for generation jobs (decoder models).
//!
//! Reads a JSONL file of jobs (`{"prompt": "...", "max_tokens": N}` per line), keeps
//! `--concurrency` jobs in flight on `<prefix>.predict.<model>`, asks for streamed answers and
//! stamps every piece on arrival. Per job: time to first token (publish → first piece), time per
//! output token ((last piece − first piece) / (completion_tokens − 1)) and completion tokens
//! (from the final piece's `usage`). One AMQP connection, one exclusive reply queue, pieces
//! matched to jobs by `correlation_id`. Error answers (`x-error-code`), unroutable or refused
//! publishes, jobs never finished and stray messages are all counted in the report; the exit
//! status is non-zero when any job did not finish cleanly.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use infermq::broker::headers::{as_string, find, ERROR, ERROR_CODE};
use infermq::broker::PublishOutcome;
use infermq::client::{broker_urls, connect_broker, model_queue, JobProperties};
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
    /// Give up when nothing (piece, answer, confirm) has arrived for this long.
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

#[derive(Debug, Clone, Deserialize)]
struct JobSpec {
    prompt: String,
    max_tokens: u64,
}

/// One message from the reply queue, stamped on arrival.
struct Arrival {
    at: Instant,
    correlation_id: Option<String>,
    error_code: Option<String>,
    error: Option<String>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct JobState {
    published: Option<Instant>,
    first: Option<Instant>,
    last: Option<Instant>,
    pieces: u64,
    next_sequence: Option<u64>,
    out_of_order: bool,
    done: bool,
    error: Option<String>,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    finish_reason: Option<String>,
    max_tokens: u64,
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
    queue: String,
    concurrency: usize,
    jobs: usize,
    completed: usize,
    errors: usize,
    error_codes: BTreeMap<String, usize>,
    /// Jobs published but never finished (the run gave up after --idle-timeout-s).
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

async fn reply_task(mut consumer: Consumer, tx: mpsc::UnboundedSender<Arrival>) {
    while let Some(next) = consumer.next().await {
        let at = Instant::now();
        match next {
            Ok(delivery) => {
                let headers = delivery.properties.headers().as_ref();
                let arrival = Arrival {
                    at,
                    correlation_id: delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str().to_owned()),
                    error_code: find(headers, ERROR_CODE).and_then(as_string),
                    error: find(headers, ERROR).and_then(as_string),
                    data: delivery.data,
                };
                if tx.send(arrival).is_err() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Reply consumer failed");
                break;
            }
        }
    }
}

type ConfirmFuture = BoxFuture<'static, (usize, PublishOutcome)>;

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
        "generate-bench {} c={} jobs={} completed={} errors={} unfinished={} tokens={} wall={:.2}s {:.1} tok/s ttft p50/p99 {:.1}/{:.1} ms tpot p50/p99 {:.2}/{:.2} ms",
        report.model,
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
    let concurrency = cli.concurrency.max(1);
    let queue = model_queue(&cli.prefix, &cli.model)?;
    let urls = broker_urls(&cli.url);
    let (connection, _node) = connect_broker(&urls, &settings.broker.tls, "generate-bench")
        .await
        .context("connecting to the broker")?;

    let replies = connection.create_channel().await?;
    let reply_queue = replies
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .as_str()
        .to_owned();
    let consumer = replies
        .basic_consume(
            reply_queue.as_str().into(),
            "generate-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reply_handle = tokio::spawn(reply_task(consumer, tx));
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // Correlation ids are unique to this run, so a stray answer of an earlier run is counted
    // as stray, never taken for one of ours.
    let run_tag = format!(
        "gb{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut states: Vec<JobState> = specs
        .iter()
        .map(|s| JobState {
            max_tokens: s.max_tokens,
            ..JobState::default()
        })
        .collect();
    let mut confirms: FuturesUnordered<ConfirmFuture> = FuturesUnordered::new();
    let mut next = 0usize;
    let mut in_flight = 0usize;
    let mut settled = 0usize;
    let mut stray = 0u64;
    let idle = Duration::from_secs_f64(cli.idle_timeout_s.max(0.001));
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut gave_up = false;

    let publish = |index: usize,
                   states: &mut Vec<JobState>,
                   by_id: &mut HashMap<String, usize>|
     -> (String, Vec<u8>, BasicProperties) {
        let id = format!("{run_tag}-{index}");
        let spec = &specs[index];
        let body = serde_json::json!({
            "id": id,
            "text_input": spec.prompt,
            "parameters": {"max_tokens": spec.max_tokens, "temperature": cli.temperature, "stream": true},
        });
        let props = JobProperties::new()
            .reply_to(&reply_queue)
            .correlation_id(&id)
            .build();
        by_id.insert(id.clone(), index);
        states[index].published = Some(Instant::now());
        (id, serde_json::to_vec(&body).expect("a JSON value"), props)
    };

    while settled < count {
        while in_flight < concurrency && next < count {
            let index = next;
            next += 1;
            in_flight += 1;
            let (_id, body, props) = publish(index, &mut states, &mut by_id);
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            match publisher
                .basic_publish("".into(), queue.as_str().into(), options, &body, props)
                .await
            {
                Ok(confirm) => confirms.push(Box::pin(async move {
                    (index, PublishOutcome::of(confirm).await)
                })),
                Err(e) => {
                    let state = &mut states[index];
                    state.done = true;
                    state.error = Some(format!("publish: {e}"));
                    in_flight -= 1;
                    settled += 1;
                }
            }
        }
        if settled >= count {
            break;
        }
        let deadline = tokio::time::Instant::from_std(last_progress + idle);
        tokio::select! {
            arrival = rx.recv() => {
                let Some(arrival) = arrival else {
                    bail!("the reply consumer ended (connection lost?)");
                };
                last_progress = Instant::now();
                let index = arrival.correlation_id.as_ref().and_then(|id| by_id.get(id)).copied();
                let Some(index) = index else {
                    stray += 1;
                    continue;
                };
                let state = &mut states[index];
                if state.done {
                    stray += 1;
                    continue;
                }
                if let Some(code) = arrival.error_code {
                    let detail = arrival.error.or_else(|| {
                        serde_json::from_slice::<serde_json::Value>(&arrival.data).ok()
                            .and_then(|v| v["error"].as_str().map(str::to_owned))
                    }).unwrap_or_default();
                    state.error = Some(format!("{code}: {detail}"));
                    state.done = true;
                    in_flight -= 1;
                    settled += 1;
                    continue;
                }
                let answer: serde_json::Value = match serde_json::from_slice(&arrival.data) {
                    Ok(v) => v,
                    Err(e) => {
                        state.error = Some(format!("not-json: {e}"));
                        state.done = true;
                        in_flight -= 1;
                        settled += 1;
                        continue;
                    }
                };
                if state.first.is_none() {
                    state.first = Some(arrival.at);
                }
                state.last = Some(arrival.at);
                state.pieces += 1;
                if let Some(seq) = answer["sequence"].as_u64() {
                    if let Some(expected) = state.next_sequence {
                        if seq != expected {
                            state.out_of_order = true;
                        }
                    }
                    state.next_sequence = Some(seq + 1);
                }
                if let Some(reason) = answer["finish_reason"].as_str() {
                    state.finish_reason = Some(reason.to_owned());
                    state.completion_tokens = answer["usage"]["completion_tokens"].as_u64();
                    state.prompt_tokens = answer["usage"]["prompt_tokens"].as_u64();
                    if state.completion_tokens.is_none() {
                        state.error = Some("no-usage: the last piece has no usage.completion_tokens".into());
                    }
                    state.done = true;
                    in_flight -= 1;
                    settled += 1;
                }
            }
            Some((index, outcome)) = confirms.next(), if !confirms.is_empty() => {
                last_progress = Instant::now();
                let failure = match outcome {
                    PublishOutcome::Confirmed => None,
                    PublishOutcome::Returned(_) => Some(format!("unroutable: no queue {queue} (is the worker up?)")),
                    PublishOutcome::Nacked(_) => Some("refused: the broker nacked the job".to_owned()),
                    PublishOutcome::ChannelLost(e) => Some(format!("channel-lost: {e}")),
                };
                if let Some(failure) = failure {
                    let state = &mut states[index];
                    if !state.done {
                        state.error = Some(failure);
                        state.done = true;
                        in_flight -= 1;
                        settled += 1;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                gave_up = true;
                break;
            }
        }
    }
    let wall = states
        .iter()
        .filter_map(|s| s.last)
        .max()
        .map(|last| last.duration_since(started))
        .unwrap_or_else(|| started.elapsed());
    let wall = if gave_up { started.elapsed() } else { wall };

    drop(rx);
    let _ = publisher.close(200, "generate-bench done".into()).await;
    let _ = replies.close(200, "generate-bench done".into()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reply_handle).await;
    let _ = connection.close(200, "generate-bench done".into()).await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut ttft = Vec::new();
    let mut tpot = Vec::new();
    let mut e2e = Vec::new();
    let mut error_codes = BTreeMap::new();
    let mut finish_reasons = BTreeMap::new();
    let mut per_job = Vec::new();
    let (mut completed, mut errors, mut unfinished, mut out_of_order) = (0, 0, 0, 0);
    let (mut prompt_tokens, mut completion_tokens) = (0u64, 0u64);
    for (index, s) in states.iter().enumerate() {
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
        } else {
            completed += 1;
            let (p, f, l) = (s.published.unwrap(), s.first.unwrap(), s.last.unwrap());
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
    let wall_s = wall.as_secs_f64();
    Ok(Report {
        system: cli.system.clone(),
        mode: cli.mode.clone(),
        model: cli.model.clone(),
        queue,
        concurrency,
        jobs: count,
        completed,
        errors,
        error_codes,
        unfinished,
        stray_messages: stray,
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
    })
}
