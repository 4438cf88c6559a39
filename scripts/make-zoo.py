#!/usr/bin/env python3
"""Builds the model zoo that tests/zoo.rs serves: real ONNX models made by others, each with a
job and ONNX Runtime's own answer to it.

    python3 scripts/make-zoo.py OUT_DIR

Writes
  OUT_DIR/models/<name>/1/model.onnx   a model repository (plus <name>/config.toml where needed)
  OUT_DIR/cases.json                   {"cases": [...], "skipped": [...]}: per model its source,
                                       producer, opsets, inputs, whether infermq must serve or
                                       refuse it, a KServe v2 JSON request and the expected outputs
  OUT_DIR/stamp.json                   what the zoo was built from: a later run with the same
                                       script, fixtures and package versions does nothing

Nothing is built by infermq and nothing is downloaded: the models come from packages installed
by scripts/ensure-test-tools.sh (the onnx package's backend test data, silero-vad,
rapidocr-onnxruntime, scikit-learn + skl2onnx, LightGBM + onnxmltools) and from two small torch
exports committed under tests/zoo/ (scripts/make-zoo-fixtures.py made them).

Expected outputs are ONNX Runtime's (Python, the same 1.31.1 as the worker, all graph
optimizations, 1 intra-op thread) on the case's request; where the source ships expected outputs
(the onnx backend test data) ONNX Runtime's are checked against them too, and the result is kept
in the case's "reference". A model ONNX Runtime cannot load is a case infermq must refuse, with
ONNX Runtime's reason; so is a model with an input or output that is not a tensor.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import struct
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "zoo"
FIXTURE_FILES = ("bert_tiny.onnx", "vit_tiny.onnx")

# Python modules the zoo needs -> the distribution whose version is recorded.
NEEDED = {
    "numpy": "numpy",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "silero_vad": "silero-vad",
    "rapidocr_onnxruntime": "rapidocr-onnxruntime",
    "sklearn": "scikit-learn",
    "skl2onnx": "skl2onnx",
    "onnxmltools": "onnxmltools",
    "lightgbm": "lightgbm",
}

# KServe v2 datatypes of the integer and boolean types: numpy and ONNX Runtime spell them alike.
EXACT_TYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
}

# KServe v2 datatypes of the numpy dtypes ONNX Runtime returns.
DATATYPES = {
    **EXACT_TYPES,
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "BYTES",
    "str": "BYTES",
}

# ONNX Runtime's tensor element types (as `NodeArg.type` spells them) that infermq serves.
ORT_TENSOR_TYPES = {
    **EXACT_TYPES,
    "float16": "FP16",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
}

# Tolerances between the worker's answer and ONNX Runtime Python's: the same library on the
# same machine with the same options, so floating-point answers should agree to the last bits;
# these leave room for kernels that sum in another order for another buffer alignment.
RTOL = 1e-5
ATOL = 1e-6


def fail(message):
    print(f"make-zoo.py: {message}", file=sys.stderr)
    sys.exit(2)


def versions():
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        fail(
            "missing Python packages: "
            + ", ".join(NEEDED[m] for m in missing)
            + " (scripts/ensure-test-tools.sh installs them)"
        )
    return {dist: importlib.metadata.version(dist) for dist in NEEDED.values()}


def has_locale(name):
    """Whether the C library has locale `name` (ONNX Runtime's StringNormalizer needs
    en_US.UTF-8: without it those models are refused)."""
    import locale

    try:
        previous = locale.setlocale(locale.LC_CTYPE)
        locale.setlocale(locale.LC_CTYPE, name)
        locale.setlocale(locale.LC_CTYPE, previous)
        return True
    except locale.Error:
        return False


def stamp_of(package_versions):
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for fixture in FIXTURE_FILES:
        if not (FIXTURES / fixture).exists():
            fail(f"tests/zoo/{fixture} is missing (scripts/make-zoo-fixtures.py makes it)")
        digest.update(fixture.encode())
        digest.update((FIXTURES / fixture).read_bytes())
    return {
        "script_and_fixtures_sha256": digest.hexdigest(),
        "packages": package_versions,
        "en_US.UTF-8": has_locale("en_US.UTF-8"),
    }


def package_dir(module):
    return Path(importlib.util.find_spec(module).origin).parent


# ---------------------------------------------------------------------------------------------
# Tensors as JSON


def datatype_of(array):
    kind = "object" if array.dtype.kind in "OSU" else array.dtype.name
    if kind not in DATATYPES:
        raise ValueError(f"no KServe v2 datatype for numpy {array.dtype}")
    return DATATYPES[kind]


class RawData:
    """Flat tensor data already written as JSON array elements (see `dumps`)."""

    def __init__(self, array):
        flat = array.reshape(-1)
        if array.dtype.kind == "f":
            # numpy writes the shortest text that reads back as the same value of the dtype.
            text = flat.astype(str)
            special = {"nan": '"NaN"', "inf": '"Infinity"', "-inf": '"-Infinity"'}
            self.items = [special.get(t, t) for t in text.tolist()]
        elif array.dtype.kind == "b":
            self.items = ["true" if v else "false" for v in flat.tolist()]
        elif array.dtype.kind in "iu":
            self.items = [str(v) for v in flat.tolist()]
        else:
            self.items = [
                json.dumps(v.decode() if isinstance(v, bytes) else str(v), ensure_ascii=False)
                for v in flat.tolist()
            ]


def dumps(value):
    """JSON text of `value`, where each RawData is written as a flat array of its items."""
    raws = []

    def default(o):
        if isinstance(o, RawData):
            raws.append(o)
            return f"\x00raw{len(raws) - 1}\x00"
        raise TypeError(f"not JSON: {type(o)}")

    text = json.dumps(value, default=default, ensure_ascii=False, indent=1)
    return re.sub(
        r'"\\u0000raw(\d+)\\u0000"',
        lambda m: "[" + ",".join(raws[int(m.group(1))].items) + "]",
        text,
    )


def tensor_json(name, array):
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype_of(array),
        "data": RawData(array),
    }


# ---------------------------------------------------------------------------------------------
# What a model file says about itself


def describe(model_bytes):
    import onnx

    model = onnx.load_from_string(model_bytes)
    producer = f"{model.producer_name} {model.producer_version}".strip() or "(none)"
    opsets = {}
    for o in model.opset_import:
        domain = o.domain or "ai.onnx"
        opsets[domain] = max(opsets.get(domain, 0), o.version)
    order = sorted(opsets, key=lambda d: (d != "ai.onnx", d))
    return {
        "producer": producer,
        "opsets": ", ".join(f"{d} {opsets[d]}" for d in order),
        "ir_version": model.ir_version,
    }, model


def onnx_type_text(type_proto):
    """An ONNX type as ONNX Runtime writes it: tensor(float), seq(map(int64,tensor(float)))."""
    import onnx

    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        elem = onnx.helper.tensor_dtype_to_np_dtype(type_proto.tensor_type.elem_type).name
        ort_names = {"float32": "float", "float64": "double", "object": "string"}
        return f"tensor({ort_names.get(elem, elem)})"
    if kind == "sequence_type":
        return f"seq({onnx_type_text(type_proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = onnx.helper.tensor_dtype_to_np_dtype(type_proto.map_type.key_type).name
        key = {"object": "string"}.get(key, key)
        return f"map({key},{onnx_type_text(type_proto.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({onnx_type_text(type_proto.optional_type.elem_type)})"
    return kind or "unknown"


def short_type(ort_type):
    """`tensor(float)` -> FP32; anything else as it is."""
    m = re.fullmatch(r"tensor\((\w+)\)", ort_type)
    if m and m.group(1) in ORT_TENSOR_TYPES:
        return ORT_TENSOR_TYPES[m.group(1)]
    return ort_type


def shape_text(shape):
    if shape is None:
        return ""
    dims = ["?" if d is None or isinstance(d, str) or d < 0 else str(d) for d in shape]
    return "[" + ",".join(dims) + "] "


def inputs_text(args):
    """`(name, shape, ort_type)` triples as `name [1,3,?,?] FP32, ...`."""
    return ", ".join(
        f"{name} {shape_text(shape) if t.startswith('tensor(') else ''}{short_type(t)}"
        for name, shape, t in args
    )


def graph_inputs(model):
    initializers = {i.name for i in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type
        shape = None
        if t.WhichOneof("value") == "tensor_type" and t.tensor_type.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
        result.append((value.name, shape, onnx_type_text(t)))
    return result


# ---------------------------------------------------------------------------------------------
# ONNX Runtime, as the worker runs it


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_reason(error):
    """ONNX Runtime's message without its status prefix or the file's path: the part the worker
    must repeat when it refuses the model."""
    text = str(error).strip().splitlines()[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from .*? failed:", "", text)
    text = re.sub(r"^Exception during initialization: \S+ ", "", text)
    text = re.sub(r"^onnxruntime::\S+\s*", "", text)
    return text.strip()


def close(actual, expected, rtol, atol):
    import numpy as np

    if actual.shape != expected.shape:
        return False
    if actual.dtype.kind in "fc":
        return bool(np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(actual, expected))


class Zoo:
    def __init__(self, out):
        self.out = out
        self.cases = []
        self.skipped = []

    def add(
        self,
        name,
        source,
        model_bytes,
        feeds=None,
        shipped=None,
        shipped_tol=(1e-3, 1e-7),
        config=None,
        note=None,
        files=None,
    ):
        """One model: written to the repository, loaded and run by ONNX Runtime Python.
        `feeds`: input name -> numpy array (None: the model has no job, it must be refused);
        `shipped`: the source's expected outputs, in the model's output order."""
        import numpy as np

        assert re.fullmatch(r"[a-z0-9_-]{1,128}", name), name
        assert name not in {c["name"] for c in self.cases}, name
        version_dir = self.out / "models" / name / "1"
        version_dir.mkdir(parents=True)
        path = version_dir / "model.onnx"
        path.write_bytes(model_bytes)
        if config:
            (self.out / "models" / name / "config.toml").write_text(config)
        for relative, content in (files or {}).items():
            (self.out / "models" / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.out / "models" / name / relative).write_bytes(content)
        meta, model = describe(model_bytes)
        case = {"name": name, "source": source, **meta}
        if note:
            case["note"] = note

        try:
            sess = session(path)
        except Exception as e:  # ONNX Runtime refuses the file: so must the worker.
            reason = ort_reason(e)
            case.update(
                inputs=inputs_text(graph_inputs(model)),
                expect="refuse",
                refusal=f"ONNX Runtime cannot load it: {reason}",
                reason_contains=[reason],
            )
            self.cases.append(case)
            return

        ins = [(a.name, a.shape, a.type) for a in sess.get_inputs()]
        outs = [(a.name, a.shape, a.type) for a in sess.get_outputs()]
        case["inputs"] = inputs_text(ins)
        for side, args in (("input", ins), ("output", outs)):
            for arg_name, _, t in args:
                if not t.startswith("tensor("):
                    case.update(
                        expect="refuse",
                        refusal=f"{side} {arg_name} is {t}, not a tensor",
                        reason_contains=[arg_name, "not a tensor"],
                    )
                    self.cases.append(case)
                    return
                if short_type(t) == t:
                    case.update(
                        expect="refuse",
                        refusal=f"{side} {arg_name} is {t}, a datatype KServe v2 does not have",
                        reason_contains=[arg_name],
                    )
                    self.cases.append(case)
                    return

        assert feeds is not None, f"{name}: a served model needs a request"
        assert sorted(feeds) == sorted(a[0] for a in ins), (name, sorted(feeds), ins)
        for arg_name, array in feeds.items():
            if 0 in array.shape:
                self.skipped.append(
                    {"name": name, "source": source,
                     "reason": f"input {arg_name} has shape {list(array.shape)}: no elements, "
                               "which infermq answers invalid_request (not a job)"}
                )
                shutil.rmtree(self.out / "models" / name)
                return
        try:
            results = sess.run(None, feeds)
        except Exception as e:
            self.skipped.append(
                {"name": name, "source": source,
                 "reason": f"ONNX Runtime loads it but cannot run it: {ort_reason(e)}"}
            )
            shutil.rmtree(self.out / "models" / name)
            return
        results = [np.asarray(r) for r in results]

        if shipped is not None:
            rtol, atol = shipped_tol
            bad = [
                o[0] for o, r, s in zip(outs, results, shipped) if not close(r, np.asarray(s), rtol, atol)
            ]
            if len(shipped) != len(results):
                bad.append(f"{len(shipped)} shipped outputs for {len(results)}")
            case["reference"] = (
                f"ONNX Runtime's outputs equal the shipped expected outputs (rtol {rtol:g}, atol {atol:g})"
                if not bad
                else f"ONNX Runtime's outputs differ from the shipped expected outputs: {', '.join(bad)}"
            )

        case.update(
            expect="serve",
            request={
                "id": f"zoo-{name}",
                "inputs": [tensor_json(a[0], np.asarray(feeds[a[0]])) for a in ins],
            },
            outputs=[tensor_json(o[0], r) for o, r in zip(outs, results)],
            rtol=RTOL,
            atol=ATOL,
        )
        self.cases.append(case)


# ---------------------------------------------------------------------------------------------
# Sources


def onnx_backend(zoo):
    """The onnx package's backend test data: light/ (the model zoo's CNNs with constant weights,
    inputs as onnx's runner makes them), pytorch-converted/, pytorch-operator/, simple/ (inputs
    and expected outputs in test_data_set_0)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    version = importlib.metadata.version("onnx")
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"

    for path in sorted((root / "light").glob("light_*.onnx")):
        stem = path.stem[len("light_"):]
        model = onnx.load(str(path))
        # onnx/backend/test/runner/__init__.py (generate_dummy_data, random=False): each float
        # input is arange(n) / n in its declared shape, unknown dimensions 1.
        feeds = {}
        for name, shape, _ in graph_inputs(model):
            dims = tuple(d if d else 1 for d in shape)
            n = int(np.prod(dims))
            feeds[name] = (np.arange(n).reshape(dims) / n).astype(np.float32)
        shipped = []
        for i in range(len(model.graph.output)):
            shipped.append(numpy_helper.to_array(onnx.load_tensor(str(root / "light" / f"{path.stem}_output_{i}.pb"))))
        # The tolerances onnx's own backend test uses (onnx/backend/test/case/model/__init__.py).
        tol = (2e-3, 1e-7) if stem == "densenet121" else (1e-3, 1e-7)
        zoo.add(
            f"onnx-light-{stem}",
            f"onnx package {version}: backend/test/data/light/{path.name}",
            path.read_bytes(),
            feeds,
            shipped,
            tol,
        )

    prefixes = {"pytorch-converted": "onnx-ptconv-", "pytorch-operator": "onnx-ptop-", "simple": "onnx-simple-"}
    for kind, prefix in prefixes.items():
        for case_dir in sorted((root / kind).iterdir(), key=lambda p: p.name):
            model_path = case_dir / "model.onnx"
            if not model_path.exists():
                continue
            model = onnx.load(str(model_path))
            tail = case_dir.name.removeprefix("test_").removeprefix("operator_").lower()
            data = case_dir / "test_data_set_0"
            # onnx's runner: input_<i>.pb is the model's graph input i.
            feeds = {}
            for i, pb in enumerate(sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem[6:]))):
                value = model.graph.input[i]
                feeds[value.name] = numpy_helper.to_array(onnx.load_tensor(str(pb)))
            shipped = [
                numpy_helper.to_array(onnx.load_tensor(str(pb)))
                for pb in sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem[7:]))
            ]
            note = None
            if case_dir.name in EMPTY_INPUTS:
                # Its shipped input has no elements, which infermq refuses as a job: the model
                # gets a job of our own (no shipped output to check it against).
                feeds, note = EMPTY_INPUTS[case_dir.name]()
                shipped = None
            tol = (1e-3, 1e-7)
            if (case_dir / "data.json").exists():
                spec = json.loads((case_dir / "data.json").read_text())
                tol = (spec.get("rtol", tol[0]), spec.get("atol", tol[1]))
            zoo.add(
                f"{prefix}{tail}".replace(".", "_"),
                f"onnx package {version}: backend/test/data/{kind}/{case_dir.name}/model.onnx",
                model_path.read_bytes(),
                feeds,
                shipped,
                tol,
                note=note,
            )


def sequence_model8_feeds():
    import numpy as np

    feeds = {"X": np.arange(6, dtype=np.float32) / 4, "Splits": np.array([1, 2, 3], np.int64)}
    return feeds, "its shipped input X is [0] (no elements); the job is X = [0, 0.25, ..., 1.25], Splits = [1, 2, 3]"


# backend test cases whose shipped inputs cannot be a job -> their own feeds and a note.
EMPTY_INPUTS = {"test_sequence_model8": sequence_model8_feeds}


def silero(zoo):
    """silero-vad's ONNX model, as its package ships it, on one 512-sample chunk (32 ms at
    16 kHz) of a voiced sound: a 140 Hz glottal pulse train through three vowel formants."""
    import numpy as np

    version = importlib.metadata.version("silero-vad")
    path = package_dir("silero_vad") / "data" / "silero_vad.onnx"
    rate = 16000
    t = np.arange(512) / rate
    rng = np.random.default_rng(16000)
    wave = np.zeros(512)
    for k in range(1, 40):
        f = 140.0 * k
        gain = sum(np.exp(-((f - formant) ** 2) / (2 * 90.0**2)) for formant in (730, 1090, 2440))
        wave += (gain + 0.02) / k * np.sin(2 * np.pi * f * t + k)
    wave = 0.3 * wave / np.abs(wave).max() + 0.003 * rng.standard_normal(512)
    feeds = {
        "input": wave.astype(np.float32).reshape(1, 512),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(rate, np.int64),
    }
    zoo.add(
        "silero-vad",
        f"silero-vad {version}: silero_vad/data/silero_vad.onnx",
        path.read_bytes(),
        feeds,
        config=SILERO_CONFIG,
        files={"warmup/sr.bin": struct.pack("<q", rate)},
    )
    # As a new user serves it: no warm-up described. The made-up one cannot run it, and the
    # version serves all the same (the case that once kept a worker unready for good).
    zoo.add(
        "silero-vad-default",
        f"silero-vad {version}: silero_vad/data/silero_vad.onnx, config.toml max_batch_size = 0 only",
        path.read_bytes(),
        feeds,
        config="max_batch_size = 0\n",
    )


# No batch dimension (sr is a scalar): one job per run. The made-up warm-up (zeros, unnamed
# dynamic dimensions 1) cannot run it (sr 0, a 1-sample chunk), so the warm-up is described, as
# in docs/CONFIGURATION.md: one 512-sample chunk at 16 kHz.
SILERO_CONFIG = """max_batch_size = 0

[[warmup]]
name = "one chunk at 16 kHz"
[warmup.inputs.input]
dims = [1, 512]
random_data = true
[warmup.inputs.state]
dims = [2, 1, 128]
zero_data = true
[warmup.inputs.sr]
dims = []
input_data_file = "sr.bin"
"""


def document_image(height, width, seed):
    """A white page with dark text-like bars, as float RGB in [0, 1], [height, width, 3]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.ones((height, width, 3))
    for top in range(6, height - 10, 16):
        left = 6
        while left < width - 12:
            w = int(rng.integers(4, 14))
            img[top : top + 9, left : left + w] = 0.1 + 0.1 * rng.random()
            left += w + int(rng.integers(2, 6))
    return img


def rapidocr(zoo):
    """RapidOCR's three PP-OCR models, as rapidocr-onnxruntime ships them in its wheel (newer
    `rapidocr` downloads its models at run time), on synthetic text images normalised as
    RapidOCR does ((x - 0.5) / 0.5, NCHW)."""
    import numpy as np

    version = importlib.metadata.version("rapidocr-onnxruntime")
    models = package_dir("rapidocr_onnxruntime") / "models"

    def chw(img):
        return ((img - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)

    for name, file, (h, w) in (
        ("rapidocr-det", "ch_PP-OCRv4_det_infer.onnx", (64, 96)),
        ("rapidocr-cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", (48, 192)),
        ("rapidocr-rec", "ch_PP-OCRv4_rec_infer.onnx", (48, 160)),
    ):
        zoo.add(
            name,
            f"rapidocr-onnxruntime {version}: rapidocr_onnxruntime/models/{file}",
            (models / file).read_bytes(),
            {"x": chw(document_image(h, w, seed=h * w))},
        )


def sklearn_models(zoo):
    """scikit-learn pipelines converted by skl2onnx, trained on the iris data set scikit-learn
    ships: with ZipMap (probabilities as a sequence of maps: refused), without (served), and
    one whose input is a map (DictVectorizer: refused)."""
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DictionaryType, FloatTensorType, StringTensorType

    skl = importlib.metadata.version("scikit-learn")
    conv = importlib.metadata.version("skl2onnx")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    rows = x[[0, 1, 50, 51, 100, 149]]
    opset = {"": 17, "ai.onnx.ml": 3}
    source = f"scikit-learn {skl} + skl2onnx {conv}: StandardScaler + LogisticRegression on iris"
    zipmap = to_onnx(pipe, x[:1], target_opset=opset)
    zoo.add("skl-logreg-zipmap", source + " (ZipMap)", zipmap.SerializeToString(), {"X": rows})
    plain = to_onnx(pipe, x[:1], target_opset=opset, options={LogisticRegression: {"zipmap": False}})
    zoo.add("skl-logreg", source + " (zipmap=False)", plain.SerializeToString(), {"X": rows})

    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    dicts = [dict(zip(names, map(float, row))) for row in x]
    dict_pipe = make_pipeline(DictVectorizer(sparse=False), LogisticRegression(max_iter=1000)).fit(dicts, y)
    mapped = to_onnx(
        dict_pipe,
        initial_types=[("features", DictionaryType(StringTensorType([]), FloatTensorType([])))],
        target_opset=opset,
        options={LogisticRegression: {"zipmap": False}},
    )
    zoo.add(
        "skl-dictvectorizer",
        f"scikit-learn {skl} + skl2onnx {conv}: DictVectorizer + LogisticRegression on iris",
        mapped.SerializeToString(),
    )


def lightgbm_model(zoo):
    """A LightGBM classifier on the breast cancer data set scikit-learn ships, converted by
    onnxmltools without ZipMap. onnxmltools declares its `label` output [1] although it has a
    row per input row: ONNX Runtime returns [rows] all the same."""
    import lightgbm
    import numpy as np
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    classifier = lightgbm.LGBMClassifier(
        n_estimators=20, num_leaves=15, random_state=0, deterministic=True, n_jobs=1, verbose=-1
    ).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_lightgbm(
            classifier,
            initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
            zipmap=False,
            target_opset=15,
        )
    zoo.add(
        "lightgbm-classifier",
        f"lightgbm {lightgbm.__version__} + onnxmltools {importlib.metadata.version('onnxmltools')}: "
        "LGBMClassifier on breast cancer (zipmap=False)",
        model.SerializeToString(),
        {"input": x[[0, 1, 19, 20]]},
    )


def torch_exports(zoo):
    """The two torch.onnx.export fixtures of tests/zoo/ (made by scripts/make-zoo-fixtures.py)."""
    import numpy as np

    bert = FIXTURES / "bert_tiny.onnx"
    # Token ids below the fixture's vocabulary of 1024; 0 pads the shorter rows.
    ids = np.array([[101, 759, 208, 200, 37, 323, 102, 0], [101, 202, 200, 205, 12, 102, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    zoo.add(
        "torch-bert-tiny",
        "tests/zoo/bert_tiny.onnx: transformers BertModel (hidden 32, 2 layers, random weights), torch.onnx.export",
        bert.read_bytes(),
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )
    vit = FIXTURES / "vit_tiny.onnx"
    pixels = np.random.default_rng(32).standard_normal((2, 3, 32, 32)).astype(np.float32)
    zoo.add(
        "torch-vit-tiny",
        "tests/zoo/vit_tiny.onnx: transformers ViTModel (hidden 32, 2 layers, 32x32 images, random weights), torch.onnx.export",
        vit.read_bytes(),
        {"pixel_values": pixels},
    )


def main():
    if len(sys.argv) != 2:
        fail("usage: make-zoo.py OUT_DIR")
    out = Path(sys.argv[1])
    stamp = stamp_of(versions())
    stamp_path = out / "stamp.json"
    if (out / "cases.json").exists() and stamp_path.exists():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                print(f"make-zoo.py: {out} is up to date")
                return
        except ValueError:
            pass
    for stale in ("models", "cases.json", "stamp.json", "ZOO.md"):
        target = out / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    (out / "models").mkdir(parents=True)

    zoo = Zoo(out)
    onnx_backend(zoo)
    silero(zoo)
    rapidocr(zoo)
    sklearn_models(zoo)
    lightgbm_model(zoo)
    torch_exports(zoo)

    zoo.cases.sort(key=lambda c: c["name"])
    (out / "cases.json").write_text(dumps({"cases": zoo.cases, "skipped": zoo.skipped}) + "\n")
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    serve = sum(c["expect"] == "serve" for c in zoo.cases)
    print(
        f"make-zoo.py: {len(zoo.cases)} models in {out}/models ({serve} to serve, "
        f"{len(zoo.cases) - serve} to refuse), {len(zoo.skipped)} skipped"
    )
    for case in zoo.cases:
        if "differ" in case.get("reference", ""):
            print(f"make-zoo.py: {case['name']}: {case['reference']}", file=sys.stderr)


if __name__ == "__main__":
    main()
