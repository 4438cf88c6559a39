//! Writes a large ONNX model for measuring load time and memory: a chain of `K` MatMuls of
//! `D`×`D` FP32 weights, input `x` `[N, D]` (`N` dynamic), output `y` `[N, D]`. Generated,
//! never downloaded: `K = 6, D = 4096` is 384 MiB of weights, `K = 33` 2.1 GiB.
//!
//! `make-large-model DIR K D [external|embedded]`
//!
//! `external` (the default) writes `DIR/weights.bin` (each weight at a page-aligned offset,
//! streamed, so generating needs little memory) and then `DIR/model.onnx`, which refers to it:
//! the model file comes last, so a repository poll never sees a `model.onnx` whose weights are
//! still being written. `embedded` writes the weights inside `model.onnx`, refused at 2 GiB and
//! over (protobuf's limit). Weights are uniform in ±√(3/D) from a fixed seed (the same bytes on
//! every run), so activations keep their scale through the chain.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use infermq::onnx::builder::f32_bytes;
use infermq::onnx::external::ExternalLayout;
use infermq::onnx::proto::elem;
use infermq::onnx::{Dim, GraphBuilder};
use infermq::training::rng::SeededRng;

/// Values generated per write.
const CHUNK: usize = 1 << 18;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: make-large-model DIR K D [external|embedded]"
    );
    let dir = Path::new(&args[1]);
    let layers = args[2].parse::<usize>()?;
    let width = args[3].parse::<usize>()?;
    anyhow::ensure!(layers > 0 && width > 0, "K and D must be at least 1");
    let embedded = match args.get(4).map(String::as_str).unwrap_or("external") {
        "external" => false,
        "embedded" => true,
        other => anyhow::bail!("unknown layout {other:?} (external or embedded)"),
    };
    let weight_bytes = (layers * width * width * 4) as u64;
    anyhow::ensure!(
        !embedded || weight_bytes < (2 << 30) - (1 << 20),
        "{weight_bytes} bytes of weights do not fit inside model.onnx (protobuf's 2 GiB limit): use external"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut g = GraphBuilder::new("matmul_chain");
    g.doc(&format!("{layers} MatMuls of {width}x{width} FP32 weights"));
    let names: Vec<String> = (0..layers).map(|k| format!("w{k}")).collect();
    if embedded {
        let mut rng = SeededRng::new(1);
        let d = width as i64;
        for name in &names {
            g.init_f32(name, &[d, d], &weights(&mut rng, width * width, width));
        }
    } else {
        write_weights(dir, &names, width, &mut g)?;
    }
    let d = width as i64;
    let mut x = g.input("x", elem::FLOAT, &[Dim::batch(), Dim::Fixed(d)]);
    for name in &names[..layers - 1] {
        x = g.node("MatMul", &[&x, name], vec![]);
    }
    g.node_to("MatMul", &[&x, &names[layers - 1]], &["y"], vec![]);
    g.output("y", elem::FLOAT, &[Dim::batch(), Dim::Fixed(d)]);
    let model = dir.join("model.onnx");
    std::fs::write(&model, g.to_bytes()).with_context(|| format!("writing {}", model.display()))?;
    println!(
        "{} ({weight_bytes} bytes of weights, {})",
        model.display(),
        if embedded { "embedded" } else { "external" }
    );
    Ok(())
}

/// Streams the weights to `dir/weights.bin` (page-aligned) and adds initializers referring to
/// them.
fn write_weights(
    dir: &Path,
    names: &[String],
    width: usize,
    g: &mut GraphBuilder,
) -> anyhow::Result<()> {
    let mut rng = SeededRng::new(1);
    let mut layout = ExternalLayout::new("weights.bin");
    let path = dir.join("weights.bin");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let d = width as i64;
    for name in names {
        let end = layout.len();
        let (tensor, offset) =
            layout.tensor(name, elem::FLOAT, &[d, d], (width * width * 4) as u64);
        out.write_all(&vec![0u8; (offset - end) as usize])?;
        for start in (0..width * width).step_by(CHUNK) {
            let n = CHUNK.min(width * width - start);
            out.write_all(&f32_bytes(&weights(&mut rng, n, width)))?;
        }
        g.initializer(tensor);
    }
    out.into_inner()?.sync_all()?;
    Ok(())
}

/// `n` weights uniform in ±√(3/`width`).
fn weights(rng: &mut SeededRng, n: usize, width: usize) -> Vec<f32> {
    let limit = (3.0 / width as f64).sqrt();
    (0..n).map(|_| rng.symmetric(limit) as f32).collect()
}
