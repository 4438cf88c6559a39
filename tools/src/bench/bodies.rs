//! Job bodies for the load generator, built before the timed loop.
//!
//! Random FP32 values (seeded) are encoded once into a few variants; a job's body is the variant's
//! bytes with the job's `id` spliced in front, so the timed loop does one copy per job and no
//! number formatting.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use infermq::protocol::DataType;

/// How tensors travel in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// KServe v2 JSON, `data` inline.
    Json,
    /// v2 binary extension: JSON header, then raw little-endian bytes.
    Binary,
}

/// The shape of every job of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobShape {
    pub input_name: String,
    pub rows: usize,
    pub features: usize,
    pub datatype: DataType,
}

/// Most distinct data variants per run, and the memory they may take together.
const MAX_VARIANTS: usize = 64;
const VARIANT_BUDGET_BYTES: usize = 64 << 20;

/// Pre-encoded bodies; [`BodyTemplate::write`] produces job `i`'s body.
#[derive(Debug)]
pub struct BodyTemplate {
    encoding: Encoding,
    /// Bytes after the id: the rest of the JSON body, or the rest of the binary header.
    tails: Vec<Vec<u8>>,
    /// Binary only: the raw tensor bytes of each variant.
    raw: Vec<Vec<u8>>,
}

const ID_PREFIX: &[u8] = br#"{"id":""#;

#[derive(Serialize)]
struct InputJson<'a> {
    name: &'a str,
    shape: [usize; 2],
    datatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

/// Why bodies could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("datatype {0} is not supported by the load generator (only FP32)")]
    UnsupportedDatatype(DataType),
    #[error("rows and features must be at least 1 (got rows={rows}, features={features})")]
    EmptyTensor { rows: usize, features: usize },
    #[error("{0}")]
    Empty(&'static str),
    #[error("encoding the job body failed: {0}")]
    Encode(#[from] serde_json::Error),
}

impl BodyTemplate {
    /// Encodes up to [`MAX_VARIANTS`] variants of random data (fewer for large jobs or few jobs).
    pub fn build(
        shape: &JobShape,
        encoding: Encoding,
        jobs: u64,
        seed: u64,
    ) -> Result<Self, BodyError> {
        if shape.datatype != DataType::F32 {
            return Err(BodyError::UnsupportedDatatype(shape.datatype));
        }
        if shape.rows == 0 || shape.features == 0 {
            return Err(BodyError::EmptyTensor {
                rows: shape.rows,
                features: shape.features,
            });
        }
        let values = shape.rows.saturating_mul(shape.features);
        let approx_bytes = values.saturating_mul(12).max(1);
        let variants = (VARIANT_BUDGET_BYTES / approx_bytes)
            .clamp(1, MAX_VARIANTS)
            .min(usize::try_from(jobs.max(1)).unwrap_or(usize::MAX));
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut tails = Vec::with_capacity(variants);
        let mut raw = Vec::new();
        for _ in 0..variants {
            let data: Vec<f32> = (0..values)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            match encoding {
                Encoding::Json => tails.push(json_tail(shape, Some(&data), None)?),
                Encoding::Binary => {
                    raw.push(data.iter().flat_map(|v| v.to_le_bytes()).collect());
                }
            }
        }
        if encoding == Encoding::Binary {
            tails.push(json_tail(shape, None, Some(values * 4))?);
        }
        Ok(BodyTemplate {
            encoding,
            tails,
            raw,
        })
    }

    /// JSON bodies from pre-encoded tails (`","inputs":[...]}`, everything after the id's
    /// digits), taken in turn by the jobs.
    pub fn json(tails: Vec<Vec<u8>>) -> Self {
        BodyTemplate {
            encoding: Encoding::Json,
            tails,
            raw: Vec::new(),
        }
    }

    /// Writes job `index`'s body into `buf` (cleared first). Returns the JSON header length for
    /// binary bodies (the `inference-header-content-length` header), `None` for JSON bodies.
    pub fn write(&self, index: u64, buf: &mut Vec<u8>) -> Option<usize> {
        buf.clear();
        buf.extend_from_slice(ID_PREFIX);
        buf.extend_from_slice(index.to_string().as_bytes());
        match self.encoding {
            Encoding::Json => {
                buf.extend_from_slice(&self.tails[variant(index, self.tails.len())]);
                None
            }
            Encoding::Binary => {
                buf.extend_from_slice(&self.tails[0]);
                let header_len = buf.len();
                buf.extend_from_slice(&self.raw[variant(index, self.raw.len())]);
                Some(header_len)
            }
        }
    }
}

fn variant(index: u64, count: usize) -> usize {
    (index % count.max(1) as u64) as usize
}

/// `","inputs":[...]}` — everything after the id's digits.
fn json_tail(
    shape: &JobShape,
    data: Option<&[f32]>,
    binary_size: Option<usize>,
) -> Result<Vec<u8>, BodyError> {
    let input = InputJson {
        name: &shape.input_name,
        shape: [shape.rows, shape.features],
        datatype: shape.datatype.as_str(),
        data,
        parameters: binary_size.map(|binary_data_size| BinaryParams { binary_data_size }),
    };
    let mut tail = br#"","inputs":["#.to_vec();
    serde_json::to_writer(&mut tail, &input)?;
    tail.extend_from_slice(b"]}");
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn shape(rows: usize, features: usize) -> JobShape {
        JobShape {
            input_name: "in\"put".into(),
            rows,
            features,
            datatype: DataType::F32,
        }
    }

    #[test]
    fn json_body_is_a_v2_request_with_the_job_id() {
        let t = BodyTemplate::build(&shape(2, 3), Encoding::Json, 10, 7).unwrap();
        let mut buf = Vec::new();
        assert_eq!(t.write(42, &mut buf), None);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["id"], "42");
        let input = &v["inputs"][0];
        assert_eq!(input["name"], "in\"put");
        assert_eq!(input["shape"], serde_json::json!([2, 3]));
        assert_eq!(input["datatype"], "FP32");
        let data = input["data"].as_array().unwrap();
        assert_eq!(data.len(), 6);
        assert!(data
            .iter()
            .all(|x| x.as_f64().is_some_and(|x| (-1.0..1.0).contains(&x))));
    }

    #[test]
    fn binary_body_has_header_then_raw_bytes() {
        let t = BodyTemplate::build(&shape(3, 4), Encoding::Binary, 5, 7).unwrap();
        let mut buf = Vec::new();
        let header_len = t.write(1234, &mut buf).unwrap();
        let header: Value = serde_json::from_slice(&buf[..header_len]).unwrap();
        assert_eq!(header["id"], "1234");
        let input = &header["inputs"][0];
        assert_eq!(input["parameters"]["binary_data_size"], 48);
        assert!(input.get("data").is_none());
        let raw = &buf[header_len..];
        assert_eq!(raw.len(), 48);
        let first = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        assert!((-1.0..1.0).contains(&first));
    }

    #[test]
    fn bodies_are_seeded_and_vary_between_jobs() {
        let a = BodyTemplate::build(&shape(1, 4), Encoding::Json, 100, 7).unwrap();
        let b = BodyTemplate::build(&shape(1, 4), Encoding::Json, 100, 7).unwrap();
        let c = BodyTemplate::build(&shape(1, 4), Encoding::Json, 100, 8).unwrap();
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut z = Vec::new();
        a.write(3, &mut x);
        b.write(3, &mut y);
        c.write(3, &mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
        a.write(4, &mut y);
        let data =
            |buf: &[u8]| serde_json::from_slice::<Value>(buf).unwrap()["inputs"][0]["data"].clone();
        assert_ne!(data(&x), data(&y));
    }

    #[test]
    fn large_jobs_use_fewer_variants() {
        let t = BodyTemplate::build(&shape(1024, 1024), Encoding::Json, 1000, 7).unwrap();
        assert!(t.tails.len() < MAX_VARIANTS);
        assert!(!t.tails.is_empty());
        let one_job = BodyTemplate::build(&shape(1, 4), Encoding::Json, 1, 7).unwrap();
        assert_eq!(one_job.tails.len(), 1);
    }

    #[test]
    fn unsupported_input_is_refused() {
        let mut s = shape(1, 4);
        s.datatype = DataType::I64;
        assert!(matches!(
            BodyTemplate::build(&s, Encoding::Json, 1, 7),
            Err(BodyError::UnsupportedDatatype(_))
        ));
        assert!(matches!(
            BodyTemplate::build(&shape(0, 4), Encoding::Json, 1, 7),
            Err(BodyError::EmptyTensor { .. })
        ));
    }
}
