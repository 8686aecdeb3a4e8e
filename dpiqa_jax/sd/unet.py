"""The Stable Diffusion (1.x) UNet as a Flax module, mirroring diffusers' `UNet2DConditionModel`.

DP-IQA uses it as a feature extractor: `UNet.__call__` returns the outputs of the up blocks
(after their upsamplers) and, on request, the usual noise prediction. T2I-Adapter features are
injected into the down blocks exactly as diffusers' `down_intrablock_additional_residuals` does.
Parameter paths mirror the diffusers state-dict keys (`down_blocks.0.resnets.1.conv1.weight` <->
`down_blocks_0/resnets_1/conv1/kernel`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.primitives.convs import conv2d
from dpiqa_jax.sd.attention import AttentionKernel, Transformer2DModel, TransformerSettings
from dpiqa_jax.sd.diffusers_config import dataclass_kwargs
from dpiqa_jax.sd.layers import (
    Downsample2D,
    GroupNorm,
    ResnetBlock2D,
    TimestepEmbedding,
    Upsample2D,
    timestep_embedding,
)

Dtype = jnp.dtype

CROSS_ATTN_DOWN = "CrossAttnDownBlock2D"
PLAIN_DOWN = "DownBlock2D"
CROSS_ATTN_UP = "CrossAttnUpBlock2D"
PLAIN_UP = "UpBlock2D"
CROSS_ATTN_MID = "UNetMidBlock2DCrossAttn"

# `runwayml/stable-diffusion-v1-5` unet/config.json (859,520,964 parameters).
SD15_UNET_CONFIG: Mapping[str, Any] = types.MappingProxyType({
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": (CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, PLAIN_DOWN),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": (PLAIN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP),
})


def tiny_unet_config(channels: Sequence[int], cross_attention_dim: int, *,
                     layers_per_block: int = 1, attention_head_dim: int = 2,
                     norm_num_groups: int = 4) -> dict[str, Any]:
    """SD 1.5's UNet config (diffusers keys) at toy widths: the same blocks, attention and
    embeddings with `channels` per level, for tests, parity checks and the tiny variants."""
    return dict(SD15_UNET_CONFIG, block_out_channels=tuple(channels),
                cross_attention_dim=cross_attention_dim, layers_per_block=layers_per_block,
                attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups)


# diffusers config keys that carry no architecture (besides any key starting with "_").
_BOOKKEEPING_KEYS = frozenset({"sample_size"})
# Keys that only matter for block types or embeddings we reject anyway.
_INERT_KEYS = frozenset({"addition_embed_type_num_heads", "mid_block_only_cross_attention"})
# Features we do not implement: a config must leave them at diffusers' default.
_UNSUPPORTED_UNLESS_DEFAULT: Mapping[str, Any] = types.MappingProxyType({
    "act_fn": "silu",
    "dropout": 0.0,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "projection_class_embeddings_input_dim": None,
    "class_embeddings_concat": False,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "attention_type": "default",
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
})


def _per_block(value: Any, count: int, field: str) -> tuple:
    """An int/bool setting repeated per block, or a per-block sequence checked for length."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"UNetConfig.{field} has {len(value)} entries, expected one per "
                             f"block ({count}): {value!r}")
        return tuple(value)
    return (value,) * count


def _strip_res_prefix(block_type: str) -> str:
    # diffusers accepts "UNetResDownBlock2D" as an alias of "DownBlock2D".
    return block_type[len("UNetRes"):] if block_type.startswith("UNetRes") else block_type


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The subset of diffusers' `UNet2DConditionModel` config that SD 1.x/2.x UNets use.

    Field names and meanings are diffusers'. Note diffusers' historical naming: without
    `num_attention_heads`, `attention_head_dim` is the NUMBER of heads (8 in SD 1.5).
    Per-block fields take one value for all blocks or one per down block (up blocks use them
    reversed, as diffusers does).
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN,
                                         PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP)
    mid_block_type: str = CROSS_ATTN_MID
    layers_per_block: int | tuple[int, ...] = 2
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    cross_attention_dim: int = 768
    transformer_layers_per_block: int | tuple[int, ...] = 1
    only_cross_attention: bool | tuple[bool, ...] = False
    use_linear_projection: bool = False
    upcast_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    center_input_sample: bool = False
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3

    def __post_init__(self):
        n = len(self.block_out_channels)
        for field in ("down_block_types", "up_block_types"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"UNetConfig.{field} has {len(getattr(self, field))} entries, "
                                 f"block_out_channels has {n}")
        for block_type in self.down_block_types:
            if _strip_res_prefix(block_type) not in (CROSS_ATTN_DOWN, PLAIN_DOWN):
                raise ValueError(f"unsupported down block type {block_type!r}; supported: "
                                 f"{CROSS_ATTN_DOWN}, {PLAIN_DOWN}")
        for block_type in self.up_block_types:
            if _strip_res_prefix(block_type) not in (CROSS_ATTN_UP, PLAIN_UP):
                raise ValueError(f"unsupported up block type {block_type!r}; supported: "
                                 f"{CROSS_ATTN_UP}, {PLAIN_UP}")
        if self.mid_block_type != CROSS_ATTN_MID:
            raise ValueError(f"unsupported mid_block_type {self.mid_block_type!r}; supported: "
                             f"{CROSS_ATTN_MID}")
        for field in ("layers_per_block", "attention_head_dim", "num_attention_heads",
                      "transformer_layers_per_block", "only_cross_attention"):
            _per_block(getattr(self, field), n, field)

    @property
    def heads_per_block(self) -> tuple[int, ...]:
        """Attention heads of each down block: num_attention_heads, else attention_head_dim."""
        heads = self.num_attention_heads
        if heads is None:
            heads = self.attention_head_dim
        return _per_block(heads, len(self.block_out_channels), "attention heads")

    def transformer_settings(self, block: int, *, up: bool = False) -> TransformerSettings:
        """Settings of the transformers in down block `block` (or up block `block`)."""
        n = len(self.block_out_channels)
        index = n - 1 - block if up else block

        def pick(field: str) -> Any:
            return _per_block(getattr(self, field), n, field)[index]

        return TransformerSettings(
            num_heads=self.heads_per_block[index],
            num_layers=pick("transformer_layers_per_block"),
            use_linear_projection=self.use_linear_projection,
            only_cross_attention=pick("only_cross_attention"),
            upcast_attention=self.upcast_attention)

    def mid_transformer_settings(self) -> TransformerSettings:
        """The mid block's transformer settings: the last down block's heads and depth."""
        settings = self.transformer_settings(len(self.block_out_channels) - 1)
        # diffusers' UNetMidBlock2DCrossAttn has no only_cross_attention option.
        return dataclasses.replace(settings, only_cross_attention=False)

    def layers(self, block: int, *, up: bool = False) -> int:
        """Resnets in down block `block`; an up block has one more (it also eats the skip of the
        downsampler or conv_in)."""
        n = len(self.block_out_channels)
        per_block = _per_block(self.layers_per_block, n, "layers_per_block")
        return per_block[n - 1 - block] + 1 if up else per_block[block]

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "UNetConfig":
        """From a diffusers `unet/config.json` dict (or `UNet2DConditionModel.config`).

        Raises:
          ValueError: naming any key we do not know or any feature we do not implement (other
            block types, class/addition embeddings, other ResNet variants, dual cross-attention...).
        """
        kwargs = dataclass_kwargs(cfg, {f.name for f in dataclasses.fields(cls)},
                                  component="UNet", ignored=_BOOKKEEPING_KEYS | _INERT_KEYS,
                                  unsupported_unless_default=_UNSUPPORTED_UNLESS_DEFAULT)
        if "cross_attention_dim" in kwargs and isinstance(kwargs["cross_attention_dim"], tuple):
            dims = set(kwargs["cross_attention_dim"])
            if len(dims) != 1:
                raise ValueError(f"unsupported UNet config cross_attention_dim="
                                 f"{kwargs['cross_attention_dim']!r}: one context width only")
            kwargs["cross_attention_dim"] = dims.pop()
        if kwargs.get("norm_num_groups", 32) is None:
            raise ValueError("unsupported UNet config norm_num_groups=None (no output norm)")
        return cls(**kwargs)


class UNetOutput(NamedTuple):
    """What `UNet.__call__` returns.

    Attributes:
      up_features: the output of each up block after its upsampler, in up-block order. SD 1.5
        at a 64x64 latent: [B,16,16,1280], [B,32,32,1280], [B,64,64,640], [B,64,64,320].
      out: conv_norm_out -> SiLU -> conv_out, [B, H, W, out_channels]; None unless requested.
    """

    up_features: tuple[jax.Array, ...]
    out: jax.Array | None


class DownBlock2D(nn.Module):
    """diffusers `DownBlock2D`, or `CrossAttnDownBlock2D` when `attention` is set.

    Also serves as the VAE's `DownEncoderBlock2D` (called without `temb`, padding 0).
    """

    out_channels: int
    num_layers: int
    groups: int
    eps: float
    add_downsample: bool
    downsample_padding: int = 1
    attention: TransformerSettings | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None,
                 context: jax.Array | None = None, adapter_feature: jax.Array | None = None,
                 ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """x [B, H, W, C] -> (output, skips): one skip per resnet plus the downsampler output.

        adapter_feature (T2I-Adapter, [B or 1, ...] shaped like the hidden state it joins):
          with attention, added after the last (resnet, attention) pair, before the downsampler,
          so the last resnet skip and the downsampler input carry it (diffusers'
          `additional_residuals`); without, added to the block output, which diffusers does in
          place on a tensor that is also the block's last skip, so that skip carries it too.
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skips = []
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.eps, name=f"resnets_{i}",
                              **kw)(x, temb)
            if self.attention is not None:
                x = Transformer2DModel(self.attention, self.groups, name=f"attentions_{i}",
                                       **kw)(x, context)
                if i == self.num_layers - 1 and adapter_feature is not None:
                    x = x + self._fitted(adapter_feature, x)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.downsample_padding, name="downsamplers_0",
                             **kw)(x)
            skips.append(x)
        if self.attention is None and adapter_feature is not None:
            x = x + self._fitted(adapter_feature, x)
            skips[-1] = x
        return x, tuple(skips)

    def _fitted(self, feature: jax.Array, hidden: jax.Array) -> jax.Array:
        """The adapter map, checked against the hidden state and cast to its dtype (an fp32 map
        must not promote the bf16 hidden states and skips)."""
        if feature.ndim != 4 or feature.shape[1:] != hidden.shape[1:] or (
                feature.shape[0] not in (1, hidden.shape[0])):
            raise ValueError(f"{self.name}: adapter feature of shape {feature.shape} does not fit "
                             f"the hidden state {hidden.shape} ([B or 1, H, W, C] expected)")
        return feature.astype(hidden.dtype)


class UNetMidBlock2DCrossAttn(nn.Module):
    """diffusers `UNetMidBlock2DCrossAttn`: `resnets_0`, then (`attentions_i`, `resnets_{i+1}`)."""

    attention: TransformerSettings
    groups: int
    eps: float
    output_scale_factor: float = 1.0
    num_layers: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = x.shape[-1]

        def resnet(i: int) -> ResnetBlock2D:
            return ResnetBlock2D(channels, self.groups, self.eps, self.output_scale_factor,
                                 name=f"resnets_{i}", **kw)

        x = resnet(0)(x, temb)
        for i in range(self.num_layers):
            x = Transformer2DModel(self.attention, self.groups, name=f"attentions_{i}",
                                   **kw)(x, context)
            x = resnet(i + 1)(x, temb)
        return x


class UpBlock2D(nn.Module):
    """diffusers `UpBlock2D`, or `CrossAttnUpBlock2D` when `attention` is set."""

    out_channels: int
    num_layers: int
    groups: int
    eps: float
    add_upsample: bool
    attention: TransformerSettings | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array,
                 context: jax.Array | None = None,
                 output_size: tuple[int, int] | None = None) -> jax.Array:
        """x [B, H, W, C], `num_layers` skips (used last first) -> [B, H', W', out_channels].

        H', W' = output_size if given, else 2H, 2W (H, W without an upsampler).
        """
        if len(skips) != self.num_layers:
            raise ValueError(f"{self.name}: got {len(skips)} skips, expected {self.num_layers}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
            x = ResnetBlock2D(self.out_channels, self.groups, self.eps, name=f"resnets_{i}",
                              **kw)(x, temb)
            if self.attention is not None:
                x = Transformer2DModel(self.attention, self.groups, name=f"attentions_{i}",
                                       **kw)(x, context)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x, output_size)
        return x


def _batched_timesteps(timesteps: Any, batch: int) -> jax.Array:
    """int, [] or [B] (or [1]) -> [B], as diffusers broadcasts them."""
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim == 0 or timesteps.shape == (1,):
        return jnp.broadcast_to(timesteps.reshape(()), (batch,))
    if timesteps.shape != (batch,):
        raise ValueError(f"timesteps must be a scalar or of shape [{batch}], got {timesteps.shape}")
    return timesteps


def _check_context(context: jax.Array, batch: int, width: int) -> None:
    if context.ndim != 3 or context.shape[0] not in (1, batch) or context.shape[-1] != width:
        raise ValueError(f"context must be [{batch} or 1, L, {width}], got {context.shape}")


class UNet(nn.Module):
    """SD's `UNet2DConditionModel` (as configured by `UNetConfig`), NHWC.

    Children mirror diffusers: `conv_in`, `time_embedding`, `down_blocks_i`, `mid_block`,
    `up_blocks_i`, `conv_norm_out`, `conv_out`. The output head always has parameters (so the
    parameter tree matches the checkpoint) but runs only when `return_output=True`.
    `attention_kernel` chooses how every transformer's attention is computed.
    """

    config: UNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: AttentionKernel = AttentionKernel()

    @nn.compact
    def __call__(self, sample: jax.Array, timesteps: Any, context: jax.Array,
                 adapter_features: Sequence[jax.Array] | None = None,
                 return_output: bool = False) -> UNetOutput:
        """Runs the UNet.

        Args:
          sample: latent [B, H, W, in_channels].
          timesteps: int, [] or [B].
          context: cross-attention states [B or 1, L, cross_attention_dim]; a batch-1 context is
            shared by every sample (its K/V projections are computed once).
          adapter_features: None, or one T2I-Adapter map per down block, each [B or 1, h_i, w_i,
            C_i] shaped like that block's hidden state (SD 1.5 at 64x64: 320@64, 640@32,
            1280@16, 1280@8). See `DownBlock2D` for where each is added.
          return_output: also compute conv_norm_out -> SiLU -> conv_out.

        Returns:
          `UNetOutput(up_features, out)`.
        """
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n_blocks = len(cfg.block_out_channels)
        batch = sample.shape[0]
        _check_context(context, batch, cfg.cross_attention_dim)
        if adapter_features is None:
            adapter_features = (None,) * n_blocks
        elif len(adapter_features) != n_blocks:
            raise ValueError(f"adapter_features has {len(adapter_features)} maps, expected one "
                             f"per down block ({n_blocks})")
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0

        # The sinusoid and its small MLP stay in fp32: cheap, and t is a large integer.
        t_emb = timestep_embedding(_batched_timesteps(timesteps, batch), cfg.block_out_channels[0],
                                   flip_sin_to_cos=cfg.flip_sin_to_cos,
                                   downscale_freq_shift=cfg.freq_shift)
        temb = TimestepEmbedding(cfg.time_embed_dim, dtype=jnp.float32,
                                 param_dtype=self.param_dtype, name="time_embedding")(t_emb)
        temb = temb.astype(self.dtype)

        x = conv2d(cfg.block_out_channels[0], cfg.conv_in_kernel, name="conv_in", **kw)(sample)
        skips = [x]
        for i, block_type in enumerate(cfg.down_block_types):
            with_attention = _strip_res_prefix(block_type) == CROSS_ATTN_DOWN
            attention = self._with_kernel(cfg.transformer_settings(i)) if with_attention else None
            x, block_skips = DownBlock2D(
                cfg.block_out_channels[i], cfg.layers(i), cfg.norm_num_groups, cfg.norm_eps,
                add_downsample=i < n_blocks - 1, downsample_padding=cfg.downsample_padding,
                attention=attention,
                name=f"down_blocks_{i}", **kw)(x, temb, context, adapter_features[i])
            skips.extend(block_skips)

        x = UNetMidBlock2DCrossAttn(self._with_kernel(cfg.mid_transformer_settings()),
                                    cfg.norm_num_groups, cfg.norm_eps,
                                    cfg.mid_block_scale_factor, name="mid_block",
                                    **kw)(x, temb, context)

        up_features = []
        for i, block_type in enumerate(cfg.up_block_types):
            n_layers = cfg.layers(i, up=True)
            block_skips, skips = skips[-n_layers:], skips[:-n_layers]
            is_last = i == n_blocks - 1
            with_attention = _strip_res_prefix(block_type) == CROSS_ATTN_UP
            attention = (self._with_kernel(cfg.transformer_settings(i, up=True))
                         if with_attention else None)
            x = UpBlock2D(
                cfg.block_out_channels[n_blocks - 1 - i], n_layers, cfg.norm_num_groups,
                cfg.norm_eps, add_upsample=not is_last, attention=attention,
                name=f"up_blocks_{i}", **kw,
            )(x, block_skips, temb, context, None if is_last else skips[-1].shape[1:3])
            up_features.append(x)

        out = None
        # Initialisation also traces the head so that its parameters exist for loading/counting.
        if return_output or self.is_initializing():
            h = nn.silu(GroupNorm(num_groups=cfg.norm_num_groups, epsilon=cfg.norm_eps,
                                  param_dtype=self.param_dtype, name="conv_norm_out")(x))
            out = conv2d(cfg.out_channels, cfg.conv_out_kernel, name="conv_out", **kw)(h)
        return UNetOutput(tuple(up_features), out if return_output else None)

    def _with_kernel(self, settings: TransformerSettings) -> TransformerSettings:
        return dataclasses.replace(settings, kernel=self.attention_kernel)
