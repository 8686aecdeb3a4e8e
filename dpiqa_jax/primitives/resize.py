"""Resizing that reproduces PyTorch's `F.interpolate` exactly, for NHWC arrays.

`jax.image.resize` uses a different cubic kernel (Keys a = -0.5) and antialiases when shrinking, so
it cannot reproduce the authors' `F.interpolate(mode="bicubic")` or legacy `mode="nearest"`. Both
resizes here use index/weight tables computed on the host from the static sizes:

* bicubic: two separable matrix products with [h, H] and [w, W] weight matrices (MXU/tensor-core
  friendly, exact up to float rounding);
* nearest: two gathers with static index vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's cubic convolution coefficient (`upsample_bicubic2d`), not Keys' a = -0.5.
_TORCH_CUBIC_A = -0.75


def _check_nhwc_and_size(x: jax.Array, size: tuple[int, int]) -> tuple[int, int]:
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC array [B, H, W, C], got shape {x.shape}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
    return int(size[0]), int(size[1])


def _cubic_weights_near(t: np.ndarray) -> np.ndarray:
    """Weight of a tap at distance |t| <= 1 (torch `cubic_convolution1`)."""
    a = _TORCH_CUBIC_A
    return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0


def _cubic_weights_far(t: np.ndarray) -> np.ndarray:
    """Weight of a tap at distance 1 < |t| < 2 (torch `cubic_convolution2`)."""
    a = _TORCH_CUBIC_A
    return ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a


def bicubic_weight_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64 matrix M with `y = M @ x` equal to torch bicubic along one axis.

    align_corners=False, no antialias: source coordinate `(dst + 0.5) * in/out - 0.5` (not clamped,
    unlike the linear modes), four taps at floor(src) - 1 .. floor(src) + 2 with their indices
    clamped to the border, so border taps accumulate onto the edge pixel.
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    t = src - base
    taps = np.stack(
        [_cubic_weights_far(t + 1.0), _cubic_weights_near(t), _cubic_weights_near(1.0 - t),
         _cubic_weights_far(2.0 - t)],
        axis=1,
    )
    indices = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_size), 4), indices.ravel()), taps.ravel())
    return matrix


def resize_bicubic_torch(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`F.interpolate(x, size, mode="bicubic", align_corners=False, antialias=False)` on NHWC.

    Args:
      x: [B, H, W, C].
      size: (h, w) output size. Equal sizes give the identity (up to float rounding), as in torch.

    Returns:
      [B, h, w, C] in x.dtype.
    """
    out_h, out_w = _check_nhwc_and_size(x, size)
    rows = jnp.asarray(bicubic_weight_matrix(x.shape[1], out_h), dtype=x.dtype)
    cols = jnp.asarray(bicubic_weight_matrix(x.shape[2], out_w), dtype=x.dtype)
    # HIGHEST keeps fp32 inputs exact on TPU/GPU (default would round operands to bf16/TF32).
    precision = jax.lax.Precision.HIGHEST
    x = jnp.einsum("hH,bHWc->bhWc", rows, x, precision=precision)
    return jnp.einsum("wW,bhWc->bhwc", cols, x, precision=precision)


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index per output index of torch legacy `mode="nearest"`: floor(dst * in/out).

    Computed in float32 like torch's CPU/CUDA kernels (`floorf(dst * (float)in/out)`), clamped to
    in_size - 1, so non-integer ratios pick the same pixels.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def resize_nearest_torch(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`F.interpolate(x, size, mode="nearest")` (legacy nearest, not "nearest-exact") on NHWC.

    Args:
      x: [B, H, W, C].
      size: (h, w) output size.

    Returns:
      [B, h, w, C] in x.dtype.
    """
    out_h, out_w = _check_nhwc_and_size(x, size)
    x = jnp.take(x, jnp.asarray(nearest_source_indices(x.shape[1], out_h)), axis=1)
    return jnp.take(x, jnp.asarray(nearest_source_indices(x.shape[2], out_w)), axis=2)
