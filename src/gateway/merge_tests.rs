//! A merged answer split back equals each request's own answer: requests are gathered, merged,
//! run by a stand-in for the worker (row-wise outputs, written as the worker writes them), and
//! split; each part must be byte for byte what the stand-in answers the request alone.

use super::*;
use crate::gateway::gather::{prepare, Candidate, ModelInfo, Prepared, Traits};
use crate::protocol::{decode_request, DataType, TensorSpec};
use proptest::prelude::*;

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

fn info() -> ModelInfo {
    ModelInfo {
        signature: ModelSignature {
            inputs: vec![
                spec("x", DataType::F32, &[-1, 3]),
                spec("ids", DataType::I64, &[-1, 2]),
            ],
            outputs: vec![
                spec("y", DataType::F32, &[-1, 3]),
                spec("sum", DataType::I64, &[-1, 1]),
            ],
        },
        max_batch_size: 64,
    }
}

const PARAMETERS: ResultParameters = ResultParameters {
    batch_size: 7,
    queue_ms: 0.25,
    compute_ms: 0.5,
};

/// The stand-in worker: `y = 2x + 1` and `sum = ids[0] + ids[1]`, row by row, answered with
/// the request's id, output order and binary choices.
fn answer(request: &InferenceRequest) -> EncodedBody {
    let x = request.inputs.iter().find(|t| t.name == "x").unwrap();
    let ids = request.inputs.iter().find(|t| t.name == "ids").unwrap();
    let y: Vec<f32> = x
        .to_f32_vec()
        .unwrap()
        .iter()
        .map(|v| 2.0 * v + 1.0)
        .collect();
    let sums: Vec<i64> = ids
        .to_i64_vec()
        .unwrap()
        .chunks(2)
        .map(|c| c[0].wrapping_add(c[1]))
        .collect();
    let all = [
        Tensor::from_f32("y", x.shape.clone(), &y),
        Tensor::from_i64("sum", vec![sums.len(), 1], &sums),
    ];
    let names: Vec<&str> = match &request.outputs {
        Some(o) => o.iter().map(|o| o.name.as_str()).collect(),
        None => vec!["y", "sum"],
    };
    let outputs = names
        .iter()
        .map(|n| OutputTensor {
            tensor: all.iter().find(|t| t.name == *n).unwrap().clone(),
            binary: request.wants_binary(n),
        })
        .collect();
    encode_response(&InferenceResponse {
        id: request.id.as_deref(),
        model_name: "m",
        model_version: "3",
        outputs,
        parameters: PARAMETERS,
    })
}

/// One request as a client sends it.
#[derive(Debug, Clone)]
struct Sent {
    body: Vec<u8>,
    header_len: Option<usize>,
}

fn request_strategy(outputs: Option<Vec<String>>) -> impl Strategy<Value = Sent> {
    (
        1usize..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(move |(rows, binary_in, binary_out, per_output, named)| {
            let outputs = outputs.clone();
            (
                prop::collection::vec(-1e6f32..1e6, rows * 3),
                prop::collection::vec(any::<i64>(), rows * 2),
            )
                .prop_map(move |(x, ids)| {
                    let request = InferenceRequest {
                        id: named.then(|| format!("r{}", x.len())),
                        inputs: vec![
                            Tensor::from_i64("ids", vec![rows, 2], &ids),
                            Tensor::from_f32("x", vec![rows, 3], &x),
                        ],
                        outputs: outputs.clone().map(|names| {
                            names
                                .into_iter()
                                .map(|name| RequestedOutput {
                                    binary_data: per_output.then_some(!binary_out),
                                    name,
                                })
                                .collect()
                        }),
                        model_version: None,
                        binary_data_output: binary_out,
                    };
                    let encoded = encode_request(&request, binary_in);
                    Sent {
                        body: encoded.body,
                        header_len: encoded.header_len,
                    }
                })
        })
}

fn group_strategy() -> impl Strategy<Value = Vec<Sent>> {
    let outputs = prop_oneof![
        Just(None),
        Just(Some(vec!["sum".to_string()])),
        Just(Some(vec!["sum".to_string(), "y".to_string()])),
    ];
    outputs.prop_flat_map(|o| prop::collection::vec(request_strategy(o), 1..6))
}

fn candidate(sent: &Sent) -> Candidate {
    let traits = Traits {
        model: "m",
        path_version: None,
        own_deadline: false,
        binary_header_len: sent.header_len,
        tenant: None,
    };
    match prepare(traits, &sent.body, &info(), 1 << 20) {
        Prepared::Gather(c) => *c,
        other => panic!("expected to gather, got {other:?}"),
    }
}

proptest! {
    #[test]
    fn a_merged_answer_split_back_equals_each_requests_own_answer(group in group_strategy()) {
        let candidates: Vec<Candidate> = group.iter().map(candidate).collect();
        let key = &candidates[0].key;
        for c in &candidates {
            prop_assert_eq!(&c.key, key);
        }
        let requests: Vec<&InferenceRequest> = candidates.iter().map(|c| &c.request).collect();
        let merged = merge(key, &info().signature, &requests).unwrap();
        let job = decode_request(&merged.body, merged.header_len).unwrap();
        let rows: usize = candidates.iter().map(|c| c.rows).sum();
        prop_assert_eq!(job.inputs[0].rows(), rows);
        let answered = answer(&job);
        let ranges = row_ranges(candidates.iter().map(|c| c.rows));
        let parts = split(&answered.body, answered.header_len, &requests, &ranges).unwrap();
        prop_assert_eq!(parts.len(), group.len());
        for (part, sent) in parts.iter().zip(&group) {
            let alone = decode_request(&sent.body, sent.header_len).unwrap();
            let own = answer(&alone);
            prop_assert_eq!(part, &own, "{}", String::from_utf8_lossy(&own.body));
        }
    }
}

#[test]
fn an_error_answer_or_wrong_rows_cannot_be_split() {
    let sent: Vec<Sent> = (0..2)
        .map(|i| {
            let r = InferenceRequest {
                id: Some(format!("a{i}")),
                inputs: vec![
                    Tensor::from_f32("x", vec![1, 3], &[1.0, 2.0, 3.0]),
                    Tensor::from_i64("ids", vec![1, 2], &[1, 2]),
                ],
                outputs: None,
                model_version: None,
                binary_data_output: false,
            };
            let e = encode_request(&r, false);
            Sent {
                body: e.body,
                header_len: e.header_len,
            }
        })
        .collect();
    let candidates: Vec<Candidate> = sent.iter().map(candidate).collect();
    let requests: Vec<&InferenceRequest> = candidates.iter().map(|c| &c.request).collect();
    let ranges = row_ranges([1, 1]);
    let error =
        crate::protocol::encode_error(None, "m", crate::protocol::ErrorCode::InvalidRequest, "no");
    assert!(matches!(
        split(&error, None, &requests, &ranges),
        Err(SplitError::Failed(code)) if code == "invalid_request"
    ));
    // An answer for one row where the job had two.
    let one = answer(&candidates[0].request);
    assert!(matches!(
        split(&one.body, one.header_len, &requests, &ranges),
        Err(SplitError::Rows {
            expected: 2,
            got: 1,
            ..
        })
    ));
    assert!(matches!(
        split(b"{", None, &requests, &ranges),
        Err(SplitError::Decode(_))
    ));
}
