"""Parity of the torch-exact resizes with `torch.nn.functional.interpolate`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpiqa_jax.primitives.resize import (
    nearest_source_indices,
    resize_bicubic_torch,
    resize_nearest_torch,
)

# fp32: each output is a short weighted sum; the only difference to torch is summation order.
ATOL = 2e-5
RTOL = 1e-5


def _random_nhwc(in_size: tuple[int, int], seed: int, channels: int = 3) -> np.ndarray:
    torch.manual_seed(seed)
    return torch.randn(2, channels, *in_size).permute(0, 2, 3, 1).numpy()


def _torch_resize(x_nhwc: np.ndarray, size: tuple[int, int], **kwargs) -> np.ndarray:
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    return F.interpolate(x, size=size, **kwargs).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    "in_size, out_size",
    [((16, 16), (64, 64)), ((32, 32), (64, 64)), ((64, 64), (64, 64)), ((13, 13), (40, 40)),
     ((40, 40), (13, 13)), ((7, 20), (31, 5)), ((1, 3), (4, 2))],
)
def test_bicubic_matches_torch(in_size, out_size):
    x = _random_nhwc(in_size, seed=0)
    expected = _torch_resize(x, out_size, mode="bicubic", align_corners=False, antialias=False)
    got = jax.jit(resize_bicubic_torch, static_argnums=1)(jnp.asarray(x), out_size)
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), expected, atol=ATOL, rtol=RTOL)


def test_bicubic_same_size_is_identity():
    x = _random_nhwc((64, 64), seed=1, channels=5)
    np.testing.assert_allclose(np.asarray(resize_bicubic_torch(jnp.asarray(x), (64, 64))), x,
                               atol=1e-6, rtol=0)


def test_bicubic_keeps_dtype():
    x = jnp.ones((1, 8, 8, 2), jnp.bfloat16)
    assert resize_bicubic_torch(x, (16, 16)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "in_size, out_size",
    [((32, 32), (64, 64)), ((16, 16), (64, 64)), ((3, 5), (64, 64)), ((7, 9), (10, 11)),
     ((64, 64), (64, 64)), ((40, 40), (13, 13)), ((17, 23), (64, 64))],
)
def test_nearest_matches_torch(in_size, out_size):
    x = _random_nhwc(in_size, seed=2)
    expected = _torch_resize(x, out_size, mode="nearest")
    got = resize_nearest_torch(jnp.asarray(x), out_size)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_rejects_non_nhwc():
    with pytest.raises(ValueError, match="NHWC"):
        resize_bicubic_torch(jnp.ones((8, 8, 3)), (4, 4))


def test_nearest_indices_match_torch_for_all_small_ratios():
    for in_size in range(1, 41):
        source = torch.arange(in_size, dtype=torch.float32)[None, None, :, None]
        for out_size in range(1, 97):
            expected = F.interpolate(source, size=(out_size, 1), mode="nearest")[0, 0, :, 0]
            np.testing.assert_array_equal(nearest_source_indices(in_size, out_size),
                                          expected.numpy().astype(np.int64),
                                          err_msg=f"{in_size} -> {out_size}")
