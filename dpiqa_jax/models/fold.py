"""BatchNorm folded into the convolution before it: an inference-only transform of the variables.

In inference a `TorchBatchNorm` computes `(x - mean) * scale / sqrt(var + eps) + bias`, a fixed
per-channel affine map, so it can move into the bias-free convolution `{name}_0` that feeds it
(`{name}_1`): kernel' = kernel x factor along the output channels, bias' = bias - mean x factor,
with factor = scale / sqrt(var + eps) computed in float64, so each folded value carries one
float32 rounding. The BatchNorm is left in the tree as an exact identity plus bias (scale 1,
mean 0, and the float32 variance v with fl32(v + eps) == 1), so the folded variables fit the same
module and the same checkpoint layout; inside a compiled program that BatchNorm is one add.

Only for inference: training on folded variables would normalise with batch statistics again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_BATCH_NORM_SUFFIX = "_1"
_CONV_SUFFIX = "_0"


def identity_variance(eps: float) -> np.float32:
    """The float32 v closest to 1 - eps with fl32(v + fl32(eps)) == 1 exactly."""
    eps32 = np.float32(eps)
    var = np.float32(1.0) - eps32
    while var + eps32 > np.float32(1.0):
        var = np.nextafter(var, np.float32(0.0))
    while var + eps32 < np.float32(1.0):
        var = np.nextafter(var, np.float32(2.0))
    if var + eps32 != np.float32(1.0):
        raise ValueError(f"no float32 variance makes BatchNorm with eps {eps} an exact identity")
    return var


def batch_norm_factor(scale: Any, var: Any, eps: float) -> np.ndarray:
    """scale / sqrt(var + eps) in float64 (eps as the float32 the BatchNorm adds). [C] -> [C]."""
    return (np.asarray(scale, np.float64)
            / np.sqrt(np.asarray(var, np.float64) + np.float64(np.float32(eps))))


def _fold_pair(conv: dict, norm: dict, stats: dict, eps: float, where: str) -> None:
    """Folds one BatchNorm (`norm` params, `stats` batch statistics) into `conv`, in place."""
    kernel = np.asarray(conv["kernel"])
    channels = np.shape(stats["mean"])[0]
    if kernel.shape[-1] != channels or "bias" in conv:
        raise ValueError(f"{where}: BatchNorm over {channels} channels follows a convolution "
                         f"with kernel {kernel.shape}{' and a bias' if 'bias' in conv else ''}; "
                         f"expected a bias-free kernel [..., {channels}]")
    factor = batch_norm_factor(norm["scale"], stats["var"], eps)
    conv["kernel"] = (kernel.astype(np.float64) * factor).astype(kernel.dtype)
    bias = (np.asarray(norm["bias"], np.float64)
            - np.asarray(stats["mean"], np.float64) * factor)
    dtype = np.asarray(norm["bias"]).dtype
    norm["bias"] = bias.astype(dtype)
    norm["scale"] = np.ones((channels,), dtype)
    stats["mean"] = np.zeros((channels,), np.asarray(stats["mean"]).dtype)
    stats["var"] = np.full((channels,), identity_variance(eps), np.asarray(stats["var"]).dtype)


def _fold_tree(params: dict, stats: dict, eps: float, where: str) -> int:
    count = 0
    for name, node in stats.items():
        if "mean" in node and "var" in node:
            conv_name = name[:-len(_BATCH_NORM_SUFFIX)] + _CONV_SUFFIX
            if not name.endswith(_BATCH_NORM_SUFFIX) or conv_name not in params:
                raise ValueError(f"{where}/{name}: a BatchNorm without a convolution "
                                 f"{conv_name!r} before it")
            _fold_pair(params[conv_name], params[name], node, eps, f"{where}/{name}")
            count += 1
        else:
            count += _fold_tree(params[name], node, eps, f"{where}/{name}")
    return count


def _host_copy(tree: Any) -> Any:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {key: _host_copy(value) for key, value in tree.items()}
    return np.asarray(tree)


def fold_batch_norms(variables: Any, eps: float) -> dict[str, Any]:
    """Inference variables with every BatchNorm folded into its convolution (module docstring).

    Args:
      variables: {"params": ..., "batch_stats": ...} of a module whose BatchNorms are
        `TorchBatchNorm`s named `{name}_1` after a bias-free convolution `{name}_0` (the
        EfficientNet backbone); leaves may be numpy or jax arrays.
      eps: the BatchNorms' epsilon.

    Returns:
      A new tree of numpy arrays, same structure, shapes and dtypes; the input is not changed.

    Raises:
      ValueError: a BatchNorm without such a convolution, or variables without batch statistics.
    """
    if "batch_stats" not in variables:
        raise ValueError("no batch_stats: nothing to fold (not an inference tree of a model "
                         "with BatchNorm)")
    folded = _host_copy(variables)
    if _fold_tree(folded["params"], folded["batch_stats"], eps, "") == 0:
        raise ValueError("batch_stats hold no BatchNorm statistics (mean, var)")
    return folded
