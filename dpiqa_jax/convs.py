"""Convolutions written the way XLA runs them fastest, with `nn.Conv`'s parameters.

Both modules keep the `kernel` (and `bias`) names and shapes of the `nn.Conv` they replace, so
checkpoints and converters do not see a difference; only the lowering differs:

* `PointwiseConv` (1x1, stride 1) is a matmul over the channel axis. XLA's CPU backend runs a 1x1
  convolution 2-3x slower than the same `dot_general` forwards and 3x slower backwards
  (EfficientNet-B7's expand/project shapes); on GPU and TPU both become the same GEMM.
* `DepthwiseConv` is per platform (below).

`conv2d` builds a torch-style Conv2d (`Conv2d`, the same parameters and lowering as `nn.Conv`),
choosing `PointwiseConv` for the plain 1x1 case, so every module that mirrors a torch conv gets the
fast form without asking for it. Both start from torch's default initialisation
(`dpiqa_jax.inits`), as the layers they mirror do.

Layout is NHWC.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax import inits

Dtype = Any


class PointwiseConv(nn.Module):
    """A 1x1 convolution, stride 1, no padding: kernel [1, 1, C, features] (+ bias [features]);
    torch's default initialisation (fan_in C)."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., C] -> [..., features]."""
        kernel = self.param("kernel", inits.torch_kernel_init(),
                            (1, 1, x.shape[-1], self.features), self.param_dtype)
        y = jnp.dot(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", inits.torch_bias_init(x.shape[-1]), (self.features,),
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class Conv2d(nn.Module):
    """torch `nn.Conv2d` (groups 1, with bias) on NHWC: `nn.Conv`'s parameters and lowering,
    torch's default initialisation (fan_in = C * k * k).

    Attributes:
      padding: pixels on every side, or ((top, bottom), (left, right)).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int | Sequence[tuple[int, int]] = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H', W', features]."""
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", inits.torch_kernel_init(), shape, self.param_dtype)
        bias = self.param("bias", inits.torch_bias_init(inits.torch_fan_in(shape)),
                          (self.features,), self.param_dtype)
        padding = self.padding
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride),
            tuple(tuple(side) for side in padding), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


def conv2d(features: int, kernel_size: int, *, name: str, dtype: Dtype, param_dtype: Dtype,
           stride: int = 1, padding: int | Sequence[tuple[int, int]] | None = None
           ) -> nn.Module:
    """A torch-style Conv2d with bias: square kernel, padding (k - 1) // 2 unless given; a plain
    1x1 one is a `PointwiseConv` (a matmul, same parameters)."""
    if padding is None:
        padding = (kernel_size - 1) // 2
    if kernel_size == 1 and stride == 1 and padding == 0:
        return PointwiseConv(features, dtype=dtype, param_dtype=param_dtype, name=name)
    return Conv2d(features, kernel_size, stride=stride, padding=padding, dtype=dtype,
                  param_dtype=param_dtype, name=name)


def _depthwise_as_grouped_conv(x: jax.Array, kernel: jax.Array, stride: int,
                               padding: Sequence[tuple[int, int]]) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])


def _tap(padded: jax.Array, i: int, j: int, stride: int, out_hw: Sequence[int]) -> jax.Array:
    """padded[:, i + stride*h, j + stride*w] for the out_hw output positions (h, w)."""
    batch, _, _, channels = padded.shape
    return jax.lax.slice(padded, (0, i, j, 0),
                         (batch, i + (out_hw[0] - 1) * stride + 1,
                          j + (out_hw[1] - 1) * stride + 1, channels), (1, stride, stride, 1))


def _shifted_sum(padded: jax.Array, kernel: jax.Array, stride: int,
                 out_hw: Sequence[int]) -> jax.Array:
    """sum over taps (i, j) of kernel[i, j] * tap (i, j): [B, Hp, Wp, C] -> [B, *out_hw, C]."""
    k = kernel.shape[0]
    out = None
    for i in range(k):
        for j in range(k):
            term = _tap(padded, i, j, stride, out_hw) * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _pad_spatial(x: jax.Array, padding: Sequence[tuple[int, int]]) -> jax.Array:
    return jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))


def _shifted_output_hw(padded_hw: Sequence[int], k: int, stride: int) -> tuple[int, int]:
    return tuple((side - k) // stride + 1 for side in padded_hw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_as_shifted_sum(x: jax.Array, kernel: jax.Array, stride: int,
                              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The depthwise convolution as k*k shifted multiply-adds, [B, H, W, C] -> [B, H', W', C].

    Its backward pass is written out (below) so that it keeps only x and the kernel: the input
    gradient is one more shifted sum, the kernel gradient a loop over the taps. Differentiating the
    forward sum instead makes XLA keep every tap's window alive (3-5x the grouped conv's memory).
    """
    padded = _pad_spatial(x, padding)
    return _shifted_sum(padded, kernel, stride,
                        _shifted_output_hw(padded.shape[1:3], kernel.shape[0], stride))


def _shifted_sum_forward(x, kernel, stride, padding):
    return _depthwise_as_shifted_sum(x, kernel, stride, padding), (x, kernel)


def _shifted_sum_backward(stride, padding, residuals, grad):
    x, kernel = residuals
    k = kernel.shape[0]
    padded = _pad_spatial(x, padding)
    padded_hw = padded.shape[1:3]
    out_hw = grad.shape[1:3]
    span = [(n - 1) * stride + 1 for n in out_hw]

    def tap_kernel_grad(tap_index: jax.Array) -> jax.Array:
        # One tap at a time (a loop, not k*k unrolled taps that XLA would all materialise).
        i, j = tap_index // k, tap_index % k
        region = jax.lax.dynamic_slice(padded, (0, i, j, 0),
                                       (x.shape[0], span[0], span[1], x.shape[3]))
        return jnp.sum(region[:, ::stride, ::stride] * grad, axis=(0, 1, 2), dtype=jnp.float32)

    kernel_grad = jax.lax.map(tap_kernel_grad, jnp.arange(k * k)).reshape(kernel.shape)
    kernel_grad = kernel_grad.astype(kernel.dtype)
    # d(padded)[p] = sum_i grad[(p - i) / stride] * kernel[i]: the gradient dilated by the stride,
    # padded by k - 1, then a stride-1 shifted sum with the flipped kernel.
    dilated = jax.lax.pad(grad, jnp.zeros((), grad.dtype), (
        (0, 0, 0),
        (k - 1, padded_hw[0] - (out_hw[0] - 1) * stride - 1, stride - 1),
        (k - 1, padded_hw[1] - (out_hw[1] - 1) * stride - 1, stride - 1),
        (0, 0, 0)))
    padded_grad = _shifted_sum(dilated, kernel[::-1, ::-1], 1, padded_hw)
    (top, _), (left, _) = padding
    x_grad = padded_grad[:, top:top + x.shape[1], left:left + x.shape[2]]
    return x_grad, kernel_grad


_depthwise_as_shifted_sum.defvjp(_shifted_sum_forward, _shifted_sum_backward)


class DepthwiseConv(nn.Module):
    """A k x k convolution of every channel on its own, no bias: `nn.Conv` with
    `feature_group_count` = channels, and the same `kernel` [k, k, 1, C].

    XLA's CPU backend runs grouped convolutions 10-25x slower than the same sum written as k*k
    shifted multiply-adds (EfficientNet-B7's depthwise layers at 512x512), so on CPU it lowers to
    the shifted sum and on every other platform to the grouped convolution. The choice is made per
    platform when the program is lowered (`lax.platform_dependent`), so an exported program keeps
    the right one for each.
    """

    kernel_size: int
    stride: int
    padding: str | Sequence[tuple[int, int]]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H', W', C]."""
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]),
                            self.param_dtype)
        padding = self.padding
        if isinstance(padding, str):
            padding = jax.lax.padtype_to_pads(x.shape[1:3], (k, k), (self.stride,) * 2, padding)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        padding = tuple(tuple(int(p) for p in side) for side in padding)
        return jax.lax.platform_dependent(
            x, kernel,
            cpu=lambda x, kernel: _depthwise_as_shifted_sum(x, kernel, self.stride, padding),
            default=functools.partial(_depthwise_as_grouped_conv, stride=self.stride,
                                      padding=padding))
