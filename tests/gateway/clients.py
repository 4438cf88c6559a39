#!/usr/bin/env python3
"""Drives an infermq gateway with Triton's own HTTP client (tritonclient.http) and checks every
answer against ONNX Runtime's output for the same model file.

Usage: clients.py --url 127.0.0.1:8000 --models DIR
Exit status 0 when every check passed; each failure is printed and makes it 1.
"""
import argparse
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ORT_TO_KSERVE = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(string)": "BYTES",
}
TOLERANCE = 1e-5
failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        failures.append(what)


def session(models, name):
    return ort.InferenceSession(f"{models}/{name}/1/model.onnx", providers=["CPUExecutionProvider"])


def spec(values):
    """ONNX Runtime's inputs or outputs as KServe metadata writes them."""
    return [
        {
            "name": v.name,
            "datatype": ORT_TO_KSERVE[v.type],
            "shape": [d if isinstance(d, int) else -1 for d in v.shape],
        }
        for v in values
    ]


def check_metadata(client, models):
    for name in ["iris", "mixed", "scaler"]:
        sess = session(models, name)
        meta = client.get_model_metadata(name)
        check(meta["name"] == name, f"metadata {name}: name")
        check(meta["versions"] == ["1"], f"metadata {name}: versions {meta['versions']}")
        check(meta["platform"] == "onnxruntime_onnx", f"metadata {name}: platform")
        check(meta["inputs"] == spec(sess.get_inputs()), f"metadata {name}: inputs {meta['inputs']}")
        check(meta["outputs"] == spec(sess.get_outputs()), f"metadata {name}: outputs {meta['outputs']}")
    meta = client.get_model_metadata("iris", model_version="1")
    check(meta["versions"] == ["1"], "metadata iris version 1 via /versions/1")


def infer_iris(client, models, binary):
    rng = np.random.default_rng(7)
    x = rng.uniform(0.0, 8.0, size=(5, 4)).astype(np.float32)
    expected = session(models, "iris").run(None, {"input": x})[0]
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("iris", [inp], outputs=[out], request_id=f"iris-{binary}")
    got = result.as_numpy("probabilities")
    kind = "binary" if binary else "JSON"
    check(got is not None and got.shape == expected.shape, f"iris {kind}: shape")
    check(
        got is not None and np.allclose(got, expected, atol=TOLERANCE, rtol=0),
        f"iris {kind}: equals ONNX Runtime within {TOLERANCE}",
    )
    response = result.get_response()
    check(response.get("id") == f"iris-{binary}", f"iris {kind}: id copied")
    check(response.get("model_version") == "1", f"iris {kind}: model_version")
    # Through the version route too.
    result = client.infer("iris", [inp], outputs=[out], model_version="1")
    check(np.allclose(result.as_numpy("probabilities"), expected, atol=TOLERANCE, rtol=0), f"iris {kind}: /versions/1")


def infer_mixed_subset(client, models):
    ids = np.array([[1, 2, 3, 9007199254740993], [5, -6, 7, 8]], dtype=np.int64)
    mask = np.array([[True, False, True, False], [True, True, False, True]])
    expected = dict(zip(["masked_sum", "inverted"], session(models, "mixed").run(None, {"ids": ids, "mask": mask})))
    inputs = [httpclient.InferInput("ids", [2, 4], "INT64"), httpclient.InferInput("mask", [2, 4], "BOOL")]
    inputs[0].set_data_from_numpy(ids, binary_data=True)
    inputs[1].set_data_from_numpy(mask, binary_data=False)
    # Only one of the two outputs: the answer must hold exactly that one.
    result = client.infer("mixed", inputs, outputs=[httpclient.InferRequestedOutput("inverted", binary_data=True)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    check(names == ["inverted"], f"mixed: output subset {names}")
    check(np.array_equal(result.as_numpy("inverted"), expected["inverted"]), "mixed: inverted equals ONNX Runtime")
    result = client.infer("mixed", inputs, outputs=[httpclient.InferRequestedOutput("masked_sum", binary_data=False)])
    check(np.array_equal(result.as_numpy("masked_sum"), expected["masked_sum"]), "mixed: INT64 masked_sum (all 64 bits)")


def infer_scaler(client, models):
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    sr = np.array(0.5, dtype=np.float32)
    expected = session(models, "scaler").run(None, {"x": x, "sr": sr})[0]
    inputs = [httpclient.InferInput("x", [2, 8], "FP32"), httpclient.InferInput("sr", [], "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(sr, binary_data=True)
    result = client.infer("scaler", inputs)
    check(np.allclose(result.as_numpy("y"), expected, atol=TOLERANCE, rtol=0), "scaler: scalar input, binary, equals ONNX Runtime")


def expect_error(what, status, call):
    try:
        call()
    except InferenceServerException as e:
        check(str(e.status()) == str(status), f"{what}: status {e.status()} (expected {status}): {e.message()}")
        return e
    check(False, f"{what}: no error raised (expected {status})")
    return None


def check_errors(client):
    x = np.zeros((1, 4), dtype=np.float32)
    good = httpclient.InferInput("input", [1, 4], "FP32")
    good.set_data_from_numpy(x, binary_data=False)
    wrong = httpclient.InferInput("input", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32), binary_data=True)
    e = expect_error("wrong shape", 400, lambda: client.infer("iris", [wrong]))
    check(e is not None and "input" in e.message(), "wrong shape: the worker's message names the input")
    expect_error("unknown model", 404, lambda: client.infer("no-such-model", [good]))
    expect_error("unknown version", 404, lambda: client.infer("iris", [good], model_version="9"))
    expect_error("unknown model metadata", 404, lambda: client.get_model_metadata("no-such-model"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--models", required=True)
    args = parser.parse_args()
    client = httpclient.InferenceServerClient(url=args.url, concurrency=1)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.is_model_ready("iris"), "iris ready")
    check(client.is_model_ready("iris", model_version="1"), "iris version 1 ready")
    check(not client.is_model_ready("iris", model_version="9"), "iris version 9 not ready")
    check(not client.is_model_ready("no-such-model"), "unknown model not ready")
    check_metadata(client, args.models)
    infer_iris(client, args.models, binary=False)
    infer_iris(client, args.models, binary=True)
    infer_mixed_subset(client, args.models)
    infer_scaler(client, args.models)
    check_errors(client)
    client.close()
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all tritonclient checks passed")


if __name__ == "__main__":
    main()
