//! The memory each loaded version holds on its devices (ONNX Runtime's arenas: the CUDA
//! device's for a version on a GPU, the CPU's otherwise), read when asked: in `/v2/models`
//! ([`device_memory_json`]) and, at each scrape, `infermq_model_device_memory_bytes`
//! ([`DeviceMemoryCollector`]).

use std::sync::Weak;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use serde_json::json;

use super::{ModelRegistry, ServedVersion};

/// `device_memory` of a version in `/v2/models`: one entry per session (device).
pub fn device_memory_json(version: &ServedVersion) -> serde_json::Value {
    let sessions: Vec<serde_json::Value> = version
        .arenas
        .iter()
        .filter_map(|probe| {
            let stats = probe.read()?;
            Some(json!({
                "device": probe.device(),
                "reserved_bytes": stats.reserved,
                "in_use_bytes": stats.in_use,
                "peak_in_use_bytes": stats.peak_in_use,
            }))
        })
        .collect();
    json!(sessions)
}

/// Reads every loaded version's arenas when Prometheus scrapes (registered in the worker's
/// registry; holds the model registry weakly).
pub struct DeviceMemoryCollector {
    registry: Weak<ModelRegistry>,
    gauge: IntGaugeVec,
}

impl DeviceMemoryCollector {
    pub fn new(registry: Weak<ModelRegistry>) -> DeviceMemoryCollector {
        let opts = Opts::new(
            "infermq_model_device_memory_bytes",
            "Bytes a loaded model version's ONNX Runtime arena holds on a device (reserved from it: on a GPU, the version's GPU memory)",
        );
        let gauge = IntGaugeVec::new(opts, &["model", "version", "device"])
            .expect("static metric definition is valid");
        DeviceMemoryCollector { registry, gauge }
    }
}

impl Collector for DeviceMemoryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Rebuilt at each scrape: unloaded versions disappear.
        self.gauge.reset();
        if let Some(registry) = self.registry.upgrade() {
            for version in registry.served() {
                for probe in &version.arenas {
                    if let Some(stats) = probe.read() {
                        let device = probe.device();
                        let labels = [version.model.as_ref(), version.label.as_ref(), &device];
                        self.gauge
                            .with_label_values(&labels)
                            .add(i64::try_from(stats.reserved).unwrap_or(i64::MAX));
                    }
                }
            }
        }
        self.gauge.collect()
    }
}
