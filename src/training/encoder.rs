//! The bundled `encoder`: a small transformer text encoder with seeded weights, built as an
//! ONNX graph (opset 17, ops that ONNX Runtime's CPU provider runs).
//!
//! `input_ids` and `attention_mask` INT64 `[batch, sequence]` → `embedding` FP32 `[batch, 64]`:
//! token and position embeddings, layer norm, [`LAYERS`] post-norm blocks (4-head
//! self-attention with the mask as an additive bias of -10 000 on padded keys, then a ReLU
//! feed-forward block, each with a residual and a layer norm), mean pooling over the tokens
//! whose mask is not 0, and L2 normalisation. Ids outside the vocabulary read as `[UNK]`; any
//! non-zero mask value counts as 1; a row whose mask is all 0 embeds as zeros. A padded token
//! (mask 0) changes nothing of the other tokens' outputs: its attention weight is exactly 0.
//!
//! Parameter names (read back by `tests/text_encoder.rs`): `embeddings.token` `[vocab, 64]`,
//! `embeddings.position` `[128, 64]`, `embeddings.norm.{scale,bias}`, and per block `i`
//! `layer{i}.{query,key,value,output,ffn_in,ffn_out}.{weight,bias}` (weights `[in, out]`) and
//! `layer{i}.{attention_norm,ffn_norm}.{scale,bias}`.

use super::rng::SeededRng;
use crate::onnx::builder::{attr_int, attr_ints, Dim, GraphBuilder};
use crate::onnx::proto::elem;

/// Seed of the weights.
pub const ENCODER_SEED: u64 = 21;
/// Width of every token vector and of the embedding.
pub const HIDDEN: usize = 64;
/// Attention heads (each `HIDDEN / HEADS` = 16 wide).
pub const HEADS: usize = 4;
/// Transformer blocks.
pub const LAYERS: usize = 2;
/// Width of the feed-forward block.
pub const FFN: usize = 128;
/// Longest sequence (position embeddings).
pub const MAX_POSITIONS: usize = 128;
/// What a padded key adds to the attention scores.
pub const MASK_BIAS: f32 = -10_000.0;

/// Builds the model for a vocabulary of `vocab` tokens, reading unknown ids as `unk`.
pub fn encoder(vocab: usize, unk: i64) -> Vec<u8> {
    let mut rng = SeededRng::new(ENCODER_SEED);
    let mut g = GraphBuilder::new("encoder");
    g.doc(
        "Seeded 2-layer transformer text encoder (64 wide, 4 heads, 128 positions): input_ids \
         and attention_mask [batch, sequence] -> L2-normalised mean-pooled embedding [batch, 64]",
    );
    let seq = [Dim::batch(), Dim::Dynamic("sequence".to_string())];
    let ids = g.input("input_ids", elem::INT64, &seq);
    let mask = g.input("attention_mask", elem::INT64, &seq);
    let ids = known_ids(&mut g, &ids, vocab, unk);
    let mut x = embeddings(&mut g, &mut rng, &ids, vocab);
    let keep = g.node("Cast", &[&mask], vec![attr_int("to", elem::BOOL as i64)]);
    let keep = g.node("Cast", &[&keep], vec![attr_int("to", elem::FLOAT as i64)]);
    let one = g.init_f32("one", &[], &[1.0]);
    let bias = attention_bias(&mut g, &keep, &one);
    for layer in 0..LAYERS {
        x = block(&mut g, &mut rng, layer, &x, &bias);
    }
    pool(&mut g, &x, &keep, &one, "embedding");
    g.output(
        "embedding",
        elem::FLOAT,
        &[Dim::batch(), Dim::Fixed(HIDDEN as i64)],
    );
    g.metadata("infermq.max_sequence_length", &MAX_POSITIONS.to_string());
    g.to_bytes()
}

/// `ids` where `0 <= id < vocab`, else `unk`.
fn known_ids(g: &mut GraphBuilder, ids: &str, vocab: usize, unk: i64) -> String {
    let size = g.init_i64("vocab_size", &[], &[vocab as i64]);
    let zero = g.init_i64("zero_id", &[], &[0]);
    let unk = g.init_i64("unk_id", &[], &[unk]);
    let below = g.node("Less", &[ids, &size], vec![]);
    let non_negative = g.node("GreaterOrEqual", &[ids, &zero], vec![]);
    let known = g.node("And", &[&below, &non_negative], vec![]);
    g.node("Where", &[&known, ids, &unk], vec![])
}

/// Token plus position embeddings, layer-normed: `[batch, sequence, HIDDEN]`.
fn embeddings(g: &mut GraphBuilder, rng: &mut SeededRng, ids: &str, vocab: usize) -> String {
    let tokens = uniform(rng, vocab * HIDDEN, 1.0);
    let table = g.init_f32("embeddings.token", &[vocab as i64, HIDDEN as i64], &tokens);
    let positions = uniform(rng, MAX_POSITIONS * HIDDEN, 1.0);
    let positions = g.init_f32(
        "embeddings.position",
        &[MAX_POSITIONS as i64, HIDDEN as i64],
        &positions,
    );
    let tok = g.node("Gather", &[&table, ids], vec![attr_int("axis", 0)]);
    let len = g.node(
        "Shape",
        &[ids],
        vec![attr_int("start", 1), attr_int("end", 2)],
    );
    let origin = g.init_i64("position_start", &[1], &[0]);
    let pos = g.node("Slice", &[&positions, &origin, &len, &origin], vec![]);
    let sum = g.node("Add", &[&tok, &pos], vec![]);
    layer_norm(g, rng, "embeddings.norm", &sum)
}

/// `[batch, 1, 1, sequence]`: 0 where the mask keeps a token, [`MASK_BIAS`] where it pads.
fn attention_bias(g: &mut GraphBuilder, keep: &str, one: &str) -> String {
    let scale = g.init_f32("mask_bias", &[], &[-MASK_BIAS]);
    let dropped = g.node("Sub", &[keep, one], vec![]);
    let bias = g.node("Mul", &[&dropped, &scale], vec![]);
    let axes = g.init_i64("bias_axes", &[2], &[1, 2]);
    g.node("Unsqueeze", &[&bias, &axes], vec![])
}

/// One post-norm transformer block.
fn block(g: &mut GraphBuilder, rng: &mut SeededRng, layer: usize, x: &str, bias: &str) -> String {
    let p = |name: &str| format!("layer{layer}.{name}");
    let q = dense(g, rng, &p("query"), x, HIDDEN, HIDDEN);
    let k = dense(g, rng, &p("key"), x, HIDDEN, HIDDEN);
    let v = dense(g, rng, &p("value"), x, HIDDEN, HIDDEN);
    let q = split_heads(g, &q, &[0, 2, 1, 3]);
    let k = split_heads(g, &k, &[0, 2, 3, 1]);
    let v = split_heads(g, &v, &[0, 2, 1, 3]);
    let scores = g.node("MatMul", &[&q, &k], vec![]);
    let scale = g.init_f32(&p("attention_scale"), &[], &[0.25]);
    let scores = g.node("Mul", &[&scores, &scale], vec![]);
    let scores = g.node("Add", &[&scores, bias], vec![]);
    let weights = g.node("Softmax", &[&scores], vec![attr_int("axis", -1)]);
    let context = g.node("MatMul", &[&weights, &v], vec![]);
    let context = g.node(
        "Transpose",
        &[&context],
        vec![attr_ints("perm", &[0, 2, 1, 3])],
    );
    let shape = g.init_i64(&p("merge_heads"), &[3], &[0, 0, HIDDEN as i64]);
    let context = g.node("Reshape", &[&context, &shape], vec![]);
    let attended = dense(g, rng, &p("output"), &context, HIDDEN, HIDDEN);
    let x = g.node("Add", &[x, &attended], vec![]);
    let x = layer_norm(g, rng, &p("attention_norm"), &x);
    let h = dense(g, rng, &p("ffn_in"), &x, HIDDEN, FFN);
    let h = g.node("Relu", &[&h], vec![]);
    let h = dense(g, rng, &p("ffn_out"), &h, FFN, HIDDEN);
    let x = g.node("Add", &[&x, &h], vec![]);
    layer_norm(g, rng, &p("ffn_norm"), &x)
}

/// `[batch, sequence, HIDDEN]` → `[batch, HEADS, …]` in the order `perm` gives.
fn split_heads(g: &mut GraphBuilder, x: &str, perm: &[i64]) -> String {
    let name = g.fresh("split_heads");
    let shape = g.init_i64(&name, &[4], &[0, 0, HEADS as i64, (HIDDEN / HEADS) as i64]);
    let heads = g.node("Reshape", &[x, &shape], vec![]);
    g.node("Transpose", &[&heads], vec![attr_ints("perm", perm)])
}

/// `x · weight + bias`, Glorot-uniform weight `[inputs, outputs]`, small uniform bias.
fn dense(
    g: &mut GraphBuilder,
    rng: &mut SeededRng,
    name: &str,
    x: &str,
    inputs: usize,
    outputs: usize,
) -> String {
    let w = rng.glorot_uniform(inputs, outputs);
    let b = uniform(rng, outputs, 0.1);
    let w = g.init_f32(
        &format!("{name}.weight"),
        &[inputs as i64, outputs as i64],
        &w,
    );
    let b = g.init_f32(&format!("{name}.bias"), &[outputs as i64], &b);
    let y = g.node("MatMul", &[x, &w], vec![]);
    g.node("Add", &[&y, &b], vec![])
}

/// Layer normalisation over the last axis (ε = 1e-5, ONNX's default), with a scale near 1 and
/// a bias near 0.
fn layer_norm(g: &mut GraphBuilder, rng: &mut SeededRng, name: &str, x: &str) -> String {
    let scale: Vec<f32> = uniform(rng, HIDDEN, 0.1).iter().map(|v| 1.0 + v).collect();
    let bias = uniform(rng, HIDDEN, 0.1);
    let s = g.init_f32(&format!("{name}.scale"), &[HIDDEN as i64], &scale);
    let b = g.init_f32(&format!("{name}.bias"), &[HIDDEN as i64], &bias);
    g.node(
        "LayerNormalization",
        &[x, &s, &b],
        vec![attr_int("axis", -1)],
    )
}

/// Mean of the kept tokens' vectors (`one`: the scalar 1), L2-normalised, written to `output`.
fn pool(g: &mut GraphBuilder, x: &str, keep: &str, one: &str, output: &str) {
    let axis = g.init_i64("token_axis", &[1], &[1]);
    let axis2 = g.init_i64("feature_axis", &[1], &[2]);
    let keep3 = g.node("Unsqueeze", &[keep, &axis2], vec![]);
    let kept = g.node("Mul", &[x, &keep3], vec![]);
    let sum = g.node("ReduceSum", &[&kept, &axis], vec![attr_int("keepdims", 0)]);
    let count = g.node("ReduceSum", &[keep, &axis], vec![attr_int("keepdims", 1)]);
    let count = g.node("Max", &[&count, one], vec![]);
    let mean = g.node("Div", &[&sum, &count], vec![]);
    let norm = g.node(
        "ReduceL2",
        &[&mean],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
    );
    let tiny = g.init_f32("tiny", &[], &[1e-12]);
    let norm = g.node("Max", &[&norm, &tiny], vec![]);
    g.node_to("Div", &[&mean, &norm], &[output], vec![]);
}

/// `n` values uniform in `[-limit, limit)`.
fn uniform(rng: &mut SeededRng, n: usize, limit: f64) -> Vec<f32> {
    (0..n).map(|_| rng.symmetric(limit) as f32).collect()
}
