//! How sessions use CUDA GPUs (`[runtime.cuda]`): which device each instance runs on, a cap on
//! ONNX Runtime's CUDA memory arena, how the arena grows, and how cuDNN picks convolution
//! algorithms; mapped onto ONNX Runtime's CUDA execution provider options.
//!
//! Instances are spread over `device_ids` round robin: instance `i` of a version runs on
//! `device_ids[i % len]`, so `instances = 4` over two GPUs puts two on each. Settings are
//! checked once at start ([`CudaSettings::check`]); mapping them cannot fail afterwards. They
//! only matter when the CUDA execution provider is registered.

use ort::ep::cuda::ConvAlgorithmSearch;
use ort::ep::{self, ArenaExtendStrategy};
use serde::Deserialize;

/// Below this a `gpu_mem_limit` is surely a unit mistake (GiB meant, bytes written).
pub const MIN_GPU_MEM_LIMIT: u64 = 1 << 20;

/// `[runtime.cuda]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CudaSettings {
    /// CUDA devices for instances, round robin; empty: device 0.
    #[serde(deserialize_with = "super::affinity::one_or_many")]
    pub device_ids: Vec<usize>,
    /// Cap of ONNX Runtime's CUDA arena per session, bytes; 0: no cap.
    pub gpu_mem_limit: u64,
    pub arena_extend_strategy: ArenaExtend,
    pub cudnn_conv_algo_search: ConvSearch,
}

/// `runtime.cuda.arena_extend_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArenaExtend {
    /// Grow by powers of two (ONNX Runtime's default): fewer, larger allocations.
    #[default]
    NextPowerOfTwo,
    /// Grow by what is asked: tighter memory, more allocations.
    SameAsRequested,
}

/// `runtime.cuda.cudnn_conv_algo_search`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvSearch {
    /// Benchmark every algorithm on the first run of each shape (ONNX Runtime's default).
    #[default]
    Exhaustive,
    /// cuDNN's heuristics: a quick first run, maybe not the fastest kernel.
    Heuristic,
    /// The implicit-precomputed-GEMM algorithm, no search: least memory.
    Default,
}

/// The CUDA options of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaInstance {
    pub device_id: i32,
    /// `None`: no cap.
    pub gpu_mem_limit: Option<u64>,
    pub arena_extend_strategy: ArenaExtend,
    pub cudnn_conv_algo_search: ConvSearch,
}

impl CudaSettings {
    /// Checks the settings; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (i, &id) in self.device_ids.iter().enumerate() {
            if i32::try_from(id).is_err() {
                return Err((
                    "runtime.cuda.device_ids",
                    format!("device {id} is out of range"),
                ));
            }
            if self.device_ids[..i].contains(&id) {
                return Err((
                    "runtime.cuda.device_ids",
                    format!("device {id} is listed twice"),
                ));
            }
        }
        if self.gpu_mem_limit != 0 && self.gpu_mem_limit < MIN_GPU_MEM_LIMIT {
            let message = format!(
                "{} bytes is below 1 MiB: the limit is in bytes (0: no limit)",
                self.gpu_mem_limit
            );
            return Err(("runtime.cuda.gpu_mem_limit", message));
        }
        if usize::try_from(self.gpu_mem_limit).is_err() {
            return Err((
                "runtime.cuda.gpu_mem_limit",
                "does not fit this platform".into(),
            ));
        }
        Ok(())
    }

    /// The options of instance `index` (0-based) of a version: its device, round robin.
    pub fn instance(&self, index: usize) -> CudaInstance {
        let device = match self.device_ids.len() {
            0 => 0,
            n => self.device_ids[index % n],
        };
        CudaInstance {
            // Checked at start to fit.
            device_id: i32::try_from(device).unwrap_or(0),
            gpu_mem_limit: (self.gpu_mem_limit > 0).then_some(self.gpu_mem_limit),
            arena_extend_strategy: self.arena_extend_strategy,
            cudnn_conv_algo_search: self.cudnn_conv_algo_search,
        }
    }
}

impl CudaInstance {
    /// ONNX Runtime's CUDA execution provider with these options.
    pub fn provider(&self) -> ep::CUDA {
        let mut cuda = ep::CUDA::default()
            .with_device_id(self.device_id)
            .with_arena_extend_strategy(match self.arena_extend_strategy {
                ArenaExtend::NextPowerOfTwo => ArenaExtendStrategy::NextPowerOfTwo,
                ArenaExtend::SameAsRequested => ArenaExtendStrategy::SameAsRequested,
            })
            .with_conv_algorithm_search(match self.cudnn_conv_algo_search {
                ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
                ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
                ConvSearch::Default => ConvAlgorithmSearch::Default,
            });
        if let Some(limit) = self.gpu_mem_limit {
            cuda = cuda.with_memory_limit(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        cuda
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Result<CudaSettings, String> {
        let parsed: CudaSettings = toml::from_str(toml).map_err(|e| e.to_string())?;
        parsed
            .check()
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        Ok(parsed)
    }

    #[test]
    fn instances_are_spread_over_devices_round_robin() {
        let s = settings("device_ids = [2, 0]").unwrap();
        let devices: Vec<i32> = (0..5).map(|i| s.instance(i).device_id).collect();
        assert_eq!(devices, [2, 0, 2, 0, 2]);
        let none = CudaSettings::default();
        assert_eq!(none.instance(3).device_id, 0);
        assert_eq!(none.instance(0).gpu_mem_limit, None);
    }

    #[test]
    fn settings_are_checked_naming_the_key() {
        let cases = [
            (
                "device_ids = [0, 0]",
                "runtime.cuda.device_ids: device 0 is listed twice",
            ),
            (
                "device_ids = [4294967296]",
                "runtime.cuda.device_ids: device 4294967296 is out of range",
            ),
            (
                "gpu_mem_limit = 8",
                "runtime.cuda.gpu_mem_limit: 8 bytes is below 1 MiB",
            ),
            ("arena_extend_strategy = \"grow\"", "unknown variant `grow`"),
            (
                "cudnn_conv_algo_search = \"fast\"",
                "unknown variant `fast`",
            ),
            ("devices = [0]", "unknown field `devices`"),
        ];
        for (toml, expected) in cases {
            let error = settings(toml).unwrap_err();
            assert!(error.contains(expected), "{toml}: {error}");
        }
        assert!(settings("gpu_mem_limit = 0").is_ok());
    }

    /// Every setting reaches the execution provider's options under ONNX Runtime's key.
    #[test]
    fn options_map_onto_the_cuda_execution_provider() {
        let s = settings(
            "device_ids = [1, 3]\ngpu_mem_limit = 2147483648\narena_extend_strategy = \"same_as_requested\"\ncudnn_conv_algo_search = \"heuristic\"",
        )
        .unwrap();
        let options = format!("{:?}", s.instance(1).provider());
        for expected in [
            "\"device_id\": \"3\"",
            "\"gpu_mem_limit\": \"2147483648\"",
            "\"arena_extend_strategy\": \"kSameAsRequested\"",
            "\"cudnn_conv_algo_search\": \"HEURISTIC\"",
        ] {
            assert!(options.contains(expected), "{expected} in {options}");
        }
        let default = format!("{:?}", CudaSettings::default().instance(0).provider());
        assert!(!default.contains("gpu_mem_limit"), "{default}");
        assert!(
            default.contains("\"cudnn_conv_algo_search\": \"EXHAUSTIVE\""),
            "{default}"
        );
    }
}
