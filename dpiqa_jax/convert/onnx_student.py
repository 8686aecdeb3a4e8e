"""An ONNX student graph (the authors' published `student_model.onnx`, or our own export) -> our
student bundle, read with the `onnx` package alone (no code runs, no onnxruntime needed).

The graph is walked from its input along our `Student`'s structure, node by node: stem conv,
every MBConv block (expansion, depthwise, squeeze-excitation, projection, residual Add), head conv,
the authors' flatten + view back to [B, C, h, w] (optional), ConvTranspose, ReLU, nearest resize
to the map (a `Resize`, or the two static `Gather`s of our own export), flatten and the three
Gemm layers. Each conv's attributes (kernel, stride, padding, groups) and weight shapes are checked
against the EfficientNet variant; the first node that does not fit is named in the error, and a
node the walk never reached is an error too.

torch's exporter in eval mode folds every BatchNorm into the convolution before it (weight scaled,
a new bias). The folded weight and bias are carried exactly: the conv gets the folded weight and
its BatchNorm becomes an exact identity (scale 1, mean 0, a variance v with fl32(v + eps) = 1, so
rsqrt gives exactly 1) whose bias is the folded bias. An unfolded `BatchNormalization` node is
carried as it is. Two spellings of the same function are accepted as well: a `Pad` that adds
zeros to height and width before a conv (folded into the conv's pads; its amounts may come from a
small constant computation, as torch writes `F.pad`), and a nearest `Resize` given by `scales`
whose factor turns the feature side into a whole map side exactly (instead of `sizes`).
The result is an authors'-layout state dict, mapped onto `Student` by the strict
converter of `dpiqa_jax.convert.efficientnet`.

The file is hostile until checked: its size is bounded before parsing, external-data files must
lie inside the model's folder and hold the bytes they claim, every tensor's size is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax.bundle import MOS_SCALE
from dpiqa_jax.convert.efficientnet import student_official_to_flax
from dpiqa_jax.models.efficientnet import efficientnet_config
from dpiqa_jax.models.fold import identity_variance
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.primitives.resize import nearest_source_indices

Array = np.ndarray

# A protobuf message cannot exceed 2 GiB; a B7 student is about 325 MB.
MAX_ONNX_BYTES = 2**31 - 1
# External-data tensors together: several times the largest student we know.
MAX_EXTERNAL_BYTES = 4 * 2**30
MAX_TENSOR_ELEMENTS = 2**30
ONNX_FORMAT = "onnx-student"
METADATA_PREFIX = "dpiqa_jax."
# The first byte of a ModelProto written by onnx/torch: field 1 (ir_version), varint.
_ONNX_FIRST_BYTE = 0x08
_BATCH = "B"
# The ops (and size) of the constant computations a Pad's amounts may come from.
_CONSTANT_OPS = ("ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast")
_SMALL_CONSTANT_ELEMENTS = 64
_CANDIDATE_BACKBONES = tuple(f"b{i}" for i in range(8)) + ("lite0", "lite1", "lite2")
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Cast", "Squeeze", "Constant",
              "Identity")


class OnnxStudentError(ValueError):
    """The ONNX file cannot be read as a student; the message names the file and the problem."""


def _onnx():
    # onnx is an optional dependency: only ONNX files need it.
    try:
        import onnx  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError("reading an ONNX file needs the onnx package (pip install onnx)") from err
    return onnx


# --------------------------------------------------------------------------- reading the file


def looks_like_onnx(path: str) -> bool:
    """Whether the file starts as an ONNX ModelProto does (not a zip, pickle or safetensors)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    # A safetensors file whose header length happens to start with the same byte has its JSON
    # header at byte 8.
    safetensors = len(head) == 9 and head[8:9] == b"{"
    return len(head) >= 2 and head[0] == _ONNX_FIRST_BYTE and not safetensors


def _external_location(tensor, base_dir: str, source: str) -> tuple[str, int, int | None]:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if not location or os.path.isabs(location) or os.path.normpath(location).startswith(".."):
        raise OnnxStudentError(f"{source}: tensor {tensor.name!r} points at external data "
                               f"{location!r}, outside the model's folder")
    full = os.path.realpath(os.path.join(base_dir, location))
    if os.path.commonpath([full, os.path.realpath(base_dir)]) != os.path.realpath(base_dir):
        raise OnnxStudentError(f"{source}: tensor {tensor.name!r}: external data {location!r} "
                               f"resolves outside the model's folder")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError as err:
        raise OnnxStudentError(f"{source}: tensor {tensor.name!r}: bad external-data offset or "
                               f"length ({err})") from err
    return full, offset, length


def _expected_nbytes(tensor, source: str) -> int:
    onnx = _onnx()
    count = int(np.prod([int(d) for d in tensor.dims], dtype=np.int64)) if tensor.dims else 1
    if any(int(d) < 0 for d in tensor.dims) or count > MAX_TENSOR_ELEMENTS:
        raise OnnxStudentError(f"{source}: tensor {tensor.name!r} has dims {list(tensor.dims)}")
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return count * itemsize


def _all_tensors(graph) -> list:
    """Initializers and tensor-valued attributes of the graph and its subgraphs."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            tensors.extend(([attribute.t] if attribute.HasField("t") else []) +
                           list(attribute.tensors))
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + \
                    list(attribute.graphs):
                tensors.extend(_all_tensors(subgraph))
    return tensors


def _load_external_data(model, base_dir: str, source: str) -> None:
    """Reads every external tensor's bytes into it, after checking place and size."""
    onnx = _onnx()
    total = 0
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        path, offset, length = _external_location(tensor, base_dir, source)
        expected = _expected_nbytes(tensor, source)
        if length is not None and length != expected:
            raise OnnxStudentError(f"{source}: tensor {tensor.name!r} claims {length} bytes of "
                                   f"external data, its dims need {expected}")
        total += expected
        if total > MAX_EXTERNAL_BYTES:
            raise OnnxStudentError(f"{source}: external data exceeds {MAX_EXTERNAL_BYTES} bytes")
        if not os.path.isfile(path) or offset < 0 or offset + expected > os.path.getsize(path):
            raise OnnxStudentError(f"{source}: tensor {tensor.name!r}: external file "
                                   f"{os.path.basename(path)!r} is missing or too short")
        with open(path, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(expected)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def load_onnx_model(path: str):
    """Parses an ONNX file with size checks; external data only from the model's folder.

    Raises:
      OnnxStudentError: naming the file and what is wrong.
    """
    onnx = _onnx()
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"ONNX file not found: {source}")
    size = os.path.getsize(source)
    if size > MAX_ONNX_BYTES:
        raise OnnxStudentError(f"{source}: {size} bytes, more than an ONNX protobuf may hold")
    try:
        model = onnx.load(source, load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError types for corrupt files
        raise OnnxStudentError(f"{source}: not a readable ONNX model ({err})") from err
    if not model.graph.node:
        raise OnnxStudentError(f"{source}: not an ONNX model (no graph nodes)")
    _load_external_data(model, os.path.dirname(os.path.abspath(source)), source)
    return model


# --------------------------------------------------------------------------- the graph walker


@dataclasses.dataclass
class _Walk:
    """The graph's nodes indexed for the walk, what has been matched, and the state dict built."""

    model: Any
    source: str
    nodes: list = dataclasses.field(default_factory=list)
    consumers: dict = dataclasses.field(default_factory=dict)
    producer: dict = dataclasses.field(default_factory=dict)
    initializers: dict = dataclasses.field(default_factory=dict)
    matched: set = dataclasses.field(default_factory=set)
    state_dict: dict = dataclasses.field(default_factory=dict)
    folded: bool = False

    def __post_init__(self):
        self.nodes = list(self.model.graph.node)
        for index, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(index)
            for name in node.output:
                self.producer[name] = index
        self.initializers = {t.name: t for t in self.model.graph.initializer}

    def describe(self, index: int) -> str:
        node = self.nodes[index]
        return f"node #{index} {node.name or '<unnamed>'!r} ({node.op_type})"

    def fail(self, message: str) -> OnnxStudentError:
        return OnnxStudentError(f"{self.source}: {message}")

    def take(self, tensor: str, op_type: str, what: str) -> Any:
        """The not yet matched node of `op_type` that reads `tensor`; marks it matched."""
        waiting = [i for i in self.consumers.get(tensor, ()) if i not in self.matched]
        for index in waiting:
            if self.nodes[index].op_type == op_type:
                self.matched.add(index)
                return self.nodes[index]
        if waiting:
            raise self.fail(f"{self.describe(waiting[0])} does not fit the student: expected "
                            f"{what} ({op_type}) reading {tensor!r}")
        after = (self.describe(self.producer[tensor]) if tensor in self.producer
                 else f"input {tensor!r}")
        raise self.fail(f"after {after}: no {op_type} node reads {tensor!r}, expected {what}")

    def has_consumer(self, tensor: str, op_type: str) -> bool:
        return any(self.nodes[i].op_type == op_type
                   for i in self.consumers.get(tensor, ()) if i not in self.matched)

    def constant(self, name: str, node: Any, what: str) -> Array:
        """A constant input: an initializer, a Constant node's value, or Identity of either."""
        if name in self.initializers:
            return self._to_array(self.initializers[name], node, what)
        index = self.producer.get(name)
        if index is None:
            raise self.fail(f"{node.op_type} node {node.name!r}: {what} {name!r} is not a "
                            f"constant")
        producer = self.nodes[index]
        self.matched.add(index)
        if producer.op_type == "Identity":
            return self.constant(producer.input[0], node, what)
        if producer.op_type == "Constant" and len(producer.attribute) == 1 and \
                producer.attribute[0].name == "value":
            return self._to_array(producer.attribute[0].t, node, what)
        raise self.fail(f"{self.describe(index)} does not fit the student: expected a constant "
                        f"{what} for {node.op_type} node {node.name!r}")

    def _to_array(self, tensor: Any, node: Any, what: str) -> Array:
        onnx = _onnx()
        expected = _expected_nbytes(tensor, self.source)
        if tensor.HasField("raw_data") and len(tensor.raw_data) != expected:
            raise self.fail(f"{what} of node {node.name!r}: tensor {tensor.name!r} holds "
                            f"{len(tensor.raw_data)} bytes, its dims need {expected}")
        try:
            return onnx.numpy_helper.to_array(tensor)
        except (ValueError, TypeError) as err:
            raise self.fail(f"{what} of node {node.name!r}: unreadable tensor ({err})") from err

    def attrs(self, node: Any) -> dict[str, Any]:
        onnx = _onnx()
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _as_text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- symbolic shapes


def _evaluate_shape(walk: _Walk, tensor: str, shapes: dict[str, list]) -> list:
    """Evaluates a small shape computation (Shape, Gather, Unsqueeze, Slice, Concat, ...) to a list
    of ints and the batch symbol; `shapes` gives the shapes of the data tensors it reads."""
    if tensor in walk.initializers:
        return [int(v) for v in np.ravel(walk.constant(tensor, walk.nodes[0], "shape"))]
    index = walk.producer.get(tensor)
    if index is None:
        raise walk.fail(f"shape tensor {tensor!r} has no producer")
    node = walk.nodes[index]
    if node.op_type not in _SHAPE_OPS:
        raise walk.fail(f"{walk.describe(index)} does not fit the student: expected a shape "
                        f"computation")
    walk.matched.add(index)
    attrs = walk.attrs(node)
    if node.op_type == "Shape":
        if node.input[0] not in shapes:
            raise walk.fail(f"{walk.describe(index)} reads the shape of an unexpected tensor")
        full = shapes[node.input[0]]
        return list(full[attrs.get("start", 0):attrs.get("end", len(full))])
    if node.op_type == "Constant":
        return [int(v) for v in np.ravel(walk.constant(node.output[0], node, "value"))]
    inputs = [_evaluate_shape(walk, name, shapes) if name else None for name in node.input]
    if node.op_type in ("Identity", "Cast", "Unsqueeze", "Squeeze"):
        return inputs[0]
    if node.op_type == "Concat":
        return [v for part in inputs for v in part]
    if node.op_type == "Gather":
        return [inputs[0][int(i)] for i in inputs[1]]
    starts, ends = inputs[1][0], inputs[2][0]
    steps = inputs[4][0] if len(inputs) > 4 and inputs[4] else 1
    return inputs[0][slice(starts, ends, steps)]


def _small_constant(walk: _Walk, tensor: str, reader: Any, what: str) -> Array:
    """The value of a small constant computation (torch writes a Pad's amounts as Constant ->
    ConstantOfShape / Concat / Reshape / Slice / Transpose / Cast): numpy evaluation of at most
    `_SMALL_CONSTANT_ELEMENTS` values per tensor, nothing else runs."""
    index = walk.producer.get(tensor)
    if tensor in walk.initializers or index is None or \
            walk.nodes[index].op_type in ("Constant", "Identity"):
        value = np.asarray(walk.constant(tensor, reader, what))
    else:
        node = walk.nodes[index]
        if node.op_type not in _CONSTANT_OPS:
            raise walk.fail(f"{walk.describe(index)} does not fit the student: expected a small "
                            f"constant computation of the {what} of {reader.op_type} node "
                            f"{reader.name!r}")
        walk.matched.add(index)
        inputs = [_small_constant(walk, name, node, what) if name else None
                  for name in node.input]
        value = _apply_constant_op(walk, node, inputs)
    if value.size > _SMALL_CONSTANT_ELEMENTS:
        raise walk.fail(f"the {what} of {reader.op_type} node {reader.name!r} has {value.size} "
                        f"values, more than a small constant")
    return value


def _apply_constant_op(walk: _Walk, node: Any, inputs: list) -> Array:
    attrs = walk.attrs(node)
    if node.op_type == "ConstantOfShape":
        shape = [int(v) for v in np.ravel(inputs[0])]
        if any(v < 0 for v in shape) or int(np.prod(shape)) > _SMALL_CONSTANT_ELEMENTS:
            raise walk.fail(f"{node.op_type} node {node.name!r}: shape {shape} is not small")
        fill = attrs.get("value")
        fill = np.zeros(1, np.float32) if fill is None else _onnx().numpy_helper.to_array(fill)
        return np.full(shape, np.ravel(fill)[0], fill.dtype)
    if node.op_type == "Concat":
        return np.concatenate(inputs, axis=attrs.get("axis", 0))
    if node.op_type == "Reshape":
        target = [int(v) for v in np.ravel(inputs[1])]
        if attrs.get("allowzero", 0) or 0 in target:
            raise walk.fail(f"Reshape node {node.name!r}: reshape to {target} with zeros")
        return inputs[0].reshape(target)
    if node.op_type == "Transpose":
        return np.transpose(inputs[0], attrs.get("perm"))
    if node.op_type == "Cast":
        target = _onnx().helper.tensor_dtype_to_np_dtype(attrs.get("to", 1))
        return inputs[0].astype(target)
    data, starts, ends = inputs[0], np.ravel(inputs[1]), np.ravel(inputs[2])  # Slice
    axes = range(len(starts)) if len(inputs) < 4 or inputs[3] is None else np.ravel(inputs[3])
    steps = [1] * len(starts) if len(inputs) < 5 or inputs[4] is None else np.ravel(inputs[4])
    window = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if int(step) == 0:
            raise walk.fail(f"Slice node {node.name!r} has a zero step")
        window[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(window)]


# --------------------------------------------------------------------------- backbone


def _conv_count(config) -> int:
    per_block = 3 + (2 if config.squeeze_excitation else 0)
    expansions = sum(1 for blocks in config.blocks() for b in blocks
                     if b.expanded_channels == b.in_channels)
    return 2 + sum(len(blocks) for blocks in config.blocks()) * per_block - expansions


def _infer_backbone(walk: _Walk, input_name: str) -> str:
    """The EfficientNet variant whose stem width, head width and conv count the graph has."""
    convs = [n for n in walk.nodes if n.op_type == "Conv"]
    stem_inputs = {input_name} | {n.output[0] for n in walk.nodes
                                  if n.op_type == "Pad" and n.input[0] == input_name}
    stems = [n for n in convs if n.input[0] in stem_inputs]
    transposes = [n for n in walk.nodes if n.op_type == "ConvTranspose"]
    if len(stems) != 1 or len(transposes) != 1:
        raise walk.fail(f"not a DP-IQA student graph: {len(stems)} Conv nodes read the input and "
                        f"{len(transposes)} ConvTranspose nodes exist (expected 1 and 1)")
    stem = walk.constant(stems[0].input[1], stems[0], "weight").shape[0]
    head = walk.constant(transposes[0].input[1], transposes[0], "weight").shape[0]
    walk.matched.clear()
    signature = (stem, head, len(convs))
    matches = []
    for name in _CANDIDATE_BACKBONES:
        config = efficientnet_config(name)
        if (config.stem_channels, config.head_channels, _conv_count(config)) == signature:
            matches.append(name)
    if len(matches) != 1:
        raise walk.fail(f"cannot tell the EfficientNet variant (stem {stem} channels, head {head} "
                        f"channels, {len(convs)} Conv nodes; matching: {matches or 'none'})")
    return matches[0]


# --------------------------------------------------------------------------- matching layers


@dataclasses.dataclass
class _Student:
    """What the walk has reached: the tensor, its spatial side, and the backbone config."""

    walk: _Walk
    config: Any
    side: int

    def activation(self, x: str, what: str) -> str:
        walk = self.walk
        if self.config.activation == "silu":
            sigmoid = walk.take(x, "Sigmoid", f"{what} SiLU")
            return self.multiply(x, sigmoid.output[0], f"{what} SiLU")
        clip = walk.take(x, "Clip", f"{what} ReLU6")
        bounds = [float(walk.constant(name, clip, "bound")) for name in clip.input[1:3]]
        if bounds != [0.0, 6.0]:
            raise walk.fail(f"Clip node {clip.name!r}: bounds {bounds}, expected ReLU6 [0, 6]")
        return clip.output[0]

    def multiply(self, x: str, other: str, what: str) -> str:
        node = self.walk.take(x, "Mul", what)
        if sorted(node.input) != sorted([x, other]):
            raise self.walk.fail(f"Mul node {node.name!r} multiplies {list(node.input)}, "
                                 f"expected {what} of {x!r} and {other!r}")
        return node.output[0]

    def _padding(self, kernel: int, stride: int) -> list[int]:
        """ONNX pads [top, left, bottom, right] of our conv at the current side."""
        if self.config.padding == "symmetric":
            pad = (kernel - 1) // 2
            return [pad] * 4
        total = max((-(-self.side // stride) - 1) * stride + kernel - self.side, 0)
        return [total // 2, total // 2, total - total // 2, total - total // 2]

    def conv(self, x: str, key: str, out: int, kernel: int, *, stride: int = 1,
             groups: int = 1, bias_only: bool = False) -> str:
        """A Conv (+ folded or explicit BatchNorm). `key` is its torch module (`features.0`):
        weight at `{key}.0`, BatchNorm at `{key}.1`; with `bias_only` (SE) weight and bias at
        `{key}`."""
        walk = self.walk
        x, padded = _zero_padding(walk, x)
        node = walk.take(x, "Conv", f"{key} ({kernel}x{kernel} conv)")
        attrs = walk.attrs(node)
        expected = {"kernel_shape": [kernel, kernel], "strides": [stride, stride],
                    "dilations": [1, 1], "group": groups, "pads": self._padding(kernel, stride)}
        own_pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        found = {"kernel_shape": list(attrs.get("kernel_shape", [])),
                 "strides": list(attrs.get("strides", [1, 1])),
                 "dilations": list(attrs.get("dilations", [1, 1])),
                 "group": attrs.get("group", 1),
                 "pads": [a + b for a, b in zip(own_pads, padded)] if len(own_pads) == 4
                 else own_pads}
        if found != expected or _as_text(attrs.get("auto_pad", "NOTSET")) != "NOTSET":
            raise walk.fail(f"{walk.describe(walk.nodes.index(node))} does not fit {key}: "
                            f"attributes {found}, expected {expected}")
        weight = walk.constant(node.input[1], node, "weight")
        bias = walk.constant(node.input[2], node, "bias") if len(node.input) > 2 and \
            node.input[2] else None
        if weight.ndim != 4 or weight.shape[0] != out:
            raise walk.fail(f"Conv node {node.name!r} ({key}): weight {weight.shape}, expected "
                            f"{out} output channels")
        self.side = (self.side + sum(expected["pads"][::2]) - kernel) // stride + 1
        y = node.output[0]
        if bias_only:
            self._put(key, weight=weight, bias=_zeros_if_none(bias, out))
            return y
        self._put(f"{key}.0", weight=weight)
        if walk.has_consumer(y, "BatchNormalization"):
            return self._batch_norm(y, f"{key}.1", bias)
        walk.folded = True
        self._put(f"{key}.1", **_identity_batch_norm(_zeros_if_none(bias, out),
                                                     self.config.bn_eps))
        return y

    def _batch_norm(self, x: str, key: str, conv_bias: Array | None) -> str:
        walk = self.walk
        node = walk.take(x, "BatchNormalization", key)
        if conv_bias is not None and np.any(conv_bias):
            raise walk.fail(f"Conv before {node.name!r} has a bias and a BatchNormalization; "
                            f"our convs have no bias")
        eps = float(walk.attrs(node).get("epsilon", 1e-5))
        if np.float32(eps) != np.float32(self.config.bn_eps) or len(node.output) != 1:
            raise walk.fail(f"BatchNormalization node {node.name!r} ({key}): epsilon {eps} and "
                            f"{len(node.output)} outputs; expected {self.config.bn_eps}, 1 output")
        scale, bias, mean, var = (walk.constant(name, node, what) for name, what in zip(
            node.input[1:5], ("scale", "bias", "mean", "var")))
        self._put(key, weight=scale, bias=bias, running_mean=mean, running_var=var)
        return node.output[0]

    def _put(self, key: str, **tensors: Array) -> None:
        for leaf, value in tensors.items():
            self.walk.state_dict[f"{key}.{leaf}"] = np.asarray(value, np.float32)

    def conv_bn_act(self, x: str, key: str, out: int, kernel: int, **kw: Any) -> str:
        return self.activation(self.conv(x, key, out, kernel, **kw), key)

    def squeeze_excitation(self, x: str, key: str, channels: int, squeeze: int) -> str:
        pooled = self.walk.take(x, "GlobalAveragePool", f"{key} squeeze-excitation").output[0]
        side = self.side
        h = self.activation(self.conv(pooled, f"{key}.fc1", squeeze, 1, bias_only=True), key)
        h = self.conv(h, f"{key}.fc2", channels, 1, bias_only=True)
        self.side = side
        gate = self.walk.take(h, "Sigmoid", f"{key} gate").output[0]
        return self.multiply(gate, x, f"{key} scale")

    def block(self, x: str, key: str, block: Any) -> str:
        expanded = block.expanded_channels
        layer = 0
        h = x
        if expanded != block.in_channels:
            h = self.conv_bn_act(h, f"{key}.block.{layer}", expanded, 1)
            layer += 1
        h = self.conv_bn_act(h, f"{key}.block.{layer}", expanded, block.kernel_size,
                             stride=block.stride, groups=expanded)
        layer += 1
        if self.config.squeeze_excitation:
            h = self.squeeze_excitation(h, f"{key}.block.{layer}", expanded,
                                        max(1, block.in_channels // 4))
            layer += 1
        h = self.conv(h, f"{key}.block.{layer}", block.out_channels, 1)
        if not block.has_residual:
            return h
        add = self.walk.take(h, "Add", f"{key} residual")
        if sorted(add.input) != sorted([h, x]):
            raise self.walk.fail(f"Add node {add.name!r} adds {list(add.input)}, expected the "
                                 f"residual of {key}")
        return add.output[0]

    def features(self, x: str) -> str:
        config = self.config
        prefix = "base_model.features"
        x = self.conv_bn_act(x, f"{prefix}.0", config.stem_channels, 3, stride=2)
        for stage, blocks in enumerate(config.blocks(), start=1):
            for index, block in enumerate(blocks):
                x = self.block(x, f"{prefix}.{stage}.{index}", block)
        return self.conv_bn_act(x, f"{prefix}.{config.head_index}", config.head_channels, 1)


def _zero_padding(walk: _Walk, x: str) -> tuple[str, list[int]]:
    """A Pad reading `x` that adds zeros to height and width only (torch's `F.pad` or
    `ZeroPad2d` before a conv without padding): its output and its [top, left, bottom, right],
    which the conv that follows adds to its own pads (the same sum, exactly). No Pad: (x, 0s)."""
    if not walk.has_consumer(x, "Pad"):
        return x, [0, 0, 0, 0]
    node = walk.take(x, "Pad", "zero padding before a conv")
    attrs = walk.attrs(node)
    mode = _as_text(attrs.get("mode", "constant"))
    inputs = list(node.input) + [""] * (4 - len(node.input))
    pads = ([int(v) for v in np.ravel(_small_constant(walk, inputs[1], node, "pads"))]
            if inputs[1] else [int(v) for v in attrs.get("pads", [])])
    value = (_small_constant(walk, inputs[2], node, "constant value") if inputs[2]
             else np.float32(attrs.get("value", 0.0)))
    spatial = pads[2:4] + pads[6:8] if len(pads) == 8 else []
    if mode != "constant" or inputs[3] or np.any(np.asarray(value) != 0) or len(pads) != 8 or \
            pads[0:2] + pads[4:6] != [0, 0, 0, 0] or min(pads) < 0:
        raise walk.fail(f"Pad node {node.name!r}: mode {mode!r}, pads {pads}, value "
                        f"{np.ravel(value).tolist()}{', axes' if inputs[3] else ''}; expected "
                        f"zeros added to height and width only, folded into the next Conv")
    return node.output[0], spatial


def _zeros_if_none(bias: Array | None, channels: int) -> Array:
    return np.zeros((channels,), np.float32) if bias is None else bias


def _identity_batch_norm(bias: Array, eps: float) -> dict[str, Array]:
    channels = bias.shape[0]
    return {"weight": np.ones((channels,), np.float32), "bias": bias,
            "running_mean": np.zeros((channels,), np.float32),
            "running_var": np.full((channels,), identity_variance(eps), np.float32)}


# --------------------------------------------------------------------------- the head


def _input_side(walk: _Walk) -> tuple[str, int]:
    inputs = [i for i in walk.model.graph.input if i.name not in walk.initializers]
    if len(inputs) != 1:
        raise walk.fail(f"expected one graph input (images), found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(values) != 4 or values[1] != 3 or values[2] is None or values[2] != values[3]:
        raise walk.fail(f"input {inputs[0].name!r} has shape {values}; expected [batch, 3, S, S] "
                        f"with a fixed square side S")
    if inputs[0].type.tensor_type.elem_type != _onnx().TensorProto.FLOAT:
        raise walk.fail(f"input {inputs[0].name!r} is not float32")
    return inputs[0].name, values[2]


def _unflatten_features(student: _Student, x: str, channels: int) -> str:
    """The authors' `features -> flatten -> view(B, C, h, w)`; absent in our export."""
    walk = student.walk
    if not walk.has_consumer(x, "Flatten"):
        return x
    flatten = walk.take(x, "Flatten", "the backbone's flatten")
    if walk.attrs(flatten).get("axis", 1) != 1:
        raise walk.fail(f"Flatten node {flatten.name!r} does not flatten from axis 1")
    flat = flatten.output[0]
    reshape = walk.take(flat, "Reshape", "the view back to [B, C, h, w]")
    side = student.side
    shapes = {flat: [_BATCH, channels * side * side]}
    target = _evaluate_shape(walk, reshape.input[1], shapes)
    if target not in ([_BATCH, channels, side, side], [-1, channels, side, side]):
        raise walk.fail(f"Reshape node {reshape.name!r} reshapes to {target}, expected "
                        f"[batch, {channels}, {side}, {side}]")
    return reshape.output[0]


def _nearest_resize(student: _Student, x: str, channels: int) -> tuple[str, int]:
    """torch's nearest `interpolate` (a Resize) or our export's two static Gathers."""
    walk = student.walk
    if walk.has_consumer(x, "Gather"):
        rows = walk.take(x, "Gather", "the nearest resize (rows)")
        cols = walk.take(rows.output[0], "Gather", "the nearest resize (columns)")
        taken = []
        for node, axis in ((rows, 2), (cols, 3)):
            indices = walk.constant(node.input[1], node, "indices")
            if walk.attrs(node).get("axis", 0) != axis or indices.ndim != 1:
                raise walk.fail(f"Gather node {node.name!r} is not a nearest resize along axis "
                                f"{axis}")
            taken.append(indices)
        size = len(taken[0])
        if any(not np.array_equal(t, nearest_source_indices(student.side, size)) for t in taken):
            raise walk.fail(f"Gather nodes {rows.name!r}, {cols.name!r} do not pick torch's "
                            f"nearest rows and columns for {student.side} -> {size}")
        return cols.output[0], size
    resize = walk.take(x, "Resize", "the nearest resize to the map size")
    attrs = {k: _as_text(v) for k, v in walk.attrs(resize).items()}
    expected = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor"}
    inputs = list(resize.input) + [""] * (4 - len(resize.input))
    if any(attrs.get(k) != v for k, v in expected.items()) or attrs.get("antialias", 0) or \
            attrs.get("exclude_outside", 0) or len(resize.input) > 4 or \
            bool(inputs[2]) == bool(inputs[3]):
        raise walk.fail(f"Resize node {resize.name!r} has {attrs} and inputs "
                        f"{list(resize.input)}; expected torch's nearest interpolate {expected} "
                        f"with either a sizes or a scales input")
    if inputs[3]:
        size, scale = _resize_sizes(walk, resize, x, channels, student.side), None
    else:
        size, scale = _resize_scales(walk, resize, channels, student.side)
    if not np.array_equal(_onnx_nearest_indices(student.side, size, scale),
                          nearest_source_indices(student.side, size)):
        raise walk.fail(f"Resize node {resize.name!r}: for {student.side} -> {size} ONNX's "
                        f"nearest resize picks other pixels than torch's (our model's)")
    return resize.output[0], size


def _resize_sizes(walk: _Walk, resize: Any, x: str, channels: int, side: int) -> int:
    sizes = _evaluate_shape(walk, resize.input[3], {x: [_BATCH, channels, side, side]})
    if len(sizes) != 4 or sizes[:2] != [_BATCH, channels] or sizes[2] != sizes[3] or \
            not isinstance(sizes[2], int):
        raise walk.fail(f"Resize node {resize.name!r} resizes to {sizes}, expected "
                        f"[batch, {channels}, m, m]")
    return sizes[2]


def _resize_scales(walk: _Walk, resize: Any, channels: int, side: int) -> tuple[int, np.float32]:
    """The map side m of a Resize given by scales [1, 1, s, s]: s x side must be m exactly (ONNX
    floors the product, and a map side that depends on that rounding is refused)."""
    scales = np.ravel(_small_constant(walk, resize.input[2], resize, "scales"))
    scale = np.float32(scales[2]) if scales.size == 4 else np.float32(0)
    size = float(scale) * side
    if scales.size != 4 or list(scales[:2]) != [1, 1] or scales[3] != scales[2] or \
            size != int(size) or size < 1:
        raise walk.fail(f"Resize node {resize.name!r} scales [batch, {channels}, {side}, {side}] "
                        f"by {scales.tolist()}; expected [1, 1, s, s] with s x {side} a whole "
                        f"map side")
    return int(size), scale


def _onnx_nearest_indices(in_size: int, out_size: int, scale: np.float32 | None = None) -> Array:
    """ONNX Resize, nearest/asymmetric/floor, as onnxruntime computes it: scale = the scales
    input, or out / in in float32 for a sizes input; source = floor(dst / scale), clamped."""
    if scale is None:
        scale = np.float32(out_size) / np.float32(in_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) / scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _gemm(walk: _Walk, x: str, key: str, inputs: int | None = None) -> str:
    """A Linear `key` reading x; with `inputs`, its weight must read that many features."""
    node = walk.take(x, "Gemm", key)
    attrs = walk.attrs(node)
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        raise walk.fail(f"Gemm node {node.name!r} ({key}) has attributes {attrs}; expected a "
                        f"plain Linear")
    weight = walk.constant(node.input[1], node, "weight")
    if weight.ndim != 2 or len(node.input) < 3 or not node.input[2]:
        raise walk.fail(f"Gemm node {node.name!r} ({key}) is not a Linear with a bias")
    weight = np.asarray(weight if attrs.get("transB", 0) else weight.T, np.float32)
    if inputs is not None and weight.shape[1] != inputs:
        raise walk.fail(f"Gemm node {node.name!r} ({key}) reads {weight.shape[1]} features, the "
                        f"map before it has {inputs}")
    walk.state_dict[f"{key}.weight"] = weight
    walk.state_dict[f"{key}.bias"] = np.asarray(
        walk.constant(node.input[2], node, "bias"), np.float32).reshape(-1)
    return node.output[0]


def _relu(walk: _Walk, x: str, what: str) -> str:
    return walk.take(x, "Relu", what).output[0]


def _head(student: _Student, x: str) -> tuple[str, str, int]:
    """-> (score tensor, map tensor, map side)."""
    walk = student.walk
    channels = student.config.head_channels
    x = _unflatten_features(student, x, channels)
    node = walk.take(x, "ConvTranspose", "conv_transpose")
    attrs = walk.attrs(node)
    expected = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                "output_padding": [1, 1], "group": 1, "dilations": [1, 1]}
    found = {"kernel_shape": list(attrs.get("kernel_shape", [])),
             "strides": list(attrs.get("strides", [1, 1])),
             "pads": list(attrs.get("pads", [0, 0, 0, 0])),
             "output_padding": list(attrs.get("output_padding", [0, 0])),
             "group": attrs.get("group", 1), "dilations": list(attrs.get("dilations", [1, 1]))}
    if found != expected or "output_shape" in attrs:
        raise walk.fail(f"ConvTranspose node {node.name!r}: {found}, expected {expected}")
    weight = walk.constant(node.input[1], node, "weight")
    if len(node.input) < 3 or not node.input[2]:
        raise walk.fail(f"ConvTranspose node {node.name!r} has no bias")
    walk.state_dict["conv_transpose.weight"] = np.asarray(weight, np.float32)
    walk.state_dict["conv_transpose.bias"] = np.asarray(
        walk.constant(node.input[2], node, "bias"), np.float32)
    map_channels = weight.shape[1]
    student.side *= 2
    x = _relu(walk, node.output[0], "the map's ReLU")
    quality_map, map_size = _nearest_resize(student, x, map_channels)
    flatten = walk.take(quality_map, "Flatten", "the head's flatten")
    if walk.attrs(flatten).get("axis", 1) != 1:
        raise walk.fail(f"Flatten node {flatten.name!r} does not flatten from axis 1")
    h = _relu(walk, _gemm(walk, flatten.output[0], "fc1", map_channels * map_size ** 2),
              "fc1 ReLU")
    h = _relu(walk, _gemm(walk, h, "fc2"), "fc2 ReLU")
    return _gemm(walk, h, "fc3"), quality_map, map_size


# --------------------------------------------------------------------------- entry points


@dataclasses.dataclass(frozen=True)
class OnnxStudent:
    """An ONNX student read into the authors' state-dict layout.

    Attributes:
      state_dict: authors' torch keys -> float32 arrays (folded BatchNorms as identity + bias).
      config: the `StudentConfig`.
      image_size: the graph's fixed input side.
      folded_batch_norm: whether the BatchNorms were folded into the convolutions.
      metadata: the model's `metadata_props`.
    """

    state_dict: dict[str, Array]
    config: Any
    image_size: int
    folded_batch_norm: bool
    metadata: dict[str, str]


def read_onnx_student(path: str, *, backbone: str | None = None) -> OnnxStudent:
    """Reads and checks an ONNX student graph (see the module docstring).

    Args:
      path: the .onnx file (external data, if any, inside its folder).
      backbone: the EfficientNet variant; default inferred from the graph.

    Raises:
      OnnxStudentError: naming the file and the first node that does not fit.
    """
    source = os.fspath(path)
    walk = _Walk(load_onnx_model(source), source)
    input_name, image_size = _input_side(walk)
    name = backbone or _infer_backbone(walk, input_name)
    student = _Student(walk, efficientnet_config(name), image_size)
    score, quality_map, map_size = _head(student, student.features(input_name))
    outputs = [o.name for o in walk.model.graph.output]
    if outputs != [score, quality_map]:
        raise walk.fail(f"graph outputs {outputs}; expected the score {score!r} then the map "
                        f"{quality_map!r}")
    unmatched = [i for i in range(len(walk.nodes)) if i not in walk.matched]
    if unmatched:
        raise walk.fail(f"{walk.describe(unmatched[0])} is not part of the student "
                        f"({len(unmatched)} such nodes)")
    config = StudentConfig(backbone=name, map_size=map_size,
                           map_channels=walk.state_dict["conv_transpose.bias"].shape[0],
                           hidden=walk.state_dict["fc1.weight"].shape[0])
    metadata = {p.key: p.value for p in walk.model.metadata_props}
    return OnnxStudent(walk.state_dict, config, image_size, walk.folded, metadata)


def _mos_scale(student: OnnxStudent, source: str) -> float:
    """Our export records its MOS scale; the authors' file does not (their head: MOS / 100)."""
    text = student.metadata.get(METADATA_PREFIX + "mos_scale")
    if text is None:
        return MOS_SCALE
    try:
        scale = float(text)
    except ValueError as err:
        raise OnnxStudentError(f"{source}: metadata mos_scale {text!r} is not a number") from err
    if not np.isfinite(scale) or scale <= 0:
        raise OnnxStudentError(f"{source}: metadata mos_scale {scale} is not positive")
    return scale


def onnx_student_bundle(path: str, *, backbone: str | None = None) -> Any:
    """An ONNX student file as an in-memory student `Bundle` (see `read_onnx_student`)."""
    source = os.fspath(path)
    student = read_onnx_student(source, backbone=backbone)
    side = student.image_size
    target = jax.eval_shape(lambda: Student(student.config).init(
        jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False))
    variables = student_official_to_flax(student.state_dict, target, source=source)
    scale = _mos_scale(student, source)
    metadata = {"source": {"format": ONNX_FORMAT, "checkpoint": os.path.basename(source),
                           "sha256": bundle_lib.file_sha256(source)},
                "mos_scale": scale, "score_range": [0.0, scale], "image_size": side,
                "batch_norm": ("folded into the convolutions: identity BatchNorm + bias"
                               if student.folded_batch_norm else "as in the file")}
    return bundle_lib.Bundle("student", dataclasses.asdict(student.config), variables,
                             metadata=metadata)


def import_onnx_student(path: str, out_dir: str, *, backbone: str | None = None) -> str:
    """An ONNX student file -> a student bundle in `out_dir` (see `read_onnx_student`)."""
    model_bundle = onnx_student_bundle(path, backbone=backbone)
    return bundle_lib.save_bundle(out_dir, "student", model_bundle.model_config,
                                  model_bundle.variables, metadata=model_bundle.metadata)



def metadata_json(model: Any) -> dict[str, Any]:
    """Our export's `dpiqa_jax.*` metadata entries, JSON values decoded where they are JSON."""
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            try:
                out[prop.key[len(METADATA_PREFIX):]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key[len(METADATA_PREFIX):]] = prop.value
    return out

