"""EfficientNet and DP-IQA student state dicts <-> our Flax variables.

* torchvision `efficientnet_b0..b7` state dicts (`features.*`, `classifier.1.*`) map by name.
* EfficientNet-Lite state dicts (lukemelas / `efficientnet_lite_pytorch` names: `_conv_stem`,
  `_blocks.N._expand_conv`, ...) are renamed to torchvision names first, explicitly and strictly.
* The authors' student (`base_model.features.*`, `conv_transpose.*`, `fc1..3.*`) needs two layout
  changes beyond the defaults: the ConvTranspose2d weight, and `fc1`'s input order (the authors
  flatten the quality map NCHW, our model flattens NHWC).

All loads are strict: a missing, unexpected or mis-shaped tensor raises `StateDictMismatchError`.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dpiqa_jax.convert import torch_layout
from dpiqa_jax.convert.torch_layout import LayoutTransform, StateDictMismatchError

Array = np.ndarray

_BN_COUNTER = r"\.num_batches_tracked$"
_CLASSIFIER = r"^classifier\."
_BLOCK_MODULE = re.compile(r"^features_(\d+)_(\d+)$")

# Lite block modules in torchvision `block` order, (conv, its BatchNorm) pairs; a block without
# expansion (ratio 1) lacks the first pair.
_LITE_BLOCK_LAYERS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                               ("_project_conv", "_bn2"))
_LITE_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(weight|bias|running_mean|running_var|"
                             r"num_batches_tracked)$")
_LITE_TOP_KEY = re.compile(r"^(\w+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")

_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_TORCH_LEAF_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# --------------------------------------------------------------------------- torchvision


def torchvision_efficientnet_to_flax(
    state_dict: Mapping[str, Array],
    target: Mapping[str, Any],
    *,
    include_classifier: bool = False,
    source: str = "torchvision EfficientNet state dict",
) -> dict[str, Any]:
    """A torchvision `efficientnet_bN` state dict -> variables of `EfficientNet` (features only,
    `classifier.*` dropped) or, with `include_classifier`, of `ImageNetClassifier`."""
    ignore = [_BN_COUNTER] + ([] if include_classifier else [_CLASSIFIER])
    return torch_layout.torch_to_flax(state_dict, target, ignore=ignore, source=source)


# --------------------------------------------------------------------------- EfficientNet-Lite


def _stage_depths(target: Mapping[str, Any]) -> list[int]:
    """Blocks per stage of the target: its `features_{s}_{i}` modules that hold a `block_*`."""
    depths: dict[int, int] = {}
    for name, module in target["params"].items():
        match = _BLOCK_MODULE.match(name)
        if match and any(child.startswith("block_") for child in module):
            stage = int(match.group(1))
            depths[stage] = max(depths.get(stage, 0), int(match.group(2)) + 1)
    if sorted(depths) != list(range(1, len(depths) + 1)):
        raise ValueError(f"target has no contiguous EfficientNet stages features_1.. (found "
                         f"stages {sorted(depths)})")
    return [depths[stage] for stage in sorted(depths)]


def _lite_block_rename(layer: str, expanded: bool) -> str | None:
    """Lite's `_depthwise_conv`/`_bn1`/... -> torchvision's `block.{i}.{0|1}`, None if unknown."""
    layers = _LITE_BLOCK_LAYERS if expanded else _LITE_BLOCK_LAYERS[1:]
    for index, pair in enumerate(layers):
        if layer in pair:
            return f"block.{index}.{pair.index(layer)}"
    return None


def lite_to_torchvision_names(
    state_dict: Mapping[str, Array], stage_depths: Sequence[int]
) -> dict[str, Array]:
    """Renames an EfficientNet-Lite state dict to torchvision's EfficientNet names.

    `_conv_stem`/`_bn0` -> `features.0.0/1`; `_blocks.N.*` -> `features.{stage}.{i}.block.*` (the
    flat block index N walks the stages of `stage_depths` in order); `_conv_head`/`_bn1` ->
    `features.{len(stage_depths) + 1}.0/1`; `_fc` -> `classifier.1`.

    Raises:
      StateDictMismatchError: naming every key that has no torchvision counterpart.
    """
    positions = [(stage, index) for stage, depth in enumerate(stage_depths, start=1)
                 for index in range(depth)]
    head = len(stage_depths) + 1
    top_level = {"_conv_stem": "features.0.0", "_bn0": "features.0.1",
                 "_conv_head": f"features.{head}.0", "_bn1": f"features.{head}.1",
                 "_fc": "classifier.1"}
    expanded = {int(m[1]) for m in map(_LITE_BLOCK_KEY.match, state_dict)
                if m and m[2] == "_expand_conv"}
    renamed: dict[str, Array] = {}
    unknown = []
    for key, value in state_dict.items():
        block_match = _LITE_BLOCK_KEY.match(key)
        top_match = _LITE_TOP_KEY.match(key)
        if block_match:
            flat_index, layer, leaf = int(block_match[1]), block_match[2], block_match[3]
            inner = _lite_block_rename(layer, flat_index in expanded)
            if inner is None or flat_index >= len(positions):
                unknown.append(key)
                continue
            stage, index = positions[flat_index]
            renamed[f"features.{stage}.{index}.{inner}.{leaf}"] = value
        elif top_match and top_match[1] in top_level:
            renamed[f"{top_level[top_match[1]]}.{top_match[2]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise StateDictMismatchError(
            f"EfficientNet-Lite state dict has {len(unknown)} keys with no torchvision "
            f"counterpart in a model of {len(positions)} blocks: {unknown[:20]}")
    return renamed


def lite_to_flax(
    state_dict: Mapping[str, Array],
    target: Mapping[str, Any],
    *,
    include_classifier: bool = False,
    source: str = "EfficientNet-Lite state dict",
) -> dict[str, Any]:
    """An EfficientNet-Lite state dict (e.g. `efficientnet-lite0-57934424.pth`) -> variables of our
    `EfficientNet` (a Lite config), or of `ImageNetClassifier` with `include_classifier`.

    The stage layout that places `_blocks.N` comes from the target's `features_{s}_{i}` modules.
    """
    renamed = lite_to_torchvision_names(state_dict, _stage_depths(target))
    return torchvision_efficientnet_to_flax(renamed, target,
                                            include_classifier=include_classifier, source=source)


# --------------------------------------------------------------------------- DP-IQA student


def _conv_transpose_to_flax(weight):
    """torch ConvTranspose2d [in, out, kh, kw] -> [kh, kw, in, out]."""
    return weight.transpose(2, 3, 0, 1)


def _conv_transpose_to_torch(kernel):
    """[kh, kw, in, out] -> torch ConvTranspose2d [in, out, kh, kw]."""
    return kernel.transpose(2, 3, 0, 1)


def student_transforms(variables: Mapping[str, Any]) -> dict[str, LayoutTransform]:
    """The student's non-default layout changes, sized from its variables (or `eval_shape` tree).

    The quality map's channels come from `conv_transpose`'s bias, its (square) side from `fc1`.
    """
    params = variables["params"]
    channels = params["conv_transpose"]["bias"].shape[0]
    rows = params["fc1"]["kernel"].shape[0]
    side = math.isqrt(rows // channels)
    if side * side * channels != rows:
        raise ValueError(f"fc1 has {rows} inputs, not a square map of {channels} channels")
    return {
        "conv_transpose.weight": LayoutTransform(_conv_transpose_to_flax, _conv_transpose_to_torch),
        "fc1.weight": torch_layout.nchw_flatten_transform(channels, side, side),
    }


def student_official_to_flax(
    state_dict: Mapping[str, Array],
    target: Mapping[str, Any],
    *,
    source: str = "DP-IQA student state dict",
) -> dict[str, Any]:
    """The authors' student state dict -> `Student` variables (`num_batches_tracked` ignored)."""
    return torch_layout.torch_to_flax(state_dict, target, ignore=[_BN_COUNTER],
                                      transforms=student_transforms(target), source=source)


def student_flax_to_official(variables: Mapping[str, Any]) -> dict[str, Array]:
    """`Student` variables -> the authors' state dict layout, keys in torch's module order.

    Every BatchNorm also gets `num_batches_tracked` (0-d int64 zero; our training does not count
    batches and torch does not read it when a momentum is set), so the key set is torch's.
    """
    transforms = student_transforms(variables)
    shapes = _torch_shapes(variables, transforms)
    state_dict = torch_layout.flax_to_torch(variables, shapes, transforms=transforms)
    for key in shapes:
        if key.endswith(".running_var"):
            state_dict[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return {key: state_dict[key] for key in sorted(state_dict, key=_torch_order)}


def official_student_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the authors' released student (torchvision B7 at 512x512), all 1206 keys."""
    manifest = importlib.resources.files("dpiqa_jax.convert").joinpath(
        "manifests/official_student_state_dict.json")
    return {key: tuple(shape) for key, shape in json.loads(manifest.read_text())["keys"].items()}


def _torch_name(component: str) -> str:
    """'features_1_0' -> 'features.1.0', 'conv_transpose' -> 'conv_transpose' (the inverse of
    `torch_layout.flax_path_for_torch_key` for one path component)."""
    parts = component.split("_")
    stem = len(parts)
    while stem > 1 and parts[stem - 1].isdigit():
        stem -= 1
    return ".".join(["_".join(parts[:stem])] + parts[stem:])


def _default_torch_shape(flax_leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if flax_leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if flax_leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _torch_shapes(
    variables: Mapping[str, Any], transforms: Mapping[str, LayoutTransform]
) -> dict[str, tuple[int, ...]]:
    """torch key -> shape for every variable, following the default rules and `transforms`."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        names = tuple(entry.key for entry in path)
        collection, modules, flax_leaf = names[0], names[1:-1], names[-1]
        if (collection, flax_leaf) not in _TORCH_LEAF:
            raise ValueError(f"no torch counterpart for variable {'/'.join(names)}")
        key = ".".join([_torch_name(m) for m in modules] + [_TORCH_LEAF[collection, flax_leaf]])
        shape = tuple(leaf.shape)
        if key in transforms:
            abstract = jax.ShapeDtypeStruct(shape, np.float32)
            shapes[key] = tuple(jax.eval_shape(transforms[key].to_torch, abstract).shape)
        else:
            shapes[key] = _default_torch_shape(flax_leaf, shape)
    return shapes


def _torch_order(key: str) -> tuple:
    """Sort key giving torch's registration order: module path with numbers compared as numbers,
    then weight, bias, running_mean, running_var, num_batches_tracked."""
    *modules, leaf = key.split(".")
    path = tuple((0, int(m), "") if m.isdigit() else (1, 0, m) for m in modules)
    return path, _TORCH_LEAF_ORDER.index(leaf)
