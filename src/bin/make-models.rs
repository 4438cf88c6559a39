//! Writes the bundled models to `<dir>/<name>/1/model.onnx` (default dir: `models`).
//!
//! Deterministic: running it twice gives byte-identical files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use infermq::onnx::bundled;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name).join("1").join("model.onnx");
    let parent = path.parent().context("model path has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    println!("{} ({} bytes)", path.display(), bytes.len());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    write(&dir, "iris", &bundled::iris(&bundled::iris_seeded_layers()))?;
    write(&dir, "mlp", &bundled::mlp())?;
    write(&dir, "mixed", &bundled::mixed())?;
    write(&dir, "scaler", &bundled::scaler())?;
    write(&dir, "fixed", &bundled::fixed())?;
    Ok(())
}
