"""The DP-IQA student: an EfficientNet backbone and the authors' quality-map / score head.

Authors' layout (design.md §2), for B7 at 512x512: `base_model.features` -> 2560x16x16 ->
`conv_transpose` ConvTranspose2d(2560 -> 8, k3, s2, p1, output_padding 1) -> ReLU -> nearest
resize to 64x64 (the student quality map) -> flatten -> `fc1` 32768 -> 512 -> ReLU -> `fc2`
512 -> 512 -> ReLU -> `fc3` 512 -> 1. The head adapts to the backbone's channels and to other input
sizes; the map is always resized to `map_size`.

The authors flatten the map in NCHW order; we flatten NHWC natively and the converter permutes
`fc1`'s input rows instead (`dpiqa_jax.convert.efficientnet`), so the math is identical.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.models.efficientnet import EfficientNet, efficientnet_config
from dpiqa_jax.models.qfd import quality_score_head
from dpiqa_jax.primitives import inits
from dpiqa_jax.primitives.resize import resize_nearest_torch

Dtype = Any


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Student architecture.

    Attributes:
      backbone: an `efficientnet_config` name ("b7" for the authors' student).
      map_size: side of the quality map the head resizes to (64 = the teacher's map).
      map_channels: channels of the quality map (8, as the teacher's).
      hidden: width of `fc1` and `fc2`.
      stochastic_depth: the backbone's stochastic depth in training; off only where random draws
        cannot be shared (parity with PyTorch).
      bn_momentum: the backbone's BatchNorm momentum in torch's convention (weight of the new
        batch statistic); None keeps the backbone's own (what its pretrained weights were trained
        with). A larger one lets the running statistics follow inputs unlike the pretraining's.
    """

    backbone: str = "b7"
    map_size: int = 64
    map_channels: int = 8
    hidden: int = 512
    stochastic_depth: bool = True
    bn_momentum: float | None = None


class TorchConvTranspose2d(nn.Module):
    """`torch.nn.ConvTranspose2d` (groups 1, dilation 1) on NHWC.

    `kernel` is [kh, kw, in, out]: torch's [in, out, kh, kw] transposed (2, 3, 0, 1). The op is
    the transposed convolution written as a plain convolution: dilate the input by `stride`, pad
    (k - 1 - padding) before and (k - 1 - padding + output_padding) after, correlate with the
    spatially flipped kernel. Output side: (H - 1) * stride - 2 * padding + k + output_padding.
    torch's default initialisation, whose fan_in is out * k * k (its weight's dimension 1).
    """

    features: int
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    output_padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, in] -> [B, H', W', features]."""
        if not 0 <= self.padding <= self.kernel_size - 1:
            raise ValueError(f"padding {self.padding} must lie in [0, kernel_size - 1 = "
                             f"{self.kernel_size - 1}]")
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", inits.torch_kernel_init(inits.CONV_TRANSPOSE_IN_AXIS), shape,
                            self.param_dtype)
        bias = self.param("bias", inits.torch_bias_init(
            inits.torch_fan_in(shape, inits.CONV_TRANSPOSE_IN_AXIS)), (self.features,),
            self.param_dtype)
        before = k - 1 - self.padding
        after = before + self.output_padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel[::-1, ::-1].astype(self.dtype), window_strides=(1, 1),
            padding=((before, after), (before, after)), lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


class Student(nn.Module):
    """DP-IQA student. Parameters: `base_model` (EfficientNet), `conv_transpose`, `fc1`..`fc3`."""

    config: StudentConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """Scores images.

        Args:
          x: [B, H, W, 3] RGB in [0, 1] (no mean/std, as the authors).
          train: batch statistics and stochastic depth (needs the 'dropout' rng) when True.
          mask: [B] bool, in training: the images that count in the batch statistics (a padded
            batch's real images); None counts all.

        Returns:
          score [B] (predicts MOS / 100) and the quality map [B, map_size, map_size, map_channels].
        """
        config = self.config
        backbone = efficientnet_config(config.backbone)
        if not config.stochastic_depth:
            backbone = dataclasses.replace(backbone, stochastic_depth_prob=0.0)
        if config.bn_momentum is not None:
            backbone = dataclasses.replace(backbone, bn_momentum=config.bn_momentum)
        features = EfficientNet(backbone, dtype=self.dtype,
                                param_dtype=self.param_dtype, name="base_model")(x, train, mask)
        quality_map = nn.relu(TorchConvTranspose2d(config.map_channels, dtype=self.dtype,
                                                   param_dtype=self.param_dtype,
                                                   name="conv_transpose")(features))
        quality_map = resize_nearest_torch(quality_map, (config.map_size, config.map_size))
        score = quality_score_head(quality_map, config.hidden, self.dtype, self.param_dtype)
        return score, quality_map
