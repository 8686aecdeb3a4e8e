"""DP-IQA's Quality Feature Decoder (QFD): four UNet up-block features -> quality map and score.

Names mirror the authors' `QualityFeatureDecoder` (`conv1..4`, `se1..4`, `fuse_conv`, `se_fuse`,
`conv_score1..3`, `fc1..3`). Their `bnc1`, `dropout`, `softm` and `classifier_dist` are never used
in the forward pass and are left out.

The authors flatten the NCHW quality map before `fc1`; we flatten NHWC and the checkpoint
converter permutes `fc1`'s input rows (`dpiqa_jax.convert.torch_layout.nchw_flatten_transform`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.convs import conv2d
from dpiqa_jax.inits import torch_dense
from dpiqa_jax.models.resize import resize_bicubic_torch

Dtype = Any


@dataclasses.dataclass(frozen=True)
class QFDConfig:
    """Widths of the QFD; the defaults are the authors' (42,934,697 parameters).

    Attributes:
      level_channels: input channels of conv1..conv4, i.e. of the up-block features taken by each
        (conv1 the last up block, conv4 the first).
      hidden: channels after each level conv and after `fuse_conv`.
      se_reduction: squeeze-excitation reduction ratio.
      score_channels: output channels of conv_score1..3; the last is the quality map's depth.
      map_size: side every level is resized to (bicubic) and the quality map's side.
      head_hidden: width of fc1 and fc2.
    """

    level_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    hidden: int = 512
    se_reduction: int = 16
    score_channels: tuple[int, ...] = (128, 32, 8)
    map_size: int = 64
    head_hidden: int = 512


def quality_score_head(quality_map: jax.Array, hidden: int, dtype: Dtype = jnp.float32,
                       param_dtype: Dtype = jnp.float32) -> jax.Array:
    """flatten -> fc1 -> ReLU -> fc2 -> ReLU -> fc3: quality map [B, H, W, C] -> score [B].

    Shared by the teacher's QFD and the student. Call it from a compact method: it creates `fc1`,
    `fc2`, `fc3` on the calling module, under the authors' names. The flatten is NHWC; checkpoint
    conversion permutes fc1's rows from the authors' NCHW flatten.
    """
    dense = functools.partial(torch_dense, dtype=dtype, param_dtype=param_dtype)
    flat = quality_map.reshape(quality_map.shape[0], -1)
    x = nn.relu(dense(hidden, flat.shape[-1], name="fc1")(flat))
    x = nn.relu(dense(hidden, hidden, name="fc2")(x))
    return dense(1, hidden, name="fc3")(x)[:, 0]


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc_2(relu(fc_0(mean_hw(x))))), both Dense without bias. [B, H, W, C] -> same."""

    reduction: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        reduced = channels // self.reduction
        dense = functools.partial(torch_dense, use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
        squeezed = jnp.mean(x, axis=(1, 2))
        weights = nn.sigmoid(dense(channels, reduced, name="fc_2")(
            nn.relu(dense(reduced, channels, name="fc_0")(squeezed))))
        return x * weights[:, None, None, :]


class QualityFeatureDecoder(nn.Module):
    """Decodes the four UNet up-block features into a quality map and a scalar quality score."""

    config: QFDConfig = QFDConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _conv(self, features: int, size: int, name: str) -> nn.Module:
        return conv2d(features, size, name=name, dtype=self.dtype, param_dtype=self.param_dtype)

    def _se(self, name: str) -> SqueezeExcite:
        return SqueezeExcite(self.config.se_reduction, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)

    @nn.compact
    def __call__(self, up_features: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Runs the decoder.

        Args:
          up_features: the UNet's up-block outputs in UNet order (up block 0 first); for SD 1.5 at
            512x512: [B,16,16,1280], [B,32,32,1280], [B,64,64,640], [B,64,64,320]. As in the
            authors' `QFD(x4, x3, x2, x1)`, conv1 takes the last one and conv4 the first.

        Returns:
          score [B] and quality map [B, map_size, map_size, score_channels[-1]] (>= 0).
        """
        cfg = self.config
        if len(up_features) != len(cfg.level_channels):
            raise ValueError(f"QFD expects {len(cfg.level_channels)} up-block features, got "
                             f"{len(up_features)}")
        inputs = tuple(reversed(up_features))  # conv1 reads the last up block
        for i, (feature, channels) in enumerate(zip(inputs, cfg.level_channels), start=1):
            if feature.shape[-1] != channels:
                raise ValueError(f"QFD conv{i} expects {channels} channels, got up-block feature "
                                 f"of shape {feature.shape}")
        size = (cfg.map_size, cfg.map_size)
        levels = []
        for i, feature in enumerate(inputs, start=1):
            resized = resize_bicubic_torch(feature.astype(self.dtype), size)
            levels.append(self._se(f"se{i}")(self._conv(cfg.hidden, 3, f"conv{i}")(resized)))
        fused = self._se("se_fuse")(
            self._conv(cfg.hidden, 3, "fuse_conv")(jnp.concatenate(levels, axis=-1)))
        quality_map = fused
        for i, channels in enumerate(cfg.score_channels, start=1):
            quality_map = nn.relu(self._conv(channels, 1, f"conv_score{i}")(quality_map))
        score = quality_score_head(quality_map, cfg.head_hidden, self.dtype, self.param_dtype)
        return score, quality_map
