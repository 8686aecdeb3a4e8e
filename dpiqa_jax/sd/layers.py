"""Convolutional building blocks of the Stable Diffusion UNet and VAE, mirroring diffusers.

Arrays are NHWC. Module and parameter names follow diffusers' state-dict keys (see
`dpiqa_jax.convert.torch_layout`): e.g. `ResnetBlock2D` has children `norm1`, `conv1`,
`time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.primitives.convs import conv2d
from dpiqa_jax.primitives.resize import resize_nearest_torch

Dtype = jnp.dtype


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm on NHWC with statistics and affine in fp32; returns the input dtype.

    A group spans up to 64*64*10 values in SD 1.5; bf16 statistics over that many values lose
    too much precision, so the whole norm runs in fp32.
    The two-pass variance (`use_fast_variance=False`) avoids E[x^2] - E[x]^2 cancellation.
    """

    use_fast_variance: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:  # pylint: disable=arguments-differ
        return super().__call__(x.astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm over the last axis, computed in fp32; returns the input dtype."""

    use_fast_variance: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:  # pylint: disable=arguments-differ
        return super().__call__(x.astype(jnp.float32)).astype(x.dtype)


class ResnetBlock2D(nn.Module):
    """diffusers `ResnetBlock2D` with `time_embedding_norm="default"` and SiLU.

    GroupNorm -> SiLU -> conv3x3 (+ projected time embedding) -> GroupNorm -> SiLU -> conv3x3,
    plus the input (through a 1x1 `conv_shortcut` when the channel count changes), divided by
    `output_scale_factor`. `time_emb_proj` exists only when the block is called with `temb`
    (the VAE's blocks are not).
    """

    out_channels: int
    groups: int
    eps: float
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        """x [B, H, W, C_in], temb [B, D] or None -> [B, H, W, out_channels]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(GroupNorm, num_groups=self.groups, epsilon=self.eps,
                                 param_dtype=self.param_dtype)
        h = nn.silu(norm(name="norm1")(x))
        h = conv2d(self.out_channels, 3, name="conv1", **kw)(h)
        if temb is not None:
            t = nn.Dense(self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(norm(name="norm2")(h))
        h = conv2d(self.out_channels, 3, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv2d(self.out_channels, 1, name="conv_shortcut", **kw)(x)
        return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    """diffusers `Downsample2D(use_conv=True)`: a stride-2 conv3x3 named `conv`.

    `padding` is diffusers' `downsample_padding`: the UNet pads 1 on every side; 0 (the VAE
    encoder) means pad one row/column at the bottom/right only, then convolve unpadded.
    """

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H/2, W/2, out_channels] for even H, W (odd sizes round as torch)."""
        if self.padding == 0:
            pad = ((0, 1), (0, 1))
        else:
            pad = ((self.padding, self.padding), (self.padding, self.padding))
        return conv2d(self.out_channels, 3, stride=2, padding=pad, name="conv", dtype=self.dtype,
                      param_dtype=self.param_dtype)(x)


class Upsample2D(nn.Module):
    """diffusers `Upsample2D(use_conv=True)`: nearest-neighbour resize, then conv3x3 `conv`."""

    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        """[B, H, W, C] -> [B, 2H, 2W, out_channels], or [B, *output_size, out_channels].

        diffusers passes an explicit size when the input side was not divisible by the total
        downsampling factor; torch's legacy nearest then picks source index floor(i * in / out).
        """
        height, width = x.shape[1:3]
        if output_size is None or tuple(output_size) == (2 * height, 2 * width):
            # A broadcast instead of a gather: same values, friendlier to the compiler.
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = resize_nearest_torch(x, tuple(output_size))
        return conv2d(self.out_channels, 3, name="conv", dtype=self.dtype,
                      param_dtype=self.param_dtype)(x)


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool,
                       downscale_freq_shift: float, max_period: float = 10000.0) -> jax.Array:
    """diffusers `get_timestep_embedding`, always in fp32.

    Args:
      timesteps: [B] (integer or float).
      dim: embedding width.
      flip_sin_to_cos: order [cos, sin] instead of [sin, cos] (True for SD).
      downscale_freq_shift: frequencies are exp(-ln(max_period) * i / (dim/2 - shift)).

    Returns:
      [B, dim] float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(exponent / (half - downscale_freq_shift))
    angles = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """diffusers `TimestepEmbedding`: `linear_1` -> SiLU -> `linear_2`."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, C] -> [B, features]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.silu(nn.Dense(self.features, name="linear_1", **kw)(x))
        return nn.Dense(self.features, name="linear_2", **kw)(x)
