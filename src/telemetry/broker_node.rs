//! Which broker node a worker is connected to: `infermq_broker_node_info{node="host:port"}`,
//! 1 for the node of the current connection and 0 for every other configured node, and the
//! same node for `/readyz`. Labels come only from the configured addresses (a bounded set,
//! credentials never included: see [`crate::broker::addresses::node_of`]).

use std::sync::Mutex;

use prometheus::{IntGaugeVec, Opts, Registry};

/// The node gauge and the node now connected to.
pub struct BrokerNode {
    gauge: IntGaugeVec,
    current: Mutex<Option<String>>,
}

impl BrokerNode {
    /// Registers `infermq_broker_node_info` in `registry`.
    pub fn register(registry: &Registry) -> BrokerNode {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "infermq_broker_node_info",
                "1 for the broker node (host:port) this worker is connected to, 0 for the other configured nodes.",
            ),
            &["node"],
        )
        .expect("valid gauge opts");
        registry
            .register(Box::new(gauge.clone()))
            .expect("a unique metric name");
        BrokerNode {
            gauge,
            current: Mutex::new(None),
        }
    }

    /// Exports every configured node at 0 until one is connected.
    pub fn configure(&self, nodes: &[String]) {
        for node in nodes {
            self.gauge.with_label_values(&[node.as_str()]).set(0);
        }
    }

    /// The node connected to now (`None`: disconnected); its series becomes 1, the others 0.
    pub fn set(&self, node: Option<&str>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            self.gauge.with_label_values(&[old.as_str()]).set(0);
        }
        if let Some(node) = node {
            self.gauge.with_label_values(&[node]).set(1);
            *current = Some(node.to_string());
        }
    }

    /// The node connected to now.
    pub fn get(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_at_a_time_is_1() {
        let registry = Registry::new();
        let node = BrokerNode::register(&registry);
        node.configure(&["a:1".into(), "b:2".into()]);
        node.set(Some("a:1"));
        node.set(Some("b:2"));
        assert_eq!(node.get().as_deref(), Some("b:2"));
        let value = |n: &str| node.gauge.with_label_values(&[n]).get();
        assert_eq!((value("a:1"), value("b:2")), (0, 1));
        node.set(None);
        assert_eq!((value("a:1"), value("b:2"), node.get()), (0, 0, None));
    }
}
