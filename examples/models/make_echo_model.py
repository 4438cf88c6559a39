"""Writes an `echo` model (one Identity per datatype class) into a model repository.

Used by docs/PROTOCOL.md to show every datatype class on the wire against a real worker:

    python3 examples/models/make_echo_model.py /tmp/docs-models
    infermq worker --models /tmp/docs-models

Inputs `fp16`, `fp64`, `u8`, `i8`, `i32`, `bytes` (each shape [-1, 2]) come back unchanged as
`fp16_out`, `fp64_out`, `u8_out`, `i8_out`, `i32_out`, `bytes_out`.

Also writes `fails`: input `x` FP32 [-1, 2] reshaped to [2, 2], so a job of exactly 2 rows
succeeds and any other row count fails inside ONNX Runtime: the way to watch an `internal`
failure be requeued and then dead-lettered. Needs the `onnx` package.
"""

import os
import sys

import onnx
from onnx import TensorProto, helper

TYPES = {
    "fp16": TensorProto.FLOAT16,
    "fp64": TensorProto.DOUBLE,
    "u8": TensorProto.UINT8,
    "i8": TensorProto.INT8,
    "i32": TensorProto.INT32,
    "bytes": TensorProto.STRING,
}


def save(model, root: str, name: str) -> None:
    """Writes `<root>/<name>/1/model.onnx`; the file appears by rename, never half-written."""
    onnx.checker.check_model(model)
    directory = os.path.join(root, name, "1")
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".model.onnx.tmp")
    onnx.save(model, tmp)
    os.replace(tmp, os.path.join(directory, "model.onnx"))
    print(os.path.join(directory, "model.onnx"))


def fails():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2, 2])
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph([node], "fails", [x], [y], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "models"
    inputs = [helper.make_tensor_value_info(n, t, ["batch", 2]) for n, t in TYPES.items()]
    outputs = [helper.make_tensor_value_info(n + "_out", t, ["batch", 2]) for n, t in TYPES.items()]
    nodes = [helper.make_node("Identity", [n], [n + "_out"]) for n in TYPES]
    graph = helper.make_graph(nodes, "echo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, root, "echo")
    save(fails(), root, "fails")


if __name__ == "__main__":
    main()
