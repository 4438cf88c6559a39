//! Codec benchmarks: the hot path of every prediction job (issue 5).
//!
//! JSON and binary decode/encode of FP32 requests and results with one row of 4, 256 and
//! 4096 values, and `concat_rows`/`slice_rows` of a 64-job batch.
//! Run: `cargo bench --bench codec` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use infermq::protocol::{
    decode_request, decode_response, encode_request, encode_response, InferenceRequest,
    InferenceResponse, OutputTensor, ResultParameters, Tensor,
};
use std::hint::black_box;

const WIDTHS: [usize; 3] = [4, 256, 4096];

/// Deterministic values with realistic digit counts (not round numbers).
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.7331).sin() * 3.7).collect()
}

fn request(width: usize) -> InferenceRequest {
    InferenceRequest {
        id: Some("req-42".into()),
        inputs: vec![Tensor::from_f32("input", vec![1, width], &values(width))],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    }
}

fn response(width: usize, binary: bool) -> InferenceResponse<'static> {
    InferenceResponse {
        id: Some("req-42"),
        model_name: "bench",
        model_version: "1",
        outputs: vec![OutputTensor {
            tensor: Tensor::from_f32("output", vec![1, width], &values(width)),
            binary,
        }],
        parameters: ResultParameters {
            batch_size: 17,
            queue_ms: 1.9,
            compute_ms: 0.4,
        },
    }
}

fn requests(c: &mut Criterion) {
    for binary in [false, true] {
        let kind = if binary { "binary" } else { "json" };
        let mut g = c.benchmark_group(format!("request_{kind}"));
        for width in WIDTHS {
            let req = request(width);
            let enc = encode_request(&req, binary);
            g.throughput(Throughput::Bytes(enc.body.len() as u64));
            g.bench_with_input(BenchmarkId::new("decode", width), &enc, |b, enc| {
                b.iter(|| decode_request(black_box(&enc.body), enc.header_len))
            });
            g.bench_with_input(BenchmarkId::new("encode", width), &req, |b, req| {
                b.iter(|| encode_request(black_box(req), binary))
            });
        }
        g.finish();
    }
}

fn responses(c: &mut Criterion) {
    for binary in [false, true] {
        let kind = if binary { "binary" } else { "json" };
        let mut g = c.benchmark_group(format!("response_{kind}"));
        for width in WIDTHS {
            let resp = response(width, binary);
            let enc = encode_response(&resp);
            g.throughput(Throughput::Bytes(enc.body.len() as u64));
            g.bench_with_input(BenchmarkId::new("encode", width), &resp, |b, resp| {
                b.iter(|| encode_response(black_box(resp)))
            });
            g.bench_with_input(BenchmarkId::new("decode", width), &enc, |b, enc| {
                b.iter(|| decode_response(black_box(&enc.body), enc.header_len))
            });
        }
        g.finish();
    }
}

fn batching(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_64_jobs");
    for width in [4, 256] {
        let jobs: Vec<Tensor> = (0..64)
            .map(|_| Tensor::from_f32("input", vec![1, width], &values(width)))
            .collect();
        let batch = Tensor::concat_rows(&jobs).expect("jobs agree");
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("concat_rows", width), &jobs, |b, jobs| {
            b.iter(|| Tensor::concat_rows(black_box(jobs)))
        });
        g.bench_with_input(BenchmarkId::new("slice_rows", width), &batch, |b, batch| {
            b.iter(|| {
                (0..64)
                    .map(|i| black_box(batch).slice_rows(i, i + 1))
                    .collect::<Vec<_>>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, requests, responses, batching);
criterion_main!(benches);
