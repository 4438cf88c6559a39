use super::*;
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn item(key: u8, rows: usize, at: Instant, id: usize) -> Item<u8, usize> {
    Item {
        key,
        rows,
        arrived: at,
        payload: id,
    }
}

#[test]
fn split_rows_covers_every_row_in_order() {
    assert_eq!(split_rows(5, 0), vec![0..5]);
    assert_eq!(split_rows(5, 8), vec![0..5]);
    assert_eq!(split_rows(8, 8), vec![0..8]);
    assert_eq!(split_rows(20, 8), vec![0..8, 8..16, 16..20]);
}

#[test]
fn limits_normalise_preferred_sizes() {
    let l = BatchLimits::new(16, ms(5), &[8, 0, 32, 4, 8]);
    assert_eq!(l.preferred_batch_sizes, vec![4, 8]);
    assert!(BatchLimits::new(0, ms(5), &[4])
        .preferred_batch_sizes
        .is_empty());
}

#[test]
fn decisions_table() {
    let t0 = Instant::now();
    struct Case {
        name: &'static str,
        max: usize,
        preferred: &'static [usize],
        rows: &'static [usize],
        idle: usize,
        now_ms: u64,
        want: Decision,
    }
    let cases = [
        Case {
            name: "empty",
            max: 8,
            preferred: &[],
            rows: &[],
            idle: 1,
            now_ms: 0,
            want: Decision::Idle,
        },
        Case {
            name: "no idle instance",
            max: 8,
            preferred: &[],
            rows: &[1],
            idle: 0,
            now_ms: 100,
            want: Decision::Idle,
        },
        Case {
            name: "idle instance takes a lone job at once",
            max: 8,
            preferred: &[],
            rows: &[1],
            idle: 1,
            now_ms: 0,
            want: Decision::Dispatch,
        },
        Case {
            name: "preferred size not reached waits",
            max: 8,
            preferred: &[4],
            rows: &[1, 1],
            idle: 1,
            now_ms: 1,
            want: Decision::WaitUntil(t0 + ms(5)),
        },
        Case {
            name: "preferred size reached",
            max: 8,
            preferred: &[4],
            rows: &[2, 2],
            idle: 1,
            now_ms: 1,
            want: Decision::Dispatch,
        },
        Case {
            name: "delay elapsed",
            max: 8,
            preferred: &[4],
            rows: &[1],
            idle: 1,
            now_ms: 5,
            want: Decision::Dispatch,
        },
        Case {
            name: "full batch",
            max: 2,
            preferred: &[4],
            rows: &[1, 1],
            idle: 1,
            now_ms: 0,
            want: Decision::Dispatch,
        },
        Case {
            name: "unbatched model",
            max: 0,
            preferred: &[],
            rows: &[3],
            idle: 1,
            now_ms: 0,
            want: Decision::Dispatch,
        },
    ];
    for c in cases {
        let mut b = Batcher::new(BatchLimits::new(c.max, ms(5), c.preferred));
        for (i, &r) in c.rows.iter().enumerate() {
            b.push(item(0, r, t0, i));
        }
        assert_eq!(b.decide(t0 + ms(c.now_ms), c.idle), c.want, "{}", c.name);
    }
}

#[test]
fn take_respects_limits_keys_and_preferred_sizes() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatchLimits::new(8, ms(5), &[]));
    for (i, (key, rows)) in [(0, 3), (1, 2), (0, 3), (0, 3), (1, 1)]
        .into_iter()
        .enumerate()
    {
        b.push(item(key, rows, t0 + ms(i as u64), i));
    }
    let ids =
        |batch: Vec<Item<u8, usize>>| batch.into_iter().map(|i| i.payload).collect::<Vec<_>>();
    // Group 0 is oldest and full (9 rows ≥ 8): 3 + 3 rows fit, the third item does not.
    assert_eq!(ids(b.take()), vec![0, 2]);
    // Now group 1's front (t0+1) is older than group 0's (t0+3).
    assert_eq!(ids(b.take()), vec![1, 4]);
    assert_eq!(ids(b.take()), vec![3]);
    assert!(b.is_empty() && b.take().is_empty());

    let mut b = Batcher::new(BatchLimits::new(16, ms(5), &[4, 8]));
    for i in 0..11 {
        b.push(item(0, 1, t0, i));
    }
    assert_eq!(b.take().len(), 8, "largest preferred size that fits");
    assert_eq!(
        b.take().len(),
        3,
        "rest below the smallest preferred size, after the delay"
    );

    let mut b = Batcher::new(BatchLimits::new(0, ms(5), &[]));
    b.push(item(0, 5, t0, 0));
    b.push(item(0, 5, t0, 1));
    assert_eq!(b.take().len(), 1, "no batch dimension: one job per run");
}

proptest! {
    #[test]
    fn batches_never_exceed_limits_and_lose_nothing(
        max in 0usize..12,
        preferred in proptest::collection::vec(1usize..12, 0..3),
        jobs in proptest::collection::vec((0u8..3, 1usize..12, 0u64..20, 0usize..3), 1..60),
    ) {
        let t0 = Instant::now();
        let limits = BatchLimits::new(max, ms(5), &preferred);
        let mut b = Batcher::new(limits.clone());
        let mut pushed = Vec::new();
        let mut taken: Vec<Item<u8, usize>> = Vec::new();
        let mut clock = t0;
        for (id, &(key, rows, gap, idle)) in jobs.iter().enumerate() {
            clock += ms(gap);
            // Jobs larger than the limit are split before the policy sees them.
            for (chunk, range) in split_rows(rows, max).into_iter().enumerate() {
                let it = item(key, range.len(), clock, id * 100 + chunk);
                pushed.push((it.key, it.payload));
                b.push(it);
            }
            while b.decide(clock, idle) == Decision::Dispatch {
                let batch = b.take();
                prop_assert!(!batch.is_empty());
                let rows: usize = batch.iter().map(|i| i.rows).sum();
                if max == 0 {
                    prop_assert_eq!(batch.len(), 1);
                } else {
                    prop_assert!(rows <= max, "batch of {} rows over {}", rows, max);
                }
                prop_assert!(batch.iter().all(|i| i.key == batch[0].key), "mixed shapes");
                taken.extend(batch);
            }
        }
        while !b.is_empty() {
            taken.extend(b.take());
        }
        // Every item exactly once, and per key in arrival order.
        prop_assert_eq!(taken.len(), pushed.len());
        for key in 0..3u8 {
            let want: Vec<usize> = pushed.iter().filter(|p| p.0 == key).map(|p| p.1).collect();
            let got: Vec<usize> = taken.iter().filter(|i| i.key == key).map(|i| i.payload).collect();
            prop_assert_eq!(got, want);
        }
    }
}
