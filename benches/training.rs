//! Training throughput (samples/s) of a 256→512→512→10 ReLU MLP with adam and sparse categorical
//! cross-entropy on synthetic data, on ONNX Runtime's CPU execution provider.
//!
//! One iteration is a whole `train` call (graph building and session creation included) of two
//! epochs over 4096 rows; criterion reports elements/s = training rows processed per second.
//! `training/iris_protocol_example` times the training job of PROTOCOL.md (16 relu → 3 softmax,
//! adam 0.01 with exponential decay, 50 epochs, batch 32, validation 0.2, patience 5) on
//! `models/iris/iris.csv`. Run: `cargo bench --bench training`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use infermq::training::data::{DataSource, RawData};
use infermq::training::rng::SeededRng;
use infermq::training::{parse_job, train, CpuSessions, TrainJob};

const ROWS: usize = 4096;
const FEATURES: usize = 256;
const CLASSES: usize = 10;
const EPOCHS: usize = 2;

fn job(batch_size: usize) -> TrainJob {
    let body = serde_json::json!({
        "id": "bench", "model_name": "bench", "loss": "sparse_categorical_crossentropy",
        "layers": [{"units": 512, "activation": "relu"}, {"units": 512, "activation": "relu"},
                   {"units": CLASSES, "activation": "softmax"}],
        "optimizer": {"type": "adam", "learning_rate": 0.001},
        "epochs": EPOCHS, "batch_size": batch_size, "seed": 1,
        "data": {"x": [[0.0]], "y": [0]}
    });
    let mut job = parse_job(body.to_string().as_bytes()).expect("valid job");
    let mut rng = SeededRng::new(42);
    let x: Vec<f32> = (0..ROWS * FEATURES)
        .map(|_| rng.symmetric(1.0) as f32)
        .collect();
    // Labels from a fixed random projection, so there is something to learn.
    let w: Vec<f32> = (0..FEATURES * CLASSES)
        .map(|_| rng.symmetric(1.0) as f32)
        .collect();
    let y = x
        .chunks(FEATURES)
        .map(|row| {
            let score = |c: usize| -> f32 {
                row.iter()
                    .enumerate()
                    .map(|(i, v)| v * w[i * CLASSES + c])
                    .sum()
            };
            (0..CLASSES)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap_or(0) as f64
        })
        .collect();
    job.data = DataSource::Inline(RawData {
        rows: ROWS,
        features: FEATURES,
        x,
        y,
        y_columns: None,
        y_field: "data.y".to_string(),
    });
    job
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("training");
    group.sample_size(10);
    group.throughput(Throughput::Elements((ROWS * EPOCHS) as u64));
    for batch in [32, 128, 512] {
        let job = job(batch);
        let sessions = CpuSessions::default();
        group.bench_function(format!("mlp_256_512_512_10/batch_{batch}"), |b| {
            b.iter(|| train(&job, None, &sessions, &mut |_| {}, &|| false).expect("trains"))
        });
    }
    group.throughput(Throughput::Elements(1));
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/models/iris/iris.csv");
    let iris = serde_json::json!({
        "id": "train-7", "model_name": "iris",
        "layers": [{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.01,
                      "schedule": {"type": "exponential_decay", "decay_rate": 0.9, "decay_steps": 100}},
        "epochs": 50, "batch_size": 32, "validation_split": 0.2, "seed": 7,
        "early_stopping": {"patience": 5},
        "data": {"uri": format!("file://{csv}"), "format": "csv", "label_column": "species"}
    });
    let iris = parse_job(iris.to_string().as_bytes()).expect("valid job");
    let sessions = CpuSessions::default();
    group.bench_function("iris_protocol_example", |b| {
        b.iter(|| train(&iris, None, &sessions, &mut |_| {}, &|| false).expect("trains"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
