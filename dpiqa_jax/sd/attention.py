"""Attention blocks of the Stable Diffusion UNet and VAE, mirroring diffusers.

Multi-head attention runs through `jax.nn.dot_product_attention` in the [B, T, N, H] layout
(batch, tokens, heads, head width). JAX does not choose a kernel by itself (its default is XLA's
unfused implementation on every backend), so `AttentionKernel` says which one runs: XLA's, with
the queries optionally split into rematerialised chunks to bound training memory, or cuDNN's fused
flash attention on NVIDIA GPUs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.primitives.convs import conv2d
from dpiqa_jax.sd.layers import GroupNorm, LayerNorm

Dtype = jnp.dtype

# diffusers' fixed epsilons: Transformer2DModel's GroupNorm and BasicTransformerBlock's LayerNorms.
_TRANSFORMER_GROUP_NORM_EPS = 1e-6
_TRANSFORMER_LAYER_NORM_EPS = 1e-5
_FEED_FORWARD_MULT = 4


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class AttentionKernel:
    """How attention is computed; every choice gives the same result up to rounding.

    Attributes:
      implementation: 'xla' (any backend) or 'cudnn' (fused flash attention: NVIDIA GPUs, bf16 or
        fp16 inputs, head width <= 128, or <= 256 from Hopper on).
      query_chunk: with 'xla', > 0 attends `query_chunk` queries at a time, each chunk recomputed
        in the backward pass, so the fp32 logits of one chunk are alive at once instead of all
        [T, S] of them (at 512x512 the 4096-token self-attention logits dominate training
        memory). 0: all queries at once.
    """

    implementation: str = "xla"
    query_chunk: int = 0

    def __post_init__(self):
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {self.implementation!r}; expected one of "
                             f"{ATTENTION_IMPLEMENTATIONS}")
        if self.query_chunk < 0:
            raise ValueError(f"attention query_chunk={self.query_chunk}; expected >= 0")
        if self.query_chunk and self.implementation != "xla":
            raise ValueError(f"attention query_chunk={self.query_chunk} needs implementation "
                             f"'xla' ({self.implementation!r} never materialises the logits)")


@dataclasses.dataclass(frozen=True)
class TransformerSettings:
    """What distinguishes one `Transformer2DModel` of a UNet from another (diffusers' names).

    Attributes:
      num_heads: attention heads; the head width is channels // num_heads.
      num_layers: `BasicTransformerBlock`s (diffusers' `transformer_layers_per_block`).
      use_linear_projection: `proj_in`/`proj_out` are Linear (True) or 1x1 convs (False).
      only_cross_attention: `attn1` also attends to the context instead of to itself.
      upcast_attention: compute q, k, v and the attention in fp32.
      kernel: how the attention runs (not part of diffusers' config).
    """

    num_heads: int
    num_layers: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False
    kernel: AttentionKernel = AttentionKernel()


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          upcast: bool = False,
                          kernel: AttentionKernel = AttentionKernel()) -> jax.Array:
    """Softmax attention with scale head_width**-0.5, no mask.

    Args:
      query: [B, T, N, H].
      key, value: [B, S, N, H], or [1, S, N, H] for one context shared by the whole batch.
      upcast: run in fp32 (diffusers' `upcast_attention`).
      kernel: which implementation computes it.

    Returns:
      [B, T, N, H] in query's dtype.
    """
    batch, tokens, heads, width = query.shape
    if key.shape[0] != batch:
        if key.shape[0] != 1:
            raise ValueError(f"key/value batch {key.shape[0]} must be 1 or the query batch {batch}")
        # Every image attends to the same keys: folding the batch into the query axis gives the
        # same result without copying K/V B times (DP-IQA's context has 1485 tokens).
        folded = query.reshape(1, batch * tokens, heads, width)
        return dot_product_attention(folded, key, value, upcast=upcast,
                                     kernel=kernel).reshape(query.shape)
    out_dtype = query.dtype
    if upcast:
        query, key, value = (t.astype(jnp.float32) for t in (query, key, value))
    if kernel.implementation == "cudnn" and query.dtype not in _CUDNN_DTYPES:
        raise ValueError(f"cuDNN attention needs bf16 or fp16 inputs, got {query.dtype} "
                         f"(compute dtype float32, or upcast_attention); use implementation 'xla'")
    attend = functools.partial(jax.nn.dot_product_attention, scale=width ** -0.5,
                               implementation=kernel.implementation)
    if kernel.query_chunk and tokens > kernel.query_chunk:
        out = _attend_in_query_chunks(attend, query, key, value, kernel.query_chunk)
    else:
        out = attend(query, key, value)
    return out.astype(out_dtype)


def _attend_in_query_chunks(attend: Callable[..., jax.Array], query: jax.Array, key: jax.Array,
                            value: jax.Array, chunk: int) -> jax.Array:
    """`attend` over `chunk` queries at a time, sequentially, [B, T, N, H] -> [B, T, N, H].

    Each chunk is rematerialised: the backward pass recomputes its logits instead of keeping every
    chunk's softmax. The queries are zero-padded to whole chunks; padded rows are dropped.
    """
    batch, tokens, heads, width = query.shape
    n_chunks = -(-tokens // chunk)
    padded = jnp.pad(query, ((0, 0), (0, n_chunks * chunk - tokens), (0, 0), (0, 0)))
    chunks = padded.reshape(batch, n_chunks, chunk, heads, width).swapaxes(0, 1)
    attend_chunk = jax.checkpoint(attend)
    out = jax.lax.map(lambda q: attend_chunk(q, key, value), chunks)
    return out.swapaxes(0, 1).reshape(batch, n_chunks * chunk, heads, width)[:, :tokens]


class Attention(nn.Module):
    """diffusers `Attention` as used by SD: `to_q`, `to_k`, `to_v`, `to_out_0` (Linear layers)."""

    num_heads: int
    head_dim: int
    qkv_bias: bool = False
    upcast: bool = False
    kernel: AttentionKernel = AttentionKernel()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """x [B, T, C]; context [B or 1, S, D], or None for self-attention -> [B, T, C].

        With a batch-1 context the K/V projections run once and are shared by the batch.
        """
        context = x if context is None else context
        inner = self.num_heads * self.head_dim
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        project = functools.partial(dense, inner, use_bias=self.qkv_bias)

        def split_heads(t: jax.Array) -> jax.Array:
            return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim)

        query = split_heads(project(name="to_q")(x))
        key = split_heads(project(name="to_k")(context))
        value = split_heads(project(name="to_v")(context))
        out = dot_product_attention(query, key, value, upcast=self.upcast, kernel=self.kernel)
        out = out.reshape(x.shape[0], x.shape[1], inner)
        return dense(x.shape[-1], name="to_out_0")(out)


class SpatialSelfAttention(Attention):
    """The VAE mid-block attention: `group_norm`, then self-attention over pixels, plus the input.

    diffusers builds it as `Attention(residual_connection=True, norm_num_groups=..., bias=True)`
    with one head as wide as the channels; `rescale_output_factor` is 1 in SD's VAE.
    """

    num_groups: int = 32
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # pylint: disable=arguments-differ
        """[B, H, W, C] -> [B, H, W, C]."""
        batch, height, width, channels = x.shape
        h = GroupNorm(num_groups=self.num_groups, epsilon=self.eps, param_dtype=self.param_dtype,
                      name="group_norm")(x)
        h = super().__call__(h.reshape(batch, height * width, channels))
        return x + h.reshape(batch, height, width, channels)


class GEGLU(nn.Module):
    """diffusers `GEGLU`: `proj` to 2x width, then value * GELU(gate) (exact erf GELU)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., C] -> [..., features]."""
        h = nn.Dense(2 * self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="proj")(x)
        value, gate = jnp.split(h, 2, axis=-1)
        return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """diffusers `FeedForward(activation_fn="geglu")`: `net_0` (GEGLU), (dropout), `net_2`."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., C] -> [..., C] through a 4C-wide gated hidden layer."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GEGLU(_FEED_FORWARD_MULT * x.shape[-1], name="net_0", **kw)(x)
        return nn.Dense(x.shape[-1], name="net_2", **kw)(h)


class BasicTransformerBlock(nn.Module):
    """diffusers `BasicTransformerBlock` (layer_norm type): self-attn, cross-attn, GEGLU MLP.

    Each sub-layer is pre-norm (`norm1`/`norm2`/`norm3`, LayerNorm eps 1e-5) with a residual.
    """

    num_heads: int
    only_cross_attention: bool = False
    upcast_attention: bool = False
    kernel: AttentionKernel = AttentionKernel()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x [B, T, C], context [B or 1, S, D] -> [B, T, C]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(LayerNorm, epsilon=_TRANSFORMER_LAYER_NORM_EPS,
                                 param_dtype=self.param_dtype)
        attention = functools.partial(Attention, num_heads=self.num_heads,
                                      head_dim=x.shape[-1] // self.num_heads,
                                      upcast=self.upcast_attention, kernel=self.kernel, **kw)
        first_context = context if self.only_cross_attention else None
        x = x + attention(name="attn1")(norm(name="norm1")(x), first_context)
        x = x + attention(name="attn2")(norm(name="norm2")(x), context)
        return x + FeedForward(name="ff", **kw)(norm(name="norm3")(x))


class Transformer2DModel(nn.Module):
    """diffusers `Transformer2DModel` on continuous (image) input.

    `norm` (GroupNorm, eps 1e-6) -> `proj_in` -> `transformer_blocks_i` over the H*W tokens ->
    `proj_out`, plus the input. The projections are 1x1 convs, or Linear layers when
    `use_linear_projection` (same maths, different stored weight shape).
    """

    settings: TransformerSettings
    norm_num_groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x [B, H, W, C], context [B or 1, S, D] -> [B, H, W, C]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, height, width, channels = x.shape
        heads = self.settings.num_heads
        inner = heads * (channels // heads)
        h = GroupNorm(num_groups=self.norm_num_groups, epsilon=_TRANSFORMER_GROUP_NORM_EPS,
                      param_dtype=self.param_dtype, name="norm")(x)
        if self.settings.use_linear_projection:
            h = nn.Dense(inner, name="proj_in", **kw)(h.reshape(batch, height * width, channels))
        else:
            h = conv2d(inner, 1, name="proj_in", **kw)(h).reshape(batch, height * width, inner)
        for i in range(self.settings.num_layers):
            h = BasicTransformerBlock(
                heads, only_cross_attention=self.settings.only_cross_attention,
                upcast_attention=self.settings.upcast_attention, kernel=self.settings.kernel,
                name=f"transformer_blocks_{i}", **kw)(h, context)
        if self.settings.use_linear_projection:
            h = nn.Dense(channels, name="proj_out", **kw)(h).reshape(batch, height, width, channels)
        else:
            h = conv2d(channels, 1, name="proj_out", **kw)(h.reshape(batch, height, width, inner))
        return x + h
