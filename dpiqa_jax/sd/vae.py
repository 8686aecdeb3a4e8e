"""The encoder half of Stable Diffusion's VAE (diffusers `AutoencoderKL`) as a Flax module.

`VAEEncoder` returns the mean and log-variance of the latent posterior; scaling by
`VAEConfig.scaling_factor` (0.18215 for SD 1.5) and optional sampling are the caller's business.
Parameter paths mirror the `AutoencoderKL` keys `encoder.*` and `quant_conv.*`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.primitives.convs import conv2d
from dpiqa_jax.sd.attention import SpatialSelfAttention
from dpiqa_jax.sd.diffusers_config import dataclass_kwargs
from dpiqa_jax.sd.layers import GroupNorm, ResnetBlock2D
from dpiqa_jax.sd.unet import DownBlock2D

Dtype = jnp.dtype

DOWN_ENCODER_BLOCK = "DownEncoderBlock2D"
# diffusers' Encoder hard-codes these: GroupNorm/ResNet eps and the downsamplers' padding mode.
_ENCODER_EPS = 1e-6
_ENCODER_DOWNSAMPLE_PADDING = 0
# diffusers' DiagonalGaussianDistribution clamps the log-variance to this range.
LOGVAR_RANGE = (-30.0, 20.0)

# `runwayml/stable-diffusion-v1-5` vae/config.json (83,653,863 parameters in the full
# AutoencoderKL, 34,163,664 in encoder + quant_conv).
SD15_VAE_CONFIG: Mapping[str, Any] = types.MappingProxyType({
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": (DOWN_ENCODER_BLOCK,) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
})


def tiny_vae_config(channels: Sequence[int], *, layers_per_block: int = 1,
                    norm_num_groups: int = 4) -> dict[str, Any]:
    """SD 1.5's VAE config (diffusers keys) at toy widths: the same blocks with `channels` per
    level, for tests, parity checks and the tiny variants."""
    return dict(SD15_VAE_CONFIG, block_out_channels=tuple(channels),
                layers_per_block=layers_per_block, norm_num_groups=norm_num_groups)


# Keys that describe the decoder (not built here) or carry no architecture.
_IGNORED_KEYS = frozenset({"sample_size", "out_channels", "up_block_types", "use_post_quant_conv",
                           "force_upcast"})
# Features we do not implement: a config must leave them at diffusers' default.
_UNSUPPORTED_UNLESS_DEFAULT: Mapping[str, Any] = types.MappingProxyType({
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
})


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The encoder-relevant part of diffusers' `AutoencoderKL` config (diffusers' names).

    The encoder always predicts mean and log-variance (diffusers' `double_z=True`), so the
    encoder's last conv has 2 * latent_channels outputs.
    """

    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (64,)
    down_block_types: tuple[str, ...] = (DOWN_ENCODER_BLOCK,)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ValueError(f"VAEConfig.down_block_types has {len(self.down_block_types)} "
                             f"entries, block_out_channels has {len(self.block_out_channels)}")
        for block_type in self.down_block_types:
            if block_type != DOWN_ENCODER_BLOCK:
                raise ValueError(f"unsupported VAE down block type {block_type!r}; supported: "
                                 f"{DOWN_ENCODER_BLOCK}")

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "VAEConfig":
        """From a diffusers `vae/config.json` dict (or `AutoencoderKL.config`).

        Decoder-only keys are ignored. Raises ValueError naming any unknown key or any
        unsupported value (other activations or block types, shift_factor, latents_mean/std).
        """
        return cls(**dataclass_kwargs(cfg, {f.name for f in dataclasses.fields(cls)},
                                      component="VAE", ignored=_IGNORED_KEYS,
                                      unsupported_unless_default=_UNSUPPORTED_UNLESS_DEFAULT))


class VAEMidBlock2D(nn.Module):
    """diffusers `UNetMidBlock2D` as the VAE uses it: `resnets_0`, `attentions_0`, `resnets_1`."""

    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = x.shape[-1]
        x = ResnetBlock2D(channels, self.groups, _ENCODER_EPS, name="resnets_0", **kw)(x)
        if self.add_attention:
            x = SpatialSelfAttention(num_heads=1, head_dim=channels, qkv_bias=True,
                                     num_groups=self.groups, eps=_ENCODER_EPS,
                                     name="attentions_0", **kw)(x)
        return ResnetBlock2D(channels, self.groups, _ENCODER_EPS, name="resnets_1", **kw)(x)


class Encoder(nn.Module):
    """diffusers `vae.Encoder` with `double_z=True`."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """[B, H, W, in_channels] -> [B, H/2^(n-1), W/2^(n-1), 2 * latent_channels]."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv2d(cfg.block_out_channels[0], 3, name="conv_in", **kw)(images)
        for i, channels in enumerate(cfg.block_out_channels):
            x, _ = DownBlock2D(channels, cfg.layers_per_block, cfg.norm_num_groups, _ENCODER_EPS,
                               add_downsample=i < len(cfg.block_out_channels) - 1,
                               downsample_padding=_ENCODER_DOWNSAMPLE_PADDING,
                               name=f"down_blocks_{i}", **kw)(x)
        x = VAEMidBlock2D(cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block",
                          **kw)(x)
        x = nn.silu(GroupNorm(num_groups=cfg.norm_num_groups, epsilon=_ENCODER_EPS,
                              param_dtype=self.param_dtype, name="conv_norm_out")(x))
        return conv2d(2 * cfg.latent_channels, 3, name="conv_out", **kw)(x)


class VAEEncoder(nn.Module):
    """`AutoencoderKL.encode` up to the posterior: children `encoder` and `quant_conv`."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior statistics of the latent.

        Args:
          images: [B, H, W, in_channels], in whatever range the caller chose (SD expects
            [-1, 1]), H and W divisible by 2^(len(block_out_channels) - 1) (8 for SD).

        Returns:
          (mean, logvar), each [B, H/8, W/8, latent_channels] float32 (for SD), i.e. diffusers'
          `encode(x).latent_dist.mean` / `.logvar`, logvar clamped to [-30, 20].
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        moments = Encoder(self.config, name="encoder", **kw)(images)
        if self.config.use_quant_conv:
            moments = conv2d(2 * self.config.latent_channels, 1, name="quant_conv", **kw)(moments)
        moments = moments.astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)
