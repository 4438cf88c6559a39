//! The batching policy's hot path: pushing jobs, deciding, and taking batches.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use infermq::batching::{split_rows, BatchLimits, Batcher, Decision, Item};

fn push_and_take(c: &mut Criterion) {
    let mut group = c.benchmark_group("batcher");
    for &(jobs, max) in &[(256usize, 64usize), (1024, 256)] {
        group.throughput(Throughput::Elements(jobs as u64));
        group.bench_with_input(
            BenchmarkId::new("push_decide_take", format!("{jobs}jobs_max{max}")),
            &(jobs, max),
            |b, &(jobs, max)| {
                let now = Instant::now();
                b.iter(|| {
                    let mut batcher: Batcher<Vec<usize>, usize> =
                        Batcher::new(BatchLimits::new(max, Duration::from_millis(5), &[]));
                    let mut taken = 0;
                    for i in 0..jobs {
                        batcher.push(Item {
                            key: vec![4, usize::MAX],
                            rows: 1,
                            arrived: now,
                            payload: i,
                        });
                        if i % 32 == 31 {
                            while batcher.decide(now, 1) == Decision::Dispatch {
                                taken += batcher.take().len();
                            }
                        }
                    }
                    while !batcher.is_empty() {
                        taken += batcher.take().len();
                    }
                    black_box(taken)
                });
            },
        );
    }
    group.bench_function("split_rows_10000_by_256", |b| {
        b.iter(|| black_box(split_rows(black_box(10_000), 256)))
    });
    group.finish();
}

criterion_group!(benches, push_and_take);
criterion_main!(benches);
