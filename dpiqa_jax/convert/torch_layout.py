"""PyTorch state dicts <-> Flax variables: the one place where tensor layouts change.

Flax modules in this project mirror PyTorch attribute names, with a numeric component joined to
the one before it (`down_blocks.0.resnets.1.conv1.weight` <-> `down_blocks_0/resnets_1/conv1`).
The Flax target tree decides what a torch leaf becomes (a `weight` is a `kernel`, a `scale` or an
`embedding` depending on the module), so one mechanism serves every model we convert.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
from flax import traverse_util

from dpiqa_jax.convert import torch_pickle
from dpiqa_jax.convert.torch_pickle import CheckpointError

Array = np.ndarray
FlatPath = tuple[str, ...]

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_LIST_SHOWN = 20
# The safetensors library's own limit on the JSON header.
_SAFETENSORS_MAX_HEADER_BYTES = 100_000_000


class StateDictMismatchError(ValueError):
    """A state dict does not fit the model: lists the missing, unexpected and mis-shaped tensors."""


@dataclasses.dataclass(frozen=True)
class LayoutTransform:
    """A per-key layout change that the default rules do not cover (e.g. ConvTranspose weights)."""

    to_flax: Callable[[Array], Array]
    to_torch: Callable[[Array], Array]


def flax_path_for_torch_key(key: str) -> FlatPath:
    """`a.b.0.c.1.2.weight` -> ('a', 'b_0', 'c_1_2', 'weight'): numbers join the name
    before them."""
    path: list[str] = []
    for part in key.split("."):
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path)


# --------------------------------------------------------------------------- reading files


def _safetensors_error(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable safetensors file: {what}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a repeated key would let one tensor entry hide another."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the header names {key!r} twice")
        result[key] = value
    return result


def _read_safetensors_header(path: str, size: int) -> tuple[dict[str, Any], int]:
    """(the header's tensor entries, where the data region starts), the header length checked."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise _safetensors_error(path, f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _SAFETENSORS_MAX_HEADER_BYTES):
            raise _safetensors_error(
                path, f"header length {header_len} exceeds the file size {size} or the format's "
                      f"{_SAFETENSORS_MAX_HEADER_BYTES}")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _safetensors_error(path, f"malformed header ({err})") from None
    if not isinstance(header, dict):
        raise _safetensors_error(path, f"the header is a {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise _safetensors_error(path, "__metadata__ is not a map of strings")
    return header, 8 + header_len


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(path: str, name: str, info: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each field's type and the byte length
    (elements x item size = end - begin) checked."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _safetensors_error(path, f"tensor {name!r}: the entry is not {{dtype, shape, "
                                       f"data_offsets}}")
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise _safetensors_error(path, f"tensor {name!r} has unsupported dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise _safetensors_error(path, f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))
            or offsets[0] > offsets[1]):
        raise _safetensors_error(path, f"tensor {name!r}: data_offsets {offsets!r} are not "
                                       f"[begin, end] with 0 <= begin <= end")
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes != end - begin:
        raise _safetensors_error(path, f"tensor {name!r}: shape {shape} x {info['dtype']} is "
                                       f"{nbytes} bytes, data_offsets span {end - begin}")
    return np.dtype(dtype), tuple(shape), begin, end


def _check_data_layout(path: str, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """The tensors' byte ranges, in offset order, must tile the data region exactly: no gap, no
    overlap, nothing outside it (so no byte is read twice or as two tensors)."""
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise _safetensors_error(path, f"tensor {name!r} starts at data byte {begin}, "
                                           f"expected {position}: it {problem}")
        position = end
    if position != data_len:
        what = "truncated file" if position > data_len else "bytes after the last tensor"
        raise _safetensors_error(path, f"{what}: the tensors cover {position} data bytes, the "
                                       f"file holds {data_len}")


# Why not the safetensors library here (bundles are read and every file is written with it): its
# numpy reader copies each tensor into memory, this one maps the file. Reading a 1 GiB tensor
# raised peak RSS by 1023 MB through `safe_open(...).get_tensor` and by 0 MB here (measured
# 2026-12-03); SD 1.5's UNet checkpoint is 3.4 GB and its converter copies every tensor anyway.
def read_safetensors(path: str | os.PathLike) -> dict[str, Array]:
    """Reads a .safetensors file memory-mapped, without torch (bf16 through ml_dtypes).

    Strict as the format's specification: a well-formed header, every entry's shape x dtype equal
    to its byte range, the ranges tiling the data region in offset order.

    Raises:
      CheckpointError: naming the file and what is wrong.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    header, data_start = _read_safetensors_header(path, size)
    entries = {name: _tensor_entry(path, name, info) for name, info in header.items()}
    _check_data_layout(path, [(b, e, n) for n, (_, _, b, e) in entries.items()],
                       size - data_start)
    raw = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    return {name: raw[data_start + begin:data_start + end].view(dtype).reshape(shape)
            for name, (dtype, shape, begin, end) in entries.items()}


def read_torch_file(path: str | os.PathLike) -> dict[str, Array]:
    """Reads a torch pickle (.bin/.pth/.pt) state dict without torch (tensors and plain values)."""
    path = os.fspath(path)
    obj = torch_pickle.load_torch_pickle(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    not_named = [k for k in obj if not isinstance(k, str)]
    if not_named:
        raise CheckpointError(f"{path}: state dict keys that are not strings: {not_named[:5]}")
    non_tensors = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if non_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {non_tensors[:5]}")
    return dict(obj)


def read_state_dict_file(path: str | os.PathLike) -> dict[str, Array]:
    """A state dict from .safetensors (no torch needed) or a torch pickle; errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_file(path)


# --------------------------------------------------------------------------- conversion


def _default_to_flax(torch_leaf: str, flax_leaf: str, tensor: Array, shape: tuple) -> Array:
    if flax_leaf == "kernel":
        if tensor.ndim == 4 and len(shape) == 2:  # 1x1 conv stored for a Dense (old VAE attention)
            tensor = tensor[:, :, 0, 0]
        if tensor.ndim == 4:
            return np.transpose(tensor, (2, 3, 1, 0))
        if tensor.ndim == 2:
            return tensor.T
    return tensor


def _default_to_torch(flax_leaf: str, value: Array, torch_shape: tuple) -> Array:
    if flax_leaf == "kernel":
        if value.ndim == 4:
            return np.transpose(value, (3, 2, 0, 1))
        if value.ndim == 2:
            value = value.T
            return value.reshape(torch_shape) if len(torch_shape) == 4 else value
    return value


_LEAF_CANDIDATES = {
    "weight": (("params", "kernel"), ("params", "scale"), ("params", "embedding")),
    "bias": (("params", "bias"),),
    "running_mean": (("batch_stats", "mean"),),
    "running_var": (("batch_stats", "var"),),
}


def _resolve_flax_path(key: str, target_flat: Mapping[FlatPath, Any]) -> FlatPath | None:
    """The (collection, *module path, leaf) a torch key lands on, or None if the target lacks it."""
    path = flax_path_for_torch_key(key)
    module, leaf = path[:-1], path[-1]
    for collection, flax_leaf in _LEAF_CANDIDATES.get(leaf, ()):
        candidate = (collection,) + module + (flax_leaf,)
        if candidate in target_flat:
            return candidate
    direct = ("params",) + path  # a bare nn.Module parameter such as DP-IQA's `gamma`
    return direct if direct in target_flat else None


def _format_list(title: str, lines: Sequence[str]) -> str:
    shown = "\n  ".join(lines[:_LIST_SHOWN])
    more = f"\n  ... and {len(lines) - _LIST_SHOWN} more" if len(lines) > _LIST_SHOWN else ""
    return f"{title} ({len(lines)}):\n  {shown}{more}"


def _raise_if_any(header: str, sections: Sequence[tuple[str, Sequence[str]]]) -> None:
    parts = [_format_list(title, lines) for title, lines in sections if lines]
    if parts:
        raise StateDictMismatchError(header + "\n" + "\n".join(parts))


def torch_to_flax(
    state_dict: Mapping[str, Array],
    target: Mapping[str, Any],
    *,
    ignore: Sequence[str] = (),
    transforms: Mapping[str, LayoutTransform] | None = None,
    source: str = "state dict",
) -> dict[str, Any]:
    """Maps a torch state dict onto a Flax variables tree, strictly.

    Args:
      state_dict: torch key -> numpy array.
      target: the model's variables tree; leaves need only `.shape` (e.g. from `jax.eval_shape`).
      ignore: regexes (`re.search`) of torch keys to drop.
      transforms: per torch key, a layout change replacing the default rules.
      source: a name for error messages (usually the file path).

    Returns:
      A variables dict of numpy arrays with exactly the target's structure.

    Raises:
      StateDictMismatchError: naming every missing, unexpected or mis-shaped tensor.
    """
    transforms = transforms or {}
    ignore_res = [re.compile(p) for p in ignore]
    target_flat = {path: tuple(leaf.shape)
                   for path, leaf in traverse_util.flatten_dict(target).items()}
    converted: dict[FlatPath, Array] = {}
    unexpected, misshaped = [], []
    for key, tensor in state_dict.items():
        if any(r.search(key) for r in ignore_res):
            continue
        flax_path = _resolve_flax_path(key, target_flat)
        if flax_path is None:
            unexpected.append(f"{key} {tuple(tensor.shape)}")
            continue
        expected = target_flat[flax_path]
        tensor = np.asarray(tensor)
        if key in transforms:
            value = transforms[key].to_flax(tensor)
        else:
            value = _default_to_flax(key.rsplit(".", 1)[-1], flax_path[-1], tensor, expected)
        if tuple(value.shape) != expected:
            misshaped.append(f"{key}: {tuple(tensor.shape)} -> flax {'/'.join(flax_path)} "
                             f"{expected}")
            continue
        converted[flax_path] = value
    missing = [f"{'/'.join(p)} {s}" for p, s in target_flat.items() if p not in converted]
    _raise_if_any(f"{source} does not fit the model.", [
        ("missing from the state dict", missing),
        ("unexpected in the state dict", unexpected),
        ("shape mismatch (torch key: got -> expected)", misshaped)])
    return traverse_util.unflatten_dict(converted)


def flax_to_torch(
    variables: Mapping[str, Any],
    torch_shapes: Mapping[str, Sequence[int]],
    *,
    transforms: Mapping[str, LayoutTransform] | None = None,
) -> dict[str, Array]:
    """The reverse of `torch_to_flax`, driven by the torch key -> shape list of the target layout.

    Every Flax leaf must be claimed by exactly one torch key, so nothing is silently dropped.
    """
    transforms = transforms or {}
    flat = {path: np.asarray(value)
            for path, value in traverse_util.flatten_dict(variables).items()}
    state_dict: dict[str, Array] = {}
    used: set[FlatPath] = set()
    missing, misshaped = [], []
    for key, shape in torch_shapes.items():
        shape = tuple(shape)
        flax_path = _resolve_flax_path(key, flat)
        if flax_path is None:
            missing.append(f"{key} {shape}")
            continue
        used.add(flax_path)
        value = flat[flax_path]
        if key in transforms:
            tensor = transforms[key].to_torch(value)
        else:
            tensor = _default_to_torch(flax_path[-1], value, shape)
        if tuple(tensor.shape) != shape:
            misshaped.append(f"{key}: {tuple(tensor.shape)} -> expected {shape}")
            continue
        state_dict[key] = np.ascontiguousarray(tensor)
    unclaimed = [f"{'/'.join(p)} {flat[p].shape}" for p in flat if p not in used]
    _raise_if_any("variables do not fit the torch layout.", [
        ("torch keys with no Flax variable", missing),
        ("Flax variables with no torch key", unclaimed),
        ("shape mismatch", misshaped)])
    return state_dict


def nchw_flatten_transform(channels: int, height: int, width: int) -> LayoutTransform:
    """Layout change for a Linear that reads a flattened [C, H, W] map, for a model flattening NHWC.

    torch weight [out, C*H*W] (input index c*H*W + h*W + w) <-> flax kernel [H*W*C, out] (input
    index h*W*C + w*C + c). Used for the DP-IQA teacher's `QFD.fc1` and the student's `fc1`.
    """

    expected = channels * height * width

    def check(matrix: Array, flat_axis: int, what: str) -> None:
        if matrix.ndim != 2 or matrix.shape[flat_axis] != expected:
            raise ValueError(f"expected {what}, got shape {matrix.shape}")

    def to_flax(weight: Array) -> Array:
        check(weight, 1, f"a Linear weight [out, {channels}*{height}*{width}={expected}]")
        out = weight.shape[0]
        return weight.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(
            expected, out)

    def to_torch(kernel: Array) -> Array:
        check(kernel, 0, f"a Dense kernel [{height}*{width}*{channels}={expected}, out]")
        out = kernel.shape[1]
        return kernel.reshape(height, width, channels, out).transpose(3, 2, 0, 1).reshape(
            out, expected)

    return LayoutTransform(to_flax=to_flax, to_torch=to_torch)
