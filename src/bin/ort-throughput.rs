//! Raw ONNX Runtime throughput of one model at one batch size: the ceiling the worker's
//! compute-bound throughput is compared to (`scripts/bench.sh`).
//!
//! `ort-throughput MODEL.onnx INPUT_NAME FEATURES BATCH SECONDS [INTRA_THREADS] [cpu|cuda]` prints
//! one JSON line: `{"batch":…, "rows_per_s":…, "batch_ms":…, "ep":…}` (median batch latency).
//! `cuda` requires the CUDA execution provider (no silent CPU fallback), for GPU checks.

use std::time::{Duration, Instant};

use infermq::protocol::Tensor;
use infermq::runtime::{env, Backend, OrtBackend, SessionOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 6,
        "usage: ort-throughput MODEL INPUT FEATURES BATCH SECONDS [INTRA_THREADS] [cpu|cuda]"
    );
    let (model, input, features, batch, seconds) = (
        &args[1],
        &args[2],
        args[3].parse::<usize>()?,
        args[4].parse::<usize>()?,
        args[5].parse::<f64>()?,
    );
    let intra_threads = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let ep = args.get(7).map(String::as_str).unwrap_or("cpu");
    env::init(None)?;
    let options = match ep {
        "cpu" => SessionOptions {
            intra_threads,
            ..SessionOptions::cpu()
        },
        // GPU checks must not pass on a silent CPU fallback: require CUDA.
        "cuda" => SessionOptions {
            execution_providers: vec![infermq::config::ExecutionProvider::Cuda],
            require_gpu: true,
            intra_threads,
            cpus: Vec::new(),
        },
        other => anyhow::bail!("unknown execution provider {other:?} (cpu or cuda)"),
    };
    options.check()?;
    let mut backend = OrtBackend::load(&std::fs::read(model)?, &options)?;
    let values: Vec<f32> = (0..batch * features)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let tensor = Tensor::from_f32(input.as_str(), vec![batch, features], &values);
    for _ in 0..20 {
        backend.infer(std::slice::from_ref(&tensor))?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        let t = Instant::now();
        backend.infer(std::slice::from_ref(&tensor))?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({"batch": batch, "rows_per_s": (batch * times.len()) as f64 / total, "batch_ms": median * 1e3, "runs": times.len(), "ep": ep})
    );
    Ok(())
}
