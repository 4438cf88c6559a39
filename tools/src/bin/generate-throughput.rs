//! The generation engine without a broker: loads a decoder version directory as the worker does
//! (`serving::decoder::find_decoder`, ONNX Runtime sessions on the CPU or CUDA execution
//! provider), runs the same greedy jobs through its continuous-batching engine at each
//! concurrency, and prints one JSON line per concurrency: tokens/s, time to first token and per
//! output token (p50, p99), and a digest of the texts (equal digests: equal texts, so a CPU and
//! a CUDA run can be compared). For the GPU check (scripts/gpu-check.sh), where no RabbitMQ
//! runs, and to see the engine's own cost apart from the broker's.
//!
//! `generate-throughput DIR EP JOBS MAX_TOKENS CONCURRENCY...`, e.g.
//! `generate-throughput models/storyteller/1 cpu 64 64 1 8 32 64`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use infermq::execution::generate::sampling::SamplingParams;
use infermq::execution::generate::{Event, GenerationJob, Generator};
use infermq::protocol::ModelSignature;
use infermq::repository::ModelConfig;
use infermq::runtime::cuda::CudaSettings;
use infermq::runtime::{env, load_version, Backend, ExecutionProvider, SessionOptions};
use infermq::serving::decoder::find_decoder;
use infermq::telemetry::Metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        bail!("usage: generate-throughput DIR cpu|cuda JOBS MAX_TOKENS CONCURRENCY...");
    }
    let dir = PathBuf::from(&args[0]);
    let ep = args[1].as_str();
    let jobs: usize = args[2].parse().context("JOBS")?;
    let max_tokens: usize = args[3].parse().context("MAX_TOKENS")?;
    let levels: Vec<usize> = args[4..]
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("CONCURRENCY")?;
    env::init(
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .as_deref(),
    )?;
    let mut options = SessionOptions::cpu();
    options.intra_threads = 0;
    if ep == "cuda" {
        options.execution_providers = vec![ExecutionProvider::Cuda];
        options.require_gpu = true;
    }
    let config =
        ModelConfig::read(&dir.join("../config.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = dir.join("model.onnx");
    let mut backends = load_version(&model, &options, &CudaSettings::default(), 1)?;
    let backend = backends.remove(0);
    let signature: ModelSignature = backend.signature().clone();
    let Some(mut spec) =
        find_decoder(&dir, config.generate.as_ref(), &signature).map_err(|e| anyhow::anyhow!(e))?
    else {
        bail!("{} is not a decoder", dir.display());
    };
    // Every job runs to max_tokens, so every concurrency generates the same tokens.
    spec.eos_token_ids = vec![u32::MAX];
    spec.budgets.max_active_rows = levels.iter().copied().max().unwrap_or(1);
    spec.budgets.max_waiting_jobs = jobs;
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
    let tokenizer = Arc::new(tokenizer);
    let metrics = Metrics::new("generate-throughput", "");
    let generator = Generator::start(
        "bench",
        Arc::new(spec),
        tokenizer.clone(),
        Box::new(backend),
        metrics.generation.version("bench", "1"),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    // The prompts: verses of Genesis, from the repository root or beside this crate.
    let genesis = [
        "models/encoder/genesis.txt",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/encoder/genesis.txt"),
    ];
    let verses = genesis
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .context("models/encoder/genesis.txt (run from the repository root)")?;
    let prompts: Vec<Vec<u32>> = verses
        .lines()
        .cycle()
        .take(jobs)
        .map(|l| tokenizer.encode(l, true).map(|e| e.get_ids().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for concurrency in levels {
        let report = runtime.block_on(run(&generator, &prompts, max_tokens, concurrency));
        println!(
            "{}",
            serde_json::json!({"ep": ep, "concurrency": concurrency, "jobs": prompts.len(), "max_tokens": max_tokens, "tokens": report.tokens, "seconds": report.seconds, "tokens_per_s": report.tokens as f64 / report.seconds, "ttft_p50_ms": report.ttft.0, "ttft_p99_ms": report.ttft.1, "tpot_p50_ms": report.tpot.0, "tpot_p99_ms": report.tpot.1, "text_digest": report.digest})
        );
    }
    Ok(())
}

struct Report {
    tokens: usize,
    seconds: f64,
    ttft: (f64, f64),
    tpot: (f64, f64),
    digest: String,
}

/// Runs every prompt, `concurrency` at a time, each job started as the one before it ends.
async fn run(
    generator: &Generator,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    concurrency: usize,
) -> Report {
    let started = Instant::now();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut next = 0;
    let mut running = 0;
    let mut results = vec![(String::new(), Duration::ZERO, Duration::ZERO, 0usize); prompts.len()];
    loop {
        while running < concurrency && next < prompts.len() {
            let (events, mut receiver) = mpsc::unbounded_channel();
            let submitted = generator.submit(GenerationJob {
                prompt: prompts[next].clone(),
                max_tokens,
                sampling: SamplingParams {
                    temperature: 0.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed: None,
                },
                stop: Vec::new(),
                deadline: None,
                cancel: CancellationToken::new(),
                events,
                received: Instant::now(),
            });
            assert!(submitted, "the engine stopped");
            let done = done_tx.clone();
            let index = next;
            tokio::spawn(async move {
                let sent = Instant::now();
                let mut text = String::new();
                let mut first = None;
                while let Some(event) = receiver.recv().await {
                    first.get_or_insert_with(Instant::now);
                    match event {
                        Event::Piece(p) => text.push_str(&p),
                        Event::Done(end) => {
                            text.push_str(&end.piece);
                            let first = first.unwrap_or_else(Instant::now);
                            let _ = done.send((
                                index,
                                text,
                                first - sent,
                                first.elapsed(),
                                end.completion_tokens,
                            ));
                            return;
                        }
                        Event::Failed(e) => panic!("job {index} failed: {e}"),
                    }
                }
            });
            next += 1;
            running += 1;
        }
        if running == 0 {
            break;
        }
        let (index, text, ttft, rest, tokens) = done_rx.recv().await.expect("jobs report");
        results[index] = (text, ttft, rest, tokens);
        running -= 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let quantiles = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99))
    };
    let ttft = quantiles(results.iter().map(|r| r.1.as_secs_f64() * 1e3).collect());
    let tpot = quantiles(
        results
            .iter()
            .map(|r| r.2.as_secs_f64() * 1e3 / (r.3.max(2) - 1) as f64)
            .collect(),
    );
    let tokens = results.iter().map(|r| r.3).sum();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (text, ..) in &results {
        for b in text.bytes().chain([0]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    Report {
        tokens,
        seconds,
        ttft,
        tpot,
        digest: format!("{hash:016x}"),
    }
}
