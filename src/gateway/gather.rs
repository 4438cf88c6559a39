//! Gathering (pure): which inference requests may travel to a model's queue in one job. Apart
//! from I/O: it reads bodies and the model's metadata, and decides.
//!
//! KServe v2 bodies are batches already, so requests for the same model and version whose
//! inputs agree in every dimension but the first (and in datatype and output selection) can be
//! concatenated along dimension 0 into one job and the result split back by row ranges
//! ([`super::merge`]) — what a worker's batcher does with jobs, one hop earlier, so the broker
//! and the worker pay their per-message cost once per group instead of once per request.
//!
//! [`prepare`] decides for one request: it gathers (a [`Candidate`] with its [`GatherKey`]),
//! travels alone (a [`Solo`] reason), or is refused here exactly as the worker would refuse it.
//! [`super::groups::Gathering`] decides when such requests leave.

use std::collections::HashMap;

use serde::Deserialize;

use crate::protocol::{
    decode_request, validate_request, DataType, InferenceRequest, ModelSignature, ProtocolError,
    TensorData, TensorSpec,
};

/// What the fleet's metadata says about a model version, as gathering needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub signature: ModelSignature,
    /// Rows a worker runs in one batch; 0: the model runs one job at a time (no gathering).
    pub max_batch_size: usize,
}

#[derive(Deserialize)]
struct RawSpec {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

#[derive(Deserialize)]
struct RawMetadata {
    inputs: Vec<RawSpec>,
    outputs: Vec<RawSpec>,
    #[serde(default)]
    max_batch_size: usize,
}

impl ModelInfo {
    /// Reads a worker's metadata answer; `None` when it does not parse (then nothing gathers).
    pub fn parse(body: &[u8]) -> Option<ModelInfo> {
        let raw: RawMetadata = serde_json::from_slice(body).ok()?;
        let specs = |raw: Vec<RawSpec>| {
            raw.into_iter()
                .map(|s| {
                    Some(TensorSpec {
                        name: s.name,
                        datatype: DataType::parse(&s.datatype)?,
                        shape: s.shape,
                    })
                })
                .collect::<Option<Vec<_>>>()
        };
        Some(ModelInfo {
            signature: ModelSignature {
                inputs: specs(raw.inputs)?,
                outputs: specs(raw.outputs)?,
            },
            max_batch_size: raw.max_batch_size,
        })
    }

    /// Whether jobs of this model can carry many requests' rows: a worker batches it, and
    /// every input and output has a dynamic dimension 0.
    pub fn batchable(&self) -> bool {
        let sig = &self.signature;
        self.max_batch_size > 1
            && sig
                .inputs
                .iter()
                .chain(&sig.outputs)
                .all(TensorSpec::is_batched)
    }
}

/// Requests with equal keys can share a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatherKey {
    pub model: String,
    /// The version that runs: the path's, else the body's `parameters.model_version`.
    pub version: Option<String>,
    /// Each model input's dimensions after the first, in the signature's order.
    pub row_shapes: Vec<Vec<usize>>,
    /// The request's `outputs` names, in its order; `None`: every output.
    pub outputs: Option<Vec<String>>,
    /// The tenant its job is stamped with (`x-infermq-tenant`): tenants never share a job.
    pub tenant: Option<String>,
}

/// Why a request travels alone: a bounded label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solo {
    /// Gathering is off (`gateway.gather_window = 0`).
    Off,
    /// The model's metadata is not known yet (it is being asked for), or did not parse.
    NoMetadata,
    /// The model runs one job at a time (no dynamic batch dimension, or `max_batch_size` ≤ 1).
    NotBatchable,
    /// The request asked for a timeout shorter than the gateway's default.
    OwnDeadline,
    /// The body does not decode: the worker answers it, word for word.
    Undecodable,
    /// BYTES inputs, kept apart.
    Bytes,
    /// `parameters` other than those gathering carries over.
    Parameters,
    /// The body names a version (`parameters.model_version`) and the path none: the metadata
    /// at hand describes the newest version, which may not be the one that runs.
    Version,
    /// More rows than `max_batch_size`, or more bytes than the budget, on its own.
    TooLarge,
    /// Nothing was waiting to go with it.
    Alone,
    /// Its group's job failed at the worker; it was sent again on its own.
    Retried,
}

impl Solo {
    pub fn as_str(self) -> &'static str {
        match self {
            Solo::Off => "off",
            Solo::NoMetadata => "no_metadata",
            Solo::NotBatchable => "not_batchable",
            Solo::OwnDeadline => "own_deadline",
            Solo::Undecodable => "undecodable",
            Solo::Bytes => "bytes",
            Solo::Parameters => "parameters",
            Solo::Version => "version",
            Solo::TooLarge => "too_large",
            Solo::Alone => "alone",
            Solo::Retried => "retried",
        }
    }
}

/// A request that may gather: decoded, checked against the model, with its key and size.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: GatherKey,
    pub request: InferenceRequest,
    pub rows: usize,
    /// Bytes its inputs take in a binary body.
    pub bytes: usize,
}

/// What [`prepare`] decided for one request.
#[derive(Debug)]
pub enum Prepared {
    Gather(Box<Candidate>),
    Solo(Solo),
    /// What the worker would answer `invalid_request` (the gateway answers it the same way).
    Refuse {
        id: Option<String>,
        error: ProtocolError,
    },
}

/// The request's own properties that decide before its body is read.
#[derive(Debug, Clone, Copy)]
pub struct Traits<'a> {
    pub model: &'a str,
    pub path_version: Option<&'a str>,
    /// The request's timeout is shorter than `gateway.timeout_ms`.
    pub own_deadline: bool,
    pub binary_header_len: Option<usize>,
    /// The API key's name, stamped on the job.
    pub tenant: Option<&'a str>,
}

impl Traits<'_> {
    /// Why the request goes alone whatever its body and model, if it does.
    pub fn solo(&self) -> Option<Solo> {
        self.own_deadline.then_some(Solo::OwnDeadline)
    }
}

/// Decides whether a request may gather with others (see the module doc).
pub fn prepare(traits: Traits<'_>, body: &[u8], info: &ModelInfo, max_bytes: usize) -> Prepared {
    if !info.batchable() {
        return Prepared::Solo(Solo::NotBatchable);
    }
    if let Some(reason) = traits.solo() {
        return Prepared::Solo(reason);
    }
    let Ok(request) = decode_request(body, traits.binary_header_len) else {
        return Prepared::Solo(Solo::Undecodable);
    };
    if !plain_parameters(body, traits.binary_header_len) {
        return Prepared::Solo(Solo::Parameters);
    }
    if traits.path_version.is_none() && request.model_version.is_some() {
        return Prepared::Solo(Solo::Version);
    }
    if let Err(error) = validate_request(&request, &info.signature) {
        let id = request.id;
        return Prepared::Refuse { id, error };
    }
    if request
        .inputs
        .iter()
        .any(|t| matches!(t.data, TensorData::Bytes(_)))
    {
        return Prepared::Solo(Solo::Bytes);
    }
    let rows = request.inputs.first().map_or(1, |t| t.rows());
    let bytes: usize = request.inputs.iter().map(tensor_bytes).sum();
    if rows > info.max_batch_size || bytes > max_bytes {
        return Prepared::Solo(Solo::TooLarge);
    }
    let row_shapes = info
        .signature
        .inputs
        .iter()
        .filter_map(|spec| request.inputs.iter().find(|t| t.name == spec.name))
        .map(|t| t.row_shape().to_vec())
        .collect();
    let version = traits
        .path_version
        .map(str::to_string)
        .or_else(|| request.model_version.clone());
    let key = GatherKey {
        model: traits.model.to_string(),
        version,
        row_shapes,
        outputs: request
            .outputs
            .as_ref()
            .map(|o| o.iter().map(|o| o.name.clone()).collect()),
        tenant: traits.tenant.map(str::to_string),
    };
    Prepared::Gather(Box::new(Candidate {
        key,
        request,
        rows,
        bytes,
    }))
}

fn tensor_bytes(t: &crate::protocol::Tensor) -> usize {
    match &t.data {
        TensorData::Fixed(b) => b.len(),
        TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
    }
}

type Params = Option<HashMap<String, serde::de::IgnoredAny>>;

#[derive(Deserialize)]
struct WithParams {
    #[serde(default)]
    parameters: Params,
}

#[derive(Deserialize)]
struct AllParams {
    #[serde(default)]
    parameters: Params,
    #[serde(default)]
    inputs: Vec<WithParams>,
    #[serde(default)]
    outputs: Option<Vec<WithParams>>,
}

/// True when the body's `parameters` (of the request, its inputs and its outputs) are only
/// those a gathered job carries over: `model_version`, `binary_data_output`,
/// `binary_data_size`, `binary_data`. Others are the worker's to ignore or refuse, alone.
fn plain_parameters(body: &[u8], binary_header_len: Option<usize>) -> bool {
    let header = &body[..binary_header_len.unwrap_or(body.len()).min(body.len())];
    let Ok(all) = serde_json::from_slice::<AllParams>(header) else {
        return false;
    };
    let only = |p: &Params, allowed: &[&str]| {
        p.as_ref()
            .is_none_or(|m| m.keys().all(|k| allowed.contains(&k.as_str())))
    };
    only(&all.parameters, &["model_version", "binary_data_output"])
        && all
            .inputs
            .iter()
            .all(|t| only(&t.parameters, &["binary_data_size"]))
        && all
            .outputs
            .iter()
            .flatten()
            .all(|o| only(&o.parameters, &["binary_data"]))
}

#[cfg(test)]
#[path = "gather_tests.rs"]
mod tests;
