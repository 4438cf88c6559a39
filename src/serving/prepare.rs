//! What a version goes through between its files and its first job: memory admission (before
//! its sessions are made, and again once its signature gives the size of a batch) and warm-up
//! batches before it is announced ready.
//!
//! Admission before loading counts the weights, the extra copy of the largest tensor while
//! loading, and the fixed costs of sessions and instances; activations need the signature,
//! which only the session knows, so they are added by the second check, before the version
//! serves. Both compare with the limit minus what the loaded versions hold (their resident
//! estimate), so a newer version of a served model must fit beside the one it replaces.

use std::collections::BTreeSet;

use super::admission::{admit, batch_io_bytes, VersionNeed};
use super::warmup::{described_batch, made_up_batches, warmup_sizes};
use crate::batching::BatchLimits;
use crate::protocol::{ModelSignature, Tensor};
use crate::repository::config::{ModelConfig, Warmup};
use crate::repository::external::{ExternalRefused, VersionFiles};
use crate::runtime::memory::MemoryLimit;
use crate::runtime::{first_of_its_session, Backend, DimNames, ExecutionProvider, SessionOptions};

/// Why a version was not loaded; `in_use`: the bytes loaded versions held when it was refused
/// for memory (it is tried again once they hold less); `kind`: a bounded label for the log.
#[derive(Debug)]
pub(super) struct Refusal {
    pub reason: String,
    pub in_use: Option<u64>,
    pub kind: &'static str,
}

impl From<String> for Refusal {
    fn from(reason: String) -> Refusal {
        Refusal {
            reason,
            in_use: None,
            kind: "load",
        }
    }
}

impl From<ExternalRefused> for Refusal {
    fn from(refused: ExternalRefused) -> Refusal {
        Refusal {
            reason: refused.to_string(),
            in_use: None,
            kind: refused.kind(),
        }
    }
}

/// What a version needs for `instances` instances over `sessions` sessions; `batch`: its
/// signature and batch limits once known (activations), `None` before its sessions exist.
pub(super) fn need(
    files: &VersionFiles,
    sessions: usize,
    instances: usize,
    batch: Option<(&ModelSignature, &BatchLimits)>,
) -> VersionNeed {
    let io = batch.map_or(0, |(signature, limits)| {
        batch_io_bytes(signature, limits.max_batch_size.max(1))
    });
    VersionNeed::estimate(
        files.weight_bytes(),
        files.largest_bytes,
        sessions,
        instances,
        io,
    )
}

/// Refuses `need` when it does not fit under `limit` beside `in_use` (no limit known: fits).
pub(super) fn check_fits(
    model: &str,
    need: &VersionNeed,
    limit: Option<&MemoryLimit>,
    in_use: u64,
) -> Result<(), Refusal> {
    let Some(limit) = limit else { return Ok(()) };
    admit(model, need, limit, in_use).map_err(|refused| Refusal {
        reason: refused.to_string(),
        in_use: Some(in_use),
        kind: "memory",
    })
}

/// The session options of a model: the worker's `base`, with the model's own execution
/// providers and CUDA devices when its `config.toml` sets them.
pub(super) fn model_options(base: &SessionOptions, config: &ModelConfig) -> SessionOptions {
    let mut options = base.clone();
    if let Some(providers) = &config.execution_providers {
        options.execution_providers = providers.clone();
        options.require_gpu &= providers.contains(&ExecutionProvider::Cuda);
    }
    if let Some(ids) = &config.device_ids {
        options.cuda.device_ids = ids.clone();
    }
    if let Some(threads) = config.intra_threads {
        options.intra_threads = threads;
    }
    options
}

/// The warm-up of a version: its batches in order. Whether a failure refuses the version is
/// the config's ([`Warmup::is_described`]).
pub(super) struct WarmupPlan {
    pub batches: Vec<WarmupBatch>,
}

pub(super) struct WarmupBatch {
    /// What the error names: `batch size 8`, or a described sample's name.
    pub label: String,
    pub rows: usize,
    /// Runs on each session.
    pub count: usize,
    pub inputs: Vec<Tensor>,
}

impl WarmupPlan {
    /// The rows of each batch (`warmup_batch_sizes` in `/v2/models`).
    pub fn rows(&self) -> Vec<usize> {
        self.batches.iter().map(|b| b.rows).collect()
    }
}

/// The warm-up `config` asks for a version with `signature` (dimension names `names`, where the
/// runtime reports them) under `limits`; the error says why its inputs could not be made.
pub(super) fn warmup_plan(
    config: &ModelConfig,
    limits: &BatchLimits,
    signature: &ModelSignature,
    names: Option<&DimNames>,
) -> Result<WarmupPlan, String> {
    let made_up = |sizes: Vec<usize>| {
        let length = config.length_buckets.iter().copied().min();
        let batches = made_up_batches(signature, names, length, &sizes)
            .map_err(|e| format!("warm-up: {e}"))?;
        let batches = batches
            .into_iter()
            .map(|(rows, inputs)| WarmupBatch {
                label: format!("batch size {rows}"),
                rows,
                count: 1,
                inputs,
            })
            .collect();
        Ok(WarmupPlan { batches })
    };
    match &config.warmup {
        Warmup::Off => Ok(WarmupPlan {
            batches: Vec::new(),
        }),
        Warmup::Default => made_up(warmup_sizes(
            limits.max_batch_size,
            &limits.preferred_batch_sizes,
        )),
        Warmup::Sizes(sizes) => made_up(warmup_sizes(limits.max_batch_size, sizes)),
        Warmup::Samples(samples) => {
            let batched = limits.max_batch_size > 0;
            let batches = samples
                .iter()
                .enumerate()
                .map(|(i, sample)| {
                    let inputs = described_batch(signature, sample, i, batched)
                        .map_err(|e| format!("warm-up {:?}: {e}", sample.name))?;
                    Ok(WarmupBatch {
                        label: format!("{:?}", sample.name),
                        rows: if batched { sample.batch_size } else { 1 },
                        count: sample.count,
                        inputs,
                    })
                })
                .collect::<Result<_, String>>()?;
            Ok(WarmupPlan { batches })
        }
    }
}

/// Runs each batch of `plan` on one backend of each session (backends of a shared session are
/// warmed once); the error names the batch and what failed.
pub(super) fn warm_up(backends: &mut [Box<dyn Backend>], plan: &WarmupPlan) -> Result<(), String> {
    let mut warmed = BTreeSet::new();
    for backend in backends.iter_mut() {
        if !first_of_its_session(backend.as_ref(), &mut warmed) {
            continue;
        }
        for batch in &plan.batches {
            for _ in 0..batch.count {
                backend
                    .infer(&batch.inputs)
                    .map_err(|e| format!("warm-up at {} failed: {e}", batch.label))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataType, Tensor, TensorSpec};
    use crate::runtime::version::instance_devices;
    use crate::runtime::RuntimeError;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Rows of each batch run, in order.
    type Runs = Arc<Mutex<Vec<usize>>>;

    /// Records the rows of each batch it runs; fails batches of `fail_at` rows.
    struct Recorder {
        signature: ModelSignature,
        shared: Option<usize>,
        runs: Runs,
        fail_at: usize,
    }

    impl Backend for Recorder {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }

        fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            let rows = inputs[0].shape[0];
            self.runs.lock().unwrap().push(rows);
            match rows == self.fail_at {
                true => Err(RuntimeError::Run("out of zeros".into())),
                false => Ok(Vec::new()),
            }
        }

        fn shared_id(&self) -> Option<usize> {
            self.shared
        }
    }

    fn signature() -> ModelSignature {
        let spec = TensorSpec {
            name: "x".into(),
            datatype: DataType::F32,
            shape: vec![-1, 4],
        };
        ModelSignature {
            inputs: vec![spec.clone()],
            outputs: vec![spec],
        }
    }

    fn backends(shared: &[Option<usize>], fail_at: usize) -> (Vec<Box<dyn Backend>>, Runs) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let made = shared
            .iter()
            .map(|&shared| {
                Box::new(Recorder {
                    signature: signature(),
                    shared,
                    runs: runs.clone(),
                    fail_at,
                }) as Box<dyn Backend>
            })
            .collect();
        (made, runs)
    }

    #[test]
    fn one_backend_per_shared_session_runs_each_size() {
        let (mut made, runs) = backends(&[Some(1), Some(1), Some(2), None], 0);
        warm_up(&mut made, &plan(&Warmup::Sizes(vec![1, 8]))).unwrap();
        // Session 1 once, session 2 once, the unshared backend once: three times [1, 8].
        assert_eq!(*runs.lock().unwrap(), [1, 8, 1, 8, 1, 8]);
        let (mut made, runs) = backends(&[None], 0);
        warm_up(&mut made, &plan(&Warmup::Off)).unwrap();
        assert!(runs.lock().unwrap().is_empty());
    }

    #[test]
    fn a_failing_batch_names_its_size() {
        let (mut made, _) = backends(&[None], 32);
        let error = warm_up(&mut made, &plan(&Warmup::Sizes(vec![1, 32]))).unwrap_err();
        assert!(
            error.contains("batch size 32") && error.contains("out of zeros"),
            "{error}"
        );
    }

    #[test]
    fn a_model_config_overrides_providers_devices_and_threads() {
        // Placing instances asks the loaded ONNX Runtime whether it has CUDA.
        crate::runtime::env::init(None).expect("ONNX Runtime loads (make setup installs it)");
        let mut base = SessionOptions {
            execution_providers: vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu],
            require_gpu: true,
            ..SessionOptions::cpu()
        };
        base.cuda.device_ids = vec![0, 1];
        assert_eq!(model_options(&base, &ModelConfig::default()), base);
        let config = ModelConfig {
            execution_providers: Some(vec![ExecutionProvider::Cpu]),
            device_ids: Some(vec![3]),
            intra_threads: Some(0),
            ..ModelConfig::default()
        };
        let options = model_options(&base, &config);
        assert_eq!(options.execution_providers, [ExecutionProvider::Cpu]);
        assert!(!options.require_gpu);
        assert_eq!(options.cuda.device_ids, [3]);
        assert_eq!((base.intra_threads, options.intra_threads), (1, 0));
        // require_gpu keeps CUDA first, so instances are placed on the model's devices.
        let spread = ModelConfig {
            device_ids: Some(vec![2, 5]),
            ..ModelConfig::default()
        };
        let options = model_options(&base, &spread);
        let devices = instance_devices(&options, &options.cuda, 3);
        assert_eq!(devices, [Some(2), Some(5), Some(2)]);
    }

    /// The made-up plan of `warmup` for `signature()` at `max_batch_size` 64.
    fn plan(warmup: &Warmup) -> WarmupPlan {
        let config = ModelConfig {
            warmup: warmup.clone(),
            ..ModelConfig::default()
        };
        let limits = BatchLimits::new(64, Duration::ZERO, &[]);
        warmup_plan(&config, &limits, &signature(), None).unwrap()
    }

    #[test]
    fn the_plan_follows_the_config_and_the_limits() {
        let rows = |warmup: Warmup, limits: &BatchLimits| {
            let config = ModelConfig {
                warmup,
                ..ModelConfig::default()
            };
            warmup_plan(&config, limits, &signature(), None)
                .unwrap()
                .rows()
        };
        let limits = BatchLimits::new(16, Duration::ZERO, &[]);
        assert_eq!(rows(Warmup::Default, &limits), [1, 16]);
        assert!(rows(Warmup::Off, &limits).is_empty());
        assert_eq!(rows(Warmup::Sizes(vec![64, 4]), &limits), [4, 16]);
        let preferred = BatchLimits::new(16, Duration::ZERO, &[8]);
        assert_eq!(rows(Warmup::Default, &preferred), [8]);
        // Off stays off for a model without a batch dimension (one batch at its own shape
        // otherwise).
        let config = ModelConfig {
            warmup: Warmup::Off,
            ..ModelConfig::default()
        };
        let unbatched = ModelSignature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: DataType::F32,
                shape: vec![2, 4],
            }],
            outputs: vec![],
        };
        let plan = warmup_plan(&config, &limits, &unbatched, None).unwrap();
        assert!(plan.rows().is_empty());
    }

    /// A described sample runs `count` times per session and names itself when it fails.
    #[test]
    fn a_described_plan_runs_each_sample_count_times() {
        let mut inputs = std::collections::BTreeMap::new();
        let input = crate::repository::warmup::WarmupInput {
            dims: vec![4],
            data_type: None,
            data: crate::repository::warmup::WarmupData::Random,
        };
        inputs.insert("x".to_string(), input);
        let sample = crate::repository::warmup::WarmupSample {
            name: "eight rows".into(),
            batch_size: 8,
            count: 3,
            inputs,
        };
        let described = ModelConfig {
            warmup: Warmup::Samples(vec![sample]),
            ..ModelConfig::default()
        };
        let limits = BatchLimits::new(16, Duration::ZERO, &[]);
        let plan = warmup_plan(&described, &limits, &signature(), None).unwrap();
        assert_eq!(plan.rows(), [8]);
        let (mut made, runs) = backends(&[Some(1), Some(1)], 0);
        warm_up(&mut made, &plan).unwrap();
        assert_eq!(*runs.lock().unwrap(), [8, 8, 8]);
        let (mut made, _) = backends(&[None], 8);
        let error = warm_up(&mut made, &plan).unwrap_err();
        assert!(
            error.contains("warm-up at \"eight rows\" failed"),
            "{error}"
        );
        // Unbatched (max_batch_size 0), the sample must be one row.
        let unbatched = BatchLimits::new(0, Duration::ZERO, &[]);
        let error = warmup_plan(&described, &unbatched, &signature(), None)
            .err()
            .unwrap();
        assert!(error.contains("warmup[0].batch_size"), "{error}");
    }

    #[test]
    fn admission_refuses_naming_the_model_and_remembers_what_was_in_use() {
        let files = VersionFiles {
            embedded_bytes: 100 << 20,
            largest_bytes: 10 << 20,
            ..Default::default()
        };
        let before = need(&files, 1, 2, None);
        let sig = signature();
        let limits = BatchLimits::new(64, Duration::ZERO, &[]);
        let after = need(&files, 1, 2, Some((&sig, &limits)));
        assert!(after.total() > before.total());
        let limit = MemoryLimit {
            bytes: 200 << 20,
            source: crate::runtime::memory::LimitSource::Configured,
        };
        assert!(check_fits("big", &before, Some(&limit), 0).is_ok());
        let refused = check_fits("big", &before, Some(&limit), 100 << 20).unwrap_err();
        assert_eq!(refused.in_use, Some(100 << 20));
        assert!(
            refused.reason.contains("model big needs")
                && refused.reason.contains("runtime.memory_limit"),
            "{}",
            refused.reason
        );
        assert!(check_fits("big", &before, None, u64::MAX).is_ok());
    }
}
