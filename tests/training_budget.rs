//! The training budget inside the engine, on ONNX Runtime without a broker: the wall-time limit,
//! the progress rate, the history bound, the served signature and file data over budget.

use std::time::{Duration, Instant};

use infermq::onnx::{decode_model, signature};
use infermq::training::{
    parse_job, train_within, Budget, CpuSessions, DataLimits, EpochReport, Rules, TrainingError,
};

fn two_rows(epochs: u64) -> infermq::training::TrainJob {
    let body = serde_json::json!({
        "id": "long", "model_name": "m",
        "layers": [{"units": 1}], "loss": "mse",
        "optimizer": {"type": "sgd", "learning_rate": 0.01},
        "epochs": epochs, "batch_size": 2,
        "data": {"x": [[0.0], [1.0]], "y": [1.0, 3.0]}
    });
    parse_job(body.to_string().as_bytes()).expect("valid job")
}

fn rules(budget: Budget) -> Rules {
    Rules {
        budget,
        ..Rules::unrestricted()
    }
}

fn run(
    job: &infermq::training::TrainJob,
    rules: &Rules,
) -> (
    Result<infermq::training::TrainOutcome, TrainingError>,
    Vec<(Instant, usize)>,
) {
    let mut sent = Vec::new();
    let mut progress = |r: &EpochReport| sent.push((Instant::now(), r.epoch));
    let sessions = CpuSessions {
        intra_threads: Some(1),
    };
    let outcome = train_within(job, rules, None, &sessions, &mut progress, &|| false);
    (outcome, sent)
}

#[test]
fn a_million_epochs_end_at_the_duration_limit_with_few_progress_messages() {
    let budget = Budget {
        max_duration: Duration::from_millis(1500),
        progress_interval: Duration::from_millis(250),
        ..Budget::default()
    };
    let started = Instant::now();
    let (outcome, sent) = run(&two_rows(1_000_000), &rules(budget));
    let took = started.elapsed();
    let error = outcome.expect_err("a million epochs take longer than 1.5 s");
    let message = error.to_string();
    assert!(
        message.starts_with("epochs: exceeded training.max_duration_ms = 1500 after "),
        "{message}"
    );
    assert_eq!(error.code(), infermq::protocol::ErrorCode::InvalidRequest);
    assert!(took < Duration::from_secs(10), "ended after {took:?}");
    // The first epoch, then one per 250 ms: at most 1500 / 250 + 1 of them.
    assert_eq!(sent[0].1, 1);
    assert!(sent.len() <= 7, "{} progress messages", sent.len());
    for pair in sent.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= Duration::from_millis(250));
    }
}

#[test]
fn a_long_run_reports_first_and_last_and_keeps_a_bounded_history() {
    let budget = Budget {
        progress_interval: Duration::from_secs(3600),
        max_history: 50,
        ..Budget::default()
    };
    let (outcome, sent) = run(&two_rows(3000), &rules(budget));
    let outcome = outcome.expect("trains");
    let epochs: Vec<usize> = sent.iter().map(|(_, e)| *e).collect();
    assert_eq!(epochs, vec![1, 3000], "only the first and the last");
    let history: Vec<usize> = outcome.history.iter().map(|r| r.epoch).collect();
    assert_eq!(history.len(), 50);
    assert_eq!((history[0], history[49]), (1, 3000));
    let body = serde_json::to_vec(&outcome.history).expect("serialises");
    assert!(body.len() < 16 * 1024, "{} bytes", body.len());
    // Unlimited, as tools use it: every epoch reported and kept.
    let (outcome, sent) = run(&two_rows(30), &Rules::unrestricted());
    assert_eq!(
        (sent.len(), outcome.expect("trains").history.len()),
        (30, 30)
    );
}

#[test]
fn file_data_over_budget_is_refused_before_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("wide.csv");
    let header: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
    let row = vec!["1"; 101].join(",");
    std::fs::write(&csv, format!("{},y\n{row}\n", header.join(","))).expect("written");
    let body = serde_json::json!({
        "id": "wide", "model_name": "m", "layers": [{"units": 1000}, {"units": 1}], "loss": "mse",
        "data": {"uri": format!("file://{}", csv.display())}
    });
    let job = parse_job(body.to_string().as_bytes()).expect("valid job");
    let budget = Budget {
        max_parameters: 100_000,
        ..Budget::default()
    };
    let rules = Rules {
        data: DataLimits::unrestricted(),
        budget,
        served: None,
    };
    let (outcome, sent) = run(&job, &rules);
    let message = outcome.expect_err("over budget").to_string();
    assert_eq!(
        message,
        "layers: 102,001 parameters exceed training.max_parameters = 100000"
    );
    assert!(sent.is_empty());
}

#[test]
fn a_new_version_keeps_the_served_names_or_is_refused() {
    let served = |input: &str, output: &str, units: usize| {
        let net = infermq::training::graph::Network {
            inputs: 1,
            layers: vec![infermq::training::job::Layer {
                units,
                activation: infermq::training::job::Activation::Linear,
            }],
            loss: infermq::training::job::Loss::Mse,
        };
        let params = vec![vec![0.0; units], vec![0.0; units]];
        let bytes = net.inference_model(&params, input, output, &[], "");
        signature(&decode_model(&bytes).expect("decodes")).expect("signature")
    };
    let same = Rules {
        served: Some(served("x", "y", 1)),
        ..Rules::unrestricted()
    };
    let (outcome, _) = run(&two_rows(2), &same);
    let model = decode_model(&outcome.expect("trains").model).expect("decodes");
    assert_eq!(signature(&model).expect("signature"), served("x", "y", 1));
    let other = Rules {
        served: Some(served("x", "y", 3)),
        ..Rules::unrestricted()
    };
    let (outcome, sent) = run(&two_rows(2), &other);
    assert_eq!(
        outcome.expect_err("another shape").to_string(),
        "model_name: \"m\" serves output \"y\" FP32 [-1, 3]; this job would produce \"y\" FP32 [-1, 1]"
    );
    assert!(sent.is_empty());
}
