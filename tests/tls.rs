//! TLS to the broker, against a real RabbitMQ TLS listener: a second node started by
//! `scripts/tls-broker.sh` (its own name and ports; the default broker is never touched), with
//! certificates made by `openssl` at test time.
//!
//! One test runs the cases in order, so the node is started once and stopped at the end.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use infermq::broker::tls::{connect, TlsAuth, TlsSettings};
use infermq::client::{header_str, headers, Client};
use infermq::protocol::{encode_request, InferenceRequest, Tensor};
use tokio::io::AsyncReadExt;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The running TLS node; stopped (by its PID) when dropped.
struct TlsBroker {
    port: u16,
    plain_port: u16,
    certs: PathBuf,
}

impl TlsBroker {
    fn start() -> Option<TlsBroker> {
        let script = manifest_path("scripts/tls-broker.sh");
        let status = Command::new(&script)
            .arg("start")
            .status()
            .expect("run tls-broker.sh");
        if status.code() == Some(2) {
            println!(
                "SKIPPED: scripts/tls-broker.sh cannot start a RabbitMQ node here (see above)"
            );
            return None;
        }
        assert!(status.success(), "tls-broker.sh start failed: {status}");
        let env = Command::new(&script)
            .arg("env")
            .output()
            .expect("tls-broker.sh env");
        let text = String::from_utf8_lossy(&env.stdout).into_owned();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing from tls-broker.sh env"))
                .to_string()
        };
        Some(TlsBroker {
            port: var("INFERMQ_TLS_PORT").parse().unwrap(),
            plain_port: var("INFERMQ_TLS_PLAIN_PORT").parse().unwrap(),
            certs: PathBuf::from(var("INFERMQ_TLS_CERTS")),
        })
    }

    fn url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.port)
    }

    fn cert(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }

    fn trusting(&self, ca: &str) -> TlsSettings {
        TlsSettings {
            ca_file: self.certs.join(ca),
            ..TlsSettings::default()
        }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = Command::new(manifest_path("scripts/tls-broker.sh"))
            .arg("stop")
            .status();
    }
}

fn iris_job() -> infermq::protocol::EncodedBody {
    let request = InferenceRequest {
        id: Some("tls-1".into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    encode_request(&request, false)
}

/// A prediction job through `client`, answered without an error code.
async fn served(client: &mut Client, queue: &str) {
    let delivery = client
        .call(queue, &iris_job(), headers(&[]), TIMEOUT)
        .await
        .expect("answer over TLS");
    assert_eq!(
        header_str(&delivery, "x-error-code"),
        None,
        "{:?}",
        String::from_utf8_lossy(&delivery.data)
    );
    assert!(String::from_utf8_lossy(&delivery.data).contains("probabilities"));
}

/// The explanation of a failed connection (bounded: the case must fail, not hang).
async fn refused(url: &str, tls: &TlsSettings) -> String {
    match tokio::time::timeout(TIMEOUT, connect(url, tls, "infermq-test-tls")).await {
        Ok(Ok(_)) => panic!("{url} connected"),
        Ok(Err(error)) => error.to_string(),
        Err(_) => panic!("{url}: no answer within {TIMEOUT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_broker() {
    let Some(broker) = TlsBroker::start() else {
        return;
    };
    let trusted = broker.trusting("ca.pem");

    // A job served over TLS: worker and client both on amqps://, the broker's CA from ca_file.
    let models = model_repository(&["iris"]);
    let prefix = random_prefix();
    let ca = broker.cert("ca.pem");
    let url = broker.url("localhost");
    let settings = settings(
        &prefix,
        models.path(),
        &[
            ("INFERMQ__BROKER__URL", url.as_str()),
            ("INFERMQ__BROKER__TLS__CA_FILE", ca.as_str()),
            ("INFERMQ__TRAINING__ENABLED", "false"),
        ],
    );
    let worker = TestWorker::start(settings).await;
    let queue = worker.queue("iris");
    let mut client = Client::connect(&url, &trusted)
        .await
        .expect("client over TLS");
    served(&mut client, &queue).await;
    client.close().await;

    // Client certificate login (SASL EXTERNAL): no password in the URL; the broker maps the
    // certificate's CN to its user.
    let external = TlsSettings {
        cert_file: broker.certs.join("client.pem"),
        key_file: broker.certs.join("client.key"),
        auth: TlsAuth::External,
        ..trusted.clone()
    };
    let no_password = format!("amqps://localhost:{}/%2f", broker.port);
    let mut client = Client::connect(&no_password, &external)
        .await
        .expect("EXTERNAL login with the client certificate");
    served(&mut client, &queue).await;
    client.close().await;
    worker.stop().await;

    // Refusals, each explained.
    let other_ca = broker.trusting("other-ca.pem");
    let cases = [
        (url.clone(), &other_ca, "not signed by a trusted CA"),
        (broker.url("127.0.0.1"), &trusted, "does not name the host"),
        (
            format!("amqps://guest:guest@127.0.0.1:{}/%2f", broker.plain_port),
            &trusted,
            "plaintext port",
        ),
        (
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port),
            &trusted,
            "TLS port",
        ),
    ];
    for (url, tls, cause) in cases {
        let error = refused(&url, tls).await;
        println!("{url}: {error}");
        assert!(error.contains(cause), "{url}: {error}");
    }

    // A worker that does not trust the broker's CA stays unready and says why, retrying.
    let mut child = fleet::ChildWorker::spawn(
        &random_prefix(),
        models.path(),
        &[
            ("INFERMQ__BROKER__URL", url.as_str()),
            (
                "INFERMQ__BROKER__TLS__CA_FILE",
                &broker.cert("other-ca.pem"),
            ),
            ("INFERMQ__BROKER__RECONNECT_INITIAL_MS", "100"),
            ("INFERMQ__BROKER__RECONNECT_MAX_MS", "200"),
            ("INFERMQ__TRAINING__ENABLED", "false"),
        ],
    );
    let deadline = Instant::now() + TIMEOUT;
    let needle = "not signed by a trusted CA";
    while child.log_lines(needle).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no repeated refusal logged:\n{}",
            child.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = child.log_lines(needle);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("ERROR") && l.contains("Broker connection refused")),
        "{lines:?}"
    );
    assert_eq!(
        http_get(child.addr, "/readyz").await.map(|(s, _)| s),
        Some(503)
    );
    child.sigkill();

    // What an amqps:// client sends first is a TLS ClientHello, never the AMQP header.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempt = tokio::spawn(async move {
        let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
        let _ = connect(&url, &TlsSettings::default(), "infermq-test-hello").await;
    });
    let (mut socket, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("the client connects")
        .unwrap();
    let mut first = [0u8; 6];
    tokio::time::timeout(TIMEOUT, socket.read_exact(&mut first))
        .await
        .expect("the client speaks first")
        .unwrap();
    assert_ne!(&first[..4], b"AMQP");
    // TLS record: handshake (22), version 3.x, then handshake type 1 (ClientHello).
    assert_eq!((first[0], first[1], first[5]), (22, 3, 1), "{first:?}");
    drop(socket);
    let _ = tokio::time::timeout(TIMEOUT, attempt).await;
}
