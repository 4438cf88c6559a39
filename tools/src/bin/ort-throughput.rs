//! Raw ONNX Runtime throughput of one model at one batch size: the ceiling the worker's
//! compute-bound throughput is compared to (`scripts/bench.sh`).
//!
//! `ort-throughput MODEL.onnx INPUT_NAME FEATURES BATCH SECONDS [INTRA_THREADS] [cpu|cuda] [plain|iobinding]`
//! prints one JSON line: `{"batch":…, "rows_per_s":…, "batch_ms":…, "ep":…, "io":…}` (median
//! batch latency). `cuda` requires the CUDA execution provider (no silent CPU fallback), for GPU
//! checks.
//!
//! `plain` (the default) runs batches as the worker does: a host tensor in, host tensors out.
//! `iobinding` binds the input and the first output to buffers allocated once by ONNX Runtime
//! (page-locked "CudaPinned" host memory with `cuda`, which the GPU reads and writes by DMA; the
//! CPU allocator with `cpu`), refills the input buffer before every run as the worker would, and
//! reads the output from its buffer: what the worker would gain from IoBinding.

use std::time::{Duration, Instant};

use infermq::protocol::Tensor;
use infermq::runtime::{env, Backend, OrtBackend, SessionOptions};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;

/// The command line.
struct Run {
    model: String,
    input: String,
    features: usize,
    batch: usize,
    seconds: f64,
    intra_threads: usize,
    ep: String,
    io: String,
}

impl Run {
    fn parse(args: &[String]) -> anyhow::Result<Run> {
        anyhow::ensure!(
            args.len() >= 6,
            "usage: ort-throughput MODEL INPUT FEATURES BATCH SECONDS [INTRA_THREADS] [cpu|cuda] [plain|iobinding]"
        );
        let run = Run {
            model: args[1].clone(),
            input: args[2].clone(),
            features: args[3].parse()?,
            batch: args[4].parse()?,
            seconds: args[5].parse()?,
            intra_threads: args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(1),
            ep: args.get(7).cloned().unwrap_or_else(|| "cpu".into()),
            io: args.get(8).cloned().unwrap_or_else(|| "plain".into()),
        };
        anyhow::ensure!(
            matches!(run.io.as_str(), "plain" | "iobinding"),
            "unknown mode {:?} (plain or iobinding)",
            run.io
        );
        Ok(run)
    }

    fn options(&self) -> anyhow::Result<SessionOptions> {
        Ok(match self.ep.as_str() {
            "cpu" => SessionOptions {
                intra_threads: self.intra_threads,
                ..SessionOptions::cpu()
            },
            // GPU checks must not pass on a silent CPU fallback: require CUDA.
            "cuda" => SessionOptions {
                execution_providers: vec![infermq::runtime::ExecutionProvider::Cuda],
                require_gpu: true,
                intra_threads: self.intra_threads,
                ..SessionOptions::cpu()
            },
            other => anyhow::bail!("unknown execution provider {other:?} (cpu or cuda)"),
        })
    }

    fn tensor(&self, values: &[f32]) -> Tensor {
        Tensor::from_f32(self.input.as_str(), vec![self.batch, self.features], values)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let run = Run::parse(&args)?;
    env::init(None)?;
    let options = run.options()?;
    options.check()?;
    let values: Vec<f32> = (0..run.batch * run.features)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let bytes = std::fs::read(&run.model)?;
    let times = if run.io == "iobinding" {
        checked_iobinding_times(&run, &bytes, &options, &values)?
    } else {
        let mut backend = OrtBackend::load(&bytes, &options)?;
        let tensor = run.tensor(&values);
        timed(run.seconds, || {
            backend.infer(std::slice::from_ref(&tensor)).map(drop)
        })?
    };
    let total: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    let rows_per_s = (run.batch * times.len()) as f64 / total;
    println!(
        "{}",
        serde_json::json!({"batch": run.batch, "rows_per_s": rows_per_s, "batch_ms": median * 1e3, "runs": times.len(), "ep": run.ep, "io": run.io})
    );
    Ok(())
}

/// The IoBinding timings, once its output is checked against a plain run's.
fn checked_iobinding_times(
    run: &Run,
    bytes: &[u8],
    options: &SessionOptions,
    values: &[f32],
) -> anyhow::Result<Vec<f64>> {
    let mut session = options.session(bytes)?;
    let (times, bound) = iobinding_times(
        &mut session,
        &run.input,
        run.batch,
        run.features,
        values,
        run.seconds,
        run.ep == "cuda",
    )
    .map_err(|e| anyhow::anyhow!("IoBinding: {e}"))?;
    // The bound output must be what a plain run computes, or the timing means nothing.
    let tensor = run.tensor(values);
    let plain = OrtBackend::load(bytes, options)?.infer(std::slice::from_ref(&tensor))?;
    let plain = plain[0].to_f32_vec().unwrap_or_default();
    let worst = plain
        .iter()
        .zip(&bound)
        .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
        .fold(0.0f32, f32::max);
    anyhow::ensure!(
        plain.len() == bound.len() && worst <= 1e-4,
        "IoBinding output differs from a plain run (relative difference {worst})"
    );
    Ok(times)
}

/// Runs `f` 20 times to warm up, then for `seconds`; the duration of each timed run.
fn timed<E>(seconds: f64, mut f: impl FnMut() -> Result<(), E>) -> Result<Vec<f64>, E> {
    for _ in 0..20 {
        f()?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// The IoBinding loop: input and first output bound once to buffers from ONNX Runtime's
/// allocator (pinned host memory for CUDA); each run refills the input and reads the output.
fn iobinding_times(
    session: &mut Session,
    input: &str,
    batch: usize,
    features: usize,
    values: &[f32],
    seconds: f64,
    pinned: bool,
) -> ort::Result<(Vec<f64>, Vec<f32>)> {
    let allocator = |kind| -> ort::Result<Allocator> {
        if pinned {
            Allocator::new(
                session,
                MemoryInfo::new(
                    AllocationDevice::CUDA_PINNED,
                    0,
                    AllocatorType::Device,
                    kind,
                )?,
            )
        } else {
            Ok(Allocator::default())
        }
    };
    let (in_alloc, out_alloc) = (
        allocator(MemoryType::CPUInput)?,
        allocator(MemoryType::CPUOutput)?,
    );
    let output = &session.outputs()[0];
    let name = output.name().to_string();
    let shape: Vec<i64> = output
        .dtype()
        .tensor_shape()
        .map(|s| {
            s.iter()
                .map(|&d| if d < 0 { batch as i64 } else { d })
                .collect()
        })
        .unwrap_or_default();
    let mut x = ort::value::Tensor::<f32>::new(&in_alloc, [batch, features])?;
    let y = ort::value::Tensor::<f32>::new(&out_alloc, shape)?;
    let mut binding = session.create_binding()?;
    binding.bind_output(&name, y)?;
    let mut last = Vec::new();
    let times = timed(seconds, || -> ort::Result<()> {
        x.extract_tensor_mut().1.copy_from_slice(values);
        binding.bind_input(input, &x)?;
        let outputs = session.run_binding(&binding)?;
        // Read the output as the worker would (copied out of the bound buffer).
        last.clear();
        last.extend_from_slice(outputs[name.as_str()].try_extract_tensor::<f32>()?.1);
        Ok(())
    })?;
    Ok((times, last))
}
