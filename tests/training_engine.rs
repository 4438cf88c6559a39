//! The training engine against ONNX Runtime: gradients checked by central finite differences,
//! optimizer updates against a Rust reference, and end-to-end training runs.
//!
//! Gradient checks run in f64: the gradient graph's output must match
//! `(L(p + h e_i) - L(p - h e_i)) / 2h` (h = 1e-6, L run as the loss-only graph) within
//! `1e-6 + 1e-5 * |fd|`.

use std::collections::BTreeMap;

use infermq::onnx::builder::Dim;
use infermq::onnx::proto::elem;
use infermq::onnx::{decode_model, initializer_f32, metadata};
use infermq::protocol::ErrorCode;
use infermq::training::autodiff::Tape;
use infermq::training::graph::Network;
use infermq::training::job::{Activation, Layer, Loss, Optimizer};
use infermq::training::rng::SeededRng;
use infermq::training::{
    parse_job, train, CpuSessions, SessionFactory, TrainOutcome, TrainingError,
};
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

const H: f64 = 1e-6;

fn session(bytes: &[u8]) -> Session {
    CpuSessions {
        intra_threads: Some(1),
    }
    .session(bytes)
    .expect("session")
}

/// A named f64 input.
#[derive(Clone)]
struct Input {
    name: String,
    dims: Vec<usize>,
    values: Vec<f64>,
}

fn run64(s: &mut Session, inputs: &[Input], outputs: &[&str]) -> Vec<Vec<f64>> {
    let feed: Vec<(String, SessionInputValue)> = inputs
        .iter()
        .map(|i| {
            let dims: Vec<i64> = i.dims.iter().map(|&d| d as i64).collect();
            let t = Tensor::from_array((dims, i.values.clone())).expect("tensor");
            (i.name.clone(), t.into())
        })
        .collect();
    let out = s.run(feed).expect("runs");
    outputs
        .iter()
        .map(|n| out[*n].try_extract_tensor::<f64>().expect("f64").1.to_vec())
        .collect()
}

fn assert_fd(
    loss_graph: &[u8],
    grad_graph: &[u8],
    inputs: &[Input],
    wrt: &[(&str, &str)],
    what: &str,
) {
    let mut ls = session(loss_graph);
    let mut gs = session(grad_graph);
    let names: Vec<&str> = wrt.iter().map(|(_, g)| *g).collect();
    let grads = run64(&mut gs, inputs, &names);
    for ((input, gname), grad) in wrt.iter().zip(&grads) {
        let k = inputs.iter().position(|i| i.name == *input).expect("input");
        for (j, &analytic) in grad.iter().enumerate() {
            let mut plus = inputs.to_vec();
            plus[k].values[j] += H;
            let mut minus = inputs.to_vec();
            minus[k].values[j] -= H;
            let lp = run64(&mut ls, &plus, &["loss"])[0][0];
            let lm = run64(&mut ls, &minus, &["loss"])[0][0];
            let fd = (lp - lm) / (2.0 * H);
            let tol = 1e-6 + 1e-5 * fd.abs();
            assert!(
                (analytic - fd).abs() <= tol,
                "{what}: d loss / d {input}[{j}] = {analytic} by {gname}, {fd} by finite differences"
            );
        }
    }
}

fn random(rng: &mut SeededRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.next_f64()).collect()
}

/// Values in [-1, 1] at least 0.05 away from the kinks at 0 and ±0.5.
fn away_from_kinks(rng: &mut SeededRng, n: usize) -> Vec<f64> {
    random(rng, n, -1.0, 1.0)
        .into_iter()
        .map(|v| {
            let near = [-0.5, 0.0, 0.5].iter().any(|k| (v - k).abs() < 0.05);
            if near {
                v + 0.1
            } else {
                v
            }
        })
        .collect()
}

type OpFn = fn(&mut Tape, &[String]) -> String;
type OpCase = (
    &'static str,
    Vec<(&'static str, Vec<usize>)>,
    Vec<usize>,
    OpFn,
);

/// Builds `loss = mean(op(inputs) * r)` for random weights `r`, with and without gradients.
fn op_graphs(
    inputs: &[(&str, Vec<usize>)],
    out_dims: &[usize],
    op: OpFn,
    seed: u64,
) -> (Vec<u8>, Vec<u8>) {
    let build = |with_grads: bool| {
        let mut tape = Tape::new("op", elem::DOUBLE);
        let names: Vec<String> = inputs
            .iter()
            .map(|(n, d)| {
                let dims: Vec<Dim> = d.iter().map(|&x| Dim::Fixed(x as i64)).collect();
                tape.input(n, &dims, true)
            })
            .collect();
        let y = op(&mut tape, &names);
        let mut rng = SeededRng::new(seed);
        let n: usize = out_dims.iter().product();
        let dims: Vec<i64> = out_dims.iter().map(|&d| d as i64).collect();
        let r = tape.constant("r", &dims, &random(&mut rng, n, -2.0, 2.0));
        let weighted = tape.mul(&y, &r);
        let loss = tape.mean_all(&weighted);
        if with_grads {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let grads = tape.gradients(&loss, &refs);
            for ((name, dims), g) in inputs.iter().zip(grads) {
                let dims: Vec<Dim> = dims.iter().map(|&x| Dim::Fixed(x as i64)).collect();
                tape.output(&g, &format!("grad.{name}"), &dims);
            }
        }
        tape.output(&loss, "loss", &[]);
        tape.into_graph().to_bytes()
    };
    (build(false), build(true))
}

#[test]
fn every_op_gradient_matches_finite_differences() {
    let cases: Vec<OpCase> = vec![
        (
            "matmul",
            vec![("a", vec![3, 4]), ("w", vec![4, 5])],
            vec![3, 5],
            |t, i| t.matmul(&i[0], &i[1]),
        ),
        (
            "add_bias",
            vec![("h", vec![3, 5]), ("b", vec![5])],
            vec![3, 5],
            |t, i| t.add_bias(&i[0], &i[1]),
        ),
        ("relu", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            t.relu(&i[0])
        }),
        ("sigmoid", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            t.sigmoid(&i[0])
        }),
        ("tanh", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            t.tanh(&i[0])
        }),
        ("softmax", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            t.softmax(&i[0])
        }),
        ("clip", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            t.clip(&i[0], -0.5, 0.5)
        }),
        ("log", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            let sq = t.mul(&i[0], &i[0]);
            let pos = t.const_sub(1.5, &sq);
            t.log(&pos)
        }),
        (
            "add",
            vec![("a", vec![3, 4]), ("b", vec![3, 4])],
            vec![3, 4],
            |t, i| t.add(&i[0], &i[1]),
        ),
        (
            "sub",
            vec![("a", vec![3, 4]), ("b", vec![3, 4])],
            vec![3, 4],
            |t, i| t.sub(&i[0], &i[1]),
        ),
        (
            "mul",
            vec![("a", vec![3, 4]), ("b", vec![3, 4])],
            vec![3, 4],
            |t, i| t.mul(&i[0], &i[1]),
        ),
        ("const_sub", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            t.const_sub(0.25, &i[0])
        }),
        ("scale", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            t.scale(&i[0], -1.75)
        }),
        ("mean_all", vec![("x", vec![3, 4])], vec![], |t, i| {
            t.mean_all(&i[0])
        }),
        ("sum_last", vec![("x", vec![3, 4])], vec![3], |t, i| {
            t.sum_last(&i[0])
        }),
        ("reuse", vec![("x", vec![3, 4])], vec![3, 4], |t, i| {
            let s = t.sigmoid(&i[0]);
            t.mul(&s, &i[0])
        }),
    ];
    for (seed, (name, inputs, out_dims, op)) in cases.into_iter().enumerate() {
        let (loss_graph, grad_graph) = op_graphs(&inputs, &out_dims, op, seed as u64);
        let mut rng = SeededRng::new(100 + seed as u64);
        let feed: Vec<Input> = inputs
            .iter()
            .map(|(n, d)| Input {
                name: n.to_string(),
                dims: d.clone(),
                values: away_from_kinks(&mut rng, d.iter().product()),
            })
            .collect();
        let wrt: Vec<(String, String)> = inputs
            .iter()
            .map(|(n, _)| (n.to_string(), format!("grad.{n}")))
            .collect();
        let wrt: Vec<(&str, &str)> = wrt.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_fd(&loss_graph, &grad_graph, &feed, &wrt, name);
    }
}

fn net_inputs(net: &Network, rows: usize, seed: u64) -> Vec<Input> {
    let mut rng = SeededRng::new(seed);
    let units = net.units();
    let y: Vec<f64> = match net.loss {
        Loss::Mse => random(&mut rng, rows * units, -1.0, 1.0),
        Loss::BinaryCrossentropy => random(&mut rng, rows * units, 0.0, 1.0)
            .iter()
            .map(|v| v.round())
            .collect(),
        _ => (0..rows)
            .flat_map(|_| {
                let k = rng.below(units);
                (0..units).map(move |u| if u == k { 1.0 } else { 0.0 })
            })
            .collect(),
    };
    let mut feed = vec![
        Input {
            name: "x".into(),
            dims: vec![rows, net.inputs],
            values: random(&mut rng, rows * net.inputs, -1.0, 1.0),
        },
        Input {
            name: "y".into(),
            dims: vec![rows, units],
            values: y,
        },
    ];
    for (name, dims) in net.parameters() {
        let n = dims.iter().product();
        feed.push(Input {
            name,
            dims,
            values: random(&mut rng, n, -0.8, 0.8),
        });
    }
    feed
}

fn nets() -> Vec<Network> {
    let mut out = Vec::new();
    let acts = [
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Linear,
        Activation::Softmax,
    ];
    for hidden in acts {
        for (loss, last) in [
            (
                Loss::Mse,
                Layer {
                    units: 2,
                    activation: Activation::Linear,
                },
            ),
            (
                Loss::Mse,
                Layer {
                    units: 2,
                    activation: hidden,
                },
            ),
            (
                Loss::BinaryCrossentropy,
                Layer {
                    units: 2,
                    activation: Activation::Sigmoid,
                },
            ),
            (
                Loss::CategoricalCrossentropy,
                Layer {
                    units: 3,
                    activation: Activation::Softmax,
                },
            ),
            (
                Loss::SparseCategoricalCrossentropy,
                Layer {
                    units: 3,
                    activation: Activation::Softmax,
                },
            ),
        ] {
            let layers = vec![
                Layer {
                    units: 4,
                    activation: hidden,
                },
                last,
            ];
            out.push(Network {
                inputs: 3,
                layers,
                loss,
            });
        }
    }
    out
}

#[test]
fn network_gradients_match_finite_differences_for_every_activation_and_loss() {
    for (seed, net) in nets().into_iter().enumerate() {
        let feed = net_inputs(&net, 5, seed as u64);
        let wrt: Vec<(String, String)> = net
            .parameters()
            .into_iter()
            .map(|(n, _)| (n.clone(), format!("grad.{n}")))
            .collect();
        let wrt: Vec<(&str, &str)> = wrt.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let what = format!("{:?} with {:?}", net.layers, net.loss);
        assert_fd(
            &net.eval_model(elem::DOUBLE),
            &net.gradient_model(elem::DOUBLE),
            &feed,
            &wrt,
            &what,
        );
    }
}

fn optimizer_step(optimizer: Optimizer) {
    let net = Network {
        inputs: 3,
        layers: vec![
            Layer {
                units: 4,
                activation: Activation::Tanh,
            },
            Layer {
                units: 2,
                activation: Activation::Linear,
            },
        ],
        loss: Loss::Mse,
    };
    let mut feed = net_inputs(&net, 6, 9);
    let params = net.parameters();
    let grads: Vec<String> = params.iter().map(|(n, _)| format!("grad.{n}")).collect();
    let grad_refs: Vec<&str> = grads.iter().map(String::as_str).collect();
    let g = run64(
        &mut session(&net.gradient_model(elem::DOUBLE)),
        &feed,
        &grad_refs,
    );
    let (lr, t) = (0.05, 3.0);
    let mut rng = SeededRng::new(77);
    let mut states = Vec::new();
    for (name, dims) in &params {
        for s in Network::state_names(&optimizer, name) {
            let n: usize = dims.iter().product();
            // Second moments must be non-negative.
            let values = random(&mut rng, n, 0.0, 0.1);
            states.push(Input {
                name: s,
                dims: dims.clone(),
                values,
            });
        }
    }
    feed.extend(states.clone());
    feed.push(Input {
        name: "lr".into(),
        dims: vec![],
        values: vec![lr],
    });
    feed.push(Input {
        name: "step".into(),
        dims: vec![],
        values: vec![t],
    });
    let outs: Vec<String> = params.iter().map(|(n, _)| format!("{n}.next")).collect();
    let out_refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let next = run64(
        &mut session(&net.train_step_model(&optimizer, elem::DOUBLE)),
        &feed,
        &out_refs,
    );
    for (k, (name, _)) in params.iter().enumerate() {
        let p = &feed.iter().find(|i| &i.name == name).expect("param").values;
        let state = |suffix: &str| {
            &states
                .iter()
                .find(|s| s.name == format!("{name}.{suffix}"))
                .expect("state")
                .values
        };
        for j in 0..p.len() {
            let want = match optimizer {
                Optimizer::Sgd { momentum } => {
                    p[j] + momentum * state("velocity")[j] - lr * g[k][j]
                }
                Optimizer::Adam {
                    beta_1,
                    beta_2,
                    epsilon,
                } => {
                    let m = beta_1 * state("m")[j] + (1.0 - beta_1) * g[k][j];
                    let v = beta_2 * state("v")[j] + (1.0 - beta_2) * g[k][j] * g[k][j];
                    let alpha = lr * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t));
                    p[j] - alpha * m / (v.sqrt() + epsilon)
                }
            };
            assert!(
                (next[k][j] - want).abs() < 1e-12,
                "{optimizer:?} {name}[{j}]: {} vs {want}",
                next[k][j]
            );
        }
    }
}

#[test]
fn sgd_momentum_step_matches_the_reference() {
    optimizer_step(Optimizer::Sgd { momentum: 0.9 });
}

#[test]
fn adam_step_matches_the_reference() {
    optimizer_step(Optimizer::Adam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
    });
}

pub fn run_job(body: &str) -> Result<TrainOutcome, TrainingError> {
    let job = parse_job(body.as_bytes())?;
    train(&job, None, &CpuSessions::default(), &mut |_| {}, &|| false)
}

fn weights(model: &[u8], name: &str) -> Vec<f32> {
    initializer_f32(&decode_model(model).expect("model"), name)
        .expect("initializer")
        .1
}

#[test]
fn linear_regression_recovers_the_true_weights() {
    let mut rng = SeededRng::new(5);
    let (w, b) = ([2.0, -3.0, 0.5], 1.0);
    let x: Vec<Vec<f64>> = (0..200).map(|_| random(&mut rng, 3, -1.0, 1.0)).collect();
    let y: Vec<f64> = x
        .iter()
        .map(|r| r.iter().zip(w).map(|(a, c)| a * c).sum::<f64>() + b)
        .collect();
    let body = serde_json::json!({
        "id": "linreg", "model_name": "linreg", "layers": [{"units": 1}], "loss": "mse",
        "optimizer": {"type": "sgd", "learning_rate": 0.1, "momentum": 0.9},
        "epochs": 60, "batch_size": 20, "seed": 1, "data": {"x": x, "y": y}
    });
    let out = run_job(&body.to_string()).expect("trains");
    let got = weights(&out.model, "layer0.weight");
    for (g, want) in got.iter().zip(w) {
        assert!((*g as f64 - want).abs() < 1e-3, "weight {g} vs {want}");
    }
    assert!((weights(&out.model, "layer0.bias")[0] as f64 - b).abs() < 1e-3);
    assert!(out.metrics["mse"] < 1e-6, "{:?}", out.metrics);
}

fn iris_job(seed: u64, epochs: usize) -> String {
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/models/iris/iris.csv");
    serde_json::json!({
        "id": format!("iris-{seed}"), "model_name": "iris",
        "layers": [{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "epochs": epochs, "batch_size": 16, "seed": seed,
        "data": {"uri": format!("file://{csv}"), "format": "csv", "label_column": "species"}
    })
    .to_string()
}

#[test]
fn mlp_on_iris_reaches_95_percent_training_accuracy() {
    let mut reports = Vec::new();
    let job = parse_job(iris_job(7, 150).as_bytes()).expect("job");
    let out = train(
        &job,
        None,
        &CpuSessions::default(),
        &mut |r| reports.push(r.clone()),
        &|| false,
    )
    .expect("trains");
    assert!(out.metrics["accuracy"] >= 0.95, "{:?}", out.metrics);
    assert_eq!(out.history, reports);
    assert_eq!(out.history.len(), 150);
    assert_eq!(out.samples, 150 * 150);
    // The result model classifies the data set as the final metrics say.
    let mut s = session(&out.model);
    let x = Tensor::from_array((vec![1i64, 4], vec![6.2f32, 3.4, 5.4, 2.3])).expect("x");
    let o = s.run(ort::inputs!["input" => x]).expect("runs");
    let (shape, p) = o["output"].try_extract_tensor::<f32>().expect("output");
    assert_eq!(shape.to_vec(), vec![1, 3]);
    assert!(p[2] > 0.5, "a virginica: {p:?}");
    let model = decode_model(&out.model).expect("model");
    assert_eq!(metadata(&model, "infermq.job_id"), Some("iris-7"));
    let m: BTreeMap<String, f64> =
        serde_json::from_str(metadata(&model, "infermq.metrics").expect("metrics")).expect("json");
    assert_eq!(m, out.metrics);
    assert_eq!(
        metadata(&model, "infermq.data_sha256").map(str::len),
        Some(64)
    );
}

#[test]
fn same_job_and_seed_give_identical_weights() {
    let a = run_job(&iris_job(3, 5)).expect("a");
    let b = run_job(&iris_job(3, 5)).expect("b");
    let c = run_job(&iris_job(4, 5)).expect("c");
    assert!(a.model == b.model, "same seed, different model bytes");
    assert_ne!(
        weights(&a.model, "layer0.weight"),
        weights(&c.model, "layer0.weight")
    );
    assert_eq!(a.history, b.history);
}

#[test]
fn the_written_model_passes_onnx_checker() {
    let out = run_job(&iris_job(1, 2)).expect("trains");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, &out.model).expect("written");
    let script = "import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .status()
        .expect("python3 runs (pip install onnx)");
    assert!(status.success(), "onnx.checker rejected the model");
}

fn iris_with(patch: serde_json::Value) -> String {
    let mut job: serde_json::Value = serde_json::from_str(&iris_job(11, 5)).expect("job");
    for (k, v) in patch.as_object().expect("object") {
        job[k] = v.clone();
    }
    job.to_string()
}

#[test]
fn init_from_continues_from_the_given_weights() {
    let first = run_job(&iris_job(2, 5)).expect("first");
    let job = parse_job(
        iris_with(serde_json::json!({
            "epochs": 1, "optimizer": {"type": "sgd", "learning_rate": 1e-9},
            "init_from": {"model_version": "1"}
        }))
        .as_bytes(),
    )
    .expect("job");
    assert_eq!(job.init_from_version(), Some("1"));
    let sessions = CpuSessions::default();
    let next =
        train(&job, Some(&first.model), &sessions, &mut |_| {}, &|| false).expect("continues");
    for name in ["layer0.weight", "layer1.bias"] {
        for (a, b) in weights(&first.model, name)
            .iter()
            .zip(weights(&next.model, name))
        {
            assert!((a - b).abs() < 1e-6, "{name}: {a} vs {b}");
        }
    }
    let model = decode_model(&next.model).expect("model");
    assert_eq!(metadata(&model, "infermq.init_from"), Some("1"));

    let wider = parse_job(
        iris_with(serde_json::json!({
            "layers": [{"units": 8, "activation": "relu"}, {"units": 3, "activation": "softmax"}]
        }))
        .as_bytes(),
    )
    .expect("job");
    let e = train(&wider, Some(&first.model), &sessions, &mut |_| {}, &|| {
        false
    })
    .expect_err("mismatch");
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    assert!(
        e.to_string().contains("init_from") && e.to_string().contains("layer0.weight"),
        "{e}"
    );
    let e = train(
        &wider,
        Some(b"not a model"),
        &sessions,
        &mut |_| {},
        &|| false,
    )
    .expect_err("garbage");
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
}

#[test]
fn early_stopping_keeps_the_best_weights() {
    let out = run_job(&iris_with(serde_json::json!({
        "epochs": 300, "validation_split": 0.3, "early_stopping": {"patience": 3},
        "optimizer": {"type": "adam", "learning_rate": 0.05}
    })))
    .expect("trains");
    let val: Vec<f64> = out
        .history
        .iter()
        .map(|r| r.val_loss.expect("val_loss"))
        .collect();
    let best = val.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(out.history.len() < 300, "never stopped: {val:?}");
    let tail = &val[val.len() - 4..];
    assert!(
        tail[1..].iter().all(|v| *v >= tail[0].min(best)),
        "stopped while improving: {tail:?}"
    );
    assert!(
        (out.metrics["val_loss"] - best).abs() < 1e-9,
        "{} vs best {best}",
        out.metrics["val_loss"]
    );
    assert!(
        out.metrics.contains_key("val_accuracy")
            && out.history[0].metrics.contains_key("val_accuracy")
    );
    assert_eq!(out.samples, out.history.len() as u64 * 105);
}

#[test]
fn npy_pairs_train_a_binary_classifier() {
    let dir = tempfile::tempdir().expect("dir");
    let mut rng = SeededRng::new(21);
    let rows = 200;
    let x: Vec<f32> = (0..rows * 2).map(|_| rng.symmetric(1.0) as f32).collect();
    let y: Vec<i64> = x.chunks(2).map(|r| i64::from(r[0] + r[1] > 0.0)).collect();
    let (xp, yp) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    std::fs::write(&xp, infermq::training::npy::write_f32(&[rows, 2], &x)).expect("x");
    std::fs::write(&yp, infermq::training::npy::write_i64(&[rows], &y)).expect("y");
    let body = serde_json::json!({
        "id": "npy", "model_name": "sign", "loss": "binary_crossentropy",
        "layers": [{"units": 8, "activation": "tanh"}, {"units": 1, "activation": "sigmoid"}],
        "optimizer": {"type": "adam", "learning_rate": 0.05,
                      "schedule": {"type": "step_decay", "decay_rate": 0.5, "decay_epochs": 10}},
        "epochs": 30, "batch_size": 32, "seed": 3,
        "data": {"uri": {"x": format!("file://{}", xp.display()), "y": format!("file://{}", yp.display())},
                 "format": "npy"}
    });
    let out = run_job(&body.to_string()).expect("trains");
    assert!(out.metrics["accuracy"] >= 0.95, "{:?}", out.metrics);
}

#[test]
fn categorical_one_hot_with_sgd_and_exponential_decay_learns() {
    let mut rng = SeededRng::new(8);
    let x: Vec<Vec<f64>> = (0..90)
        .map(|i| {
            let c = (i % 3) as f64;
            vec![c + 0.3 * rng.symmetric(1.0), -c + 0.3 * rng.symmetric(1.0)]
        })
        .collect();
    let y: Vec<Vec<f64>> = (0..90)
        .map(|i| (0..3).map(|c| f64::from(u8::from(i % 3 == c))).collect())
        .collect();
    let body = serde_json::json!({
        "id": "cat", "model_name": "cat", "loss": "categorical_crossentropy",
        "layers": [{"units": 8, "activation": "sigmoid"}, {"units": 3, "activation": "softmax"}],
        "optimizer": {"type": "sgd", "learning_rate": 0.5, "momentum": 0.9,
                      "schedule": {"type": "exponential_decay", "decay_rate": 0.5, "decay_steps": 200}},
        "epochs": 40, "batch_size": 10, "seed": 1, "data": {"x": x, "y": y}
    });
    let out = run_job(&body.to_string()).expect("trains");
    assert!(out.history.last().expect("epochs").loss < out.history[0].loss / 4.0);
    assert!(out.metrics["accuracy"] >= 0.95, "{:?}", out.metrics);
}

#[test]
fn bad_data_is_an_invalid_request_naming_the_field() {
    let cases = [
        (
            serde_json::json!({"data": {"x": [[1, 2, 3, 4], [1, 2, 3, 4]], "y": [0, 3]}}),
            "label 3 is out of range",
        ),
        (
            serde_json::json!({"data": {"x": [[1, 2, 3, 4]], "y": [0.5]}}),
            "label 0.5 is out of range",
        ),
        (
            serde_json::json!({"data": {"uri": "file:///nonexistent/iris.csv"}}),
            "cannot read",
        ),
        (
            serde_json::json!({"data": {"uri": format!("file://{}/models/iris/iris.csv", env!("CARGO_MANIFEST_DIR")), "label_column": "kind"}}),
            "data.label_column",
        ),
        (
            serde_json::json!({"loss": "binary_crossentropy",
                "layers": [{"units": 1, "activation": "sigmoid"}],
                "data": {"x": [[1], [2]], "y": [0, 2]}}),
            "outside [0, 1]",
        ),
        (
            serde_json::json!({"loss": "mse", "layers": [{"units": 2}], "data": {"x": [[1], [2]], "y": [0, 2]}}),
            "the output layer has 2 units",
        ),
        (
            serde_json::json!({"validation_split": 0.1, "data": {"x": [[1, 2, 3, 4]], "y": [0]}}),
            "validation_split: 0.1 holds out no rows",
        ),
        (
            serde_json::json!({"validation_split": 0.9, "data": {"x": [[1, 2, 3, 4]], "y": [0]}}),
            "validation_split: 0.9 leaves no training rows",
        ),
    ];
    for (patch, want) in cases {
        let e = run_job(&iris_with(patch.clone())).expect_err(&patch.to_string());
        assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
        assert!(e.to_string().contains(want), "{patch}: {e}");
    }
}

#[test]
fn divergence_is_reported() {
    let x: Vec<Vec<f64>> = (0..20).map(|i| vec![i as f64 * 100.0]).collect();
    let y: Vec<f64> = (0..20).map(|i| i as f64 * 1e4).collect();
    let body = serde_json::json!({
        "id": "boom", "model_name": "boom", "layers": [{"units": 1}], "loss": "mse",
        "optimizer": {"type": "sgd", "learning_rate": 1000.0}, "epochs": 50, "data": {"x": x, "y": y}
    });
    let e = run_job(&body.to_string()).expect_err("diverges");
    assert!(matches!(e, TrainingError::Diverged { .. }), "{e}");
}

#[test]
fn should_stop_ends_the_run_for_a_retry() {
    let job = parse_job(iris_job(1, 50).as_bytes()).expect("job");
    let calls = std::cell::Cell::new(0);
    let stop = || {
        calls.set(calls.get() + 1);
        calls.get() > 20
    };
    let e = train(&job, None, &CpuSessions::default(), &mut |_| {}, &stop).expect_err("stopped");
    assert!(matches!(e, TrainingError::Stopped));
    assert_eq!(e.code(), ErrorCode::Internal);
    assert_eq!(calls.get(), 21);
}
