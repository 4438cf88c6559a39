//! Failover on a real 3-node RabbitMQ cluster (`scripts/cluster.sh`, started here if it is not
//! running, the default broker left alone). Two worker processes get all three addresses; the
//! client (producer and exclusive reply queue) stays on a node that is never stopped. Under
//! load, the node a worker is connected to is stopped (`rabbitmqctl stop_app`): the worker moves
//! to another node, every job is answered, none is lost; duplicates (jobs redelivered because
//! their result's confirm or ack was lost with the connection) are counted, and the seconds
//! until the answer rate is back are measured. Then that node returns and another is stopped;
//! then two of three are stopped: the quorum queue has no leader, jobs wait, and the service
//! resumes when one node returns. Last, a training job's node stops mid-training: the job is
//! trained again to its result. Nodes stop with `rabbitmqctl stop_app` (see
//! docs/OPERATIONS.md, "RabbitMQ clusters and failover"). Takes about 2 minutes, plus the
//! cluster's start when it is not running.

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

    /// The longest time between two first answers after `at` (or from `at` to the first).
    fn longest_gap_after(&self, at: Instant) -> f64 {
        let mut last = at;
        let mut longest = Duration::ZERO;
        for t in self.firsts.iter().filter(|t| **t >= at) {
            longest = longest.max(*t - last);
            last = *t;
        }
        longest.as_secs_f64()
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

/// Epochs of the training job (150 steps each): long enough (tens of seconds) that the stop,
/// which closes the node's connections only after seconds, lands mid-training.
const EPOCHS: usize = 600;

/// Stage 4: a training job whose worker's node stops mid-training is redelivered and trained again to
/// its result; its progress messages may come twice, its result at least once. The client is
/// on a node no worker is on, so the trainer's node can always be stopped.
async fn training_survives_a_node_stop(
    cluster: &mut Cluster,
    prefix: &str,
    workers: &[ChildWorker; 2],
) {
    let mut on = Vec::new();
    for worker in workers {
        on.push(wait_node(worker, &[], Duration::from_secs(30)).await);
    }
    let home = NODES
        .into_iter()
        .find(|n| !on.contains(n))
        .expect("two workers leave a node free");
    let mut client = Client::connect(&cluster::url(home), &Default::default())
        .await
        .expect("client on its node");
    let client = &mut client;
    let csv = manifest_path("models/iris/iris.csv");
    let job = serde_json::json!({
        "id": "train-iris", "model_name": "iris",
        "layers": [{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "epochs": EPOCHS, "batch_size": 1, "seed": 7,
        "data": {"uri": format!("file://{}", csv.display()), "format": "csv", "label_column": "species"}
    });
    let body = infermq::protocol::EncodedBody {
        body: serde_json::to_vec(&job).expect("json"),
        header_len: None,
        content_type: "application/json",
    };
    let properties = client.job_properties("train-1", &body, infermq::client::headers(&[]));
    client
        .publish(&format!("{prefix}.train"), &body.body, properties)
        .await
        .expect("publish the training job");
    let (mut progress, mut results, mut stopped) = (0usize, 0usize, None);
    let mut stopping = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while results == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = client.next_reply(left).await.expect("training answer");
        let event = infermq::client::header_str(&delivery, "x-event");
        assert_eq!(
            infermq::client::header_str(&delivery, "x-error-code"),
            None,
            "{}",
            String::from_utf8_lossy(&delivery.data)
        );
        match event.as_deref() {
            Some("progress") => progress += 1,
            Some("result") => results += 1,
            other => panic!("unexpected event {other:?}"),
        }
        if stopped.is_none() && progress == 20 {
            // The node of the worker that trains (the other one's is never stopped here).
            let mut trainer = None;
            for worker in workers {
                let text = scrape(worker.addr).await;
                if metric_sum(&text, "infermq_training_in_progress", &[]) >= 1.0 {
                    trainer = node_of(worker).await;
                }
            }
            let node = trainer.expect("a worker trains");
            assert_ne!(node, home, "a worker moved to the client's node");
            stopping = Some(cluster.stop_nodes_in_background(&[node]));
            eprintln!("training: stopping c{node} after {progress} progress messages");
            stopped = Some(node);
        }
    }
    let node = stopped.expect("the job trained for 20 epochs at least");
    let took = stopping.expect("stopping").await.expect("stop_app");
    eprintln!("training: stop_app took {took:?}");
    // A result published and confirmed but not acked before the stop comes twice.
    while let Ok(delivery) = client.next_reply(Duration::from_secs(3)).await {
        if infermq::client::header_str(&delivery, "x-event").as_deref() == Some("result") {
            results += 1;
        }
    }
    cluster.start_node(node);
    eprintln!(
        "training: {results} result(s) after {progress} progress messages ({EPOCHS} epochs per run)"
    );
    assert!(
        progress > EPOCHS,
        "the job was not trained again after the stop: {progress} progress messages"
    );
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
    let stopping = cluster.stop_nodes_in_background(stop);
    let at_stop = tally.answers.distinct();
    tally
        .until(client, Duration::from_secs(240), |n| n >= total)
        .await;
    let took = stopping.await.expect("stop_app");
    eprintln!(
        "stopped {stop:?} in {took:?} at {at_stop} answers ({rate:.0} answers/s before); longest pause between answers after it: {:.2} s",
        tally.longest_gap_after(at)
    );
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
    // The training job reads models/iris/iris.csv: file:// data needs training.data_dir.
    let data_dir = manifest_path("models/iris").display().to_string();
    let env = [
        ("INFERMQ__BROKER__URL", urls.as_str()),
        ("INFERMQ__BROKER__RECONNECT_MAX_MS", "2000"),
        ("INFERMQ__TRAINING__DATA_DIR", data_dir.as_str()),
        // Every epoch's progress: the training stage stops a node after 20 of them.
        ("INFERMQ__TRAINING__PROGRESS_INTERVAL_MS", "0"),
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
    let mut client = Client::connect(&cluster::url(home), &Default::default())
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
    // The workers are paused (SIGSTOP) while the jobs are published and the nodes stop (a
    // stop takes seconds), so a backlog is waiting when the quorum goes.
    let total = 12_000;
    let ids = 30_000..30_000 + total;
    for worker in &workers {
        worker.signal("STOP");
    }
    publish_jobs(
        client.channel(),
        &queue,
        client.reply_queue(),
        ids.start..ids.end - 1_000,
    )
    .await;
    let took = cluster.stop_nodes(&[a, other]);
    eprintln!("stopped c{a} and c{other} in {took:?}");
    for worker in &workers {
        worker.signal("CONT");
    }
    let mut tally = Tally::new();
    // Jobs published without a quorum: their confirms wait for it.
    let late = {
        let channel = client.channel().clone();
        let (queue, reply_to) = (queue.clone(), client.reply_queue().to_string());
        tokio::spawn(async move {
            publish_jobs(&channel, &queue, &reply_to, ids.end - 1_000..ids.end).await
        })
    };
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
        tally.answers.distinct() < total - 1_000,
        "the backlog was answered without a quorum"
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
    late.await
        .expect("jobs published during the quorum loss are confirmed");
    cluster.start_node(other);
    tally
        .answers
        .drain(&mut client, Duration::from_secs(2))
        .await;
    assert!(tally.answers.missing(ids).is_empty(), "jobs lost");
    tally.answers.assert_no_errors();
    eprintln!("quorum loss: {} duplicates", tally.answers.duplicates());

    training_survives_a_node_stop(&mut cluster, &prefix, &workers).await;

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
