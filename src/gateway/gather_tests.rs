use super::*;

fn iris() -> ModelInfo {
    ModelInfo::parse(
        br#"{"name":"iris","versions":["1"],"platform":"onnxruntime_onnx",
        "inputs":[{"name":"input","datatype":"FP32","shape":[-1,4]}],
        "outputs":[{"name":"probabilities","datatype":"FP32","shape":[-1,3]}],
        "max_batch_size":8}"#,
    )
    .unwrap()
}

fn traits(header_len: Option<usize>) -> Traits<'static> {
    Traits {
        model: "iris",
        path_version: None,
        own_deadline: false,
        binary_header_len: header_len,
        tenant: None,
    }
}

fn json_rows(rows: usize) -> String {
    let data = vec!["1.5"; rows * 4].join(",");
    format!(
        r#"{{"id":"a","inputs":[{{"name":"input","shape":[{rows},4],"datatype":"FP32","data":[{data}]}}]}}"#
    )
}

#[test]
fn metadata_without_a_batch_size_or_a_batch_dimension_does_not_gather() {
    let mut info = iris();
    assert!(info.batchable());
    info.max_batch_size = 0;
    assert!(!info.batchable());
    let old = br#"{"name":"iris","versions":["1"],"inputs":[{"name":"input","datatype":"FP32","shape":[-1,4]}],"outputs":[]}"#;
    assert_eq!(ModelInfo::parse(old).map(|i| i.max_batch_size), Some(0));
    let mut fixed = iris();
    fixed.signature.outputs[0].shape = vec![1, 3];
    assert!(!fixed.batchable());
    assert_eq!(ModelInfo::parse(b"not json"), None);
    let bad_type = br#"{"inputs":[{"name":"a","datatype":"FP33","shape":[-1]}],"outputs":[]}"#;
    assert_eq!(ModelInfo::parse(bad_type), None);
}

#[test]
fn who_gathers_and_who_goes_alone() {
    let info = iris();
    let solo = |t: Traits<'_>, body: &str| match prepare(t, body.as_bytes(), &info, 1 << 20) {
        Prepared::Solo(reason) => Some(reason),
        _ => None,
    };
    let ok = json_rows(1);
    assert_eq!(solo(traits(None), &ok), None);
    let tight = Traits {
        own_deadline: true,
        ..traits(None)
    };
    assert_eq!(solo(tight, &ok), Some(Solo::OwnDeadline));
    assert_eq!(solo(traits(None), "{\"inputs\":"), Some(Solo::Undecodable));
    let extra = ok.replace("]}]}", "]}],\"parameters\":{\"priority\":1}}");
    assert_eq!(solo(traits(None), &extra), Some(Solo::Parameters));
    let version = ok.replace("]}]}", "]}],\"parameters\":{\"model_version\":\"1\"}}");
    assert_eq!(solo(traits(None), &version), Some(Solo::Version));
    let v1 = Traits {
        path_version: Some("1"),
        ..traits(None)
    };
    assert_eq!(solo(v1, &version), None);
    let input_param = ok.replace(
        "\"datatype\"",
        "\"parameters\":{\"shared_memory_region\":\"r\"},\"datatype\"",
    );
    assert_eq!(solo(traits(None), &input_param), Some(Solo::Parameters));
    assert_eq!(solo(traits(None), &json_rows(9)), Some(Solo::TooLarge));
    assert_eq!(solo(traits(None), &json_rows(8)), None);
    let mut unbatched = info.clone();
    unbatched.max_batch_size = 1;
    assert!(matches!(
        prepare(traits(None), ok.as_bytes(), &unbatched, 1 << 20),
        Prepared::Solo(Solo::NotBatchable)
    ));
    assert!(matches!(
        prepare(traits(None), ok.as_bytes(), &info, 8),
        Prepared::Solo(Solo::TooLarge)
    ));
}

#[test]
fn what_the_worker_refuses_is_refused_with_its_id_and_error() {
    let info = iris();
    let body =
        r#"{"id":"e2","inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    match prepare(traits(None), body.as_bytes(), &info, 1 << 20) {
        Prepared::Refuse { id, error } => {
            assert_eq!(id.as_deref(), Some("e2"));
            assert_eq!(
                error.to_string(),
                "inputs[0] (\"input\").shape[1]: model expects 4, got 3"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn keys_differ_by_version_shape_outputs_and_tenant() {
    let info = ModelInfo::parse(
        br#"{"inputs":[{"name":"t","datatype":"FP32","shape":[-1,-1]}],
        "outputs":[{"name":"o","datatype":"FP32","shape":[-1,-1]},{"name":"p","datatype":"FP32","shape":[-1]}],
        "max_batch_size":8}"#,
    )
    .unwrap();
    let key = |t: Traits<'_>, body: &str| match prepare(t, body.as_bytes(), &info, 1 << 20) {
        Prepared::Gather(c) => c.key,
        other => panic!("{other:?}"),
    };
    let two = r#"{"inputs":[{"name":"t","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
    let three = r#"{"inputs":[{"name":"t","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    let only_p = r#"{"inputs":[{"name":"t","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"p"}]}"#;
    let a = key(traits(None), two);
    assert_eq!(a.row_shapes, vec![vec![2]]);
    assert_ne!(a, key(traits(None), three));
    assert_ne!(a, key(traits(None), only_p));
    let v2 = Traits {
        path_version: Some("2"),
        ..traits(None)
    };
    assert_eq!(key(v2, two).version.as_deref(), Some("2"));
    assert_ne!(a, key(v2, two));
    // Each job is stamped with one tenant: two keys' requests never share one.
    let team = |name| Traits {
        tenant: Some(name),
        ..traits(None)
    };
    assert_eq!(key(team("a"), two).tenant.as_deref(), Some("a"));
    assert_eq!(key(team("a"), two), key(team("a"), two));
    assert_ne!(key(team("a"), two), key(team("b"), two));
    assert_ne!(a, key(team("a"), two));
}
