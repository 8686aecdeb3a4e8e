"""Our student as an ONNX file with the authors' interface, for ONNX Runtime and any ONNX consumer.

Interface (what the authors' `koniq_zeroshot_demo.py` feeds and reads): input `input`
[batch, 3, S, S] float32 RGB in [0, 1] (NCHW, no mean/std), outputs `score` [batch, 1] (the head
output, MOS / mos_scale, as theirs) and `map` [batch, 8, 64, 64]; the batch axis is dynamic. The
preprocessing (side, value range, channel order, resize filter) and the MOS scale are written into
the model's `metadata_props` (keys `dpiqa_jax.*`).

Route: the graph is written with the `onnx` helper API from our parameters, one ONNX node per
layer: Conv (BatchNorm folded in float64: weight x gamma / sqrt(var + eps), bias beta - mean x
that factor), Sigmoid x Mul (SiLU) or Clip (ReLU6), GlobalAveragePool / Conv / Sigmoid / Mul
(squeeze-excitation), Add, ConvTranspose, Relu, two Gathers with torch's nearest indices (exact
for any size ratio, where ONNX's Resize rounds its own way), Flatten and Gemm. TF "SAME" padding
of the Lite models becomes the Conv's asymmetric `pads`. No JAX tracing and no torch are involved,
and ONNX Runtime sees plain Conv nodes, for which it has its fused CPU kernels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import scorer
from dpiqa_jax.convert.efficientnet import student_flax_to_official
from dpiqa_jax.models.efficientnet import efficientnet_config
from dpiqa_jax.models.fold import batch_norm_factor
from dpiqa_jax.primitives.resize import nearest_source_indices

Array = np.ndarray

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAMES = ("score", "map")
METADATA_PREFIX = "dpiqa_jax."
FORMAT = "dpiqa_jax.onnx_student"
DEFAULT_IMAGE_SIZE = 512
_PREFIX = "base_model.features"


def _onnx():
    # onnx is an optional dependency: only ONNX files need it.
    try:
        import onnx  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError("writing ONNX needs the onnx package (pip install onnx)") from err
    return onnx


class _GraphWriter:
    """Collects nodes and initializers; tracks the spatial side for TF "SAME" padding."""

    def __init__(self, state_dict: Mapping[str, Array], config: Any, side: int):
        self.state_dict = state_dict
        self.config = config
        self.side = side
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def constant(self, name: str, value: Array) -> str:
        self.initializers.append(_onnx().numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], name: str, output: str | None = None,
             **attrs: Any) -> str:
        """Appends a node; its output is `output`, or a unique name made from `name`."""
        self._count += 1
        node_name = f"{name}/{op_type}_{self._count}"
        output = output or node_name
        self.nodes.append(_onnx().helper.make_node(op_type, inputs, [output], name=node_name,
                                                   **attrs))
        return output

    def activation(self, x: str, name: str) -> str:
        if self.config.activation == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x], name)], name)
        low = self.constant(f"{name}.relu6_min", np.float32(0.0))
        high = self.constant(f"{name}.relu6_max", np.float32(6.0))
        return self.node("Clip", [x, low, high], name)

    def _pads(self, kernel: int, stride: int) -> list[int]:
        if self.config.padding == "symmetric":
            return [(kernel - 1) // 2] * 4
        total = max((-(-self.side // stride) - 1) * stride + kernel - self.side, 0)
        return [total // 2, total // 2, total - total // 2, total - total // 2]

    def conv(self, x: str, name: str, weight: Array, bias: Array, *, stride: int = 1,
             groups: int = 1) -> str:
        kernel = weight.shape[-1]
        pads = self._pads(kernel, stride)
        self.side = (self.side + pads[0] + pads[2] - kernel) // stride + 1
        return self.node("Conv", [x, self.constant(f"{name}.weight", weight),
                                  self.constant(f"{name}.bias", bias)], name,
                         kernel_shape=[kernel, kernel], strides=[stride, stride], pads=pads,
                         group=groups, dilations=[1, 1])

    def conv_bn(self, x: str, key: str, *, stride: int = 1, groups: int = 1,
                activate: bool = True) -> str:
        weight, bias = fold_batch_norm(self.state_dict, key, self.config.bn_eps)
        y = self.conv(x, key, weight, bias, stride=stride, groups=groups)
        return self.activation(y, key) if activate else y

    def squeeze_excitation(self, x: str, key: str) -> str:
        side = self.side
        pooled = self.node("GlobalAveragePool", [x], key)
        h = self.conv(pooled, f"{key}.fc1", self.state_dict[f"{key}.fc1.weight"],
                      self.state_dict[f"{key}.fc1.bias"])
        h = self.conv(self.activation(h, f"{key}.fc1"), f"{key}.fc2",
                      self.state_dict[f"{key}.fc2.weight"], self.state_dict[f"{key}.fc2.bias"])
        self.side = side
        return self.node("Mul", [self.node("Sigmoid", [h], key), x], key)

    def block(self, x: str, key: str, block: Any) -> str:
        layer = 0
        h = x
        if block.expanded_channels != block.in_channels:
            h = self.conv_bn(h, f"{key}.block.{layer}")
            layer += 1
        h = self.conv_bn(h, f"{key}.block.{layer}", stride=block.stride,
                         groups=block.expanded_channels)
        layer += 1
        if self.config.squeeze_excitation:
            h = self.squeeze_excitation(h, f"{key}.block.{layer}")
            layer += 1
        h = self.conv_bn(h, f"{key}.block.{layer}", activate=False)
        return self.node("Add", [h, x], key) if block.has_residual else h

    def features(self, x: str) -> str:
        x = self.conv_bn(x, f"{_PREFIX}.0", stride=2)
        for stage, blocks in enumerate(self.config.blocks(), start=1):
            for index, block in enumerate(blocks):
                x = self.block(x, f"{_PREFIX}.{stage}.{index}", block)
        return self.conv_bn(x, f"{_PREFIX}.{self.config.head_index}")

    def head(self, x: str, map_size: int) -> tuple[str, str]:
        """features [B, C, h, w] -> (score [B, 1], map [B, 8, map_size, map_size])."""
        sd = self.state_dict
        x = self.node("ConvTranspose", [x, self.constant("conv_transpose.weight",
                                                         sd["conv_transpose.weight"]),
                                        self.constant("conv_transpose.bias",
                                                      sd["conv_transpose.bias"])],
                      "conv_transpose", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                      output_padding=[1, 1], group=1, dilations=[1, 1])
        x = self.node("Relu", [x], "conv_transpose")
        indices = self.constant("map.nearest_indices",
                                nearest_source_indices(2 * self.side, map_size))
        x = self.node("Gather", [x, indices], "map_rows", axis=2)
        quality_map = self.node("Gather", [x, indices], "map_cols", OUTPUT_NAMES[1], axis=3)
        h = self.node("Flatten", [quality_map], "flatten", axis=1)
        for layer in ("fc1", "fc2", "fc3"):
            h = self.node("Gemm", [h, self.constant(f"{layer}.weight", sd[f"{layer}.weight"]),
                                   self.constant(f"{layer}.bias", sd[f"{layer}.bias"])],
                          layer, OUTPUT_NAMES[0] if layer == "fc3" else None, transB=1)
            if layer != "fc3":
                h = self.node("Relu", [h], layer)
        return h, quality_map


def fold_batch_norm(state_dict: Mapping[str, Array], key: str, eps: float
                    ) -> tuple[Array, Array]:
    """Conv `{key}.0` + BatchNorm `{key}.1` (eval) -> float32 (weight [O, I, k, k], bias [O]),
    computed in float64 so the fold adds one float32 rounding per value."""
    weight = np.asarray(state_dict[f"{key}.0.weight"], np.float64)
    beta, mean = (np.asarray(state_dict[f"{key}.1.{leaf}"], np.float64)
                  for leaf in ("bias", "running_mean"))
    factor = batch_norm_factor(state_dict[f"{key}.1.weight"], state_dict[f"{key}.1.running_var"],
                               eps)
    return ((weight * factor[:, None, None, None]).astype(np.float32),
            (beta - mean * factor).astype(np.float32))


def _metadata(model_bundle: bundle_lib.Bundle, side: int, mos_scale: float,
              score_range: tuple[float, float]) -> dict[str, str]:
    entries = {
        "format": FORMAT,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, side, side], "dtype": "float32",
                  "layout": "NCHW", "channel_order": "RGB", "value_range": [0.0, 1.0],
                  "normalization": "none"},
        "preprocessing": (f"decode to RGB, resize the whole image to {side}x{side} with PIL "
                          f"bilinear (antialiased; torchvision Resize(({side}, {side})) on a PIL "
                          f"image), scale to [0, 1] (ToTensor), no mean/std"),
        "outputs": {"score": "[batch, 1] head output = MOS / mos_scale",
                    "map": "[batch, 8, 64, 64] quality map, NCHW"},
        "mos_scale": mos_scale, "score_range": list(score_range), "lower_better": False,
        "model_config": model_bundle.model_config,
    }
    return {METADATA_PREFIX + key: json.dumps(value) if not isinstance(value, str) else value
            for key, value in entries.items()}


def student_onnx_model(model_bundle: bundle_lib.Bundle, *, batch_size: int | None = None,
                       mos_scale: float | None = None) -> Any:
    """The bundle's student as an `onnx.ModelProto` (see the module docstring).

    Args:
      model_bundle: a student bundle (any EfficientNet B0-B7 or Lite0-2 backbone).
      batch_size: None for a dynamic batch axis, else a fixed batch.
      mos_scale: override of the bundle's `mos_scale` (written into the metadata).

    Raises:
      ValueError: for a teacher, or a model that does not record its MOS scale.
    """
    onnx = _onnx()
    if model_bundle.kind != "student":
        raise ValueError(f"ONNX export covers the student only, this is a {model_bundle.kind} "
                         f"(export it with --format jax-export, safetensors or official)")
    config = bundle_lib.model_config_from_dict("student", model_bundle.model_config)
    scale = scorer.ScoreScale.from_metadata(model_bundle.metadata, mos_scale, "the bundle")
    side = int(model_bundle.metadata.get("image_size", DEFAULT_IMAGE_SIZE))
    state_dict = student_flax_to_official(model_bundle.variables)
    writer = _GraphWriter(state_dict, efficientnet_config(config.backbone), side)
    writer.head(writer.features(INPUT_NAME), config.map_size)
    batch: Any = "batch" if batch_size is None else batch_size
    float32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        writer.nodes, "dpiqa_student",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, float32, [batch, 3, side, side])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAMES[0], float32, [batch, 1]),
         onnx.helper.make_tensor_value_info(
             OUTPUT_NAMES[1], float32,
             [batch, config.map_channels, config.map_size, config.map_size])],
        writer.initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="dpiqa_jax",
                                   doc_string="DP-IQA student (EfficientNet "
                                              f"{config.backbone}), exported by dpiqa_jax")
    onnx.helper.set_model_props(model, _metadata(model_bundle, side, scale.mos_scale,
                                                 scale.score_range))
    onnx.checker.check_model(model)
    return model


def export_onnx(model_bundle: bundle_lib.Bundle, path: str, *, batch_size: int | None = None,
                mos_scale: float | None = None, dtype: Any = "float32") -> None:
    """Writes `student_onnx_model(...)` to `path` (float32 only; one file, no external data)."""
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"ONNX export writes float32 only, got dtype {np.dtype(dtype)}")
    model = student_onnx_model(model_bundle, batch_size=batch_size, mos_scale=mos_scale)
    data = model.SerializeToString()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
