use super::*;
use crate::protocol::{DataType, TensorSpec};
use crate::runtime::memory::LimitSource;

const MIB: u64 = 1 << 20;

fn spec(datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: "t".into(),
        datatype,
        shape: shape.to_vec(),
    }
}

fn limit(bytes: u64) -> MemoryLimit {
    MemoryLimit {
        bytes,
        source: LimitSource::Configured,
    }
}

#[test]
fn batch_bytes_count_inputs_and_outputs() {
    let chain = ModelSignature {
        inputs: vec![spec(DataType::F32, &[-1, 4096])],
        outputs: vec![spec(DataType::F32, &[-1, 4096])],
    };
    assert_eq!(batch_io_bytes(&chain, 32), MIB);
    let mixed = ModelSignature {
        inputs: vec![
            spec(DataType::Bytes, &[-1, 2]),
            spec(DataType::I64, &[3, -1]),
        ],
        outputs: vec![spec(DataType::F16, &[])],
    };
    assert_eq!(batch_io_bytes(&mixed, 10), 10 * 2 * 64 + 3 * 8 + 2);
    let huge = ModelSignature {
        inputs: vec![spec(DataType::F64, &[-1, i64::MAX, i64::MAX])],
        outputs: vec![],
    };
    assert_eq!(batch_io_bytes(&huge, 64), u64::MAX);
}

/// The estimate bounds what was measured (admission module table) for every model there.
#[test]
fn the_estimate_bounds_the_measured_figures() {
    // (weights, largest tensor, instances, batch io bytes, measured peak above the process's
    // baseline, MiB)
    let measured = [
        (0, 0, 4, 64 * 8 * 4, 5.0),
        (5 * MIB, 4 * MIB, 4, 64 * 266 * 4, 29.3),
        (384 * MIB, 64 * MIB, 4, MIB, 452.6),
        (384 * MIB, 64 * MIB, 1, MIB, 452.6),
    ];
    for (weights, largest, instances, io, peak) in measured {
        let need = VersionNeed::estimate(weights, largest, 1, instances, io);
        assert!(
            need.total() as f64 >= peak * MIB as f64,
            "{need} below {peak} MiB"
        );
        assert!(
            (need.total() as f64) < 2.5 * peak.max(40.0) * MIB as f64,
            "{need} is far above {peak} MiB"
        );
    }
}

#[test]
fn a_version_fits_only_within_what_is_left() {
    let need = VersionNeed::estimate(100 * MIB, 10 * MIB, 1, 2, 0);
    assert_eq!(need.total(), (100 + 10 + 16 + 2 * 8) * MIB);
    assert_eq!(need.resident(), (100 + 16 + 2 * 8) * MIB);
    let total = need.total();
    let cases = [
        (total, 0, true),
        (total, 1, false),
        (total + 500, 500, true),
        (total - 1, 0, false),
        (10, 20, false),
        (u64::MAX, u64::MAX - total, true),
    ];
    for (bytes, in_use, fits) in cases {
        assert_eq!(
            admit("m", &need, &limit(bytes), in_use).is_ok(),
            fits,
            "limit {bytes}, in use {in_use}"
        );
    }
}

#[test]
fn a_refusal_names_the_model_the_need_and_the_limit() {
    let need = VersionNeed::estimate(2 << 30, 64 * MIB, 1, 4, MIB);
    let error = admit("large", &need, &limit(1 << 30), 100).unwrap_err();
    assert_eq!(error.free, (1 << 30) - 100);
    assert_eq!(
        error.to_string(),
        format!(
            "model large needs {} bytes (weights 2147483648, 67108864 more while loading, 1 session(s) × 16777216, 4 instance(s) × 16777216), but the worker may use 1073741824 bytes (runtime.memory_limit) and loaded versions hold 100 bytes, leaving 1073741724",
            need.total()
        )
    );
}
