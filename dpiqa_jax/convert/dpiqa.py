"""The authors' DP-IQA teacher checkpoint <-> our `Teacher` variables.

The authors' state dict (`DPIQA.state_dict()`: `vae.*`, `unet.*`, `img_adapter.*`,
`text_adapter.fc.*`, `gamma`, `QFD.*`) maps by name onto `dpiqa_jax.models.teacher.Teacher`, with
one layout change beyond the generic rules: `QFD.fc1` reads a quality map the authors flatten in
NCHW order while we flatten NHWC (`nchw_flatten_transform`). Tensors the model never uses are kept
aside as `extras` so an export reproduces the original file bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpiqa_jax.convert.torch_layout import (
    LayoutTransform,
    StateDictMismatchError,
    flax_to_torch,
    nchw_flatten_transform,
    torch_to_flax,
)

Array = np.ndarray

OFFICIAL_TEACHER_MANIFEST = os.path.join(os.path.dirname(__file__), "manifests",
                                         "official_teacher_state_dict.json")

# Present in the authors' checkpoint, absent from our model: the VAE decoder side, the QFD's unused
# BatchNorm and distortion classifier, and BatchNorm step counters.
UNUSED_TEACHER_KEYS = (
    r"^vae\.decoder\.",
    r"^vae\.post_quant_conv\.",
    r"^QFD\.bnc1\.",
    r"^QFD\.classifier_dist\.",
    r"(^|\.)num_batches_tracked$",
)
_UNUSED_TEACHER_RES = tuple(re.compile(p) for p in UNUSED_TEACHER_KEYS)

QFD_FC1_KEY = "QFD.fc1.weight"


def official_teacher_shapes() -> dict[str, tuple[int, ...]]:
    """torch key -> shape of the authors' SD 1.5 teacher checkpoint, in the file's order."""
    with open(OFFICIAL_TEACHER_MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    return {key: tuple(shape) for key, shape in manifest["keys"].items()}


def is_unused_teacher_key(key: str) -> bool:
    """Whether the authors' checkpoint tensor `key` has no counterpart in our `Teacher`."""
    return any(r.search(key) for r in _UNUSED_TEACHER_RES)


def _quality_map_layout(params: Mapping[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of the quality map QFD.fc1 reads, from the Teacher's params."""
    try:
        qfd = params["QFD"]
        score_convs = sorted((k for k in qfd if re.fullmatch(r"conv_score\d+", k)),
                             key=lambda k: int(k[len("conv_score"):]))
        channels = int(qfd[score_convs[-1]]["kernel"].shape[-1])
        rows = int(qfd["fc1"]["kernel"].shape[0])
    except (KeyError, IndexError) as err:
        raise StateDictMismatchError(
            f"target has no QFD conv_score*/fc1 kernels to size the fc1 layout ({err!r})") from err
    side = math.isqrt(rows // channels)
    if side * side * channels != rows:
        raise StateDictMismatchError(f"QFD fc1 input size {rows} is not {channels} x side^2")
    return channels, side, side


def _teacher_transforms(variables: Mapping[str, Any]) -> dict[str, LayoutTransform]:
    return {QFD_FC1_KEY: nchw_flatten_transform(*_quality_map_layout(variables["params"]))}


def teacher_official_to_flax(
    state_dict: Mapping[str, Array],
    target: Mapping[str, Any],
    *,
    source: str = "teacher state dict",
) -> tuple[dict[str, Any], dict[str, Array]]:
    """The authors' teacher state dict -> (variables of our `Teacher`, unused extras).

    Args:
      state_dict: torch key -> numpy array, as saved from the authors' `DPIQA` module.
      target: the Teacher's variables tree (leaves need only `.shape`, e.g. from `jax.eval_shape`).
      source: name used in error messages (e.g. the file path).

    Returns:
      (variables, extras): variables with exactly the target's structure; extras the tensors the
      model does not use (`UNUSED_TEACHER_KEYS`), to hand back to `teacher_flax_to_official`.

    Raises:
      StateDictMismatchError: naming every missing, unexpected or mis-shaped tensor.
    """
    extras = {k: np.asarray(v) for k, v in state_dict.items() if is_unused_teacher_key(k)}
    used = {k: v for k, v in state_dict.items() if k not in extras}
    variables = torch_to_flax(used, target, transforms=_teacher_transforms(target), source=source)
    return variables, extras


def teacher_flax_to_official(
    variables: Mapping[str, Any],
    extras: Mapping[str, Array],
    torch_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, Array]:
    """Our `Teacher` variables (+ the extras kept at import) -> the authors' teacher state dict.

    Args:
      variables: the Teacher's variables (numpy or jax arrays).
      extras: the unused tensors returned by `teacher_official_to_flax` (or none, if `torch_shapes`
        lists no unused key).
      torch_shapes: torch key -> shape of the layout to write, in file order; defaults to the
        authors' SD 1.5 checkpoint manifest. Pass the reference module's shapes for other sizes.

    Returns:
      torch key -> numpy array, in `torch_shapes` order.

    Raises:
      StateDictMismatchError: when variables or extras do not cover the layout exactly.
    """
    shapes = official_teacher_shapes() if torch_shapes is None else dict(torch_shapes)
    model_shapes = {k: s for k, s in shapes.items() if not is_unused_teacher_key(k)}
    converted = flax_to_torch(variables, model_shapes, transforms=_teacher_transforms(variables))
    _check_extras(extras, {k: s for k, s in shapes.items() if k not in model_shapes})
    merged = {**converted, **{k: np.asarray(v) for k, v in extras.items()}}
    return {key: merged[key] for key in shapes}


def _check_extras(extras: Mapping[str, Array], expected: Mapping[str, tuple[int, ...]]) -> None:
    missing = [f"{k} {s}" for k, s in expected.items() if k not in extras]
    unexpected = [f"{k} {tuple(np.shape(v))}" for k, v in extras.items() if k not in expected]
    misshaped = [f"{k}: {tuple(np.shape(v))} -> expected {expected[k]}"
                 for k, v in extras.items() if k in expected and tuple(np.shape(v)) != expected[k]]
    if missing or unexpected or misshaped:
        raise StateDictMismatchError(
            "extras do not fit the torch layout's unused tensors: "
            f"missing {missing}, unexpected {unexpected}, mis-shaped {misshaped}")
