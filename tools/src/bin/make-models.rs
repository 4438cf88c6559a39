//! Writes the bundled models to `<dir>/<name>/1/model.onnx` (default dir: `models`).
//!
//! Deterministic: running it twice gives byte-identical files. `iris` is trained on
//! `models/iris/iris.csv` (embedded at build time) by the training engine on ONNX Runtime's CPU
//! execution provider with one thread; `encoder`'s tokenizer (`<dir>/encoder/1/tokenizer.json`)
//! is trained on `models/encoder/genesis.txt` (embedded too) by the `tokenizers` crate; the
//! others are built directly.

use std::path::{Path, PathBuf};

use anyhow::Context;
use infermq::onnx::{decode_model, initializer_f32};
use infermq::tokenizer::train::{wordpiece, WordPieceSpec};
use infermq::training::bundled;
use infermq::training::data::{from_csv, DataSource};
use infermq::training::graph::Network;
use infermq::training::{parse_job, train, CpuSessions};

const IRIS_CSV: &str = include_str!("../../../models/iris/iris.csv");
const GENESIS: &str = include_str!("../../../models/encoder/genesis.txt");

/// The `encoder`'s tokenizer: 2 048 tokens at most, pairs seen twice or more, 128 tokens a text.
const ENCODER_TOKENIZER: WordPieceSpec = WordPieceSpec {
    vocab_size: 2048,
    min_frequency: 2,
    max_length: infermq::training::encoder::MAX_POSITIONS,
};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    write_file(dir, name, "model.onnx", bytes)
}

fn write_file(dir: &Path, name: &str, file: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name).join("1").join(file);
    let parent = path.parent().context("model path has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    println!("{} ({} bytes)", path.display(), bytes.len());
    Ok(())
}

/// Trains iris v1 and renames its output to `probabilities`.
fn iris() -> anyhow::Result<Vec<u8>> {
    let mut job = parse_job(bundled::IRIS_JOB.as_bytes())?;
    job.data = DataSource::Inline(from_csv(IRIS_CSV, Some("species"))?);
    let sessions = CpuSessions {
        intra_threads: Some(1),
    };
    let outcome = train(&job, None, &sessions, &mut |_| {}, &|| false)?;
    println!(
        "iris: trained {} epochs in {:.0} ms, {:?}",
        outcome.history.len(),
        outcome.duration_ms,
        outcome.metrics
    );
    let trained = decode_model(&outcome.model)?;
    let net = Network {
        inputs: 4,
        layers: job.layers.clone(),
        loss: job.loss,
    };
    let params = net
        .parameters()
        .iter()
        .map(|(name, _)| Ok(initializer_f32(&trained, name)?.1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let meta: Vec<(String, String)> = trained
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let doc = "Iris classifier: sepal length, sepal width, petal length, petal width (cm) -> \
               probabilities of setosa, versicolor, virginica";
    Ok(net.inference_model(&params, "input", "probabilities", &meta, doc))
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    write(&dir, "iris", &iris()?)?;
    write(&dir, "mlp", &bundled::mlp())?;
    write(&dir, "mixed", &bundled::mixed())?;
    write(&dir, "scaler", &bundled::scaler())?;
    write(&dir, "fixed", &bundled::fixed())?;
    let lines: Vec<&str> = GENESIS.lines().collect();
    let tokenizer = wordpiece(&lines, ENCODER_TOKENIZER)?;
    write_file(&dir, "encoder", "tokenizer.json", tokenizer.json.as_bytes())?;
    let encoder =
        infermq::training::encoder::encoder(tokenizer.vocab_size, i64::from(tokenizer.unk_id));
    write(&dir, "encoder", &encoder)?;
    Ok(())
}
