//! The `infermq` command line: the worker, the gateway, a one-job client, a streaming
//! generation client and the repository listing. Everything else lives in the library; the load generator is `infermq-bench`
//! (`tools/`).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use infermq::broker::headers::{ERROR_CODE, MODEL_VERSION};
use infermq::client::{binary_header_len, header_str, headers, model_queue, Client};
use infermq::config::Settings;
use infermq::protocol::{decode_request, decode_response, encode_request, EncodedBody};
use infermq::repository::describe::describe;
use infermq::repository::{ModelConfig, ModelStore};
use infermq::runtime::Backend;
use infermq::runtime::{env, OrtBackend, SessionOptions};
use infermq::serving::decoder::find_decoder;
use infermq::worker;

#[derive(Parser)]
#[command(
    name = "infermq",
    version,
    about = "ONNX models as a service over RabbitMQ"
)]
struct Cli {
    /// Configuration file (TOML), layered over the defaults and under INFERMQ__SECTION__KEY.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every model of the repository over RabbitMQ.
    Worker {
        /// Model repository (overrides repository.path).
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// The KServe v2 HTTP gateway onto the queues (see docs/GATEWAY.md).
    Gateway {
        /// Address to listen on (overrides gateway.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Send one prediction job through the broker and print the result.
    Predict {
        #[arg(long)]
        model: String,
        /// Model version (sent as the x-model-version header).
        #[arg(long)]
        version: Option<String>,
        /// File holding the KServe v2 request body (JSON); `-` or absent reads standard input.
        #[arg(long)]
        input: Option<String>,
        /// Send the inputs with the v2 binary tensor extension.
        #[arg(long)]
        binary: bool,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
    /// Send one generation job to a decoder model and stream its text to the terminal.
    Generate {
        #[arg(long)]
        model: String,
        /// The prompt.
        prompt: String,
        /// Model version (sent as the x-model-version header).
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        max_tokens: Option<u64>,
        /// 0 (the default): greedy.
        #[arg(long)]
        temperature: Option<f64>,
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long)]
        top_k: Option<u64>,
        #[arg(long)]
        seed: Option<u64>,
        /// A stop string (repeat for more).
        #[arg(long)]
        stop: Vec<String>,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Send a batch file (OpenAI's JSONL batch format) as generation jobs and write each
    /// answer as it arrives; a rerun resumes (see docs/GATEWAY.md "Batch files").
    Batch {
        /// Requests, one `{"custom_id", "method", "url", "body"}` per line.
        input: PathBuf,
        /// Answers, one per line, appended (lines already answered there are not asked again).
        #[arg(long)]
        output: PathBuf,
        /// Jobs in flight at most.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Each job's deadline in seconds from when it is sent (none: jobs wait their turn).
        #[arg(long)]
        job_timeout_s: Option<u64>,
        /// Give up when no answer came for this long while jobs are in flight.
        #[arg(long, default_value_t = 600)]
        idle_timeout_s: u64,
        /// Model repository for chat templates (overrides repository.path).
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// List the repository: models, versions, configuration, inputs and outputs.
    Models {
        #[arg(long)]
        models: Option<PathBuf>,
    },
}

/// Stack reserved for every thread of the process (virtual memory: only what is used becomes
/// resident). lapin's I/O thread parses AMQP header tables recursively, and a table nested
/// ~26,000 deep fits in one 128 KiB frame (RabbitMQ's default `frame_max`): with the default
/// 2 MiB stack one such message aborts the process, and every worker it is redelivered to.
/// Measured: the debug build needs between 256 and 512 MiB for the deepest table that fits.
const THREAD_STACK_BYTES: usize = 512 << 20;

fn main() -> anyhow::Result<()> {
    // Before any thread starts: std reads RUST_MIN_STACK once, at the first spawn (lapin's I/O
    // thread is spawned by std with the default size). An operator's own value wins.
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        std::env::set_var("RUST_MIN_STACK", THREAD_STACK_BYTES.to_string());
    }
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Command::Worker { models: Some(dir) } | Command::Models { models: Some(dir) } =
        &cli.command
    {
        settings.repository.path = dir.clone();
    }
    if let Command::Gateway {
        listen: Some(addr), ..
    } = &cli.command
    {
        settings.gateway.listen = *addr;
    }
    infermq::telemetry::logging::init(settings.log.format, &settings.log.level)
        .map_err(anyhow::Error::msg)?;
    if matches!(cli.command, Command::Worker { .. }) && !settings.runtime.io_cpus.is_empty() {
        // Before any thread starts: every thread the worker starts inherits the mask.
        infermq::runtime::affinity::pin_current_thread(&settings.runtime.io_cpus).map_err(|e| {
            anyhow::anyhow!("runtime.io_cpus = {:?}: {e}", settings.runtime.io_cpus)
        })?;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let async_threads = match cli.command {
        Command::Worker { .. } => settings.runtime.async_threads,
        Command::Gateway { .. } => settings.gateway.async_threads,
        _ => 0,
    };
    if async_threads > 0 {
        builder.worker_threads(async_threads);
    }
    let runtime = builder
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Worker { .. } => run_worker(settings).await,
            Command::Gateway { .. } => {
                infermq::gateway::run(settings, cancel_on_signal(), None).await?;
                Ok(())
            }
            Command::Predict {
                model,
                version,
                input,
                binary,
                timeout_s,
            } => predict(&settings, &model, version, input, binary, timeout_s).await,
            Command::Generate {
                model,
                prompt,
                version,
                max_tokens,
                temperature,
                top_p,
                top_k,
                seed,
                stop,
                timeout_s,
            } => {
                let mut parameters = serde_json::json!({"stream": true});
                let set = |p: &mut serde_json::Value, key: &str, v: Option<serde_json::Value>| {
                    if let Some(v) = v {
                        p[key] = v;
                    }
                };
                set(&mut parameters, "max_tokens", max_tokens.map(Into::into));
                set(&mut parameters, "temperature", temperature.map(Into::into));
                set(&mut parameters, "top_p", top_p.map(Into::into));
                set(&mut parameters, "top_k", top_k.map(Into::into));
                set(&mut parameters, "seed", seed.map(Into::into));
                if !stop.is_empty() {
                    parameters["stop"] = stop.into();
                }
                let body = serde_json::json!({"text_input": prompt, "parameters": parameters});
                generate(&settings, &model, version, body, timeout_s).await
            }
            Command::Batch {
                input,
                output,
                window,
                job_timeout_s,
                idle_timeout_s,
                models,
            } => {
                let options = infermq::batchfile::BatchOptions {
                    input,
                    output,
                    window,
                    job_timeout: job_timeout_s.map(Duration::from_secs),
                    idle_timeout: Duration::from_secs(idle_timeout_s),
                };
                batch(settings, models, options).await
            }
            Command::Models { .. } => list_models(&settings),
        }
    })
}

/// Runs a batch file; fails when some requests got no answer (a rerun asks for them).
async fn batch(
    mut settings: Settings,
    models: Option<PathBuf>,
    options: infermq::batchfile::BatchOptions,
) -> anyhow::Result<()> {
    if let Some(dir) = models {
        settings.repository.path = dir;
    }
    let summary = infermq::batchfile::run(&settings, &options, cancel_on_signal()).await?;
    if summary.unfinished() > 0 {
        bail!(
            "{} of {} lines have no answer in {} yet; run the same command again to send them",
            summary.unfinished(),
            summary.total,
            options.output.display()
        );
    }
    Ok(())
}

async fn run_worker(settings: Settings) -> anyhow::Result<()> {
    worker::run(settings, cancel_on_signal(), None).await?;
    Ok(())
}

/// A token cancelled on the first SIGTERM or SIGINT.
fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "Cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        signals.cancel();
    });
    shutdown
}

async fn predict(
    settings: &Settings,
    model: &str,
    version: Option<String>,
    input: Option<String>,
    binary: bool,
    timeout_s: u64,
) -> anyhow::Result<()> {
    let mut text = Vec::new();
    match input.as_deref() {
        None | Some("-") => {
            std::io::stdin().read_to_end(&mut text)?;
        }
        Some(path) => text = std::fs::read(path).with_context(|| format!("reading {path}"))?,
    }
    // Parse locally first so a typo is reported here, then re-encode (JSON or binary).
    let request = decode_request(&text, None).map_err(|e| anyhow::anyhow!("input: {e}"))?;
    let body = encode_request(&request, binary);
    let queue = model_queue(&settings.broker.prefix, model)?;
    let mut client = Client::connect_any(&settings.broker.url, &settings.broker.tls).await?;
    let extra = match &version {
        Some(v) => headers(&[(MODEL_VERSION, v.as_str())]),
        None => headers(&[]),
    };
    let delivery = client
        .call(&queue, &body, extra, Duration::from_secs(timeout_s))
        .await?;
    client.close().await;
    let code = header_str(&delivery, ERROR_CODE);
    match binary_header_len(&delivery) {
        None => println!("{}", String::from_utf8_lossy(&delivery.data)),
        Some(len) => {
            let decoded = decode_response(&delivery.data, Some(len))
                .map_err(|e| anyhow::anyhow!("result: {e}"))?;
            println!("{}", String::from_utf8_lossy(&decoded.to_json(model)));
        }
    }
    if let Some(code) = code {
        bail!("the job was answered with error code {code}");
    }
    Ok(())
}

/// Publishes a streamed generation job and prints each piece as it comes; the usage goes to
/// standard error at the end.
async fn generate(
    settings: &Settings,
    model: &str,
    version: Option<String>,
    body: serde_json::Value,
    timeout_s: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    let queue = model_queue(&settings.broker.prefix, model)?;
    let mut client = Client::connect_any(&settings.broker.url, &settings.broker.tls).await?;
    let extra = match &version {
        Some(v) => headers(&[(MODEL_VERSION, v.as_str())]),
        None => headers(&[]),
    };
    let body = EncodedBody {
        body: serde_json::to_vec(&body)?,
        header_len: None,
        content_type: "application/json",
    };
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let properties = client.job_properties(&correlation_id, &body, extra);
    client.publish(&queue, &body.body, properties).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_s);
    let mut out = std::io::stdout();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let delivery = client.next_reply(left).await?;
        let ours = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str());
        if ours != Some(correlation_id.as_str()) {
            continue;
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&delivery.data).with_context(|| "the answer is not JSON")?;
        if let Some(code) = header_str(&delivery, ERROR_CODE) {
            client.close().await;
            bail!("{code}: {}", answer["error"].as_str().unwrap_or(""));
        }
        write!(out, "{}", answer["text_output"].as_str().unwrap_or(""))?;
        out.flush()?;
        if let Some(reason) = answer["finish_reason"].as_str() {
            writeln!(out)?;
            let usage = &answer["usage"];
            eprintln!(
                "[finish_reason {reason}, prompt_tokens {}, completion_tokens {}]",
                usage["prompt_tokens"], usage["completion_tokens"]
            );
            break;
        }
    }
    client.close().await;
    Ok(())
}

fn list_models(settings: &Settings) -> anyhow::Result<()> {
    env::init(settings.runtime.library())?;
    let store = ModelStore::new(
        &settings.repository.path,
        settings.repository.models.clone(),
    );
    let options = SessionOptions::cpu();
    let signature = |bytes: &[u8]| {
        OrtBackend::load(bytes, &options)
            .map(|b| b.signature().clone())
            .map_err(|e| e.to_string())
    };
    // A decoder generates: its context and budgets, or why the worker would refuse it.
    let generation = |dir: &std::path::Path, config: &ModelConfig, signature: &_| match find_decoder(
        dir,
        config.generate.as_ref(),
        signature,
    ) {
        Ok(None) => None,
        Ok(Some(spec)) => Some(spec.describe()),
        Err(refused) => Some(serde_json::json!({"refused": refused})),
    };
    let listing = describe(&store, signature, generation)?;
    println!("{}", serde_json::to_string_pretty(&listing)?);
    Ok(())
}
