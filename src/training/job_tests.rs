//! Unit tests of job parsing and validation.

use super::data::DataSource;
use super::job::{Activation, Loss, Optimizer, Schedule};
use super::{parse_job, TrainingError};
use crate::protocol::ErrorCode;

const EXAMPLE: &str = r#"{"id": "train-7", "model_name": "iris",
 "layers": [{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
 "loss": "sparse_categorical_crossentropy",
 "optimizer": {"type": "adam", "learning_rate": 0.01,
               "schedule": {"type": "exponential_decay", "decay_rate": 0.9, "decay_steps": 100}},
 "epochs": 50, "batch_size": 32, "validation_split": 0.2, "seed": 7,
 "early_stopping": {"patience": 5},
 "data": {"x": [[5.1, 3.5, 1.4, 0.2]], "y": [0]}}"#;

fn with(patch: &str) -> Result<super::TrainJob, TrainingError> {
    let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).expect("example");
    let p: serde_json::Value = serde_json::from_str(patch).expect("patch");
    for (k, val) in p.as_object().expect("object") {
        v[k] = val.clone();
    }
    parse_job(v.to_string().as_bytes())
}

fn field_error(patch: &str) -> String {
    let e = with(patch).expect_err(patch);
    assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
    e.to_string()
}

#[test]
fn parses_the_protocol_example() {
    let job = parse_job(EXAMPLE.as_bytes()).expect("valid");
    assert_eq!((job.id(), job.model_name().as_str()), ("train-7", "iris"));
    assert_eq!(job.layers[0].activation, Activation::Relu);
    assert_eq!(job.loss, Loss::SparseCategoricalCrossentropy);
    assert!(matches!(job.optimizer, Optimizer::Adam { .. }));
    assert_eq!(job.learning_rate, 0.01);
    assert_eq!(
        job.schedule,
        Schedule::ExponentialDecay {
            rate: 0.9,
            steps: 100.0,
            staircase: false
        }
    );
    assert_eq!((job.epochs, job.batch_size, job.seed), (50, 32, 7));
    assert_eq!(job.early_stopping.map(|e| e.patience), Some(5));
    assert!(matches!(job.data, DataSource::Inline(_)));
    assert_eq!(job.init_from_version(), None);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            r#"{"layers": [{"units": 3, "activation": "relux"}]}"#,
            "layers[0].activation",
        ),
        (r#"{"layers": []}"#, "layers"),
        (r#"{"layers": [{"units": 0}]}"#, "layers[0].units"),
        (r#"{"loss": "hinge"}"#, "loss"),
        (r#"{"optimizer": {"type": "rmsprop"}}"#, "optimizer.type"),
        (
            r#"{"optimizer": {"type": "sgd", "beta_1": 0.9}}"#,
            "optimizer.beta_1",
        ),
        (
            r#"{"optimizer": {"type": "adam", "learning_rate": -1}}"#,
            "optimizer.learning_rate",
        ),
        (
            r#"{"optimizer": {"type": "adam", "schedule": {"type": "cosine"}}}"#,
            "optimizer.schedule.type",
        ),
        (
            r#"{"optimizer": {"type": "adam", "schedule": {"type": "step_decay", "decay_rate": 0.5}}}"#,
            "optimizer.schedule.decay_epochs",
        ),
        (r#"{"epochs": 0}"#, "epochs"),
        (r#"{"batch_size": 0}"#, "batch_size"),
        (r#"{"validation_split": 1.0}"#, "validation_split"),
        (r#"{"model_name": "../etc"}"#, "model_name"),
        (
            r#"{"data": {"x": [[1, 2], [3]], "y": [0, 1]}}"#,
            "data.x[1]",
        ),
        (r#"{"data": {"x": [[1, "a"]], "y": [0]}}"#, "data.x[0][1]"),
        (r#"{"data": {"x": [[1, 2]], "y": [0, 1]}}"#, "data.y"),
        (r#"{"data": {"x": [], "y": []}}"#, "data.x"),
        (r#"{"data": {"x": [[1]], "y": ["a"]}}"#, "data.y[0]"),
        (
            r#"{"data": {"uri": "s3://bucket/train.csv", "format": "csv"}}"#,
            "object store URIs are not configured on this worker",
        ),
        (r#"{"data": {"uri": "file:///x.parquet"}}"#, "data.format"),
        (
            r#"{"data": {"uri": {"x": "file:///x.npy"}, "format": "npy"}}"#,
            "data.uri.y",
        ),
        (
            r#"{"init_from": {"model_version": [1]}}"#,
            "init_from.model_version",
        ),
    ];
    for (patch, field) in cases {
        let msg = field_error(patch);
        assert!(msg.contains(field), "{patch}: {msg}");
    }
}

#[test]
fn the_last_layer_must_fit_the_loss() {
    let msg = field_error(r#"{"layers": [{"units": 1, "activation": "softmax"}]}"#);
    assert!(
        msg.contains("layers[0]") && msg.contains("units >= 2"),
        "{msg}"
    );
    let msg = field_error(r#"{"layers": [{"units": 3, "activation": "relu"}]}"#);
    assert!(msg.contains("softmax"), "{msg}");
    let msg = field_error(r#"{"loss": "binary_crossentropy"}"#);
    assert!(msg.contains("sigmoid"), "{msg}");
    assert!(with(r#"{"loss": "mse", "layers": [{"units": 2}]}"#).is_ok());
}

#[test]
fn unknown_fields_and_bad_json_are_rejected() {
    assert!(field_error(r#"{"epoch": 3}"#).contains("epoch"));
    let e = parse_job(b"{not json").expect_err("bad json");
    assert!(matches!(e, TrainingError::BadJson(_)));
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
}

#[test]
fn defaults_and_init_from() {
    let job = parse_job(
        br#"{"id": "a", "model_name": "m", "layers": [{"units": 1}], "loss": "mse",
             "data": {"x": [[1]], "y": [2]}, "init_from": {"model_version": 3}}"#,
    )
    .expect("valid");
    assert_eq!(
        (job.epochs, job.batch_size, job.seed, job.shuffle),
        (10, 32, 0, true)
    );
    assert_eq!(job.learning_rate, 0.001);
    assert_eq!(job.init_from_version(), Some("3"));
    assert!(job.early_stopping.is_none());
}

#[test]
fn schedules_decay_as_documented() {
    let e = Schedule::ExponentialDecay {
        rate: 0.5,
        steps: 10.0,
        staircase: false,
    };
    assert!((e.rate(1.0, 5, 0) - 0.5f64.powf(0.5)).abs() < 1e-12);
    let s = Schedule::ExponentialDecay {
        rate: 0.5,
        steps: 10.0,
        staircase: true,
    };
    assert_eq!(s.rate(1.0, 19, 0), 0.5);
    let d = Schedule::StepDecay {
        rate: 0.1,
        epochs: 2,
    };
    assert_eq!((d.rate(1.0, 0, 1), d.rate(1.0, 0, 2)), (1.0, 0.1));
    assert_eq!(Schedule::Constant.rate(0.3, 1000, 99), 0.3);
}

#[test]
fn model_names_follow_the_one_rule() {
    let longest = "m".repeat(crate::protocol::ModelName::MAX_LEN);
    let job = with(&format!(r#"{{"model_name": "{longest}"}}"#)).expect("longest name");
    assert_eq!(job.model_name().as_str(), longest);
    let msg = field_error(&format!(r#"{{"model_name": "{longest}n"}}"#));
    assert!(
        msg.starts_with(r#"model_name: "mmm"#) && msg.contains("(129 bytes): expected 1-128"),
        "{msg}"
    );
}

#[test]
fn metric_labels_take_only_valid_model_names() {
    use super::job::metric_model_name;
    assert_eq!(metric_model_name("iris-2.v_1"), "iris-2.v_1");
    for bad in ["", ".hidden", "a b", "x\n", "é", &"m".repeat(129)] {
        assert_eq!(metric_model_name(bad), "", "{bad:?}");
    }
    assert_eq!(metric_model_name(&"m".repeat(128)).len(), 128);
}

#[test]
fn errors_quoting_producer_text_stay_under_one_kib() {
    let huge = "n".repeat(200_000);
    let base = r#"{"id":"t","model_name":"m","layers":[{"units":1}],"loss":"mse","data":{"x":[[1]],"y":[1]}"#;
    let bodies = [
        format!(r#"{base},"{huge}":1}}"#),
        base.replace(r#""model_name":"m""#, &format!(r#""model_name":"{huge}""#)) + "}",
        base.replace(r#""loss":"mse""#, &format!(r#""loss":"{huge}""#)) + "}",
        base.replace(r#""y":[1]}"#, &format!(r#""y":[1],"{huge}":1}}"#)) + "}",
        base.replace(
            r#""units":1}"#,
            &format!(r#""units":1,"activation":"{huge}"}}"#),
        ) + "}",
        format!(r#"{base},"init_from":{{"model_version":["{huge}"]}}}}"#),
    ];
    for body in bodies {
        let e = parse_job(body.as_bytes()).unwrap_err().to_string();
        assert!(e.len() <= 1024, "{} bytes: {}", e.len(), &e[..80]);
        assert!(e.contains("...") || e.contains('…'), "{}", &e[..80]);
    }
    let e = TrainingError::InvalidData {
        field: "é".repeat(100),
        message: "ü".repeat(1000),
    }
    .to_string();
    assert!(
        e.len() <= 1024 && e.is_char_boundary(e.len()),
        "{}",
        e.len()
    );
}
