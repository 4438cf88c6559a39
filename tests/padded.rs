//! Padded batching and text in, end to end: real RabbitMQ, real ONNX Runtime, the bundled
//! `encoder`. Jobs of different lengths share batches, and each answer equals the job run alone
//! on ONNX Runtime (unpadded) within 1e-5 relative to the embedding's norm; a text model
//! tokenizes what producers send, shows the text input, not the token inputs, and answers bad
//! text with an error naming the element.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use infermq::client::{binary_header_len, header_str, headers, Client};
use infermq::protocol::{decode_response, encode_request, InferenceRequest, Tensor};
use infermq::runtime::{Backend, OrtBackend, SessionOptions};
use infermq::tokenizer::{TextLimits, Tokenizer};
use infermq::training::rng::SeededRng;

/// |padded - alone| relative to the embedding's L2 norm.
const TOLERANCE: f64 = 1e-5;

/// Mixed lengths wait for one another: a batch below 8 rows waits up to 500 ms for more.
const BATCHING: &str =
    "max_batch_size = 64\nmax_queue_delay_ms = 500\npreferred_batch_sizes = [8]\ninstances = 1\n";

fn encoder_repository(config: &str) -> tempfile::TempDir {
    let repo = model_repository(&["encoder"]);
    std::fs::write(repo.path().join("encoder/config.toml"), config).unwrap();
    repo
}

fn alone() -> OrtBackend {
    infermq::runtime::env::init(None).unwrap();
    let path = manifest_path("models/encoder/1/model.onnx");
    OrtBackend::load(&std::fs::read(path).unwrap(), &SessionOptions::cpu()).unwrap()
}

/// The embedding of one `[1, L]` sequence run alone.
fn embed_alone(backend: &mut OrtBackend, ids: &[i64], mask: &[i64]) -> Vec<f32> {
    let len = ids.len();
    let out = backend
        .infer(&[
            Tensor::from_i64("input_ids", vec![1, len], ids),
            Tensor::from_i64("attention_mask", vec![1, len], mask),
        ])
        .unwrap();
    out[0].to_f32_vec().unwrap()
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let norm = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let largest = (a.iter().zip(b))
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max);
    largest / norm.max(f64::MIN_POSITIVE)
}

fn request(id: usize, inputs: Vec<Tensor>) -> InferenceRequest {
    InferenceRequest {
        id: Some(id.to_string()),
        inputs,
        outputs: None,
        model_version: None,
        binary_data_output: false,
    }
}

/// Publishes every job at once, then collects one answer each: id → (embedding, batch size).
async fn run_all(
    client: &mut Client,
    queue: &str,
    jobs: &[InferenceRequest],
    binary: bool,
) -> HashMap<usize, (Vec<f32>, usize)> {
    for job in jobs {
        let body = encode_request(job, binary);
        let id = job.id.clone().unwrap();
        let properties = client.job_properties(&id, &body, headers(&[]));
        client.publish(queue, &body.body, properties).await.unwrap();
    }
    let mut answers = HashMap::new();
    while answers.len() < jobs.len() {
        let delivery = client.next_reply(Duration::from_secs(60)).await.unwrap();
        let error = header_str(&delivery, "x-error-code");
        let res = decode_response(&delivery.data, binary_header_len(&delivery)).unwrap();
        assert_eq!(error, None, "{:?}", res.error);
        let id: usize = res.id.as_deref().unwrap().parse().unwrap();
        let embedding = res.outputs[0].to_f32_vec().unwrap();
        answers.insert(id, (embedding, res.parameters.unwrap().batch_size));
    }
    answers
}

/// How many answers came from batches of more than one job, of how many.
fn batched(answers: &HashMap<usize, (Vec<f32>, usize)>) -> usize {
    answers.values().filter(|(_, b)| *b > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_jobs_of_different_lengths_share_padded_batches() {
    let config = format!(
        "{BATCHING}[inputs.input_ids]\npad_value = 0\n[inputs.attention_mask]\npad_value = 0\n"
    );
    let repo = encoder_repository(&config);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    let mut client = client().await;
    let queue = worker.queue("encoder");
    let mut rng = SeededRng::new(21);
    let mut sequences = Vec::new();
    let mut jobs = Vec::new();
    for id in 0..48 {
        let len = 8 + rng.below(121);
        let ids: Vec<i64> = (0..len).map(|_| 4 + rng.below(2000) as i64).collect();
        let mask = vec![1i64; len];
        jobs.push(request(
            id,
            vec![
                Tensor::from_i64("input_ids", vec![1, len], &ids),
                Tensor::from_i64("attention_mask", vec![1, len], &mask),
            ],
        ));
        sequences.push((ids, mask));
    }
    let answers = run_all(&mut client, &queue, &jobs, true).await;
    let mut backend = alone();
    let mut worst = 0.0f64;
    for (id, (ids, mask)) in sequences.iter().enumerate() {
        let want = embed_alone(&mut backend, ids, mask);
        worst = worst.max(relative(&answers[&id].0, &want));
    }
    assert!(
        worst <= TOLERANCE,
        "a padded answer is {worst:e} from the job run alone"
    );
    assert!(
        batched(&answers) >= 40,
        "jobs of different lengths did not share batches: {} of 48 batched",
        batched(&answers)
    );
    // Inputs that disagree on the shared dimension `sequence` are refused naming both.
    let job = request(
        99,
        vec![
            Tensor::from_i64("input_ids", vec![1, 5], &[4, 5, 6, 7, 8]),
            Tensor::from_i64("attention_mask", vec![1, 4], &[1, 1, 1, 1]),
        ],
    );
    let delivery = client
        .call(
            &queue,
            &encode_request(&job, false),
            headers(&[]),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        header_str(&delivery, "x-error-code").as_deref(),
        Some("invalid_request")
    );
    let (_, message) = decode_response(&delivery.data, None)
        .unwrap()
        .error
        .unwrap();
    assert!(
        message.contains("input_ids")
            && message.contains("attention_mask")
            && message.contains("sequence"),
        "{message}"
    );
    client.close().await;
    worker.stop().await;
}

fn tokenizer() -> Tokenizer {
    let path = manifest_path("models/encoder/1/tokenizer.json");
    Tokenizer::from_file(Path::new(&path), 128, TextLimits::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_jobs_are_tokenized_padded_and_batched() {
    let config = format!("{BATCHING}[inputs.text]\ndatatype = \"BYTES\"\nshape = [-1]\ntokenizer = \"tokenizer.json\"\nmax_length = 128\n");
    let repo = encoder_repository(&config);
    let worker = TestWorker::start(settings(&random_prefix(), repo.path(), &[])).await;
    // What producers send: the text, not the token inputs.
    let (status, body) = http_get(worker.handles.http_addr, "/v2/models/encoder")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let metadata: serde_json::Value = serde_json::from_str(&body).unwrap();
    let inputs = metadata["versions"][0]["inputs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(inputs.len(), 1, "{metadata}");
    assert_eq!(inputs[0]["name"], "text");
    assert_eq!(inputs[0]["datatype"], "BYTES");
    assert_eq!(inputs[0]["shape"], serde_json::json!([-1]));
    let mut client = client().await;
    let queue = worker.queue("encoder");
    let corpus = std::fs::read_to_string(manifest_path("models/encoder/genesis.txt")).unwrap();
    let lines: Vec<&str> = corpus.lines().filter(|l| !l.is_empty()).collect();
    let mut rng = SeededRng::new(5);
    let texts: Vec<String> = (0..40)
        .map(|i| match i % 4 {
            0 => lines[rng.below(lines.len())]
                .split(' ')
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            _ => lines[rng.below(lines.len())].to_string(),
        })
        .collect();
    let jobs: Vec<InferenceRequest> = (texts.iter().enumerate())
        .map(|(id, t)| {
            request(
                id,
                vec![Tensor::from_bytes(
                    "text",
                    vec![1],
                    vec![t.clone().into_bytes()],
                )],
            )
        })
        .collect();
    let answers = run_all(&mut client, &queue, &jobs, false).await;
    let (tokenizer, mut backend) = (tokenizer(), alone());
    let mut worst = 0.0f64;
    let mut lengths = std::collections::BTreeSet::new();
    for (id, text) in texts.iter().enumerate() {
        let tensor = Tensor::from_bytes("text", vec![1], vec![text.clone().into_bytes()]);
        let tokens = tokenizer.encode(&tensor, "inputs[0]", false).unwrap();
        lengths.insert(tokens.length);
        let want = embed_alone(&mut backend, &tokens.input_ids, &tokens.attention_mask);
        worst = worst.max(relative(&answers[&id].0, &want));
    }
    assert!(
        lengths.len() > 5,
        "the texts have too few lengths: {lengths:?}"
    );
    assert!(
        worst <= TOLERANCE,
        "a text answer is {worst:e} from its tokens run alone"
    );
    assert!(
        batched(&answers) >= 32,
        "{} of 40 batched",
        batched(&answers)
    );
    // Malformed UTF-8 (binary body: raw bytes; refused when the body is decoded) and
    // over-long text (refused before tokenizing) are answered naming the element.
    let cases: [(Vec<u8>, &str, &str); 2] = [
        (
            b"in the \xff beginning".to_vec(),
            "invalid_request",
            "inputs[0] (\"text\"): element 0 is not valid UTF-8",
        ),
        (
            vec![b'a'; 20_000],
            "too_large",
            "inputs[0].data[0]: expected at most 16384 bytes",
        ),
    ];
    for (text, code, needle) in cases {
        let job = request(7, vec![Tensor::from_bytes("text", vec![1], vec![text])]);
        let delivery = client
            .call(
                &queue,
                &encode_request(&job, true),
                headers(&[]),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(header_str(&delivery, "x-error-code").as_deref(), Some(code));
        let res = decode_response(&delivery.data, binary_header_len(&delivery)).unwrap();
        let (_, message) = res.error.unwrap();
        assert!(message.contains(needle), "{message}");
    }
    client.close().await;
    worker.stop().await;
}
