//! Least privilege on the real broker: the users and `rabbitmqctl set_permissions` lines of
//! docs/SECURITY.md, run for a fresh vhost on the local RabbitMQ (deleted at the end), and what
//! `training.allowed_users` and a model's `allowed_users` refuse; the gateway as its own user.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use infermq::client::{header_str, headers, Client};
use infermq::protocol::{encode_request, EncodedBody, InferenceRequest, Tensor};

const TIMEOUT: Duration = Duration::from_secs(60);

fn ctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("rabbitmqctl {args:?}: {text}"))
    }
}

/// The vhost and users of one test run; deleted when dropped.
struct Environment {
    vhost: String,
    users: Vec<String>,
}

impl Drop for Environment {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = ctl(&["delete_user", user]);
        }
        let _ = ctl(&["delete_vhost", &self.vhost]);
    }
}

/// The `set_permissions` lines of docs/SECURITY.md: (user, configure, write, read).
fn documented_permissions() -> Vec<(String, [String; 3])> {
    let doc = std::fs::read_to_string(manifest_path("docs/SECURITY.md")).unwrap();
    doc.lines()
        .filter_map(|l| {
            l.trim_start()
                .strip_prefix("rabbitmqctl set_permissions -p infermq-prod ")
        })
        .map(|rest| {
            let words: Vec<String> = rest
                .split_whitespace()
                .map(|w| w.trim_matches('\'').to_string())
                .collect();
            assert_eq!(words.len(), 4, "{rest}");
            (
                words[0].clone(),
                [words[1].clone(), words[2].clone(), words[3].clone()],
            )
        })
        .collect()
}

fn url(user: &str, password: &str, vhost: &str) -> String {
    format!("amqp://{user}:{password}@127.0.0.1:5672/{vhost}")
}

fn iris_job() -> EncodedBody {
    let request = InferenceRequest {
        id: Some("perm-1".into()),
        inputs: vec![Tensor::from_f32("input", vec![1, 4], &[5.1, 3.5, 1.4, 0.2])],
        outputs: None,
        model_version: None,
        binary_data_output: false,
    };
    encode_request(&request, false)
}

fn training_job() -> EncodedBody {
    let job = serde_json::json!({
        "id": "perm-train", "model_name": "permitted",
        "layers": [{"units": 3, "activation": "softmax"}],
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "epochs": 1, "batch_size": 2, "seed": 7,
        "data": {"x": [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4]], "y": [0, 1]}
    });
    EncodedBody {
        body: serde_json::to_vec(&job).unwrap(),
        header_len: None,
        content_type: "application/json",
    }
}

/// The final answer to a job (progress messages of a training job skipped): (code, body).
async fn answer(client: &mut Client, queue: &str, body: &EncodedBody) -> (Option<String>, String) {
    let correlation = uuid::Uuid::new_v4().to_string();
    let properties = client.job_properties(&correlation, body, headers(&[]));
    client
        .publish(queue, &body.body, properties)
        .await
        .expect("publish");
    loop {
        let delivery = client.next_reply(TIMEOUT).await.expect("an answer");
        if header_str(&delivery, "x-event").as_deref() == Some("progress") {
            continue;
        }
        // An error result's message as text (unescaped), any other answer as it came.
        let text = String::from_utf8_lossy(&delivery.data).into_owned();
        let error = serde_json::from_slice::<serde_json::Value>(&delivery.data)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        return (header_str(&delivery, "x-error-code"), error.unwrap_or(text));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_users_do_what_security_md_says() {
    if let Err(error) = ctl(&["list_vhosts"]) {
        println!("SKIPPED: rabbitmqctl cannot manage the local broker here: {error}");
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let vhost = format!("infermq-test-{run}");
    let prefix = format!("test-{run}");
    let name = |role: &str| format!("{vhost}-{role}");
    let (worker_user, producer, trainer) = (name("worker"), name("producer"), name("trainer"));
    let gateway_user = name("gateway");
    let mut env = Environment {
        vhost: vhost.clone(),
        users: vec![],
    };
    ctl(&["add_vhost", &vhost]).unwrap();
    let password = uuid::Uuid::new_v4().simple().to_string();
    for user in [&worker_user, &producer, &trainer, &gateway_user] {
        ctl(&["add_user", user, &password]).unwrap();
        env.users.push(user.clone());
    }
    let documented = documented_permissions();
    assert_eq!(
        documented.len(),
        4,
        "gateway, worker, producer and trainer lines"
    );
    for (user, regexes) in &documented {
        let user = user.replace("infermq-", &format!("{vhost}-"));
        let regexes = regexes
            .clone()
            .map(|r| r.replace(r"infermq\.", &format!(r"{prefix}\.")));
        let mut args = vec!["set_permissions", "-p", &vhost, &user];
        args.extend(regexes.iter().map(String::as_str));
        ctl(&args).unwrap();
    }

    // The worker, with only its own user's permissions, becomes ready and serves.
    let models = model_repository(&["iris"]);
    let config = models.path().join("iris/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "allowed_users = [{producer:?}, {gateway_user:?}]\n"
    ));
    std::fs::write(&config, text).unwrap();
    let worker_url = url(&worker_user, &password, &vhost);
    let settings = settings(
        &prefix,
        models.path(),
        &[
            ("INFERMQ__BROKER__URL", worker_url.as_str()),
            ("INFERMQ__TRAINING__ALLOWED_USERS", trainer.as_str()),
        ],
    );
    let worker = TestWorker::start(settings).await;
    let (predict, train) = (worker.queue("iris"), format!("{prefix}.train"));

    // The producer gets its result.
    let producer_url = url(&producer, &password, &vhost);
    let mut client = Client::connect(&producer_url, &Default::default())
        .await
        .unwrap();
    let (code, body) = answer(&mut client, &predict, &iris_job()).await;
    assert_eq!(code, None, "{body}");
    assert!(body.contains("probabilities"), "{body}");

    // It may not train: with its user_id, and without one.
    let (code, body) = answer(&mut client, &train, &training_job()).await;
    assert_eq!(code.as_deref(), Some("invalid_request"), "{body}");
    let expected =
        format!("user_id: {producer:?} may not send jobs to training (training.allowed_users)");
    assert!(body.contains(&expected), "{body}");
    client.set_user_id(None);
    let (code, body) = answer(&mut client, &train, &training_job()).await;
    assert_eq!(code.as_deref(), Some("invalid_request"), "{body}");
    assert!(body.contains("user_id: missing"), "{body}");

    // It cannot consume a job queue: the broker refuses.
    let channel = client.channel().clone();
    let consume = channel
        .basic_consume(
            predict.as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await;
    let error = consume
        .expect_err("the producer consumed a job queue")
        .to_string();
    assert!(error.contains("ACCESS_REFUSED"), "{error}");
    client.close().await;

    // It cannot pass for the trainer: RabbitMQ checks user_id against the connection's user.
    let mut forger = Client::connect(&producer_url, &Default::default())
        .await
        .unwrap();
    forger.set_user_id(Some(trainer.clone()));
    let properties = forger.job_properties("forged", &training_job(), headers(&[]));
    let forged = forger
        .publish(&train, &training_job().body, properties)
        .await;
    let error = forged
        .expect_err("the broker took a forged user_id")
        .to_string();
    assert!(error.contains("PRECONDITION_FAILED"), "{error}");

    // The trainer trains; its prediction on a model that lists only the producer is refused.
    let trainer_url = url(&trainer, &password, &vhost);
    let mut client = Client::connect(&trainer_url, &Default::default())
        .await
        .unwrap();
    let (code, body) = answer(&mut client, &train, &training_job()).await;
    assert_eq!(code, None, "{body}");
    assert!(body.contains("\"model_version\""), "{body}");
    let (code, body) = answer(&mut client, &predict, &iris_job()).await;
    assert_eq!(code.as_deref(), Some("invalid_request"), "{body}");
    let expected = format!("user_id: {trainer:?} may not send jobs to this model (allowed_users)");
    assert!(body.contains(&expected), "{body}");
    client.close().await;

    // The gateway as its own user: a model that allows that user answers through it, and it
    // may publish cancel messages, which a producer may not.
    let gateway_url = url(&gateway_user, &password, &vhost);
    let gw =
        common::gateway::start_gateway(&prefix, &[("INFERMQ__BROKER__URL", gateway_url.as_str())])
            .await;
    let request =
        r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data-binary", request])
        .arg(format!("http://{}/v2/models/iris/infer", gw.addr))
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.ends_with("\n200") && text.contains("probabilities"),
        "{text}"
    );
    let cancels = format!("{prefix}.cancel");
    let cancel = br#"{"id": "nothing-to-cancel"}"#;
    for (user, allowed) in [(&gateway_user, true), (&producer, false)] {
        let client = Client::connect(&url(user, &password, &vhost), &Default::default())
            .await
            .unwrap();
        let confirm = client
            .channel()
            .basic_publish(
                cancels.as_str().into(),
                "".into(),
                Default::default(),
                cancel,
                Default::default(),
            )
            .await;
        // A refused publish closes the channel: the error comes with the publish or its confirm.
        let published = match confirm {
            Ok(confirm) => confirm.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => assert!(allowed, "{user} published a cancel message"),
            Err(e) => {
                assert!(!allowed, "{user}: {e}");
                assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");
            }
        }
        client.close().await;
    }
    gw.stop().await;

    worker.stop().await;
    drop(env);
}
