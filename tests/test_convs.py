"""The XLA-shaped convolutions equal `nn.Conv` (parameters, values, gradients)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpiqa_jax import inits
from dpiqa_jax.convs import DepthwiseConv, PointwiseConv


def _loss(module: nn.Module):
    return lambda variables, x: jnp.sum(jnp.sin(module.apply(variables, x)))


# Our convolutions and XLA's sum the same products in another order. fp32 sums of n terms in two
# orders differ by at most ~n u sum|terms| (u = 6e-8). Outputs: n = k^2 <= 25 taps of N(0, 1)
# inputs times lecun-normal weights (std 1/sqrt(25)), sum|terms| ~ 4: 6e-6 at worst. Kernel
# gradients sum x * cos(out) over the 2 x H x W <= 242 positions: values ~10, ~sqrt(n) u = 1e-6
# relative typically and n u = 1.5e-5 relative at worst, hence a relative term there.
OUTPUT_ATOL = 6e-6
GRAD_ATOL = 1e-5
GRAD_RTOL = 2e-5


def _assert_same_as_reference(ours: nn.Module, reference: nn.Module, x: jax.Array) -> None:
    """Same parameter tree and initial values (a tree mismatch raises too), outputs, gradients."""
    variables = reference.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), variables)
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x),
                               atol=OUTPUT_ATOL)
    gradients = [jax.grad(_loss(m), argnums=(0, 1))(variables, x) for m in (ours, reference)]
    for got, expected in zip(*gradients, strict=True):
        jax.tree.map(functools.partial(np.testing.assert_allclose, atol=GRAD_ATOL,
                                       rtol=GRAD_RTOL), got, expected)


def _input(side: int, channels: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(6).standard_normal((2, side, side, channels),
                                                                np.float32))


@pytest.mark.parametrize("use_bias", [True, False])
def test_pointwise_conv_is_a_flax_1x1_conv(use_bias):
    reference = nn.Conv(5, (1, 1), use_bias=use_bias, kernel_init=inits.torch_kernel_init(),
                        bias_init=inits.torch_bias_init(6))
    _assert_same_as_reference(PointwiseConv(5, use_bias=use_bias), reference, _input(7, 6))


@pytest.mark.parametrize("kernel_size, stride, padding, side", [
    (3, 1, ((1, 1), (1, 1)), 9), (5, 2, ((2, 2), (2, 2)), 11), (3, 2, "SAME", 10),
    (5, 2, "SAME", 9)])
def test_depthwise_conv_is_a_flax_grouped_conv(kernel_size, stride, padding, side):
    """On CPU DepthwiseConv runs as a shifted sum with its own backward pass."""
    reference = nn.Conv(6, (kernel_size, kernel_size), strides=(stride, stride), padding=padding,
                        feature_group_count=6, use_bias=False)
    _assert_same_as_reference(DepthwiseConv(kernel_size, stride, padding), reference,
                              _input(side, 6))


@pytest.mark.parametrize("platform, convolutions, multiplies", [("cpu", 0, 9), ("cuda", 1, 0),
                                                                 ("tpu", 1, 0)])
def test_depthwise_conv_lowers_to_a_grouped_convolution_off_cpu(platform, convolutions,
                                                                multiplies):
    module = DepthwiseConv(3, 2, "SAME")
    x = jnp.ones((1, 8, 8, 4))
    variables = module.init(jax.random.key(0), x)
    text = jax.jit(module.apply).trace(variables, x).lower(
        lowering_platforms=(platform,)).as_text()
    assert text.count("stablehlo.convolution") == convolutions
    assert text.count("stablehlo.multiply") == multiplies
