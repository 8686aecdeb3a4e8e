"""DP-IQA's two adapters: the text adapter on the prompt embeddings and the T2I image adapter.

Module and parameter names mirror the authors' PyTorch modules (`text_adapter.fc.0/fc.2`, diffusers
`FullAdapter`: `conv_in`, `body.N.in_conv`, `body.N.resnets.M.block1/block2`) so checkpoints convert
by name.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpiqa_jax.convs import conv2d
from dpiqa_jax.inits import torch_dense

Dtype = Any


class TextAdapter(nn.Module):
    """Residual MLP on the fixed prompt embeddings: `context = E + gamma * MLP(E)`.

    `gamma` belongs to the caller (the authors keep it as the top-level `gamma` parameter of the
    teacher), so it is an argument here.

    Attributes:
      hidden_dim: width of the MLP's hidden layer; None = the embedding width (the authors' choice).
    """

    hidden_dim: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, embeddings: jax.Array, gamma: jax.Array) -> jax.Array:
        """Maps prompt embeddings [K, D] and gamma [D] to the cross-attention context [1, K, D].

        The context is the same for every image, so it is computed once and returned as a batch-1
        context that the UNet broadcasts (keys/values are then computed once too).
        """
        if embeddings.ndim != 2:
            raise ValueError(f"prompt embeddings must be [K, D], got shape {embeddings.shape}")
        width = embeddings.shape[-1]
        dense = functools.partial(torch_dense, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden_dim = self.hidden_dim or width
        hidden = dense(hidden_dim, width, name="fc_0")(embeddings)
        delta = dense(width, hidden_dim, name="fc_2")(nn.gelu(hidden, approximate=False))
        context = embeddings.astype(self.dtype) + gamma.astype(self.dtype) * delta
        return context[None]


@dataclasses.dataclass(frozen=True)
class ImageAdapterConfig:
    """diffusers `FullAdapter` hyper-parameters; the defaults are SD 1.5's (77,369,280 params)."""

    in_channels: int = 3
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale_factor: int = 8


def pixel_unshuffle_torch_order(x: jax.Array, factor: int) -> jax.Array:
    """`nn.PixelUnshuffle(factor)` on NHWC, with torch's channel order `c * r * r + i * r + j`.

    Args:
      x: [B, H, W, C] with H and W divisible by `factor`.

    Returns:
      [B, H / r, W / r, C * r * r], channel c*r*r + i*r + j holding pixel (y*r + i, x*r + j) of
      input channel c, so torch `conv_in` weights apply unchanged.
    """
    batch, height, width, channels = x.shape
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not divisible by the adapter's "
                         f"downscale factor {factor}")
    x = x.reshape(batch, height // factor, factor, width // factor, factor, channels)
    x = x.transpose(0, 1, 3, 5, 2, 4)  # [B, h, w, C, i, j]
    return x.reshape(batch, height // factor, width // factor, channels * factor * factor)


def _valid_counts(size: int) -> np.ndarray:
    """Per output index of a 2-wide, stride-2 ceil-mode window: how many inputs it covers."""
    counts = np.full((size + 1) // 2, 2.0)
    if size % 2:
        counts[-1] = 1.0
    return counts


def avg_pool_2x2_ceil_torch(x: jax.Array) -> jax.Array:
    """`nn.AvgPool2d(2, 2, ceil_mode=True)` on NHWC: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C].

    With ceil mode and no padding, torch divides the last (overhanging) window of an odd side by
    the number of pixels it actually covers (count_include_pad only concerns explicit padding).
    """
    batch, height, width, channels = x.shape
    out_h, out_w = (height + 1) // 2, (width + 1) // 2
    padded = jnp.pad(x, ((0, 0), (0, 2 * out_h - height), (0, 2 * out_w - width), (0, 0)))
    sums = padded.reshape(batch, out_h, 2, out_w, 2, channels).sum(axis=(2, 4))
    counts = np.outer(_valid_counts(height), _valid_counts(width))[None, :, :, None]
    return sums / jnp.asarray(counts, dtype=sums.dtype)


class AdapterResnetBlock(nn.Module):
    """x + block2(relu(block1(x))): 3x3 then 1x1 conv, no norm. [B, H, W, C] -> same."""

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(conv2d, self.channels, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        h = conv(3, name="block1")(x)
        return conv(1, name="block2")(nn.relu(h)) + x


class AdapterBlock(nn.Module):
    """Optional ceil-mode 2x2 average pool, 1x1 `in_conv` if the width changes, residual blocks."""

    out_channels: int
    num_res_blocks: int
    down: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.down:
            x = avg_pool_2x2_ceil_torch(x)
        if x.shape[-1] != self.out_channels:
            x = conv2d(self.out_channels, 1, name="in_conv", dtype=self.dtype,
                       param_dtype=self.param_dtype)(x)
        for i in range(self.num_res_blocks):
            x = AdapterResnetBlock(self.out_channels, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name=f"resnets_{i}")(x)
        return x


class ImageAdapter(nn.Module):
    """T2I-Adapter "full" adapter (diffusers `FullAdapter`) on the raw image.

    Returns one feature map per stage; for SD 1.5 and a 512x512 image: 320@64x64, 640@32x32,
    1280@16x16, 1280@8x8 — the shapes of the UNet's four down blocks.
    """

    config: ImageAdapterConfig = ImageAdapterConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """images [B, H, W, in_channels] -> maps [B, H / (f * 2^i), W / (f * 2^i), channels[i]]."""
        cfg = self.config
        if images.shape[-1] != cfg.in_channels:
            raise ValueError(f"image adapter expects {cfg.in_channels} input channels, got images "
                             f"of shape {images.shape}")
        x = pixel_unshuffle_torch_order(images.astype(self.dtype), cfg.downscale_factor)
        x = conv2d(cfg.channels[0], 3, name="conv_in", dtype=self.dtype,
                   param_dtype=self.param_dtype)(x)
        features = []
        for i, channels in enumerate(cfg.channels):
            x = AdapterBlock(channels, cfg.num_res_blocks, down=i > 0, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"body_{i}")(x)
            features.append(x)
        return tuple(features)
