#!/usr/bin/env python3
"""Makes the two torch.onnx.export models of the zoo (tests/zoo.rs, scripts/make-zoo.py) and
writes them to tests/zoo/, where they are committed: `make test` needs neither torch nor
transformers.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.15.0 transformers==5.23.0 onnx==1.23.2 \
        onnxscript==0.7.2 onnxruntime==1.31.1
    /tmp/torchvenv/bin/python scripts/make-zoo-fixtures.py

The committed files were made with exactly those versions (Python 3.11; PyPI's torch 2.15.0
wheel is its CUDA 13.2 build, `pytorch 2.15.0+cu132` in the files, run on the CPU), by the
dynamo-based exporter (torch.onnx.export(..., dynamo=True)), opset 18:
- tests/zoo/bert_tiny.onnx: transformers BertModel, hidden 32, 2 layers, 2 heads, intermediate
  64, vocabulary 1024, 64 positions; inputs input_ids, attention_mask, token_type_ids INT64
  [batch, sequence]; outputs last_hidden_state [batch, sequence, 32], pooler_output [batch, 32].
- tests/zoo/vit_tiny.onnx: transformers ViTModel, hidden 32, 2 layers, 2 heads, intermediate
  64, 32x32 RGB images in 8x8 patches; input pixel_values FP32 [batch, 3, 32, 32]; outputs
  last_hidden_state [batch, 17, 32], pooler_output [batch, 32].
Weights are random (torch.manual_seed(0)): the zoo checks that infermq answers as ONNX Runtime
does, not what the answer means. Each file is checked by onnx.checker and run once by ONNX
Runtime against torch's own output before it is written.
"""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers

OUT = Path(__file__).resolve().parent.parent / "tests" / "zoo"


def export(model, example, input_names, output_names, dynamic_shapes, path):
    model.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            args=(),
            kwargs=example,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=18,
            dynamo=True,
            external_data=False,
        )
        program.save(str(path))
        expected = model(**example)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in example.items()})
    for name, value, mine in zip(output_names, got, (expected.last_hidden_state, expected.pooler_output)):
        np.testing.assert_allclose(value, mine.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    size = path.stat().st_size
    assert size < 1 << 20, f"{path}: {size} bytes"
    print(f"{path}: {size} bytes, inputs {[i.name for i in session.get_inputs()]}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=1024,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    ids = torch.tensor([[101, 759, 208, 200, 37, 323, 102, 0], [101, 202, 200, 205, 12, 102, 0, 0]])
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=2, max=64)
    export(
        bert,
        {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)},
        ["input_ids", "attention_mask", "token_type_ids"],
        ["last_hidden_state", "pooler_output"],
        {name: {0: batch, 1: sequence} for name in ("input_ids", "attention_mask", "token_type_ids")},
        OUT / "bert_tiny.onnx",
    )

    torch.manual_seed(0)
    vit = transformers.ViTModel(
        transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    export(
        vit,
        {"pixel_values": torch.randn(2, 3, 32, 32)},
        ["pixel_values"],
        ["last_hidden_state", "pooler_output"],
        {"pixel_values": {0: batch}},
        OUT / "vit_tiny.onnx",
    )
    print("torch", torch.__version__, "transformers", transformers.__version__, "onnx", onnx.__version__,
          "onnxruntime", ort.__version__, "python", sys.version.split()[0])


if __name__ == "__main__":
    main()
