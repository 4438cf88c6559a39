//! Tests of model admission: name patterns and signature comparison.

use super::*;

fn t(name: &str, datatype: &str, dims: &[i64]) -> TensorSignature {
    TensorSignature {
        name: name.to_string(),
        datatype: datatype.to_string(),
        dims: dims.to_vec(),
    }
}

fn iris() -> Signature {
    Signature {
        inputs: vec![t("input", "FP32", &[-1, 4])],
        outputs: vec![t("probabilities", "FP32", &[-1, 3])],
    }
}

#[test]
fn globs_match_whole_names() {
    let cases = [
        ("team-a-*", "team-a-iris", true),
        ("team-a-*", "team-a-", true),
        ("team-a-*", "team-b-iris", false),
        ("team-a-*", "xteam-a-iris", false),
        ("*-prod", "iris-prod", true),
        ("*-prod", "iris-prod2", false),
        ("iris?", "iris2", true),
        ("iris?", "iris", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("*", "", true),
        ("iris", "iris", true),
        ("iris", "Iris", false),
    ];
    for (pattern, name, want) in cases {
        assert_eq!(glob_match(pattern, name), want, "{pattern} ~ {name}");
    }
}

#[test]
fn allowed_models_refuse_other_names_naming_the_key() {
    assert!(check_allowed(&[], "anything").is_ok());
    let patterns = vec!["team-a-*".to_string(), "shared".to_string()];
    assert!(check_allowed(&patterns, "team-a-x").is_ok());
    assert!(check_allowed(&patterns, "shared").is_ok());
    let e = check_allowed(&patterns, "team-b-x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "model_name: \"team-b-x\" matches none of training.allowed_models"
    );
    assert_eq!(e.code(), crate::protocol::ErrorCode::InvalidRequest);
}

#[test]
fn a_new_version_takes_the_served_names_and_must_keep_the_shape() {
    let served = iris();
    let same = produced_signature(Some(&served), 4, 3);
    assert_eq!(same, served);
    assert!(check_signature("iris", &served, &same).is_ok());
    let regression = produced_signature(Some(&served), 4, 1);
    let e = check_signature("iris", &served, &regression)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "model_name: \"iris\" serves output \"probabilities\" FP32 [-1, 3]; \
         this job would produce \"probabilities\" FP32 [-1, 1]"
    );
    let wider = produced_signature(Some(&served), 5, 3);
    let e = check_signature("iris", &served, &wider)
        .unwrap_err()
        .to_string();
    assert!(e.contains("serves input \"input\" FP32 [-1, 4]"), "{e}");
    // A fresh model gets the default names.
    let fresh = produced_signature(None, 2, 1);
    assert_eq!(fresh.inputs[0].name, "input");
    assert_eq!(fresh.outputs[0].name, "output");
}

#[test]
fn names_datatypes_and_counts_are_compared_but_not_the_batch_dimension() {
    let served = Signature {
        inputs: vec![t("ids", "INT64", &[-1, 8]), t("mask", "BOOL", &[-1, 8])],
        outputs: vec![t("y", "FP32", &[-1, 1])],
    };
    let produced = produced_signature(Some(&served), 8, 1);
    let e = check_signature("mixed", &served, &produced)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "model_name: \"mixed\" serves inputs \"ids\" INT64 [-1, 8], \"mask\" BOOL [-1, 8]; \
         this job would produce \"input\" FP32 [-1, 8]"
    );
    let fixed_batch = Signature {
        inputs: vec![t("input", "FP32", &[1, 4])],
        outputs: vec![t("output", "FP32", &[1, 3])],
    };
    assert!(check_signature("m", &fixed_batch, &produced_signature(None, 4, 3)).is_ok());
    let fp64 = Signature {
        inputs: vec![t("input", "FP64", &[-1, 4])],
        outputs: vec![t("output", "FP32", &[-1, 3])],
    };
    let e = check_signature("m", &fp64, &produced_signature(Some(&fp64), 4, 3))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"input\" FP64 [-1, 4]; this job would produce \"input\" FP32"),
        "{e}"
    );
}

#[test]
fn the_served_signature_is_read_from_the_newest_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ModelStore::new(dir.path(), vec![]);
    assert_eq!(served_signature(&store, "none").expect("no model"), None);
    let one = produced_signature(None, 2, 1);
    let net = crate::training::graph::Network {
        inputs: 2,
        layers: vec![crate::training::job::Layer {
            units: 1,
            activation: crate::training::job::Activation::Linear,
        }],
        loss: crate::training::job::Loss::Mse,
    };
    let params = vec![vec![0.0; 2], vec![0.0]];
    let bytes = net.inference_model(&params, "x", "y", &[], "");
    store.write_version("m", &bytes).expect("written");
    let sig = served_signature(&store, "m")
        .expect("readable")
        .expect("present");
    assert_eq!(sig.inputs[0].name, "x");
    assert_eq!(sig.outputs[0].dims, one.outputs[0].dims);
    store.write_version("m", b"garbage").expect("written");
    let e = served_signature(&store, "m").unwrap_err().to_string();
    assert!(
        e.starts_with("model_name: \"m\": the newest version cannot be read"),
        "{e}"
    );
}

#[test]
fn long_names_are_echoed_bounded() {
    let long = "x".repeat(10_000);
    let e = check_allowed(&["a".to_string()], &long)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 300, "{}", e.len());
}
