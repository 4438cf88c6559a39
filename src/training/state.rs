//! Parameters and optimizer state held as ONNX Runtime values between steps, and the two calls
//! that use them: one optimizer step on a batch, and the evaluation of a set of rows.
//!
//! The step graph's `.next` outputs replace its inputs without a copy through Rust; parameters are
//! only copied out for early stopping's best weights and for the result model.

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::data::Dataset;
use super::graph::Network;
use super::job::TrainJob;
use super::metrics::Accumulator;

/// Rows per evaluation batch.
const EVAL_BATCH: usize = 4096;

/// Rows `idx` of a row-major matrix with `width` columns.
pub(super) fn gather(values: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        out.extend_from_slice(&values[i * width..(i + 1) * width]);
    }
    out
}

pub(super) fn tensor(rows: usize, width: usize, values: Vec<f32>) -> ort::Result<DynValue> {
    Ok(Tensor::from_array((vec![rows as i64, width as i64], values))?.into_dyn())
}

fn scalar(v: f32) -> ort::Result<DynValue> {
    Ok(Tensor::from_array(((), vec![v]))?.into_dyn())
}

/// Parameters and optimizer state, as ONNX Runtime values fed back step after step.
pub(super) struct State {
    pub names: Vec<String>,
    pub values: Vec<DynValue>,
    /// How many of `names` are parameters (the rest is optimizer state).
    pub params: usize,
}

impl State {
    pub fn new(net: &Network, job: &TrainJob, params: &[Vec<f32>]) -> ort::Result<State> {
        let mut names = Vec::new();
        let mut values = Vec::new();
        let shapes = net.parameters();
        for ((name, shape), p) in shapes.iter().zip(params) {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            names.push(name.clone());
            values.push(Tensor::from_array((dims, p.clone()))?.into_dyn());
        }
        for (name, shape) in &shapes {
            for state in Network::state_names(&job.optimizer, name) {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let zeros = vec![0.0f32; shape.iter().product()];
                names.push(state);
                values.push(Tensor::from_array((dims, zeros))?.into_dyn());
            }
        }
        Ok(State {
            names,
            values,
            params: shapes.len(),
        })
    }

    pub fn parameters(&self) -> ort::Result<Vec<Vec<f32>>> {
        self.values[..self.params]
            .iter()
            .map(|v| Ok(v.try_extract_tensor::<f32>()?.1.to_vec()))
            .collect()
    }

    fn views(&self) -> impl Iterator<Item = (String, SessionInputValue<'_>)> {
        self.names
            .iter()
            .cloned()
            .zip(self.values.iter().map(SessionInputValue::from))
    }
}

/// One optimizer step on a batch; returns (loss, predictions).
pub(super) fn step(
    session: &mut Session,
    state: &mut State,
    x: DynValue,
    y: DynValue,
    lr: f32,
    t: f32,
) -> ort::Result<(f64, Vec<f32>)> {
    let mut inputs: Vec<(String, SessionInputValue)> = vec![
        ("x".into(), x.into()),
        ("y".into(), y.into()),
        ("lr".into(), scalar(lr)?.into()),
        ("step".into(), scalar(t)?.into()),
    ];
    inputs.extend(state.views());
    let mut out = session.run(inputs)?;
    let loss = out["loss"].try_extract_tensor::<f32>()?.1[0] as f64;
    let pred = out["prediction"].try_extract_tensor::<f32>()?.1.to_vec();
    for (name, value) in state.names.iter().zip(state.values.iter_mut()) {
        if let Some(next) = out.remove(format!("{name}.next")) {
            *value = next;
        }
    }
    Ok((loss, pred))
}

/// Adds the loss and metrics of the current parameters over rows `idx` to `acc`.
pub(super) fn evaluate(
    session: &mut Session,
    data: &Dataset,
    state: &State,
    idx: &[usize],
    acc: &mut Accumulator,
) -> ort::Result<()> {
    for chunk in idx.chunks(EVAL_BATCH) {
        let x = gather(&data.x, data.features, chunk);
        let y = gather(&data.y, data.targets, chunk);
        let mut inputs: Vec<(String, SessionInputValue)> = vec![
            ("x".into(), tensor(chunk.len(), data.features, x)?.into()),
            (
                "y".into(),
                tensor(chunk.len(), data.targets, y.clone())?.into(),
            ),
        ];
        inputs.extend(state.views().take(state.params));
        let out = session.run(inputs)?;
        let loss = out["loss"].try_extract_tensor::<f32>()?.1[0] as f64;
        let pred = out["prediction"].try_extract_tensor::<f32>()?.1;
        acc.add(loss, pred, &y);
    }
    Ok(())
}

/// A copy of the parameters (for early stopping's best weights).
pub(super) fn copy_parameters(state: &State) -> ort::Result<Vec<DynValue>> {
    let shapes: Vec<Vec<i64>> = state.values[..state.params]
        .iter()
        .map(|v| Ok(v.try_extract_tensor::<f32>()?.0.to_vec()))
        .collect::<ort::Result<_>>()?;
    state
        .parameters()?
        .into_iter()
        .zip(shapes)
        .map(|(p, dims)| Ok(Tensor::from_array((dims, p))?.into_dyn()))
        .collect()
}
