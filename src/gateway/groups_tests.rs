use super::*;
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_rows: 4,
    max_bytes: 1000,
    max_requests: 1024,
};

#[test]
fn a_lone_request_goes_at_once_and_later_ones_wait_for_the_window() {
    let now = Instant::now();
    let mut g = Gathering::new(1, Duration::ZERO);
    assert_eq!(
        g.arrive(&"m", 1, 1, 10, LIMITS, now),
        Arrival::Send(vec![1])
    );
    for i in 2..=6 {
        assert_eq!(g.arrive(&"m", i, 1, 10, LIMITS, now), Arrival::Wait);
    }
    // Another key is not held back by this one.
    assert_eq!(
        g.arrive(&"n", 9, 1, 10, LIMITS, now),
        Arrival::Send(vec![9])
    );
    // Four rows fit a job; the rest goes when that job is answered.
    assert_eq!(g.finished(&"m"), vec![vec![2, 3, 4, 5]]);
    assert_eq!(g.finished(&"m"), vec![vec![6]]);
    assert_eq!(g.finished(&"m"), Vec::<Vec<i32>>::new());
    assert_eq!(g.finished(&"n"), Vec::<Vec<i32>>::new());
    assert_eq!(g.groups(), 0);
}

#[test]
fn bytes_bound_a_group_and_an_oversized_request_still_goes() {
    let now = Instant::now();
    let mut g = Gathering::new(1, Duration::ZERO);
    assert_eq!(
        g.arrive(&"m", 1, 1, 10, LIMITS, now),
        Arrival::Send(vec![1])
    );
    assert_eq!(g.arrive(&"m", 2, 1, 600, LIMITS, now), Arrival::Wait);
    assert_eq!(g.arrive(&"m", 3, 1, 600, LIMITS, now), Arrival::Wait);
    assert_eq!(g.arrive(&"m", 4, 9, 10, LIMITS, now), Arrival::Wait);
    assert_eq!(g.finished(&"m"), vec![vec![2]]);
    assert_eq!(g.finished(&"m"), vec![vec![3]]);
    assert_eq!(g.finished(&"m"), vec![vec![4]]);
}

#[test]
fn requests_bound_a_group_whatever_its_rows() {
    let now = Instant::now();
    let limits = Limits {
        max_rows: 100,
        max_bytes: 1000,
        max_requests: 2,
    };
    let mut g = Gathering::new(1, Duration::ZERO);
    assert_eq!(g.arrive(&"m", 1, 1, 1, limits, now), Arrival::Send(vec![1]));
    for i in 2..=6 {
        assert_eq!(g.arrive(&"m", i, 1, 1, limits, now), Arrival::Wait);
    }
    assert_eq!(g.finished(&"m"), vec![vec![2, 3]]);
    assert_eq!(g.finished(&"m"), vec![vec![4, 5]]);
    assert_eq!(g.finished(&"m"), vec![vec![6]]);
    // A hold ends as soon as the group holds its most requests.
    let mut held = Gathering::new(1, Duration::from_secs(1));
    assert_eq!(
        held.arrive(&"m", 1, 1, 1, limits, now),
        Arrival::Hold(now + Duration::from_secs(1))
    );
    assert_eq!(
        held.arrive(&"m", 2, 1, 1, limits, now),
        Arrival::Send(vec![1, 2])
    );
}

#[test]
fn a_hold_gathers_for_the_delay_then_releases_or_fills() {
    let now = Instant::now();
    let delay = Duration::from_micros(300);
    let mut g = Gathering::new(2, delay);
    assert_eq!(
        g.arrive(&"m", 1, 1, 1, LIMITS, now),
        Arrival::Hold(now + delay)
    );
    assert_eq!(g.arrive(&"m", 2, 1, 1, LIMITS, now), Arrival::Wait);
    assert_eq!(g.release(&"m"), Some(vec![1, 2]));
    assert_eq!(g.release(&"m"), None);
    assert_eq!(
        g.arrive(&"m", 3, 2, 1, LIMITS, now),
        Arrival::Hold(now + delay)
    );
    assert_eq!(
        g.arrive(&"m", 4, 2, 1, LIMITS, now),
        Arrival::Send(vec![3, 4])
    );
    // Both jobs in flight: the next one waits without a hold.
    assert_eq!(g.arrive(&"m", 5, 1, 1, LIMITS, now), Arrival::Wait);
    assert_eq!(g.finished(&"m"), vec![vec![5]]);
}

#[derive(Debug, Clone)]
enum Op {
    Arrive(usize),
    Finish,
}

proptest! {
    /// No request lost or sent twice, each key's order kept, a job within its limits (or one
    /// request), never more than `window` jobs in flight.
    #[test]
    fn every_request_leaves_once_in_order_within_limits(
        window in 1usize..4,
        ops in prop::collection::vec(prop_oneof![
            3 => (1usize..6).prop_map(Op::Arrive),
            2 => Just(Op::Finish),
        ], 1..80),
    ) {
        let now = Instant::now();
        let mut g = Gathering::new(window, Duration::ZERO);
        let mut next = 0usize;
        let mut in_flight = 0usize;
        let mut sent = Vec::new();
        let mut rows_of = Vec::new();
        let check = |job: Vec<usize>, rows_of: &[usize], sent: &mut Vec<usize>| {
            let rows: usize = job.iter().map(|&i| rows_of[i]).sum();
            assert!(job.len() == 1 || rows <= LIMITS.max_rows, "{job:?}");
            sent.extend(job);
        };
        for op in ops {
            match op {
                Op::Arrive(rows) => {
                    rows_of.push(rows);
                    match g.arrive(&"k", next, rows, 1, LIMITS, now) {
                        Arrival::Send(job) => {
                            in_flight += 1;
                            check(job, &rows_of, &mut sent);
                        }
                        Arrival::Wait => {}
                        Arrival::Hold(_) => unreachable!("no delay"),
                    }
                    next += 1;
                }
                Op::Finish if in_flight > 0 => {
                    in_flight -= 1;
                    for job in g.finished(&"k") {
                        in_flight += 1;
                        check(job, &rows_of, &mut sent);
                    }
                }
                Op::Finish => {}
            }
            prop_assert!(in_flight <= window);
        }
        while in_flight > 0 {
            in_flight -= 1;
            for job in g.finished(&"k") {
                in_flight += 1;
                check(job, &rows_of, &mut sent);
            }
        }
        prop_assert_eq!(sent, (0..next).collect::<Vec<_>>());
        prop_assert_eq!(g.groups(), 0);
    }
}
