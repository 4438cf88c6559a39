//! One ONNX Runtime session, one `run` per iteration, at the batch sizes the batcher produces.
//!
//! The floor under the worker's throughput: rows/s of bare inference for the bundled models
//! (`models/iris/1/model.onnx`, input `input` [-1,4]; `models/mlp/1/model.onnx`, input `input`
//! [-1,256]) with 1 and 2 intra-op threads. Throughput is reported in rows
//! (`Throughput::Elements` = batch size). A model that is not on disk is skipped with a message.
//!
//! Run: `cargo bench --bench ort_session` (needs the ONNX Runtime library, see `runtime::env`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

const BATCH_SIZES: [usize; 6] = [1, 8, 32, 64, 128, 256];
const INTRA_THREADS: [usize; 2] = [1, 2];

/// A bundled model and the width of its one input.
struct Model {
    name: &'static str,
    input: &'static str,
    features: usize,
}

const MODELS: [Model; 2] = [
    Model {
        name: "iris",
        input: "input",
        features: 4,
    },
    Model {
        name: "mlp",
        input: "input",
        features: 256,
    },
];

fn model_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
        .join("1")
        .join("model.onnx")
}

fn load(env: &Environment, path: &Path, intra_threads: usize) -> ort::Result<Session> {
    Session::builder(env)?
        .with_intra_threads(intra_threads)?
        .with_inter_threads(1)?
        .commit_from_file(path)
}

/// One inference over `batch` rows; returns the number of outputs so the work is not optimised away.
fn infer(
    session: &mut Session,
    input: &str,
    data: &[f32],
    batch: usize,
    features: usize,
) -> ort::Result<usize> {
    let tensor = TensorRef::from_array_view(([batch, features], data))?;
    let outputs = session.run(ort::inputs![input => tensor])?;
    Ok(outputs.len())
}

fn bench_sessions(c: &mut Criterion) {
    let env = match infermq::runtime::env::init(None) {
        Ok(env) => env,
        Err(error) => {
            eprintln!("ort_session: skipped, ONNX Runtime unavailable: {error}");
            return;
        }
    };
    for model in &MODELS {
        let path = model_path(model.name);
        if !path.is_file() {
            eprintln!(
                "ort_session: skipped {}, no model at {}",
                model.name,
                path.display()
            );
            continue;
        }
        for threads in INTRA_THREADS {
            let mut session = match load(env, &path, threads) {
                Ok(session) => session,
                Err(error) => {
                    eprintln!(
                        "ort_session: skipped {} (intra {threads}): {error}",
                        model.name
                    );
                    continue;
                }
            };
            let mut group = c.benchmark_group(format!("ort_session/{}/intra{threads}", model.name));
            for batch in BATCH_SIZES {
                // Deterministic, varied values in [-1, 1).
                let data: Vec<f32> = (0..batch * model.features)
                    .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
                    .collect();
                if let Err(error) = infer(&mut session, model.input, &data, batch, model.features) {
                    eprintln!("ort_session: skipped {} batch {batch}: {error}", model.name);
                    continue;
                }
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
                    b.iter(|| {
                        let outputs = infer(
                            &mut session,
                            model.input,
                            black_box(&data),
                            batch,
                            model.features,
                        );
                        black_box(outputs.map_err(|e| e.to_string()))
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_sessions
}
criterion_main!(benches);
