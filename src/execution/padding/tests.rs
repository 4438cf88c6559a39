use super::*;
use crate::protocol::DataType;
use proptest::prelude::*;

/// `input_ids` and `attention_mask` `[batch, sequence]`, both padded with 0 along `sequence`;
/// outputs `last_hidden_state` `[batch, sequence, 2]` (cut back) and `embedding` `[batch, 4]`.
fn text_plan() -> PadPlan {
    let seq = [Some("batch"), Some("sequence")];
    let zero = PadValue::new(DataType::I64, &PadLiteral::Int(0)).unwrap();
    let input = |name| (SymbolicTensor { name, dims: &seq }, Some(zero.clone()));
    let outputs = [
        SymbolicTensor {
            name: "last_hidden_state",
            dims: &[Some("batch"), Some("sequence"), None],
        },
        SymbolicTensor {
            name: "embedding",
            dims: &[Some("batch"), None],
        },
    ];
    PadPlan::new(&[input("input_ids"), input("attention_mask")], &outputs).unwrap()
}

fn ids(rows: usize, len: usize, first: i64) -> Tensor {
    let values: Vec<i64> = (0..(rows * len) as i64).map(|i| first + i).collect();
    Tensor::from_i64("input_ids", vec![rows, len], &values)
}

fn mask(rows: usize, len: usize) -> Tensor {
    Tensor::from_i64("attention_mask", vec![rows, len], &vec![1; rows * len])
}

#[test]
fn the_plan_is_read_from_dimension_names_and_pad_values() {
    let plan = text_plan();
    assert_eq!(plan.dims, vec!["sequence".to_string()]);
    let seq = vec![PaddedAxis { axis: 1, dim: 0 }];
    assert!(plan.inputs.iter().all(|i| i.axes == seq));
    assert_eq!(plan.outputs, vec![seq, vec![]]);
    // A third input of the same dimension without a pad value is refused.
    let dims = [Some("batch"), Some("sequence")];
    let types = SymbolicTensor {
        name: "token_type_ids",
        dims: &dims,
    };
    let zero = PadValue::new(DataType::I64, &PadLiteral::Int(0)).unwrap();
    let ids = SymbolicTensor {
        name: "input_ids",
        dims: &dims,
    };
    let err = PadPlan::new(&[(ids, Some(zero.clone())), (types, None)], &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input \"token_type_ids\" has the padded dimension \"sequence\" but no pad_value"
    );
    // Without pad values nothing is padded, whatever the names.
    let plan = PadPlan::new(&[(ids, None), (types, None)], &[ids]).unwrap();
    assert!(!plan.pads() && plan.dims.is_empty() && plan.outputs == vec![vec![]]);
    let plan = PadPlan::new(&[(ids, Some(zero))], &[]).unwrap();
    assert!(plan.pads());
}

#[test]
fn inputs_that_disagree_on_a_shared_dimension_are_refused_naming_both() {
    let plan = text_plan();
    let err = plan.lengths(&[ids(1, 10, 0), mask(1, 12)]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(
        err.to_string(),
        "inputs: attention_mask.shape[1] is 12 but input_ids.shape[1] is 10: both are the \
         model's dimension \"sequence\" and must be equal within a job"
    );
    assert_eq!(plan.lengths(&[ids(2, 7, 0), mask(2, 7)]), Ok(vec![7]));
    assert!(plan.pads());
}

#[test]
fn the_exact_key_leaves_padded_dimensions_out() {
    let plan = text_plan();
    let a = plan.exact_key(&[ids(1, 10, 0), mask(1, 10)]);
    let b = plan.exact_key(&[ids(3, 4, 0), mask(3, 4)]);
    assert_eq!(a, vec![0, usize::MAX, 0, usize::MAX]);
    assert_eq!(a, b);
}

/// Pads `jobs` with the lengths [`PadPlan::lengths`] measures (as a job's batch key holds
/// them); returns the batch and its longest lengths.
fn pad_jobs(plan: &PadPlan, jobs: &[&[Tensor]]) -> Result<(Vec<Tensor>, Vec<usize>), PadError> {
    let lengths: Vec<Vec<usize>> = jobs
        .iter()
        .map(|j| plan.lengths(j))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&[usize]> = lengths.iter().map(|l| &l[..]).collect();
    let longest = (0..plan.dims.len())
        .map(|d| lengths.iter().map(|l| l[d]).max().unwrap_or(0))
        .collect();
    Ok((plan.pad_batch(jobs, &refs)?, longest))
}

#[test]
fn a_batch_is_padded_to_its_longest_job_and_cut_back_per_job() {
    let plan = text_plan();
    let a = [ids(1, 3, 1), mask(1, 3)];
    let b = [ids(2, 5, 10), mask(2, 5)];
    let (inputs, longest) = pad_jobs(&plan, &[&a[..], &b[..]]).unwrap();
    assert_eq!(longest, vec![5]);
    assert_eq!(inputs[0].shape, vec![3, 5]);
    assert_eq!(
        inputs[0].to_i64_vec().unwrap(),
        vec![1, 2, 3, 0, 0, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    );
    assert_eq!(
        inputs[1].to_i64_vec().unwrap(),
        vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    );
    // What a model might answer: per token, (id, 2 * id); and one pooled row per job.
    let hidden: Vec<f32> = inputs[0]
        .to_i64_vec()
        .unwrap()
        .iter()
        .flat_map(|&i| [i as f32, 2.0 * i as f32])
        .collect();
    let outputs = [
        Tensor::from_f32("last_hidden_state", vec![3, 5, 2], &hidden),
        Tensor::from_f32("embedding", vec![3, 4], &[0.5; 12]),
    ];
    let jobs = plan.cut_batch(&outputs, &[(1, &[3]), (2, &[5])]).unwrap();
    assert_eq!(jobs[0][0].shape, vec![1, 3, 2]);
    assert_eq!(
        jobs[0][0].to_f32_vec().unwrap(),
        vec![1.0, 2.0, 2.0, 4.0, 3.0, 6.0]
    );
    assert_eq!(jobs[1][0].shape, vec![2, 5, 2]);
    assert_eq!(jobs[0][1].shape, vec![1, 4]);
    assert_eq!(jobs[1][1].shape, vec![2, 4]);
}

#[test]
fn jobs_of_equal_lengths_are_joined_as_they_are() {
    let plan = text_plan();
    let a = [ids(1, 4, 0), mask(1, 4)];
    let b = [ids(1, 4, 9), mask(1, 4)];
    let (inputs, _) = pad_jobs(&plan, &[&a[..], &b[..]]).unwrap();
    assert_eq!(inputs[0], Tensor::concat_rows(&[&a[0], &b[0]]).unwrap());
}

#[test]
fn inconsistent_batches_are_internal_errors() {
    let plan = text_plan();
    let wide = [
        Tensor::from_i64("input_ids", vec![1, 2, 2], &[0; 4]),
        mask(1, 2),
    ];
    let err = pad_jobs(&plan, &[&[ids(1, 2, 0), mask(1, 2)][..], &wide[..]]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal, "{err}");
    // Lengths that do not match the plan's padded dimensions.
    let job = [ids(1, 2, 0), mask(1, 2)];
    let err = plan.pad_batch(&[&job[..]], &[&[2, 2][..]]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal, "{err}");
    let out = Tensor::from_f32("last_hidden_state", vec![1, 2, 2], &[0.0; 4]);
    assert!(
        plan.cut_batch(std::slice::from_ref(&out), &[(2, &[2])])
            .is_err(),
        "rows"
    );
    assert!(
        plan.cut_batch(&[out], &[(1, &[3])]).is_err(),
        "longer than padded"
    );
    let unpadded = InputPad {
        name: "x".into(),
        axes: vec![PaddedAxis { axis: 1, dim: 0 }],
        value: None,
    };
    let err = pad_input(&[&ids(1, 2, 0), &ids(1, 3, 0)], &unpadded, &[3]).unwrap_err();
    assert!(err.to_string().contains("without a pad value"), "{err}");
}

/// A random tensor of `datatype` and `shape`.
fn tensor(datatype: DataType, shape: Vec<usize>) -> impl Strategy<Value = Tensor> {
    let count: usize = shape.iter().product();
    match datatype.element_size() {
        Some(size) => prop::collection::vec(any::<u8>(), count * size)
            .prop_map(move |raw| {
                let mut raw = raw;
                if datatype == DataType::Bool {
                    raw.iter_mut().for_each(|b| *b &= 1);
                }
                Tensor::from_raw("t", datatype, shape.clone(), raw)
            })
            .boxed(),
        None => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), count)
            .prop_map(move |v| Tensor::from_bytes("t", shape.clone(), v))
            .boxed(),
    }
}

/// A plan padding some axes of one tensor (one padded dimension per axis), and jobs that
/// agree on every other axis.
fn case() -> impl Strategy<Value = (InputPad, Vec<Tensor>)> {
    (
        prop::sample::select(DataType::ALL.to_vec()),
        prop::collection::vec((1usize..4, any::<bool>()), 1..4),
        1usize..5,
    )
        .prop_flat_map(|(datatype, dims, jobs)| {
            let axes: Vec<PaddedAxis> = dims
                .iter()
                .enumerate()
                .filter(|(_, d)| d.1)
                .enumerate()
                .map(|(dim, (i, _))| PaddedAxis { axis: i + 1, dim })
                .collect();
            let literal = match datatype {
                DataType::Bytes => PadLiteral::Text("[PAD]".into()),
                DataType::Bool => PadLiteral::Bool(true),
                _ => PadLiteral::Int(7),
            };
            let pad = InputPad {
                name: "t".into(),
                axes: axes.clone(),
                value: Some(PadValue::new(datatype, &literal).unwrap()),
            };
            let shapes = prop::collection::vec(
                (1usize..3, prop::collection::vec(1usize..5, axes.len())),
                jobs,
            );
            (Just(pad), Just(dims), shapes).prop_flat_map(move |(pad, dims, shapes)| {
                let tensors: Vec<_> = shapes
                    .into_iter()
                    .map(|(rows, lengths)| {
                        let mut shape = vec![rows];
                        shape.extend(dims.iter().map(|d| d.0));
                        for a in &pad.axes {
                            shape[a.axis] = lengths[a.dim];
                        }
                        tensor(datatype, shape)
                    })
                    .collect();
                (Just(pad), tensors)
            })
        })
}

proptest! {
    #[test]
    fn pad_then_cut_is_the_identity((pad, jobs) in case()) {
        let plan = PadPlan {
            dims: (0..pad.axes.len()).map(|d| format!("d{d}")).collect(),
            outputs: vec![pad.axes.clone()],
            inputs: vec![pad],
        };
        let per_job: Vec<[Tensor; 1]> = jobs.iter().map(|t| [t.clone()]).collect();
        let slices: Vec<&[Tensor]> = per_job.iter().map(|j| &j[..]).collect();
        let (batch, longest) = pad_jobs(&plan, &slices).unwrap();
        prop_assert!(batch[0].is_consistent());
        prop_assert_eq!(batch[0].rows(), jobs.iter().map(Tensor::rows).sum::<usize>());
        for a in &plan.inputs[0].axes {
            prop_assert_eq!(batch[0].shape[a.axis], longest[a.dim]);
        }
        let lengths: Vec<Vec<usize>> = jobs
            .iter()
            .map(|t| plan.lengths(std::slice::from_ref(t)).unwrap())
            .collect();
        let shape: Vec<(usize, &[usize])> = jobs
            .iter()
            .zip(&lengths)
            .map(|(t, l)| (t.rows(), &l[..]))
            .collect();
        let cut = plan.cut_batch(&batch, &shape).unwrap();
        for (job, back) in jobs.iter().zip(cut) {
            prop_assert_eq!(&back[0], job);
        }
    }
}
