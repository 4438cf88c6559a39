//! Warm-up batches: zeros for each input of a model at the batch sizes a version will see, run
//! before the version is announced ready so the first job does not pay ONNX Runtime's first-run
//! allocations and kernel selection (cuDNN's algorithm search on GPUs). Triton's
//! `model_warmup` is the model for this.
//!
//! Pure: builds tensors, runs nothing. A dynamic batch dimension (the first, `-1`) takes each
//! batch size; any other dynamic dimension is 1; fixed dimensions are kept. A model whose
//! inputs are not all batched gets one batch at its own shape. BYTES inputs are empty strings.

use crate::protocol::tensor::checked_count;
use crate::protocol::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

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

/// One batch of zeros per size in `sizes` (a single batch when the model is not batched).
pub fn warmup_batches(
    signature: &ModelSignature,
    sizes: &[usize],
) -> Result<Vec<Vec<Tensor>>, WarmupError> {
    let batched = signature.inputs.iter().all(TensorSpec::is_batched);
    let sizes = if batched { sizes } else { &[1][..] };
    sizes
        .iter()
        .map(|&batch| {
            signature
                .inputs
                .iter()
                .map(|spec| zeros(spec, batch, batched))
                .collect()
        })
        .collect()
}

/// Zeros of `spec` with `batch` rows (when `batched`).
fn zeros(spec: &TensorSpec, batch: usize, batched: bool) -> Result<Tensor, WarmupError> {
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            -1 if i == 0 && batched => batch,
            d if d >= 0 => d as usize,
            _ => 1,
        })
        .collect();
    let width = spec.datatype.element_size().unwrap_or(1);
    let too_large = |bytes: u128| WarmupError::TooLarge {
        input: spec.name.clone(),
        batch,
        bytes,
    };
    let count = checked_count(&shape).ok_or_else(|| too_large(u128::MAX))?;
    let bytes = count as u128 * width as u128;
    if bytes > MAX_WARMUP_BYTES as u128 {
        return Err(too_large(bytes));
    }
    let data = match spec.datatype {
        DataType::Bytes => TensorData::Bytes(vec![Vec::new(); count]),
        _ => TensorData::Fixed(vec![0; bytes as usize]),
    };
    Ok(Tensor {
        name: spec.name.clone(),
        datatype: spec.datatype,
        shape,
        data,
    })
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

    /// Every datatype gets zeros of its width; BYTES gets empty strings; dynamic dimensions
    /// other than the batch are 1.
    #[test]
    fn every_input_gets_zeros_of_its_shape_and_type() {
        let all = DataType::ALL;
        let inputs = all
            .iter()
            .map(|&dt| spec(dt.as_str(), dt, &[-1, 3, -1]))
            .collect();
        let batches = warmup_batches(&signature(inputs), &[1, 4]).unwrap();
        assert_eq!(batches.len(), 2);
        for (batch, rows) in batches.iter().zip([1, 4]) {
            for (tensor, dt) in batch.iter().zip(all) {
                assert_eq!((tensor.datatype, &tensor.shape), (dt, &vec![rows, 3, 1]));
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

    #[test]
    fn an_unbatched_model_gets_one_batch_at_its_own_shape() {
        let sig = signature(vec![
            spec("fixed", DataType::F32, &[2, 3]),
            spec("rows", DataType::I64, &[-1]),
        ]);
        let batches = warmup_batches(&sig, &[1, 64]).unwrap();
        assert_eq!(batches.len(), 1);
        let shapes: Vec<_> = batches[0].iter().map(|t| t.shape.clone()).collect();
        assert_eq!(shapes, [vec![2, 3], vec![1]]);
        let scalar = warmup_batches(&signature(vec![spec("s", DataType::F64, &[])]), &[8]);
        assert_eq!(scalar.unwrap()[0][0].shape, Vec::<usize>::new());
    }

    #[test]
    fn a_huge_shape_is_refused_naming_the_input() {
        let sig = signature(vec![spec("image", DataType::F32, &[-1, 3, 4096, 4096])]);
        let error = warmup_batches(&sig, &[1, 64]).unwrap_err();
        assert_eq!(
            error,
            WarmupError::TooLarge {
                input: "image".into(),
                batch: 64,
                bytes: 64 * 3 * 4096 * 4096 * 4
            }
        );
        let overflow = signature(vec![spec("x", DataType::U8, &[i64::MAX, i64::MAX])]);
        assert!(warmup_batches(&overflow, &[1]).is_err());
    }
}
