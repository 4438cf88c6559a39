use std::path::Path;

use prost::Message;

use super::*;
use crate::onnx::external::externalize;
use crate::onnx::proto::{elem, ModelProto, StringStringEntryProto};
use crate::onnx::{Dim, GraphBuilder};

/// `x[N,2] · w[2,3]`, `w` external in `weights.bin` (24 bytes at offset 0).
fn model() -> (ModelProto, Vec<u8>) {
    let mut g = GraphBuilder::new("t");
    g.init_f32("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let x = g.input("x", elem::FLOAT, &[Dim::batch(), Dim::Fixed(2)]);
    let y = g.node("MatMul", &[&x, "w"], vec![]);
    g.output(&y, elem::FLOAT, &[Dim::batch(), Dim::Fixed(3)]);
    let mut model = g.into_model();
    let weights = externalize(&mut model, "weights.bin", 1);
    (model, weights)
}

/// Sets entry `key` of the external initializer to `value`.
fn set(model: &mut ModelProto, key: &str, value: &str) {
    let tensor = &mut model.graph.as_mut().unwrap().initializer[0];
    tensor.external_data.retain(|e| e.key != key);
    tensor.external_data.push(StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    });
}

/// Writes `<tmp>/model/1/model.onnx` and `weights.bin` beside it; returns the model's path.
fn write(root: &Path, model: &ModelProto, weights: &[u8]) -> std::path::PathBuf {
    let dir = root.join("model").join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("weights.bin"), weights).unwrap();
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
    dir.join("model.onnx")
}

#[test]
fn a_model_with_external_data_lists_its_file_and_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, weights) = model();
    let path = write(tmp.path(), &model, &weights);
    let files = check_version(&path).unwrap();
    let expected = path
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap()
        .join("weights.bin");
    assert_eq!(files.external, vec![expected]);
    assert_eq!((files.embedded_bytes, files.external_bytes), (0, 24));
    assert_eq!(files.largest_bytes, 24);
    assert_eq!(files.weight_bytes(), 24);
}

#[test]
fn embedded_weights_are_counted_without_external_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.onnx");
    let mut g = GraphBuilder::new("t");
    g.init_f32("w", &[4, 4], &[0.5; 16]);
    std::fs::write(&path, g.to_bytes()).unwrap();
    let files = check_version(&path).unwrap();
    assert_eq!(
        files,
        VersionFiles {
            embedded_bytes: 64,
            largest_bytes: 64,
            ..Default::default()
        }
    );
}

#[test]
fn a_file_in_a_subdirectory_is_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut model, weights) = model();
    set(&mut model, "location", "./data/weights.bin");
    let path = write(tmp.path(), &model, &[]);
    let data = path.parent().unwrap().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("weights.bin"), &weights).unwrap();
    assert_eq!(check_version(&path).unwrap().external_bytes, 24);
}

/// Each refusal names the tensor and the location as written.
#[test]
fn locations_outside_the_version_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, weights) = model();
    let outside = tmp.path().join("model.bin");
    std::fs::write(&outside, &weights).unwrap();
    let cases = [
        ("/etc/passwd", "is absolute"),
        ("../../model.bin", "leaves the version directory"),
        ("data/../weights.bin", "leaves the version directory"),
        ("link.bin", "leaves the version directory"),
        ("*/_ORT_MEM_ADDR_/*", "No such file"),
        ("missing.bin", "No such file"),
        (".", "is not a regular file"),
    ];
    for (location, expected) in cases {
        let mut model = model.clone();
        set(&mut model, "location", location);
        let path = write(tmp.path(), &model, &weights);
        let link = path.parent().unwrap().join("link.bin");
        if !link.exists() {
            std::os::unix::fs::symlink(&outside, &link).unwrap();
        }
        let error = check_version(&path).unwrap_err().to_string();
        assert!(
            error.starts_with("tensor \"w\": external data"),
            "{location}: {error}"
        );
        assert!(
            error.contains(&format!("{location:?}")),
            "{location}: {error}"
        );
        assert!(error.contains(expected), "{location}: {error}");
    }
}

#[test]
fn extents_past_the_end_or_of_the_wrong_length_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, weights) = model();
    let cases = [
        (
            ("offset", "8"),
            "bytes 8..32 run past the file's end (24 bytes)",
        ),
        (
            ("length", "20"),
            "has length 20, its type and shape need 24 bytes",
        ),
        (
            ("length", "18446744073709551615"),
            "run past the file's end",
        ),
        (
            ("offset", "x"),
            "external_data offset \"x\" is not a byte count",
        ),
    ];
    for ((key, value), expected) in cases {
        let mut model = model.clone();
        set(&mut model, key, value);
        let error = check_version(&write(tmp.path(), &model, &weights)).unwrap_err();
        assert!(
            error.to_string().contains(expected),
            "{key}={value}: {error}"
        );
        assert!(error.to_string().contains("tensor \"w\""), "{error}");
    }
    // The file shorter than the tensor, the entries right.
    let error = check_version(&write(tmp.path(), &model, &weights[..20])).unwrap_err();
    assert_eq!(error.kind(), "external_data_extent");
}

#[test]
fn a_file_that_is_not_a_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.onnx");
    std::fs::write(&path, [0xff; 16]).unwrap();
    let error = check_version(&path).unwrap_err();
    assert_eq!(error.kind(), "model_unreadable");
    assert!(check_version(&tmp.path().join("none.onnx")).is_err());
}
