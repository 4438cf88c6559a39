use std::path::{Path, PathBuf};

use prost::Message;

use super::*;
use crate::onnx::external::externalize;
use crate::onnx::proto::{elem, StringStringEntryProto};
use crate::onnx::{Dim, GraphBuilder};
use crate::protocol::Tensor;
use crate::runtime::Backend;

const W: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];

/// `y = x[N,2] · w[2,3]` with `w` in `weights.bin` beside `model.onnx` in `dir`; `location`
/// overrides the location written in the model.
fn write_model(dir: &Path, location: Option<&str>) -> PathBuf {
    let mut g = GraphBuilder::new("t");
    g.init_f32("w", &[2, 3], &W);
    let x = g.input("x", elem::FLOAT, &[Dim::batch(), Dim::Fixed(2)]);
    g.node_to("MatMul", &[&x, "w"], &["y"], vec![]);
    g.output("y", elem::FLOAT, &[Dim::batch(), Dim::Fixed(3)]);
    let mut model = g.into_model();
    let weights = externalize(&mut model, "weights.bin", 1);
    if let Some(location) = location {
        let entries = &mut model.graph.as_mut().unwrap().initializer[0].external_data;
        entries[0] = StringStringEntryProto {
            key: "location".into(),
            value: location.into(),
        };
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("weights.bin"), weights).unwrap();
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
    dir.join("model.onnx")
}

/// `x · w` for row `[a, b]`.
fn expected(a: f32, b: f32) -> Vec<f32> {
    (0..3).map(|j| a * W[j] + b * W[3 + j]).collect()
}

fn cpu() -> SessionOptions {
    crate::runtime::env::init(None).expect("ONNX Runtime loads (make setup installs it)");
    SessionOptions::cpu()
}

#[test]
fn a_model_with_external_data_loads_from_its_directory_and_runs() {
    let options = cpu();
    let tmp = tempfile::tempdir().unwrap();
    let model = write_model(&tmp.path().join("m").join("1"), None);
    let mut backends = load_version(&model, &options, &CudaSettings::default(), 3).unwrap();
    assert_eq!(backends.len(), 3);
    // One session for the version, whatever the number of instances.
    assert!(backends
        .windows(2)
        .all(|b| Arc::ptr_eq(&b[0].session, &b[1].session)));
    let x = Tensor::from_f32("x", vec![2, 2], &[1.0, 0.0, 0.5, 2.0]);
    let y = backends[2].infer(&[x]).unwrap();
    assert_eq!(y[0].shape, vec![2, 3]);
    let want: Vec<f32> = [expected(1.0, 0.0), expected(0.5, 2.0)].concat();
    assert_eq!(y[0].to_f32_vec().unwrap(), want);
    // From bytes, ONNX Runtime looks for the weights in the working directory instead.
    let bytes = std::fs::read(&model).unwrap();
    assert!(OrtBackend::load(&bytes, &options).is_err());
}

/// Instances run batches on their shared session from their own threads at once; every answer
/// is its own input's.
#[test]
fn instances_run_one_session_from_many_threads() {
    let options = cpu();
    let tmp = tempfile::tempdir().unwrap();
    let model = write_model(tmp.path(), None);
    let backends = load_version(&model, &options, &CudaSettings::default(), 4).unwrap();
    std::thread::scope(|scope| {
        for (t, mut backend) in backends.into_iter().enumerate() {
            scope.spawn(move || {
                for i in 0..200 {
                    let a = t as f32;
                    let b = i as f32;
                    let x = Tensor::from_f32("x", vec![1, 2], &[a, b]);
                    let y = backend.infer(&[x]).unwrap();
                    assert_eq!(
                        y[0].to_f32_vec().unwrap(),
                        expected(a, b),
                        "thread {t} run {i}"
                    );
                }
            });
        }
    });
}

/// Should a location that leaves the directory get past the repository's check, ONNX Runtime
/// refuses it too.
#[test]
fn onnx_runtime_refuses_external_data_outside_the_model_directory() {
    let options = cpu();
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), None);
    let model = write_model(&tmp.path().join("v"), Some("../weights.bin"));
    let error = load_version(&model, &options, &CudaSettings::default(), 1).unwrap_err();
    assert!(
        error.to_string().contains("escapes model directory"),
        "{error}"
    );
}

#[test]
fn instances_are_placed_on_devices_only_when_cuda_runs_first() {
    let cuda: CudaSettings = toml::from_str("device_ids = [1, 0, 3]").unwrap();
    let on_cpu = instance_devices(&SessionOptions::cpu(), &cuda, 3);
    assert_eq!(on_cpu, [None, None, None]);
    let gpu = SessionOptions {
        execution_providers: vec![ExecutionProvider::Cuda],
        require_gpu: true,
        ..SessionOptions::cpu()
    };
    let placed = instance_devices(&gpu, &cuda, 5);
    assert_eq!(placed, [Some(1), Some(0), Some(3), Some(1), Some(0)]);
    let cpu_first = SessionOptions {
        execution_providers: vec![ExecutionProvider::Cpu, ExecutionProvider::Cuda],
        ..gpu
    };
    assert_eq!(instance_devices(&cpu_first, &cuda, 1), [None]);
}

#[test]
fn the_session_reports_each_dimension_name() {
    let options = cpu();
    let mut g = GraphBuilder::new("t");
    let seq = [Dim::batch(), Dim::Dynamic("sequence".into()), Dim::Fixed(2)];
    let x = g.input("x", elem::FLOAT, &seq);
    let mask = g.input(
        "mask",
        elem::INT64,
        &[Dim::batch(), Dim::Dynamic("sequence".into())],
    );
    g.node_to("Identity", &[&x], &["y"], vec![]);
    g.node_to("Identity", &[&mask], &["m"], vec![]);
    g.output("y", elem::FLOAT, &seq);
    g.output(
        "m",
        elem::INT64,
        &[Dim::Dynamic("rows".into()), Dim::Fixed(5)],
    );
    let backend = OrtBackend::load(&g.to_bytes(), &options).unwrap();
    let name = |s: &str| Some(s.to_string());
    let names = backend
        .dim_names()
        .expect("an ONNX Runtime session knows them");
    assert_eq!(
        names.inputs,
        vec![
            vec![name("batch"), name("sequence"), None],
            vec![name("batch"), name("sequence")]
        ]
    );
    assert_eq!(
        names.outputs,
        vec![
            vec![name("batch"), name("sequence"), None],
            vec![name("rows"), None]
        ]
    );
}

#[test]
fn a_cpu_version_has_no_arena_and_an_arena_reports_what_it_holds() {
    let options = cpu();
    let tmp = tempfile::tempdir().unwrap();
    let model = write_model(&tmp.path().join("m").join("1"), None);
    let backends = load_version(&model, &options, &CudaSettings::default(), 2).unwrap();
    let a = backends[0].arena().unwrap();
    assert_eq!(
        backends[0].shared_id(),
        backends[1].shared_id(),
        "instances share the session, so its arena"
    );
    assert_eq!(a.device(), "cpu");
    assert_eq!(
        a.read(),
        None,
        "infermq's CPU sessions run without an arena"
    );

    // The same model in a session with ONNX Runtime's CPU arena on: its figures are read.
    let session = ort::session::Session::builder(crate::runtime::env::environment().unwrap())
        .unwrap()
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(true).build()])
        .unwrap()
        .commit_from_file(&model)
        .unwrap();
    let shared = Arc::new(SharedSession::new(session).unwrap());
    let probe = crate::runtime::arena::ArenaProbe::new(&shared);
    let x = Tensor::from_f32("x", vec![64, 2], &[0.5; 128]);
    shared.run(&[x]).unwrap();
    let stats = probe.read().expect("an arena keeps statistics");
    assert!(
        stats.reserved > 0 && stats.in_use <= stats.reserved,
        "{stats:?}"
    );
    assert!(
        stats.peak_in_use >= 64 * 3 * 4,
        "the output alone: {stats:?}"
    );
    drop(shared);
    assert_eq!(
        probe.read(),
        None,
        "the probe does not keep the session alive"
    );
}
