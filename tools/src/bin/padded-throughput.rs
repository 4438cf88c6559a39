//! ONNX Runtime compute throughput of a sequence model when jobs of different lengths share
//! padded batches, against jobs of one fixed length: the ceiling padding leaves the worker,
//! without the broker.
//!
//! `padded-throughput MODEL.onnx JOBS MIN..MAX [BUCKETS] [MAX_BATCH] [MAX_ELEMENTS] [VOCAB]`
//!
//! Makes JOBS one-row jobs (`input_ids` drawn below VOCAB, `attention_mask` 1) of lengths drawn
//! uniformly in MIN..MAX (seeded), all waiting at once; batches them with the batching policy
//! (`BUCKETS`: comma-separated bounds, `-` for none; MAX_BATCH rows, default 64; MAX_ELEMENTS,
//! default 0: none), pads each batch with `execution::padding` and runs it on one CPU session (one
//! intra-op thread), after a first pass that warms the session up. Then the same number of
//! jobs, all of the mean length, through the same policy. Prints one JSON line per run: batches, mean rows per batch, mean padded length,
//! seconds of compute (padding included) and jobs/s, the largest difference of a padded answer
//! from the same job run alone (relative to the embedding's norm, checked after the clock
//! stops), and the ratios of the varied run to the fixed one.

use std::time::{Duration, Instant};

use infermq::batching::{BatchLimits, Batcher, Item, LengthsKey, PadLimits};
use infermq::execution::padding::{PadLiteral, PadPlan, PadValue, SymbolicTensor};
use infermq::protocol::{DataType, Tensor};
use infermq::runtime::{env, Backend, OrtBackend, SessionOptions};
use infermq::training::rng::SeededRng;

/// One run's figures.
#[derive(serde::Serialize)]
struct Run {
    label: String,
    jobs: usize,
    batches: usize,
    mean_rows: f64,
    mean_length: f64,
    mean_padded_length: f64,
    seconds: f64,
    jobs_per_s: f64,
    max_relative_difference: f64,
}

fn parse_range(s: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    Ok((a.parse()?, b.parse()?))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: padded-throughput MODEL JOBS MIN..MAX [BUCKETS] [MAX_BATCH] [MAX_ELEMENTS] [VOCAB]"
    );
    let jobs: usize = args[2].parse()?;
    let (min, max) = parse_range(&args[3])?;
    anyhow::ensure!(1 <= min && min <= max, "lengths: expected 1 <= MIN <= MAX");
    let buckets: Vec<usize> = match args.get(4).map(String::as_str) {
        None | Some("-") => Vec::new(),
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
    };
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let limits = BatchLimits::new(arg(5, 64)?, Duration::from_millis(2), &[])
        .with_padding(PadLimits::new(&buckets, arg(6, 0)?));
    let vocab = arg(7, 2048)?;
    env::init(None)?;
    let mut backend = OrtBackend::load(&std::fs::read(&args[1])?, &SessionOptions::cpu())?;
    let mut rng = SeededRng::new(7);
    let lengths: Vec<usize> = (0..jobs).map(|_| min + rng.below(max - min + 1)).collect();
    let mean = lengths.iter().sum::<usize>() as f64 / jobs as f64;
    // A first pass warms the session up for every shape the runs use, so that neither run
    // pays for it.
    run(&mut backend, &limits, &lengths, vocab, "warm-up")?;
    let varied = run(&mut backend, &limits, &lengths, vocab, "varied")?;
    let fixed = vec![mean.round() as usize; jobs];
    let fixed = run(&mut backend, &limits, &fixed, vocab, "fixed")?;
    for r in [&varied, &fixed] {
        println!("{}", serde_json::to_string(r)?);
    }
    println!(
        "{{\"rows_ratio\":{:.3},\"jobs_per_s_ratio\":{:.3}}}",
        varied.mean_rows / fixed.mean_rows,
        varied.jobs_per_s / fixed.jobs_per_s
    );
    Ok(())
}

/// Batches one-row jobs of `lengths` (all waiting) and runs every batch, padded.
fn run(
    backend: &mut OrtBackend,
    limits: &BatchLimits,
    lengths: &[usize],
    vocab: usize,
    label: &str,
) -> anyhow::Result<Run> {
    let mut rng = SeededRng::new(11);
    let now = Instant::now();
    let mut batcher: Batcher<LengthsKey<u8>, [Tensor; 2]> = Batcher::new(limits.clone());
    for &len in lengths {
        let ids: Vec<i64> = (0..len).map(|_| rng.below(vocab) as i64).collect();
        batcher.push(Item {
            key: LengthsKey {
                exact: 0,
                lengths: vec![len],
            },
            rows: 1,
            arrived: now,
            payload: [
                Tensor::from_i64("input_ids", vec![1, len], &ids),
                Tensor::from_i64("attention_mask", vec![1, len], &vec![1; len]),
            ],
        });
    }
    let plan = plan()?;
    let mut batches = 0usize;
    let mut padded = 0usize;
    let mut seconds = 0.0f64;
    let mut answers: Vec<([Tensor; 2], Tensor)> = Vec::with_capacity(lengths.len());
    while !batcher.is_empty() {
        let batch = batcher.take();
        let jobs: Vec<&[Tensor]> = batch.iter().map(|i| &i.payload[..]).collect();
        let started = Instant::now();
        // Each job's lengths, as its batch key holds them (measured once, when it was made).
        let lengths: Vec<&[usize]> = batch.iter().map(|i| &i.key.lengths[..]).collect();
        let inputs = plan.pad_batch(&jobs, &lengths)?;
        let outputs = backend.infer(&inputs)?;
        let shapes: Vec<(usize, &[usize])> = lengths.iter().map(|l| (1, *l)).collect();
        let cut = plan.cut_batch(&outputs, &shapes)?;
        seconds += started.elapsed().as_secs_f64();
        batches += 1;
        let longest = lengths.iter().map(|l| l[0]).max().unwrap_or(0);
        padded += longest * batch.len();
        for (item, mut outputs) in batch.into_iter().zip(cut) {
            answers.push((item.payload, outputs.swap_remove(0)));
        }
    }
    let mut worst = 0.0f64;
    for (inputs, padded) in &answers {
        let alone = backend.infer(inputs)?;
        let (Some(a), Some(b)) = (padded.to_f32_vec(), alone[0].to_f32_vec()) else {
            anyhow::bail!("embedding: expected FP32");
        };
        worst = worst.max(relative(&a, &b));
    }
    let jobs = lengths.len();
    Ok(Run {
        label: label.to_string(),
        jobs,
        batches,
        mean_rows: jobs as f64 / batches as f64,
        mean_length: lengths.iter().sum::<usize>() as f64 / jobs as f64,
        mean_padded_length: padded as f64 / jobs as f64,
        seconds,
        jobs_per_s: jobs as f64 / seconds,
        max_relative_difference: worst,
    })
}

/// The largest |a - b| relative to b's L2 norm.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let norm = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let largest = (a.iter().zip(b))
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(
            if a.len() == b.len() {
                0.0
            } else {
                f64::INFINITY
            },
            f64::max,
        );
    largest / norm.max(f64::MIN_POSITIVE)
}

/// `input_ids` and `attention_mask` padded with 0 along `sequence`; `embedding` not cut.
fn plan() -> anyhow::Result<PadPlan> {
    let seq = [Some("batch"), Some("sequence")];
    let zero = PadValue::new(DataType::I64, &PadLiteral::Int(0))?;
    let input = |name| (SymbolicTensor { name, dims: &seq }, Some(zero.clone()));
    let embedding = SymbolicTensor {
        name: "embedding",
        dims: &[Some("batch"), None],
    };
    Ok(PadPlan::new(
        &[input("input_ids"), input("attention_mask")],
        &[embedding],
    )?)
}
