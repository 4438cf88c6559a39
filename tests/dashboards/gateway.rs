//! The gateway the dashboards test scrapes: `infermq gateway` in the test process, and a burst of
//! concurrent iris requests through it (sent by one curl, `--parallel`) that it gathers.
use super::common::gateway::{start_gateway, TestGateway};

impl TestGateway {
    /// A gateway for `prefix` on a free port; a short hold makes a burst gather for certain.
    pub async fn start(prefix: &str) -> TestGateway {
        start_gateway(prefix, &[("INFERMQ__GATEWAY__GATHER_DELAY_US", "20000")]).await
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
            command.args(["-o", "/dev/null", "-w", "%{http_code}\n", "-d", body, &url]);
        }
        let out = command.output().await.expect("curl runs");
        let codes = String::from_utf8_lossy(&out.stdout);
        assert!(
            codes.lines().count() == n && codes.lines().all(|c| c == "200"),
            "statuses: {codes}"
        );
    }
}
