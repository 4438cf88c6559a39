//! Warm-up batches: inputs for the batches a version runs before it is announced ready, so the
//! first job does not pay ONNX Runtime's first-run allocations and kernel selection (cuDNN's
//! algorithm search on GPUs). Triton's `model_warmup` is the model for this.
//!
//! Pure apart from reading a described input's file: builds tensors, runs nothing. Two kinds
//! ([`crate::repository::warmup`]):
//! - [`made_up_batches`]: zeros from the signature. A dynamic batch dimension (the first, `-1`,
//!   when every input has one) takes each batch size; a dynamic dimension with a name takes one
//!   value for that name across all inputs (the batch size where the name is the batch
//!   dimension's, else `length`: the model's first length bucket), so inputs that must agree do;
//!   any other dynamic dimension is `length` or 1. BYTES inputs are empty strings.
//! - [`described_batch`]: the operator's shapes and data, checked against the signature.

use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::protocol::tensor::checked_count;
use crate::protocol::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};
use crate::repository::warmup::{WarmupData, WarmupSample};
use crate::runtime::DimNames;

/// Largest warm-up input, in bytes (or BYTES elements): a shape past this is refused rather
/// than allocated.
pub const MAX_WARMUP_BYTES: usize = 1 << 30;

/// Why warm-up inputs could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarmupError {
    #[error("warm-up input {input} at batch size {batch} would hold {bytes} bytes (more than {MAX_WARMUP_BYTES})")]
    TooLarge {
        input: String,
        batch: usize,
        bytes: u128,
    },
    /// A described sample that does not fit the model; `key` names the config key.
    #[error("{key}: {message}")]
    Described { key: String, message: String },
}

/// The batch sizes to warm: each preferred size when there are some, else 1 and
/// `max_batch_size`; ascending, each once, none above `max_batch_size` (0: no batching, 1 row).
pub fn warmup_sizes(max_batch_size: usize, preferred: &[usize]) -> Vec<usize> {
    let cap = max_batch_size.max(1);
    let mut sizes: Vec<usize> = if preferred.is_empty() {
        vec![1, cap]
    } else {
        preferred.iter().map(|&s| s.clamp(1, cap)).collect()
    };
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// One batch of made-up zeros per size in `sizes` (a single batch when the model is not
/// batched; none when `sizes` is empty), with `(rows, inputs)` per batch. `names`: the session's dimension names, where it
/// reports them; `length`: the value of dynamic dimensions other than the batch (the model's
/// first length bucket), 1 when `None`.
pub fn made_up_batches(
    signature: &ModelSignature,
    names: Option<&DimNames>,
    length: Option<usize>,
    sizes: &[usize],
) -> Result<Vec<(usize, Vec<Tensor>)>, WarmupError> {
    if sizes.is_empty() {
        return Ok(Vec::new());
    }
    let batched = signature.inputs.iter().all(TensorSpec::is_batched);
    let sizes = if batched { sizes } else { &[1][..] };
    let name_of = |input: usize, dim: usize| -> Option<&str> {
        names?.inputs.get(input)?.get(dim)?.as_deref()
    };
    // The batch dimension's name, when the inputs give it one.
    let batch_name = match batched {
        true => (0..signature.inputs.len()).find_map(|i| name_of(i, 0)),
        false => None,
    };
    let other = length.unwrap_or(1).max(1);
    sizes
        .iter()
        .map(|&batch| {
            let tensors = signature
                .inputs
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    let shape: Vec<usize> = spec
                        .shape
                        .iter()
                        .enumerate()
                        .map(|(d, &dim)| match dim {
                            dim if dim >= 0 => dim as usize,
                            _ if d == 0 && batched => batch,
                            _ if batch_name.is_some() && name_of(i, d) == batch_name => batch,
                            _ => other,
                        })
                        .collect();
                    let data = zeros_of(spec, &shape, batch)?;
                    Ok(tensor(spec, shape, data))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((batch, tensors))
        })
        .collect()
}

/// The inputs of a described sample: each of the model's inputs at `[batch_size, dims...]`
/// when the version is `batched`, else at `dims`, with the sample's data; `sample_index`: its
/// place in `config.toml`, for the error's key and the random seed.
pub fn described_batch(
    signature: &ModelSignature,
    sample: &WarmupSample,
    sample_index: usize,
    batched: bool,
) -> Result<Vec<Tensor>, WarmupError> {
    let refused = |key: String, message: String| WarmupError::Described { key, message };
    let key = format!("warmup[{sample_index}]");
    if !batched && sample.batch_size != 1 {
        return Err(refused(
            format!("{key}.batch_size"),
            format!("expected 1 (the version is not batched: max_batch_size is 0 or its inputs have no dynamic first dimension), got {}", sample.batch_size),
        ));
    }
    let known: Vec<&str> = signature.inputs.iter().map(|s| s.name.as_str()).collect();
    if let Some(extra) = sample.inputs.keys().find(|n| !known.contains(&n.as_str())) {
        return Err(refused(
            format!("{key}.inputs.{extra}"),
            format!(
                "the model has no input {extra:?} (its inputs: {})",
                known.join(", ")
            ),
        ));
    }
    signature
        .inputs
        .iter()
        .map(|spec| {
            let key = format!("{key}.inputs.{}", spec.name);
            let Some(input) = sample.inputs.get(&spec.name) else {
                return Err(refused(
                    key,
                    "missing: a described warm-up gives every input of the model".into(),
                ));
            };
            if let Some(given) = input.data_type.filter(|&t| t != spec.datatype) {
                return Err(refused(
                    format!("{key}.data_type"),
                    format!("the model's input is {}, got {given}", spec.datatype),
                ));
            }
            let shape: Vec<usize> = match batched {
                true => std::iter::once(sample.batch_size)
                    .chain(input.dims.iter().copied())
                    .collect(),
                false => input.dims.clone(),
            };
            let fits = shape.len() == spec.shape.len()
                && shape
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&d, &s)| s < 0 || d as i64 == s);
            if !fits {
                let batch = if batched {
                    " with the batch size in front"
                } else {
                    ""
                };
                return Err(refused(
                    format!("{key}.dims"),
                    format!(
                        "the model's input has shape {:?}, got {shape:?}{batch}",
                        spec.shape
                    ),
                ));
            }
            let data = match &input.data {
                WarmupData::Zero => zeros_of(spec, &shape, sample.batch_size)?,
                WarmupData::Random => random_of(spec, &shape, sample.batch_size, sample_index)?,
                WarmupData::File(path) => file_of(spec, &shape, path)
                    .map_err(|message| refused(format!("{key}.input_data_file"), message))?,
            };
            Ok(tensor(spec, shape, data))
        })
        .collect()
}

fn tensor(spec: &TensorSpec, shape: Vec<usize>, data: TensorData) -> Tensor {
    Tensor {
        name: spec.name.clone(),
        datatype: spec.datatype,
        shape,
        data,
    }
}

/// Elements of `shape`, refused past [`MAX_WARMUP_BYTES`].
fn count_of(spec: &TensorSpec, shape: &[usize], batch: usize) -> Result<usize, WarmupError> {
    let width = spec.datatype.element_size().unwrap_or(1);
    let too_large = |bytes: u128| WarmupError::TooLarge {
        input: spec.name.clone(),
        batch,
        bytes,
    };
    let count = checked_count(shape).ok_or_else(|| too_large(u128::MAX))?;
    let bytes = count as u128 * width as u128;
    if bytes > MAX_WARMUP_BYTES as u128 {
        return Err(too_large(bytes));
    }
    Ok(count)
}

fn zeros_of(spec: &TensorSpec, shape: &[usize], batch: usize) -> Result<TensorData, WarmupError> {
    let count = count_of(spec, shape, batch)?;
    Ok(match spec.datatype.element_size() {
        Some(width) => TensorData::Fixed(vec![0; count * width]),
        None => TensorData::Bytes(vec![Vec::new(); count]),
    })
}

/// Reproducible values: floats uniform in [0, 1), integers in [0, 16), booleans either, BYTES
/// eight lowercase letters; seeded by the sample and the input, so every load runs the same.
fn random_of(
    spec: &TensorSpec,
    shape: &[usize],
    batch: usize,
    sample_index: usize,
) -> Result<TensorData, WarmupError> {
    let count = count_of(spec, shape, batch)?;
    let seed = spec.name.bytes().fold(sample_index as u64, |h, b| {
        h.wrapping_mul(0x100_0000_01b3).wrapping_add(b as u64)
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    if spec.datatype == DataType::Bytes {
        let word = |rng: &mut SmallRng| (0..8).map(|_| rng.random_range(b'a'..=b'z')).collect();
        return Ok(TensorData::Bytes(
            (0..count).map(|_| word(&mut rng)).collect(),
        ));
    }
    let mut bytes = Vec::with_capacity(count * spec.datatype.element_size().unwrap_or(1));
    for _ in 0..count {
        let int = rng.random_range(0u8..16);
        let float: f64 = rng.random();
        match spec.datatype {
            DataType::Bool => bytes.push(int & 1),
            DataType::U8 | DataType::I8 => bytes.push(int),
            DataType::U16 | DataType::I16 => bytes.extend((int as u16).to_le_bytes()),
            DataType::U32 | DataType::I32 => bytes.extend((int as u32).to_le_bytes()),
            DataType::U64 | DataType::I64 => bytes.extend((int as u64).to_le_bytes()),
            DataType::F16 => bytes.extend(half::f16::from_f64(float).to_le_bytes()),
            DataType::F32 => bytes.extend((float as f32).to_le_bytes()),
            DataType::F64 => bytes.extend(float.to_le_bytes()),
            DataType::Bytes => unreachable!("BYTES returned above"),
        }
    }
    Ok(TensorData::Fixed(bytes))
}

/// The file's values, which must be exactly the elements of `shape`.
fn file_of(spec: &TensorSpec, shape: &[usize], path: &Path) -> Result<TensorData, String> {
    let count = count_of(spec, shape, 1).map_err(|e| e.to_string())?;
    let show = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{show}: {e}"))?
        .len();
    if size > MAX_WARMUP_BYTES as u64 {
        return Err(format!(
            "{show} holds {size} bytes, more than {MAX_WARMUP_BYTES}"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{show}: {e}"))?;
    let Some(width) = spec.datatype.element_size() else {
        return length_prefixed(&bytes, count)
            .map(TensorData::Bytes)
            .map_err(|e| format!("{show}: {e}"));
    };
    if bytes.len() != count * width {
        return Err(format!(
            "{show} holds {} bytes, expected {} ({count} {} values of shape {shape:?})",
            bytes.len(),
            count * width,
            spec.datatype
        ));
    }
    Ok(TensorData::Fixed(bytes))
}

/// `count` strings, each a 4-byte little-endian length and its bytes, filling `bytes` exactly.
fn length_prefixed(mut bytes: &[u8], count: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut items = Vec::with_capacity(count.min(bytes.len() / 4));
    for i in 0..count {
        let (length, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| {
            format!("element {i} of {count}: the file ends before its 4-byte length")
        })?;
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            return Err(format!(
                "element {i} of {count}: {length} bytes announced, {} left",
                rest.len()
            ));
        }
        items.push(rest[..length].to_vec());
        bytes = &rest[length..];
    }
    if !bytes.is_empty() {
        return Err(format!(
            "{} bytes left after the {count} elements of the shape",
            bytes.len()
        ));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn signature(inputs: Vec<TensorSpec>) -> ModelSignature {
        ModelSignature {
            inputs,
            outputs: vec![],
        }
    }

    #[test]
    fn sizes_are_one_and_the_largest_or_the_preferred() {
        let cases: [(usize, &[usize], &[usize]); 6] = [
            (64, &[], &[1, 64]),
            (1, &[], &[1]),
            (0, &[], &[1]),
            (64, &[32, 8, 32], &[8, 32]),
            (16, &[32, 4], &[4, 16]),
            (0, &[4], &[1]),
        ];
        for (max, preferred, expected) in cases {
            assert_eq!(
                warmup_sizes(max, preferred),
                expected,
                "max {max}, preferred {preferred:?}"
            );
        }
    }

    fn names(inputs: &[&[Option<&str>]]) -> DimNames {
        DimNames {
            inputs: inputs
                .iter()
                .map(|dims| dims.iter().map(|d| d.map(str::to_owned)).collect())
                .collect(),
            outputs: vec![],
        }
    }

    /// Every datatype gets zeros of its width; BYTES gets empty strings; dynamic dimensions
    /// other than the batch are 1 without a length.
    #[test]
    fn every_input_gets_zeros_of_its_shape_and_type() {
        let all = DataType::ALL;
        let inputs = all
            .iter()
            .map(|&dt| spec(dt.as_str(), dt, &[-1, 3, -1]))
            .collect();
        let batches = made_up_batches(&signature(inputs), None, None, &[1, 4]).unwrap();
        assert_eq!(batches.len(), 2);
        for ((rows, batch), expected_rows) in batches.iter().zip([1, 4]) {
            assert_eq!(*rows, expected_rows);
            for (tensor, dt) in batch.iter().zip(all) {
                assert_eq!((tensor.datatype, &tensor.shape), (dt, &vec![*rows, 3, 1]));
                match (&tensor.data, dt.element_size()) {
                    (TensorData::Fixed(bytes), Some(width)) => {
                        assert_eq!(bytes.len(), rows * 3 * width);
                        assert!(bytes.iter().all(|&b| b == 0));
                    }
                    (TensorData::Bytes(items), None) => {
                        assert_eq!(items.len(), rows * 3);
                        assert!(items.iter().all(Vec::is_empty));
                    }
                    other => panic!("{dt}: {other:?}"),
                }
            }
        }
    }

    /// A name shared by inputs takes one value: the batch size where it names the batch
    /// dimension, else the length; unnamed dynamic dimensions take the length too.
    #[test]
    fn named_dimensions_agree_across_inputs() {
        let sig = signature(vec![
            spec("ids", DataType::I64, &[-1, -1]),
            spec("mask", DataType::I64, &[-1, -1]),
            spec("state", DataType::F32, &[2, -1, 8]),
        ]);
        // `state` has no dynamic first dimension: not batched, one batch, batch size 1.
        let seq = Some("seq");
        let dims = names(&[
            &[Some("b"), seq],
            &[Some("b"), seq],
            &[None, Some("b"), None],
        ]);
        let batches = made_up_batches(&sig, Some(&dims), Some(16), &[1, 8]).unwrap();
        let shapes: Vec<_> = batches[0].1.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(batches.len(), 1);
        assert_eq!(shapes, [vec![16, 16], vec![16, 16], vec![2, 16, 8]]);
        // Batched: the batch name is the batch size wherever it appears.
        let sig = signature(vec![
            spec("ids", DataType::I64, &[-1, -1]),
            spec("past", DataType::F32, &[2, -1, -1]),
        ]);
        let sig = ModelSignature {
            inputs: vec![
                sig.inputs[0].clone(),
                TensorSpec {
                    shape: vec![-1, -1, 4],
                    ..sig.inputs[1].clone()
                },
            ],
            outputs: vec![],
        };
        let dims = names(&[
            &[Some("batch"), Some("seq")],
            &[Some("batch"), Some("batch"), None],
        ]);
        let batches = made_up_batches(&sig, Some(&dims), Some(16), &[1, 8]).unwrap();
        let shapes: Vec<_> = batches[1].1.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(batches[1].0, 8);
        assert_eq!(shapes, [vec![8, 16], vec![8, 8, 4]]);
    }

    #[test]
    fn an_unbatched_model_gets_one_batch_at_its_own_shape() {
        let sig = signature(vec![
            spec("fixed", DataType::F32, &[2, 3]),
            spec("rows", DataType::I64, &[-1]),
        ]);
        let batches = made_up_batches(&sig, None, None, &[1, 64]).unwrap();
        assert_eq!(batches.len(), 1);
        let shapes: Vec<_> = batches[0].1.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(shapes, [vec![2, 3], vec![1]]);
        // No sizes (warm-up off): no batch, batched or not.
        assert!(made_up_batches(&sig, None, None, &[]).unwrap().is_empty());
        let scalar = made_up_batches(
            &signature(vec![spec("s", DataType::F64, &[])]),
            None,
            None,
            &[8],
        );
        assert_eq!(scalar.unwrap()[0].1[0].shape, Vec::<usize>::new());
    }

    #[test]
    fn a_huge_shape_is_refused_naming_the_input() {
        let sig = signature(vec![spec("image", DataType::F32, &[-1, 3, 4096, 4096])]);
        let error = made_up_batches(&sig, None, None, &[1, 64]).unwrap_err();
        assert_eq!(
            error,
            WarmupError::TooLarge {
                input: "image".into(),
                batch: 64,
                bytes: 64 * 3 * 4096 * 4096 * 4
            }
        );
        let overflow = signature(vec![spec("x", DataType::U8, &[i64::MAX, i64::MAX])]);
        assert!(made_up_batches(&overflow, None, None, &[1]).is_err());
    }

    fn sample(inputs: &[(&str, &[usize], WarmupData)]) -> WarmupSample {
        WarmupSample {
            name: "s".into(),
            batch_size: 1,
            count: 1,
            inputs: inputs
                .iter()
                .map(|(name, dims, data)| {
                    let input = crate::repository::warmup::WarmupInput {
                        dims: dims.to_vec(),
                        data_type: None,
                        data: data.clone(),
                    };
                    (name.to_string(), input)
                })
                .collect(),
        }
    }

    /// The voice-activity model's shape of inputs: a float chunk, a state, a scalar rate from
    /// a file; random values are the same at every load.
    #[test]
    fn a_described_sample_gives_each_input_its_shape_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let rate = dir.path().join("sr.bin");
        std::fs::write(&rate, 16000i64.to_le_bytes()).unwrap();
        let sig = signature(vec![
            spec("input", DataType::F32, &[-1, -1]),
            spec("state", DataType::F32, &[2, -1, 128]),
            spec("sr", DataType::I64, &[]),
        ]);
        let described = sample(&[
            ("input", &[1, 512], WarmupData::Random),
            ("state", &[2, 1, 128], WarmupData::Zero),
            ("sr", &[], WarmupData::File(rate.clone())),
        ]);
        let batch = described_batch(&sig, &described, 0, false).unwrap();
        let shapes: Vec<_> = batch.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(shapes, [vec![1, 512], vec![2, 1, 128], vec![]]);
        let chunk = batch[0].to_f32_vec().unwrap();
        assert!(chunk.iter().all(|v| (0.0..1.0).contains(v)) && chunk.iter().any(|&v| v > 0.0));
        assert_eq!(
            batch[2].data,
            TensorData::Fixed(16000i64.to_le_bytes().to_vec())
        );
        assert_eq!(described_batch(&sig, &described, 0, false).unwrap(), batch);
        assert_ne!(
            described_batch(&sig, &described, 1, false).unwrap()[0],
            batch[0]
        );
    }

    #[test]
    fn a_batched_sample_gets_its_rows_in_front() {
        let sig = signature(vec![
            spec("x", DataType::I32, &[-1, 4]),
            spec("t", DataType::Bytes, &[-1]),
        ]);
        let mut described = sample(&[
            ("x", &[4], WarmupData::Random),
            ("t", &[], WarmupData::Random),
        ]);
        described.batch_size = 3;
        let batch = described_batch(&sig, &described, 0, true).unwrap();
        assert_eq!(
            (batch[0].shape.clone(), batch[1].shape.clone()),
            (vec![3, 4], vec![3])
        );
        let TensorData::Bytes(words) = &batch[1].data else {
            panic!()
        };
        assert!(words.iter().all(|w| w.len() == 8));
    }

    #[test]
    fn a_sample_that_does_not_fit_the_model_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.bin");
        std::fs::write(&short, [0u8; 12]).unwrap();
        let strings = dir.path().join("strings.bin");
        let mut two = Vec::new();
        for word in [&b"ab"[..], b"c"] {
            two.extend((word.len() as u32).to_le_bytes());
            two.extend(word);
        }
        std::fs::write(&strings, &two).unwrap();
        let sig = signature(vec![
            spec("x", DataType::F32, &[-1, 4]),
            spec("t", DataType::Bytes, &[2]),
        ]);
        let zero = WarmupData::Zero;
        let cases: Vec<(WarmupSample, bool, &str)> = vec![
            (
                sample(&[("x", &[4], zero.clone())]),
                true,
                "warmup[0].inputs.t: missing",
            ),
            (
                sample(&[
                    ("x", &[4], zero.clone()),
                    ("t", &[2], zero.clone()),
                    ("y", &[], zero.clone()),
                ]),
                true,
                "warmup[0].inputs.y: the model has no input",
            ),
            (
                sample(&[("x", &[5], zero.clone()), ("t", &[2], zero.clone())]),
                true,
                "warmup[0].inputs.x.dims: the model's input has shape [-1, 4], got [1, 5]",
            ),
            (
                sample(&[("x", &[1, 4], zero.clone()), ("t", &[2], zero.clone())]),
                false,
                "expected 1",
            ),
            (
                sample(&[
                    ("x", &[4], WarmupData::File(short)),
                    ("t", &[2], zero.clone()),
                ]),
                true,
                "holds 12 bytes, expected 16",
            ),
            (
                sample(&[
                    ("x", &[4], WarmupData::File(dir.path().join("none"))),
                    ("t", &[2], zero.clone()),
                ]),
                true,
                "warmup[0].inputs.x.input_data_file",
            ),
        ];
        for (mut described, batched, needle) in cases {
            if !batched {
                described.batch_size = 2;
            }
            let error = described_batch(&sig, &described, 0, batched)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
        // `t` has no batch dimension, so the version is not batched: inputs are their dims.
        let mut typed = sample(&[
            ("x", &[1, 4], zero.clone()),
            ("t", &[2], WarmupData::File(strings)),
        ]);
        let batch = described_batch(&sig, &typed, 0, false).unwrap();
        assert_eq!(
            batch[1].data,
            TensorData::Bytes(vec![b"ab".to_vec(), b"c".to_vec()])
        );
        typed.inputs.get_mut("x").unwrap().data_type = Some(DataType::F64);
        let error = described_batch(&sig, &typed, 0, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("warmup[0].inputs.x.data_type: the model's input is FP32, got FP64"),
            "{error}"
        );
        assert!(length_prefixed(&two[..5], 2).is_err() && length_prefixed(&two, 1).is_err());
    }
}
