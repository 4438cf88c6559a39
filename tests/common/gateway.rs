//! `infermq gateway` in the test process, on a free port, for a test's prefix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use infermq::config::Settings;
use infermq::gateway::{self, Gateway};
use tokio_util::sync::CancellationToken;

use super::amqp_url;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), gateway::GatewayError>>,
}

impl TestGateway {
    /// Stops the gateway and checks it ended without error within 30 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "gateway stop: {stopped:?}"
        );
    }
}

/// A gateway for `prefix` on a free port, with `extra` settings (`INFERMQ__…` variables).
pub async fn start_gateway(prefix: &str, extra: &[(&str, &str)]) -> TestGateway {
    let mut env: Vec<(String, String)> = vec![
        ("INFERMQ__BROKER__URL".into(), amqp_url()),
        ("INFERMQ__BROKER__PREFIX".into(), prefix.into()),
        ("INFERMQ__GATEWAY__LISTEN".into(), "127.0.0.1:0".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::load_from(None, env).expect("gateway settings");
    let listener = tokio::net::TcpListener::bind(settings.gateway.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gateway = Arc::new(Gateway::new(&settings).expect("gateway"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway::serve(gateway.clone(), listener, shutdown.clone()));
    TestGateway {
        addr,
        gateway,
        shutdown,
        task,
    }
}
