//! The policy with padded keys: table cases and property tests (budgets, buckets, order within a
//! group, every item exactly once, and the starvation bound of the module doc).

use super::*;
use proptest::prelude::*;

type Key = LengthsKey<u8>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn item(class: u8, lengths: &[usize], rows: usize, at: Instant, id: usize) -> Item<Key, usize> {
    Item {
        key: LengthsKey {
            exact: class,
            lengths: lengths.to_vec(),
        },
        rows,
        arrived: at,
        payload: id,
    }
}

fn ids(batch: Vec<Item<Key, usize>>) -> Vec<usize> {
    batch.into_iter().map(|i| i.payload).collect()
}

fn batcher(max: usize, buckets: &[usize], elements: usize) -> Batcher<Key, usize> {
    let limits = BatchLimits::new(max, ms(5), &[]).with_padding(PadLimits::new(buckets, elements));
    Batcher::new(limits)
}

#[test]
fn items_differing_only_in_lengths_share_a_batch() {
    let t0 = Instant::now();
    let mut b = batcher(8, &[], 0);
    b.push(item(0, &[5], 1, t0, 0));
    b.push(item(1, &[5], 1, t0, 1));
    b.push(item(0, &[90], 1, t0, 2));
    b.push(item(0, &[7], 2, t0, 3));
    assert_eq!(ids(b.take()), vec![0, 2, 3]);
    assert_eq!(ids(b.take()), vec![1], "another exact shape never joins");
    assert!(b.is_empty());
}

#[test]
fn a_long_job_pads_short_ones_only_within_the_budget() {
    let t0 = Instant::now();
    // 64 rows a batch, 1 024 padded elements: 64 rows of 16 tokens.
    let mut b = batcher(64, &[], 1024);
    b.push(item(0, &[128], 1, t0, 0));
    for id in 1..64 {
        b.push(item(0, &[10], 1, t0, id));
    }
    assert_eq!(b.decide(t0, 1), Decision::Dispatch);
    let first = ids(b.take());
    assert_eq!(first, (0..8).collect::<Vec<_>>(), "8 rows × 128 = 1 024");
    assert_eq!(ids(b.take()), (8..64).collect::<Vec<_>>(), "56 × 10 fit");

    // With buckets the long job runs apart: it is oldest and its bucket holds it alone.
    let mut b = batcher(64, &[16, 32, 64, 128], 1024);
    b.push(item(0, &[128], 1, t0, 0));
    for id in 1..64 {
        b.push(item(0, &[10], 1, t0, id));
    }
    assert_eq!(ids(b.take()), vec![0]);
    assert_eq!(b.take().len(), 63);
}

#[test]
fn an_item_over_the_budget_runs_alone() {
    let t0 = Instant::now();
    let mut b = batcher(8, &[], 100);
    b.push(item(0, &[300], 1, t0, 0));
    b.push(item(0, &[3], 1, t0, 1));
    assert!(b.is_full(), "the budget stops the batch before the rows do");
    assert_eq!(ids(b.take()), vec![0]);
    assert!(!b.is_full());
    assert_eq!(ids(b.take()), vec![1]);
}

#[test]
fn buckets_keep_lengths_apart() {
    let t0 = Instant::now();
    let mut b = batcher(8, &[16, 32, 64], 0);
    for (id, len) in [10, 40, 12, 45, 64, 65, 500].into_iter().enumerate() {
        b.push(item(0, &[len], 1, t0, id));
    }
    assert_eq!(ids(b.take()), vec![0, 2]);
    assert_eq!(ids(b.take()), vec![1, 3, 4]);
    assert_eq!(
        ids(b.take()),
        vec![5, 6],
        "above the last bound: one more bucket"
    );
}

#[test]
fn a_full_group_goes_before_the_oldest_at_most_max_bypass_times() {
    let t0 = Instant::now();
    let mut b = batcher(4, &[16], 0);
    b.push(item(0, &[30], 1, t0, 0));
    for id in 1..=12 {
        b.push(item(0, &[8], 1, t0, id));
    }
    let mut order = Vec::new();
    while !b.is_empty() {
        order.push(ids(b.take()));
    }
    assert_eq!(MAX_BYPASS, 1);
    assert_eq!(
        order,
        vec![
            vec![1, 2, 3, 4],
            vec![0],
            vec![5, 6, 7, 8],
            vec![9, 10, 11, 12]
        ]
    );
}

/// One simulated job: class, lengths (1 or 2 padded dimensions), rows, gap before it, idle
/// instances after it.
type Job = (u8, Vec<usize>, usize, u64, usize);

fn jobs() -> impl Strategy<Value = Vec<Job>> {
    (1usize..3).prop_flat_map(|dims| {
        prop::collection::vec(
            (
                0u8..2,
                prop::collection::vec(1usize..200, dims),
                1usize..4,
                0u64..4,
                0usize..3,
            ),
            1..80,
        )
    })
}

proptest! {
    #[test]
    fn padded_batches_keep_budgets_order_and_never_starve(
        max in 0usize..12,
        preferred in prop::collection::vec(1usize..12, 0..3),
        buckets in prop::collection::vec(1usize..250, 0..4),
        elements in prop_oneof![Just(0usize), 50usize..3000],
        jobs in jobs(),
    ) {
        let t0 = Instant::now();
        let pad = PadLimits::new(&buckets, elements);
        let limits = BatchLimits::new(max, ms(5), &preferred).with_padding(pad.clone());
        let mut b: Batcher<Key, usize> = Batcher::new(limits);
        // Per item: (class, bucket, takes done when pushed, items pending then).
        let mut pushed = Vec::new();
        let mut taken_at = vec![None; jobs.len()];
        let mut order: Vec<usize> = Vec::new();
        let mut takes = 0usize;
        let mut clock = t0;
        let mut take = |b: &mut Batcher<Key, usize>, takes: &mut usize| -> Result<(), TestCaseError> {
            let batch = b.take();
            *takes += 1;
            prop_assert!(!batch.is_empty());
            let rows: usize = batch.iter().map(|i| i.rows).sum();
            let mut longest = Vec::new();
            for i in &batch {
                key::raise(&mut longest, &i.key.lengths);
            }
            if max == 0 {
                prop_assert_eq!(batch.len(), 1);
            } else {
                prop_assert!(rows <= max, "batch of {} rows over {}", rows, max);
            }
            if batch.len() > 1 && elements > 0 {
                let padded = padded_elements(rows, &[], &longest);
                prop_assert!(padded <= elements, "{} padded elements over {}", padded, elements);
            }
            let first = &batch[0].key;
            prop_assert!(batch.iter().all(|i| i.key.exact == first.exact), "mixed shapes");
            prop_assert!(batch.iter().all(|i| pad.bucket(&i.key.lengths) == pad.bucket(&first.lengths)), "mixed buckets");
            for i in batch {
                taken_at[i.payload] = Some(*takes);
                order.push(i.payload);
            }
            Ok(())
        };
        for (id, (class, lengths, rows, gap, idle)) in jobs.iter().enumerate() {
            clock += ms(*gap);
            pushed.push((*class, pad.bucket(lengths), takes, b.len()));
            // Jobs larger than the limit are split before the policy sees them.
            let rows = if max == 0 { *rows } else { (*rows).min(max) };
            b.push(item(*class, lengths, rows, clock, id));
            while b.decide(clock, *idle) == Decision::Dispatch {
                take(&mut b, &mut takes)?;
            }
        }
        while !b.is_empty() {
            take(&mut b, &mut takes)?;
        }
        // Every item exactly once.
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..jobs.len()).collect::<Vec<_>>());
        // Push order kept within each group (class and bucket).
        for (id, p) in pushed.iter().enumerate() {
            for (later, q) in pushed.iter().enumerate().skip(id + 1) {
                if (p.0, &p.1) == (q.0, &q.1) {
                    prop_assert!(taken_at[id] <= taken_at[later], "item {} overtook {}", later, id);
                }
            }
        }
        // No starvation: taken within (P + 1) × (MAX_BYPASS + 1) takes of its push.
        for (id, &(_, _, takes_then, pending)) in pushed.iter().enumerate() {
            let waited = taken_at[id].expect("taken") - takes_then;
            prop_assert!(
                waited <= (pending + 1) * (MAX_BYPASS + 1),
                "item {} waited {} takes with {} pending", id, waited, pending
            );
        }
    }
}
