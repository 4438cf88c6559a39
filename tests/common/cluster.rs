//! The local 3-node RabbitMQ cluster of `scripts/cluster.sh` (nodes `infermq-c1..c3@localhost`,
//! AMQP 5681-5683), for the failover tests: started if it is not running (and then stopped
//! when the guard drops), reused if it is (and then every node it stopped is started again).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A node of the cluster, 1 to 3.
pub type Node = usize;
pub const NODES: [Node; 3] = [1, 2, 3];

pub fn port(node: Node) -> u16 {
    5680 + node as u16
}

pub fn url(node: Node) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", port(node))
}

/// Every node's URL, comma-separated: `INFERMQ__BROKER__URL` of a worker.
pub fn urls() -> String {
    NODES.map(url).join(",")
}

/// The node whose `host:port` is `label` (the `node` label of `infermq_broker_node_info`).
pub fn node_of_label(label: &str) -> Option<Node> {
    NODES
        .into_iter()
        .find(|n| label == format!("127.0.0.1:{}", port(*n)))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh")
}

/// Runs `scripts/cluster.sh args…`; the output, or the failure's output as the error.
pub fn run(args: &[&str]) -> Result<String, String> {
    let output = Command::new(script())
        .args(args)
        .output()
        .map_err(|e| format!("cluster.sh {args:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("cluster.sh {args:?} failed: {text}"))
    }
}

/// `rabbitmqctl` against one node of the cluster, failing the test on error.
pub fn ctl(node: Node, args: &[&str]) -> String {
    let n = node.to_string();
    let mut all = vec!["ctl", n.as_str()];
    all.extend_from_slice(args);
    run(&all).unwrap_or_else(|e| panic!("{e}"))
}

/// The running cluster; see the module documentation for what dropping it does.
pub struct Cluster {
    started_here: bool,
    stopped: Vec<Node>,
}

impl Cluster {
    /// The cluster, started if needed (about 30 s to 2 min); `None`, with the reason printed,
    /// when RabbitMQ's server is not installed here.
    pub fn up() -> Option<Cluster> {
        if !std::path::Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() {
            eprintln!("SKIPPED: no /usr/lib/rabbitmq/bin/rabbitmq-server (scripts/ensure-rabbitmq.sh installs it)");
            return None;
        }
        let status = run(&["status"]).unwrap_or_default();
        let running = status.matches(" pid ").count() == 3
            && NODES
                .iter()
                .all(|n| status.contains(&format!("infermq-c{n}@localhost\"")));
        let started_here = !running;
        if started_here {
            let started = Instant::now();
            let out = run(&["start"]).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("cluster started in {:?}:\n{out}", started.elapsed());
        } else {
            eprintln!("reusing the running cluster:\n{status}");
        }
        Some(Cluster {
            started_here,
            stopped: Vec::new(),
        })
    }

    /// Stops the RabbitMQ application of `nodes` (`rabbitmqctl stop_app`: its clients are
    /// disconnected, its queue replicas go down, the Erlang VM stays up).
    /// several at once.
    pub fn stop_nodes(&mut self, nodes: &[Node]) -> Duration {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for node in nodes {
                scope.spawn(move || ctl(*node, &["stop_app"]));
            }
        });
        self.stopped.extend_from_slice(nodes);
        started.elapsed()
    }

    /// [`Cluster::stop_nodes`] on a blocking thread, so answers can be read meanwhile; the
    /// handle returns how long the stops took.
    pub fn stop_nodes_in_background(
        &mut self,
        nodes: &[Node],
    ) -> tokio::task::JoinHandle<Duration> {
        self.stopped.extend_from_slice(nodes);
        let nodes = nodes.to_vec();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            std::thread::scope(|scope| {
                for node in &nodes {
                    scope.spawn(move || ctl(*node, &["stop_app"]));
                }
            });
            started.elapsed()
        })
    }

    /// Starts `node`'s application again and waits until it runs.
    pub fn start_node(&mut self, node: Node) -> Duration {
        let started = Instant::now();
        ctl(node, &["start_app"]);
        ctl(node, &["await_startup"]);
        self.stopped.retain(|n| *n != node);
        started.elapsed()
    }

    /// `rabbitmqctl list_queues name leader members` for the queues starting with `prefix`:
    /// (queue, leader node, member count).
    pub fn quorum_queues(&self, prefix: &str) -> Vec<(String, String, usize)> {
        let text = ctl(
            1,
            &[
                "-q",
                "list_queues",
                "name",
                "leader",
                "members",
                "--no-table-headers",
            ],
        );
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let name = fields.next()?.to_string();
                let leader = fields.next()?.to_string();
                let members = fields.next()?.matches("@localhost").count();
                Some((name, leader, members))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started_here {
            if let Err(e) = run(&["stop"]) {
                eprintln!("{e}");
            }
            return;
        }
        for node in std::mem::take(&mut self.stopped) {
            let n = node.to_string();
            if let Err(e) = run(&["ctl", &n, "start_app"]) {
                eprintln!("{e}");
            }
        }
    }
}
