//! Failover on a real 3-node RabbitMQ cluster (`scripts/cluster.sh`, started here if it is not
//! running, the default broker left alone). Two worker processes get all three addresses; the
//! client (producer and exclusive reply queue) stays on a node that is never stopped. Under
//! load, the node a worker is connected to is stopped (`rabbitmqctl stop_app`): the worker moves
//! to another node, every job is answered, none is lost; duplicates (jobs redelivered because
//! their result's confirm or ack was lost with the connection) are counted, and the seconds
//! until the answer rate is back are measured. Then that node returns and another is stopped;
//! then two of three are stopped: the quorum queue has no leader, jobs wait, and the service
//! resumes when one node returns.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::{Cluster, Node, NODES};
use common::fleet::*;
use common::*;
use infermq::client::Client;

/// Answers with the arrival time of each job's first answer.
struct Tally {
    answers: Answers,
    firsts: Vec<Instant>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            answers: Answers::default(),
            firsts: Vec::new(),
        }
    }

    /// Reads answers until `done` holds; fails after `within`.
    async fn until(&mut self, client: &mut Client, within: Duration, done: impl Fn(usize) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self.answers.distinct()) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} distinct answers within {within:?}",
                self.answers.distinct()
            );
            if let Ok(delivery) = client
                .next_reply(left.min(Duration::from_millis(500)))
                .await
            {
                let before = self.answers.distinct();
                self.answers.record(&delivery);
                if self.answers.distinct() > before {
                    self.firsts.push(Instant::now());
                }
            }
        }
    }

    /// First answers per second over `window` before `at`.
    fn rate_before(&self, at: Instant, window: Duration) -> f64 {
        let from = at - window;
        let n = self
            .firsts
            .iter()
            .filter(|t| **t >= from && **t < at)
            .count();
        n as f64 / window.as_secs_f64()
    }

    /// Seconds after `at` until a 1 s window holds at least `rate / 2` first answers.
    fn recovery_after(&self, at: Instant, rate: f64) -> Option<f64> {
        let after: Vec<Instant> = self.firsts.iter().copied().filter(|t| *t >= at).collect();
        let need = ((rate / 2.0).ceil() as usize).max(1);
        after
            .iter()
            .enumerate()
            .find(|(i, t)| {
                after[*i..]
                    .iter()
                    .take_while(|u| **u < **t + Duration::from_secs(1))
                    .count()
                    >= need
            })
            .map(|(_, t)| (*t - at).as_secs_f64())
    }
}

/// The node a worker is connected to, from `infermq_broker_node_info`.
async fn node_of(worker: &ChildWorker) -> Option<Node> {
    let text = scrape(worker.addr).await;
    text.lines()
        .filter(|l| l.starts_with("infermq_broker_node_info{") && l.ends_with(" 1"))
        .find_map(|l| l.split('"').nth(1).and_then(cluster::node_of_label))
}

async fn wait_node(worker: &ChildWorker, not: &[Node], within: Duration) -> Node {
    let deadline = Instant::now() + within;
    loop {
        if let Some(node) = node_of(worker).await.filter(|n| !not.contains(n)) {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "worker on no node within {within:?}:\n{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `ids` steadily, stops `stop` once `stop_after` of them are answered, and returns
/// once all are answered and late duplicates had time to come: (recovery seconds, duplicates).
async fn load_across_stop(
    cluster: &mut Cluster,
    client: &mut Client,
    queue: &str,
    ids: std::ops::Range<usize>,
    stop_after: usize,
    stop: &[Node],
) -> (Option<f64>, usize) {
    let total = ids.len();
    let publisher = steady_publisher(
        client.channel().clone(),
        queue.to_string(),
        client.reply_queue().to_string(),
        ids.clone(),
        50,
        Duration::from_millis(10),
    );
    let mut tally = Tally::new();
    tally
        .until(client, Duration::from_secs(120), |n| n >= stop_after)
        .await;
    let at = Instant::now();
    let rate = tally.rate_before(at, Duration::from_secs(2));
    let took = cluster.stop_nodes(stop);
    eprintln!(
        "stopped {stop:?} in {took:?} at {} answers ({rate:.0} answers/s before)",
        tally.answers.distinct()
    );
    tally
        .until(client, Duration::from_secs(240), |n| n >= total)
        .await;
    publisher.await.expect("publisher");
    tally.answers.drain(client, Duration::from_secs(2)).await;
    assert!(tally.answers.missing(ids.clone()).is_empty(), "jobs lost");
    assert_eq!(
        tally.answers.distinct(),
        total,
        "answers for ids outside the load"
    );
    tally.answers.assert_no_errors();
    let recovery = tally.recovery_after(at, rate);
    (recovery, tally.answers.duplicates())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rides_out_node_stops_of_a_three_node_cluster() {
    let Some(mut cluster) = Cluster::up() else {
        return;
    };
    let repo = model_repository(&["iris"]);
    let prefix = random_prefix();
    let queue = format!("{prefix}.predict.iris");
    let urls = cluster::urls();
    let env = [
        ("INFERMQ__BROKER__URL", urls.as_str()),
        ("INFERMQ__BROKER__RECONNECT_MAX_MS", "2000"),
        ("INFERMQ__TRAINING__ENABLED", "false"),
    ];
    let mut workers = [
        ChildWorker::spawn(&prefix, repo.path(), &env),
        ChildWorker::spawn(&prefix, repo.path(), &env),
    ];
    for worker in &mut workers {
        worker.wait_ready(Duration::from_secs(120)).await;
    }
    let a = wait_node(&workers[0], &[], Duration::from_secs(5)).await;
    let b = wait_node(&workers[1], &[], Duration::from_secs(5)).await;
    eprintln!("workers on c{a} and c{b}");
    // The client's node is never stopped; the first stop is worker 0's node.
    let home = NODES
        .into_iter()
        .find(|n| *n != a && *n != b)
        .unwrap_or_else(|| NODES.into_iter().find(|n| *n != a).expect("three nodes"));
    let other = NODES
        .into_iter()
        .find(|n| *n != a && *n != home)
        .expect("three nodes");
    let mut client = Client::connect(&cluster::url(home))
        .await
        .expect("client on its node");

    let queues = cluster.quorum_queues(&prefix);
    eprintln!("quorum queues (name, leader, members): {queues:?}");
    assert!(
        queues
            .iter()
            .any(|(name, _, members)| *name == queue && *members == 3),
        "{queues:?}"
    );
    let leaders: std::collections::BTreeSet<&String> = queues.iter().map(|(_, l, _)| l).collect();
    assert!(leaders.len() >= 2, "leaders all on one node: {queues:?}");

    // 1. 20,000 jobs; the node of worker 0 stops after 4,000 answers.
    let (recovery, duplicates) =
        load_across_stop(&mut cluster, &mut client, &queue, 0..20_000, 4_000, &[a]).await;
    eprintln!("stop of c{a}: 20000 answered, {duplicates} duplicates, answer rate back to half in {recovery:?} s");
    let moved = wait_node(&workers[0], &[a], Duration::from_secs(30)).await;
    eprintln!("worker 0 moved to c{moved}");
    assert!(!workers[0].log_lines("Broker node connected").is_empty());
    let back = cluster.start_node(a);
    eprintln!("c{a} back in {back:?}");

    // 2. The node comes back and another one stops.
    let (recovery, duplicates) = load_across_stop(
        &mut cluster,
        &mut client,
        &queue,
        20_000..26_000,
        1_000,
        &[other],
    )
    .await;
    eprintln!("stop of c{other}: 6000 answered, {duplicates} duplicates, rate back to half in {recovery:?} s");
    cluster.start_node(other);

    // 3. Two of three stop: no quorum, jobs wait; one node returns and every job is answered.
    let total = 12_000;
    let ids = 30_000..30_000 + total;
    publish_jobs(client.channel(), &queue, client.reply_queue(), ids.clone()).await;
    let mut tally = Tally::new();
    tally
        .until(&mut client, Duration::from_secs(60), |n| n >= 200)
        .await;
    let took = cluster.stop_nodes(&[a, other]);
    eprintln!(
        "stopped c{a} and c{other} in {took:?} at {} answers",
        tally.answers.distinct()
    );
    // Whatever the workers had prefetched is answered; then nothing moves.
    tally
        .answers
        .drain(&mut client, Duration::from_secs(3))
        .await;
    let waiting = tally.answers.distinct();
    tally
        .answers
        .drain(&mut client, Duration::from_secs(3))
        .await;
    eprintln!(
        "quorum lost: {waiting} of {total} answered, then {} more in 3 s",
        tally.answers.distinct() - waiting
    );
    assert!(
        tally.answers.distinct() < total,
        "every job answered without a quorum"
    );
    let resumed = Instant::now();
    cluster.start_node(a);
    tally
        .until(&mut client, Duration::from_secs(240), |n| n >= total)
        .await;
    eprintln!(
        "quorum back: every job answered {:?} after start_app began",
        resumed.elapsed()
    );
    cluster.start_node(other);
    tally
        .answers
        .drain(&mut client, Duration::from_secs(2))
        .await;
    assert!(tally.answers.missing(ids).is_empty(), "jobs lost");
    tally.answers.assert_no_errors();
    eprintln!("quorum loss: {} duplicates", tally.answers.duplicates());

    for worker in &workers {
        worker.sigterm();
    }
    for worker in &mut workers {
        assert!(
            worker.wait_exit(Duration::from_secs(60)).await.is_some(),
            "worker did not stop"
        );
    }
    client.close().await;
}
