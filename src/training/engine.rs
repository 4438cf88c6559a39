//! The training loop: data → graphs → minibatch steps on ONNX Runtime → an inference model.
//!
//! Reproducible: one [`SeededRng`] seeded with the job's `seed` draws the initial weights (He
//! uniform before relu, Glorot uniform otherwise, zero biases), the validation split (the data is
//! shuffled once before the last `validation_split` of it is held out; without `shuffle` the last
//! rows are held out, as in Keras) and each epoch's order. On the CPU execution provider the
//! same job and seed give identical weights.

use std::collections::BTreeMap;
use std::time::Instant;

use ort::session::Session;
use ort::value::DynValue;

use crate::onnx::proto::elem;
use crate::onnx::{decode_model, initializer_f32};

use super::admission::{check_signature, produced_signature};
use super::budget::{Budget, History, Progress, Rules};
use super::data::{split, Dataset};
use super::error::TrainingError;
use super::graph::Network;
use super::job::{Activation, TrainJob};
use super::metrics::Accumulator;
use super::rng::SeededRng;
use super::state::{copy_parameters, evaluate, gather, step, tensor, State};

/// One epoch's figures, as sent in a progress message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub loss: f64,
    pub val_loss: Option<f64>,
    /// `accuracy` or `mse`/`mae` over the epoch's batches, and their `val_` versions.
    pub metrics: BTreeMap<String, f64>,
}

/// A finished training run.
#[derive(Clone)]
pub struct TrainOutcome {
    /// The ONNX inference model (`input` FP32 [-1, features] → `output` FP32 [-1, units]).
    pub model: Vec<u8>,
    /// Final metrics of the kept weights over the training (and validation) set.
    pub metrics: BTreeMap<String, f64>,
    pub history: Vec<EpochReport>,
    /// Training rows processed, over all epochs.
    pub samples: u64,
    pub duration_ms: f64,
}

impl std::fmt::Debug for TrainOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOutcome")
            .field("model", &format_args!("<{} bytes>", self.model.len()))
            .field("metrics", &self.metrics)
            .field("epochs", &self.history.len())
            .field("samples", &self.samples)
            .field("duration_ms", &self.duration_ms)
            .finish()
    }
}

/// Creates ONNX Runtime sessions; the worker's implementation applies its execution providers.
pub trait SessionFactory {
    fn session(&self, model: &[u8]) -> Result<Session, String>;
}

/// Sessions on the CPU execution provider of the process-wide environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSessions {
    /// Intra-op threads; `None` leaves ONNX Runtime's default.
    pub intra_threads: Option<usize>,
}

impl SessionFactory for CpuSessions {
    fn session(&self, model: &[u8]) -> Result<Session, String> {
        let env = crate::runtime::env::init(None).map_err(|e| e.to_string())?;
        let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
        if let Some(n) = self.intra_threads {
            builder = builder.with_intra_threads(n).map_err(|e| e.to_string())?;
        }
        builder.commit_from_memory(model).map_err(|e| e.to_string())
    }
}

fn runtime(e: impl std::fmt::Display) -> TrainingError {
    TrainingError::Runtime(e.to_string())
}

/// Initial parameters: read from `init_from`, or drawn from `rng`.
fn initial_parameters(
    net: &Network,
    init_from: Option<&[u8]>,
    rng: &mut SeededRng,
) -> Result<Vec<Vec<f32>>, TrainingError> {
    let shapes = net.parameters();
    if let Some(bytes) = init_from {
        let model = decode_model(bytes).map_err(|e| TrainingError::InitMismatch(e.to_string()))?;
        return shapes
            .iter()
            .map(|(name, shape)| {
                let (dims, values) = initializer_f32(&model, name)
                    .map_err(|e| TrainingError::InitMismatch(e.to_string()))?;
                let want: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                if dims != want {
                    return Err(TrainingError::InitMismatch(format!(
                        "{name} has shape {dims:?}, the job's layers need {want:?}"
                    )));
                }
                Ok(values)
            })
            .collect();
    }
    let mut out = Vec::new();
    for (layer, chunk) in net.layers.iter().zip(shapes.chunks(2)) {
        let fan_in = chunk[0].1[0];
        let fan_out = chunk[0].1[1];
        out.push(match layer.activation {
            Activation::Relu => rng.he_uniform(fan_in, fan_out),
            _ => rng.glorot_uniform(fan_in, fan_out),
        });
        out.push(vec![0.0; fan_out]);
    }
    Ok(out)
}

/// Trains the job's network; see the module documentation. `init_from` holds the bytes of the
/// model version named by `init_from`; `progress` is called after every epoch; `should_stop` is
/// polled between batches and ends the run with [`TrainingError::Stopped`].
///
/// Without [`Rules`]: any data file, no budget, every epoch reported and kept; for tools and
/// tests that train their own jobs. The worker uses [`train_within`].
pub fn train(
    job: &TrainJob,
    init_from: Option<&[u8]>,
    sessions: &dyn SessionFactory,
    progress: &mut dyn FnMut(&EpochReport),
    should_stop: &dyn Fn() -> bool,
) -> Result<TrainOutcome, TrainingError> {
    train_within(
        job,
        &Rules::unrestricted(),
        init_from,
        sessions,
        progress,
        should_stop,
    )
}

/// [`train`] within the worker's [`Rules`]: data files within `training.data_dir` and
/// `training.max_data_bytes`; the job refused before training when its network or work exceeds
/// the budget or its model would change the served signature; ended past
/// `training.max_duration_ms`; progress reported at most once per `progress_interval` (and for
/// the first and last epochs); the history thinned to `max_history` entries.
pub fn train_within(
    job: &TrainJob,
    rules: &Rules,
    init_from: Option<&[u8]>,
    sessions: &dyn SessionFactory,
    progress: &mut dyn FnMut(&EpochReport),
    should_stop: &dyn Fn() -> bool,
) -> Result<TrainOutcome, TrainingError> {
    let started = Instant::now();
    let raw = job.data.load(&rules.data)?;
    let net = Network {
        inputs: raw.features,
        layers: job.layers.clone(),
        loss: job.loss,
    };
    let produced = produced_signature(rules.served.as_ref(), raw.features, net.units());
    if let Some(served) = &rules.served {
        check_signature(&job.model_name, served, &produced)?;
    }
    rules.budget.check(job, raw.rows, raw.features)?;
    let data = Dataset::prepare(&raw, net.units(), job.loss)?;
    let mut rng = SeededRng::new(job.seed);
    let params = initial_parameters(&net, init_from, &mut rng)?;
    let (train_idx, val_idx) = split(data.rows, job.validation_split, job.shuffle, &mut rng)?;
    let mut step_session = sessions
        .session(&net.train_step_model(&job.optimizer, elem::FLOAT))
        .map_err(TrainingError::Runtime)?;
    let mut eval_session = sessions
        .session(&net.eval_model(elem::FLOAT))
        .map_err(TrainingError::Runtime)?;
    let mut state = State::new(&net, job, &params).map_err(runtime)?;
    let mut run = Run {
        job,
        net: &net,
        data: &data,
        rng,
        train_idx,
        val_idx,
        steps: 0,
        samples: 0,
        budget: &rules.budget,
        deadline: started.checked_add(rules.budget.max_duration),
    };
    let history = run.epochs(
        &mut step_session,
        &mut eval_session,
        &mut state,
        progress,
        should_stop,
    )?;
    let mut metrics = BTreeMap::new();
    for (idx, prefix) in [(&run.train_idx, ""), (&run.val_idx, "val_")] {
        if !idx.is_empty() {
            let mut acc = Accumulator::new(job.loss, net.units());
            evaluate(&mut eval_session, &data, &state, idx, &mut acc).map_err(runtime)?;
            metrics.extend(acc.metrics(prefix));
        }
    }
    let params = state.parameters().map_err(runtime)?;
    let names = (
        produced.inputs[0].name.as_str(),
        produced.outputs[0].name.as_str(),
    );
    let model = result_model(job, &net, &params, &metrics, &data, names);
    Ok(TrainOutcome {
        model,
        metrics,
        history,
        samples: run.samples,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

fn result_model(
    job: &TrainJob,
    net: &Network,
    params: &[Vec<f32>],
    metrics: &BTreeMap<String, f64>,
    data: &Dataset,
    (input, output): (&str, &str),
) -> Vec<u8> {
    let mut meta = vec![
        ("infermq.job_id".to_string(), job.id.clone()),
        ("infermq.model_name".to_string(), job.model_name.to_string()),
        (
            "infermq.metrics".to_string(),
            serde_json::to_string(metrics).unwrap_or_default(),
        ),
        ("infermq.data_sha256".to_string(), data.sha256()),
        ("infermq.loss".to_string(), job.loss.as_str().to_string()),
    ];
    if let Some(v) = &job.init_from {
        meta.push(("infermq.init_from".to_string(), v.clone()));
    }
    let doc = format!("Trained by infermq job {} ({} rows)", job.id, data.rows);
    net.inference_model(params, input, output, &meta, &doc)
}

/// The state of one run across epochs.
struct Run<'a> {
    job: &'a TrainJob,
    net: &'a Network,
    data: &'a Dataset,
    rng: SeededRng,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    steps: u64,
    samples: u64,
    budget: &'a Budget,
    /// Past it, the run ends with `training.max_duration_ms` exceeded.
    deadline: Option<Instant>,
}

impl Run<'_> {
    fn epochs(
        &mut self,
        step_session: &mut Session,
        eval_session: &mut Session,
        state: &mut State,
        progress: &mut dyn FnMut(&EpochReport),
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Vec<EpochReport>, TrainingError> {
        let mut history = History::new(self.budget.max_history);
        let mut reports = Progress::new(self.budget.progress_interval);
        let mut unsent = None;
        let mut best: Option<(f64, Vec<DynValue>)> = None;
        let mut wait = 0;
        for epoch in 0..self.job.epochs {
            let mut acc = self.epoch(step_session, state, epoch, should_stop)?;
            let mut metrics = acc.metrics("");
            let loss = acc.loss();
            if !loss.is_finite() {
                return Err(TrainingError::Diverged { epoch: epoch + 1 });
            }
            let mut val_loss = None;
            if !self.val_idx.is_empty() {
                acc = Accumulator::new(self.job.loss, self.net.units());
                evaluate(eval_session, self.data, state, &self.val_idx, &mut acc)
                    .map_err(runtime)?;
                val_loss = Some(acc.loss());
                metrics.extend(acc.metrics("val_"));
            }
            metrics.remove("loss");
            metrics.remove("val_loss");
            let report = EpochReport {
                epoch: epoch + 1,
                loss,
                val_loss,
                metrics,
            };
            if reports.due(Instant::now()) || epoch + 1 == self.job.epochs {
                progress(&report);
                unsent = None;
            } else {
                unsent = Some(report.clone());
            }
            history.push(epoch, report);
            let Some(es) = self.job.early_stopping else {
                continue;
            };
            let monitored = val_loss.unwrap_or(loss);
            if best
                .as_ref()
                .is_none_or(|(b, _)| monitored < b - es.min_delta)
            {
                best = Some((monitored, copy_parameters(state).map_err(runtime)?));
                wait = 0;
            } else {
                wait += 1;
                if wait > es.patience {
                    break;
                }
            }
        }
        // The last epoch is always reported, also when early stopping ended the run.
        if let Some(last) = unsent {
            progress(&last);
        }
        if let Some((_, values)) = best {
            for (slot, v) in state.values.iter_mut().zip(values) {
                *slot = v;
            }
        }
        Ok(history.finish())
    }

    fn epoch(
        &mut self,
        session: &mut Session,
        state: &mut State,
        epoch: usize,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Accumulator, TrainingError> {
        if self.job.shuffle {
            self.rng.shuffle(&mut self.train_idx);
        }
        let mut acc = Accumulator::new(self.job.loss, self.net.units());
        let f = self.data.features;
        let t = self.data.targets;
        for batch in self.train_idx.chunks(self.job.batch_size) {
            if should_stop() {
                return Err(TrainingError::Stopped);
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.budget.timed_out(epoch, self.job.epochs));
            }
            let lr = self
                .job
                .schedule
                .rate(self.job.learning_rate, self.steps, epoch) as f32;
            self.steps += 1;
            let y = gather(&self.data.y, t, batch);
            let x = tensor(batch.len(), f, gather(&self.data.x, f, batch)).map_err(runtime)?;
            let yt = tensor(batch.len(), t, y.clone()).map_err(runtime)?;
            let (loss, pred) =
                step(session, state, x, yt, lr, self.steps as f32).map_err(runtime)?;
            acc.add(loss, &pred, &y);
            self.samples += batch.len() as u64;
        }
        Ok(acc)
    }
}
