//! Memory and throughput of one model loaded `N` times by one of the ways ONNX Runtime offers,
//! measured in this process alone: the figures behind "weights once per version".
//!
//! `ort-memory MODEL.onnx MODE INSTANCES BATCHES SECONDS`
//!
//! `MODE`:
//! - `bytes`: the file read into memory, one session per instance from the bytes;
//! - `path`: one session per instance from the file's path (external data resolved beside it);
//! - `path-noprepack`: as `path` with `session.disable_prepacking` (kernels read the weights as
//!   loaded; external data stays memory-mapped, so the sessions share the page cache);
//! - `path-shared-prepack`: as `path` with one prepacked-weights container for every session;
//! - `shared-session`: what the worker does (`runtime::load_version`): one session from the
//!   path, run from `INSTANCES` threads at once.
//!
//! Prints one JSON line: load seconds; `Pss`/`Rss` (`/proc/self/smaps_rollup`) before, after
//! load and after the runs; the peak `Pss` sampled every 5 ms while loading and `VmHWM`; and
//! rows/s for each batch size in `BATCHES` (comma-separated), one thread per instance, each
//! running for `SECONDS`. The model's first input must be FP32 `[N, D]`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infermq::protocol::Tensor;
use infermq::runtime::cuda::CudaSettings;
use infermq::runtime::{env, load_version, Backend, OrtBackend, SessionOptions, SharedSession};
use ort::session::builder::PrepackedWeights;
use ort::session::Session;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: ort-memory MODEL MODE INSTANCES BATCHES SECONDS"
    );
    let model = Path::new(&args[1]);
    let mode = args[2].as_str();
    let instances: usize = args[3].parse()?;
    let batches: Vec<usize> = args[4]
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let seconds: f64 = args[5].parse()?;
    env::init(None)?;
    let before = memory()?;
    let peak = PeakSampler::start();
    let started = Instant::now();
    let mut backends = load(model, mode, instances)?;
    let load_s = started.elapsed().as_secs_f64();
    let peak_pss = peak.stop();
    let loaded = memory()?;
    let hwm = status_kib("VmHWM")?;
    let mut rates = serde_json::Map::new();
    for &batch in &batches {
        rates.insert(
            batch.to_string(),
            json!(throughput(&mut backends, batch, seconds)?),
        );
    }
    let after = memory()?;
    println!(
        "{}",
        json!({
            "mode": mode, "instances": instances, "load_s": load_s,
            "pss_before_mib": mib(before.0), "pss_loaded_mib": mib(loaded.0),
            "rss_loaded_mib": mib(loaded.1), "peak_pss_mib": mib(peak_pss.max(loaded.0)),
            "vmhwm_mib": mib(hwm * 1024), "pss_after_runs_mib": mib(after.0),
            "rows_per_s": rates,
        })
    );
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0
}

fn load(model: &Path, mode: &str, instances: usize) -> anyhow::Result<Vec<OrtBackend>> {
    let options = SessionOptions::cpu();
    let cuda = CudaSettings::default();
    let builder = || options.builder(&cuda.instance(0));
    let own = |f: &dyn Fn() -> anyhow::Result<Session>| -> anyhow::Result<Vec<OrtBackend>> {
        let own = |_| Ok(OrtBackend::shared(Arc::new(SharedSession::new(f()?)?)));
        (0..instances).map(own).collect()
    };
    let config = |e: ort::Error<_>| anyhow::anyhow!("{e}");
    match mode {
        "bytes" => {
            let bytes = std::fs::read(model)?;
            own(&|| Ok(options.session(&bytes)?))
        }
        "path" => own(&|| Ok(builder()?.commit_from_file(model)?)),
        "path-noprepack" => own(&|| {
            let mut b = builder()?
                .with_config_entry("session.disable_prepacking", "1")
                .map_err(config)?;
            Ok(b.commit_from_file(model)?)
        }),
        "path-shared-prepack" => {
            let container = PrepackedWeights::new();
            own(&|| {
                let mut b = builder()?
                    .with_prepacked_weights(&container)
                    .map_err(config)?;
                Ok(b.commit_from_file(model)?)
            })
        }
        "shared-session" => Ok(load_version(model, &options, &cuda, instances)?),
        other => anyhow::bail!("unknown mode {other:?}"),
    }
}

/// Rows per second over all instances, one thread each, for `seconds`.
fn throughput(backends: &mut [OrtBackend], batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let spec = &backends[0].signature().inputs[0];
    let width = spec.shape.get(1).copied().unwrap_or(1).max(1) as usize;
    let values: Vec<f32> = (0..batch * width).map(|i| (i % 17) as f32 / 17.0).collect();
    let input = Tensor::from_f32(spec.name.as_str(), vec![batch, width], &values);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    std::thread::scope(|scope| {
        let runs: Vec<_> = backends
            .iter_mut()
            .map(|backend| {
                let input = &input;
                scope.spawn(move || -> anyhow::Result<f64> {
                    backend.infer(std::slice::from_ref(input))?;
                    let started = Instant::now();
                    let mut rows = 0;
                    while Instant::now() < deadline {
                        backend.infer(std::slice::from_ref(input))?;
                        rows += batch;
                    }
                    Ok(rows as f64 / started.elapsed().as_secs_f64())
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join()
                    .map_err(|_| anyhow::anyhow!("a run thread panicked"))?
            })
            .sum()
    })
}

/// (`Pss`, `Rss`) of this process in bytes.
fn memory() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((field("Pss:"), field("Rss:")))
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(name: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/self/status"))
}

/// Samples `Pss` every 5 ms on a thread of its own, keeping the largest.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakSampler {
    fn start() -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(memory().map(|m| m.0).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        PeakSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}
