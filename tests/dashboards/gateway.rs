//! The gateway the dashboards test scrapes: `infermq gateway` in the test process with an API
//! key (its tenant fills the Tenants row), a burst of concurrent iris requests through it (sent
//! by one curl, `--parallel`) that it gathers, and a request to each generation route.
use std::path::Path;
use std::sync::OnceLock;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::common::gateway::{start_gateway, TestGateway};

/// The key every request of the test sends.
const KEY: &str = "sk-dashboards-test";
const AUTHORIZATION: &str = "Authorization: Bearer sk-dashboards-test";

/// The keys file: one key, `dashboards`, every model (kept for the whole test process).
fn keys_file() -> std::path::PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest: String = Sha256::digest(KEY.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keys = format!(
            "[[key]]\nname = \"dashboards\"\nsha256 = \"{digest}\"\nmodels = [\"*\"]\ntokens_per_minute = 1000000\n"
        );
        std::fs::write(dir.path().join("keys.toml"), keys).expect("keys file");
        dir
    });
    dir.path().join("keys.toml")
}

impl TestGateway {
    /// A gateway for `prefix` on a free port with an API key, reading chat templates from
    /// `models`; a short hold makes a burst gather for certain.
    pub async fn start(prefix: &str, models: &Path) -> TestGateway {
        let models = models.display().to_string();
        let keys = keys_file().display().to_string();
        let env = [
            ("INFERMQ__GATEWAY__GATHER_DELAY_US", "20000"),
            ("INFERMQ__REPOSITORY__PATH", models.as_str()),
            ("INFERMQ__GATEWAY__API_KEYS_FILE", keys.as_str()),
        ];
        start_gateway(prefix, &env).await
    }

    /// One request to each generation route on the decoder `model`: generate and
    /// generate_stream, a whole completion and a streamed chat completion; each must be
    /// answered 200.
    pub async fn generations(&self, model: &str) {
        let job = json!({"text_input": "And God said", "parameters": {"max_tokens": 4}});
        let requests = [
            (format!("/v2/models/{model}/generate"), job.clone()),
            (format!("/v2/models/{model}/generate_stream"), job),
            (
                "/v1/completions".to_string(),
                json!({"model": model, "prompt": "And God said", "max_tokens": 4}),
            ),
            (
                "/v1/chat/completions".to_string(),
                json!({"model": model, "max_tokens": 4, "stream": true,
                       "messages": [{"role": "user", "content": "And God said"}]}),
            ),
        ];
        let mut command = tokio::process::Command::new("curl");
        command.arg("-s");
        for (i, (path, body)) in requests.iter().enumerate() {
            if i > 0 {
                command.arg("--next");
            }
            let url = format!("http://{}{path}", self.addr);
            command.args(["-o", "/dev/null", "-w", "%{http_code}\n"]);
            command.args(["-H", "Content-Type: application/json", "-H", AUTHORIZATION]);
            command.args(["-d", &body.to_string(), &url]);
        }
        let out = command.output().await.expect("curl runs");
        let codes = String::from_utf8_lossy(&out.stdout);
        assert!(
            codes.lines().count() == requests.len() && codes.lines().all(|c| c == "200"),
            "statuses of {:?}: {codes}",
            requests.iter().map(|(path, _)| path).collect::<Vec<_>>()
        );
    }

    /// Iris requests until the gateway knows the model's metadata (they go alone until then).
    pub async fn warm_up(&self) {
        let alone = r#"infermq_gateway_solo_requests_total{model="iris",reason="alone"}"#;
        for _ in 0..200 {
            self.curl(1).await;
            if self.gateway.render_metrics().contains(alone) {
                return;
            }
        }
        panic!("the gateway never learnt iris's metadata");
    }

    /// `n` iris requests at once, which the gateway gathers.
    pub async fn burst(&self, n: usize) {
        self.curl(n).await;
        let gathered = r#"infermq_gateway_gathered_requests_total{model="iris"}"#;
        let text = self.gateway.render_metrics();
        assert!(text.contains(gathered), "nothing gathered:\n{text}");
    }

    /// `n` iris requests from one curl, all at once; each must be answered 200.
    async fn curl(&self, n: usize) {
        let url = format!("http://{}/v2/models/iris/infer", self.addr);
        let body = r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
        let mut command = tokio::process::Command::new("curl");
        command.args(["-s", "-Z", "--parallel-immediate", "--parallel-max", "64"]);
        for i in 0..n {
            if i > 0 {
                command.arg("--next");
            }
            command.args(["-o", "/dev/null", "-w", "%{http_code}\n"]);
            command.args(["-H", AUTHORIZATION, "-d", body, &url]);
        }
        let out = command.output().await.expect("curl runs");
        let codes = String::from_utf8_lossy(&out.stdout);
        assert!(
            codes.lines().count() == n && codes.lines().all(|c| c == "200"),
            "statuses: {codes}"
        );
    }
}
