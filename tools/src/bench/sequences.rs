//! Job bodies of different lengths, for models with a sequence dimension: token ids drawn in
//! the vocabulary with mask 1 (`--length-range`), or lines of a text file for text models
//! (`--text`). JSON bodies; like the FP32 bodies they are built before the clock starts, as up
//! to [`MAX_VARIANTS`] variants that the jobs take in turn.

use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::bodies::{BodyError, BodyTemplate, Encoding, JobShape};
use super::BenchArgs;
use infermq::protocol::DataType;

/// Distinct bodies per run: enough that the lengths of a run follow their distribution.
pub const MAX_VARIANTS: usize = 1024;
/// The inputs of a token-id job, as Hugging Face text models name them.
pub const IDS_INPUT: &str = "input_ids";
pub const MASK_INPUT: &str = "attention_mask";
/// The BYTES input of a text job.
pub const TEXT_INPUT: &str = "text";

/// Sequence lengths, both ends included: `8..128` or one length (`64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthRange {
    pub min: usize,
    pub max: usize,
}

impl FromStr for LengthRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("expected MIN..MAX or N, lengths of at least 1, got {s:?}"))
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (number(a)?, number(b.trim_start_matches('='))?),
            None => (number(s)?, number(s)?),
        };
        if min > max {
            return Err(format!("expected MIN <= MAX, got {s:?}"));
        }
        Ok(LengthRange { min, max })
    }
}

#[derive(Serialize)]
struct InputJson<'a, T: Serialize> {
    name: &'a str,
    shape: &'a [usize],
    datatype: &'static str,
    data: &'a [T],
}

/// `","inputs":[...]}` for `inputs`, as [`BodyTemplate`] splices it after a job's id.
fn tail(inputs: &[serde_json::Value]) -> Result<Vec<u8>, BodyError> {
    let mut out = br#"","inputs":"#.to_vec();
    serde_json::to_writer(&mut out, inputs)?;
    out.push(b'}');
    Ok(out)
}

fn variants(jobs: u64) -> usize {
    usize::try_from(jobs.max(1)).map_or(MAX_VARIANTS, |j| j.min(MAX_VARIANTS))
}

/// Jobs of `rows` sequences of one length each, drawn uniformly in `lengths`, of ids drawn in
/// `0..vocab`, mask 1.
pub fn token_bodies(
    lengths: LengthRange,
    vocab: usize,
    rows: usize,
    jobs: u64,
    seed: u64,
) -> Result<BodyTemplate, BodyError> {
    if rows == 0 || vocab == 0 {
        return Err(BodyError::Empty("--rows and --vocab must be at least 1"));
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let tails = (0..variants(jobs))
        .map(|_| {
            let len = rng.random_range(lengths.min..=lengths.max);
            let ids: Vec<i64> = (0..rows * len)
                .map(|_| rng.random_range(0..vocab) as i64)
                .collect();
            let shape = [rows, len];
            let input = |name, data: &[i64]| {
                serde_json::to_value(InputJson {
                    name,
                    shape: &shape,
                    datatype: "INT64",
                    data,
                })
            };
            tail(&[
                input(IDS_INPUT, &ids)?,
                input(MASK_INPUT, &vec![1; rows * len])?,
            ])
        })
        .collect::<Result<_, _>>()?;
    Ok(BodyTemplate::json(tails))
}

/// Jobs of `rows` lines of `lines` each (drawn at random), in the BYTES input `text`.
pub fn text_bodies(
    lines: &[&str],
    rows: usize,
    jobs: u64,
    seed: u64,
) -> Result<BodyTemplate, BodyError> {
    if rows == 0 || lines.is_empty() {
        return Err(BodyError::Empty(
            "--rows must be at least 1 and the --text file must hold a line",
        ));
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let tails = (0..variants(jobs))
        .map(|_| {
            let picked: Vec<&str> = (0..rows)
                .map(|_| lines[rng.random_range(0..lines.len())])
                .collect();
            let input = serde_json::to_value(InputJson {
                name: TEXT_INPUT,
                shape: &[rows],
                datatype: "BYTES",
                data: &picked,
            })?;
            tail(&[input])
        })
        .collect::<Result<_, _>>()?;
    Ok(BodyTemplate::json(tails))
}

/// The bodies the flags ask for: token ids, text, or FP32 rows.
pub fn bodies(args: &BenchArgs, datatype: DataType) -> anyhow::Result<BodyTemplate> {
    let varied = args.length_range.is_some() || args.text.is_some();
    anyhow::ensure!(
        !(varied && args.binary),
        "--binary is for FP32 rows only, not --length-range or --text"
    );
    if let Some(lengths) = args.length_range {
        return Ok(token_bodies(
            lengths, args.vocab, args.rows, args.jobs, args.seed,
        )?);
    }
    if let Some(path) = &args.text {
        let text = read_text(path)?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        return Ok(text_bodies(&lines, args.rows, args.jobs, args.seed)?);
    }
    let shape = JobShape {
        input_name: args.input_name.clone(),
        rows: args.rows,
        features: args.features,
        datatype,
    };
    let encoding = if args.binary {
        Encoding::Binary
    } else {
        Encoding::Json
    };
    Ok(BodyTemplate::build(&shape, encoding, args.jobs, args.seed)?)
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("--text {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn body(t: &BodyTemplate, index: u64) -> Value {
        let mut buf = Vec::new();
        assert_eq!(t.write(index, &mut buf), None, "JSON bodies");
        serde_json::from_slice(&buf).expect("a JSON body")
    }

    #[test]
    fn length_ranges_parse_both_ends_included() {
        assert_eq!("8..128".parse(), Ok(LengthRange { min: 8, max: 128 }));
        assert_eq!("8..=128".parse(), Ok(LengthRange { min: 8, max: 128 }));
        assert_eq!("64".parse(), Ok(LengthRange { min: 64, max: 64 }));
        for bad in ["0..4", "9..8", "x", "..4", ""] {
            assert!(bad.parse::<LengthRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn token_jobs_have_ids_in_the_vocabulary_and_lengths_in_the_range() {
        let lengths = LengthRange { min: 8, max: 12 };
        let t = token_bodies(lengths, 50, 2, 300, 7).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..300 {
            let v = body(&t, i);
            assert_eq!(v["id"], i.to_string());
            let ids = &v["inputs"][0];
            let mask = &v["inputs"][1];
            assert_eq!(
                (ids["name"].as_str(), mask["name"].as_str()),
                (Some(IDS_INPUT), Some(MASK_INPUT))
            );
            assert_eq!(ids["datatype"], "INT64");
            let len = ids["shape"][1].as_u64().unwrap() as usize;
            assert!((8..=12).contains(&len));
            assert_eq!(ids["shape"], mask["shape"]);
            assert_eq!(ids["shape"][0], 2);
            let data = ids["data"].as_array().unwrap();
            assert_eq!(data.len(), 2 * len);
            assert!(data
                .iter()
                .all(|x| x.as_i64().is_some_and(|x| (0..50).contains(&x))));
            assert!(mask["data"].as_array().unwrap().iter().all(|x| x == 1));
            seen.insert(len);
        }
        assert_eq!(seen.len(), 5, "every length drawn: {seen:?}");
    }

    #[test]
    fn text_jobs_hold_lines_of_the_text() {
        let lines = ["In the beginning", "And God said", "\"quoted\" \\ text"];
        let t = text_bodies(&lines, 3, 10, 7).unwrap();
        let v = body(&t, 4);
        let input = &v["inputs"][0];
        assert_eq!(
            (input["name"].as_str(), input["datatype"].as_str()),
            (Some(TEXT_INPUT), Some("BYTES"))
        );
        assert_eq!(input["shape"], serde_json::json!([3]));
        for s in input["data"].as_array().unwrap() {
            assert!(lines.contains(&s.as_str().unwrap()));
        }
        assert!(text_bodies(&[], 1, 1, 7).is_err());
    }
}
