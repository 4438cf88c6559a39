//! Tests of the training budget: each limit, the progress rate, the history bound.

use std::time::{Duration, Instant};

use super::*;
use crate::training::parse_job;

fn job(layers: &[u64], epochs: u64) -> TrainJob {
    let layers: Vec<_> = layers
        .iter()
        .map(|u| serde_json::json!({"units": u}))
        .collect();
    let body = serde_json::json!({"id": "j", "model_name": "m", "layers": layers, "loss": "mse",
        "epochs": epochs, "data": {"x": [[1.0], [2.0]], "y": [1.0, 2.0]}});
    parse_job(body.to_string().as_bytes()).expect("valid job")
}

#[test]
fn parameters_count_weights_and_biases() {
    let j = job(&[16, 3], 1);
    assert_eq!(parameters(4, &j.layers), 4 * 16 + 16 + 16 * 3 + 3);
    let big = job(&[65536, 65536, 2], 1);
    assert_eq!(
        parameters(4, &big.layers),
        4 * 65536 + 65536 + 65536 * 65536 + 65536 + 65536 * 2 + 2
    );
}

#[test]
fn too_many_parameters_are_refused_naming_the_key() {
    let budget = Budget::default();
    let e = budget.check(&job(&[65536, 65536, 2], 1), 2, 1).unwrap_err();
    assert_eq!(e.label(), "over_budget");
    assert_eq!(
        e.to_string(),
        "layers: 4,295,294,978 parameters exceed training.max_parameters = 10000000"
    );
    assert_eq!(e.code(), crate::protocol::ErrorCode::InvalidRequest);
    let small = Budget {
        max_parameters: 2,
        ..Budget::default()
    };
    assert!(small.check(&job(&[1], 1), 2, 1).is_ok());
    assert!(small.check(&job(&[1], 1), 2, 2).is_err());
}

#[test]
fn too_much_work_is_refused_naming_the_key() {
    let budget = Budget::default();
    // The bundled iris job: 150 rows × 150 epochs × 131 parameters.
    assert!(budget.check(&job(&[16, 3], 150), 150, 4).is_ok());
    // A million epochs on two rows of a 1-unit regression is small work.
    assert!(budget.check(&job(&[1], 1_000_000), 2, 1).is_ok());
    // A million epochs on a million rows is not.
    let e = budget
        .check(&job(&[1], 1_000_000), 1_000_000, 1)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "epochs: 1,000,000 rows × 1,000,000 epochs × 2 parameters = 2,000,000,000,000 \
         exceed training.max_work = 1000000000000"
    );
}

#[test]
fn the_timeout_names_the_key_and_the_epochs_done() {
    let e = Budget::default().timed_out(12, 100).to_string();
    assert_eq!(
        e,
        "epochs: exceeded training.max_duration_ms = 3600000 after 12 of 100 epochs"
    );
}

#[test]
fn progress_sends_the_first_then_one_per_interval() {
    let t0 = Instant::now();
    let mut p = Progress::new(Duration::from_secs(1));
    let ms = |n| t0 + Duration::from_millis(n);
    let sent: Vec<u64> = [0, 10, 500, 999, 1000, 1001, 1500, 2100, 2200]
        .into_iter()
        .filter(|&n| p.due(ms(n)))
        .collect();
    assert_eq!(sent, vec![0, 1000, 2100]);
    let mut every = Progress::new(Duration::ZERO);
    assert!((0..5).all(|n| every.due(ms(n))));
}

fn history(epochs: usize, max: usize) -> Vec<usize> {
    let mut h = History::new(max);
    let mut held = 0;
    for e in 0..epochs {
        h.push(e, e);
        held = held.max(h.entries.len() + usize::from(h.last.is_some()));
    }
    assert!(held <= 2 * max.max(2) + 1, "held {held} for max {max}");
    h.finish()
}

#[test]
fn history_is_kept_whole_up_to_its_bound() {
    assert_eq!(history(5, 10), vec![0, 1, 2, 3, 4]);
    assert_eq!(history(10, 10), (0..10).collect::<Vec<_>>());
}

#[test]
fn long_histories_are_thinned_evenly_keeping_first_and_last() {
    for (epochs, max) in [(11, 10), (1000, 10), (1_000_000, 1000), (12_345, 7), (3, 2)] {
        let h = history(epochs, max);
        assert_eq!(h.len(), max, "{epochs} epochs, max {max}");
        assert_eq!(h[0], 0);
        assert_eq!(*h.last().unwrap(), epochs - 1);
        assert!(h.windows(2).all(|w| w[0] < w[1]));
        // Evenly: no gap more than about twice the ideal one.
        let ideal = (epochs - 1) as f64 / (max - 1) as f64;
        let widest = h.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            widest as f64 <= 2.0 * ideal + 2.0,
            "{epochs}/{max}: gap {widest}"
        );
    }
}

#[test]
fn the_configured_defaults_are_the_budget_defaults() {
    let settings = crate::config::Settings::load_from(None, Vec::new()).expect("defaults load");
    assert_eq!(Budget::from(&settings.training), Budget::default());
}
