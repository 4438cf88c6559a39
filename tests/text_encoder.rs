//! The bundled `encoder` on ONNX Runtime: what a plain f64 Rust reference computes from the
//! weights in the file, unit-norm embeddings of tokenized sentences, and padding that changes
//! nothing: a sequence padded with `[PAD]` and mask 0, and a padded batch of sequences of 8 to
//! 128 tokens, embed as each sequence alone (within 1e-5).
//!
//! Reference tolerance as in `models_reproducible.rs`: |ort - reference| <= 1e-5 + 1e-4 *
//! |reference|.

use std::path::Path;

use infermq::execution::padding::{PadLiteral, PadPlan, PadValue, SymbolicTensor};
use infermq::onnx::{decode_model, initializer_f32, ModelProto};
use infermq::protocol::{DataType, Tensor};
use infermq::runtime::{Backend, OrtBackend, SessionOptions};
use infermq::tokenizer::{TextLimits, Tokenizer};
use infermq::training::encoder::{FFN, HEADS, HIDDEN, LAYERS, MASK_BIAS};
use infermq::training::rng::SeededRng;

fn model_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/encoder/1")
}

fn model_bytes() -> Vec<u8> {
    std::fs::read(model_dir().join("model.onnx")).expect("models/encoder/1/model.onnx")
}

fn backend(bytes: &[u8]) -> OrtBackend {
    infermq::runtime::env::init(None).expect("ONNX Runtime loads");
    OrtBackend::load(bytes, &SessionOptions::cpu()).expect("the encoder loads")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(
        &model_dir().join("tokenizer.json"),
        128,
        TextLimits::default(),
    )
    .expect("the encoder's tokenizer loads")
}

/// Runs `[rows, len]` ids and mask; returns the embeddings, row-major.
fn embed(b: &mut OrtBackend, ids: &[i64], mask: &[i64], rows: usize) -> Vec<f32> {
    let len = ids.len() / rows;
    let out = b
        .infer(&[
            Tensor::from_i64("input_ids", vec![rows, len], ids),
            Tensor::from_i64("attention_mask", vec![rows, len], mask),
        ])
        .expect("runs");
    assert_eq!(out[0].name, "embedding");
    assert_eq!(out[0].shape, vec![rows, HIDDEN]);
    out[0].to_f32_vec().expect("FP32")
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// The largest |a - b| relative to b's L2 norm (1 for an embedding).
fn max_relative(a: &[f32], b: &[f32]) -> f64 {
    let largest = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max);
    largest / norm(b).max(f64::MIN_POSITIVE)
}

/// `a + b`, row by row (a residual connection).
fn add(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    a.iter()
        .zip(b)
        .map(|(r, s)| r.iter().zip(s).map(|(u, v)| u + v).collect())
        .collect()
}

/// The encoder in f64 from the weights in `model` (see `src/training/encoder.rs`).
struct Reference {
    model: ModelProto,
}

impl Reference {
    fn w(&self, name: &str) -> Vec<f64> {
        let (_, v) = initializer_f32(&self.model, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        v.into_iter().map(f64::from).collect()
    }

    fn dense(&self, name: &str, x: &[Vec<f64>], outputs: usize) -> Vec<Vec<f64>> {
        let (w, b) = (
            self.w(&format!("{name}.weight")),
            self.w(&format!("{name}.bias")),
        );
        x.iter()
            .map(|row| {
                (0..outputs)
                    .map(|o| {
                        b[o] + row
                            .iter()
                            .enumerate()
                            .map(|(i, v)| v * w[i * outputs + o])
                            .sum::<f64>()
                    })
                    .collect()
            })
            .collect()
    }

    fn layer_norm(&self, name: &str, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let (s, b) = (
            self.w(&format!("{name}.scale")),
            self.w(&format!("{name}.bias")),
        );
        x.iter()
            .map(|row| {
                let mean = row.iter().sum::<f64>() / row.len() as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / row.len() as f64;
                let inv = 1.0 / (var + 1e-5).sqrt();
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) * inv * s[i] + b[i])
                    .collect()
            })
            .collect()
    }

    fn attention(&self, layer: usize, x: &[Vec<f64>], keep: &[f64]) -> Vec<Vec<f64>> {
        let p = |n: &str| format!("layer{layer}.{n}");
        let (q, k, v) = (
            self.dense(&p("query"), x, HIDDEN),
            self.dense(&p("key"), x, HIDDEN),
            self.dense(&p("value"), x, HIDDEN),
        );
        let d = HIDDEN / HEADS;
        let mut context = vec![vec![0.0; HIDDEN]; x.len()];
        for h in 0..HEADS {
            for i in 0..x.len() {
                let scores: Vec<f64> = (0..x.len())
                    .map(|j| {
                        let dot: f64 = (0..d).map(|c| q[i][h * d + c] * k[j][h * d + c]).sum();
                        dot * 0.25 + (keep[j] - 1.0) * -(MASK_BIAS as f64)
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    context[i][h * d + c] = (0..x.len()).map(|j| e[j] / z * v[j][h * d + c]).sum();
                }
            }
        }
        self.dense(&p("output"), &context, HIDDEN)
    }

    /// One sequence's embedding.
    fn embed(&self, ids: &[i64], mask: &[i64]) -> Vec<f64> {
        let vocab = initializer_f32(&self.model, "embeddings.token").unwrap().0[0];
        let (tokens, positions) = (self.w("embeddings.token"), self.w("embeddings.position"));
        let x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(pos, &id)| {
                let id = if (0..vocab).contains(&id) {
                    id as usize
                } else {
                    1
                };
                (0..HIDDEN)
                    .map(|c| tokens[id * HIDDEN + c] + positions[pos * HIDDEN + c])
                    .collect()
            })
            .collect();
        let keep: Vec<f64> = mask.iter().map(|&m| f64::from(u8::from(m != 0))).collect();
        let mut x = self.layer_norm("embeddings.norm", &x);
        for layer in 0..LAYERS {
            let p = |n: &str| format!("layer{layer}.{n}");
            let a = self.attention(layer, &x, &keep);
            x = self.layer_norm(&p("attention_norm"), &add(&x, &a));
            let h: Vec<Vec<f64>> = self
                .dense(&p("ffn_in"), &x, FFN)
                .into_iter()
                .map(|r| r.into_iter().map(|v| v.max(0.0)).collect())
                .collect();
            let h = self.dense(&p("ffn_out"), &h, HIDDEN);
            x = self.layer_norm(&p("ffn_norm"), &add(&x, &h));
        }
        let count = keep.iter().sum::<f64>().max(1.0);
        let mean: Vec<f64> = (0..HIDDEN)
            .map(|c| x.iter().zip(&keep).map(|(r, k)| r[c] * k).sum::<f64>() / count)
            .collect();
        let n = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        mean.iter().map(|v| v / n).collect()
    }
}

#[test]
fn the_encoder_computes_its_reference() {
    let bytes = model_bytes();
    let reference = Reference {
        model: decode_model(&bytes).expect("decodes"),
    };
    let mut rng = SeededRng::new(9);
    let (rows, len) = (3, 9);
    let mut ids: Vec<i64> = (0..rows * len).map(|_| rng.below(2048) as i64).collect();
    ids[4] = -5; // outside the vocabulary: read as [UNK]
    ids[13] = 1 << 40;
    let mut mask = vec![1i64; rows * len];
    mask[len - 2..len].fill(0); // row 0 ends in two padded tokens
    mask[2 * len + 3] = 7; // any non-zero value keeps a token
    let got = embed(&mut backend(&bytes), &ids, &mask, rows);
    for r in 0..rows {
        let want = reference.embed(&ids[r * len..(r + 1) * len], &mask[r * len..(r + 1) * len]);
        for (c, (&g, &w)) in got[r * HIDDEN..(r + 1) * HIDDEN]
            .iter()
            .zip(&want)
            .enumerate()
        {
            assert!(
                (g as f64 - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "row {r} [{c}]: ort {g} vs reference {w}"
            );
        }
    }
}

#[test]
fn a_tokenized_sentence_embeds_with_norm_one_and_padding_changes_nothing() {
    let t = tokenizer();
    let text = Tensor::from_bytes(
        "text",
        vec![1],
        vec![b"And God said, Let there be light: and there was light.".to_vec()],
    );
    let tokens = t.encode(&text, "inputs[0]", false).expect("tokenizes");
    let mut b = backend(&model_bytes());
    let alone = embed(&mut b, &tokens.input_ids, &tokens.attention_mask, 1);
    assert!((norm(&alone) - 1.0).abs() < 1e-5, "norm {}", norm(&alone));
    let pad = 40 - tokens.length;
    let mut ids = tokens.input_ids.clone();
    ids.extend(std::iter::repeat_n(0, pad));
    let mut mask = tokens.attention_mask.clone();
    mask.extend(std::iter::repeat_n(0, pad));
    let padded = embed(&mut b, &ids, &mask, 1);
    let diff = max_relative(&padded, &alone);
    eprintln!("padded to 40 tokens: largest relative difference {diff:e}");
    assert!(diff <= 1e-5, "padding changed the embedding by {diff:e}");
    // An all-padding row embeds as zeros, not NaN.
    let empty = embed(&mut b, &[0, 0], &[0, 0], 1);
    assert!(empty.iter().all(|&v| v == 0.0), "{empty:?}");
}

/// 32 sequences of 8 to 128 tokens as one batch padded by `execution::padding`, against each alone.
#[test]
fn a_padded_batch_embeds_each_sequence_as_it_embeds_alone() {
    let mut rng = SeededRng::new(21);
    let vocab = tokenizer().vocab_size();
    let jobs: Vec<[Tensor; 2]> = (0..32)
        .map(|_| {
            let len = 8 + rng.below(121);
            let ids: Vec<i64> = (0..len).map(|_| rng.below(vocab) as i64).collect();
            [
                Tensor::from_i64("input_ids", vec![1, len], &ids),
                Tensor::from_i64("attention_mask", vec![1, len], &vec![1; len]),
            ]
        })
        .collect();
    // The encoder's signature: both inputs and nothing of the output along `sequence`.
    let seq = [Some("batch"), Some("sequence")];
    let zero = PadValue::new(DataType::I64, &PadLiteral::Int(0)).unwrap();
    let input = |name| (SymbolicTensor { name, dims: &seq }, Some(zero.clone()));
    let embedding = SymbolicTensor {
        name: "embedding",
        dims: &[Some("batch"), None],
    };
    let plan =
        PadPlan::new(&[input("input_ids"), input("attention_mask")], &[embedding]).expect("a plan");
    let slices: Vec<&[Tensor]> = jobs.iter().map(|j| &j[..]).collect();
    let lengths: Vec<Vec<usize>> = jobs.iter().map(|j| plan.lengths(j).unwrap()).collect();
    let per_job: Vec<&[usize]> = lengths.iter().map(|l| &l[..]).collect();
    let inputs = plan.pad_batch(&slices, &per_job).expect("pads");
    let longest = lengths.iter().map(|l| l[0]).max();
    let mut b = backend(&model_bytes());
    let batch = b.infer(&inputs).expect("the padded batch runs");
    let shapes: Vec<(usize, &[usize])> = lengths.iter().map(|l| (1, &l[..])).collect();
    let answers = plan.cut_batch(&batch, &shapes).expect("cuts");
    let mut worst = 0.0f64;
    for (job, answer) in jobs.iter().zip(&answers) {
        let alone = b.infer(job).expect("runs alone");
        let diff = max_relative(
            &answer[0].to_f32_vec().unwrap(),
            &alone[0].to_f32_vec().unwrap(),
        );
        worst = worst.max(diff);
    }
    eprintln!("32 jobs padded to {longest:?}: largest relative difference {worst:e}");
    assert!(worst <= 1e-5, "a padded answer differs by {worst:e}");
}
